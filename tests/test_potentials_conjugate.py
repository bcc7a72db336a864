"""ICNN convexity and conjugate solvers against closed forms."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neural_ot
from neural_ot.conjugate import ConjugateSolver, conjugate, solvers
from neural_ot.potentials import ICNN, MLPPotential
from neural_ot.w2.trainer import W2Trainer, as_config


@pytest.fixture(scope="module")
def icnn():
  model = ICNN(hidden=(32, 32), strong_convexity=0.1)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros(3))
  # Perturb the parameters so the test is not about the initialisation.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  leaves = [p + 0.5 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  params = jax.tree.unflatten(tree, leaves)
  return lambda x: model.apply(params, x)


def test_icnn_convex_along_random_segments(icnn):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(2), 3)
  x0 = 2 * jax.random.normal(k1, (200, 3))
  x1 = 2 * jax.random.normal(k2, (200, 3))
  t = jax.random.uniform(k3, (200, 1))
  lhs = icnn(t * x0 + (1 - t) * x1)
  rhs = t[:, 0] * icnn(x0) + (1 - t[:, 0]) * icnn(x1)
  assert bool(jnp.all(lhs <= rhs + 1e-5))


def test_icnn_hessians_psd(icnn):
  xs = 2 * jax.random.normal(jax.random.PRNGKey(3), (50, 3))
  hess = jax.vmap(jax.hessian(icnn))(xs)
  eig = jnp.linalg.eigvalsh(hess)
  assert float(eig.min()) >= 0.1 - 1e-4  # strong convexity 0.1 is a floor


def test_icnn_starts_near_identity_map():
  model = ICNN(hidden=(32, 32))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros(2))
  x = jax.random.normal(jax.random.PRNGKey(1), (64, 2))
  grad = jax.vmap(jax.grad(lambda v: model.apply(params, v)))(x)
  np.testing.assert_allclose(grad, x, atol=0.1)


def test_mlp_potential_can_be_non_convex():
  # With generic weights the plain MLP is not convex: some Hessian has a negative eigenvalue.
  model = MLPPotential(hidden=(16,))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros(2))
  # The output layer starts tiny; scale the network (not the convex quadratic term).
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: p if "quad" in jax.tree_util.keystr(path) else 30.0 * p, params)
  xs = 2 * jax.random.normal(jax.random.PRNGKey(1), (200, 2))
  eig = jnp.linalg.eigvalsh(jax.vmap(jax.hessian(lambda v: model.apply(params, v)))(xs))
  assert float(eig.min()) < 0.0


def test_bad_icnn_activation():
  with pytest.raises(ValueError, match="`activation`"):
    ICNN(activation="tanh").init(jax.random.PRNGKey(0), jnp.zeros(2))


@pytest.mark.parametrize("method,iters", [("lbfgs", 100), ("adam", 3000)])
def test_conjugate_of_quadratic_closed_form(method, iters):
  # f(x) = 0.5 x^T A x + c^T x  =>  x*(y) = A^{-1}(y - c), f*(y) = 0.5 (y-c)^T A^{-1} (y-c).
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  m = jax.random.normal(k1, (3, 3))
  A = m @ m.T + 0.5 * jnp.eye(3)
  c = jax.random.normal(k2, (3,))
  f = lambda x: 0.5 * x @ A @ x + c @ x
  y = jax.random.normal(k3, (16, 3))
  tol = 1e-4 if method == "lbfgs" else 1e-3
  res = jax.jit(lambda y: ConjugateSolver(method, tol=tol, max_iters=iters,
                                          learning_rate=0.02)(f, y))(y)
  x_true = jnp.linalg.solve(A, (y - c).T).T
  np.testing.assert_allclose(res.x, x_true, atol=5 * tol)
  val_true = 0.5 * jnp.sum((y - c) * x_true, -1)
  np.testing.assert_allclose(res.value, val_true, atol=5 * tol)
  assert bool(jnp.all(res.grad_norm < tol))
  if method == "lbfgs":
    assert int(res.n_iters.max()) < 30


def test_conjugate_separable_and_fenchel_young(icnn):
  # Separable: f(x) = sum cosh(x_i)  =>  x*_i = asinh(y_i).
  f = lambda x: jnp.sum(jnp.cosh(x))
  y = jax.random.normal(jax.random.PRNGKey(4), (32, 2))
  res = ConjugateSolver(tol=1e-5)(f, y)
  np.testing.assert_allclose(res.x, jnp.arcsinh(y), atol=1e-4)
  # ICNN: grad f(x*) = y and Fenchel-Young f(x) + f*(y) >= <x, y>, equality at x*.
  y = jax.random.normal(jax.random.PRNGKey(5), (32, 3))
  res = ConjugateSolver(tol=1e-5, max_iters=200)(icnn, y)
  np.testing.assert_allclose(jax.vmap(jax.grad(icnn))(res.x), y, atol=1e-4)
  np.testing.assert_allclose(icnn(res.x) + res.value, jnp.sum(res.x * y, -1), atol=1e-4)
  xr = jax.random.normal(jax.random.PRNGKey(6), (32, 3))
  assert bool(jnp.all(icnn(xr) + res.value >= jnp.sum(xr * y, -1) - 1e-5))


def test_warm_start_from_solution_takes_no_steps():
  f = lambda x: jnp.sum(jnp.cosh(x))
  y = jax.random.normal(jax.random.PRNGKey(4), (8, 2))
  res = ConjugateSolver(tol=1e-4)(f, y, x0=jnp.arcsinh(y))
  assert int(res.n_iters.max()) == 0


def test_danskin_gradient_matches_finite_differences(x64):
  # A convex potential whose conjugate has no closed form: the Danskin gradient in theta
  # (argmax held fixed) against central differences of values re-solved at theta +- h.
  y = jax.random.normal(jax.random.PRNGKey(7), (4, 2), jnp.float64)
  w = jnp.array([0.3, -0.8], jnp.float64)

  def potential(theta):
    return lambda x: 0.5 * theta[0] * jnp.sum(x * x) + theta[1] * jnp.logaddexp(0.0, x @ w)

  @jax.jit
  def fstar(theta):
    f = potential(theta)
    res = ConjugateSolver(tol=1e-10, max_iters=500)(f, y)
    return jnp.sum(conjugate(f, y, res.x))

  theta = jnp.array([1.7, 0.6], jnp.float64)
  grad = jax.jit(jax.grad(fstar))(theta)
  h = 1e-5
  for k in range(2):
    e = jnp.zeros(2, jnp.float64).at[k].set(h)
    fd = (fstar(theta + e) - fstar(theta - e)) / (2 * h)
    np.testing.assert_allclose(grad[k], fd, rtol=1e-6)


@pytest.mark.parametrize("solver", [ConjugateSolver(tol=1e-9, max_iters=40),
                                    solvers.OWLQNSolver(0.3, tol=1e-9, max_iters=40),
                                    solvers.ProxGradSolver(0.3, tol=1e-9, max_iters=40)])
def test_line_search_retries_on_few_rows_match_whole_batch_retries(solver, x64):
  # rows are independent problems: evaluating only the rows still searching must give the
  # iterates of whole-batch retries (to round-off in float64, the same iteration counts),
  # including rows that halve often
  w = jax.random.normal(jax.random.PRNGKey(0), (5, 5))
  f = lambda x: 0.5 * jnp.sum(x ** 2) + jnp.sum(jax.nn.softplus(3 * w @ x)) + 0.5 * jnp.sum(x ** 4)
  # rows far out start where the quartic's curvature makes the unit step overshoot
  y = jax.random.normal(jax.random.PRNGKey(1), (37, 5), jnp.float64) * jnp.where(
      jnp.arange(37) % 5 == 0, 4.0, 0.5)[:, None]
  extra = lambda z: 0.05 * jnp.sum(jnp.cosh(z))
  few = dataclasses.replace(solver, retry_divisor=8)(f, y, y, extra=extra)
  whole = dataclasses.replace(solver, retry_divisor=1)(f, y, y, extra=extra)
  np.testing.assert_array_equal(np.asarray(few.n_iters), np.asarray(whole.n_iters))
  for a, b in zip(few, whole):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-10)
  assert int(jnp.max(few.n_iters)) > 3


def test_a_sharded_fit_retries_on_the_whole_batch():
  # gathering the searching rows of a batch split over devices would be a collective
  trainer = W2Trainer(potential="mlp", cost=neural_ot.ElasticL1(0.1))
  assert trainer.solver.retry_divisor == solvers.RETRY_DIVISOR > 1
  assert dataclasses.replace(trainer, sharded=True).solver.retry_divisor == 1
  assert dataclasses.replace(trainer, sharded=True, cost=None).solver.retry_divisor == 1
  assert "sharded" not in as_config(dataclasses.replace(trainer, sharded=True))
  for make in (ConjugateSolver, lambda **kw: solvers.OWLQNSolver(0.1, **kw),
               lambda **kw: solvers.ProxGradSolver(0.1, **kw)):
    with pytest.raises(ValueError, match="`retry_divisor` must be an int >= 1"):
      make(retry_divisor=0)
    with pytest.raises(ValueError, match="`max_linesearch` must be an int >= 0"):
      make(max_linesearch=-1)
    for bad in (0.0, "x", None):
      with pytest.raises(ValueError, match="`tol` must be a number > 0"):
        make(tol=bad)
  for bad in (-0.1, "x"):
    with pytest.raises(ValueError, match="`l1` must be a number >= 0"):
      solvers.OWLQNSolver(bad)


def test_conjugate_bad_input():
  with pytest.raises(ValueError, match="`method`"):
    ConjugateSolver(method="newton")
  with pytest.raises(ValueError, match="`y` must have shape"):
    ConjugateSolver()(lambda x: jnp.sum(x * x), jnp.ones(3))
