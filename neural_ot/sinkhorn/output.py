"""The immutable result of a Sinkhorn solve."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from neural_ot.geometry.pointcloud import PointCloud

__all__ = ["SinkhornOutput"]


def fold(p, eps, w):
  """The potential ``p`` with the weights folded in, ``p + eps log(w)``: ``-inf`` at zero
  weights (the solver's one definition of a massless point), where the derivative in ``p``,
  ``eps`` and ``w`` is zero. Written as ``p + eps * log(w)`` with a safe log, the ``eps``
  cotangent at a zero weight was ``0 * -inf = NaN``: the gradient in ``epsilon`` of a solve
  with a zero weight was NaN."""
  pos = w > 0
  return jnp.where(pos, p + eps * jnp.log(jnp.where(pos, w, 1.0)), -jnp.inf)


def _fit(v, size, fill):
  """Pad ``v`` along axis 0 with ``fill`` up to ``size`` (no-op when it already fits)."""
  k = v.shape[0]
  if k == size:
    return v
  return jnp.concatenate([v, jnp.full((size - k,) + v.shape[1:], fill, v.dtype)])


class SinkhornOutput(NamedTuple):
  """Result of :func:`neural_ot.sinkhorn`.

  Conventions: ``P_ij = a_i b_j exp((f_i + g_j - C_ij) / epsilon)`` (weights are
  *not* folded into the potentials; ott-jax's potentials equal
  ``f + epsilon * log(a)`` and ``g + epsilon * log(b)``).

  Which number estimates ``W_2^2`` (with the default cost ``|x - y|^2``)?
    * ``reg_ot_cost`` is the entropic OT value
      ``min_P <P, C> + eps KL(P | a b^T)`` (the dual objective at ``f, g``). It is
      biased upwards by the entropy term and is what gradients usually target.
    * ``primal_cost`` is ``<P, C>``, the transport cost of the blurred plan; it
      is ``>= W_2^2`` up to the marginal error and tends to it as ``eps -> 0``.
    * :func:`neural_ot.sinkhorn_divergence` (debiased) is the best estimate of
      ``W_2^2`` at a fixed ``eps``; ``S_eps -> W_2^2`` as ``eps -> 0``.

  Attributes:
    f: ``(n,)`` source potential.
    g: ``(m,)`` target potential.
    reg_ot_cost: entropic OT cost (dual objective value).
    n_iters: number of Sinkhorn iterations run.
    converged: whether ``marginal_error < tol`` was reached.
    diverged: whether the solve stopped on invalid input that only the device
      could see (negative, non-finite or massless weights, e.g. under ``jit``) or
      on a non-finite marginal error (NaN/inf points, potentials or epsilon, or an
      overflow). It stops at the first such iteration (no silent run to
      ``max_iters``); ``f``, ``g`` and ``reg_ot_cost`` are then NaN and
      ``converged`` is False. Batched solves carry one flag per problem.
    marginal_error: L1 marginal error of the returned plan (for unbalanced
      problems: the L1 residual of the fixed-point equations).
    errors: per-iteration marginal errors (``(max_iters,)``, ``-1`` after the
      stop) when the solver was asked to record them, else ``None``.
    geom: the :class:`PointCloud` solved on.
    a, b: the weights.
    epsilon: the absolute regularisation used.
  """

  f: jax.Array
  g: jax.Array
  reg_ot_cost: jax.Array
  n_iters: jax.Array
  converged: jax.Array
  diverged: jax.Array
  marginal_error: jax.Array
  errors: jax.Array | None
  geom: PointCloud
  a: jax.Array
  b: jax.Array
  epsilon: jax.Array

  @property
  def _folded(self):
    # A sharded solve may have padded the geometry with zero-weight points:
    # pad the potentials to match (folded value -inf: they drop out).
    n, m = self.geom.shape
    return (_fit(fold(self.f, self.epsilon, self.a), n, -jnp.inf),
            _fit(fold(self.g, self.epsilon, self.b), m, -jnp.inf))

  def apply(self, vec: jax.Array, axis: int = 1) -> jax.Array:
    """``P @ vec`` (``axis=1``, vec ``(m,)`` or ``(m, k)``) or ``P.T @ vec``
    (``axis=0``, vec ``(n,)`` or ``(n, k)``) without forming ``P`` in online mode."""
    u, v = self._folded
    kept = self.f.shape[0] if axis == 1 else self.g.shape[0]
    vec = _fit(vec, self.geom.shape[axis], 0.0)
    return self.geom.apply_plan(u, v, self.epsilon, vec, axis)[:kept]

  @property
  def marginals(self) -> tuple[jax.Array, jax.Array]:
    """``(P 1, P^T 1)``."""
    u, v = self._folded
    r = jnp.exp(self.geom.lse(u, v, self.epsilon, axis=1))
    c = jnp.exp(self.geom.lse(u, v, self.epsilon, axis=0))
    return r[:self.f.shape[0]], c[:self.g.shape[0]]

  @property
  def matrix(self) -> jax.Array:
    """The dense ``(n, m)`` transport plan (only for problems that fit in memory)."""
    u, v = self._folded
    p = jnp.exp((u[:, None] + v[None, :] - self.geom.materialize()) / self.epsilon)
    return p[:self.f.shape[0], :self.g.shape[0]]

  @property
  def primal_cost(self) -> jax.Array:
    """``<P, C>``: the transport cost of the entropic plan (see class docs)."""
    u, v = self._folded
    return jnp.sum(self.geom.plan_cost_rows(u, v, self.epsilon))

  @property
  def transport_mass(self) -> jax.Array:
    """Total mass of the plan (1 for balanced problems)."""
    return jnp.sum(self.marginals[0])

  def barycentric_map(self) -> jax.Array:
    """Barycentric projection ``T(x_i) = sum_j P_ij y_j / sum_j P_ij``, shape ``(n, d)``.

    Rows without mass (zero weight ``a_i``, e.g. padding) have no conditional
    distribution: they map to ``x_i`` itself rather than to ``0 / 0``.
    """
    num = self.apply(self.geom.y, axis=1)
    den = self.apply(jnp.ones(self.g.shape[0], self.f.dtype), axis=1)
    x = self.geom.x[:self.f.shape[0]]
    empty = (den <= 0)[:, None]
    return jnp.where(empty, x, num / jnp.where(empty, 1.0, den[:, None]))
