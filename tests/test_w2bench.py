"""The W2 benchmark port: .pt reader, pairs, metrics (spec sanity table), runner, CLI."""

import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neural_ot import cli, load_map, w2bench
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


def test_converter_writes_the_loader_layout(tmp_path):
  data = _need_data()
  written = w2bench.convert_folder(os.path.join(data, "original_pt"), str(tmp_path))
  assert sorted(os.path.basename(p) for p in written) == ["2_v1.npz", "2_v2.npz", "4_v1.npz"]
  with np.load(tmp_path / "2_v2.npz") as a, np.load(os.path.join(data, "Mix3toMix10", "2_v2.npz")) as b:
    for k in b.files:
      np.testing.assert_array_equal(a[k], b[k])


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


def test_runner_beats_the_linear_baseline_quickly():
  pair = w2bench.load_pair(2, _need_data())
  res = run_method(pair, "regression", steps=400, eval_every=200, hidden=(32, 32),
                   predictor_hidden=(32, 32))
  linear = w2bench.evaluate(pair, *w2bench.baselines(pair)["linear"])
  assert res["final"]["uvp_fwd"] < 0.5 * linear["uvp_fwd"]
  assert res["final"]["uvp_inv"] < 0.5 * linear["uvp_inv"]
  assert [c["step"] for c in res["curve"]] == [200, 400]
  assert res["train_s"] > 0 and res["steps"] == 400


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
