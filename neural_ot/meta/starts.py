"""Sinkhorn starts for histograms on a fixed support, without training: the Gaussian start and
the multiscale start (solve a coarser problem, extend its potential).

For the multiscale start the support is binned into cells holding about ``2^d`` points each
(the 2 x 2 blocks of a 2-D grid); the histograms' mass is summed per cell; the coarse problem
(the same absolute ``epsilon``) is solved from its Gaussian start to a loose tolerance; its
potential is extended to every support point by two exact c-transforms (coarse ``f`` -> fine
``g`` -> fine ``f``). A coarse iteration costs ``4^-d`` of a fine one.

Measured (``benchmarks/RESULTS.md``, session 39, eps 0.01): on 16 x 16 and 28 x 28 grids this
start reaches marginal error 1e-2 in 0-3.5 fine iterations on mixtures, rings, random smooth
fields and digits (zeros 16-37, the Gaussian start 5-30). Where the coarse cells are farther
apart than ``sqrt(3 eps)`` (an 8 x 8 grid at eps 0.01, a 16 x 16 grid at eps 0.003) the coarse
problem at ``eps`` cannot resolve the entropic blur (at eps 0.01 on 8 x 8 it was worse than
the Gaussian start), so it is solved at the cells' squared spacing / 3 instead, a blurrier
problem, and extended at ``eps`` (session 48: mean iterations to 1e-2 on 8 x 8 digits 22.5 ->
11.2, random smooth fields 31.4 -> 17.5; on 8 x 8 mixtures at eps 0.003 23.1 -> 26.6). Of its
candidates (two coarse problems and the Gaussian start) it keeps the one with the smallest
first marginal error. It is what a Meta OT network adds its correction to
(``fit_meta(base="multiscale")``, the default).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot import _validation
from neural_ot.gaussian import gaussian_potential
from neural_ot.geometry import PointCloud, SqEuclidean
from neural_ot.sinkhorn import Sinkhorn, warm

__all__ = ["Coarsening", "coarsen", "coarsen_or_none", "gaussian_init", "gaussian_potential",
           "multiscale_init"]


def gaussian_init(x, a, b):
  """Baseline ``f`` from the OT map ``A x + c`` between the moment-matched Gaussians:
  ``f(x) = |x|^2 - x^T A x - 2 c.x`` (for the cost ``|x - y|^2``; both histograms on the
  support ``x``)."""
  x = jnp.asarray(x)
  return gaussian_potential(x, a, x, b)


class Coarsening(NamedTuple):
  """Cells of a support: ``ids: (n,)`` cell of each point, ``points: (k, d)`` centroids, and
  ``min_epsilon``, the smallest regularisation the coarse problem is solved at (its cells'
  squared spacing / 3; ``None``: the fine problem's)."""
  ids: jax.Array
  points: jax.Array
  min_epsilon: jax.Array | None = None


# Coarse cells at most sqrt(3 eps) apart are solved at eps: on 16 x 16 grids at eps 0.01
# (cells 1/8 apart, a squared spacing of 1.6 eps) the multiscale start took 1-4 iterations to
# 1e-2 against the Gaussian start's 5-32; on the 8 x 8 grid (1/4 apart, 6.25 eps) it took more
# than the Gaussian start (mixtures 9.5 against 5; digits, Meta OT trained on it: 16.5 against
# 10). Cells farther apart are solved at spacing^2 / 3 (the same bound, as a floor on the coarse
# eps): 8 x 8 digits at eps 0.01, 28 -> 9.5 median iterations to 1e-2 (session 48).
_MAX_CELL_COST = 3.0


def coarsen_or_none(support, epsilon, *, sparse_cells: bool = True) -> Coarsening | None:
  """:func:`coarsen`, or ``None`` where no coarser level exists: a support too small to
  coarsen (fewer than ``2^(d+1)`` points, or a single cell). The multiscale start is then the
  Gaussian start. Where the cells are farther apart than ``sqrt(3 epsilon)`` (their median
  nearest-neighbour spacing), the coarse problem is solved at ``spacing^2 / 3`` instead of
  ``epsilon`` (``min_epsilon``): at ``epsilon`` it cannot resolve the entropic blur.
  ``sparse_cells=False`` gives ``None`` there instead (the rule before 2026-12-08, kept for
  Meta OT models trained under it)."""
  n, d = np.shape(support)
  if n < 2 ** (d + 1):
    return None
  coarse = coarsen(support)
  if len(coarse.points) < 2:
    return None
  spacing = _nn_spacing(np.asarray(coarse.points, np.float64))
  if spacing ** 2 <= _MAX_CELL_COST * float(epsilon):
    return coarse
  if not sparse_cells:
    return None
  return coarse._replace(min_epsilon=jnp.asarray(spacing ** 2 / _MAX_CELL_COST, jnp.float32))


def _nn_spacing(pts: np.ndarray) -> float:
  """Median distance from a point to its nearest neighbour (chunked, exact)."""
  n = len(pts)
  best = np.empty(n)
  sq = np.sum(pts * pts, 1)
  for s in range(0, n, 1024):
    d2 = sq[s:s + 1024, None] + sq[None] - 2 * pts[s:s + 1024] @ pts.T
    d2[np.arange(d2.shape[0]), np.arange(s, s + d2.shape[0])] = np.inf
    best[s:s + 1024] = np.min(d2, 1)
  positive = best[best > 0]
  return float(np.sqrt(np.median(positive))) if positive.size else 1.0


def coarsen(support) -> Coarsening:
  """Bin ``support: (n, d)`` into cells of about ``2^d`` points (host side, deterministic).

  Cells are axis-aligned boxes of width ``2 h`` (``h`` the median nearest-neighbour spacing)
  offset by ``h / 2`` from the support's minimum, so a regular grid splits into its ``2^d``
  blocks exactly; the width grows by 1.25x until the cells number at most ``n / 2^(d-1)``
  (scattered supports). Raises ``ValueError`` for fewer than ``2^(d+1)`` points.
  """
  pts = np.asarray(support, np.float64)
  if pts.ndim != 2 or pts.shape[0] < 2 ** (pts.shape[1] + 1):
    raise ValueError(f"coarsen: `support` must be (n, d) with n >= 2^(d+1) points to coarsen, "
                     f"got shape {pts.shape}.")
  n, d = pts.shape
  h = _nn_spacing(pts)
  lo = pts.min(0) - 0.5 * h
  width = 2 * h
  for _ in range(60):
    _, ids = np.unique(np.floor((pts - lo) / width).astype(np.int64), axis=0,
                       return_inverse=True)
    ids = ids.reshape(-1)
    k = int(ids.max()) + 1
    if k <= n / 2 ** (d - 1):
      break
    width *= 1.25
  counts = np.bincount(ids, minlength=k)
  cents = np.zeros((k, d))
  np.add.at(cents, ids, pts)
  cents /= counts[:, None]
  return Coarsening(jnp.asarray(ids, jnp.int32), jnp.asarray(cents, jnp.float32))


def _extended(support, cx, ac, cy, bc, b, epsilon, solver, min_epsilon=None):
  """Solve the coarse problem ``(cx, ac) -> (cy, bc)`` from its Gaussian start; extend its
  ``f`` to ``g`` at every support point, then to ``f`` there (two exact c-transforms)."""
  geom_c = PointCloud.create(cx, cy, SqEuclidean(), online=False)
  eps_c = epsilon if min_epsilon is None else jnp.maximum(epsilon, min_epsilon)
  out = solver.solve(geom_c, ac, bc, eps_c, init=(gaussian_potential(cx, ac, cy, bc), None))
  cross = PointCloud.create(cx, support, SqEuclidean(), online=False)
  g = solver.c_transform(cross, ac, out.f, epsilon)
  fine = PointCloud.create(support, support, SqEuclidean(), online=False)
  return solver.c_transform(fine, b, g, epsilon)


def multiscale_start(support, coarse: Coarsening, a, b, epsilon, *, tol: float = 1e-2,
                     max_iters: int = 500):
  """``f: (n,)`` for one pair ``a, b: (n,)`` (traceable; ``vmap`` for batches).

  Three candidates, and the one with the smallest first marginal error (the error the
  solver's first iteration measures) is kept: the coarse problem between the cells'
  centroids, the coarse problem between the cells' centres of mass under ``a`` and under
  ``b``, each extended to the support, and the Gaussian start. Measured (session 39, eps
  0.01, median iterations to 1e-2 over 20 pairs): the centroids won on mixtures (1 against 2
  on a 16 x 16 grid), the centres of mass on random smooth fields (3.5 against 13.5) and
  rings (1 against 3). Where the cells are sparse (``coarse.min_epsilon``), the coarse
  problems are solved at that larger epsilon. The first error does not always order the
  candidates as their iterations do: on 8 x 8 mixtures at eps 0.003 the coarse candidates won
  it and took more iterations to 1e-2 (mean 26.6 against the Gaussian start's 23.1). A
  non-finite candidate (a diverged coarse solve) is never kept.
  """
  k = coarse.points.shape[0]
  ac = jax.ops.segment_sum(a, coarse.ids, num_segments=k)
  bc = jax.ops.segment_sum(b, coarse.ids, num_segments=k)

  def centre(w, wc):  # each cell's centre of mass under w (its centroid where it has none)
    m = jax.ops.segment_sum(w[:, None] * support, coarse.ids, num_segments=k)
    return jnp.where(wc[:, None] > 0, m / jnp.where(wc > 0, wc, 1.0)[:, None], coarse.points)

  solver = Sinkhorn(tol=tol, max_iters=max_iters, init_check=False)
  fine = PointCloud.create(support, support, SqEuclidean(), online=False)
  candidates = jnp.stack([
      _extended(support, coarse.points, ac, coarse.points, bc, b, epsilon, solver,
                coarse.min_epsilon),
      _extended(support, centre(a, ac), ac, centre(b, bc), bc, b, epsilon, solver,
                coarse.min_epsilon),
      gaussian_init(support, a, b)])

  def first_error(f):  # the solver's own measure of a start (as for `init_check`)
    err = warm.first_error(solver, fine, a, b, epsilon, solver.init(fine, a, b, epsilon, f))
    return jnp.where(jnp.isfinite(err) & jnp.all(jnp.isfinite(f)), err, jnp.inf)

  f = candidates[jnp.argmin(jax.vmap(first_error)(candidates))]
  return f - jnp.dot(f, a)


def multiscale_init(support, a, b, epsilon: float, *, tol: float = 1e-2):
  """A Sinkhorn start for histograms on a fixed support, without training: the potential of
  a coarser problem (:func:`coarsen`) solved to ``tol`` and extended to every point, or the
  Gaussian start (:func:`gaussian_init`) where that has the smaller first marginal error, or
  where no coarser level exists (:func:`coarsen_or_none`: a support of fewer than
  ``2^(d+1)`` points). Cells farther apart than ``sqrt(3 epsilon)`` are solved at their
  squared spacing / 3.

  Args:
    support: ``(n, d)`` points. a, b: ``(n,)`` histograms or batches ``(k, n)``.
    epsilon: absolute regularisation of the problem to be solved.
    tol: marginal error of the coarse solve (1e-2: its cost was 0.3-2 fine iterations on
      16 x 16 grids).

  Returns:
    ``f`` of the shape of ``a``: pass ``init=(f, None)`` to :func:`neural_ot.sinkhorn`.

  Example:
    >>> import jax, neural_ot
    >>> from neural_ot.meta import gaussian_mixture_histograms, grid, multiscale_init
    >>> x = grid(8)
    >>> a, b = gaussian_mixture_histograms(jax.random.PRNGKey(0), 2, 8)
    >>> f = multiscale_init(x, a, b, 0.01)
    >>> out = neural_ot.sinkhorn(x, x, a, b, epsilon=0.01, init=(f, None))
    >>> bool(out.converged)
    True
  """
  support = _validation.check_points(support, "support").astype(jnp.float32)
  a = _validation.as_float_array(a, "a").astype(jnp.float32)
  b = _validation.as_float_array(b, "b").astype(jnp.float32)
  n = support.shape[0]
  if a.shape != b.shape or a.ndim not in (1, 2) or a.shape[-1] != n:
    raise ValueError(f"multiscale_init: `a` and `b` must both be ({n},) or (k, {n}) histograms "
                     f"on the support, got {tuple(a.shape)} and {tuple(b.shape)}.")
  hs = np.asarray(jnp.stack([a, b]))
  if not np.all(np.isfinite(hs)) or np.any(hs < 0) or not np.allclose(hs.sum(-1), 1, atol=1e-3):
    raise ValueError("multiscale_init: `a` and `b` must be histograms (finite, non-negative, "
                     f"each summing to one); got sums {hs.sum(-1)} and minimum {hs.min():.3g}.")
  if not (isinstance(epsilon, (int, float, np.integer, np.floating))
          and not isinstance(epsilon, bool) and 0 < epsilon < np.inf):
    raise ValueError(f"multiscale_init: `epsilon` must be a number > 0, got {epsilon!r}.")
  if not (isinstance(tol, (int, float, np.floating)) and 0 < tol < np.inf):
    raise ValueError(f"multiscale_init: `tol` must be a number > 0, got {tol!r}.")
  return _batched_start(support, _cached_coarsening(support, float(epsilon)), a, b,
                        float(epsilon), float(tol))


def _cached_coarsening(support, epsilon):
  """:func:`coarsen_or_none`, remembered for the last few supports (host-side work that a
  loop over many pairs on one support would otherwise repeat)."""
  pts = np.asarray(support)
  key = (pts.shape, pts.dtype.str, pts.tobytes(), epsilon)
  if key not in _COARSE_CACHE:
    if len(_COARSE_CACHE) >= 8:
      _COARSE_CACHE.pop(next(iter(_COARSE_CACHE)))
    _COARSE_CACHE[key] = coarsen_or_none(pts, epsilon)
  return _COARSE_CACHE[key]


_COARSE_CACHE: dict = {}


def _batched_start_impl(support, coarse, a, b, epsilon, tol):
  def one(a, b):
    if coarse is None:
      f = gaussian_init(support, a, b)
      return f - jnp.dot(f, a)
    return multiscale_start(support, coarse, a, b, epsilon, tol=tol)
  return one(a, b) if a.ndim == 1 else jax.vmap(one)(a, b)


_batched_start = jax.jit(_batched_start_impl, static_argnames=("tol",))
