"""Maps for translation-invariant costs h(x - y): grad h* against numerical solves and
optimality conditions, the c-transform against brute force, known-map pairs against exact
assignments, the entropic map against ott-jax, fit_map against closed forms and fit_w2."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import neural_ot
from neural_ot import ElasticL1, Mahalanobis, PNorm, SqEuclidean, TranslationInvariant
from neural_ot.w2.trainer import W2Trainer
from neural_ot.w2bench.cost_families import (COST_FAMILIES, cost_family_names,
                                             cost_family_pair)

SMALL = dict(hidden=(32, 32), predictor_hidden=(32, 32), progress=False)
SMOOTH = [SqEuclidean(), PNorm(2, 1.5), PNorm(2, 3.0),
          Mahalanobis(((2.0, 0.3, 0.0), (0.3, 1.0, 0.0), (0.0, 0.0, 0.5)))]


@pytest.mark.parametrize("cost", SMOOTH, ids=lambda c: type(c).__name__)
def test_closed_form_grad_h_star_equals_a_numerical_solve(cost):
  v = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
  numerical = TranslationInvariant(cost.h).grad_h_star(v)
  np.testing.assert_allclose(cost.grad_h_star(v), numerical, atol=1e-4)
  np.testing.assert_allclose(cost.grad_h(v), jax.vmap(jax.grad(cost.h))(v), rtol=1e-5, atol=1e-6)
  # grad h* inverts grad h.
  np.testing.assert_allclose(cost.grad_h(cost.grad_h_star(v)), v, rtol=1e-4, atol=1e-5)


def test_elastic_grad_h_star_meets_the_subgradient_optimality_condition():
  gamma = 0.4
  v = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (50, 4)), np.float64)
  z = np.asarray(ElasticL1(gamma).grad_h_star(jnp.asarray(v)), np.float64)
  # z maximises <v, z> - 0.5 |z|^2 - gamma |z|_1 iff v - z is in gamma * d|z|_1 (per coordinate).
  r = v - z
  moved = np.abs(z) > 0
  np.testing.assert_allclose(r[moved], gamma * np.sign(z[moved]), atol=1e-6)
  assert np.all(np.abs(r[~moved]) <= gamma + 1e-6)
  assert moved.mean() < 0.8  # soft-thresholding leaves coordinates in place


def test_bad_costs_are_refused_with_the_reason():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (64, 2)))
  with pytest.raises(ValueError, match="strictly convex"):
    neural_ot.fit_map(x, x + 1, cost=PNorm(2, 1.0), steps=2, progress=False)
  with pytest.raises(ValueError, match="p=2"):
    neural_ot.fit_map(x, x + 1, cost=PNorm(1, 1.5), steps=2, progress=False)
  with pytest.raises(ValueError, match="not strictly convex"):
    neural_ot.fit_map(x, x + 1, cost=TranslationInvariant(lambda z: jnp.sum(z)), steps=2,
                      progress=False)
  with pytest.raises(ValueError, match="not finite"):
    neural_ot.fit_map(x, x + 1, cost=TranslationInvariant(lambda z: -jnp.log(z[0])), steps=2,
                      progress=False)
  with pytest.raises(TypeError, match="translation-invariant"):
    neural_ot.fit_map(x, x + 1, cost="l1", steps=2, progress=False)
  with pytest.raises(ValueError, match="gamma"):
    ElasticL1(-1.0)
  with pytest.raises(ValueError, match="positive definite"):
    Mahalanobis(((1.0, 0.0), (0.0, -1.0)))


@pytest.mark.parametrize("cost", [ElasticL1(0.5), PNorm(2, 1.5)], ids=["elastic", "p1.5"])
def test_c_transform_solve_equals_brute_force_on_a_grid(cost):
  # max_x <x, y> - psi(x) - r(x - y) with r = h - 0.5 |.|^2, psi an MLP at its Gaussian start
  # plus a random bump: the solver against a 601 x 601 grid in 2-D.
  tr = W2Trainer(potential="mlp", hidden=(16, 16), predictor_hidden=(16,), cost=cost,
                 finetune_iters=200, finetune_tol=1e-6)
  params = tr.init_params(jax.random.PRNGKey(0), 2)
  psi0 = tr.potential_fn(params["f"])
  psi = lambda x: 0.6 * jnp.sum(x ** 2) + 0.3 * psi0(x)
  y = jnp.asarray([[0.5, -0.3], [-1.0, 0.8], [1.5, 1.2]])
  res = tr.solve(tr.solver, psi, y, jnp.zeros_like(y))
  g = jnp.linspace(-4.0, 4.0, 601)  # offsets from y_j, 0 included: the l1 kinks are on it
  offsets = jnp.stack(jnp.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
  for j in range(len(y)):
    grid = y[j] + offsets
    vals = grid @ y[j] - jax.vmap(psi)(grid) - jax.vmap(cost.residual)(offsets)
    assert float(res.value[j]) >= float(vals.max()) - 1e-4  # at least the grid's best
    assert float(res.value[j]) <= float(vals.max()) + 2e-3  # and not above it (grid step)
    np.testing.assert_allclose(res.x[j], grid[jnp.argmax(vals)], atol=0.03)


@pytest.mark.parametrize("family", list(COST_FAMILIES))
def test_known_map_pairs_are_optimal_assignments(family):
  # The exact OT between the empirical measures {x_i} and {T(x_i)} is a permutation; the
  # known map must be it: the identity.
  pair = cost_family_pair(family, 3)
  x, y = pair.pairs(jax.random.PRNGKey(4), 150)
  c = np.asarray(pair.extras["cost"].pairwise(x, y), np.float64)
  _, col = scipy.optimize.linear_sum_assignment(c)
  np.testing.assert_array_equal(col, np.arange(150))
  assert cost_family_names("tune") and cost_family_names("heldout")


def test_elastic_families_move_only_the_active_coordinates():
  pair = cost_family_pair("elastic-box", 8)
  x, y = pair.pairs(jax.random.PRNGKey(0), 512)
  moved = np.any(np.abs(np.asarray(y - x)) > 1e-6, axis=0)
  active = np.zeros(8, bool)
  active[pair.extras["active"]] = True
  assert not np.any(moved & ~active) and np.any(moved)


def test_entropic_map_equals_ott_jax_and_the_barycentric_projection():
  from ott.geometry import costs as ocosts, pointcloud, regularizers
  from ott.solvers import linear
  x = jax.random.normal(jax.random.PRNGKey(0), (120, 3))
  y = jax.random.normal(jax.random.PRNGKey(1), (90, 3)) * 1.3 + 0.5
  out = neural_ot.sinkhorn(x, y, epsilon=0.1, cost=ElasticL1(0.3), tol=1e-6, max_iters=20000)
  geom = pointcloud.PointCloud(x, y, cost_fn=ocosts.RegTICost(regularizers.L1(), lam=0.3),
                               epsilon=0.1)
  pot = linear.solve(geom, threshold=1e-6, max_iterations=20000).to_dual_potentials()
  np.testing.assert_allclose(neural_ot.entropic_map(out, x[:16]), pot.transport(x[:16]),
                             atol=1e-4)
  np.testing.assert_allclose(neural_ot.entropic_map(out, y[:16], forward=False),
                             pot.transport(y[:16], forward=False), atol=1e-4)
  sq = neural_ot.sinkhorn(x, y, epsilon=0.1, tol=1e-6, max_iters=20000)
  np.testing.assert_allclose(neural_ot.entropic_map(sq, x), sq.barycentric_map(), atol=1e-4)
  with pytest.raises(ValueError, match="batch_size"):
    neural_ot.entropic_map(out, x, batch_size=0)
  with pytest.raises(TypeError, match="forward"):
    neural_ot.entropic_map(out, x, forward="no")
  with pytest.raises(ValueError, match="translation invariant"):
    neural_ot.entropic_map(neural_ot.sinkhorn(x, y, epsilon=0.1, cost="cosine"), x)


def test_fit_map_with_the_squared_euclidean_cost_is_fit_w2():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (500, 2)))
  y = 1.5 * x + np.array([0.5, -1.0])
  kw = dict(steps=30, batch_size=64, **SMALL)
  a = neural_ot.fit_w2(x, y, **kw)
  b = neural_ot.fit_map(x, y, cost=SqEuclidean(), **kw)
  np.testing.assert_array_equal(a.transport(x[:50]), b.transport(x[:50]))


@pytest.mark.parametrize("cost", [pytest.param(ElasticL1(0.5), marks=pytest.mark.slow),  # 20 s
                                  PNorm(2, 1.5)], ids=["elastic", "p1.5"])
def test_fit_map_learns_a_translation_which_is_optimal_for_every_cost(cost, tmp_path):
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3000, 2)))
  y = x + np.array([1.0, 0.0])
  m = neural_ot.fit_map(x, y, cost=cost, steps=300, batch_size=256, progress=False)
  err = lambda a, b: float(np.sqrt(np.mean(np.sum((np.asarray(a) - b) ** 2, -1))))
  assert err(m.transport(x[:500]), y[:500]) < 0.1
  assert err(m.inverse(y[:500]), x[:500]) < 0.1
  assert abs(m.w2 - float(cost.h(jnp.asarray([1.0, 0.0])))) < 0.1  # the transport cost
  m.save(str(tmp_path / "m.msgpack"))
  back = neural_ot.load_map(str(tmp_path / "m.msgpack"))
  assert back.trainer.cost == m.trainer.cost
  np.testing.assert_array_equal(back.transport(x[:20]), m.transport(x[:20]))


@pytest.mark.slow  # > 17 s on 2 cores: in CI's slow run
def test_fit_map_beats_the_gaussian_map_on_a_known_elastic_pair():
  pair = cost_family_pair("elastic-box", 4)
  from neural_ot.w2bench import baselines, evaluate
  m = neural_ot.fit_map(pair.sample_source, pair.sample_target, cost=pair.extras["cost"],
                        steps=600, progress=False)
  ours = evaluate(pair, m.transport, m.inverse)
  gauss = evaluate(pair, *baselines(pair)["linear"])
  assert ours["uvp_fwd"] < 0.5 * gauss["uvp_fwd"] and ours["uvp_inv"] < 0.5 * gauss["uvp_inv"]


def test_a_map_is_fine_tuned_only_with_its_own_cost():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (500, 2)))
  m = neural_ot.fit_map(x, x + 1.0, cost=ElasticL1(0.5), steps=5, batch_size=64, **SMALL)
  with pytest.raises(ValueError, match="another cost"):
    neural_ot.fit_map(x, x + 1.0, cost=ElasticL1(0.2), init_map=m, steps=5, batch_size=64,
                      progress=False)
  tuned = neural_ot.fit_map(x, x + 1.0, cost=ElasticL1(0.5), init_map=m, steps=5, batch_size=64,
                            progress=False)
  assert tuned.trainer.cost == m.trainer.cost
  assert dataclasses.replace(m.trainer, cost=None).cost is None


def test_orthant_wise_lbfgs_and_proximal_gradient_reach_the_same_l1_optimum():
  from neural_ot.conjugate.solvers import OWLQNSolver, ProxGradSolver
  rng = np.random.default_rng(0)
  q = rng.normal(size=(6, 6))
  a = jnp.asarray(q @ q.T / 6 + 0.3 * np.eye(6), jnp.float32)  # condition number ~10
  f = lambda x: 0.5 * x @ a @ x + 0.1 * jnp.sum(jnp.cos(x))
  y = jnp.asarray(rng.normal(size=(64, 6)), jnp.float32)
  owl = OWLQNSolver(l1=0.3, tol=1e-5, max_iters=300)(f, y, y)
  prox = ProxGradSolver(l1=0.3, tol=1e-5, max_iters=2000)(f, y, y)
  np.testing.assert_allclose(owl.value, prox.value, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(owl.x, prox.x, atol=1e-2)  # value gap 1e-5, curvature >= 0.2
  # Coordinates on a kink land exactly on it (x_i = y_i), as the l1 optimum has them.
  on_kink = np.abs(np.asarray(prox.x - y)) < 1e-6
  assert on_kink.any()
  assert np.all(np.asarray(owl.x - y)[on_kink] == 0.0)
  # Fewer iterations (the median: a few rows zig-zag between orthants to the iteration cap).
  assert np.median(np.asarray(owl.n_iters)) < 0.7 * np.median(np.asarray(prox.n_iters))
  with pytest.raises(ValueError, match="l1 part"):
    W2Trainer(finetune="prox")


def test_growth_of_h_matches_the_closed_forms():
  assert PNorm(2, 1.5).growth(3) == pytest.approx(1.5, abs=1e-3)
  assert PNorm(2, 3.0).scaled(2.5).growth(3) == pytest.approx(3.0, abs=1e-3)
  assert SqEuclidean().growth(5) == pytest.approx(2.0, abs=1e-3)
  assert 1.99 < ElasticL1(0.1).growth(4) <= 2.0
  user = TranslationInvariant(lambda z: jnp.sqrt(1.0 + jnp.sum(z * z)) ** 1.2)
  assert user.growth(2) == pytest.approx(1.2, abs=1e-2)


def test_fit_map_with_a_subquadratic_cost_learns_a_contraction():
  """y = x / 2 + 1: x - T(x) = x / 2 - 1 is c-cyclically monotone for every radial convex h
  (the transported pairs are a contraction of the chords), so T is the |z|^1.5-optimal map.
  A Gaussian-started (or trained) quadratic makes this cost's c-transform unbounded: the fit
  diverged at step 1 before `fixed_quadratic`."""
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3000, 2)))
  y = 0.5 * x + 1.0
  m = neural_ot.fit_map(x, y, cost=PNorm(2, 1.5), steps=300, batch_size=256, progress=False)
  assert m.trainer.fixed_quadratic and m.trainer.init == "identity"
  err = lambda a, b: float(np.sqrt(np.mean(np.sum((np.asarray(a) - b) ** 2, -1))))
  assert err(m.transport(x[:500]), y[:500]) < 0.1 * err(x[:500], y[:500])
  quad = m.params["f"]["params"]["quad"]
  np.testing.assert_array_equal(quad, np.eye(2))  # the quadratic term did not train
  # no Gaussian start here: the pushforward check compares with the identity start (NaN before)
  d = m.diagnostics
  assert np.isnan(d.dual_start) and not d.push_flagged and not d.returned_start
  assert d.push_end < 0.02 * d.push_start, (d.push_end, d.push_start)  # (a U-statistic: may be < 0)


def test_a_cost_map_that_went_astray_returns_its_identity_start(monkeypatch):
  """Where the pushforward check fires on a map without a Gaussian start, the start it was
  compared with (the identity) is returned, with a warning naming it."""
  from neural_ot.w2 import diagnostics
  monkeypatch.setattr(diagnostics, "push_worse", lambda *a, **k: True)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3000, 2)))
  y = 0.5 * x + 1.0
  with pytest.warns(RuntimeWarning, match="went astray"):
    m = neural_ot.fit_map(x, y, cost=PNorm(2, 1.5), steps=100, batch_size=256, progress=False)
  d = m.diagnostics
  assert d.returned_start and d.push_flagged and "the identity start is returned" in d.message
  np.testing.assert_allclose(m.transport(x[:200]), x[:200], atol=1e-4)
  assert np.isfinite(m.w2)


def test_growth_and_fixed_quadratic_refuse_bad_values_by_name():
  with pytest.raises(ValueError, match="`dim` must be an int >= 1"):
    PNorm(2, 1.5).growth(0)
  with pytest.raises(ValueError, match="`fixed_quadratic` must be True or False"):
    W2Trainer(fixed_quadratic="yes")
