"""Interop with ott-jax: our maps as its DualPotentials, its PointCloud given to our Sinkhorn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ott.geometry import costs, geometry, pointcloud
from ott.problems.linear import potentials
from ott.solvers import linear

import neural_ot
from neural_ot.gaussian import gaussian_w2

# --- neural_ot.sinkhorn on an ott-jax PointCloud -----------------------------------------


def _problem(n=48, m=40, d=2):
  kx, ky, ka, kb = jax.random.split(jax.random.PRNGKey(0), 4)
  x = jax.random.normal(kx, (n, d))
  y = 0.7 * jax.random.normal(ky, (m, d)) + 1.0
  a = jax.random.uniform(ka, (n,), minval=0.5, maxval=1.5)
  b = jax.random.uniform(kb, (m,), minval=0.5, maxval=1.5)
  return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("geom_kw", [dict(epsilon=0.05), dict(epsilon=0.02, relative_epsilon="mean"),
                                     dict()], ids=["absolute", "relative-mean", "ott-default"])
def test_sinkhorn_on_ott_pointcloud_matches_ott(geom_kw):
  x, y, a, b = _problem()
  geom = pointcloud.PointCloud(x, y, **geom_kw)
  ref = linear.solve(geom, a, b, threshold=1e-5, max_iterations=5000)
  out = neural_ot.sinkhorn(geom, a, b, tol=1e-5, max_iters=5000)
  eps = float(geom.epsilon)
  assert float(out.epsilon) == pytest.approx(eps, rel=1e-6)
  assert bool(out.converged)
  np.testing.assert_allclose(out.reg_ot_cost, ref.reg_ot_cost, rtol=1e-4, atol=1e-6)
  # Conventions: ott-jax's potentials are ours plus eps log(a) (resp. b); both are defined up
  # to a constant shift c of f (and -c of g).
  f_ott = out.f + eps * jnp.log(a)
  shift = jnp.mean(ref.f - f_ott)
  np.testing.assert_allclose(f_ott + shift, ref.f, atol=2e-4)
  np.testing.assert_allclose(out.g + eps * jnp.log(b) - shift, ref.g, atol=2e-4)
  np.testing.assert_allclose(out.matrix, ref.matrix, atol=5e-6)


def test_sinkhorn_pointcloud_forms_and_options():
  x, y, a, b = _problem()
  geom = pointcloud.PointCloud(x, y, epsilon=0.05)
  by_position = neural_ot.sinkhorn(geom, a, b)
  by_keyword = neural_ot.sinkhorn(geom, a=a, b=b)
  plain = neural_ot.sinkhorn(x, y, a, b, epsilon=0.05)
  np.testing.assert_allclose(by_position.reg_ot_cost, plain.reg_ot_cost, rtol=1e-6)
  np.testing.assert_allclose(by_keyword.reg_ot_cost, plain.reg_ot_cost, rtol=1e-6)
  # An explicit epsilon overrides the geometry's.
  over = neural_ot.sinkhorn(geom, a, b, epsilon=0.2)
  assert float(over.epsilon) == pytest.approx(0.2)
  # Uniform weights when none are given; ott's online batch_size selects our online mode.
  online = neural_ot.sinkhorn(pointcloud.PointCloud(x, y, epsilon=0.05, batch_size=16))
  dense = neural_ot.sinkhorn(x, y, epsilon=0.05)
  np.testing.assert_allclose(online.reg_ot_cost, dense.reg_ot_cost, rtol=1e-5)
  # Other ott costs: Euclidean maps to ours, an arbitrary CostFn is used as c(x, y).
  for cost_fn in (costs.Euclidean(), costs.PNormP(1.5)):
    g = pointcloud.PointCloud(x, y, cost_fn=cost_fn, epsilon=0.05)
    ref = linear.solve(g, a, b, threshold=1e-6, max_iterations=5000)
    ours = neural_ot.sinkhorn(g, a, b, tol=1e-6, max_iters=5000)
    np.testing.assert_allclose(ours.reg_ot_cost, ref.reg_ot_cost, rtol=1e-4)


def test_sinkhorn_pointcloud_refusals():
  x, y, a, b = _problem()
  with pytest.raises(TypeError, match="PointCloud"):
    neural_ot.sinkhorn(geometry.Geometry(cost_matrix=jnp.ones((3, 3))), epsilon=0.1)
  with pytest.raises(ValueError, match="scale_cost"):
    neural_ot.sinkhorn(pointcloud.PointCloud(x, y, epsilon=0.1, scale_cost="mean"))
  with pytest.raises(TypeError, match="cost"):
    neural_ot.sinkhorn(pointcloud.PointCloud(x, y, epsilon=0.1), cost="euclidean")
  with pytest.raises(TypeError, match="at most two"):
    neural_ot.sinkhorn(pointcloud.PointCloud(x, y, epsilon=0.1), a, b, b)
  with pytest.raises(TypeError, match="epsilon"):
    neural_ot.sinkhorn(x, y)


# --- W2Map.to_ott ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gaussian_map():
  """A map between Gaussians far from the unit scale (so the standardising frame matters),
  started at the moment-matched Gaussian map: close to the exact one after a few steps."""
  m1, m2 = jnp.array([3.0, -2.0]), jnp.array([-1.0, 4.0])
  s1, s2 = jnp.array([[4.0, 1.0], [1.0, 2.0]]), jnp.array([[1.0, -0.3], [-0.3, 0.5]])
  k1, k2 = jax.random.split(jax.random.PRNGKey(1))
  x = jax.random.multivariate_normal(k1, m1, s1, (4000,))
  y = jax.random.multivariate_normal(k2, m2, s2, (4000,))
  mp = neural_ot.fit_w2(x, y, steps=20, init="gaussian", progress=False)
  return mp, x[:500], y[:500], float(gaussian_w2(m1, s1, m2, s2))


def test_to_ott_transports_like_the_map(gaussian_map):
  mp, x, y, _ = gaussian_map
  assert float(mp.frame.sx) != pytest.approx(1.0, abs=0.2)  # the frame is not the identity
  dp = mp.to_ott()
  assert isinstance(dp, potentials.DualPotentials)
  assert isinstance(dp.cost_fn, costs.SqEuclidean)
  np.testing.assert_allclose(dp.transport(x), mp.transport(x), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(dp.transport(y, forward=False), mp.inverse(y), atol=1e-3, rtol=1e-3)


def test_to_ott_distance_is_w2_squared(gaussian_map):
  mp, x, y, w2_exact = gaussian_map
  dp = mp.to_ott()
  # f(x) + g(y) <= |x - y|^2 (the dual constraint of ott-jax's convention) on random pairs,
  # with equality at y = T(x).
  f, g = jax.vmap(dp.f), jax.vmap(dp.g)
  gap = jnp.sum((x - y) ** 2, -1) - f(x) - g(y)
  assert float(gap.min()) > -1e-2 * w2_exact
  tight = jnp.sum((x - mp.transport(x)) ** 2, -1) - f(x) - g(mp.transport(x))
  assert float(jnp.abs(tight).max()) < 1e-2 * w2_exact
  # ott-jax's evaluation: E f + E g estimates W2^2 (here known in closed form).
  assert float(dp.distance(x, y)) == pytest.approx(w2_exact, rel=0.1)


def test_to_ott_plotting_runs(gaussian_map):
  from matplotlib.figure import Figure
  mp, x, y, _ = gaussian_map
  fig = Figure()
  ax = fig.subplots()
  _, ax = mp.to_ott().plot_ot_map(x[:50], y[:50], ax=ax)
  assert len(ax.collections) >= 2  # source, target (and the transported points)
