"""How a Sinkhorn solve is differentiated: the ``adjoint`` field of :class:`Sinkhorn`.

:class:`ImplicitDiff` differentiates the fixed point (the dual's first-order conditions) with
``jax.lax.custom_root`` and a Jacobi-preconditioned conjugate gradient
(``jax.scipy.sparse.linalg.cg``): memory independent of the iteration count.
:class:`Unrolled` backpropagates through every iteration (``max_iters`` of them, in a scan).

References: Blondel et al. 2022 (implicit differentiation); ott-jax ``implicit_diff``;
optimistix ``adjoint=``.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot import _validation

__all__ = ["ImplicitDiff", "Unrolled"]


@dataclasses.dataclass(frozen=True)
class ImplicitDiff:
  """Implicit differentiation: custom root plus conjugate gradient on the dual's Hessian.

  The balanced system is singular along ``(1, -1)`` (potentials are defined up to a shift),
  so a ridge of ``ridge`` times the mean Jacobi diagonal is added.

  Args:
    solver_tol: relative residual at which conjugate gradient stops.
    max_iters: conjugate gradient iteration cap.
    ridge: relative ridge added to the linear system.
  """

  solver_tol: float = 1e-6
  max_iters: int = 500
  ridge: float = 1e-6

  def __post_init__(self):
    for name in ("solver_tol", "ridge"):
      v = getattr(self, name)
      if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                              np.floating)):
        raise TypeError(f"ImplicitDiff: `{name}` must be a real number, got "
                        f"{type(v).__name__} {v!r}.")
      if not (np.isfinite(v) and v >= 0):
        raise ValueError(f"ImplicitDiff: `{name}` must be finite and >= 0, got {v!r}.")
    v = self.max_iters
    if not (_validation.is_int(v) and v >= 1):
      raise ValueError(f"ImplicitDiff: `max_iters` must be a positive int, got {v!r}.")


@dataclasses.dataclass(frozen=True)
class Unrolled:
  """Differentiate by unrolling: the loop runs all ``max_iters`` iterations in a scan (steps
  after convergence leave the state unchanged), and reverse mode stores each of them."""


def check_adjoint(adjoint):
  if not isinstance(adjoint, (ImplicitDiff, Unrolled)):
    raise TypeError("`adjoint` must be neural_ot.sinkhorn.ImplicitDiff(...) or "
                    f"neural_ot.sinkhorn.Unrolled(), got {type(adjoint).__name__} {adjoint!r}.")


def from_legacy(options: dict, caller: str) -> dict:
  """Maps the deprecated ``implicit_diff``/``cg_tol``/``cg_maxiter``/``ridge`` options onto
  ``adjoint`` (with a ``DeprecationWarning``); other options pass through."""
  legacy = {k: options[k] for k in ("implicit_diff", "cg_tol", "cg_maxiter", "ridge")
            if k in options}
  if not legacy:
    return options
  if "adjoint" in options:
    raise TypeError(f"{caller}: pass `adjoint` or the deprecated {sorted(legacy)}, not both.")
  implicit = legacy.get("implicit_diff", True)
  if not isinstance(implicit, (bool, np.bool_)):
    raise TypeError(f"`implicit_diff` must be True or False, got {implicit!r}.")
  warnings.warn(f"{caller}: deprecated option(s) {', '.join(sorted(legacy))}; pass "
                "adjoint=ImplicitDiff(solver_tol=, max_iters=, ridge=) or adjoint=Unrolled().",
                DeprecationWarning, stacklevel=3)
  rest = {k: v for k, v in options.items() if k not in legacy}
  if not implicit:
    return dict(rest, adjoint=Unrolled())
  names = {"cg_tol": "solver_tol", "cg_maxiter": "max_iters", "ridge": "ridge"}
  return dict(rest, adjoint=ImplicitDiff(**{names[k]: v for k, v in legacy.items()
                                            if k in names}))


def implicit_solve(adjoint: ImplicitDiff, loop, residual, state0, a, b, eps):
  """``((f, g), state)`` from ``loop(state)``, differentiated by ``custom_root``.

  ``loop`` runs the solver from a state whose ``f, g`` are the guess (on stopped-gradient
  inputs); ``residual((f, g))`` is the dual's gradient, zero at the solution.
  """
  sg = jax.lax.stop_gradient
  state0 = jax.tree.map(sg, state0)

  dtypes = jax.tree.map(lambda z: z.dtype, state0)

  def solve(_, guess):
    st = loop(state0._replace(f=guess[0], g=guess[1]))
    # custom_root wants floating aux outputs: counters and flags travel as floats.
    return (st.f, st.g), jax.tree.map(lambda z: z.astype(st.f.dtype), st)

  # Jacobi preconditioner and ridge: constants for differentiation.
  diag = sg(jnp.concatenate([a, b]) / eps)
  ridge = adjoint.ridge * jnp.mean(diag)
  inv_diag = 1.0 / (diag + ridge)
  n = a.shape[0]

  def tangent_solve(lin, rhs):
    # lin is the symmetric negative semi-definite Hessian of the dual: solve
    # (-lin + ridge) x = -rhs.
    def matvec(v):
      return jax.tree.map(lambda l, x: -l + ridge * x, lin(v), v)

    precond = lambda v: (v[0] * inv_diag[:n], v[1] * inv_diag[n:])

    def cg(mv, r):
      return jax.scipy.sparse.linalg.cg(mv, r, tol=adjoint.solver_tol,
                                        maxiter=adjoint.max_iters, M=precond)[0]

    neg_rhs = jax.tree.map(jnp.negative, rhs)
    return jax.lax.custom_linear_solve(matvec, neg_rhs, cg, symmetric=True)

  fg, st = jax.lax.custom_root(residual, (state0.f, state0.g), solve, tangent_solve,
                               has_aux=True)
  st = jax.tree.map(lambda z, dt: sg(z > 0.5 if dt == jnp.bool_ else z.astype(dt)), st, dtypes)
  return fg, st
