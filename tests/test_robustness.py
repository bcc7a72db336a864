"""Regression tests for failures that used to be silent: NaN loops under jit, misleading
errors, custom loops, weights only the device can see, 0/0 in derived quantities, global
side effects, and paths no other test exercised."""

import os
import stat
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neural_ot
from neural_ot.tracing import trace_count
from _problems import weighted_clouds
from neural_ot.geometry.pointcloud import PointCloud
from neural_ot.sinkhorn import solver as solver_lib


def _plan_errors(out, a, b):
  r, c = out.marginals
  return float(jnp.abs(r - a).sum() + jnp.abs(c - b).sum())


# --- 1. a non-finite error stops the loop, with `diverged` ------------------------------


def test_nan_under_jit_stops_at_once_with_diverged():
  x, y, a, b = weighted_clouds(16, 12)
  solve = jax.jit(lambda x: neural_ot.sinkhorn(x, y, a, b, epsilon=0.1, max_iters=500))
  ok = solve(x)
  bad = solve(x.at[3, 0].set(jnp.nan))  # traced: the host-side finiteness check cannot see it
  assert bool(ok.converged) and not bool(ok.diverged)
  assert bool(bad.diverged) and not bool(bad.converged)
  assert int(bad.n_iters) <= 1  # used to run all 500 iterations
  assert bool(jnp.isnan(bad.reg_ot_cost)) and bool(jnp.all(jnp.isnan(bad.f)))
  assert "diverged" in neural_ot.SinkhornOutput.__doc__


def test_sinkhorn_batch_flags_divergence_per_problem():
  x, y, a, b = weighted_clouds(10, 8)
  xs = jnp.stack([x, x.at[0, 1].set(jnp.inf), x])
  ys = jnp.stack([y, y, y])
  out = jax.jit(lambda xs: neural_ot.sinkhorn_batch(xs, ys, epsilon=0.2, max_iters=400))(xs)
  np.testing.assert_array_equal(out.diverged, [False, True, False])
  np.testing.assert_array_equal(out.converged, [True, False, True])
  assert int(out.n_iters[1]) <= 1 and int(out.n_iters[0]) > 1
  assert bool(jnp.isfinite(out.reg_ot_cost[0])) and bool(jnp.isnan(out.reg_ot_cost[1]))


def test_record_errors_traces_the_iterations():
  x, y, a, b = weighted_clouds(16, 12)
  eps, tol = 0.2, 1e-5
  out = neural_ot.sinkhorn(x, y, a, b, epsilon=eps, tol=tol, max_iters=300, record_errors=True,
                           momentum=1.0)
  k = int(out.n_iters)
  assert out.errors.shape == (300,) and 1 < k < 300
  errs = np.asarray(out.errors)
  assert np.all(errs[:k] >= tol) and errs[k] < tol and np.all(errs[k + 1:] == -1.0)
  np.testing.assert_allclose(errs[k], out.marginal_error)
  # The first entry is the L1 error of the initial plan (f = 0, g its exact c-transform),
  # computed here independently.
  C = neural_ot.SqEuclidean().pairwise(x, y)
  g = -eps * jax.nn.logsumexp(-C / eps, b=a[:, None], axis=0)
  P = a[:, None] * b[None] * jnp.exp((g[None] - C) / eps)
  first = float(jnp.abs(P.sum(1) - a).sum() + jnp.abs(P.sum(0) - b).sum())
  np.testing.assert_allclose(errs[0], first, rtol=1e-4)
  # Plain Sinkhorn decreases the error monotonically.
  assert np.all(np.diff(errs[:k + 1]) <= 1e-7)


# --- 2. errors about an option's value are not "unknown option" -------------------------


@pytest.mark.parametrize("fn", ["sinkhorn", "sinkhorn_divergence", "sinkhorn_batch"])
def test_option_value_errors_say_what_is_wrong(fn):
  x = np.random.default_rng(0).normal(size=(4, 3, 2))
  args = (x, x + 1.0) if fn == "sinkhorn_batch" else (x[0], x[0] + 1.0)
  call = getattr(neural_ot, fn)
  with pytest.raises(TypeError, match="`cost` must be a Cost") as e:
    call(*args, epsilon=0.1, cost=3)
  assert "unknown option" not in str(e.value)
  if fn != "sinkhorn_batch":  # sinkhorn_batch takes `mesh` itself: checked below
    with pytest.raises(TypeError, match="`mesh` must be a jax.sharding.Mesh, got str"):
      call(*args, epsilon=0.1, mesh="gpu")
  with pytest.raises(TypeError, match=f"{fn}: unknown option.*'epsilson'.*valid options"):
    call(*args, epsilon=0.1, epsilson=0.1)


def test_sinkhorn_batch_mesh_error():
  x = jnp.zeros((2, 3, 2))
  with pytest.raises(TypeError, match="`mesh` must be a jax.sharding.Mesh, got str"):
    neural_ot.sinkhorn_batch(x, x, epsilon=0.1, mesh="gpu")


# --- 3. custom loops with init/step ---------------------------------------------------


@pytest.mark.parametrize("scaling", [1.0, 20.0])
def test_custom_init_step_loop_matches_the_driver(scaling):
  x, y, a, b = weighted_clouds(16, 12)
  solver = neural_ot.Sinkhorn(tol=1e-5, max_iters=400, epsilon_init_factor=scaling,
                              epsilon_decay=0.7)
  geom = PointCloud.create(x, y)
  eps = 0.1  # a plain float (used to fail on `eps.dtype` with epsilon scaling)

  @jax.jit
  def loop(a, b):
    state = solver.init(geom, a, b, eps)
    return jax.lax.fori_loop(0, solver.max_iters, lambda _, s: solver.step(geom, a, b, eps, s),
                             state)

  state = loop(a, b)
  ref = solver(x, y, a, b, epsilon=eps)
  assert bool(ref.converged) and bool(state.done) and not bool(state.diverged)
  assert abs(int(state.it) - int(ref.n_iters)) <= 1
  np.testing.assert_allclose(state.f, ref.f, atol=1e-5)
  np.testing.assert_allclose(state.g, ref.g, atol=1e-5)
  # Steps after convergence change nothing (the loop may overrun the stop safely).
  again = solver.step(geom, a, b, eps, state)
  np.testing.assert_array_equal(again.f, state.f)
  assert int(again.it) == int(state.it)


# --- 4. weights the host cannot check, and mass gaps -------------------------------------


def test_negative_weights_under_jit_are_flagged_on_device():
  x, y, a, b = weighted_clouds(16, 12)
  a_neg = a.at[0].add(-2 * a[0]).at[1].add(2 * a[0])  # sums to one, one negative entry
  with pytest.raises(ValueError, match="`a` must be non-negative"):
    neural_ot.sinkhorn(x, y, a_neg, b, epsilon=0.1)  # eagerly: refused on the host
  solve = jax.jit(lambda a, b: neural_ot.sinkhorn(x, y, a, b, epsilon=0.1))
  for bad_a, bad_b in ((a_neg, b), (a, b.at[2].set(jnp.nan)), (jnp.zeros_like(a), b),
                       (-a, b)):
    out = solve(bad_a, bad_b)
    assert bool(out.diverged) and not bool(out.converged)
    assert int(out.n_iters) == 0 and bool(jnp.isnan(out.reg_ot_cost))
  div = jax.jit(lambda a: neural_ot.sinkhorn_divergence(x, y, a, b, epsilon=0.1))(a_neg)
  assert bool(jnp.isnan(div))  # used to be a finite, meaningless number


def test_mass_gap_is_normalised_within_the_check_and_refused_beyond():
  x, y, a, b = weighted_clouds(16, 12)
  a_off = np.asarray(a, np.float64)
  a_off[0] += 5e-5  # total 1 + 5e-5: a floor of 5e-5 on the error, above tol = 1e-5
  for run in (neural_ot.sinkhorn,
              jax.jit(lambda x, y, a, b, **kw: neural_ot.sinkhorn(x, y, a, b, **kw),
                      static_argnames=("epsilon", "tol", "max_iters"))):
    out = run(x, y, jnp.asarray(a_off, jnp.float32), b, epsilon=0.1, tol=1e-5, max_iters=3000)
    assert bool(out.converged) and int(out.n_iters) < 1000  # used to run all 3000 and fail
    np.testing.assert_allclose(float(out.a.sum()), 1.0, atol=1e-6)
  a_off[0] += 2e-4
  with pytest.raises(ValueError, match=r"`a` must sum to 1.*off by 0\.00025.*within 0\.0001"):
    neural_ot.sinkhorn(x, y, a_off, b, epsilon=0.1)
  with pytest.raises(ValueError, match=r"problem 0 sums to .*off by 0\.00025"):
    neural_ot.sinkhorn_batch(x[None], y[None], a_off[None], b[None], epsilon=0.1)


# --- 5. no 0/0 or log(0) in derived quantities --------------------------------------------


def test_meta_predict_with_a_zero_bin_is_finite():
  from neural_ot.meta import MetaOT, grid

  support = grid(4)
  n = support.shape[0]
  net = MetaOT(support, 0.05, (16,), None).net
  params = net.init(jax.random.PRNGKey(0), jnp.ones(n) / n, jnp.ones(n) / n)
  # A trained model has non-zero weights everywhere (the last layer starts at zero).
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  model = MetaOT(support, 0.05, (16,), params, base="zeros")
  a = jnp.ones(n).at[0].set(0.0).at[5].set(0.0)
  a = a / a.sum()
  b = jnp.linspace(1.0, 2.0, n)
  b = b / b.sum()
  f, g = model.predict(a, b)
  assert bool(jnp.all(jnp.isfinite(f))) and bool(jnp.all(jnp.isfinite(g)))
  # Positive histograms are unaffected by the floor.
  a2 = jnp.linspace(2.0, 1.0, n)
  a2 = a2 / a2.sum()
  f2, _ = model.predict(a2, b)
  np.testing.assert_allclose(f2, net.apply(params, a2, b), rtol=1e-5, atol=1e-6)
  # The prediction warm-starts Sinkhorn on the zero-bin problem.
  out = neural_ot.sinkhorn(support, support, a, b, epsilon=0.05, init=(f, None), tol=1e-4)
  assert bool(out.converged)


def test_barycentric_map_on_zero_weight_rows():
  x, y, a, b = weighted_clouds(12, 10)
  a = a.at[3].set(0.0).at[7].set(0.0)
  a = a / a.sum()
  out = neural_ot.sinkhorn(x, y, a, b, epsilon=0.1, tol=1e-6)
  tx = out.barycentric_map()
  assert bool(jnp.all(jnp.isfinite(tx)))  # used to be 0 / 0 on rows 3 and 7
  np.testing.assert_array_equal(tx[3], x[3])
  P = out.matrix
  keep = np.asarray(a > 0)
  np.testing.assert_allclose(tx[keep], (P @ y / P.sum(1, keepdims=True))[keep], rtol=1e-4,
                             atol=1e-5)


def test_cos_similarity_of_the_identity_map_is_zero():
  from neural_ot.w2bench.metrics import cos_similarity
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 3))
  true = 2.0 * x + 1.0
  two_cost = float(jnp.mean(jnp.sum((true - x) ** 2, -1)))
  assert cos_similarity(x, true, x, two_cost) == 0.0  # used to be nan (0 / 0)
  np.testing.assert_allclose(cos_similarity(x, true, true, two_cost), 1.0, rtol=1e-5)
  np.testing.assert_allclose(cos_similarity(x, true, 2 * x - true, two_cost), -1.0, rtol=1e-5)
  assert np.isnan(cos_similarity(x, true, x.at[0, 0].set(jnp.nan), two_cost))


def test_zero_weight_points_whose_kernel_overflows_give_finite_costs_and_gradients():
  # Found by tests/test_fuzz.py: the potential of a zero-weight point is unconstrained, and
  # exp((f_i + g_j - C_ij) / eps) overflowed to inf, times the zero weight: NaN, unflagged.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2)), jnp.float32)
  a = jnp.array([0.0, 0.0, 0.0, 0.0, 1.0])
  out = neural_ot.sinkhorn(x, x, a, a, epsilon=0.1)
  assert bool(out.converged) and float(out.reg_ot_cost) == pytest.approx(0.0, abs=1e-6)
  div = neural_ot.sinkhorn_divergence(x, x + 1.0, a, a, epsilon=0.1)
  np.testing.assert_allclose(div, 2.0, rtol=1e-5)  # one point moved by (1, 1)
  for implicit in (True, False):
    gx, ga = jax.grad(lambda x, a: neural_ot.sinkhorn(
        x, x + 1.0, a, a, epsilon=0.1,
        adjoint=neural_ot.ImplicitDiff() if implicit else neural_ot.Unrolled()).reg_ot_cost,
        argnums=(0, 1))(x, a)
    assert bool(jnp.all(jnp.isfinite(gx))) and bool(jnp.all(jnp.isfinite(ga)))
    np.testing.assert_allclose(gx, 0.0, atol=1e-4)  # a pure translation: no gradient in x


@pytest.mark.parametrize("online", [pytest.param(False, marks=pytest.mark.slow), True])
def test_epsilon_gradient_with_a_zero_weight_matches_finite_differences(online, x64):
  """The derivative of the cost in ``epsilon`` with a zero-weight point was NaN in both modes
  (``eps * log(0)`` in the folded potential, and the tangent of ``(u + v - C) / eps`` at a
  ``-inf`` potential). It must equal the float64 central difference, and the point must not
  matter: the same problem without it gives the same derivative."""
  x = jax.random.normal(jax.random.PRNGKey(0), (12, 2))
  y = jax.random.normal(jax.random.PRNGKey(1), (9, 2)) + 1.0
  a = jnp.ones(12).at[3].set(0.0) / 11.0
  b = jnp.ones(9) / 9.0
  keep = np.arange(12) != 3
  for adjoint in (neural_ot.ImplicitDiff(), neural_ot.Unrolled()):
    def cost(eps, x=x, a=a):
      return neural_ot.sinkhorn(x, y, a, b, epsilon=eps, online=online, tol=1e-10,
                                max_iters=5000, adjoint=adjoint).reg_ot_cost
    fd = (cost(0.5 + 1e-5) - cost(0.5 - 1e-5)) / 2e-5
    grads = [jax.grad(cost)(0.5)]
    if isinstance(adjoint, neural_ot.ImplicitDiff):
      grads.append(jax.jacfwd(cost)(0.5))
      np.testing.assert_allclose(float(grads[0]), float(jax.grad(lambda e: cost(
          e, x[keep], a[keep]))(0.5)), rtol=1e-8)
    for grad in grads:
      np.testing.assert_allclose(float(grad), float(fd), rtol=1e-6)


def test_type_errors_name_the_argument():
  x = np.random.default_rng(0).normal(size=(5, 2))
  for kwargs, exc, match in [
      (dict(x=x + 1j), TypeError, "`x` must be real"),
      (dict(x=[[1.0, 2.0], [1.0]]), ValueError, "`x` must be a rectangular"),
      (dict(epsilon="0.1"), TypeError, "`epsilon` must be a real number"),
      (dict(epsilon=True), TypeError, "`epsilon` must be a real number"),
      (dict(epsilon=0.1 + 1j), TypeError, "`epsilon` must be a real number"),
      (dict(epsilon_init_factor="a"), TypeError, "`epsilon_init_factor`"),
      (dict(adjoint="yes"), TypeError, "`adjoint` must be"),
      (dict(implicit_diff="yes"), TypeError, "`implicit_diff`"),
  ]:
    args = dict(x=x, epsilon=0.1)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
      neural_ot.sinkhorn(args.pop("x"), x, **args)
  with pytest.raises(ValueError, match="ImplicitDiff: `max_iters` must be a positive int"):
    neural_ot.ImplicitDiff(max_iters=0)
  with pytest.warns(DeprecationWarning, match="adjoint=Unrolled"):  # old keywords still work
    old = neural_ot.sinkhorn(x, x + 1.0, epsilon=0.5, implicit_diff=False, max_iters=300)
  new = neural_ot.sinkhorn(x, x + 1.0, epsilon=0.5, adjoint=neural_ot.Unrolled(), max_iters=300)
  assert bool(new.converged) and float(old.reg_ot_cost) == float(new.reg_ot_cost)


# --- 6. silent surprises -------------------------------------------------------------------


def test_inline_lambda_cost_warns_that_it_recompiles():
  x, y, a, b = weighted_clouds(9, 7)

  def run(cost):
    return neural_ot.sinkhorn(x, y, a, b, epsilon=0.2, cost=cost)

  cost = lambda u, v: jnp.sum(jnp.abs(u - v))  # noqa: E731
  before = trace_count("sinkhorn")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    run(cost)
    run(cost)  # the same function object: no warning, no new compile
  assert trace_count("sinkhorn") == before + 1
  with pytest.warns(UserWarning, match="compiles again.*Define the cost once"):
    for _ in range(2):
      run(lambda u, v: jnp.sum(jnp.abs(u - v)))
  assert trace_count("sinkhorn") == before + 3  # the documented cost of a new lambda


def test_online_false_with_sharded_inputs_is_refused(monkeypatch):
  from neural_ot.sharding import make_mesh
  x, y, a, b = weighted_clouds(8, 8)
  mesh = make_mesh(jax.devices()[:1])
  # A one-device mesh does not select the sharded path: pretend x is split over it.
  monkeypatch.setattr(solver_lib.sharding_lib, "mesh_of", lambda z: (mesh, mesh.axis_names[0]))
  with pytest.raises(ValueError, match="sharded along axis 0.*online=False"):
    neural_ot.sinkhorn(x, y, a, b, epsilon=0.1, online=False)
  with pytest.raises(ValueError, match="online=False"):
    neural_ot.sinkhorn_divergence(x, y, a, b, epsilon=0.1, online=False)
  out = neural_ot.sinkhorn(x, y, a, b, epsilon=0.1)  # online=None: sharded, fine
  assert bool(out.converged) and out.geom.mesh is mesh


def _save_atomic_impls():
  from neural_ot import io
  return [io.save_atomic]


@pytest.mark.parametrize("save_atomic", _save_atomic_impls())
def test_save_atomic_leaves_the_umask_alone(tmp_path, monkeypatch, save_atomic):
  old = os.umask(0o027)
  try:
    def no_umask(_):
      raise AssertionError("save_atomic changed the process umask")
    monkeypatch.setattr(os, "umask", no_umask)
    path = tmp_path / "f.msgpack"
    save_atomic(str(path), {"a": np.arange(3.0)})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0o666 & ~0o027
  finally:
    monkeypatch.undo()
    os.umask(old)


def test_plotting_does_not_switch_the_matplotlib_backend(tmp_path, monkeypatch):
  import matplotlib
  from neural_ot import cli

  def no_use(*args, **kwargs):
    raise AssertionError("library code called matplotlib.use")
  monkeypatch.setattr(matplotlib, "use", no_use)
  assert cli.main(["sinkhorn", "--n", "40", "--out", str(tmp_path)]) == 0  # draws a picture
  pngs = list(tmp_path.glob("*.png"))
  assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
  import sys
  if "matplotlib.pyplot" in sys.modules:  # no figures left registered with pyplot
    assert sys.modules["matplotlib.pyplot"].get_fignums() == []


# --- 7. paths no test exercised ----------------------------------------------------------


def _gaussian_pair(d=2, seed=0):
  rng = np.random.default_rng(seed)
  m1, m2 = rng.normal(size=d), rng.normal(size=d)
  r1, r2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
  s1, s2 = r1 @ r1.T / d + 0.3 * np.eye(d), r2 @ r2.T / d + 0.3 * np.eye(d)
  l1, l2 = np.linalg.cholesky(s1), np.linalg.cholesky(s2)
  src = lambda k, n: m1 + jax.random.normal(k, (n, d)) @ l1.T  # noqa: E731
  tgt = lambda k, n: m2 + jax.random.normal(k, (n, d)) @ l2.T  # noqa: E731
  return (m1, s1, m2, s2), src, tgt


def test_fit_w2_with_adam_finetuning_recovers_the_gaussian_map():
  from neural_ot.w2 import gaussian_map
  (m1, s1, m2, s2), src, tgt = _gaussian_pair(2)
  mp = neural_ot.fit_w2(src, tgt, steps=250, batch_size=256, init="identity", seed=1,
                        finetune="adam", finetune_iters=20, hidden=(32, 32),
                        predictor_hidden=(32, 32), progress=False)
  a, b = gaussian_map(m1, s1, m2, s2)
  x = src(jax.random.PRNGKey(5), 2000)
  uvp = 100 * jnp.mean(jnp.sum((mp.transport(x) - (x @ a.T + b)) ** 2, -1)) / np.trace(s2)
  assert float(uvp) < 2.0, uvp  # L2-UVP in percent; the identity start is at ~100+


@pytest.mark.slow  # dtype paths: test_fuzz_entrypoints and the float32 fits cover the rest
def test_fit_w2_in_float64(x64):
  from neural_ot.w2 import gaussian_map
  (m1, s1, m2, s2), src, tgt = _gaussian_pair(2, seed=3)
  mp = neural_ot.fit_w2(src, tgt, steps=20, batch_size=128, dtype=jnp.float64,
                        hidden=(16, 16), predictor_hidden=(16, 16), progress=False)
  leaves = jax.tree.leaves(mp.params)
  assert leaves and all(p.dtype == jnp.float64 for p in leaves if jnp.issubdtype(p.dtype,
                                                                                 jnp.floating))
  x = src(jax.random.PRNGKey(5), 500).astype(jnp.float64)
  tx = mp.transport(x)
  assert tx.dtype == jnp.float64
  a, b = gaussian_map(m1, s1, m2, s2)  # the default (Gaussian) initialisation starts here
  err = jnp.mean(jnp.sum((tx - (x @ a.T + b)) ** 2, -1)) / np.trace(s2)
  assert float(err) < 0.05, err
