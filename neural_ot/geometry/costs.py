"""Ground costs between points.

A cost maps two point sets ``x: (n, d)`` and ``y: (m, d)`` to a cost block
``(n, m)``. Costs are frozen (hashable) dataclasses so a solver that holds one
can be a static argument of :func:`jax.jit`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["Cost", "SqEuclidean", "PNorm", "Cosine", "FunctionCost", "as_cost"]

_HIGHEST = jax.lax.Precision.HIGHEST


class Cost:
  """Base class: subclasses implement :meth:`pairwise`."""

  def pairwise(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """Cost block ``C[i, j] = c(x[i], y[j])`` of shape ``(n, m)``."""
    raise NotImplementedError

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """Cost between two single points ``x: (d,)`` and ``y: (d,)``."""
    return self.pairwise(x[None], y[None])[0, 0]

  def mean(self, x, y, a, b, pairwise_mean) -> jax.Array:
    """Weighted mean cost ``sum_ij a_i b_j C_ij``; ``pairwise_mean`` is the generic fallback."""
    return pairwise_mean()


@dataclasses.dataclass(frozen=True)
class SqEuclidean(Cost):
  """Squared Euclidean cost ``c(x, y) = |x - y|^2`` (ott-jax's convention).

  With this cost, entropic OT costs estimate ``W_2^2`` (not ``W_2^2 / 2``).
  """

  def pairwise(self, x, y):
    if x.shape[-1] <= 8:
      # Small d: a sum of 2-D broadcasts is exact (no cancellation) and fuses
      # into the consumer's exp-sum (a 3-D (n, m, d) difference does not).
      c = (x[:, 0, None] - y[None, :, 0]) ** 2
      for k in range(1, x.shape[-1]):
        c = c + (x[:, k, None] - y[None, :, k]) ** 2
      return c
    xx = jnp.sum(x * x, axis=-1)
    yy = jnp.sum(y * y, axis=-1)
    xy = jnp.matmul(x, y.T, precision=_HIGHEST)
    return jnp.maximum(xx[:, None] + yy[None, :] - 2.0 * xy, 0.0)

  def mean(self, x, y, a, b, pairwise_mean):
    # E|x - y|^2 = E|x|^2 + E|y|^2 - 2 <E x, E y>, in O((n + m) d).
    ex = a @ x
    ey = b @ y
    return a @ jnp.sum(x * x, -1) + b @ jnp.sum(y * y, -1) - 2.0 * ex @ ey


@dataclasses.dataclass(frozen=True)
class PNorm(Cost):
  """``c(x, y) = ||x - y||_p ** power`` (``p >= 1``; ``PNorm(2, 1)`` is Euclidean)."""

  p: float = 2.0
  power: float = 1.0

  def __post_init__(self):
    if not self.p >= 1.0:
      raise ValueError(f"PNorm: `p` must be >= 1, got {self.p!r}.")
    if not self.power > 0.0:
      raise ValueError(f"PNorm: `power` must be > 0, got {self.power!r}.")

  def pairwise(self, x, y):
    diff = jnp.abs(x[:, None, :] - y[None, :, :])
    s = jnp.sum(diff**self.p, axis=-1)
    # Safe root: gradient 0 (not NaN) where x == y.
    safe = jnp.where(s > 0, s, 1.0)
    return jnp.where(s > 0, safe ** (self.power / self.p), 0.0)


@dataclasses.dataclass(frozen=True)
class Cosine(Cost):
  """Cosine distance ``c(x, y) = 1 - <x, y> / (|x| |y|)``, in ``[0, 2]``."""

  def pairwise(self, x, y):
    xn = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    yn = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
    return 1.0 - jnp.matmul(xn, yn.T, precision=_HIGHEST)


@dataclasses.dataclass(frozen=True)
class FunctionCost(Cost):
  """A user cost ``fn(x: (d,), y: (d,)) -> scalar``, vectorised with :func:`jax.vmap`."""

  fn: Callable[[jax.Array, jax.Array], jax.Array]

  def pairwise(self, x, y):
    return jax.vmap(lambda xi: jax.vmap(lambda yj: self.fn(xi, yj))(y))(x)


def as_cost(cost) -> Cost:
  """Accept a :class:`Cost`, a name (``"sqeuclidean"``, ``"euclidean"``, ``"l1"``,
  ``"cosine"``) or a callable ``c(x, y)``."""
  if cost is None:
    return SqEuclidean()
  if isinstance(cost, Cost):
    return cost
  if isinstance(cost, str):
    table = {
        "sqeuclidean": SqEuclidean(),
        "euclidean": PNorm(2.0, 1.0),
        "l1": PNorm(1.0, 1.0),
        "cosine": Cosine(),
    }
    if cost not in table:
      raise ValueError(
          f"`cost` must be one of {sorted(table)}, a Cost or a callable c(x, y); got {cost!r}.")
    return table[cost]
  if callable(cost):
    return FunctionCost(cost)
  raise TypeError(f"`cost` must be a Cost, a name or a callable c(x, y); got {type(cost).__name__}.")
