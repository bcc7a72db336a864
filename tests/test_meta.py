"""Meta OT: c-transform and dual against the Sinkhorn solver, warm starts, save/load, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neural_ot
from neural_ot.meta import (c_transform, dual_value, fit_meta, gaussian_init,
                            gaussian_mixture_histograms, grid, load_meta,
                            support_geometry)

SIZE, EPS = 8, 0.01
X = grid(SIZE)
C = jnp.sum((X[:, None] - X[None]) ** 2, -1)
GEOM = support_geometry(X)


def pairs(k, n):
  return (gaussian_mixture_histograms(k, n, SIZE),
          gaussian_mixture_histograms(jax.random.fold_in(k, 1), n, SIZE))


@pytest.fixture(scope="module")
def model():
  return fit_meta(pairs, X, EPS, steps=400, batch_size=32, hidden=(128,), log_every=100)


def _iters(a, b, f0, tol):
  out = neural_ot.sinkhorn(X, X, a, b, epsilon=EPS, tol=tol, max_iters=3000,
                           init=None if f0 is None else (f0, None))
  assert bool(out.converged)
  return int(out.n_iters)


def test_c_transform_makes_the_column_marginal_exact_and_dual_matches_sinkhorn():
  a, b = pairs(jax.random.PRNGKey(0), 1)
  a, b = a[0], b[0]
  f = jax.random.normal(jax.random.PRNGKey(1), a.shape) * 0.05
  g = c_transform(f, a, GEOM, EPS)
  plan = a[:, None] * b[None] * jnp.exp((f[:, None] + g[None] - C) / EPS)
  np.testing.assert_allclose(plan.sum(0), b, rtol=1e-4)
  out = neural_ot.sinkhorn(X, X, a, b, epsilon=EPS, tol=1e-6, max_iters=5000)
  # At the solver's optimum the dual equals its entropic cost; any other f is below (weak duality).
  np.testing.assert_allclose(dual_value(out.f, a, b, GEOM, EPS), out.reg_ot_cost, rtol=1e-4)
  assert float(dual_value(f, a, b, GEOM, EPS)) < float(out.reg_ot_cost)


def test_c_transform_and_dual_are_the_solvers():
  """The public Meta OT names are thin wrappers of the solver's c-transform and dual."""
  a, b = pairs(jax.random.PRNGKey(2), 1)
  a, b = a[0].at[3].set(0.0), b[0]  # a zero bin is no mass, not a NaN
  a = a / a.sum()
  f = jax.random.normal(jax.random.PRNGKey(3), a.shape) * 0.05
  g = c_transform(f, a, GEOM, EPS)
  np.testing.assert_array_equal(g, neural_ot.Sinkhorn().c_transform(GEOM, a, f, EPS))
  # against a dense log-sum-exp computed here, and the solver's full three-term dual
  ref = -EPS * jax.nn.logsumexp((f[:, None] - C) / EPS, b=a[:, None], axis=0)
  np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)
  full = neural_ot.dual_objective(GEOM, a, b, f, g, EPS)
  np.testing.assert_allclose(dual_value(f, a, b, GEOM, EPS), full, rtol=1e-5)
  np.testing.assert_allclose(dual_value(f, a, b, GEOM, EPS), f @ a + g @ b, rtol=1e-5)
  with pytest.raises(TypeError, match="`geom` must be a neural_ot.PointCloud"):
    c_transform(f, a, C, EPS)


def test_fit_meta_trains_on_histograms_with_zero_bins():
  """The network reads log-weights; zero bins are floored inside it (training and predict)."""
  def sparse_pairs(k, n):
    a, b = pairs(k, n)
    a = jnp.where(a < 1e-3, 0.0, a)  # many empty bins
    return a / a.sum(-1, keepdims=True), b
  a0, _ = sparse_pairs(jax.random.PRNGKey(0), 4)
  assert float(jnp.mean(a0 == 0)) > 0.1
  m = fit_meta(sparse_pairs, X, EPS, steps=20, batch_size=8, hidden=(32,), progress=False,
               log_every=5)
  assert all(np.isfinite(h["dual"]) for h in m.history) and len(m.history) >= 4
  f, g = m.predict(*sparse_pairs(jax.random.PRNGKey(7), 3))
  assert bool(jnp.all(jnp.isfinite(f))) and bool(jnp.all(jnp.isfinite(g)))


def test_gaussian_initializer_warm_start_helps_on_gaussian_blobs():
  a, b = pairs(jax.random.PRNGKey(3), 20)
  zeros = [_iters(a[i], b[i], None, 1e-2) for i in range(20)]
  gauss = [_iters(a[i], b[i], gaussian_init(X, a[i], b[i]), 1e-2) for i in range(20)]
  assert np.mean(gauss) < np.mean(zeros)


def test_meta_prediction_beats_zeros_and_keeps_final_accuracy(model):
  a, b = pairs(jax.random.PRNGKey(10 ** 6), 20)  # held out: the training stream never uses it
  f, g = model.predict(a, b)
  duals = jax.vmap(lambda f, a, b: dual_value(f, a, b, GEOM, EPS))(f, a, b)
  zero_duals = jax.vmap(lambda a, b: dual_value(jnp.zeros(SIZE ** 2), a, b, GEOM, EPS))(a, b)
  assert bool(jnp.all(jnp.isfinite(duals))) and bool(jnp.all(duals >= zero_duals))
  np.testing.assert_allclose(g[0], c_transform(f[0], a[0], GEOM, EPS), rtol=1e-5, atol=1e-7)
  for tol in (1e-2, 1e-4):
    meta = [_iters(a[i], b[i], f[i], tol) for i in range(20)]
    zeros = [_iters(a[i], b[i], None, tol) for i in range(20)]
    assert np.mean(meta) <= np.mean(zeros), (tol, np.mean(meta), np.mean(zeros))
  assert model.history[-1]["dual"] > 0


def test_save_load_round_trip(model, tmp_path):
  model.save(str(tmp_path / "meta.msgpack"))
  back = load_meta(str(tmp_path / "meta.msgpack"))
  a, b = pairs(jax.random.PRNGKey(5), 3)
  for u, v in zip(model.predict(a, b), back.predict(a, b)):
    np.testing.assert_array_equal(u, v)
  assert back.epsilon == EPS and back.base == model.base


def test_bad_input(model):
  a, b = pairs(jax.random.PRNGKey(6), 1)
  with pytest.raises(ValueError, match=r"`a` must be a histogram of shape \(64,\)"):
    model.predict(jnp.ones(10) / 10, b[0])
  with pytest.raises(ValueError, match="non-negative mass"):
    model.predict(a[0].at[0].set(-0.1), b[0])
  with pytest.raises(ValueError, match="sum to one"):
    model.predict(a[0], 2 * b[0])
  with pytest.raises(ValueError, match="`epsilon` must be > 0"):
    fit_meta(pairs, X, 0.0, steps=1)
  with pytest.raises(ValueError, match="`steps` must be an int >= 1"):
    fit_meta(pairs, X, EPS, steps=0)
  with pytest.raises(ValueError, match="`base` must be"):
    fit_meta(pairs, X, EPS, steps=1, base="ones")
  with pytest.raises(ValueError, match=r"must return two \(k, 36\) arrays"):
    fit_meta(pairs, grid(6), EPS, steps=1)


def test_fit_meta_resumes_bit_identically_and_guards(tmp_path):
  """fit_meta runs on the shared loop: an interrupted run resumes to the same parameters as an
  uninterrupted one; a run of other settings is refused; divergence raises the shared error."""
  kw = dict(steps=12, batch_size=8, hidden=(32,), progress=False, log_every=1,
            checkpoint_every=2)
  full = fit_meta(pairs, X, EPS, checkpoint_dir=str(tmp_path / "a"), **kw)

  def interrupt(step, metrics):
    if step == 5:
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    fit_meta(pairs, X, EPS, checkpoint_dir=str(tmp_path / "b"), callback=interrupt, **kw)
  seen = []
  resumed = fit_meta(pairs, X, EPS, checkpoint_dir=str(tmp_path / "b"),
                     callback=lambda s, m: seen.append(s), **kw)
  assert seen[0] == 6
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="other settings"):
    fit_meta(pairs, X, EPS, checkpoint_dir=str(tmp_path / "b"), **{**kw, "seed": 1})
  from neural_ot.train import TrainingDivergedError
  with pytest.raises(TrainingDivergedError, match="fit_meta: training diverged"):
    fit_meta(pairs, X, EPS, steps=50, batch_size=8, hidden=(32,), progress=False,
             learning_rate=1e30)


def test_deprecated_geometry_alias_warns_and_is_support_geometry():
  import neural_ot.meta as meta
  with pytest.warns(DeprecationWarning, match="support_geometry"):
    alias = meta.geometry
  assert alias is support_geometry
  with pytest.raises(AttributeError, match="no_such_name"):
    meta.no_such_name  # noqa: B018
