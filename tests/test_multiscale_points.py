"""The multiscale start for point clouds: grid cells in closed form, a start that converges to
the solver's own solution in fewer iterations, the rule that falls back to the Gaussian start,
static shapes (no retrace, vmap), the Meta OT model on top, bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neural_ot
from neural_ot.meta import (MetaPointsOT, gaussian_potential, grid_cells, load_meta_points,
                            multiscale_points_init)
from neural_ot.sinkhorn import multiscale as pyramid  # the module of multiscale_points_init
from neural_ot.tracing import trace_count


def test_grid_cells_of_a_regular_grid_are_its_blocks():
  """An 8 x 8 grid of spacing 1 into at most 16 cells: widths 1, 1.25, 1.5625 give 64, 49 and
  25 cells; 1.953 gives the 16 blocks {2i, 2i + 1} x {2j, 2j + 1} exactly."""
  ij = np.stack(np.meshgrid(np.arange(8), np.arange(8), indexing="ij"), -1).reshape(-1, 2)
  ids, width = grid_cells(jnp.asarray(ij, jnp.float32), 1.0, 16)
  assert float(width) == pytest.approx(1.25 ** 3)
  ids = np.asarray(ids)
  assert sorted(set(ids.tolist())) == list(range(16))
  for c in range(16):
    blocks = {(i // 2, j // 2) for i, j in ij[ids == c]}
    assert len(blocks) == 1 and np.sum(ids == c) == 4


def _clouds(key, n, m, d=2):
  """Two different two-blob clouds (sizes n and m)."""
  def cloud(key, size, shift):
    k1, k2, k3 = jax.random.split(key, 3)
    centres = 1.5 * jax.random.normal(k1, (2, d)) + shift
    comp = jax.random.bernoulli(k2, 0.4, (size,)).astype(jnp.int32)
    return centres[comp] + 0.6 * jax.random.normal(k3, (size, d))
  kx, ky = jax.random.split(key)
  return cloud(kx, n, 0.0), cloud(ky, m, 1.0)


def _mean_cost(x, y):
  return float(jnp.mean(jnp.sum(x * x, 1)) + jnp.mean(jnp.sum(y * y, 1))
               - 2 * jnp.mean(x, 0) @ jnp.mean(y, 0))


def test_start_converges_to_the_same_solution_in_fewer_iterations():
  """In 2-D at eps = 0.01 x mean cost (cells well inside sqrt(eps)): to 1e-3 in under a third of
  the iterations from zeros and under half of the Gaussian start's, and the solve from it ends
  at the solution from zeros (the same entropic cost and potentials)."""
  iters = []
  for seed in range(3):
    x, y = _clouds(jax.random.PRNGKey(seed), 900, 1000)
    eps = 0.01 * _mean_cost(x, y)
    a, b = jnp.full(900, 1 / 900), jnp.full(1000, 1 / 1000)
    run = lambda init: neural_ot.sinkhorn(x, y, epsilon=eps, tol=1e-3, max_iters=3000,
                                          init=init)
    cold, gauss = run(None), run((gaussian_potential(x, a, y, b), None))
    warm = run(multiscale_points_init(x, y, epsilon=eps))
    assert bool(cold.converged) and bool(warm.converged)
    iters.append((int(cold.n_iters), int(gauss.n_iters), int(warm.n_iters)))
    if seed == 0:
      tight = lambda init: neural_ot.sinkhorn(x, y, epsilon=eps, tol=1e-6, max_iters=5000,
                                              init=init)
      c, w = tight(None), tight(multiscale_points_init(x, y, epsilon=eps))
      np.testing.assert_allclose(w.reg_ot_cost, c.reg_ot_cost, rtol=1e-5)
      np.testing.assert_allclose(w.f - w.f.mean(), c.f - c.f.mean(), atol=1e-3 * eps)
  iters = np.array(iters)
  assert np.all(3 * iters[:, 2] < iters[:, 0]), iters
  assert np.all(2 * iters[:, 2] < iters[:, 1]), iters


def test_first_marginal_error_below_the_gaussian_start():
  """The start's first marginal error (the solver's measure, as for `init_check`) is below the
  Gaussian start's, and an order of magnitude below zeros'."""
  from neural_ot.geometry import PointCloud
  from neural_ot.sinkhorn import Sinkhorn, warm
  x, y = _clouds(jax.random.PRNGKey(5), 700, 600)
  eps = 0.01 * _mean_cost(x, y)
  a, b = jnp.full(700, 1 / 700), jnp.full(600, 1 / 600)
  solver, geom = Sinkhorn(), PointCloud.create(x, y)
  err = lambda f: float(warm.first_error(solver, geom, a, b, eps, solver.init(geom, a, b, eps,
                                                                                 f)))
  ms = err(multiscale_points_init(x, y, epsilon=eps)[0])
  assert ms < err(gaussian_potential(x, a, y, b)) and 10 * ms < err(None)


@pytest.mark.slow  # > 17 s on 2 cores: in CI's slow run
def test_rule_falls_back_to_the_gaussian_start():
  """Cells that cannot resolve eps (12-D at eps = 0.01 x mean cost: two points of a cell are
  farther apart than sqrt(eps)), or clouds under 64 points: the Gaussian start exactly."""
  x, y = _clouds(jax.random.PRNGKey(2), 300, 260, d=12)
  eps = 0.01 * _mean_cost(x, y)
  a, b = jnp.full(300, 1 / 300), jnp.full(260, 1 / 260)
  _, q = pyramid.multiscale_points_start(x, a, y, b, eps)
  assert float(q) > pyramid.MAX_QUANTISATION * eps
  np.testing.assert_allclose(multiscale_points_init(x, y, epsilon=eps)[0],
                             gaussian_potential(x, a, y, b), rtol=1e-5, atol=1e-5)
  x, y = _clouds(jax.random.PRNGKey(3), 63, 500)
  a, b = jnp.full(63, 1 / 63), jnp.full(500, 1 / 500)
  np.testing.assert_allclose(multiscale_points_init(x, y, epsilon=0.1)[0],
                             gaussian_potential(x, a, y, b), rtol=1e-5, atol=1e-5)


def test_static_shapes_no_retrace_and_vmap():
  """Levels depend on the shapes only: new clouds of the same shapes reuse the compiled start,
  and a vmapped batch equals the pairs one by one (weights given, not uniform)."""
  xs, ys = zip(*[_clouds(jax.random.PRNGKey(10 + i), 200, 150) for i in range(3)])
  xs, ys = jnp.stack(xs), jnp.stack(ys)
  a = jax.random.uniform(jax.random.PRNGKey(0), (3, 200), minval=0.5)
  b = jnp.full((3, 150), 1 / 150)
  a = a / a.sum(1, keepdims=True)
  multiscale_points_init(xs[0], ys[0], a[0], b[0], epsilon=0.05)
  before = trace_count("multiscale_start")
  one = [multiscale_points_init(xs[i], ys[i], a[i], b[i], epsilon=0.05)[0] for i in range(3)]
  assert trace_count("multiscale_start") == before
  batch = jax.jit(jax.vmap(lambda x, a, y, b: pyramid.start(x, a, y, b, 0.05)))(
      xs, a, ys, b)
  np.testing.assert_allclose(batch, jnp.stack(one), rtol=1e-4, atol=1e-4 * 0.05)


def test_meta_model_starts_its_pyramid_with_the_network(tmp_path):
  """A `MetaPointsOT` with `multiscale=True` (the default) gives the pyramid's start where the
  cells resolve eps (its coarsest level started by the network), the network's start where they
  do not; save / load keeps the flag; a file without it (older models) loads as False."""
  from neural_ot.meta.points import MetaPointsTrainer
  params = MetaPointsTrainer(2, 16, 8, 1, 2, (0.005, 0.05), 1e-3).init_state(
      jax.random.PRNGKey(0), 1).params
  model = MetaPointsOT((0.005, 0.05), 2, 16, 8, 1, 2, params)
  x, y = _clouds(jax.random.PRNGKey(0), 900, 1000)
  eps = 0.01 * _mean_cost(x, y)
  f = model.predict(x, y, epsilon=eps)[0]
  f_net = dataclasses.replace(model, multiscale=False).predict(x, y, epsilon=eps)[0]
  run = lambda init: int(neural_ot.sinkhorn(x, y, epsilon=eps, tol=1e-3, max_iters=3000,
                                            init=init).n_iters)
  assert 3 * run((f, None)) < run((f_net, None))
  model.save(str(tmp_path / "m.npz"))
  np.testing.assert_array_equal(load_meta_points(str(tmp_path / "m.npz")).predict(
      x, y, epsilon=eps)[0], f)
  import json
  from neural_ot import io
  raw = io.load(str(tmp_path / "m.npz"))
  meta = json.loads(raw["meta"])
  del meta["multiscale"]
  io.save_atomic(str(tmp_path / "old.npz"), {"meta": json.dumps(meta),
                                              "params": raw["params"]})
  assert load_meta_points(str(tmp_path / "old.npz")).multiscale is False


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=np.zeros((100, 2)), y=np.zeros((100, 3))), "same dimension"),
    (dict(x=np.zeros(100), y=np.zeros((100, 2))), "`x`"),
    (dict(a=np.ones(99)), "`a` must have one weight per point"),
    (dict(b=-np.ones(120)), "`b` must be finite, non-negative"),
    (dict(epsilon=0.0), "epsilon"),
    (dict(epsilon="0.1"), "epsilon"),
    (dict(tol=-1.0), "`tol`"),
    (dict(x=np.full((100, 2), np.nan)), "`x`"),
])
def test_bad_input(kwargs, match):
  rng = np.random.default_rng(0)
  args = dict(x=rng.normal(size=(100, 2)), y=rng.normal(size=(120, 2)), epsilon=0.1)
  args.update(kwargs)
  with pytest.raises((ValueError, TypeError), match=match):
    multiscale_points_init(**args)


def test_sinkhorn_init_multiscale_by_name():
  """`neural_ot.sinkhorn(..., init="multiscale")` is the same start (relative epsilon resolved
  to the absolute one first) and ends at the same solution as from zeros; settings it cannot
  serve are refused by name."""
  x, y = _clouds(jax.random.PRNGKey(0), 900, 1000)
  rel = 0.01
  eps = rel * _mean_cost(x, y)
  named = neural_ot.sinkhorn(x, y, epsilon=rel, relative_epsilon=True, init="multiscale")
  given = neural_ot.sinkhorn(x, y, epsilon=eps, init=multiscale_points_init(x, y, epsilon=eps))
  cold = neural_ot.sinkhorn(x, y, epsilon=eps)  # all to the default tol, 1e-3
  assert int(named.n_iters) == int(given.n_iters) < int(cold.n_iters) / 3
  np.testing.assert_allclose(named.reg_ot_cost, cold.reg_ot_cost, rtol=1e-3)
  with pytest.raises(ValueError, match="`init` must be None, a pair"):
    neural_ot.sinkhorn(x, y, epsilon=eps, init="zeros")
  with pytest.raises(ValueError, match="balanced"):
    neural_ot.sinkhorn(x, y, epsilon=eps, init="multiscale", rho_a=1.0, rho_b=1.0)
  with pytest.raises(ValueError, match="cost"):
    neural_ot.sinkhorn(x, y, epsilon=eps, init="multiscale", cost="euclidean")
