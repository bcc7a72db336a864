import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from neural_ot.geometry import costs


@pytest.fixture
def clouds():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  return jax.random.normal(k1, (13, 3)), jax.random.normal(k2, (11, 3))


@pytest.mark.parametrize("d", [2, 6, 12])
def test_sqeuclidean_matches_scipy(d):
  k1, k2 = jax.random.split(jax.random.PRNGKey(d))
  x, y = jax.random.normal(k1, (9, d)), jax.random.normal(k2, (7, d))
  ref = cdist(np.asarray(x), np.asarray(y), "sqeuclidean")
  np.testing.assert_allclose(costs.SqEuclidean().pairwise(x, y), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p,power,metric", [(1.0, 1.0, "cityblock"), (2.0, 1.0, "euclidean"),
                                            (3.0, 1.0, "minkowski")])
def test_pnorm_matches_scipy(clouds, p, power, metric):
  x, y = clouds
  kw = {"p": p} if metric == "minkowski" else {}
  ref = cdist(np.asarray(x), np.asarray(y), metric, **kw) ** power
  np.testing.assert_allclose(costs.PNorm(p, power).pairwise(x, y), ref, rtol=1e-5, atol=1e-5)


def test_cosine_matches_scipy(clouds):
  x, y = clouds
  ref = cdist(np.asarray(x), np.asarray(y), "cosine")
  np.testing.assert_allclose(costs.Cosine().pairwise(x, y), ref, rtol=1e-5, atol=1e-5)


def test_function_cost_and_pointwise_call(clouds):
  x, y = clouds
  c = costs.FunctionCost(lambda a, b: jnp.sum(jnp.abs(a - b) ** 1.5))
  ref = cdist(np.asarray(x), np.asarray(y), "minkowski", p=1.5) ** 1.5
  np.testing.assert_allclose(c.pairwise(x, y), ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c(x[0], y[1]), ref[0, 1], rtol=1e-5)


def test_pnorm_gradient_finite_at_coincident_points():
  g = jax.grad(lambda x: costs.PNorm(2.0).pairwise(x, x).sum())(jnp.ones((3, 2)))
  assert bool(jnp.all(jnp.isfinite(g)))


def test_as_cost_errors():
  assert isinstance(costs.as_cost("l1"), costs.PNorm)
  with pytest.raises(ValueError, match="`cost` must be one of"):
    costs.as_cost("hamming")
  with pytest.raises(TypeError, match="`cost`"):
    costs.as_cost(3)
  with pytest.raises(ValueError, match="`p` must be >= 1"):
    costs.PNorm(0.5)
