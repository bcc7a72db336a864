"""Sinkhorn against ott-jax, POT, exact LP, 1-D sorting, finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from hypothesis import given, settings, strategies as st
from ott.geometry import pointcloud as ott_pc
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn

import neural_ot
from neural_ot.sinkhorn import relax as relax_lib
from neural_ot.tracing import trace_count
from _problems import weighted_clouds


_problem = weighted_clouds


def _ott(x, y, a, b, eps, **kw):
  geom = ott_pc.PointCloud(x, y, epsilon=eps)
  return ott_sinkhorn.Sinkhorn(threshold=1e-7, max_iterations=20000)(
      linear_problem.LinearProblem(geom, a, b, **kw)), geom


def _centered(v):
  return v - jnp.mean(v)


def _f64_simplex(w):
  """Float32 weights as float64 summing to 1 to double precision: POT's threshold (1e-10) is
  below the float32 rounding of the sums, which otherwise ran it to its 100,000 iterations."""
  w = np.asarray(w, np.float64)
  return w / w.sum()


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("d", [2, 5])
def test_matches_ott(online, d):
  x, y, a, b = _problem(d=d)
  eps = 0.1
  ours = neural_ot.sinkhorn(x, y, a, b, epsilon=eps, tol=1e-5, online=online, tile_size=16)
  ref, _ = _ott(x, y, a, b, eps)
  assert bool(ours.converged)
  np.testing.assert_allclose(ours.reg_ot_cost, ref.reg_ot_cost, rtol=1e-4)
  # ott folds the weights into its potentials.
  np.testing.assert_allclose(_centered(ours.f + eps * jnp.log(a)), _centered(ref.f), atol=1e-4)
  np.testing.assert_allclose(_centered(ours.g + eps * jnp.log(b)), _centered(ref.g), atol=1e-4)
  np.testing.assert_allclose(ours.matrix, ref.matrix, atol=1e-6)


def test_primal_cost_matches_pot_sinkhorn2_and_emd():
  x, y, a, b = _problem(n=30, m=25)
  C = np.asarray(neural_ot.SqEuclidean().pairwise(x, y), np.float64)
  an, bn = _f64_simplex(a), _f64_simplex(b)
  eps = 0.05
  ours = neural_ot.sinkhorn(x, y, a, b, epsilon=eps, tol=1e-6)
  pot = ot.sinkhorn2(an, bn, C, eps, method="sinkhorn_log", stopThr=1e-10, numItermax=100000)
  np.testing.assert_allclose(ours.primal_cost, pot, rtol=1e-4)
  # Small epsilon: the entropic primal cost approaches the exact LP value.
  emd = ot.emd2(an, bn, C)
  small = neural_ot.sinkhorn(x, y, a, b, epsilon=1e-3, relative_epsilon=True, tol=1e-4,
                             max_iters=20000)
  assert bool(small.converged)
  np.testing.assert_allclose(small.primal_cost, emd, rtol=5e-3)
  assert float(small.primal_cost) >= emd * (1 - 1e-3)


def test_unbalanced_matches_pot_plan_and_primal_objective():
  x, y, a, b = _problem(n=25, m=20)
  a = a * 1.3  # unbalanced: masses may differ
  eps, ra, rb = 0.1, 1.0, 2.0
  ours = neural_ot.sinkhorn(x, y, a, b, epsilon=eps, tol=1e-6, rho_a=ra, rho_b=rb)
  assert bool(ours.converged)
  C = np.asarray(neural_ot.SqEuclidean().pairwise(x, y), np.float64)
  an, bn = np.asarray(a, np.float64), np.asarray(b, np.float64)
  P = ot.unbalanced.sinkhorn_unbalanced(an, bn, C, eps, [ra, rb], numItermax=100000,
                                        stopThr=1e-13)
  np.testing.assert_allclose(ours.matrix, P, atol=1e-6)
  np.testing.assert_allclose(ours.transport_mass, P.sum(), rtol=1e-5)  # the plan's mass

  def kl(p, q):
    return np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300) / q), 0.0) - p + q)

  primal = (np.sum(P * C) + eps * kl(P, an[:, None] * bn[None]) + ra * kl(P.sum(1), an)
            + rb * kl(P.sum(0), bn))
  # Strong duality: the dual value we report equals the primal objective.
  np.testing.assert_allclose(ours.reg_ot_cost, primal, rtol=1e-4)


def test_one_sided_unbalanced_keeps_target_marginal():
  x, y, a, b = _problem()
  out = neural_ot.sinkhorn(x, y, 2.0 * a, b, epsilon=0.1, rho_a=0.5, tol=1e-6)
  np.testing.assert_allclose(out.marginals[1], b, atol=1e-5)


def test_one_dimensional_ot_by_sorting():
  k1, k2 = jax.random.split(jax.random.PRNGKey(3))
  x = jax.random.normal(k1, (50, 1))
  y = 2.0 * jax.random.uniform(k2, (50, 1)) + 0.5
  exact = float(jnp.mean((jnp.sort(x[:, 0]) - jnp.sort(y[:, 0])) ** 2))
  div = neural_ot.sinkhorn_divergence(x, y, epsilon=1e-3, relative_epsilon=True, tol=1e-5,
                                      max_iters=20000)
  np.testing.assert_allclose(div, exact, rtol=2e-2)


def test_entropic_gaussian_closed_form():
  """Entropic OT between 1-D Gaussians N(0, A) -> N(mu, B), cost |x - y|^2.

  The optimal entropic plan is Gaussian; its density has the cross term
  exp(2 x y / eps), so the inverse joint covariance has off-diagonal -2 / eps,
  which gives the cross-covariance c = (sqrt(16 A B + eps^2) - eps) / 4 and the
  transport cost <P, C> = mu^2 + A + B - 2 c (Janati et al. 2020; Mallasto et
  al. 2021). Quantile samples keep the discretisation error small.
  """
  from scipy.stats import norm

  n, A, B, mu, eps = 2000, 1.0, 0.25, 1.0, 0.5
  q = (np.arange(n) + 0.5) / n
  x = jnp.asarray(np.sqrt(A) * norm.ppf(q), jnp.float32)[:, None]
  y = jnp.asarray(mu + np.sqrt(B) * norm.ppf(q), jnp.float32)[:, None]
  out = neural_ot.sinkhorn(x, y, epsilon=eps, tol=1e-5)
  c = (np.sqrt(16 * A * B + eps**2) - eps) / 4
  cross = float(jnp.sum(out.matrix * x * (y.T - mu)))
  np.testing.assert_allclose(cross, c, rtol=2e-2)
  np.testing.assert_allclose(out.primal_cost, mu**2 + A + B - 2 * c, rtol=2e-2)


def test_divergence_properties():
  x, y, a, b = _problem()
  s_xy = neural_ot.sinkhorn_divergence(x, y, a, b, epsilon=0.1, tol=1e-6)
  s_yx = neural_ot.sinkhorn_divergence(y, x, b, a, epsilon=0.1, tol=1e-6)
  np.testing.assert_allclose(s_xy, s_yx, rtol=1e-4)
  assert float(s_xy) > 0
  # S(x, x) = 0 holds by construction (three identical solves cancel); a translate is a
  # real check: OT_eps(a, a shifted by t) = OT_eps(a, a) + |t|^2, so S = |t|^2 exactly.
  t = jnp.array([0.7, -0.4])
  s_shift = neural_ot.sinkhorn_divergence(x, x + t, a, a, epsilon=0.1, tol=1e-6)
  np.testing.assert_allclose(s_shift, t @ t, rtol=1e-4)


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 12), m=st.integers(2, 12), seed=st.integers(0, 2**16),
       eps=st.floats(0.05, 2.0))
def test_marginals_property(n, m, seed, eps):
  x, y, a, b = _problem(n, m, 2, seed)
  out = neural_ot.sinkhorn(x, y, a, b, epsilon=eps, tol=1e-4, max_iters=5000)
  r, c = out.marginals
  assert bool(out.converged)
  # float32 resolves (f + g - C) / eps to ~2^-23 max C / eps (C / eps = 315: 2.6e-5 apart)
  floor = 1e-6 * float(jnp.max(jnp.sum((x[:, None] - y[None]) ** 2, -1))) / eps
  err = float(jnp.abs(r - a).sum() + jnp.abs(c - b).sum())
  assert err < 2e-4 + floor
  np.testing.assert_allclose(out.marginal_error, err, atol=2e-5 + floor)  # the returned plan's
  P = out.matrix
  assert bool(jnp.all(P >= 0))
  np.testing.assert_allclose(out.apply(jnp.ones(m)), r, rtol=1e-5, atol=1e-7)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), eps=st.floats(0.05, 1.0))
def test_divergence_symmetry_property(seed, eps):
  x, y, a, b = _problem(8, 8, 2, seed)
  s1 = neural_ot.sinkhorn_divergence(x, y, a, b, epsilon=eps, tol=1e-6)
  s2 = neural_ot.sinkhorn_divergence(y, x, b, a, epsilon=eps, tol=1e-6)
  np.testing.assert_allclose(s1, s2, rtol=1e-3, atol=1e-6)


def test_vmap_with_padding_equals_loop_and_stops_per_problem():
  sizes = [(12, 9, 0.05), (20, 16, 0.5), (7, 20, 0.1)]
  N, M = 20, 20
  xs, ys, as_, bs, refs = [], [], [], [], []
  for i, (n, m, eps) in enumerate(sizes):
    x, y, a, b = _problem(n, m, 2, i)
    refs.append(neural_ot.sinkhorn(x, y, a, b, epsilon=0.1, tol=1e-5))
    xs.append(jnp.pad(x, ((0, N - n), (0, 0)))); ys.append(jnp.pad(y, ((0, M - m), (0, 0))))
    as_.append(jnp.pad(a, (0, N - n))); bs.append(jnp.pad(b, (0, M - m)))
  X, Y, A, B = map(jnp.stack, (xs, ys, as_, bs))
  batched = jax.jit(jax.vmap(lambda x, y, a, b: neural_ot.sinkhorn(
      x, y, a, b, epsilon=0.1, tol=1e-5)))(X, Y, A, B)
  for i, ((n, m, _), ref) in enumerate(zip(sizes, refs)):
    np.testing.assert_allclose(batched.reg_ot_cost[i], ref.reg_ot_cost, rtol=1e-5)
    np.testing.assert_allclose(batched.f[i, :n], ref.f, atol=1e-4)
    assert int(batched.n_iters[i]) == int(ref.n_iters)
  assert len(set(np.asarray(batched.n_iters).tolist())) > 1  # each stopped on its own


def test_no_retrace_on_new_data_of_same_shape():
  x, y, a, b = _problem(17, 19)
  neural_ot.sinkhorn(x, y, a, b, epsilon=0.1)
  size = trace_count("sinkhorn")
  neural_ot.sinkhorn(x + 1.0, y * 2.0, b=b, a=a, epsilon=0.2)
  assert trace_count("sinkhorn") == size


def test_warm_start_from_solution_needs_no_iterations():
  x, y, a, b = _problem()
  out = neural_ot.sinkhorn(x, y, a, b, epsilon=0.1, tol=1e-5)
  warm = neural_ot.sinkhorn(x, y, a, b, epsilon=0.1, tol=1e-5, init=(out.f, out.g))
  assert int(warm.n_iters) <= 1 < int(out.n_iters)
  np.testing.assert_allclose(warm.reg_ot_cost, out.reg_ot_cost, rtol=1e-5)


def test_epsilon_scaling_and_momentum_keep_the_fixed_point():
  x, y, a, b = _problem()
  base = neural_ot.sinkhorn(x, y, a, b, epsilon=0.02, tol=1e-5, momentum=1.0, max_iters=20000)
  scaled = neural_ot.sinkhorn(x, y, a, b, epsilon=0.02, tol=1e-5, epsilon_init_factor=50.0,
                              epsilon_decay=0.9, max_iters=20000)
  auto = neural_ot.sinkhorn(x, y, a, b, epsilon=0.02, tol=1e-5, max_iters=20000)
  for other in (scaled, auto):
    assert bool(other.converged)
    np.testing.assert_allclose(other.reg_ot_cost, base.reg_ot_cost, rtol=1e-4)
  assert int(auto.n_iters) < int(base.n_iters)


def test_adaptive_momentum_at_small_epsilon_and_from_warm_starts():
  # Small epsilon: plain Sinkhorn crawls; over-relaxation must keep its omega through the
  # error peak right after it switches on (it used to fall back to omega = 1 here).
  x, y, a, b = _problem(300, 300, seed=4)
  opts = dict(epsilon=0.001, relative_epsilon=True, tol=1e-4, max_iters=20000)
  plain = neural_ot.sinkhorn(x, y, a, b, momentum=1.0, **opts)
  auto = neural_ot.sinkhorn(x, y, a, b, **opts)
  assert bool(plain.converged) and bool(auto.converged)
  assert int(auto.n_iters) * 5 < int(plain.n_iters) * 2  # 920 vs 3134 (2667 before the fix)
  np.testing.assert_allclose(auto.reg_ot_cost, plain.reg_ot_cost, rtol=1e-3)
  # A warm start from a nearby problem's solution reaches the same point in fewer iterations.
  a2 = a * (1.0 + 0.2 * jnp.sin(7.0 * x[:, 0]))
  a2 = a2 / a2.sum()
  cold = neural_ot.sinkhorn(x, y, a2, b, **opts)
  warm = neural_ot.sinkhorn(x, y, a2, b, init=(auto.f, None), **opts)
  assert bool(warm.converged) and int(warm.n_iters) < int(cold.n_iters)
  np.testing.assert_allclose(warm.reg_ot_cost, cold.reg_ot_cost, rtol=1e-3)


def _rate_at_the_switch(errs):
  """``(lam, omega)`` that ``momentum="auto"`` sets at iteration 20 after the plain errors
  ``errs[0..20]``."""
  dt = jnp.float32
  omega, lam, err_ref, err_span, warmup = (jnp.array(1.0, dt), jnp.array(0.0, dt),
                                           jnp.array(jnp.inf, dt), jnp.array(jnp.inf, dt),
                                           jnp.array(20, jnp.int32))
  eps = jnp.array(0.1, dt)
  for k, e in enumerate(errs):
    omega, lam, err_ref, err_span, warmup, _ = relax_lib.adapt_omega(
        jnp.array(k, jnp.int32), jnp.array(e, dt), omega, lam, err_ref, err_span, warmup, eps,
        eps)
  return float(lam), float(omega)


def test_adaptive_momentum_measures_the_slow_rate_through_a_warm_starts_transient():
  # Plain Sinkhorn's error as a warm start sees it: a fast mode (0.6 an iteration) on top of
  # the slow one (0.97). Over the whole 10-iteration span before the switch the decay looks
  # faster than the slow mode's (omega ~1.47 from it); over its last 5 iterations it is closer
  # to 0.97 (omega ~1.61; the slow mode's optimum is ~1.70), and omega is set from that.
  fast, slow = 0.6, 0.97
  errs = [0.5 * fast ** k + 2e-3 * slow ** k for k in range(21)]
  lam, omega = _rate_at_the_switch(errs)
  span_rate = (errs[20] / errs[10]) ** 0.1
  half_rate = (errs[20] / errs[15]) ** 0.2
  assert span_rate < half_rate < slow
  np.testing.assert_allclose(lam, half_rate, rtol=1e-5)
  np.testing.assert_allclose(omega, 2 / (1 + np.sqrt(1 - half_rate)), rtol=1e-5)
  assert omega > 2 / (1 + np.sqrt(1 - span_rate)) + 0.1
  # A plain geometric decay (the zeros start once its transient is gone): the same rate
  # either way.
  lam, _ = _rate_at_the_switch([0.3 * slow ** k for k in range(21)])
  np.testing.assert_allclose(lam, slow, rtol=1e-5)


def test_adaptive_momentum_goes_past_1_8_only_near_the_fixed_point():
  # A very slow plain rate (0.998: the optimum omega is ~1.91). Far from the fixed point (an
  # L1 error of 1.4 at the switch) omega stays at the cap 1.8: on a d = 2 point cloud at
  # eps = 1e-3 x mean cost, 1.9 there blew the error up to 1e9. Near it (error 0.05), SOR's
  # local theory holds and omega is the rate's optimum, capped at 1.9.
  slow = 0.998
  best = 2 / (1 + np.sqrt(1 - slow))
  assert best > relax_lib.OMEGA_LOCAL > relax_lib.OMEGA_MAX
  _, far = _rate_at_the_switch([1.4 * slow ** k for k in range(21)])
  _, near = _rate_at_the_switch([0.05 * slow ** k for k in range(21)])
  np.testing.assert_allclose(far, relax_lib.OMEGA_MAX, rtol=1e-6)
  np.testing.assert_allclose(near, relax_lib.OMEGA_LOCAL, rtol=1e-6)
  # A fast rate's optimum is under both caps: the same omega either way.
  _, far = _rate_at_the_switch([1.4 * 0.9 ** k for k in range(21)])
  _, near = _rate_at_the_switch([0.05 * 0.9 ** k for k in range(21)])
  np.testing.assert_allclose(far, 2 / (1 + np.sqrt(0.1)), rtol=1e-4)
  np.testing.assert_allclose(near, far, rtol=1e-6)


def test_over_relaxation_near_the_fixed_point_cuts_iterations_at_small_eps(monkeypatch):
  # Two elongated clusters to a Gaussian, eps = 1e-3 x mean cost: the plain rate is so slow
  # that omega's optimum is above 1.8. With omega allowed up to 1.9 near the fixed point the
  # solve reaches the same point in fewer iterations (measured: 591 -> 361, 863 -> 511).
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(k1, (300, 2)) * jnp.array([1.0, 0.3]) + jnp.where(
      jax.random.bernoulli(k3, 0.5, (300, 1)), 2.0, -2.0)
  y = jax.random.normal(k2, (340, 2))
  opts = dict(epsilon=1e-3, relative_epsilon=True, tol=1e-4, max_iters=5000)
  now = neural_ot.sinkhorn(x, y, **opts)
  monkeypatch.setattr(relax_lib, "OMEGA_LOCAL", relax_lib.OMEGA_MAX)
  jax.clear_caches()  # the cap is read when the solver is traced
  capped = neural_ot.sinkhorn(x, y, **opts)
  jax.clear_caches()
  assert bool(now.converged) and bool(capped.converged)
  assert int(now.n_iters) * 4 < int(capped.n_iters) * 3
  np.testing.assert_allclose(now.reg_ot_cost, capped.reg_ot_cost, rtol=1e-5)


def test_relative_epsilon():
  x, y, a, b = _problem()
  mean_cost = float(a @ neural_ot.SqEuclidean().pairwise(x, y) @ b)
  rel = neural_ot.sinkhorn(x, y, a, b, epsilon=0.05, relative_epsilon=True, tol=1e-6)
  ab = neural_ot.sinkhorn(x, y, a, b, epsilon=0.05 * mean_cost, tol=1e-6)
  np.testing.assert_allclose(rel.epsilon, 0.05 * mean_cost, rtol=1e-5)
  np.testing.assert_allclose(rel.reg_ot_cost, ab.reg_ot_cost, rtol=1e-5)


@pytest.mark.parametrize("cost", ["euclidean", "l1", "cosine"])
def test_other_costs_match_pot(cost):
  x, y, a, b = _problem(20, 15, 3)
  out = neural_ot.sinkhorn(x, y, a, b, epsilon=0.05, tol=1e-6, cost=cost)
  metric = {"euclidean": "euclidean", "l1": "cityblock", "cosine": "cosine"}[cost]
  C = ot.dist(np.asarray(x, np.float64), np.asarray(y, np.float64), metric=metric)
  pot = ot.sinkhorn2(_f64_simplex(a), _f64_simplex(b), C, 0.05, method="sinkhorn_log",
                     stopThr=1e-10, numItermax=100000)
  np.testing.assert_allclose(out.primal_cost, pot, rtol=1e-3)


@pytest.mark.parametrize("implicit", [True, False])
def test_gradients_match_finite_differences(x64, implicit):
  x, y, a, b = _problem(12, 10, 2)
  x, y, a, b = (v.astype(jnp.float64) for v in (x, y, a, b))
  kw = dict(epsilon=0.2, tol=1e-10, max_iters=3000, momentum=1.0,
            adjoint=neural_ot.ImplicitDiff() if implicit else neural_ot.Unrolled())

  def loss(x, a):
    return neural_ot.sinkhorn(x, y, a, b, **kw).reg_ot_cost

  gx, ga = jax.grad(loss, argnums=(0, 1))(x, a)
  h = 1e-5
  dx = jax.random.normal(jax.random.PRNGKey(5), x.shape, jnp.float64)
  fd = (loss(x + h * dx, a) - loss(x - h * dx, a)) / (2 * h)
  np.testing.assert_allclose(jnp.vdot(gx, dx), fd, rtol=1e-5)
  # Weights live on the simplex: a tangent direction that sums to zero.
  da = jax.random.normal(jax.random.PRNGKey(6), a.shape, jnp.float64)
  da = da - da.mean()
  fd_a = (loss(x, a + h * da) - loss(x, a - h * da)) / (2 * h)
  np.testing.assert_allclose(jnp.vdot(ga, da), fd_a, rtol=1e-5)


def test_gradient_of_potentials_and_divergence(x64):
  x, y, a, b = _problem(10, 9, 2)
  x, y, a, b = (v.astype(jnp.float64) for v in (x, y, a, b))
  kw = dict(epsilon=0.3, tol=1e-10, max_iters=3000)
  # A quantity depending on the potentials themselves exercises the linear solve.
  w = jax.random.normal(jax.random.PRNGKey(1), (10,), jnp.float64)

  def pot_loss(y, implicit):
    adjoint = neural_ot.ImplicitDiff() if implicit else neural_ot.Unrolled()
    f = neural_ot.sinkhorn(x, y, a, b, adjoint=adjoint, **kw).f
    return jnp.vdot(w, f - f.mean())

  gi = jax.grad(pot_loss)(y, True)
  gu = jax.grad(pot_loss)(y, False)
  np.testing.assert_allclose(gi, gu, rtol=1e-4, atol=1e-8)
  dy = jax.random.normal(jax.random.PRNGKey(2), y.shape, jnp.float64)
  h = 1e-5
  fd = (pot_loss(y + h * dy, True) - pot_loss(y - h * dy, True)) / (2 * h)
  np.testing.assert_allclose(jnp.vdot(gi, dy), fd, rtol=1e-4)

  def div(y):
    return neural_ot.sinkhorn_divergence(x, y, a, b, **kw)

  gd = jax.grad(div)(y)
  fdd = (div(y + h * dy) - div(y - h * dy)) / (2 * h)
  np.testing.assert_allclose(jnp.vdot(gd, dy), fdd, rtol=1e-5)


def test_grad_matches_ott():
  x, y, a, b = _problem()
  g = jax.grad(lambda x: neural_ot.sinkhorn(x, y, a, b, epsilon=0.1, tol=1e-6).reg_ot_cost)(x)
  go = jax.grad(lambda x: _ott(x, y, a, b, 0.1)[0].reg_ot_cost)(x)
  np.testing.assert_allclose(g, go, atol=1e-5)


def test_dense_and_online_agree_with_general_cost():
  x, y, a, b = _problem(33, 29, 3)
  kw = dict(epsilon=0.1, tol=1e-6, cost=lambda u, v: jnp.sum((u - v) ** 2) ** 0.75)
  d = neural_ot.sinkhorn(x, y, a, b, online=False, **kw)
  o = neural_ot.sinkhorn(x, y, a, b, online=True, tile_size=8, **kw)
  np.testing.assert_allclose(d.reg_ot_cost, o.reg_ot_cost, rtol=1e-5)
  np.testing.assert_allclose(d.primal_cost, o.primal_cost, rtol=1e-5)
  np.testing.assert_allclose(d.barycentric_map(), o.barycentric_map(), atol=1e-5)


def test_non_convergence_is_reported_not_raised():
  x, y, a, b = _problem()
  out = neural_ot.sinkhorn(x, y, a, b, epsilon=1e-3, tol=1e-6, max_iters=3, momentum=1.0)
  assert not bool(out.converged) and int(out.n_iters) == 3
  assert float(out.marginal_error) > 1e-6


def _far_out(n=512, d=8, scale=200.0):
  """A heavy-tailed cloud with three points moved far out (``C_ij / eps`` up to ~1e5 at eps =
  the target's variance), against a Gaussian: the failure of stop 46's check (NaN)."""
  k = jax.random.split(jax.random.PRNGKey(0), 2)
  y = 2.0 * jax.random.normal(k[0], (n, d))
  x = (2.0 * jax.random.t(k[1], 2.0, (n, d))).at[:3].mul(scale)
  return x, y, float(jnp.var(y, axis=0).sum())


@pytest.mark.parametrize("scale_eps", [1.0, 0.1])
def test_far_out_points_converge_to_ott(scale_eps):
  """The loop's kernel sums are clipped, so a far point used to climb 69 eps per iteration
  from ``f = 0`` while over-relaxation overshot it into overflow: NaN after 55-588 iterations
  here. The zeros start's first iteration in log-sum-exp form puts it in place at once."""
  x, y, var = _far_out()
  eps = scale_eps * var
  out = neural_ot.sinkhorn(x, y, epsilon=eps, tol=1e-3)
  ref, _ = _ott(x, y, None, None, eps)
  assert bool(out.converged) and int(out.n_iters) < 200, int(out.n_iters)
  np.testing.assert_allclose(float(out.reg_ot_cost), float(ref.reg_ot_cost), rtol=1e-4)
  div = neural_ot.sinkhorn_divergence(x, y, epsilon=eps)
  assert np.isfinite(float(div)) and float(div) > 0


def test_small_eps_from_zeros_converges_to_ott():
  """Gaussian clouds at eps = 1e-3 x the mean cost: the zeros start's first kernel sums
  underflow on some rows, and the clipped first step with over-relaxation after it ended in
  NaN (36 iterations) on this seed."""
  k = jax.random.split(jax.random.PRNGKey(2), 2)
  x = jax.random.normal(k[0], (1000, 2))
  y = 0.5 * jax.random.normal(k[1], (1000, 2)) + 1.0
  eps = 1e-3 * float(jnp.mean(jnp.sum((x[:, None] - y[None]) ** 2, -1)))
  out = neural_ot.sinkhorn(x, y, epsilon=eps, tol=1e-3)
  ref = ott_sinkhorn.Sinkhorn(threshold=1e-4, max_iterations=20000)(
      linear_problem.LinearProblem(ott_pc.PointCloud(x, y, epsilon=eps)))
  assert bool(out.converged) and int(out.n_iters) < int(ref.n_iters) / 3, int(out.n_iters)
  np.testing.assert_allclose(float(out.reg_ot_cost), float(ref.reg_ot_cost), rtol=1e-5)


def test_heavy_tails_give_ott_cost_not_a_converged_wrong_one():
  """Student-t (2 degrees of freedom) against a Gaussian, n = 4000: a few rows' first kernel
  sums underflowed, each left an L1 error of only 1 / n, and the old solve stopped "converged"
  at 1e-3 with reg_ot_cost 43.7 where ott-jax (and this solve now) give 147.3."""
  k = jax.random.split(jax.random.PRNGKey(1), 2)
  y = 0.5 * jax.random.normal(k[1], (4000, 2)) + 1.0
  x = jax.random.t(k[0], 2.0, (4000, 2))
  mean_cost = jnp.mean(jnp.sum(x**2, 1)) + jnp.mean(jnp.sum(y**2, 1)) - 2 * x.mean(0) @ y.mean(0)
  eps = 0.01 * float(mean_cost)
  out = neural_ot.sinkhorn(x, y, epsilon=eps, tol=1e-3)
  ref = ott_sinkhorn.Sinkhorn(threshold=1e-4, max_iterations=5000)(
      linear_problem.LinearProblem(ott_pc.PointCloud(x, y, epsilon=eps)))
  assert bool(out.converged)
  np.testing.assert_allclose(float(out.reg_ot_cost), float(ref.reg_ot_cost), rtol=1e-4)


def test_a_warm_start_far_from_far_out_points_does_not_overflow():
  """From a start that leaves a far point at ``f = 0`` (no log-sum-exp first iteration),
  steps longer than 30 eps are not over-relaxed: before, their overshoot overflowed (NaN)."""
  x, y, var = _far_out(scale=50.0)
  zeros = jnp.zeros(x.shape[0])
  out = neural_ot.sinkhorn(x, y, epsilon=var, init=(zeros, None), init_check=False)
  ref, _ = _ott(x, y, None, None, var)
  assert bool(out.converged) and not bool(out.diverged)
  np.testing.assert_allclose(float(out.reg_ot_cost), float(ref.reg_ot_cost), rtol=1e-4)


def test_the_log_sum_exp_first_iteration_is_the_plain_one_on_spread_data():
  """From zeros the first iteration now runs in log-sum-exp form inside ``init``; where no
  kernel sum is clipped it is the plain iteration, so counts, errors and potentials agree."""
  x, y, a, b = _problem()
  opts = dict(epsilon=0.5, tol=1e-6, record_errors=True)
  new = neural_ot.sinkhorn(x, y, a, b, **opts)
  old = neural_ot.sinkhorn(x, y, a, b, init=(jnp.zeros(x.shape[0]), None), init_check=False,
                           **opts)
  assert int(new.n_iters) == int(old.n_iters) > 5
  k = int(new.n_iters)
  np.testing.assert_allclose(new.errors[:k], old.errors[:k], rtol=1e-3, atol=1e-6)  # f32 floor
  np.testing.assert_allclose(_centered(new.f), _centered(old.f), atol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(y=np.zeros((5, 3))), "same dimension"),
    (dict(a=-np.ones(6) / 6 + np.eye(6)[0] * 2), "`a` must be non-negative"),
    (dict(b=np.ones(5)), "`b` must sum to 1"),
    (dict(a=np.ones(4) / 4), r"`a` must have shape \(6,\)"),
    (dict(x=np.full((6, 2), np.nan)), "`x` must be finite"),
    (dict(y=np.array([[np.inf, 0.0]] * 5)), "`y` must be finite"),
    (dict(epsilon=0.0), "`epsilon` must be a positive"),
    (dict(epsilon=-1.0), "`epsilon` must be a positive"),
    (dict(x=np.zeros((0, 2))), "`x` must hold at least one point"),
    (dict(x=np.zeros(6)), "`x` must have 2 dimensions"),
])
def test_bad_input_raises_clear_errors(kwargs, match):
  args = dict(x=np.random.rand(6, 2), y=np.random.rand(5, 2), a=None, b=None, epsilon=0.1)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    neural_ot.sinkhorn(args.pop("x"), args.pop("y"), args.pop("a"), args.pop("b"), **args)


def test_bad_options_raise():
  with pytest.raises(ValueError, match="`tol`"):
    neural_ot.Sinkhorn(tol=0.0)
  with pytest.raises(ValueError, match="`momentum`"):
    neural_ot.Sinkhorn(momentum=2.5)
  with pytest.raises(ValueError, match="`rho_a`"):
    neural_ot.Sinkhorn(rho_a=-1.0)
  with pytest.raises(TypeError, match="unknown option"):
    neural_ot.sinkhorn(np.zeros((3, 2)), np.ones((3, 2)), epsilon=0.1, epsilson=3)


def test_sinkhorn_batch_matches_pot_per_problem_and_stops_per_problem():
  batch = 6
  k = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(k[0], (batch, 10, 2))
  y = 0.5 * jax.random.normal(k[1], (batch, 8, 2)) + 1.0
  a = jax.random.uniform(k[2], (batch, 10)) + 0.1
  a = a / a.sum(1, keepdims=True)
  eps = jnp.array([0.1, 0.15, 0.2, 0.3, 0.5, 1.0])
  out = neural_ot.sinkhorn_batch(x, y, a, epsilon=eps, tol=1e-6, max_iters=5000)
  assert out.reg_ot_cost.shape == (batch,) and out.f.shape == (batch, 10)
  for i in range(batch):
    M = np.asarray(neural_ot.SqEuclidean().pairwise(x[i], y[i]), np.float64)
    plan = ot.sinkhorn(np.asarray(a[i], np.float64), np.full(8, 1 / 8), M, float(eps[i]),
                       method="sinkhorn_log", stopThr=1e-7, numItermax=20000)
    one = jax.tree.map(lambda z: z[i], out)  # the i-th problem's output
    np.testing.assert_allclose(np.sum(plan * M), float(one.primal_cost), rtol=1e-4)
  assert len(set(np.asarray(out.n_iters).tolist())) > 1


def test_sinkhorn_batch_bad_input():
  x = jnp.zeros((3, 5, 2))
  with pytest.raises(ValueError, match="`x` must have 3 dimensions"):
    neural_ot.sinkhorn_batch(x[0], x[0], epsilon=0.1)
  with pytest.raises(ValueError, match="agree in B and d"):
    neural_ot.sinkhorn_batch(x, jnp.zeros((2, 5, 2)), epsilon=0.1)
  with pytest.raises(ValueError, match=r"`a` must have shape \(3, 5\)"):
    neural_ot.sinkhorn_batch(x, x, jnp.ones((3, 4)) / 4, epsilon=0.1)
  bad = jnp.full((3, 5), 0.2).at[1, 0].set(-0.2)
  with pytest.raises(ValueError, match="non-negative; problem 1"):
    neural_ot.sinkhorn_batch(x, x, bad, epsilon=0.1)
  with pytest.raises(ValueError, match="sum to 1 in every problem.*problem 2"):
    neural_ot.sinkhorn_batch(x, x, jnp.full((3, 5), 0.2).at[2].set(0.3), epsilon=0.1)
  with pytest.raises(ValueError, match=r"`epsilon` must be a scalar or have shape \(3,\)"):
    neural_ot.sinkhorn_batch(x, x, epsilon=jnp.ones(2))
  with pytest.raises(ValueError, match="`epsilon` must be positive"):
    neural_ot.sinkhorn_batch(x, x, epsilon=jnp.array([0.1, 0.0, 0.1]))


def _iters_to(errors, tols):
  errors = np.asarray(errors)
  return np.array([[int(np.nonzero((e >= 0) & (e < t))[0][0]) for t in tols] for e in errors])


def test_warm_start_is_not_slower_than_zeros_at_tight_tolerances():
  """A better start must never cost iterations later (issue 13): warm-started from the solution
  of a nearby problem, the adaptive over-relaxation used to switch on later and with a rate
  estimate fooled by the warm start's transient, and lost its head start by 1e-3 on most pairs."""
  k, n, eps, tols = 12, 100, 0.1, (1e-2, 1e-3, 1e-4)
  kx, ky, ks = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (k, n, 2))
  y = 0.7 * jax.random.normal(ky, (k, n, 2)) @ jnp.array([[1.0, 0.3], [0.0, 0.8]]) + 1.0
  y_near = y + 0.05 * jax.random.normal(ks, (k, 1, 2))
  w = jnp.full((n,), 1.0 / n)
  solver = neural_ot.Sinkhorn(tol=1e-5, max_iters=1000, record_errors=True)

  @jax.jit
  @jax.vmap
  def errors(x, y, y_near):
    near = solver.solve(neural_ot.PointCloud.create(x, y_near), w, w, eps).f
    geom = neural_ot.PointCloud.create(x, y)
    return solver.solve(geom, w, w, eps).errors, solver.solve(geom, w, w, eps, (near, None)).errors

  zeros, warm = (_iters_to(e, tols) for e in errors(x, y, y_near))
  assert np.all(np.median(warm, 0) < np.median(zeros, 0)), (warm, zeros)
  assert np.mean(warm > zeros) <= 1 / k, (warm, zeros)  # per pair and tolerance


def test_a_warm_start_worse_than_zeros_is_replaced_by_zeros():
  """``init_check``: a start whose first marginal error is above the zeros start's is dropped,
  so the solve is the zeros solve (same iterations, same potentials); a good start is kept."""
  k = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(k[0], (120, 2))
  y = jax.random.normal(k[1], (90, 2)) + 1.0
  opts = dict(epsilon=0.05, tol=1e-4)
  zeros = neural_ot.sinkhorn(x, y, **opts)
  bad = 10.0 * jax.random.normal(k[2], (120,))  # a prediction for some other problem
  off = neural_ot.sinkhorn(x, y, init=(bad, None), init_check=False, **opts)
  on = neural_ot.sinkhorn(x, y, init=(bad, None), **opts)
  assert int(off.n_iters) > int(zeros.n_iters)  # the bad start costs iterations unchecked
  assert int(on.n_iters) == int(zeros.n_iters)
  np.testing.assert_array_equal(on.f, zeros.f)
  good = neural_ot.sinkhorn(x, y, init=(zeros.f, None), **opts)  # the solution: kept
  assert int(good.n_iters) <= 1
  with pytest.raises(ValueError, match="must be finite"):  # still refused, not replaced
    neural_ot.sinkhorn(x, y, init=(jnp.full((120,), jnp.nan), None), **opts)
  with pytest.raises(TypeError, match="init_check"):
    neural_ot.sinkhorn(x, y, init_check="yes", **opts)
