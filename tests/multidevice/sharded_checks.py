"""Sharded code paths on 4 devices: results must equal the single-device ones.

Run by ``tests/test_multidevice.py`` in a separate process with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the flag must be set
before JAX starts). By hand: ``XLA_FLAGS=--xla_force_host_platform_device_count=4
python -m pytest tests/multidevice/sharded_checks.py``.
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

import neural_ot
from neural_ot.sharding import make_mesh, shard_points

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))
from _problems import weighted_clouds  # noqa: E402

NDEV = 4


@pytest.fixture(autouse=True)
def _four_devices():
  if jax.device_count() < NDEV:
    pytest.fail(f"these checks need {NDEV} devices, found {jax.device_count()}; set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={NDEV} before JAX starts.")


@pytest.fixture(scope="module")
def mesh():
  return make_mesh(jax.devices()[:NDEV])


_cloud = weighted_clouds


@pytest.mark.parametrize("kw", [{}, {"rho_a": 1.0, "rho_b": 0.5}, {"epsilon_init_factor": 20.0}])
def test_sharded_equals_single_device_with_padding(mesh, kw):
  x, y, a, b = _cloud(1001, 803)  # neither divides by 4: padded inside and trimmed
  ref = neural_ot.sinkhorn(x, y, a, b, epsilon=0.05, tol=1e-5, online=True, tile_size=128, **kw)
  out = neural_ot.sinkhorn(x, y, a, b, epsilon=0.05, tol=1e-5, tile_size=128, mesh=mesh, **kw)
  assert out.f.shape == (1001,) and out.g.shape == (803,)
  assert out.geom.mesh is mesh and out.geom.shape == (1004, 804)
  # (the zeros start's log-sum-exp passes round differently in ring reductions: with epsilon
  # scaling one stop moved by an iteration, 66 -> 67)
  assert abs(int(out.n_iters) - int(ref.n_iters)) <= 1 and bool(out.converged)
  np.testing.assert_allclose(out.reg_ot_cost, ref.reg_ot_cost, rtol=1e-5)
  np.testing.assert_allclose(out.f, ref.f, atol=2e-5 * float(jnp.abs(ref.f).max()))
  np.testing.assert_allclose(out.g, ref.g, atol=2e-5 * float(jnp.abs(ref.g).max()))
  # The output's methods see through the padding.
  r1, c1 = out.marginals
  r0, c0 = ref.marginals
  np.testing.assert_allclose(r1, r0, atol=1e-7)
  np.testing.assert_allclose(c1, c0, atol=1e-7)
  np.testing.assert_allclose(out.primal_cost, ref.primal_cost, rtol=1e-5)
  np.testing.assert_allclose(out.barycentric_map(), ref.barycentric_map(), atol=1e-5)
  np.testing.assert_allclose(out.apply(jnp.ones(1001), axis=0), ref.apply(jnp.ones(1001), axis=0),
                             atol=1e-7)
  # Warm start (padded inside like the points) behaves as on one device: from the solution
  # no iterations are needed (epsilon scaling restarts from a large epsilon, so it does run).
  warm = neural_ot.sinkhorn(x, y, a, b, epsilon=0.05, tol=1e-5, tile_size=128, mesh=mesh,
                            init=(out.f, None), **kw)
  warm_ref = neural_ot.sinkhorn(x, y, a, b, epsilon=0.05, tol=1e-5, online=True, tile_size=128,
                                init=(ref.f, None), **kw)
  assert abs(int(warm.n_iters) - int(warm_ref.n_iters)) <= 1
  if "epsilon_init_factor" not in kw:
    assert int(warm.n_iters) <= 1
  np.testing.assert_allclose(warm.reg_ot_cost, ref.reg_ot_cost, rtol=1e-5)


def test_sharded_divergence_returns_trimmed_outputs(mesh):
  """All entry points share one pad -> solve -> trim path: no padded potentials leak out."""
  x, y, a, b = _cloud(101, 77)  # padded to 104 and 80 inside
  kw = dict(epsilon=0.1, tol=1e-5, return_outputs=True)
  div, outs = neural_ot.sinkhorn_divergence(x, y, a, b, mesh=mesh, tile_size=64, **kw)
  ref, refs = neural_ot.sinkhorn_divergence(x, y, a, b, online=True, tile_size=64, **kw)
  np.testing.assert_allclose(div, ref, rtol=1e-4)
  for out, r, (n, m) in zip(outs, refs, ((101, 77), (101, 101), (77, 77))):
    assert out.f.shape == (n,) and out.g.shape == (m,) and out.a.shape == (n,), out.f.shape
    assert out.geom.mesh is mesh
    # (a stop may move by an iteration between the two reduction orders: tol-level agreement)
    np.testing.assert_allclose(out.f, r.f, atol=1e-3 * float(jnp.abs(r.f).max()))
    np.testing.assert_allclose(out.g, r.g, atol=1e-3 * float(jnp.abs(r.g).max()))
    np.testing.assert_allclose(out.primal_cost, r.primal_cost, rtol=1e-4)


def test_presharded_inputs_select_the_sharded_solver(mesh):
  x, y, a, b = _cloud(1024, 512)
  xs, ys = shard_points(x, mesh), shard_points(y, mesh)
  out = neural_ot.sinkhorn(xs, ys, a, b, epsilon=0.1, tol=1e-5)
  ref = neural_ot.sinkhorn(x, y, a, b, epsilon=0.1, tol=1e-5)
  assert out.geom.mesh is not None
  assert isinstance(out.f.sharding, NamedSharding) and out.f.sharding.spec[0] == "points"
  assert len(out.f.sharding.device_set) == NDEV
  np.testing.assert_allclose(out.reg_ot_cost, ref.reg_ot_cost, rtol=1e-5)
  div = neural_ot.sinkhorn_divergence(xs, ys, a, b, epsilon=0.1, tol=1e-5)
  np.testing.assert_allclose(div, neural_ot.sinkhorn_divergence(x, y, a, b, epsilon=0.1, tol=1e-5),
                             rtol=1e-4)


def test_no_device_holds_the_cost_matrix(mesh):
  """Compiled per-device memory stays far below one n x m array; blocks move by ring."""
  n = m = 8192
  x, y, _, _ = _cloud(n, m, weighted=False)
  solver = neural_ot.Sinkhorn(mesh=mesh, tile_size=256, max_iters=10)
  fn = jax.jit(lambda x, y: solver(x, y, epsilon=0.1).reg_ot_cost)
  compiled = fn.lower(shard_points(x, mesh), shard_points(y, mesh)).compile()
  mem = compiled.memory_analysis()
  dense = n * m * 4
  per_device = mem.temp_size_in_bytes + mem.argument_size_in_bytes
  assert per_device < dense / 20, (per_device, dense)
  # one tile of the local block is the largest temporary: 256 x (m / 4) floats, a few times
  assert mem.temp_size_in_bytes < 16 * 256 * (m // NDEV) * 4
  hlo = compiled.as_text()
  assert "collective-permute" in hlo
  assert "all-gather" not in hlo


def test_implicit_gradients_match_single_device_and_finite_differences(mesh):
  x, y, a, b = _cloud(402, 300, seed=3)

  def loss(x, a, **kw):
    return neural_ot.sinkhorn(x, y, a, b, epsilon=0.1, tol=1e-6, **kw).reg_ot_cost

  gx0, ga0 = jax.grad(lambda x, a: loss(x, a, online=True), (0, 1))(x, a)
  gx1, ga1 = jax.grad(lambda x, a: loss(x, a, mesh=mesh), (0, 1))(x, a)
  for g0, g1 in ((gx0, gx1), (ga0, ga1)):
    assert g1.shape == g0.shape
    np.testing.assert_allclose(g1, g0, atol=1e-4 * float(jnp.abs(g0).max()))
  # and against central finite differences of the sharded loss along random directions
  vx = jax.random.normal(jax.random.PRNGKey(7), x.shape)
  va = jax.random.normal(jax.random.PRNGKey(8), a.shape)
  va = va - va.mean()  # stay on the simplex
  for h, dx, da, g in ((1e-3, vx, 0.0, jnp.vdot(gx1, vx)), (1e-4, 0.0, va, jnp.vdot(ga1, va))):
    fd = (loss(x + h * dx, a + h * da, mesh=mesh) - loss(x - h * dx, a - h * da, mesh=mesh)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=2e-2)


def test_sharded_batch_of_small_problems_equals_unsharded(mesh):
  batch = 403  # not a multiple of 4
  k = jax.random.split(jax.random.PRNGKey(1), 2)
  x = jax.random.normal(k[0], (batch, 16, 2))
  y = 0.5 * jax.random.normal(k[1], (batch, 12, 2)) + 1.0
  eps = jnp.linspace(0.05, 0.5, batch)
  ref = neural_ot.sinkhorn_batch(x, y, epsilon=eps, tol=1e-5)
  out = neural_ot.sinkhorn_batch(x, y, epsilon=eps, tol=1e-5, mesh=mesh)
  assert out.reg_ot_cost.shape == (batch,)
  np.testing.assert_allclose(out.reg_ot_cost, ref.reg_ot_cost, rtol=1e-5)
  # same stopping rule; float round-off may move a stop by an iteration, or (at tol=1e-5, near
  # the float32 floor) flip an over-relaxation check and so when its rate estimate restarts, or
  # which cap omega has (1.8 or 1.9: measured, one problem of the batch 8 iterations apart), or
  # when an error hovering at the floor dips under tol (problem 7: 1.1e-5 to 3.5e-5 for 50
  # iterations; one solve stopped at 60, the other at 111, session 47)
  diff = np.abs(np.asarray(out.n_iters - ref.n_iters))
  assert float(np.mean(diff > 10)) <= 0.01 and float(np.mean(diff > 1)) < 0.05, diff
  assert bool(jnp.all(out.converged)) and bool(jnp.all(ref.converged))


def test_data_parallel_fit_w2_matches_single_device(mesh):
  k = jax.random.PRNGKey(0)
  x = jax.random.normal(k, (2048, 2))
  y = x @ jnp.array([[1.5, 0.4], [0.0, 0.8]]) + jnp.array([1.0, -0.5])
  opts = dict(steps=60, batch_size=256, progress=False, init="identity", hidden=(32, 32),
              predictor_hidden=(32,))
  m0 = neural_ot.fit_w2(x, y, **opts)
  m1 = neural_ot.fit_w2(x, y, mesh=mesh, **opts)
  leaf = jax.tree.leaves(m1.params)[0]
  assert len(leaf.sharding.device_set) == NDEV and leaf.sharding.is_fully_replicated
  t0, t1 = m0.transport(x[:512]), m1.transport(x[:512])
  assert float(jnp.abs(t0 - x[:512]).max()) > 0.1  # it trained
  np.testing.assert_allclose(t1, t0, atol=2e-3)
  np.testing.assert_allclose(m1.w2, m0.w2, rtol=1e-3)
  with pytest.raises(ValueError, match="batch_size.*multiple of the 4 devices"):
    neural_ot.fit_w2(x, y, mesh=mesh, steps=2, batch_size=254, progress=False)


def test_data_parallel_fit_conditional_w2_matches_single_device(mesh):
  rng = np.random.default_rng(0)
  data = {t: (rng.normal(size=(512, 2)), (1 + t) * rng.normal(size=(512, 2)) + t)
          for t in (0.0, 0.5, 1.0)}
  opts = dict(steps=40, batch_size=128, progress=False, hidden=(16, 16),
              predictor_hidden=(16,), context_hidden=(8,))
  m0 = neural_ot.fit_conditional_w2(data, **opts)
  m1 = neural_ot.fit_conditional_w2(data, mesh=mesh, **opts)
  leaf = jax.tree.leaves(m1.params)[0]
  assert len(leaf.sharding.device_set) == NDEV and leaf.sharding.is_fully_replicated
  x = rng.normal(size=(256, 2))
  np.testing.assert_allclose(m1.transport(x, 0.25), m0.transport(x, 0.25), atol=2e-3)
  with pytest.raises(ValueError, match="batch_size.*multiple of the 4 devices"):
    neural_ot.fit_conditional_w2(data, mesh=mesh, steps=2, batch_size=126, progress=False)


def test_data_parallel_step_reduces_gradients_across_devices(mesh):
  """The compiled step splits the batch and all-reduces (not a replicated computation)."""
  from jax.sharding import PartitionSpec
  from neural_ot import train
  from neural_ot.w2 import Frame, PairSampler, W2Trainer
  trainer = W2Trainer(hidden=(16,), predictor_hidden=(16,), init="identity")
  state = trainer.init_state(jax.random.PRNGKey(0), 2, 10)
  data = jnp.ones((64, 2))
  sampler = PairSampler(32, sharding=NamedSharding(mesh, PartitionSpec("points")))
  frame = Frame.identity(2).astype(jnp.float32)
  step = jax.jit(lambda s, d: train.guarded_step(
      s, jnp.asarray(True), jax.random.PRNGKey(1), {"frame": frame, "x": d, "y": d}, 1e6,
      trainer=trainer, sampler=sampler))
  hlo = step.lower(state, data).compile().as_text()
  assert "all-reduce" in hlo


def test_mesh_errors(mesh):
  with pytest.raises(ValueError, match="always online"):
    neural_ot.Sinkhorn(mesh=mesh, online=False)
  with pytest.raises(ValueError, match="axis_name.*one of the mesh axes"):
    neural_ot.Sinkhorn(mesh=mesh, axis_name="batch")
  with pytest.raises(TypeError, match="`mesh` must be a jax.sharding.Mesh"):
    neural_ot.Sinkhorn(mesh="gpu")
  x, y, _, _ = _cloud(10, 10)
  with pytest.raises(ValueError, match="does not split evenly"):
    neural_ot.PointCloud.create(x, y, mesh=mesh)
