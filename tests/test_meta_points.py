"""Point-cloud Meta OT: the Gaussian start in closed form, the landmark pipeline against the
Sinkhorn solver, training that raises the held-out dual, resume, save/load, bad input."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neural_ot
from neural_ot.meta import (MetaPointsOT, fit_meta_points, gaussian_init, gaussian_potential,
                            load_meta_points)
from neural_ot.meta.points import MetaPointsTrainer

D = 2


def blobs(key, k, n, m):
  """Pairs of two-blob clouds with random centres and spreads (n and m points)."""
  def cloud(key, size):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    centres = 2.0 * jax.random.normal(k1, (2, D))
    spread = jnp.exp(0.4 * jax.random.normal(k2, (2, 1)))
    comp = jax.random.bernoulli(k3, 0.5, (size,)).astype(jnp.int32)
    return centres[comp] + spread[comp] * jax.random.normal(k4, (size, D))
  keys = jax.random.split(key, 2 * k).reshape(k, 2, 2)
  x = jax.vmap(lambda kk: cloud(kk[0], n))(keys)
  y = jax.vmap(lambda kk: cloud(kk[1], m))(keys)
  return x, jnp.ones((k, n)), y, jnp.ones((k, m))


def pairs(key, k):
  return blobs(key, k, 96, 80)


SMALL = dict(landmarks=32, width=32, depth=1, heads=2, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def model():
  return fit_meta_points(pairs, 0.05, steps=300, learning_rate=1e-3, log_every=100, **SMALL)


def test_gaussian_potential_is_the_closed_form_map():
  """For y = S x + c with S symmetric positive definite the moment-matched Gaussian map is
  exactly x -> S x + c, and T = x - grad f / 2 (cost |x - y|^2) must reproduce y."""
  x = jax.random.normal(jax.random.PRNGKey(0), (200, 3))
  s = jnp.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]])
  c = jnp.array([1.0, -2.0, 0.5])
  y = x @ s + c
  w = jnp.full(200, 1 / 200)
  f = gaussian_potential(x, w, y, w, ridge=0.0)
  # f(x) = |x|^2 - x^T A x - 2 c.x: recover A and c by least squares on the quadratic features.
  feats = jnp.concatenate([jax.vmap(lambda z: jnp.outer(z, z).ravel())(x), x], 1)
  coef = np.linalg.lstsq(np.asarray(feats), np.asarray(jnp.sum(x * x, 1) - f), rcond=None)[0]
  a_mat = coef[:9].reshape(3, 3)
  np.testing.assert_allclose(0.5 * (a_mat + a_mat.T), s, atol=1e-3)
  np.testing.assert_allclose(coef[9:] / 2, c, atol=1e-3)


def test_gaussian_potential_on_one_support_is_gaussian_init():
  x = jax.random.normal(jax.random.PRNGKey(1), (50, 2))
  a = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(2), (50,)))
  b = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(3), (50,)))
  np.testing.assert_allclose(gaussian_potential(x, a, x, b), gaussian_init(x, a, b),
                             rtol=1e-5, atol=1e-5)


def test_landmark_solve_extends_to_the_sinkhorn_potential():
  """With clouds no larger than the landmarks (all points are landmarks) and the landmark
  problem solved tightly, the extension is the Sinkhorn f up to a constant, whatever the
  network predicts (an untrained one here)."""
  trainer = MetaPointsTrainer(D, 64, 16, 1, 2, (0.05, 0.05), 1e-3)
  params = trainer.init_state(jax.random.PRNGKey(0), 1).params
  m = MetaPointsOT((0.05, 0.05), D, 64, 16, 1, 2, params)
  x, _, y, _ = blobs(jax.random.PRNGKey(4), 1, 40, 57)
  x, y = x[0], y[0]
  b = jax.random.uniform(jax.random.PRNGKey(5), (57,)) + 0.1
  b = b / b.sum()
  eps = 0.5
  f, g = m.predict(x, y, b=b, epsilon=eps, refine_tol=1e-5)
  assert g is None and f.shape == (40,)
  ref = neural_ot.sinkhorn(x, y, b=b, epsilon=eps, tol=1e-5, max_iters=20000)
  assert bool(ref.converged)
  np.testing.assert_allclose(f - f.mean(), ref.f - ref.f.mean(), atol=2e-3 * float(
      jnp.ptp(ref.f)))


@pytest.mark.slow  # > 17 s on 2 cores: in CI's slow run
def test_prediction_any_sizes_valid_init_same_solution(model):
  for n, m in ((7, 500), (300, 31), (1, 1)):
    x, _, y, _ = blobs(jax.random.PRNGKey(n + m), 1, n, m)
    f, _ = model.predict(x[0], y[0], epsilon=0.3)
    assert f.shape == (n,) and bool(jnp.all(jnp.isfinite(f)))
    f2, _ = model.predict(x[0], y[0], epsilon=0.3)
    np.testing.assert_array_equal(f, f2)  # deterministic landmarks
  x, _, y, _ = blobs(jax.random.PRNGKey(11), 1, 400, 350)
  x, y = x[0], y[0]
  cold = neural_ot.sinkhorn(x, y, epsilon=0.3, tol=1e-5, max_iters=5000)
  warm = neural_ot.sinkhorn(x, y, epsilon=0.3, tol=1e-5, max_iters=5000,
                            init=model.predict(x, y, epsilon=0.3))
  assert bool(cold.converged) and bool(warm.converged)
  np.testing.assert_allclose(warm.reg_ot_cost, cold.reg_ot_cost, rtol=1e-4)


@pytest.mark.slow  # > 17 s on 2 cores: in CI's slow run
def test_training_raises_the_held_out_dual_over_the_gaussian_start(model):
  """The trained network's landmark dual on unseen pairs beats the same pipeline with the
  network's output at zero (the Gaussian start): on average, and on most pairs."""
  trainer = MetaPointsTrainer(D, 32, 32, 1, 2, (0.05, 0.05), 1e-3)
  zero = jax.tree.map(jnp.zeros_like, model.params)
  x, a, y, b = blobs(jax.random.PRNGKey(123), 32, 96, 80)
  a, b = a / a.sum(1, keepdims=True), b / b.sum(1, keepdims=True)
  keys = jax.random.split(jax.random.PRNGKey(7), 32)
  dual = lambda p: jax.vmap(lambda *args: trainer.pair_dual(p, *args))(x, a, y, b, keys)
  gain = dual(model.params) - dual(zero)
  assert float(jnp.mean(gain)) > 0.0 and float(jnp.mean(gain > 0)) > 0.5, gain


def test_warm_start_saves_iterations_on_unseen_pairs(model):
  iters = []
  for i in range(6):
    x, _, y, _ = blobs(jax.random.PRNGKey(900 + i), 1, 300, 260)
    x, y = x[0], y[0]
    eps = 0.05 * float(jnp.mean(jnp.sum((x[:, None] - y[None]) ** 2, -1)))
    run = lambda init: int(neural_ot.sinkhorn(x, y, epsilon=eps, tol=1e-3, max_iters=5000,
                                              init=init).n_iters)
    iters.append((run(None), run(model.predict(x, y, epsilon=eps))))
  iters = np.array(iters)
  assert np.median(iters[:, 1]) < np.median(iters[:, 0]), iters


def test_save_load_round_trip(model, tmp_path):
  path = str(tmp_path / "mp.npz")
  model.save(path)
  back = load_meta_points(path)
  for field in ("epsilon", "dim", "landmarks", "width", "depth", "heads", "history",
                "refine_tol"):
    assert getattr(back, field) == getattr(model, field), field
  x, _, y, _ = blobs(jax.random.PRNGKey(3), 1, 50, 70)
  np.testing.assert_array_equal(back.predict(x[0], y[0], epsilon=0.2)[0],
                                model.predict(x[0], y[0], epsilon=0.2)[0])
  from neural_ot.meta import fit_meta, grid  # a fixed-support model's file is refused
  other = fit_meta(lambda k, n: (jnp.full((n, 4), 0.25), jnp.full((n, 4), 0.25)), grid(2),
                   0.1, steps=1, batch_size=2, hidden=(4,), progress=False)
  other.save(str(tmp_path / "fixed.npz"))
  with pytest.raises(ValueError, match="not a neural_ot point-cloud Meta OT file"):
    load_meta_points(str(tmp_path / "fixed.npz"))


def test_fit_resumes_bit_identically_and_guards(tmp_path):
  kw = dict(SMALL, steps=10, log_every=1, checkpoint_every=2)
  full = fit_meta_points(pairs, 0.05, checkpoint_dir=str(tmp_path / "a"), **kw)

  def interrupt(step, metrics):
    if step == 5:
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    fit_meta_points(pairs, 0.05, checkpoint_dir=str(tmp_path / "b"), callback=interrupt, **kw)
  seen = []
  resumed = fit_meta_points(pairs, 0.05, checkpoint_dir=str(tmp_path / "b"),
                            callback=lambda s, m: seen.append(s), **kw)
  assert seen[0] == 6
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="other settings"):
    fit_meta_points(pairs, 0.1, checkpoint_dir=str(tmp_path / "b"), **kw)


def test_bad_input(model):
  with pytest.raises(TypeError, match="`pairs` must be a function"):
    fit_meta_points(3, 0.05, steps=1)
  with pytest.raises(ValueError, match=r"must return \(x, a, y, b\)"):
    fit_meta_points(lambda k, n: (1, 2), 0.05, steps=1)
  with pytest.raises(ValueError, match=r"x \(2, n, d\)"):
    fit_meta_points(lambda k, n: (jnp.ones((n, 5)), jnp.ones((n, 5)), jnp.ones((n, 5, 2)),
                                  jnp.ones((n, 5))), 0.05, steps=1)
  with pytest.raises(ValueError, match="non-negative weights a"):
    fit_meta_points(lambda k, n: (jnp.ones((n, 5, 2)), -jnp.ones((n, 5)),
                                  jnp.ones((n, 5, 2)), jnp.ones((n, 5))), 0.05, steps=1)
  with pytest.raises(ValueError, match="0 < lo <= hi"):
    fit_meta_points(pairs, (0.1, 0.01), steps=1)
  with pytest.raises(TypeError, match="`epsilon` must be a number"):
    fit_meta_points(pairs, "small", steps=1)
  with pytest.raises(ValueError, match="`width` .* multiple of `heads`"):
    fit_meta_points(pairs, 0.05, width=30, heads=4, steps=1)
  with pytest.raises(ValueError, match="`landmarks` must be an integer >= 1"):
    fit_meta_points(pairs, 0.05, landmarks=0, steps=1)
  with pytest.raises(TypeError, match="unknown option"):
    fit_meta_points(pairs, 0.05, stepz=1)
  x = jnp.ones((5, 2))
  with pytest.raises(ValueError, match="`x` must have dimension 2"):
    model.predict(jnp.ones((5, 3)), x, epsilon=0.1)
  with pytest.raises(ValueError, match="`b` must have one weight per point of `y`"):
    model.predict(x, x, b=jnp.ones(4), epsilon=0.1)
  with pytest.raises(ValueError, match="`a` must be finite, non-negative"):
    model.predict(x, x, a=-jnp.ones(5), epsilon=0.1)
  with pytest.raises(ValueError, match="epsilon"):
    model.predict(x, x, epsilon=-1.0)
  with pytest.raises(ValueError, match="`y` must be finite"):
    model.predict(x, x.at[0, 0].set(jnp.nan), epsilon=0.1)
  with pytest.raises(ValueError, match="`refine_tol` must be None or a number > 0"):
    model.predict(x, x, epsilon=0.1, refine_tol=0.0)
  xb, _, yb, _ = blobs(jax.random.PRNGKey(5), 1, 50, 60)
  mean_cost = float(jnp.mean(jnp.sum((xb[0][:, None] - yb[0][None]) ** 2, -1)))
  with pytest.warns(UserWarning, match="outside the range the model was trained on"):
    model.predict(xb[0], yb[0], epsilon=100 * 0.05 * mean_cost)  # trained at 0.05 x mean cost
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    model.predict(xb[0], yb[0], epsilon=0.05 * mean_cost)
