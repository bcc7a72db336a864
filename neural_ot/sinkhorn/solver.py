"""Log-domain Sinkhorn: balanced and unbalanced, epsilon scaling, warm starts,
implicit or unrolled differentiation, dense or online (tiled) costs.

One iteration costs two passes over the ``n x m`` kernel (one per marginal),
each a single fused ``exp``-sum: the potentials themselves are the
stabilising shift, which is safe because every update starts from a pair
``(f, g)`` in which one marginal is exact, so every kernel entry is bounded by
the inverse weights (no overflow) and row sums stay near one. The row sums of
the f-update *are* the row marginal of the current plan, so the L1 marginal
error is checked at every iteration for free.

References: Cuturi 2013; Peyre and Cuturi 2019, ch. 4; Schmitzer 2019 (log
domain, epsilon scaling); Sejourne et al. 2019 (unbalanced); Blondel et al.
2022 and ott-jax (implicit differentiation).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import warnings
import weakref
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jax.sharding import NamedSharding, PartitionSpec

from neural_ot import _validation, tracing
from neural_ot import sharding as sharding_lib
from neural_ot.geometry import costs as costs_lib
from neural_ot.geometry.pointcloud import PointCloud, tile_shape
from neural_ot.sharding import check_mesh_axis
from neural_ot.sinkhorn import adjoint as adjoint_lib
from neural_ot.sinkhorn import warm as warm_lib
from neural_ot.sinkhorn.adjoint import ImplicitDiff, Unrolled
from neural_ot.sinkhorn.output import SinkhornOutput, fold

__all__ = ["Sinkhorn", "SinkhornState", "dual_objective", "make_solver", "solve_points"]

_WARMUP = 20  # plain iterations before adaptive momentum kicks in (from any start)
_SPAN = 10  # iterations over which a convergence rate is measured
OMEGA_MAX = 1.8  # the cap at the switch, where the error may still be far from the fixed point
# Once the L1 error at the switch is at most _LOCAL_ERR, or has fallen _LOCAL_DROP-fold since
# it, the iteration is in its linear regime, where two-block SOR converges for any omega < 2
# (Young): omega may then rise to the rate's optimum up to OMEGA_LOCAL. A cap of 1.9 at the
# switch itself made a d = 2 point-cloud solve at eps = 1e-3 x mean cost blow up (error 1.1
# -> 1e9); 1.95 in the linear regime diverged on a heavy-tailed pair at 3e-3. Measured in
# benchmarks/RESULTS.md ("The over-relaxation's cap near the fixed point").
OMEGA_LOCAL = 1.9
_LOCAL_DROP = 0.1
_LOCAL_ERR = 0.1
_CHECK = 30  # after the switch, the error must halve every _CHECK iterations
_S_MIN = 1e-30
_S_MAX = 1e30
# Plain steps longer than this many eps are not over-relaxed (_relax). 10 cost 9 % more
# iterations on 36 Gaussian problems (d = 2, 8; eps 1e-3 to 1e-2 x the mean cost), where 30
# cost none and still kept the far-out warm starts finite (session 47).
_RELAX_STEPS = 30.0


def _relax(omega, step, eps):
  """Per-entry over-relaxation: ``omega`` where the plain step is at most ``_RELAX_STEPS * eps``,
  1 elsewhere. A row whose kernel sum under- or overflowed moves by the clip's bound
  (``69 eps``), not by its own error, and relaxing that step overshoots into overflow: from a
  warm start that left three far-out points at ``f = 0``, NaN after 44-615 iterations on 7 of 8
  heavy-tailed problems (benchmarks/RESULTS.md, session 47)."""
  return jnp.where(jnp.abs(step) <= _RELAX_STEPS * eps, omega, 1.0)


class SinkhornState(NamedTuple):
  """Loop state: iteration counter, potentials, last measured error, trace, the
  adaptive over-relaxation's ``omega``, the plain rate ``lam`` it was set for, two
  reference errors and the iteration at which it (re)starts (``warmup``),
  ``diverged``: invalid weights at :meth:`Sinkhorn.init`, or a non-finite error
  measured by :meth:`Sinkhorn.step` (the loop stops there), and ``err_switch``, the error
  at the last switch to over-relaxation (how far the solve has come since, which bounds
  ``omega``)."""

  it: jax.Array
  f: jax.Array
  g: jax.Array
  err: jax.Array
  done: jax.Array
  errors: jax.Array
  omega: jax.Array
  err_ref: jax.Array
  col_err: jax.Array
  lam: jax.Array
  err_span: jax.Array
  warmup: jax.Array
  diverged: jax.Array
  err_switch: jax.Array


def _input_invalid(geom, a, b, eps):
  """On-device check of what the host cannot see under ``jit`` (a bool scalar): negative,
  non-finite or massless weights, non-finite points (a point at infinity takes no mass and
  the error would stall, not blow up), a non-positive or non-finite epsilon."""
  def bad(w):
    return ~jnp.all(jnp.isfinite(w)) | jnp.any(w < 0) | ~(jnp.sum(w) > 0)
  points = ~jnp.all(jnp.isfinite(geom.x)) | ~jnp.all(jnp.isfinite(geom.y))
  return bad(a) | bad(b) | points | ~(jnp.isfinite(eps) & (eps > 0))


def _caller_level() -> int:
  """``stacklevel`` of the first frame outside this package (and dataclass ``__init__``)."""
  frame, level = sys._getframe(1), 1  # pylint: disable=protected-access
  while frame is not None and (frame.f_globals.get("__name__", "").startswith("neural_ot")
                               or frame.f_code.co_filename == "<string>"):
    frame, level = frame.f_back, level + 1
  return level


_SEEN_COSTS: dict = {}  # code object -> weak reference to the last function with it


def _as_cost(cost):
  """:func:`as_cost`, warning when a plain function arrives whose code was seen before in
  another function object (an inline ``lambda`` per call): the solver is a static ``jit``
  argument compared by identity, so every such call compiles again. Caching by code is not
  safe (a lambda may read a global or a mutable object that changed in between), so this
  only says so."""
  if isinstance(cost, types.FunctionType):
    code = cost.__code__
    last = _SEEN_COSTS.get(code)
    if last is not None and last() is not cost:
      warnings.warn(
          f"Sinkhorn: `cost` is a new function object {cost.__qualname__!r} with the same code "
          "as an earlier one, so the solve compiles again (a callable cost is compared by "
          "identity). Define the cost once and pass the same function to avoid recompiling.",
          stacklevel=_caller_level())
    if len(_SEEN_COSTS) > 1024:
      _SEEN_COSTS.clear()
    _SEEN_COSTS[code] = weakref.ref(cost)
  return costs_lib.as_cost(cost)


def _tau(rho, eps):
  return 1.0 if rho is None else rho / (rho + eps)


def dual_objective(geom: PointCloud, a, b, f, g, eps, rho_a=None, rho_b=None):
  """Entropic dual value ``D(f, g)`` (differentiable in everything).

  Balanced: ``<f, a> + <g, b> - eps (sum_ij P_ij - |a| |b|)``; unbalanced
  terms ``-rho <a, exp(-f / rho) - 1>`` replace ``<f, a>`` (and likewise for g).
  ``g=None`` (balanced only) takes ``g`` as the exact c-transform of ``f``
  (:meth:`Sinkhorn.c_transform`): every column of the plan then sums to ``b_j``, so the
  plan's mass is ``|b|`` in closed form (the semi-dual: one reduction instead of three).
  """
  if g is None:
    if rho_a is not None or rho_b is not None:
      raise ValueError("dual_objective: g=None (the c-transform of f) is balanced only.")
    g = Sinkhorn().c_transform(geom, a, f, eps)
    return jnp.sum(a * f) + jnp.sum(b * g) + eps * jnp.sum(b) * (jnp.sum(a) - 1.0)
  # mass = sum_ij a_i b_j exp((f_i + g_j - C_ij)/eps), with the weights folded into the
  # potentials: a zero-weight point's potential is unconstrained and its kernel entries can
  # overflow (inf * 0 = NaN); folded, they are exp(-inf) = 0. The folded log has no
  # derivative at a zero weight, so the exact one (a row or column sum over the points
  # that have mass, bounded) is added as a term whose value is zero.
  sg = jax.lax.stop_gradient
  u, v = fold(f, eps, a), fold(g, eps, b)
  mass = jnp.sum(geom.apply_plan(u, v, eps, jnp.ones(b.shape, b.dtype), axis=1))
  row = sg(geom.apply_plan(f, v, eps, jnp.ones(b.shape, b.dtype), axis=1))
  col = sg(geom.apply_plan(u, g, eps, jnp.ones(a.shape, a.dtype), axis=0))
  mass = mass + jnp.sum(jnp.where(a > 0, 0.0, (a - sg(a)) * row)) \
      + jnp.sum(jnp.where(b > 0, 0.0, (b - sg(b)) * col))
  fa = jnp.sum(a * f) if rho_a is None else -rho_a * jnp.sum(a * jnp.expm1(-f / rho_a))
  gb = jnp.sum(b * g) if rho_b is None else -rho_b * jnp.sum(b * jnp.expm1(-g / rho_b))
  return fa + gb - eps * (mass - jnp.sum(a) * jnp.sum(b))


@dataclasses.dataclass(frozen=True)
class Sinkhorn:
  """A configured entropic OT solver between two weighted point clouds.

  Solves ``min_P <P, C> + eps KL(P | a b^T)`` (balanced) or the KL-relaxed
  problem with marginal penalties ``rho_a KL(P 1 | a) + rho_b KL(P^T 1 | b)``.

  Args:
    tol: stop when the L1 marginal error is below this.
    max_iters: iteration cap (one iteration updates ``f`` then ``g``).
    rho_a, rho_b: KL marginal penalties; ``None`` keeps that marginal exact.
    relative_epsilon: if True, ``epsilon`` is multiplied by the weighted mean
      cost ``sum_ij a_i b_j C_ij`` (treated as a constant for gradients).
    epsilon_init_factor: epsilon scaling: start at this multiple of the
      target epsilon and decay geometrically by ``epsilon_decay`` per
      iteration down to the target (1.0 switches scaling off).
    epsilon_decay: per-iteration decay factor for epsilon scaling.
    momentum: over-relaxation ``omega`` in ``[1, 2)`` (1 is plain Sinkhorn),
      or ``"auto"``: plain for 20 iterations, then ``omega`` from the measured
      convergence rate, re-measured as it runs (same fixed point, far fewer iterations
      at small eps; a warm start is treated like zeros, so it keeps its head start).
      ``omega`` is capped at 1.8 while the solve may be far from its fixed point, and at
      1.9 once the L1 marginal error at the switch was at most 0.1 or has fallen tenfold
      since (SOR's linear regime, where a larger omega is safe).
    adjoint: how gradients are computed: :class:`ImplicitDiff` (custom root +
      conjugate gradient, memory independent of iterations; the default) or
      :class:`Unrolled` (backpropagate through all ``max_iters`` iterations). The
      deprecated ``implicit_diff``, ``cg_tol``, ``cg_maxiter`` and ``ridge`` options of
      the functional entry points still map onto it, with a ``DeprecationWarning``.
    cost: a :class:`~neural_ot.geometry.costs.Cost`, name or callable. The
      solver is a static argument of ``jit`` and a callable compares by
      identity: pass one function object (an inline ``lambda`` per call
      recompiles every call, with a warning).
    online: ``True`` recomputes cost tiles on the fly (memory ``O((n + m) d)``),
      ``False`` materialises ``C``, ``None`` picks online above 16.7M entries.
      Sharded solves (``mesh``, or inputs sharded along axis 0) are always
      online: ``online=False`` there raises ``ValueError``.
    tile_size: online block shape: ``(rows, cols)``, an int ``t`` (``t x t``) or None
      (``pointcloud.DEFAULT_TILE_SIZE``, measured on CPU; larger suits GPUs).
    record_errors: keep the per-iteration marginal errors in the output.
    mesh: a :class:`jax.sharding.Mesh`: split both clouds (and potentials) in
      equal blocks over its devices and solve online with ring reductions (no
      device holds more than its blocks; no ``n x m`` array anywhere). Point
      counts that do not divide are padded with zero-weight points (results are
      trimmed back). Inputs already placed with a ``NamedSharding`` along
      axis 0 select this mode by themselves.
    axis_name: the mesh axis to split along (default: the mesh's only axis).
    init_check: with a warm start (``init``), also build the zeros start and keep whichever
      has the smaller first marginal error (one c-transform and two error passes, about 1.5
      iterations of work, not counted in ``n_iters``): a warm start that is worse than zeros
      from the first iteration on (a Meta OT prediction for a problem unlike its training
      set) is replaced. A NaN or inf warm start still ends the solve as ``diverged``.
  """

  tol: float = 1e-3
  max_iters: int = 2000
  rho_a: float | None = None
  rho_b: float | None = None
  relative_epsilon: bool = False
  epsilon_init_factor: float = 1.0
  epsilon_decay: float = 0.8
  momentum: float | str = "auto"
  adjoint: ImplicitDiff | Unrolled = ImplicitDiff()
  cost: Any = None
  online: bool | None = None
  tile_size: Any = None
  record_errors: bool = False
  mesh: Any = None
  axis_name: str | None = None
  init_check: bool = True

  def __post_init__(self):
    _validation.check_config(self)
    tile_shape(self.tile_size)  # None, an int or a (rows, cols) pair; raises naming `tile_size`
    adjoint_lib.check_adjoint(self.adjoint)
    object.__setattr__(self, "cost", _as_cost(self.cost))
    if self.mesh is not None:
      object.__setattr__(self, "axis_name", check_mesh_axis(self.mesh, self.axis_name))
      if self.online is False:
        raise ValueError("Sinkhorn: the sharded solver (`mesh` given) is always online; "
                         "got online=False.")

  @property
  def balanced(self) -> bool:
    return self.rho_a is None and self.rho_b is None

  # --- pieces -------------------------------------------------------------

  def epsilon_at(self, it, eps):
    """Epsilon at iteration ``it`` of the scaling schedule."""
    if self.epsilon_init_factor == 1.0:
      return eps
    eps = jnp.asarray(eps)
    factor = self.epsilon_init_factor * self.epsilon_decay ** jnp.asarray(it).astype(eps.dtype)
    return eps * jnp.maximum(1.0, factor)

  def c_transform(self, geom: PointCloud, a, f, eps):
    """The exact ``g``-update (stable log-sum-exp): ``g_j = -eps log sum_i a_i exp((f_i -
    C_ij) / eps)``, times ``rho_b / (rho_b + eps)`` when unbalanced. Balanced, the plan of
    ``(f, g)`` then has the column marginal ``b`` exactly."""
    lse = geom.lse(fold(f, eps, a), jnp.zeros(geom.shape[1], f.dtype), eps, axis=0)
    return -_tau(self.rho_b, eps) * eps * lse

  def _f_stable(self, geom, b, g, eps):
    lse = geom.lse(jnp.zeros(geom.shape[0], g.dtype), fold(g, eps, b), eps, axis=1)
    return -_tau(self.rho_a, eps) * eps * lse

  def init(self, geom: PointCloud, a, b, eps, f0=None, g0=None) -> SinkhornState:
    """Initial state: ``g`` is the exact c-transform of ``f0`` (zeros by default).

    ``eps`` is the absolute target epsilon (a float or a scalar array). Weights are
    used as given (:meth:`solve` normalises balanced ones); negative, non-finite or
    massless weights, non-finite points or a non-positive epsilon start the state as
    ``diverged`` (no step changes it then).

    From zeros, the first iteration is done here in log-sum-exp form and counted (the state
    starts at iteration 1, its error recorded), unless that iteration's error already meets
    ``tol``. The loop's kernel sums are unstabilised, clipped to ``[1e-30, 1e30]``: a point
    far from the other cloud (``C_ij / eps`` in the thousands) would otherwise start at
    ``f_i = 0`` and climb ``69 eps`` per iteration, and over-relaxation then overshoots (NaN on
    6 of 36 Gaussian problems at d = 2 and 8, eps 1e-3 x the mean cost, and on 7 of 8 with
    three far-out points), or a few stuck rows add only ``1 / n`` each to the error and the
    solve stops "converged" with a wrong cost. Where no first kernel sum is clipped, the two
    starts give the same iterates.
    """
    n, m = geom.shape
    dtype = geom.x.dtype
    eps = jnp.asarray(eps, dtype)
    eps0 = self.epsilon_at(jnp.zeros((), jnp.int32), eps)
    it = jnp.zeros((), jnp.int32)
    errors = jnp.full((self.max_iters if self.record_errors else 0,), -1.0, dtype)
    invalid = _input_invalid(geom, a, b, eps)
    if f0 is None and g0 is None:
      f0 = jnp.zeros(n, dtype)
      g = self.c_transform(geom, a, f0, eps0)
      f1 = self._f_stable(geom, b, g, eps0)
      # the zeros start's row sums, from f1 = -tau eps log(s); its columns are exact
      s = jnp.exp(-f1 / (_tau(self.rho_a, eps0) * eps0))
      err0 = jnp.sum(jnp.where(a > 0, a * jnp.abs(s - 1.0), 0.0))
      step = ~self.is_converged(err0, eps0, eps) & ~invalid  # invalid input: no iteration
      f0 = jnp.where(step, f1, f0)
      g = jnp.where(step, self.c_transform(geom, a, f1, eps0), g)
      it = step.astype(jnp.int32)
      if self.record_errors:
        errors = errors.at[0].set(jnp.where(step, err0, -1.0))
    else:
      if f0 is None:
        f0 = self._f_stable(geom, b, g0, eps0)
      g = self.c_transform(geom, a, f0, eps0)
    return SinkhornState(it, f0.astype(dtype), g.astype(dtype),
                         jnp.array(jnp.inf, dtype), jnp.array(False), errors,
                         jnp.array(1.0 if self.momentum == "auto" else self.momentum, dtype),
                         jnp.array(jnp.inf, dtype), jnp.array(0.0, dtype),
                         jnp.array(0.0, dtype), jnp.array(jnp.inf, dtype),
                         jnp.array(_WARMUP, jnp.int32), invalid, jnp.array(jnp.inf, dtype))

  def step(self, geom: PointCloud, a, b, eps, state: SinkhornState) -> SinkhornState:
    """One iteration: measure the error of the current plan, then update ``f`` and ``g``.

    If the measured error is already below ``tol`` (at the target epsilon),
    the potentials are left unchanged, so the returned plan is the measured one.
    A non-finite error (NaN or inf inputs, or an overflow) sets ``diverged`` and
    likewise leaves the state unchanged: the driver stops at the first one.
    """
    (it, f, g, _, _, errors, omega, err_ref, col_err, lam, err_span, warmup, diverged,
     err_switch) = state
    eps = jnp.asarray(eps, f.dtype)
    eps_t = self.epsilon_at(it, eps)
    s, row_err = self.row_error(geom, a, b, f, g, eps_t)
    # Full L1 error of the current plan: rows now, columns from the last step.
    err = row_err + col_err
    diverged = diverged | ~jnp.isfinite(err)
    if self.momentum == "auto":
      omega, lam, err_ref, err_span, warmup, err_switch = self._adapt_omega(
          it, err, omega, lam, err_ref, err_span, warmup, eps_t, eps, err_switch)
    f_hat = _tau(self.rho_a, eps_t) * (f - eps_t * jnp.log(jnp.clip(s, _S_MIN, _S_MAX)))
    f_new = f + _relax(omega, f_hat - f, eps_t) * (f_hat - f)
    t = geom.kernel_sum(fold(f_new, eps_t, a), g, eps_t, axis=0)
    g_hat = _tau(self.rho_b, eps_t) * (g - eps_t * jnp.log(jnp.clip(t, _S_MIN, _S_MAX)))
    g_new = g + _relax(omega, g_hat - g, eps_t) * (g_hat - g)
    # Column ratio of the plan (f_new, g_new), exact and free: over-relaxation
    # leaves the columns slightly off, and that belongs in the next error.
    col_ratio = t * jnp.exp((g_new - g) / eps_t)
    col_target = 1.0 if self.rho_b is None else jnp.exp(-g_new / self.rho_b)
    col_err_new = jnp.sum(jnp.where(b > 0, b * jnp.abs(col_ratio - col_target), 0.0))
    done = self.is_converged(err, eps_t, eps) & ~diverged
    stop = done | diverged
    f = jnp.where(stop, f, f_new)
    g = jnp.where(stop, g, g_new)
    if self.record_errors:
      errors = errors.at[it].set(err)
    col_err = jnp.where(stop, col_err, col_err_new)
    return SinkhornState(it + jnp.where(stop, 0, 1), f, g, err, done, errors, omega, err_ref,
                         col_err, lam, err_span, warmup, diverged, err_switch)

  def row_error(self, geom: PointCloud, a, b, f, g, eps_t):
    """The row sums ``s_i = sum_j b_j exp((f_i + g_j - C_ij) / eps_t)`` (the plan's row
    marginal over ``a``) and the plan's L1 row-marginal error (against ``exp(-f / rho_a)``
    when unbalanced)."""
    s = geom.kernel_sum(f, fold(g, eps_t, b), eps_t, axis=1)
    target = 1.0 if self.rho_a is None else jnp.exp(-f / self.rho_a)
    return s, jnp.sum(jnp.where(a > 0, a * jnp.abs(s - target), 0.0))

  def _adapt_omega(self, it, err, omega, lam, err_ref, err_span, warmup, eps_t, eps,
                   err_switch=jnp.inf):
    """Adaptive over-relaxation (Thibault et al. 2017; Lehmann et al. 2021).

    Plain Sinkhorn runs until iteration ``warmup`` (``_WARMUP``, from zeros or a warm start
    alike); its linear rate ``lam`` is estimated from the errors ``_SPAN`` iterations apart,
    or ``_SPAN / 2`` apart where that rate is slower (plain Sinkhorn's decay slows towards
    its slowest mode's; from a warm start the whole span still holds the fast modes'
    transient: on 8 x 8 digits with a Meta OT start this took the share of pairs slower
    than zeros at 1e-4 from 8 % to 0), and ``omega`` is set to ``2 / (1 + sqrt(1 - lam))``
    (capped). From a warm start that
    estimate is often too optimistic (the early decay is a transient of the fast modes), and
    a too small omega costs more than the head start gained, so the rate keeps being
    measured: every ``2 _SPAN`` iterations the relaxed rate ``mu`` over the last ``_SPAN``
    (one span after the last change of omega) gives back the plain rate by Young's relation
    for two-block SOR, ``lam = (mu + omega - 1)^2 / (omega^2 mu)``, and omega rises to that
    rate's optimum (it never falls: past the optimum ``mu = omega - 1`` and the relation
    returns omega's own rate). Over-relaxation can raise the error for a while; every
    ``_CHECK`` iterations after the switch the error must have at least halved (the first
    time: from its peak after the switch). If not, the estimate is restarted: plain
    iterations for ``2 _SPAN`` (they also remove the relaxation's overshoot, often most of
    the measured error), then a fresh rate and switch. Dropping to plain Sinkhorn for good
    instead cost a warm start that reached the slow regime first hundreds of iterations.
    """
    err = jax.lax.stop_gradient(err)
    at_target = jnp.asarray(eps_t <= eps)
    since = it - warmup
    switch = (since == 0) & at_target
    check = (since > 0) & (since % _CHECK == 0)
    # the cap: OMEGA_MAX, or OMEGA_LOCAL where the error at the switch was at most
    # _LOCAL_ERR or has fallen _LOCAL_DROP-fold since (the linear regime)
    local = (jnp.where(switch, err, err_switch) <= _LOCAL_ERR) | (
        jnp.isfinite(err_switch) & (err <= _LOCAL_DROP * err_switch))
    cap = jnp.where(local, OMEGA_LOCAL, OMEGA_MAX)

    def optimum(lam):
      guess = 2.0 / (1.0 + jnp.sqrt(jnp.clip(1.0 - lam, 1e-6, 1.0)))
      return jnp.where((lam < 1.0) & jnp.isfinite(lam), jnp.clip(guess, 1.0, cap), 1.0)
    failed = check & ~(err <= 0.5 * err_ref)
    mark = (since > 0) & (since % _SPAN == 0)
    mu = (err / err_span) ** (1.0 / _SPAN)
    lam_mu = (mu + omega - 1.0) ** 2 / (omega ** 2 * mu)
    refine = (mark & (since % (2 * _SPAN) == 0) & at_target & (omega > 1.0) & ~failed
              & (mu > 0.0) & (lam_mu > lam) & (lam_mu < 1.0))
    lam = jnp.where(refine, lam_mu, lam)
    # The plain rate at the switch: over the last span, or over its last half where that is
    # slower (the local decay of plain Sinkhorn slows towards its slowest mode's rate; from a
    # warm start the fast modes' transient still shows in the whole span).
    lam_half = (err / err_span) ** (2.0 / _SPAN)
    lam_half = jnp.where((lam_half < 1.0) & jnp.isfinite(lam_half), lam_half, 0.0)
    lam = jnp.where(switch, jnp.maximum((err / err_ref) ** (1.0 / _SPAN), lam_half), lam)
    omega = jnp.where(refine | switch, jnp.maximum(jnp.where(switch, 1.0, omega), optimum(lam)),
                      omega)
    omega = jnp.where(failed, 1.0, omega)
    warmup = jnp.where(failed, it + 2 * _SPAN, warmup)
    err_ref = jnp.where((it == warmup - _SPAN) | ~at_target | switch | check, err, err_ref)
    # Over-relaxation first raises the error (a transient of a few iterations),
    # most visibly from a good warm start; the first check measures the halving
    # from that peak, not from the error at the switch.
    first_window = (since > 0) & (since < _CHECK)
    err_ref = jnp.where(first_window, jnp.maximum(err_ref, err), err_ref)
    err_span = jnp.where(mark | switch | ~at_target | (it == warmup - _SPAN // 2), err, err_span)
    err_switch = jnp.where(switch, err, jnp.where(failed | ~at_target, jnp.inf, err_switch))
    return omega, lam, err_ref, err_span, warmup, err_switch

  def is_converged(self, err, eps_t, eps):
    return (err < self.tol) & (eps_t <= eps)

  def _loop(self, geom, a, b, eps, state):
    def cond(st):
      return (st.it < self.max_iters) & ~st.done & ~st.diverged

    def body(st):
      return self.step(geom, a, b, eps, st)

    if isinstance(self.adjoint, ImplicitDiff):
      return jax.lax.while_loop(cond, body, state)

    def scan_body(st, _):
      return jax.lax.cond(cond(st), body, lambda s: s, st), None

    return jax.lax.scan(scan_body, state, None, length=self.max_iters)[0]

  # --- differentiable solve ----------------------------------------------

  def _residual(self, geom, a, b, eps, fg):
    """Gradient of the dual objective in (f, g): zero at the solution."""
    f, g = fg
    # Weights folded into the other side's potential (see dual_objective): no inf * 0.
    s = geom.apply_plan(f, fold(g, eps, b), eps, jnp.ones(b.shape, b.dtype), axis=1)
    t = geom.apply_plan(fold(f, eps, a), g, eps, jnp.ones(a.shape, a.dtype), axis=0)
    rf = a * ((1.0 if self.rho_a is None else jnp.exp(-f / self.rho_a)) - s)
    rg = b * ((1.0 if self.rho_b is None else jnp.exp(-g / self.rho_b)) - t)
    return rf, rg

  def _solve_potentials(self, geom, a, b, eps, f0, g0):
    """Returns ``((f, g), state)``, differentiable by the configured mode."""
    state0 = self.init(geom, a, b, eps, f0, g0)
    if self.init_check and (f0 is not None or g0 is not None):
      state0 = warm_lib.better_start(self, geom, a, b, eps, state0)
    if isinstance(self.adjoint, Unrolled):
      st = self._loop(geom, a, b, eps, state0)
      return (st.f, st.g), st
    sg = jax.lax.stop_gradient
    loop = lambda st: self._loop(sg(geom), sg(a), sg(b), sg(eps), st)
    residual = lambda fg: self._residual(geom, a, b, eps, fg)
    return adjoint_lib.implicit_solve(self.adjoint, loop, residual, state0, a, b, eps)

  def solve(self, geom: PointCloud, a, b, epsilon, init=None) -> SinkhornOutput:
    """Solve on a prepared geometry (traceable; no host-side input validation).

    What can be checked on device is: balanced weights are normalised to sum to one
    (a mass gap would be a floor on the marginal error), and negative, non-finite or
    massless weights, NaN/inf points, a non-positive epsilon, or a non-finite error
    during the loop (NaN/inf warm start, overflow) end the solve at once with
    ``diverged=True`` and NaN ``f``, ``g`` and ``reg_ot_cost``. Under ``jit`` nothing
    can raise: check ``diverged``. Not checkable there: whether a cost callable is
    sensible, or a mass gap of an unbalanced problem (it is part of the problem).
    """
    dtype = geom.x.dtype
    a = a.astype(dtype)
    b = b.astype(dtype)
    if self.balanced:
      a, b = _normalise(a), _normalise(b)
    eps = self.absolute_epsilon(geom, a, b, jnp.asarray(epsilon, dtype))
    f0, g0 = (None, None) if init is None else init
    (f, g), st = self._solve_potentials(geom, a, b, eps, f0, g0)
    cost = dual_objective(geom, a, b, f, g, eps, self.rho_a, self.rho_b)
    nan = jnp.array(jnp.nan, dtype)
    f, g, cost = (jnp.where(st.diverged, nan, v) for v in (f, g, cost))
    return SinkhornOutput(
        f=f, g=g, reg_ot_cost=cost, n_iters=st.it, converged=st.done & ~st.diverged,
        diverged=st.diverged, marginal_error=st.err,
        errors=st.errors if self.record_errors else None, geom=geom, a=a, b=b, epsilon=eps)

  def __call__(self, x, y, a=None, b=None, *, epsilon, init=None) -> SinkhornOutput:
    """Solve between ``x: (n, d)`` with weights ``a`` and ``y: (m, d)`` with ``b``.

    Args:
      x, y: point clouds ``(n, d)`` and ``(m, d)``.
      a, b: non-negative weights ``(n,)``, ``(m,)``; uniform when ``None``.
        Balanced problems need both to sum to one: totals within ``1e-4`` of one
        are normalised (a mass gap is a floor on the marginal error, so ``tol``
        below it could never be reached), larger gaps raise ``ValueError``.
        Under ``jit`` (traced weights) the host cannot look: weights are
        normalised on device, and negative, non-finite or massless ones give
        ``diverged=True`` with NaN potentials and cost.
      epsilon: entropic regularisation (> 0), absolute unless
        ``relative_epsilon`` is set.
      init: optional warm start ``(f, g)`` in this library's convention
        (unfolded potentials); ``g`` is recomputed as the exact c-transform of
        ``f`` when ``f`` is given.
    """
    solver = self.with_input_sharding(x)
    x, y, a, b, epsilon, init = _validation.check_problem(
        x, y, a, b, epsilon, init, balanced=self.balanced)
    return _jitted_solve(solver, x, y, a, b, epsilon, init)

  def absolute_epsilon(self, geom, a, b, epsilon):
    """``epsilon`` as the solve uses it: times the weighted mean cost of ``geom`` (no gradient
    through that scale) with ``relative_epsilon``, as given otherwise. The one place where a
    relative epsilon is resolved (the divergence resolves it once, on the x-y problem)."""
    if self.relative_epsilon:
      return epsilon * jax.lax.stop_gradient(geom.mean_cost(a, b))
    return epsilon

  def with_input_sharding(self, x) -> "Sinkhorn":
    """This solver, sharded like ``x`` if ``x`` is split along axis 0 by a NamedSharding."""
    if self.mesh is not None:
      return self
    found = sharding_lib.mesh_of(x)
    if found is None:
      return self
    if self.online is False:
      raise ValueError("Sinkhorn: `x` is sharded along axis 0 (a NamedSharding), which selects "
                       "the sharded solver, and that is always online; got online=False. "
                       "Pass online=None, or gather `x` and `y` onto one device first.")
    return dataclasses.replace(self, mesh=found[0], axis_name=found[1])

  def geometry(self, x, y, a, b):
    """``(geom, a, b, n_pad_x, n_pad_y)``: the (sharded and padded, if ``mesh``) problem."""
    if self.mesh is None:
      return PointCloud.create(x, y, self.cost, self.online, self.tile_size), a, b, 0, 0
    size = self.mesh.shape[self.axis_name]
    n, m = x.shape[0], y.shape[0]
    x, a = sharding_lib.pad_points(x, a, size)
    y, b = sharding_lib.pad_points(y, b, size)
    place = lambda z: jax.lax.with_sharding_constraint(
        z, NamedSharding(self.mesh, PartitionSpec(self.axis_name)))
    x, y, a, b = map(place, (x, y, a, b))
    geom = PointCloud.create(x, y, self.cost, True, self.tile_size, self.mesh, self.axis_name)
    return geom, a, b, x.shape[0] - n, y.shape[0] - m


def _normalise(w):
  """``w / sum(w)``; a non-positive total gives NaN (flagged as diverged by ``init``),
  never a sign flip that would turn negative weights into valid ones."""
  total = jnp.sum(w)
  return w / jnp.where(total > 0, total, jnp.nan)


def _pad_rows(v, k):
  return v if v is None or k == 0 else jnp.concatenate([v, jnp.zeros((k,), v.dtype)])


def solve_points(solver: Sinkhorn, x, y, a, b, epsilon, init=None) -> SinkhornOutput:
  """The one solve path after validation: pad (and shard, with a mesh) -> solve -> trim.

  Traceable. Every entry point (:func:`sinkhorn`, :func:`~neural_ot.sinkhorn_divergence`,
  :func:`~neural_ot.sinkhorn_batch`) solves through here, so outputs always have the
  caller's point counts: ``f: (n,)``, ``g: (m,)`` (the geometry keeps its padding, which
  the output's methods handle).
  """
  tracing.traced("sinkhorn")
  n, m = x.shape[0], y.shape[0]
  geom, a, b, px, py = solver.geometry(x, y, a, b)
  if init is not None and (px or py):
    init = (_pad_rows(init[0], px), _pad_rows(init[1], py))
  out = solver.solve(geom, a, b, epsilon, init)
  if px or py:
    out = out._replace(f=out.f[:n], g=out.g[:m], a=out.a[:n], b=out.b[:m])
  return out


_jitted_solve = jax.jit(solve_points, static_argnums=0)


def make_solver(caller: str, options: dict) -> Sinkhorn:
  """``Sinkhorn(**options)``; an unknown option name raises a ``TypeError`` that lists the
  valid ones (errors about an option's *value* pass through as raised)."""
  options = adjoint_lib.from_legacy(options, caller)
  known = [f.name for f in dataclasses.fields(Sinkhorn)]
  unknown = sorted(set(options) - set(known))
  if unknown:
    raise TypeError(f"{caller}: unknown option(s) {', '.join(map(repr, unknown))}; "
                    f"valid options are {', '.join(known)}.")
  return Sinkhorn(**options)
