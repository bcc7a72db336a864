"""Online reductions in (rows x cols) blocks against dense references: values and gradients,
for shapes that the tile sizes do not divide; tile_size parsing; solver-level agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

import neural_ot
from _problems import weighted_clouds
from neural_ot.geometry import pointcloud as pc
from neural_ot.geometry.pointcloud import PointCloud

N, M, D = 37, 29, 3
EPS = 0.3
TILES = [(8, 5), (5, 8), 7, (16, None), (64, 64), (1, 3)]


def _inputs(seed=0, zero_weights=False):
  k = jax.random.split(jax.random.PRNGKey(seed), 5)
  x = jax.random.normal(k[0], (N, D))
  y = 0.7 * jax.random.normal(k[1], (M, D)) + 0.5
  u = 0.1 * jax.random.normal(k[2], (N,))
  v = 0.1 * jax.random.normal(k[3], (M,))
  if zero_weights:  # zero weights fold to -inf potentials
    u = u.at[3].set(-jnp.inf)
    v = v.at[jnp.array([0, 28])].set(-jnp.inf)
  vec = jax.random.normal(k[4], (max(N, M), 2))
  return x, y, u, v, vec


def _dense(x, y, u, v, vec, kind, axis, cost=None):
  cost = neural_ot.geometry.costs.as_cost(cost)
  c = cost.pairwise(x, y)
  z = (u[:, None] + v[None, :] - c) / EPS
  if kind == "lse":
    return logsumexp(z, axis=axis)
  ez = jnp.exp(z)
  if kind == "sum":
    return jnp.sum(ez, axis=axis)
  if kind == "wcost":
    return jnp.sum(ez * c, axis=axis)
  if kind == "apply":
    red = M if axis == 1 else N
    return jnp.tensordot(ez, vec[:red], axes=((axis,), (0,)))
  raise ValueError(kind)


def _blocked(x, y, u, v, vec, kind, axis, tile, cost=None):
  geom = PointCloud.create(x, y, cost, online=True, tile_size=tile)
  if kind == "lse":
    return geom.lse(u, v, EPS, axis)
  if kind == "sum":
    return geom.kernel_sum(u, v, EPS, axis)
  if kind == "wcost":
    return geom.plan_cost_rows(u, v, EPS)
  red = M if axis == 1 else N
  return geom.apply_plan(u, v, EPS, vec[:red], axis)


CASES = [("sum", 0), ("sum", 1), ("lse", 0), ("lse", 1), ("apply", 0), ("apply", 1),
         ("wcost", 1)]


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("kind,axis", CASES)
def test_blocked_values_match_dense(kind, axis, tile):
  for zero_weights in (False, True):
    args = _inputs(zero_weights=zero_weights)
    got = jax.jit(lambda *a: _blocked(*a, kind, axis, tile))(*args)
    want = _dense(*args, kind, axis)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("tile", [(8, 5), 7])
@pytest.mark.parametrize("kind,axis", CASES)
def test_blocked_gradients_match_dense(kind, axis, tile):
  args = _inputs(seed=1)
  w = jax.random.normal(jax.random.PRNGKey(9), (N if axis == 1 else M, 2))

  def loss(fn):
    def f(x, y, u, v, vec):
      out = fn(x, y, u, v, vec)
      return jnp.sum(out * (w if out.ndim == 2 else w[:, 0]))
    return f

  got = jax.grad(loss(lambda *a: _blocked(*a, kind, axis, tile)), argnums=range(5))(*args)
  want = jax.grad(loss(lambda *a: _dense(*a, kind, axis)), argnums=range(5))(*args)
  for g, h in zip(got, want):
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-5 * float(jnp.abs(h).max() + 1e-30))


def test_blocked_gradients_with_zero_weights_and_epsilon_are_finite():
  x, y, u, v, _ = _inputs(zero_weights=True)

  def loss(x, eps, fn):
    g = PointCloud.create(x, y, online=True, tile_size=(8, 5))
    gd = PointCloud.create(x, y, online=False)
    geom = g if fn == "blocked" else gd
    return jnp.sum(jnp.where(jnp.isfinite(u), geom.kernel_sum(u, v, eps, 1), 0.0)) \
        + jnp.sum(geom.kernel_sum(u, v, eps, 0))

  gb = jax.grad(loss, argnums=(0, 1))(x, 0.3, "blocked")
  gd = jax.grad(loss, argnums=(0, 1))(x, 0.3, "dense")
  np.testing.assert_allclose(gb[0], gd[0], rtol=1e-4, atol=1e-6)
  assert np.isfinite(gb[1]) or not np.isfinite(gd[1])


def test_blocked_jvps_with_zero_weights_are_finite():
  """Forward mode with -inf (zero-weight) potentials and epsilon not differentiated: the
  optimization barrier in _reduce used to give epsilon a literal zero tangent, and the JVP
  of (u + v - C) / eps was then 0 * inf = NaN (NaN implicit-diff gradients with padding)."""
  x, y, u, v, vec = _inputs(zero_weights=True)
  du, dv = jnp.linspace(-1.0, 1.0, N), jnp.linspace(0.5, -0.5, M)
  c = neural_ot.geometry.costs.as_cost(None).pairwise(x, y)
  z = (u[:, None] + v[None, :] - c) / EPS
  dz = jnp.where(jnp.isfinite(z), jnp.exp(z) * (du[:, None] + dv[None, :]) / EPS, 0.0)
  for geom in (PointCloud.create(x, y, online=True, tile_size=(8, 5)),
               PointCloud.create(x, y, online=False)):
    for axis in (0, 1):
      w = vec[:M if axis else N, 0]
      got = jax.jvp(lambda u, v: geom.kernel_sum(u, v, EPS, axis), (u, v), (du, dv))[1]
      np.testing.assert_allclose(got, jnp.sum(dz, axis), rtol=1e-4, atol=1e-6)
      got = jax.jvp(lambda u, v: geom.apply_plan(u, v, EPS, w, axis), (u, v), (du, dv))[1]
      want = jnp.tensordot(dz, w, axes=((axis,), (0,)))
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("online", [True, False])
def test_implicit_gradients_with_a_tile_of_zero_weight_points(online):
  """Padding (a whole tile of zero-weight points, as the sharded solver adds) leaves the
  implicit-diff gradients of the real points unchanged and finite."""
  x, y, a, b = weighted_clouds(20, 13, 2, seed=5)
  pad = 8
  xp = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad, 2))])
  ap = jnp.concatenate([a, jnp.zeros(pad)])

  def loss(x, a):
    return neural_ot.sinkhorn(x, y, a, b, epsilon=0.1, tol=1e-6, online=online,
                              tile_size=(8, 5)).reg_ot_cost

  gx, ga = jax.grad(loss, (0, 1))(x, a)
  gxp, gap = jax.grad(loss, (0, 1))(xp, ap)
  assert bool(jnp.all(jnp.isfinite(gxp))) and bool(jnp.all(jnp.isfinite(gap)))
  np.testing.assert_allclose(gxp[:20], gx, atol=1e-4 * float(jnp.abs(gx).max()))
  np.testing.assert_allclose(gxp[20:], 0.0, atol=1e-6)
  np.testing.assert_allclose(gap[:20], ga, atol=1e-4 * float(jnp.abs(ga).max()))


def test_general_cost_and_mean_cost():
  cost = lambda p, q: jnp.sum(jnp.abs(p - q) ** 1.5)
  args = _inputs(seed=2)
  for axis in (0, 1):
    got = _blocked(*args, "sum", axis, (6, 4), cost=cost)
    np.testing.assert_allclose(got, _dense(*args, "sum", axis, cost=cost), rtol=2e-5)
  x, y = args[:2]
  a = jnp.full(N, 1.0 / N)
  b = jnp.full(M, 1.0 / M)
  want = a @ neural_ot.geometry.costs.as_cost(cost).pairwise(x, y) @ b
  got = PointCloud.create(x, y, cost, online=True, tile_size=(6, 4)).mean_cost(a, b)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_whole_axis_tiles_agree():
  """The pre-blocking scheme (row tiles against the whole reduced axis), which
  benchmarks/sinkhorn.py --online-scan times as `tile_size=(rows, None)`, agrees too."""
  args = _inputs()
  for kind, axis in CASES:
    np.testing.assert_allclose(_blocked(*args, kind, axis, (8, None)), _dense(*args, kind, axis),
                               rtol=2e-5, atol=1e-6)


def test_tile_size_parsing():
  x, y = _inputs()[:2]
  assert PointCloud.create(x, y, online=True).tile_size == pc.DEFAULT_TILE_SIZE
  assert PointCloud.create(x, y, online=True, tile_size=7).tile_size == (7, 7)
  g = PointCloud.create(x, y, online=True, tile_size=(3, None))
  assert (g.tile_rows, g.tile_cols) == (3, N)
  for bad in (0, (4,), (4, 0), (2.5, 4), "8", (4, 4, 4), True):
    with pytest.raises(ValueError, match="tile_size"):
      PointCloud.create(x, y, online=True, tile_size=bad)
  with pytest.raises(ValueError, match="tile_size"):
    neural_ot.Sinkhorn(tile_size=(0, 3))


@pytest.mark.slow
@pytest.mark.parametrize("implicit_diff", [True, False])
def test_solver_with_non_dividing_blocks_matches_dense(implicit_diff):
  x, y, a, b = weighted_clouds(41, 27, 2, seed=4)
  kw = dict(epsilon=0.1, tol=1e-6, implicit_diff=implicit_diff,
            max_iters=2000 if implicit_diff else 300)

  def loss(x, a, **extra):
    return neural_ot.sinkhorn(x, y, a, b, **kw, **extra).reg_ot_cost

  dense = loss(x, a, online=False)
  for tile in [(8, 5), (5, 16), 64]:
    np.testing.assert_allclose(loss(x, a, online=True, tile_size=tile), dense, rtol=1e-5)
  gd = jax.grad(lambda x, a: loss(x, a, online=False), (0, 1))(x, a)
  go = jax.grad(lambda x, a: loss(x, a, online=True, tile_size=(8, 5)), (0, 1))(x, a)
  for g, h in zip(go, gd):
    np.testing.assert_allclose(g, h, atol=1e-5 * float(jnp.abs(h).max()))


def test_blocked_reduction_vmaps():
  k = jax.random.split(jax.random.PRNGKey(3), 2)
  xs = jax.random.normal(k[0], (3, N, D))
  ys = jax.random.normal(k[1], (3, M, D))
  u = jnp.zeros(N)
  v = jnp.zeros(M)

  def red(x, y):
    return PointCloud.create(x, y, online=True, tile_size=(8, 5)).lse(u, v, EPS, 0)

  got = jax.vmap(red)(xs, ys)
  want = jnp.stack([_dense(xs[i], ys[i], u, v, None, "lse", 0) for i in range(3)])
  np.testing.assert_allclose(got, want, rtol=2e-5)
