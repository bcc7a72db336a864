"""The W2 benchmark port: .pt reader, pairs, metrics (spec sanity table), runner, CLI."""

import hashlib
import json
import os
import pickle
import shutil
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neural_ot import cli, load_map, w2bench
from neural_ot.w2bench.convert import input_mixture
from neural_ot.w2bench.runner import run_method

DATA = w2bench.default_data_dir()


def _need_data():
  if DATA is None or not os.path.isdir(DATA):
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail("benchmark data missing under CI (expected ../shared/data/w2bench or "
                  "$NEURAL_OT_W2BENCH)")
    pytest.skip("benchmark data not found: set NEURAL_OT_W2BENCH or put ../shared/data/w2bench")
  return DATA


@pytest.mark.parametrize("name", ["2_v1", "2_v2", "4_v1"])
def test_pt_reader_equals_npz_exactly(name):
  data = _need_data()
  got = w2bench.load_pt(os.path.join(data, "original_pt", f"{name}.pt"))
  with np.load(os.path.join(data, "Mix3toMix10", f"{name}.npz")) as ref:
    assert sorted(got) == sorted(ref.files)
    for k in ref.files:
      assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape
      np.testing.assert_array_equal(got[k], ref[k])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """The three .pt fixtures converted once (2_v1 + 2_v2: a complete D = 2 pair; 4_v1 alone)."""
  data = _need_data()
  dst = tmp_path_factory.mktemp("converted")
  written = w2bench.convert_folder(os.path.join(data, "original_pt"), str(dst))
  return data, dst, written


def test_converter_writes_the_loader_layout(converted):
  data, dst, written = converted
  assert [os.path.basename(p) for p in written] == [
      "2_v1.npz", "2_v2.npz", "4_v1.npz", "input_mixture_2.npz", "benchmark_constants_2.npz",
      "manifest.json"]
  with np.load(dst / "2_v2.npz") as a, np.load(os.path.join(data, "Mix3toMix10", "2_v2.npz")) as b:
    for k in b.files:
      np.testing.assert_array_equal(a[k], b[k])
  manifest = json.loads((dst / "manifest.json").read_text())
  assert manifest["complete_dimensions"] == [2] and "4" in manifest["incomplete_dimensions"]
  assert "Monte-Carlo" in manifest["constants_note"]
  for name, entry in manifest["files"].items():
    assert entry["sha256"] == hashlib.sha256((dst / name).read_bytes()).hexdigest()
  # D = 4 has only v1: the loader says what is missing.
  with pytest.raises(FileNotFoundError, match="4_v2.npz"):
    w2bench.load_pair(4, str(dst))


@pytest.mark.parametrize("dim", [2, 4, 8, 16, 32, 64])
def test_converter_regenerates_the_input_mixture_exactly(dim):
  """numpy's legacy RandomState(0) fixes the mixture: every array equals the stored one."""
  data = _need_data()
  mix = input_mixture(dim)
  with np.load(os.path.join(data, "Mix3toMix10", f"input_mixture_{dim}.npz")) as ref:
    for k, v in mix.items():
      assert v.dtype == ref[k].dtype, k
      np.testing.assert_array_equal(v, ref[k], err_msg=k)


def test_converted_constants_agree_with_the_stored_ones_within_monte_carlo_error(converted):
  data, dst, _ = converted
  with np.load(dst / "benchmark_constants_2.npz") as c, np.load(
      os.path.join(data, "Mix3toMix10", "benchmark_constants_2.npz")) as ref:
    n = int(c["n_mc"])
    # The stored estimates used 2^14 samples (1024 for the cost): their noise adds to ours.
    for key, n_ref in [("shift", 2 ** 14), ("scale", 2 ** 14), ("input_var_mc", 2 ** 14),
                       ("output_var_mc", 2 ** 14), ("output_mean_mc", 2 ** 14),
                       ("cost_mc", 1024)]:
      se = c[key + "_se"] * np.sqrt(1 + n / n_ref)
      assert np.all(se > 0) and np.all(se < 0.05 * max(1.0, np.abs(ref[key]).max())), key
      assert np.all(np.abs(c[key] - ref[key]) < 4 * se), (key, c[key], ref[key], se)


def test_converted_pair_scores_the_spec_sanity_figures(converted):
  data, dst, _ = converted
  pair, stored = w2bench.load_pair(2, str(dst)), w2bench.load_pair(2, data)
  base, base_stored = w2bench.baselines(pair), w2bench.baselines(stored)
  for name, (fwd_ref, inv_ref) in zip(("identity", "linear"), SANITY[2]):
    res = w2bench.evaluate(pair, *base[name], n=2 ** 16)
    assert abs(res["uvp_fwd"] - fwd_ref) < 0.5, (name, res)
    assert abs(res["uvp_inv"] - inv_ref) < 0.5, (name, res)
    # On the same samples the converted and stored constants give nearly the same scores.
    ref = w2bench.evaluate(stored, *base_stored[name], n=2 ** 16)
    assert abs(res["uvp_fwd"] - ref["uvp_fwd"]) < 0.2 and abs(res["uvp_inv"] - ref["uvp_inv"]) < 0.2


def test_converter_refuses_what_is_not_the_benchmark(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such folder"):
    w2bench.convert_folder(str(tmp_path / "nope"), str(tmp_path / "out"))
  with pytest.raises(ValueError, match="no .pt files"):
    w2bench.convert_folder(str(tmp_path), str(tmp_path / "out"))
  src = tmp_path / "src"
  src.mkdir()
  shutil.copy(os.path.join(_need_data(), "original_pt", "2_v1.pt"), src / "4_v2.pt")
  with pytest.raises(ValueError, match=r"4_v2.pt' is not a DenseICNN potential of dimension 4"):
    w2bench.convert_folder(str(src), str(tmp_path / "out"))


def test_cli_bench_convert(converted, tmp_path, capsys):
  data = converted[0]
  rc = cli.main(["bench", "convert", os.path.join(data, "original_pt"), str(tmp_path / "c"),
                 "--n-mc", "4096"])
  assert rc == 0
  out = capsys.readouterr().out
  assert "benchmark_constants_2.npz" in out and "manifest.json" in out and "--data-dir" in out
  assert w2bench.load_pair(2, str(tmp_path / "c")).dim == 2
  assert cli.main(["bench", "convert", str(tmp_path / "nope"), str(tmp_path / "d")]) == 2
  assert "no such folder" in capsys.readouterr().err


def test_pt_reader_refuses_anything_but_tensors(tmp_path):
  path = tmp_path / "evil.pt"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"x": os.getcwd}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
    w2bench.load_pt(str(path))
  (tmp_path / "plain.pt").write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(ValueError, match="not a zip-format"):
    w2bench.load_pt(str(tmp_path / "plain.pt"))


# Spec sanity table (n = 4096), forward / inverse L2-UVP in %.
SANITY = {2: ((32.6, 32.6), (14.0, 15.9)), 4: ((42.1, 42.3), (14.5, 9.0)),
          8: ((58.5, 58.6), (26.6, 21.5)), 16: ((90.4, 90.0), (41.1, 30.5)),
          32: ((118.6, 120.0), (55.0, 38.8)), 64: ((134.9, 134.7), (63.6, 20.4))}


@pytest.mark.parametrize("dim", [2, 4, 8, 16, 32, 64])
def test_baselines_reproduce_the_spec_sanity_table(dim):
  pair = w2bench.load_pair(dim, _need_data())
  base = w2bench.baselines(pair)
  for name, (fwd_ref, inv_ref) in zip(("identity", "linear"), SANITY[dim]):
    res = w2bench.evaluate(pair, *base[name], n=4096)
    # Monte-Carlo noise of two n=4096 estimates (ours and the table's).
    assert abs(res["uvp_fwd"] - fwd_ref) < 1.0, (name, res)
    assert abs(res["uvp_inv"] - inv_ref) < 1.0, (name, res)


def test_benchmark_map_is_the_gradient_of_a_convex_potential_with_the_stored_moments():
  pair = w2bench.load_pair(4, _need_data())
  c = pair.extras
  y = pair.sample_target(jax.random.PRNGKey(3), 2 ** 15)
  np.testing.assert_allclose(jnp.sum(jnp.var(y, 0)), c["output_var_mc"], rtol=0.02)
  np.testing.assert_allclose(y.mean(0), c["output_mean_mc"], atol=0.05)
  # The Jacobian of T is symmetric PSD (T is the gradient of a convex function).
  x = pair.sample_source(jax.random.PRNGKey(4), 64)
  jac = jax.vmap(jax.jacfwd(lambda v: pair.true_map(v[None])[0]))(x)
  np.testing.assert_allclose(jac, jnp.swapaxes(jac, 1, 2), atol=1e-4)
  assert float(jnp.linalg.eigvalsh(0.5 * (jac + jnp.swapaxes(jac, 1, 2))).min()) > 0


def _gauss(d=3, seed=0):
  rng = np.random.default_rng(seed)
  r1, r2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
  return (rng.normal(size=d), r1 @ r1.T / d + 0.5 * np.eye(d), rng.normal(size=d),
          r2 @ r2.T / d + 0.5 * np.eye(d))


def test_gaussian_pair_and_metrics_against_closed_forms():
  m1, s1, m2, s2 = _gauss()
  pair = w2bench.gaussian_pair(m1, s1, m2, s2)
  y = pair.sample_target(jax.random.PRNGKey(0), 2 ** 16)
  np.testing.assert_allclose(np.cov(np.asarray(y).T), s2, atol=0.05)
  exact = w2bench.evaluate(pair, pair.true_map)
  # cos normalises by the closed-form cost: Monte-Carlo noise of 4096 samples remains.
  assert exact["uvp_fwd"] < 1e-8 and abs(exact["cos_fwd"] - 1) < 1e-2
  # Identity map: UVP = 100 (tr((I-A) S1 (I-A)^T) + |(I-A) m1 - b|^2) / tr(S2).
  a, b = pair.extras["A"].astype(np.float64), pair.extras["b"].astype(np.float64)
  e = np.eye(3) - a
  closed = 100 * (np.trace(e @ s1 @ e.T) + np.sum((e @ m1 - b) ** 2)) / np.trace(s2)
  ident = w2bench.evaluate(pair, lambda x: x, n=2 ** 16)
  np.testing.assert_allclose(ident["uvp_fwd"], closed, rtol=0.03)


def test_potential_pair_from_a_user_convex_function():
  a = jnp.array([[2.0, 0.3], [0.3, 1.0]])
  psi = lambda x: 0.5 * x @ a @ x + jnp.sum(jnp.logaddexp(0.0, x))  # convex
  pair = w2bench.potential_pair(lambda k, n: jax.random.normal(k, (n, 2)), psi, 2)
  x = jax.random.normal(jax.random.PRNGKey(1), (10, 2))
  np.testing.assert_allclose(pair.true_map(x), x @ a + jax.nn.sigmoid(x), atol=1e-5)
  assert pair.var_source == pytest.approx(2.0, rel=0.03)
  with pytest.raises(ValueError, match=r"must return shape \(n, 3\)"):
    w2bench.potential_pair(lambda k, n: jax.random.normal(k, (n, 2)), psi, 3)


def test_load_pair_reports_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="3_v1.npz"):
    w2bench.load_pair(3, str(tmp_path))
  with pytest.raises(ValueError, match="`dim` must be a positive int"):
    w2bench.load_pair(0, str(tmp_path))


@pytest.mark.slow
def test_runner_beats_the_linear_baseline_quickly():
  pair = w2bench.load_pair(2, _need_data())
  res = run_method(pair, "regression", steps=400, eval_every=200, hidden=(32, 32),
                   predictor_hidden=(32, 32))
  linear = w2bench.evaluate(pair, *w2bench.baselines(pair)["linear"])
  assert res["final"]["uvp_fwd"] < 0.5 * linear["uvp_fwd"]
  assert res["final"]["uvp_inv"] < 0.5 * linear["uvp_inv"]
  assert [c["step"] for c in res["curve"]] == [200, 400]
  assert res["train_s"] > 0 and res["steps"] == 400


@pytest.mark.slow
def test_cli_bench_w2_writes_a_loadable_map(tmp_path, capsys):
  rc = cli.main(["bench", "w2", "--dim", "2", "--steps", "100", "--eval-every", "50", "--quiet",
                 "--data-dir", _need_data(), "--out", str(tmp_path)])
  assert rc == 0
  assert "baseline: linear" in capsys.readouterr().out
  assert load_map(str(tmp_path / "map.msgpack")).dim == 2
  assert cli.main(["bench", "w2", "--dim", "3", "--data-dir", str(tmp_path), "--quiet",
                   "--out", str(tmp_path)]) == 2


def test_random_pair_is_a_standardised_convex_gradient_map():
  """random_pair: Q has mean ~0 and variance ~dim; the map is the gradient of a convex
  function (symmetric PSD Jacobians); the moment-matched linear baseline beats the identity."""
  pair = w2bench.random_pair(6, seed=3)
  x, y = pair.pairs(jax.random.PRNGKey(0), 8192)
  assert abs(float(jnp.sum(jnp.var(y, 0))) - 6) < 0.3
  assert float(jnp.max(jnp.abs(jnp.mean(y, 0)))) < 0.1
  jac = jax.vmap(jax.jacfwd(lambda v: pair.true_map(v[None])[0]))(x[:16])
  np.testing.assert_allclose(jac, jnp.swapaxes(jac, 1, 2), atol=1e-4)
  assert float(jnp.min(jnp.linalg.eigvalsh(jac))) > 0
  base = {k: w2bench.evaluate(pair, *v) for k, v in w2bench.baselines(pair).items()}
  assert base["linear"]["uvp_fwd"] < 0.5 * base["identity"]["uvp_fwd"]
  assert w2bench.random_pair(6, seed=4).true_map(x[:4]).tolist() != pair.true_map(x[:4]).tolist()
