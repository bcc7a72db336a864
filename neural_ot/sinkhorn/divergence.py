"""Debiased Sinkhorn divergence (Feydy et al. 2019)."""

from __future__ import annotations

import dataclasses

import jax

from neural_ot import _validation
from neural_ot.sinkhorn.solver import Sinkhorn, make_solver, solve_points

__all__ = ["sinkhorn_divergence"]


def _divergence(solver: Sinkhorn, x, y, a, b, epsilon):
  if solver.relative_epsilon:  # one epsilon for all three: relative to the x-y mean cost
    gxy, ap, bp, _, _ = solver.geometry(x, y, a, b)
    epsilon = solver.absolute_epsilon(gxy, ap, bp, epsilon)
  absolute = dataclasses.replace(solver, relative_epsilon=False)
  oxy = solve_points(absolute, x, y, a, b, epsilon)
  oxx = solve_points(absolute, x, x, a, a, epsilon)
  oyy = solve_points(absolute, y, y, b, b, epsilon)
  div = oxy.reg_ot_cost - 0.5 * (oxx.reg_ot_cost + oyy.reg_ot_cost)
  return div, (oxy, oxx, oyy)


_jitted = jax.jit(_divergence, static_argnums=0)


def sinkhorn_divergence(x, y, a=None, b=None, *, epsilon, return_outputs: bool = False,
                        **kwargs):
  """Debiased Sinkhorn divergence ``S = OT(a, b) - (OT(a, a) + OT(b, b)) / 2``.

  ``OT`` is the entropic cost ``reg_ot_cost``. ``S >= 0``, ``S(a, a) = 0``, and
  with the default cost ``|x - y|^2`` it tends to ``W_2^2`` as ``epsilon -> 0``;
  at a fixed epsilon it is the least biased ``W_2^2`` estimate this library
  offers. Differentiable in ``x, y, a, b`` (implicit or unrolled).

  Args:
    x, y, a, b, epsilon: as :func:`neural_ot.sinkhorn`.
    return_outputs: also return the three :class:`SinkhornOutput` s (``xy``, ``xx``, ``yy``),
      trimmed to the input point counts like :func:`neural_ot.sinkhorn`'s.
    **kwargs: :class:`Sinkhorn` options (``tol``, ``max_iters``, ``cost``, ...).
      Balanced only.

  Example:
    A translate by ``t`` is at divergence ``|t|^2`` exactly (entropic costs too shift by
    ``|t|^2``), here ``1 + 0.25``:

    >>> import jax, jax.numpy as jnp, neural_ot
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    >>> round(float(neural_ot.sinkhorn_divergence(x, x + jnp.array([1.0, 0.5]), epsilon=0.1)), 3)
    1.25
  """
  solver = make_solver("sinkhorn_divergence", kwargs).with_input_sharding(x)
  if not solver.balanced:
    raise ValueError("sinkhorn_divergence: `rho_a`/`rho_b` are not supported (balanced only).")
  x, y, a, b, epsilon, _ = _validation.check_problem(x, y, a, b, epsilon, None, balanced=True)
  div, outs = _jitted(solver, x, y, a, b, epsilon)
  return (div, outs) if return_outputs else div
