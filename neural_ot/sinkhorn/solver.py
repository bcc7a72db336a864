"""Log-domain Sinkhorn: balanced and unbalanced, epsilon scaling, warm starts,
implicit or unrolled differentiation, dense or online (tiled) costs.

One iteration costs two passes over the ``n x m`` kernel (one per marginal),
each a single fused ``exp``-sum: the potentials themselves are the
stabilising shift, which is safe because every update starts from a pair
``(f, g)`` in which one marginal is exact, so every kernel entry is bounded by
the inverse weights (no overflow) and row sums stay near one. Underflow is the exception:
a point far from the other cloud has row sums below the clip from zeros, so the zeros start's
first iteration is done in log-sum-exp form (:meth:`Sinkhorn.init`); over-relaxation lives in
:mod:`neural_ot.sinkhorn.relax`. The row sums of
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
from neural_ot.sinkhorn import relax as relax_lib
from neural_ot.sinkhorn import warm as warm_lib
from neural_ot.sinkhorn.adjoint import ImplicitDiff, Unrolled
from neural_ot.sinkhorn.output import SinkhornOutput, fold

__all__ = ["Sinkhorn", "SinkhornState", "dual_objective", "make_solver", "solve_points"]

_S_MIN = 1e-30
_S_MAX = 1e30


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
      has the smaller first marginal error (the warm start's against zeros' before the first
      iteration that :meth:`init` does for them; the zeros start's log-sum-exp passes and one
      error pass, not counted in ``n_iters``): a warm start that is worse than zeros from the
      first iteration on (a Meta OT prediction for a problem unlike its training set) is
      replaced.
      A NaN or inf warm start still ends the solve as ``diverged``.
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
    starts at iteration 1, its error recorded and kept as ``err``), unless that iteration's
    error already meets ``tol``. The loop's kernel sums are unstabilised, clipped to
    ``[1e-30, 1e30]``: a point far from the other cloud (``C_ij / eps`` in the thousands)
    would otherwise start at ``f_i = 0`` and climb ``69 eps`` per iteration, and over-relaxation
    then overshoots (NaN on 6 of 36 Gaussian problems at d = 2 and 8, eps 1e-3 x the mean cost,
    and on 7 of 8 with three far-out points), or a few stuck rows add only ``1 / n`` each to the
    error and the solve stops "converged" with a wrong cost. Where no first kernel sum is
    clipped, the two starts give the same iterates.
    """
    n, m = geom.shape
    dtype = geom.x.dtype
    eps = jnp.asarray(eps, dtype)
    eps0 = self.epsilon_at(jnp.zeros((), jnp.int32), eps)
    it = jnp.zeros((), jnp.int32)
    errors = jnp.full((self.max_iters if self.record_errors else 0,), -1.0, dtype)
    invalid = _input_invalid(geom, a, b, eps)
    err = jnp.array(jnp.inf, dtype)  # the last measured error: none yet from a warm start
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
      err = jnp.where(invalid, err, err0.astype(dtype))  # zeros' error at iteration 0
      if self.record_errors:
        errors = errors.at[0].set(jnp.where(step, err0, -1.0))
    else:
      if f0 is None:
        f0 = self._f_stable(geom, b, g0, eps0)
      g = self.c_transform(geom, a, f0, eps0)
    return SinkhornState(it, f0.astype(dtype), g.astype(dtype), err, jnp.array(False), errors,
                         jnp.array(1.0 if self.momentum == "auto" else self.momentum, dtype),
                         jnp.array(jnp.inf, dtype), jnp.array(0.0, dtype),
                         jnp.array(0.0, dtype), jnp.array(jnp.inf, dtype),
                         jnp.array(relax_lib.WARMUP, jnp.int32), invalid,
                         jnp.array(jnp.inf, dtype))

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
      omega, lam, err_ref, err_span, warmup, err_switch = relax_lib.adapt_omega(
          it, err, omega, lam, err_ref, err_span, warmup, eps_t, eps, err_switch)
    f_hat = _tau(self.rho_a, eps_t) * (f - eps_t * jnp.log(jnp.clip(s, _S_MIN, _S_MAX)))
    f_new = f + relax_lib.relax(omega, f_hat - f, eps_t) * (f_hat - f)
    t = geom.kernel_sum(fold(f_new, eps_t, a), g, eps_t, axis=0)
    g_hat = _tau(self.rho_b, eps_t) * (g - eps_t * jnp.log(jnp.clip(t, _S_MIN, _S_MAX)))
    g_new = g + relax_lib.relax(omega, g_hat - g, eps_t) * (g_hat - g)
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
