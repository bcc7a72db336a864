"""Learned W2 maps against closed forms (Gaussians, 1-D sorting), resume, guards, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import neural_ot
from neural_ot.w2 import TrainingDivergedError, gaussian_map, gaussian_w2, load_map
from neural_ot import train

SMALL = dict(hidden=(32, 32), predictor_hidden=(32, 32), progress=False)


def _gaussian_pair(d, seed=0):
  rng = np.random.default_rng(seed)
  m1, m2 = rng.normal(size=d), rng.normal(size=d)
  r1, r2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
  s1, s2 = r1 @ r1.T / d + 0.3 * np.eye(d), r2 @ r2.T / d + 0.3 * np.eye(d)
  l1, l2 = np.linalg.cholesky(s1), np.linalg.cholesky(s2)
  src = lambda k, n: m1 + jax.random.normal(k, (n, d)) @ l1.T
  tgt = lambda k, n: m2 + jax.random.normal(k, (n, d)) @ l2.T
  return (m1, s1, m2, s2), src, tgt


def test_gaussian_closed_form_matches_scipy():
  (m1, s1, m2, s2), _, _ = _gaussian_pair(4)
  a, b = gaussian_map(m1, s1, m2, s2)
  np.testing.assert_allclose(a @ s1 @ a, s2, atol=1e-4)  # pushes N(m1, s1) to N(., s2)
  np.testing.assert_allclose(a, a.T, atol=1e-6)
  assert np.linalg.eigvalsh(np.asarray(a)).min() > 0  # gradient of a convex quadratic
  np.testing.assert_allclose(a @ m1 + b, m2, atol=1e-5)
  r = scipy.linalg.sqrtm(s1)
  w2 = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(r @ s2 @ r)).real
  np.testing.assert_allclose(gaussian_w2(m1, s1, m2, s2), w2, rtol=1e-4)


@pytest.mark.parametrize("d", [2, 4])
def test_gaussian_to_gaussian_recovers_closed_form_map(d):
  (m1, s1, m2, s2), src, tgt = _gaussian_pair(d)
  # From the identity (not the Gaussian initialisation, which would start at the answer).
  mp = neural_ot.fit_w2(src, tgt, steps=300, batch_size=256, init="identity", seed=1, **SMALL)
  a, b = gaussian_map(m1, s1, m2, s2)
  x = src(jax.random.PRNGKey(5), 4000)
  uvp = 100 * jnp.mean(jnp.sum((mp.transport(x) - (x @ a.T + b)) ** 2, -1)) / np.trace(s2)
  assert float(uvp) < 1.0, uvp  # L2-UVP in percent
  y = tgt(jax.random.PRNGKey(6), 2000)
  x_true = np.linalg.solve(np.asarray(a), (y - b).T).T
  inv = 100 * jnp.mean(jnp.sum((mp.inverse(y) - x_true) ** 2, -1)) / np.trace(s1)
  assert float(inv) < 2.0, inv
  np.testing.assert_allclose(mp.w2, gaussian_w2(m1, s1, m2, s2), rtol=0.05)


def test_gaussian_initialisation_starts_at_the_gaussian_map():
  (m1, s1, m2, s2), src, tgt = _gaussian_pair(3)
  mp = neural_ot.fit_w2(src, tgt, steps=1, batch_size=64, learning_rate=1e-8, **SMALL)
  a, b = gaussian_map(m1, s1, m2, s2)
  x = src(jax.random.PRNGKey(5), 1000)
  err = jnp.mean(jnp.sum((mp.transport(x) - (x @ a.T + b)) ** 2, -1)) / np.trace(s2)
  assert float(err) < 0.01  # only moment-estimation error and the network's small start


def test_one_dimensional_map_matches_sorting():
  # Source N(0, 1), target a skewed mixture; the 1-D OT map is the monotone rearrangement.
  def tgt(k, n):
    k1, k2 = jax.random.split(k)
    comp = jax.random.bernoulli(k1, 0.3, (n, 1))
    return jnp.where(comp, 2.5 + 0.4 * jax.random.normal(k2, (n, 1)),
                     -0.5 + 0.6 * jax.random.normal(k2, (n, 1)))
  src = lambda k, n: jax.random.normal(k, (n, 1))
  mp = neural_ot.fit_w2(src, tgt, steps=600, batch_size=256, **SMALL)
  n = 20000
  xs = np.sort(np.asarray(src(jax.random.PRNGKey(11), n))[:, 0])
  ys = np.sort(np.asarray(tgt(jax.random.PRNGKey(12), n))[:, 0])
  inner = slice(n // 50, n - n // 50)  # quantiles 2 %..98 %: the tails are noisy for both
  err = np.abs(np.asarray(mp.transport(xs[inner, None]))[:, 0] - ys[inner])
  assert err.mean() < 0.1 * ys.std(), err.mean()
  np.testing.assert_allclose(mp.w2, np.mean((xs - ys) ** 2), rtol=0.05)


def test_identity_case():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2000, 3)) * jnp.array([1.0, 2.0, 0.5]))
  mp = neural_ot.fit_w2(x, x, steps=100, batch_size=256, **SMALL)
  rel = jnp.mean(jnp.sum((mp.transport(x) - x) ** 2, -1)) / np.sum(x.var(0))
  assert float(rel) < 1e-3
  assert abs(mp.w2) < 0.02


def test_non_convex_mlp_potential_with_amortization():
  (m1, s1, m2, s2), src, tgt = _gaussian_pair(2, seed=3)
  mp = neural_ot.fit_w2(src, tgt, steps=300, batch_size=256, potential="mlp",
                        amortization="objective", init="identity", **SMALL)
  a, b = gaussian_map(m1, s1, m2, s2)
  x = src(jax.random.PRNGKey(5), 4000)
  uvp = 100 * jnp.mean(jnp.sum((mp.transport(x) - (x @ a.T + b)) ** 2, -1)) / np.trace(s2)
  assert float(uvp) < 2.0, uvp


@pytest.mark.parametrize("amortization", ["regression", "cycle"])
def test_amortized_predictor_learns_the_argmax(amortization):
  _, src, tgt = _gaussian_pair(2, seed=4)
  mp = neural_ot.fit_w2(src, tgt, steps=200, batch_size=256, amortization=amortization,
                        **SMALL)
  y = tgt(jax.random.PRNGKey(9), 500)
  x_fine, iters = mp.inverse(y, finetune_iters=100, tol=1e-5, return_iters=True)
  x_pred = mp.inverse(y, finetune_iters=0)
  # The prediction is close to the fine-tuned argmax, and grad f(argmax) = y.
  assert float(jnp.sqrt(jnp.mean(jnp.sum((x_pred - x_fine) ** 2, -1)))) < 0.05
  np.testing.assert_allclose(mp.transport(x_fine), y, atol=1e-3)
  cold = mp.trainer.solver.__class__(tol=1e-5, max_iters=100)
  res_cold = cold(mp.trainer.potential_fn(mp.params["f"]), y, y)  # cold start at x = y
  assert float(iters.mean()) < float(res_cold.n_iters.mean())


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (600, 2)))
  y = 1.5 * x[::-1] + 0.3
  kw = dict(steps=30, batch_size=64, seed=3, checkpoint_every=10, log_every=1, **SMALL)
  full = neural_ot.fit_w2(x, y, checkpoint_dir=str(tmp_path / "a"), **kw)

  def interrupt(step, metrics):
    if step == 17:
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    neural_ot.fit_w2(x, y, checkpoint_dir=str(tmp_path / "b"), callback=interrupt, **kw)
  seen = []
  resumed = neural_ot.fit_w2(x, y, checkpoint_dir=str(tmp_path / "b"),
                             callback=lambda s, m: seen.append(s), **kw)
  assert seen[0] == 18  # continued after the last completed step, not from scratch
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  # A checkpoint of another configuration is refused rather than silently mixed in.
  with pytest.raises(ValueError, match="other settings"):
    neural_ot.fit_w2(x, y, checkpoint_dir=str(tmp_path / "b"), **{**kw, "seed": 4})


def test_divergence_guard_stops_with_message_and_keeps_last_good_state(tmp_path):
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (600, 2)))
  with pytest.raises(TrainingDivergedError, match=r"diverged at step \d+.*last good state"):
    neural_ot.fit_w2(x, 3 * x, steps=200, batch_size=64, learning_rate=50.0, warmup_steps=1,
                     max_param_norm=200.0, checkpoint_dir=str(tmp_path), **SMALL)
  from neural_ot import io
  saved = io.load(str(tmp_path / "checkpoint.msgpack"), expect=io.CHECKPOINT_FORMAT)
  leaves = jax.tree.leaves(saved["state"]["params"])
  assert all(np.all(np.isfinite(v)) for v in leaves)
  assert np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in leaves)) < 200.0


def test_save_load_roundtrip_and_numpy_inputs(tmp_path):
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (500, 2)), np.float32)
  mp = neural_ot.fit_w2(x, 2 * x + 1, steps=20, batch_size=64, **SMALL)
  path = tmp_path / "m.msgpack"
  mp.save(str(path))
  back = load_map(str(path))
  np.testing.assert_array_equal(back.transport(x[:50]), mp.transport(x[:50]))
  np.testing.assert_array_equal(back.inverse(x[:50]), mp.inverse(x[:50]))
  assert back.w2 == mp.w2 and back.trainer == mp.trainer
  assert mp.transport(x[0]).shape == (2,)
  with pytest.raises(ValueError, match=r"`x` must have shape \(n, 2\)"):
    mp.transport(np.zeros((4, 3)))
  (tmp_path / "junk.msgpack").write_bytes(b"\x80")
  with pytest.raises(ValueError, match="is not a neural_ot W2 map file"):
    load_map(str(tmp_path / "junk.msgpack"))
  with pytest.raises(FileNotFoundError):
    load_map(str(tmp_path / "missing.msgpack"))


def test_no_retrace_on_new_data_of_the_same_shape():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (300, 2)))
  neural_ot.fit_w2(x, x + 1, steps=3, batch_size=32, **SMALL)
  n = train.guarded_step._cache_size()
  neural_ot.fit_w2(2 * x, x - 1, steps=3, batch_size=32, **SMALL)
  assert train.guarded_step._cache_size() == n


@pytest.mark.parametrize("kwargs,match", [
    (dict(target=np.zeros((100, 3))), "same dimension"),
    (dict(source=np.full((100, 2), np.nan)), "NaN or inf"),
    (dict(batch_size=500), r"`batch_size` \(500\) is larger than `source`"),
    (dict(amortisation="cycle"), "unknown option"),
    (dict(amortization="nope"), "`amortization` must be one of"),
    (dict(potential="resnet"), "`potential` must be one of"),
    (dict(steps=0), "`steps` must be an int >= 1"),
    (dict(source=np.zeros((2, 2, 2))), r"shape \(n, d\)"),
    (dict(source=lambda k, n: jnp.full((n, 2), jnp.inf)), "non-finite"),
])
def test_bad_input_raises_clear_errors(kwargs, match):
  args = dict(source=np.random.default_rng(0).normal(size=(100, 2)),
              target=np.random.default_rng(1).normal(size=(100, 2)),
              steps=5, batch_size=32, progress=False)
  args.update(kwargs)
  with pytest.raises((ValueError, TypeError), match=match):
    neural_ot.fit_w2(args.pop("source"), args.pop("target"), **args)
