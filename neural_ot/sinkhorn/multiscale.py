"""A multiscale Sinkhorn start for two point clouds of any sizes, without training.

Each cloud is binned into axis-aligned grid cells; a cell's mass is the sum of its points'
weights, sitting at their centre of mass. Levels hold at most ``n / 2``, ``n / 8``, ``n / 32``,
... cells (at least 32): the cell width grows by 1.25x until the cloud fits. From the coarsest
level up, each level is solved to ``tol`` starting from the level below it (that level's ``g``
extended to the new cells by an exact c-transform); the finest level's potential is extended to every point
of ``x``. A level whose cells are too wide for ``epsilon`` (its quantisation error, the weighted
mean squared distance of a point to its cell's centre, above ``0.05 epsilon``) is solved at a
larger regularisation, ``quantisation / 0.05``: a blurrier problem that the cells can resolve
(epsilon scaling tied to the resolution, as in Schmitzer's and Feydy's multiscale Sinkhorn).

Everything is traceable with static shapes (the number of cells per level depends only on
``n`` and ``m``): a second call with new clouds of the same shapes does not retrace; ``vmap``
runs batches. An iteration on level ``l`` (0 the finest) costs about ``16^-l / 4`` of one on the
full clouds.

Where it helps, measured (``benchmarks/RESULTS.md``, session 40, eps = 0.01 x mean cost): in
``d = 2`` its start reaches marginal error 1e-3 within 0-11 iterations where zeros take 40-241
(1,000 to 20,000 points; 1.7-12x less wall-clock, the start included). Where the points are
farther apart than ``sqrt(epsilon)`` (high dimension at small ``epsilon``: no cell can hold two
points without blurring the problem), the finest level's quantisation error is large and
:func:`multiscale_points_init` returns the Gaussian start instead; where both are computed, the
one with the smaller first marginal error is returned.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot import _validation, tracing
from neural_ot.gaussian import gaussian_potential
from neural_ot.geometry import PointCloud, SqEuclidean
from neural_ot.geometry import costs as costs_lib
from neural_ot.sinkhorn import warm
from neural_ot.sinkhorn.solver import Sinkhorn

__all__ = ["MAX_QUANTISATION", "MIN_POINTS", "grid_cells", "multiscale_points_init",
           "multiscale_points_start", "resolve_init", "start"]

# A level is solved at max(epsilon, quantisation / _Q_MAX). Measured on d = 2 mixtures (n =
# 4,000, median of 3 pairs): 0.05 took 1 / 19 iterations to 1e-3 / 1e-4, 0.2 took 4 / 46.
_Q_MAX = 0.05
# The multiscale start is used where the finest level's quantisation is at most this many
# epsilons (that level is then solved at most 10x blurrier than the problem). Chosen on d = 4
# and 8 mixtures, rings and a 1-D subspace family (1,000 points, session 40).
MAX_QUANTISATION = 0.5
_MIN_CELLS = 32
MIN_POINTS = 2 * _MIN_CELLS  # fewer points in a cloud: no coarser level
_SHRINK = 4


def grid_cells(z, width0, cap: int, *, max_grow: int = 200):
  """Bin ``z: (n, d)`` into at most ``cap`` axis-aligned grid cells (traceable).

  The cell width starts at ``width0`` and grows by 1.25x until the occupied cells number at
  most ``cap``. Returns ``(ids, width)``: ``ids: (n,)`` the cell of each point, numbered
  ``0 .. K - 1`` (``K <= cap`` occupied cells) in lexicographic order of the cells.
  """
  lo = jnp.min(z, 0)
  span = jnp.max(jnp.max(z, 0) - lo)
  # int32 cell coordinates: a width below span / 2^24 would overflow; it is never needed.
  width0 = jnp.maximum(width0, span / 2.0 ** 24 + jnp.finfo(z.dtype).tiny)

  def cells(width):
    q = jnp.floor((z - lo) / width).astype(jnp.int32)
    order = jnp.lexsort(tuple(q[:, i] for i in range(q.shape[1] - 1, -1, -1)))
    qs = q[order]
    new = jnp.concatenate([jnp.ones(1, bool), jnp.any(qs[1:] != qs[:-1], 1)])
    rank = (jnp.cumsum(new) - 1).astype(jnp.int32)
    return jnp.zeros(z.shape[0], jnp.int32).at[order].set(rank), rank[-1] + 1

  def too_many(state):
    width, i = state
    return (cells(width)[1] > cap) & (i < max_grow)

  width, _ = jax.lax.while_loop(too_many, lambda s: (s[0] * 1.25, s[1] + 1), (width0, 0))
  ids, _ = cells(width)
  # After max_grow growths (never on finite data) cells past the cap share the last one.
  return jnp.minimum(ids, cap - 1), width


def _pooled(z, w, ids, cap):
  """Cell masses, centres of mass (the weighted mean of all points for an empty cell) and the
  quantisation error ``sum_i w_i |z_i - centre(z_i)|^2``."""
  mass = jax.ops.segment_sum(w, ids, num_segments=cap)
  moment = jax.ops.segment_sum(w[:, None] * z, ids, num_segments=cap)
  centre = jnp.where(mass[:, None] > 0, moment / jnp.where(mass > 0, mass, 1.0)[:, None], w @ z)
  return centre, mass, jnp.sum(w * jnp.sum((z - centre[ids]) ** 2, -1))


def _caps(n: int, m: int):
  """Cells per level, finest first: ``n // 2, n // 8, ...`` for ``x`` (and so for ``y``) while
  both clouds keep at least ``_MIN_CELLS``."""
  caps = []
  cx, cy = n // 2, m // 2
  while min(cx, cy) >= _MIN_CELLS:
    caps.append((cx, cy))
    cx, cy = cx // _SHRINK, cy // _SHRINK
  return caps


def _levels(x, a, y, b, eps):
  """The levels, finest first: ``(cx, ac, cy, bc, quantisation)`` per level."""
  width = 0.1 * jnp.sqrt(eps)
  wx = wy = width
  levels = []
  for capx, capy in _caps(x.shape[0], y.shape[0]):
    ix, wx = grid_cells(x, wx, capx)
    iy, wy = grid_cells(y, wy, capy)
    cx, ac, qx = _pooled(x, a, ix, capx)
    cy, bc, qy = _pooled(y, b, iy, capy)
    levels.append((cx, ac, cy, bc, jnp.maximum(qx, qy)))
  return levels


def multiscale_points_start(x, a, y, b, eps, *, tol: float = 1e-3, max_iters: int = 500,
                            first_f=None, fallback=None):
  """``(f, quantisation)``: the multiscale ``f`` at every point of ``x`` and the finest level's
  quantisation error (absolute). Traceable; needs ``n, m >= 64``.

  ``first_f(cx, ac, cy, bc, eps)``: the coarsest level's start (default: its Gaussian start,
  :func:`gaussian_potential`); :class:`neural_ot.meta.MetaPointsOT` passes its network here.
  ``fallback()``: if given, the ``f`` returned instead: without solving any level where the
  finest level's quantisation exceeds ``0.5 eps`` (``MAX_QUANTISATION``), and where its first
  marginal error (the solver's measure, two passes over the full clouds) is smaller than the
  pyramid's (measured, session 40: in d = 4 the Gaussian start had the smaller first error on
  boxes and rings and took 0-8 fewer iterations to 1e-3; in d = 2 the pyramid's first error was
  10-100x smaller).
  """
  if not _caps(x.shape[0], y.shape[0]):
    raise ValueError(f"multiscale_points_start: both clouds need at least {MIN_POINTS} "
                     f"points, got {x.shape[0]} and {y.shape[0]}.")
  solver = Sinkhorn(tol=tol, max_iters=max_iters, init_check=False)

  def chain(levels):
    prev = None
    for cx, ac, cy, bc, q in levels[::-1]:
      e = jnp.maximum(eps, q / _Q_MAX)
      if prev is None:
        f0 = (gaussian_potential(cx, ac, cy, bc) if first_f is None
              else first_f(cx, ac, cy, bc, e))
      else:  # the level below's g, extended to this level's x cells
        py, pb, pg, pe = prev
        f0 = solver.c_transform(PointCloud.create(py, cx, SqEuclidean()), pb, pg, pe)
      out = solver.solve(PointCloud.create(cx, cy, SqEuclidean()), ac, bc, e, init=(f0, None))
      prev = (cy, bc, out.g, e)
    py, pb, pg, pe = prev  # f at every point of x, from the finest level's g
    return solver.c_transform(PointCloud.create(py, x, SqEuclidean()), pb, pg, pe)

  if fallback is None:
    levels = _levels(x, a, y, b, eps)
    return chain(levels), levels[0][4]

  def first_error(f):  # the solver's own measure of a start (as `init_check` uses it)
    geom = PointCloud.create(x, y, SqEuclidean())
    err = warm.first_error(solver, geom, a, b, eps, solver.init(geom, a, b, eps, f))
    return jnp.where(jnp.isfinite(err) & jnp.all(jnp.isfinite(f)), err, jnp.inf)

  def chosen(levels):  # the pyramid, unless the fallback has the smaller first error
    f_pyramid, f_other = chain(levels), fallback()
    return jnp.where(first_error(f_pyramid) <= first_error(f_other), f_pyramid, f_other)

  def full():
    levels = _levels(x, a, y, b, eps)
    q = levels[0][4]
    return jax.lax.cond(q <= MAX_QUANTISATION * eps, lambda: chosen(levels), fallback), q

  # No grid is built where the estimate below already exceeds the threshold (high dimension
  # at small eps): a probe of 64 points against all, O(64 n d).
  bound = jnp.maximum(_pair_bound(x), _pair_bound(y))
  f, q = jax.lax.cond(bound <= MAX_QUANTISATION * eps, full, lambda: (fallback(), bound))
  return jnp.where(jnp.all(jnp.isfinite(f)), f, fallback()), q


def _pair_bound(z):
  """An estimate of the finest level's quantisation (uniform weights): the median over 64
  evenly spaced probe points of ``nn^2 / 4`` (``nn``: the distance to the nearest other point).

  A cell of ``k >= 2`` points holds ``sum |z_i - c|^2 = sum_ij |z_i - z_j|^2 / 2k >= sum_i
  nn_i^2 / 4``, and with at most ``n / 2`` cells most points share one. Measured (session 40,
  d = 2 to 8, 1,000 points): 2-10x below the quantisation the grid then reaches.
  """
  n = z.shape[0]
  idx = jnp.asarray(np.linspace(0, n - 1, min(64, n)).astype(np.int32))
  d2 = jnp.sum((z[idx, None, :] - z[None, :, :]) ** 2, -1)
  d2 = d2.at[jnp.arange(idx.shape[0]), idx].set(jnp.inf)
  return jnp.median(jnp.min(d2, 1)) / 4


def start(x, a, y, b, eps, tol: float = 1e-3):
  """The start of :func:`multiscale_points_init` without input checks (traceable; ``a``, ``b``
  normalised weights, ``eps`` absolute): the pyramid's ``f``, or the Gaussian start."""
  tracing.traced("multiscale_start")
  gaussian = lambda: gaussian_potential(x, a, y, b)  # noqa: E731
  if min(x.shape[0], y.shape[0]) < MIN_POINTS:
    return gaussian()
  return multiscale_points_start(x, a, y, b, eps, tol=tol, fallback=gaussian)[0]


_start = jax.jit(start, static_argnames=("tol",))


def multiscale_points_init(x, y, a=None, b=None, *, epsilon, tol: float = 1e-3):
  """A Sinkhorn start for two point clouds of any sizes (cost ``|x - y|^2``), without training:
  a pyramid of coarser problems (each cloud binned into grid cells) solved from coarse to fine
  and extended to every point (module docstring), or the Gaussian start
  (:func:`gaussian_potential`) where the cells cannot resolve ``epsilon`` (the finest level's
  quantisation error above ``0.5 epsilon``), where the Gaussian start has the smaller first
  marginal error, or where a cloud has fewer than 64 points.

  Args:
    x: ``(n, d)`` points. y: ``(m, d)`` points. a, b: weights (uniform by default; normalised).
    epsilon: the absolute regularisation of the solve it starts.
    tol: marginal error each level is solved to.

  Returns:
    ``(f, None)``: pass it as ``init`` to :func:`neural_ot.sinkhorn` with the same clouds,
    weights and ``epsilon``.

  Example:
    >>> import jax, neural_ot
    >>> from neural_ot.meta import multiscale_points_init
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (1000, 2))
    >>> y = jax.random.normal(jax.random.PRNGKey(1), (1200, 2)) + 1.0
    >>> init = multiscale_points_init(x, y, epsilon=0.05)
    >>> out = neural_ot.sinkhorn(x, y, epsilon=0.05, init=init)
    >>> bool(out.converged)
    True
  """
  x = _validation.check_points(x, "x").astype(jnp.float32)
  y = _validation.check_points(y, "y").astype(jnp.float32)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"multiscale_points_init: `x` and `y` must have the same dimension, got "
                     f"shapes {tuple(x.shape)} and {tuple(y.shape)}.")
  for name, z in (("x", x), ("y", y)):
    _validation.check_finite(z, name)
  a = _validation.cloud_weights(a, x.shape[0], "a", "x", "multiscale_points_init")
  b = _validation.cloud_weights(b, y.shape[0], "b", "y", "multiscale_points_init")
  eps = _validation.check_epsilon(epsilon)
  if not (_validation.is_real(tol) and 0 < tol < np.inf):
    raise ValueError(f"multiscale_points_init: `tol` must be a number > 0, got {tol!r}.")
  return _start(x, a, y, b, jnp.asarray(eps, jnp.float32), float(tol)), None


def resolve_init(init, solver: Sinkhorn, x, y, a, b, epsilon):
  """``init`` for :func:`neural_ot.sinkhorn` given by name: ``"multiscale"`` is
  :func:`multiscale_points_init` for these clouds (traceable; the levels solved to
  ``max(solver.tol, 1e-3)``). It needs the default cost ``|x - y|^2``, balanced marginals and
  one device (no ``mesh``); other names or settings raise ``ValueError``."""
  if init != "multiscale":
    raise ValueError(f"sinkhorn: `init` must be None, a pair (f, g) or 'multiscale', got "
                     f"{init!r}.")
  if not isinstance(costs_lib.as_cost(solver.cost), SqEuclidean):
    raise ValueError(f"sinkhorn: init='multiscale' needs the cost |x - y|^2 (the default), got "
                     f"cost={solver.cost!r}.")
  if not solver.balanced or solver.mesh is not None:
    raise ValueError("sinkhorn: init='multiscale' needs a balanced problem on one device "
                     f"(rho_a = rho_b = None, no mesh), got rho_a={solver.rho_a!r}, "
                     f"rho_b={solver.rho_b!r}, mesh={solver.mesh!r}.")
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  a = jnp.full((x.shape[0],), 1.0 / x.shape[0], x.dtype) if a is None else jnp.asarray(a, x.dtype)
  b = jnp.full((y.shape[0],), 1.0 / y.shape[0], y.dtype) if b is None else jnp.asarray(b, y.dtype)
  a, b = a / jnp.sum(a), b / jnp.sum(b)
  # The solver's own resolution of a relative epsilon (online: the mean cost from the moments).
  eps = solver.absolute_epsilon(PointCloud.create(x, y, SqEuclidean(), online=True), a, b,
                                jnp.asarray(epsilon, x.dtype))
  return _start(x, a, y, b, eps, max(float(solver.tol), 1e-3)), None
