"""Learned W2 maps against closed forms (Gaussians, 1-D sorting), resume, guards, bad input."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import neural_ot
from neural_ot.tracing import trace_count
from neural_ot import load_map
from neural_ot.w2 import TrainingDivergedError, gaussian_map, gaussian_w2
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


def test_the_gaussian_start_floors_a_nearly_flat_source():
  """A source nearly flat in one direction (variance 1e-6) gives a Gaussian map of slope ~500
  there; the start's source covariance has its eigenvalues floored at START_SOURCE_FLOOR of the
  mean (checked against an eigendecomposition), which bounds the slope; a well-conditioned
  source keeps its moments, and the target's are never changed."""
  from neural_ot.w2 import start as w2fit
  rng = np.random.default_rng(0)
  q = np.linalg.qr(rng.normal(size=(4, 4)))[0]
  x = (rng.normal(size=(20000, 4)) * np.array([1e-3, 1.0, 1.2, 0.8])) @ q.T
  y = rng.normal(size=(20000, 4)) * np.array([0.5, 1.0, 1.1, 0.9])
  (mx, sx), (my, sy) = neural_ot.gaussian.moments(x), neural_ot.gaussian.moments(y)
  a, _ = gaussian_map(mx, sx, my, sy)
  assert np.linalg.eigvalsh(np.asarray(a, np.float64)).max() > 100
  (m1, s1), (m2, s2) = w2fit.start_moments(x, y)
  w, v = np.linalg.eigh(np.asarray(sx, np.float64))
  low = w2fit.START_SOURCE_FLOOR * w.mean()
  np.testing.assert_allclose(np.asarray(s1), (v * np.maximum(w, low)) @ v.T, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(s2), np.asarray(sy))
  np.testing.assert_array_equal(np.asarray(m1), np.asarray(mx))
  slope = np.linalg.eigvalsh(np.asarray(gaussian_map(m1, s1, m2, s2)[0], np.float64)).max()
  assert slope < 1.05 * np.sqrt(np.linalg.eigvalsh(np.asarray(sy)).max() / low)
  # a well-conditioned source: the moments as they are
  x2 = rng.normal(size=(5000, 4)) * np.array([0.6, 1.0, 1.2, 0.8])
  np.testing.assert_array_equal(np.asarray(w2fit.start_moments(x2, y)[0][1]),
                                np.asarray(neural_ot.gaussian.moments(x2)[1]))
  for bad in (-0.1, 1.0, "0.1", float("nan")):
    with pytest.raises(ValueError, match="`floor`"):
      w2fit.start_moments(x2, y, floor=bad)


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


@pytest.mark.parametrize("amortization", [
    "regression", pytest.param("cycle", marks=pytest.mark.slow)])
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


@pytest.mark.slow  # > 17 s on 2 cores: in CI's slow run
@pytest.mark.filterwarnings("ignore:fit_w2. the held-out dual")  # 60 steps: may stay at the start
def test_default_inverse_is_the_training_solve_for_the_mlp_and_converged_for_the_icnn():
  # The non-convex MLP's inverse defaults to the conjugate solve its dual was trained with (a
  # longer one finds maxima of <x, y> - f(x) that training never corrected; measured in
  # RESULTS.md, session 41); the convex ICNN's to a converged solve.
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (3000, 3)))
  t = lambda u: u + 0.5 * np.tanh(2 * u) + np.array([0.5, 0.0, -0.5])  # a monotone, non-affine map
  src, tgt = x[:2000], t(x[1000:])
  y = tgt[:300]
  mlp = neural_ot.fit_w2(src, tgt, steps=60, potential="mlp", standardize=False, init="identity",
                         **SMALL)
  _, x_t, iters, _ = mlp.trainer.finetuned_argmax(mlp.params, jnp.asarray(y))
  assert 1 < float(iters.mean()) and int(iters.max()) <= mlp.trainer.finetune_iters
  np.testing.assert_allclose(mlp.inverse(y), x_t, atol=1e-5)
  longer = mlp.inverse(y, finetune_iters=100, tol=1e-6)
  np.testing.assert_allclose(mlp.transport(longer), y, atol=1e-4)  # explicit settings still apply
  icnn = neural_ot.fit_w2(src, tgt, steps=60, potential="icnn", standardize=False,
                          init="identity", **SMALL)
  x, n = icnn.inverse(y, return_iters=True)
  np.testing.assert_allclose(icnn.transport(x), y, atol=1e-4)
  assert int(n.max()) <= 50
  with pytest.raises(ValueError, match="finetune_iters"):
    mlp.inverse(y, finetune_iters=2.5)
  with pytest.raises(ValueError, match="`tol` must be None or a number > 0, got -1"):
    mlp.to_ott(tol=-1.0)


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
  with pytest.raises(ValueError, match="is not a neural_ot W2 map"):
    load_map(str(tmp_path / "junk.msgpack"))
  with pytest.raises(FileNotFoundError):
    load_map(str(tmp_path / "missing.msgpack"))


def test_no_retrace_on_new_data_of_the_same_shape():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (300, 2)))
  neural_ot.fit_w2(x, x + 1, steps=3, batch_size=32, **SMALL)
  n = trace_count("train_step")
  neural_ot.fit_w2(2 * x, x - 1, steps=3, batch_size=32, **SMALL)
  assert trace_count("train_step") == n


@pytest.mark.parametrize("kwargs,match", [
    (dict(target=np.zeros((100, 3))), "same dimension"),
    (dict(source=np.full((100, 2), np.nan)), "NaN or inf"),
    (dict(batch_size=500), r"`batch_size` \(500\) is larger than `source`"),
    (dict(amortisation="cycle"), "unknown option"),
    (dict(amortization="nope"), "`amortization` must be one of"),
    (dict(potential="resnet"), "`potential` must be .auto., .icnn. or .mlp."),
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


def test_sorted_rows_give_the_same_map_and_estimate_as_shuffled_rows():
  """Moments, the split and the W2 estimate come from random rows, not the first ones."""
  (m1, s1, m2, s2), src, tgt = _gaussian_pair(2, seed=5)
  x = np.asarray(src(jax.random.PRNGKey(0), 4000))
  y = np.asarray(tgt(jax.random.PRNGKey(1), 4000))
  kw = dict(steps=300, batch_size=128, **SMALL)
  shuffled = neural_ot.fit_w2(x, y, **kw)
  ordered = neural_ot.fit_w2(x[np.argsort(x[:, 0])], y[np.argsort(y[:, 0])], **kw)
  w2 = float(gaussian_w2(m1, s1, m2, s2))
  a, b = gaussian_map(m1, s1, m2, s2)
  probe = np.asarray(src(jax.random.PRNGKey(2), 2000))
  err = lambda mp: float(np.mean(np.sum((mp.transport(probe) - (probe @ np.asarray(a).T + b)) ** 2,
                                        -1)))
  assert abs(ordered.w2 - w2) < 0.1 * w2 and abs(shuffled.w2 - w2) < 0.1 * w2
  assert err(ordered) < 2 * err(shuffled) + 1e-3


@pytest.mark.slow  # > 17 s on 2 cores: in CI's slow run
def test_gaussian_init_honours_strong_convexity():
  """grad f starts at the Gaussian map whatever the strong convexity (which is part of f)."""
  (m1, s1, m2, s2), src, tgt = _gaussian_pair(3, seed=6)
  x = np.asarray(src(jax.random.PRNGKey(0), 4000))
  y = np.asarray(tgt(jax.random.PRNGKey(1), 4000))
  # (c = 0 with the ICNN: test_gaussian_initialisation_starts_at_the_gaussian_map)
  for potential, c in (("icnn", 0.1), ("mlp", 0.0), ("mlp", 0.1)):
    mp = neural_ot.fit_w2(x, y, steps=1, learning_rate=1e-12, strong_convexity=c,
                          standardize=False, **{**SMALL, "potential": potential})
    a, b = gaussian_map(*neural_ot.gaussian.moments(mp_rows(x)), *neural_ot.gaussian.moments(
        mp_rows(y)))
    pred = mp.transport(x[:200])
    ref = x[:200] @ np.asarray(a).T + np.asarray(b)
    # the network part starts near zero: within a few percent of the map's scale
    assert float(np.sqrt(np.mean(np.sum((pred - ref) ** 2, -1)))) < 0.05 * float(
        np.sqrt(np.mean(np.sum(ref ** 2, -1))))


def mp_rows(arr):
  """The rows fit_w2 takes its moments from (its training split, seed 0)."""
  from neural_ot.w2 import training_rows
  perm = np.random.default_rng(0).permutation(arr.shape[0])
  return arr[perm[arr.shape[0] - training_rows(arr.shape[0]):]]


@pytest.mark.slow  # measures wall-clock: serial, in CI's slow run
def test_max_seconds_stops_on_time_with_a_fitted_schedule():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2000, 2)))
  seen = []
  mp = neural_ot.fit_w2(x, 2 * x + 1, max_seconds=15.0, batch_size=64, log_every=20,
                        callback=lambda s, m: seen.append(s), **SMALL)
  # The loop's own clock (compile excluded) ends within the budget, up to one log window.
  assert mp.history[-1]["seconds"] < 15.0 * 1.25
  done = mp.history[-1]["step"]
  assert done >= 40 and seen[-1] == done
  # the horizon (schedule length) ended at the steps done: the learning rate decayed fully
  final = mp.trainer.final_lr_fraction
  assert mp.trainer.learning_rate * final == pytest.approx(float(train.cosine_schedule(
      done, done, mp.trainer.learning_rate, mp.trainer.warmup_steps, final)), rel=1e-5)
  with pytest.raises(ValueError, match="`max_seconds` must be a number > 0"):
    neural_ot.fit_w2(x, x, max_seconds=-1, **SMALL)


def test_standardisation_makes_units_irrelevant():
  """Data in other units (scale 100, offset) gives the same relative map error and a W2
  estimate scaled by 100^2: the map is learned at unit scale and composed back."""
  (m1, s1, m2, s2), src, tgt = _gaussian_pair(2, seed=7)
  x = np.asarray(src(jax.random.PRNGKey(0), 3000))
  y = np.asarray(tgt(jax.random.PRNGKey(1), 3000))
  kw = dict(steps=300, batch_size=128, seed=1, **SMALL)
  unit = neural_ot.fit_w2(x, y, **kw)
  big = neural_ot.fit_w2(100 * x + 7, 100 * y - 3, **kw)
  probe = x[:500]
  np.testing.assert_allclose(big.transport(100 * probe + 7), 100 * unit.transport(probe) - 3,
                             rtol=1e-3, atol=1e-2 * 100)
  np.testing.assert_allclose(big.inverse(100 * y[:200] - 3), 100 * unit.inverse(y[:200]) + 7,
                             atol=0.05 * 100)
  # W2 with the offsets: |shift|^2 terms enter exactly; compare against the closed form
  w2_big = float(gaussian_w2(100 * m1 + 7, 1e4 * s1, 100 * m2 - 3, 1e4 * s2))
  assert abs(big.w2 - w2_big) < 0.05 * w2_big


def test_a_checkpoint_of_other_data_is_refused(tmp_path):
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (400, 2)))
  kw = dict(steps=10, batch_size=32, checkpoint_dir=str(tmp_path), **SMALL)
  neural_ot.fit_w2(x, x + 1, **kw)
  with pytest.raises(ValueError, match="other settings or other data.*resume=False"):
    neural_ot.fit_w2(100 * x, x + 1, **kw)
  neural_ot.fit_w2(100 * x, x + 1, resume=False, **kw)  # starting over works


def test_w2_trainer_refuses_a_bad_schedule():
  """A hand-built trainer checks the schedule's fields (fit_w2 checks its options first)."""
  for name, bad in (("final_lr_fraction", 1.5), ("final_lr_fraction", -0.1),
                    ("final_lr_fraction", np.nan), ("weight_decay", -1.0),
                    ("weight_decay", np.inf), ("warmup_steps", -1), ("warmup_steps", 2.5)):
    with pytest.raises(ValueError, match=f"`{name}`"):
      neural_ot.W2Trainer(**{name: bad})
  assert neural_ot.W2Trainer(final_lr_fraction=0.0, warmup_steps=0).final_lr_fraction == 0.0


def test_default_options_reject_bad_input():
  from neural_ot.w2 import default_options
  assert default_options(64, 100)["batch_size"] == 100
  # The potential follows the dimension: the non-convex MLP in 4-64 (measured better there),
  # the convex ICNN elsewhere.
  assert [default_options(d)["potential"] for d in (1, 3, 4, 8, 16, 32, 33, 64, 65, 256)] == [
      "icnn", "icnn", "mlp", "mlp", "mlp", "mlp", "mlp", "mlp", "icnn", "icnn"]
  assert default_options(4, 100)["learning_rate"] < default_options(4)["learning_rate"]
  # The peak rate follows the potential (measured: 5e-2 for the ICNN; 2e-2 for the MLP up to
  # D = 32, half of it up to 64 and inversely to the width beyond), also when the potential is
  # chosen against the dimension's default; the schedule decays further than W2Trainer's own.
  lr = lambda d, **kw: default_options(d, **kw)["learning_rate"]
  assert lr(128, potential="mlp") < lr(64) == lr(48) < lr(8) == lr(32) < lr(8, potential="icnn")
  assert lr(128, potential="mlp") == pytest.approx(lr(64) / 2)
  assert lr(8, potential="icnn") == lr(128) == lr(2)
  assert default_options(8)["final_lr_fraction"] < neural_ot.W2Trainer().final_lr_fraction
  for bad in ("convex", np.array(["mlp", "icnn"]), 1):
    with pytest.raises(ValueError, match="`potential` must be None, 'icnn' or 'mlp'"):
      default_options(8, potential=bad)
  with pytest.raises(ValueError, match="`dim` must be an int >= 1"):
    default_options(0)
  with pytest.raises(ValueError, match="`n` must be None or an int >= 1"):
    default_options(2, 0)


def test_a_diverged_forward_map_is_flagged(monkeypatch):
  """A map that sends held-out source samples far outside the target is flagged (a non-convex
  potential did this silently at D = 64: forward L2-UVP 5.7e7 % with nothing reported)."""
  from neural_ot.w2 import fit as fit_module
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2000, 2))
  y = 0.5 * rng.normal(size=(2000, 2)) + 1.0
  small = dict(hidden=(8, 8), predictor_hidden=(8,), batch_size=64, progress=False)
  with warnings.catch_warnings():
    # a sound map is not flagged as diverged (these few steps may end at the Gaussian start,
    # which the stall warning reports: not what this test is about)
    warnings.filterwarnings("error", message=".*diverged", category=RuntimeWarning)
    mp = neural_ot.fit_w2(x, y, steps=20, potential="mlp", **small)
  assert 0.8 < fit_module.map_spread(mp, x, y) < 1.25
  # Blow up the network part of the potential: grad f leaves the target far behind.
  big = jax.tree_util.tree_map_with_path(
      lambda path, v: v * 1e4 if "kernel" in jax.tree_util.keystr(path) else v, mp.params["f"])
  bad = dataclasses.replace(mp, params={**mp.params, "f": big})
  assert fit_module.map_spread(bad, x, y) > 10
  monkeypatch.setattr(fit_module, "_DIVERGED_SPREAD", 0.5)  # flag even the sound fit
  with pytest.warns(RuntimeWarning, match="diverged.*potential='icnn'"):
    neural_ot.fit_w2(x, y, steps=20, potential="mlp", **small)


def test_sqrtm_psd_shift_and_floor_against_scipy():
  """``sqrtm_psd(A, shift=c)`` is scipy's square root of ``A - cI``; eigenvalues below the shift
  are clipped to ``floor``; a floor that would give NaN or inf is refused."""
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  a = (q * np.array([0.3, 1.0, 2.0, 5.0])) @ q.T
  with jax.enable_x64(True):
    root = np.asarray(neural_ot.gaussian.sqrtm_psd(a, shift=0.2))
    np.testing.assert_allclose(root, np.real(scipy.linalg.sqrtm(a - 0.2 * np.eye(4))), atol=1e-10)
    clipped = np.asarray(neural_ot.gaussian.sqrtm_psd(a, shift=1.5, floor=1e-6))
    want = (q * np.sqrt(np.maximum(np.array([0.3, 1.0, 2.0, 5.0]) - 1.5, 1e-6))) @ q.T
    np.testing.assert_allclose(clipped, want, atol=1e-10)
    inv = np.asarray(neural_ot.gaussian.sqrtm_psd(a, inverse=True, shift=0.2))
    np.testing.assert_allclose(inv @ root, np.eye(4), atol=1e-9)
  for floor, inverse in ((-1.0, False), (0.0, True)):
    with pytest.raises(ValueError, match="`floor`"):
      neural_ot.gaussian.sqrtm_psd(a, inverse=inverse, floor=floor)


def test_map_spread_checks_its_target_samples():
  from neural_ot.w2.fit import map_spread
  x = np.random.default_rng(1).normal(size=(200, 2))
  mp = neural_ot.fit_w2(x, x + 1.0, steps=2, batch_size=32, hidden=(4,), predictor_hidden=(4,),
                        progress=False)
  assert 0.8 < map_spread(mp, x, x + 1.0) < 1.25
  for bad in (np.ones((1, 2)), np.ones((5, 3)), np.full((5, 2), np.nan), "y"):
    with pytest.raises((ValueError, TypeError), match="`y`"):
      map_spread(mp, x, bad)


@pytest.mark.slow
def test_predictor_lr_factor_scales_only_the_predictors_step():
  """One step from the same state and batch: the predictor moves by exactly ``factor`` times its
  step at factor 1 (AdamW's direction does not depend on the rate), the potential by the same
  amount; a factor that is not > 0 is refused by name."""
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (64, 2))
  y = 2.0 * jax.random.normal(jax.random.PRNGKey(1), (64, 2)) + 1.0
  base = neural_ot.W2Trainer(hidden=(16, 16), predictor_hidden=(16,), warmup_steps=1)
  moved = {}
  for factor in (1.0, 0.1):
    tr = dataclasses.replace(base, predictor_lr_factor=factor)
    state = tr.init_state(key, 2, steps=100)
    new, _ = tr.step(state, (x, y))
    moved[factor] = jax.tree.map(lambda a, b: b - a, state.params, new.params)
  for a, b in zip(jax.tree.leaves(moved[1.0]["g"]), jax.tree.leaves(moved[0.1]["g"])):
    np.testing.assert_allclose(b, 0.1 * a, rtol=1e-3, atol=1e-6)  # float32 rounding of p + u
  assert max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(moved[1.0]["g"])) > 1e-4
  for a, b in zip(jax.tree.leaves(moved[1.0]["f"]), jax.tree.leaves(moved[0.1]["f"])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
  for bad in (0.0, -1.0, float("inf"), float("nan")):
    with pytest.raises(ValueError, match="predictor_lr_factor"):
      dataclasses.replace(base, predictor_lr_factor=bad)


@pytest.mark.parametrize("potential", ["icnn", "mlp"])
def test_batch_candidates_take_the_best_of_the_argmax_and_the_batch(potential):
  """With ``batch_candidates`` each row's conjugate value is the larger of the fine-tuned
  argmax's and the best batch point's ``<x_i, y_j> - f(x_i)`` (computed here in numpy from the
  potential alone); without it, the argmax's. A perturbed predictor (no fine-tuning) is beaten
  by a batch point on some rows, so the two differ and the test can fail."""
  key = jax.random.PRNGKey(3)
  x = jax.random.normal(key, (48, 3))
  y = 1.5 * jax.random.normal(jax.random.PRNGKey(4), (48, 3)) + 2.0
  base = neural_ot.W2Trainer(potential=potential, hidden=(16, 16), predictor_hidden=(16,),
                             finetune_iters=0, init="identity")
  state = base.init_state(key, 3, steps=10)
  leaves, tree = jax.tree.flatten(state.params["g"])
  noise = [0.7 * jax.random.normal(jax.random.PRNGKey(i), v.shape) for i, v in enumerate(leaves)]
  state = state._replace(params={"f": state.params["f"],
                                 "g": jax.tree.unflatten(tree, [a + b for a, b in zip(leaves, noise)])})
  f = jax.vmap(base.potential_fn(state.params["f"]))
  x_hat = np.asarray(base.predict(state.params["g"], y))
  fx = np.asarray(f(x), np.float64)
  local = np.sum(x_hat * y, -1) - np.asarray(f(x_hat))
  batch = (np.asarray(y, np.float64) @ np.asarray(x, np.float64).T - fx[None]).max(1)
  assert np.mean(batch > local) > 0.05  # the batch wins somewhere
  for flag, conj in ((True, np.maximum(local, batch)), (False, local)):
    tr = dataclasses.replace(base, batch_candidates=flag)
    _, metrics = tr.loss(state.params, x, y)
    np.testing.assert_allclose(float(metrics["loss"]), fx.mean() + conj.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["conj_batch_wins"]),
                               np.mean(batch > local) if flag else 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="batch_candidates"):
    dataclasses.replace(base, batch_candidates="yes")


@pytest.mark.slow
def test_fit_w2_picks_the_potential_from_the_dimension_unless_told():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (400, 8)))
  from neural_ot.w2 import default_options, training_rows
  n = training_rows(400)
  fit = lambda **kw: neural_ot.fit_w2(x, 2.0 * x, steps=1, **{**SMALL, **kw}).trainer
  assert fit().potential == "mlp"
  icnn = fit(potential="icnn")
  assert icnn.potential == "icnn"
  # the learning rate is the chosen potential's, not the dimension default's
  assert icnn.learning_rate == default_options(8, n, "icnn")["learning_rate"]
  assert icnn.learning_rate > default_options(8, n)["learning_rate"]
  assert fit(activation="softplus").potential == "icnn"  # an ICNN option


def test_conditional_defaults_are_the_icnn_rules_at_a_lower_rate():
  from neural_ot.w2 import default_options
  for dim in (2, 8, 40):
    for n in (None, 500, 20000):
      plain, cond = default_options(dim, n, "icnn"), default_options(dim, n, conditional=True)
      assert cond["potential"] == "icnn"
      assert cond["learning_rate"] == min(plain["learning_rate"], 1e-2)
      assert cond["final_lr_fraction"] == neural_ot.W2Trainer().final_lr_fraction
      assert cond["hidden"] == plain["hidden"] and cond["batch_size"] == plain["batch_size"]
  with pytest.raises(ValueError, match="conditional"):
    default_options(8, potential="mlp", conditional=True)


@pytest.mark.filterwarnings("ignore:fit_w2. the held-out dual")  # an affine pair: its start is exact
def test_checkpoint_seconds_writes_during_the_run_and_every_fit_checks_it(tmp_path):
  import os
  from neural_ot.meta import fit_meta
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (600, 2)))
  kw = dict(steps=12, batch_size=64, checkpoint_every=10 ** 6, log_every=4, **SMALL)
  for every, expect in ((0.0, False), (1e-9, True)):
    folder = tmp_path / f"s{every}"
    seen = []
    neural_ot.fit_w2(x, 2 * x + 1, checkpoint_dir=str(folder), checkpoint_seconds=every,
                     callback=lambda s, m: seen.append(
                         os.path.isfile(folder / "checkpoint.msgpack")), **kw)
    assert seen[1] is expect  # by step 8: written after step 4 only with checkpoint_seconds
  # One field of train.FitOptions: every fit takes and checks it.
  fits = [lambda **o: neural_ot.fit_w2(x, 2 * x, **o),
          lambda **o: neural_ot.fit_conditional_w2({0.0: (x, x), 1.0: (x, 2 * x)}, **o),
          lambda **o: fit_meta(
              lambda k, n: (jnp.full((n, 4), 0.25), jnp.full((n, 4), 0.25)),
              jnp.arange(4.0)[:, None], 0.1, **o)]
  for fit in fits:
    with pytest.raises(ValueError, match="checkpoint_seconds"):
      fit(steps=2, checkpoint_seconds=-1.0, progress=False)
