"""The entropic map of a Sinkhorn solution, for any translation-invariant cost (Pooladian and
Niles-Weed 2021; Cuturi et al. 2023 for ``h(x - y)``).

The solution's source potential extends to any point ``x`` by its c-transform
``f_eps(x) = -eps log sum_j b_j exp((g_j - h(x - y_j)) / eps)``; its gradient is
``sum_j pi_j(x) grad h(x - y_j)`` with ``pi(x)`` the softmax of those terms, and the map is
``T_eps(x) = x - grad h*(grad f_eps(x))``. For ``|x - y|^2`` it is the barycentric projection
``sum_j pi_j(x) y_j``. The inverse map swaps the roles (the costs here are even:
``h(-z) = h(z)``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot.geometry.costs import TICost
from neural_ot.sinkhorn.output import SinkhornOutput, fold

__all__ = ["entropic_map"]


@functools.partial(jax.jit, static_argnames=("cost", "batch_size"))
def _map(points, support, potential, eps, *, cost, batch_size):
  def one(p):
    z = p[None, :] - support  # (m, d)
    logits = (potential - jax.vmap(cost.h)(z)) / eps
    weights = jax.nn.softmax(logits)
    grad = weights @ cost.grad_h(z)
    return p - cost.grad_h_star(grad)
  return jax.lax.map(one, points, batch_size=batch_size)


def entropic_map(out: SinkhornOutput, points, forward: bool = True,
                 batch_size: int = 256) -> jax.Array:
  """``T_eps(points)`` (``forward=True``: source to target) or its inverse, from a Sinkhorn
  solution ``out`` whose cost is a :class:`~neural_ot.TICost` (``SqEuclidean``,
  ``ElasticL1``, ``PNorm(2, p > 1)``, ``Mahalanobis``, ...).

  Args:
    out: the result of :func:`neural_ot.sinkhorn` (balanced or not).
    points: ``(k, d)`` points to map (new points are fine: the potentials extend by their
      c-transform).
    forward: map source points to the target (``True``) or target points back.
    batch_size: points mapped at once (memory ``batch_size * m * d``).

  Returns:
    ``(k, d)`` mapped points.

  Example:
    >>> import jax, neural_ot
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    >>> out = neural_ot.sinkhorn(x, x + 1.0, epsilon=0.05, cost=neural_ot.ElasticL1(0.1))
    >>> neural_ot.entropic_map(out, x[:2]).shape
    (2, 2)
  """
  if not isinstance(out, SinkhornOutput):
    raise TypeError(f"entropic_map: `out` must be a SinkhornOutput, got {type(out).__name__}.")
  cost = out.geom.cost
  if not isinstance(cost, TICost):
    raise ValueError(f"entropic_map: the solution's cost must be translation invariant "
                     f"(neural_ot.TICost), got {type(cost).__name__}.")
  if not (isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
          and batch_size >= 1):
    raise ValueError(f"entropic_map: `batch_size` must be an int >= 1, got {batch_size!r}.")
  if not isinstance(forward, (bool, np.bool_)):
    raise TypeError(f"entropic_map: `forward` must be True or False, got {forward!r}.")
  pts = jnp.asarray(points)
  d = out.geom.x.shape[1]
  if pts.ndim != 2 or pts.shape[1] != d:
    raise ValueError(f"entropic_map: `points` must have shape (k, {d}), got {tuple(pts.shape)}.")
  n, m = out.f.shape[0], out.g.shape[0]
  if forward:  # f_eps(x) from (g, b) on the target points
    support, potential = out.geom.y[:m], fold(out.g, out.epsilon, out.b)
  else:
    support, potential = out.geom.x[:n], fold(out.f, out.epsilon, out.a)
  return _map(pts.astype(support.dtype), support, potential, out.epsilon, cost=cost,
              batch_size=int(batch_size))
