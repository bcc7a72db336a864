"""Meta OT: c-transform and dual against the Sinkhorn solver, warm starts, save/load, bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neural_ot
from neural_ot.meta import (c_transform, coarsen, digits_histograms, dual_value, fit_meta,
                            gaussian_init, gaussian_mixture_histograms, grid, load_meta,
                            multiscale_init, support_geometry)
from neural_ot.meta.starts import coarsen_or_none

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
  assert back.sparse_cells and back.coarse is not None  # 8 x 8 at eps 0.01: sparse cells
  # a file written before 2026-12-08 has no `sparse_cells`: its model predicts as it was
  # trained, on the Gaussian start where the cells are sparse
  raw = neural_ot.io.load(str(tmp_path / "meta.msgpack"))
  meta = json.loads(raw["meta"])
  del meta["sparse_cells"]
  neural_ot.io.save_atomic(str(tmp_path / "old.msgpack"), {**raw, "meta": json.dumps(meta)})
  old = load_meta(str(tmp_path / "old.msgpack"))
  assert not old.sparse_cells and old.coarse is None


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
  with pytest.raises(ValueError, match="`base` must be 'multiscale', 'gaussian' or 'zeros'"):
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


# --- the multiscale start (a coarse solve extended to the support) ---------------------------


def test_coarsen_splits_a_grid_into_its_blocks_and_any_support_into_fewer_cells():
  c = coarsen(X)  # 8 x 8 grid: the 16 blocks of 2 x 2 points
  ids = np.asarray(c.ids)
  assert c.points.shape == (16, 2) and np.all(np.bincount(ids) == 4)
  i, j = np.divmod(np.arange(64), 8)  # grid() is row-major in (x, y)
  assert len({(u, v, w) for u, v, w in zip(i // 2, j // 2, ids)}) == 16  # blocks = cells
  np.testing.assert_allclose(c.points, jax.ops.segment_sum(X, c.ids, 16) / 4, rtol=1e-6)
  pts = np.random.default_rng(0).normal(size=(300, 3))  # scattered, d = 3
  c3 = coarsen(pts)
  assert c3.points.shape[0] <= 300 / 4 and set(np.asarray(c3.ids)) == set(range(len(c3.points)))
  with pytest.raises(ValueError, match="at least|n >= 2"):
    coarsen(np.zeros((7, 2)))


def test_multiscale_start_beats_the_gaussian_start_and_keeps_the_solution():
  x16 = grid(16)
  a = gaussian_mixture_histograms(jax.random.PRNGKey(21), 8, 16)
  b = gaussian_mixture_histograms(jax.random.PRNGKey(22), 8, 16)
  f = multiscale_init(x16, a, b, EPS)
  assert f.shape == a.shape and bool(jnp.all(jnp.isfinite(f)))
  np.testing.assert_allclose(jnp.sum(f * a, -1), 0.0, atol=1e-5)  # centred

  def iters(i, f0):
    out = neural_ot.sinkhorn(x16, x16, a[i], b[i], epsilon=EPS, tol=1e-2, max_iters=3000,
                             init=None if f0 is None else (f0, None))
    return int(out.n_iters)
  ms = [iters(i, f[i]) for i in range(8)]
  gauss = [iters(i, gaussian_init(x16, a[i], b[i])) for i in range(8)]
  assert np.mean(ms) < 0.5 * np.mean(gauss), (ms, gauss)  # measured: 1 against 5 (median)
  # the same fixed point: the entropic cost from this start and from zeros agree
  for i in range(2):
    warm = neural_ot.sinkhorn(x16, x16, a[i], b[i], epsilon=EPS, tol=1e-6, max_iters=5000,
                              init=(f[i], None))
    cold = neural_ot.sinkhorn(x16, x16, a[i], b[i], epsilon=EPS, tol=1e-6, max_iters=5000)
    np.testing.assert_allclose(warm.reg_ot_cost, cold.reg_ot_cost, rtol=1e-5)
  # one pair and a batch give the same start
  np.testing.assert_allclose(multiscale_init(x16, a[0], b[0], EPS), f[0], rtol=1e-5, atol=1e-5)


def test_multiscale_start_is_never_worse_than_the_gaussian_at_the_first_iteration():
  """The start keeps the candidate of smallest first marginal error, the Gaussian start one of
  them; where the coarse cells are farther apart than sqrt(3 eps) it is the Gaussian start."""
  a, b = pairs(jax.random.PRNGKey(23), 12)
  eps = 0.05  # 8 x 8 grid: cells 1/4 apart, 0.0625 <= 3 eps
  f = multiscale_init(X, a, b, eps)
  moved = 0
  for i in range(12):
    g0 = gaussian_init(X, a[i], b[i])
    solver, geom = neural_ot.Sinkhorn(), support_geometry(X)
    errs = []
    for start in (f[i], g0):
      state = solver.init(geom, a[i], b[i], eps, start)
      errs.append(float(solver.row_error(geom, a[i], b[i], state.f, state.g, eps)[1]))
    assert errs[0] <= errs[1] * (1 + 1e-4) + 1e-6, (i, errs)
    moved += not np.allclose(f[i], g0 - g0 @ a[i], atol=1e-4)
  assert moved > 0  # a coarse candidate was kept somewhere
  # at eps 0.01 (0.0625 > 3 eps) the coarse problem is solved at 0.0625 / 3 instead; the rule
  # of before 2026-12-08 (sparse_cells=False) had no coarser level there: the Gaussian start
  assert coarsen_or_none(X, eps).min_epsilon is None
  assert float(coarsen_or_none(X, EPS).min_epsilon) == pytest.approx(0.25 ** 2 / 3, rel=1e-5)
  assert coarsen_or_none(X, EPS, sparse_cells=False) is None
  # and so on a support too small to coarsen (fewer than 2^(d+1) points)
  x4, u = grid(2), jnp.full(4, 0.25)
  g4 = gaussian_init(x4, u, u)
  np.testing.assert_allclose(multiscale_init(x4, u, u, EPS), g4 - g4 @ u, atol=1e-6)


def test_sparse_cells_give_digits_a_start_the_gaussian_one_is_not():
  """8 x 8 digits at eps 0.01 (coarse cells 1/4 apart: 6.25 eps): the coarse problem solved
  at the cells' squared spacing / 3 and extended to the grid. Measured on 30 pairs of test
  images: mean iterations to 1e-2 11.2 against the Gaussian start's 22.5 (zeros 32); here,
  12 pairs of other images: 12.6 against 19.3."""
  h = digits_histograms()[1500:1524]
  a, b = jnp.asarray(h[:12]), jnp.asarray(h[12:])
  f = multiscale_init(X, a, b, EPS)
  geom, solver = support_geometry(X), neural_ot.Sinkhorn()
  ms, gauss = [], []
  for i in range(12):
    g0 = gaussian_init(X, a[i], b[i])
    first = []
    for start in (f[i], g0):
      state = solver.init(geom, a[i], b[i], EPS, start)
      first.append(float(solver.row_error(geom, a[i], b[i], state.f, state.g, EPS)[1]))
    assert first[0] <= first[1] * (1 + 1e-4) + 1e-6, (i, first)
    ms.append(_iters(a[i], b[i], f[i], 1e-2))
    gauss.append(_iters(a[i], b[i], g0, 1e-2))
  assert np.mean(ms) < 0.8 * np.mean(gauss), (ms, gauss)


def test_the_warm_start_check_keeps_a_start_as_good_as_zeros_before_their_first_iteration():
  """``init_check`` compares a warm start's first error with zeros' before the iteration
  ``Sinkhorn.init`` does for them. Against the error after it (stop 47), the Gaussian start on
  8 x 8 digits was replaced on most pairs: median iterations to 1e-2 31 checked, 17.5
  unchecked, 32.5 from zeros."""
  h = digits_histograms()[1524:1548]
  a, b = jnp.asarray(h[:12]), jnp.asarray(h[12:])
  its = {k: [] for k in ("checked", "unchecked", "zeros")}
  for i in range(12):
    g0 = (gaussian_init(X, a[i], b[i]), None)
    for name, init, check in (("checked", g0, True), ("unchecked", g0, False),
                              ("zeros", None, True)):
      out = neural_ot.sinkhorn(X, X, a[i], b[i], epsilon=EPS, tol=1e-2, max_iters=3000,
                               init=init, init_check=check)
      its[name].append(int(out.n_iters))
  assert np.mean(its["unchecked"]) < 0.8 * np.mean(its["zeros"]), its
  assert np.mean(its["checked"]) <= np.mean(its["unchecked"]) + 1, its


def test_an_untrained_multiscale_model_predicts_the_multiscale_start():
  """The network's last layer starts at zero: the prediction is its base, exactly."""
  from neural_ot.meta import MetaOT
  x16 = grid(16)
  a = gaussian_mixture_histograms(jax.random.PRNGKey(24), 3, 16)
  b = gaussian_mixture_histograms(jax.random.PRNGKey(25), 3, 16)
  params = MetaOT(x16, EPS, (16,), None).net.init(jax.random.PRNGKey(0), a[0], b[0])
  m = MetaOT(x16, EPS, (16,), params, base="multiscale")
  assert m.coarse is not None and m.coarse.points.shape == (64, 2)
  f, g = m.predict(a, b)
  np.testing.assert_allclose(f, multiscale_init(x16, a, b, EPS), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g[1], c_transform(f[1], a[1], support_geometry(x16), EPS),
                             rtol=1e-5, atol=1e-6)


def test_multiscale_init_bad_input():
  a, b = pairs(jax.random.PRNGKey(23), 1)
  with pytest.raises(ValueError, match=r"`a` and `b` must both be \(64,\)"):
    multiscale_init(X, a[0, :10], b[0, :10], EPS)
  with pytest.raises(ValueError, match="`epsilon` must be a number > 0"):
    multiscale_init(X, a, b, 0.0)
  with pytest.raises(ValueError, match="`epsilon` must be a number > 0"):
    multiscale_init(X, a, b, True)
  with pytest.raises(ValueError, match="must be histograms"):
    multiscale_init(X, a, 2 * b, EPS)
  with pytest.raises(ValueError, match="`tol` must be"):
    multiscale_init(X, a, b, EPS, tol=-1.0)
