"""Batched convex-conjugate solvers: ``f*(y) = max_x <x, y> - f(x)``.

The rows of ``y`` are independent smooth problems ``min_x h(x) = f(x) - <x, y>``.
The solvers work on the whole batch at once (one batched evaluation of
``f`` and ``grad f`` per trial step, per-sample step sizes, histories and
stopping), which on CPU is 30-100x faster than ``vmap`` over a per-sample
optimizer with a line search. Gradients of ``f*`` with respect to the
parameters of ``f`` follow Danskin's theorem: differentiate
``<x*, y> - f(stop_gradient(x*))`` (:func:`conjugate`).

L-BFGS: two-loop recursion over the last ``history`` pairs, backtracking
from the unit step (halving) until Armijo or approximate Wolfe holds,
curvature pairs kept when
``s.y > 0``; a sample whose line search cannot decrease ``h`` (round-off
floor) stops. Adam: optax's (element-wise, so batching is exact).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["ConjugateResult", "ConjugateSolver", "ConjugateState", "OWLQNSolver", "ProxGradSolver",
           "conjugate"]


class ConjugateResult(NamedTuple):
  """Per-sample result: ``value = <x, y> - f(x)``, ``x`` the argmax,
  ``n_iters`` and ``grad_norm = |y - grad f(x)|``."""

  value: jax.Array
  x: jax.Array
  n_iters: jax.Array
  grad_norm: jax.Array


class ConjugateState(NamedTuple):
  """Solver state for a batch ``(b, d)``: iterate, ``h``, ``grad h``, history, counters."""

  x: jax.Array
  h: jax.Array
  grad: jax.Array
  s_hist: jax.Array  # (b, m, d), newest first
  y_hist: jax.Array  # (b, m, d)
  rho: jax.Array  # (b, m), 0 marks an empty slot
  n_iters: jax.Array  # (b,)
  done: jax.Array  # (b,) bool
  opt_state: optax.OptState  # Adam only


def _objective(f: Callable, y: jax.Array, context=None, extra: Callable | None = None
               ) -> Callable:
  """``h(x) = f(x) - <x, y>`` (``+ extra(x - y)``) and its gradient, row by row (``f(x, c)``
  with each row's context when ``context`` is given)."""
  def h(x):
    if context is None:
      val, grad = jax.vmap(jax.value_and_grad(f))(x)
    else:
      val, grad = jax.vmap(jax.value_and_grad(f))(x, context)
    val, grad = val - jnp.sum(x * y, -1), grad - y
    if extra is not None:
      ev, eg = jax.vmap(jax.value_and_grad(extra))(x - y)
      val, grad = val + ev, grad + eg
    return val, grad
  return h


def _bdot(a, b):
  return jnp.sum(a * b, -1)


# The solvers' default ``retry_divisor``: a line-search retry evaluates at most
# ceil(batch / 8) rows per round (2x faster fit_w2 steps on lse-box at D = 64, 1.1-1.4x at
# D = 128). A batch split over devices takes 1 (whole-batch retries, no gathers: on a sharded
# batch a gather is a collective; the two-process test ran past its 900 s limit with 8).
RETRY_DIVISOR = 8


def _inputs(who: str, y, x0, context):
  """Checked ``y: (batch, d)`` and warm start ``x0`` (default ``y``), gradients stopped."""
  if y.ndim != 2:
    raise ValueError(f"{who}: `y` must have shape (batch, d), got {tuple(y.shape)}.")
  x0 = y if x0 is None else x0
  if x0.shape != y.shape:
    raise ValueError(f"{who}: `x0` must have shape {tuple(y.shape)}, got {tuple(x0.shape)}.")
  sg = jax.lax.stop_gradient
  return sg(y), sg(x0), jax.tree.map(sg, context)


def _rows(mask, new, old):
  """``new`` where the row's ``mask`` is set, else ``old`` (any trailing shape)."""
  return jnp.where(mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)


def _backtrack(trial: Callable, start: tuple, done: jax.Array, t0: jax.Array, max_halvings: int,
               divisor: int = RETRY_DIVISOR):
  """Per-row backtracking shared by the solvers: each row not ``done`` tries steps ``t0,
  t0 / 2, ...`` (at most ``max_halvings`` trials) until ``trial`` accepts one. Returns the
  accepted values (``start`` for rows never accepted), whether each row accepted (``done``
  rows count as accepted) and at which step.

  ``trial(t, take) -> (ok, values)`` evaluates the rows that ``take`` (a function gathering a
  per-row array) picks, at their steps ``t``. With ``divisor`` = 1 every trial is the whole
  batch, rows that accepted keeping their values. With a divisor ``q > 1`` (default
  :data:`RETRY_DIVISOR`) the first trial is the whole batch and a retry evaluates only the
  rows still searching, at most ``ceil(b / q)`` per round (rows are independent: in float64
  the iterates equal the whole-batch ones, tested). Measured in ``fit_w2`` at D = 64, a step's
  10 L-BFGS iterations needed 15 whole-batch trials where the unit step was rejected on a few
  rows only (``q = 8``: 2x faster steps on lse-box)."""
  if divisor <= 1:  # whole-batch retries: no gathers (no collectives on a sharded batch)
    def whole(c):
      k, t, vals, accepted, t_acc = c
      ok, tried = trial(t, lambda a: a)
      ok = ok & ~accepted
      vals = jax.tree.map(lambda new, old: _rows(ok, new, old), tried, vals)
      t_acc = jnp.where(ok, t, t_acc)
      accepted = accepted | ok
      return k + 1, jnp.where(accepted, t, 0.5 * t), vals, accepted, t_acc

    cond = lambda c: (c[0] < max_halvings) & jnp.any(~c[3])
    _, _, vals, accepted, t_acc = jax.lax.while_loop(cond, whole, (0, t0, start, done, t0))
    return vals, accepted, t_acc
  b = t0.shape[0]
  ok, tried = trial(t0, lambda a: a)
  ok = ok & ~done
  vals = jax.tree.map(lambda new, old: _rows(ok, new, old), tried, start)
  accepted = done | ok
  t = jnp.where(accepted, t0, 0.5 * t0)
  tries = jnp.ones((b,), jnp.int32)
  k = -(-b // divisor)

  def body(c):
    t, vals, accepted, t_acc, tries = c
    rows = jnp.nonzero(~accepted & (tries < max_halvings), size=k, fill_value=b)[0]
    take = lambda a: jnp.take(a, rows, axis=0, mode="clip")
    t_rows = take(t)
    ok, tried = trial(t_rows, take)
    ok = ok & (rows < b)
    put = lambda full, new: full.at[rows].set(_rows(ok, new, take(full)), mode="drop")
    vals = jax.tree.map(put, vals, tried)
    return (t.at[rows].set(jnp.where(ok, t_rows, 0.5 * t_rows), mode="drop"), vals,
            accepted.at[rows].set(ok, mode="drop"), put(t_acc, t_rows),
            tries.at[rows].add(1, mode="drop"))

  cond = lambda c: jnp.any(~c[2] & (c[4] < max_halvings))
  _, vals, accepted, t_acc, _ = jax.lax.while_loop(cond, body, (t, vals, accepted, t0, tries))
  return vals, accepted, t_acc


def _push_pair(state: "ConjugateState", x_new, h_new, g_new, moved, done) -> "ConjugateState":
  """The state at the accepted iterate, with the L-BFGS pair ``(s, y)`` pushed to the front
  of the history where it has positive curvature (rows that ``moved``)."""
  s = x_new - state.x
  yv = g_new - state.grad
  sy = _bdot(s, yv)
  keep = moved & (sy > 1e-10 * jnp.sqrt(_bdot(s, s) * _bdot(yv, yv)))
  push = lambda hist, new: _rows(keep, jnp.concatenate([new[:, None], hist[:, :-1]], 1), hist)
  return state._replace(
      x=x_new, h=h_new, grad=g_new, s_hist=push(state.s_hist, s), y_hist=push(state.y_hist, yv),
      rho=push(state.rho, 1.0 / jnp.where(keep, sy, 1.0)), n_iters=state.n_iters + ~state.done,
      done=done)


def _check_fields(solver) -> None:
  """The numeric fields the solvers share, each checked by name (a bad value is a clear
  ``ValueError`` at construction, not a division by zero or an empty loop inside a trace)."""
  who = type(solver).__name__
  real = lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
  if not (real(solver.tol) and solver.tol > 0):
    raise ValueError(f"{who}: `tol` must be a number > 0, got {solver.tol!r}.")
  for name, least in (("max_iters", 0), ("history", 1), ("max_linesearch", 0),
                      ("retry_divisor", 1)):
    val = getattr(solver, name, least)
    if not (isinstance(val, (int, np.integer)) and not isinstance(val, bool) and val >= least):
      raise ValueError(f"{who}: `{name}` must be an int >= {least}, got {val!r}.")
  l1 = getattr(solver, "l1", 0.0)
  if not (real(l1) and l1 >= 0):
    raise ValueError(f"{who}: `l1` must be a number >= 0, got {l1!r}.")


@dataclasses.dataclass(frozen=True)
class ConjugateSolver:
  """Maximise ``<x, y> - f(x)`` for each row of ``y``.

  Attributes:
    method: ``"lbfgs"`` (with Armijo backtracking) or ``"adam"``.
    tol: stop a sample when ``|y - grad f(x)| < tol``.
    max_iters: iteration cap per sample.
    learning_rate: Adam step size (ignored by L-BFGS).
    history: L-BFGS memory.
    max_linesearch: halvings tried per L-BFGS step.
    retry_divisor: a line-search retry evaluates at most ``ceil(batch / retry_divisor)`` of
      the rows still searching per round (1: the whole batch each time; use 1 for a batch
      split over devices, where gathering rows is a collective).

  Example:
    >>> import jax.numpy as jnp
    >>> f = lambda x: 0.5 * jnp.sum(x ** 2) * 2.0  # f* (y) = |y|^2 / 4, argmax y / 2
    >>> res = ConjugateSolver(tol=1e-6)(f, jnp.array([[1.0, -2.0]]))
    >>> [round(float(v), 4) for v in res.x[0]], round(float(res.value[0]), 4)
    ([0.5, -1.0], 1.25)
  """

  method: str = "lbfgs"
  tol: float = 1e-5
  max_iters: int = 100
  learning_rate: float = 0.05
  history: int = 8
  max_linesearch: int = 20
  retry_divisor: int = RETRY_DIVISOR

  def __post_init__(self):
    if self.method not in ("lbfgs", "adam"):
      raise ValueError(f"ConjugateSolver: `method` must be 'lbfgs' or 'adam', got {self.method!r}.")
    _check_fields(self)

  def init(self, f: Callable, y: jax.Array, x0: jax.Array, context=None,
           extra: Callable | None = None) -> ConjugateState:
    """State at the warm start ``x0: (b, d)`` for targets ``y: (b, d)``."""
    h, grad = _objective(f, y, context, extra)(x0)
    b, d = x0.shape
    m = self.history
    done = jnp.linalg.norm(grad, axis=-1) < self.tol
    opt_state = optax.adam(self.learning_rate).init(x0) if self.method == "adam" else ()
    return ConjugateState(x0, h, grad, jnp.zeros((b, m, d), x0.dtype), jnp.zeros((b, m, d), x0.dtype),
                          jnp.zeros((b, m), x0.dtype), jnp.zeros((b,), jnp.int32), done, opt_state)

  def _direction(self, state: ConjugateState) -> jax.Array:
    """L-BFGS two-loop recursion ``-H grad`` (batched; empty slots have ``rho = 0``)."""
    q = state.grad
    alphas = []
    for i in range(self.history):  # newest to oldest
      a = state.rho[:, i] * _bdot(state.s_hist[:, i], q)
      q = q - a[:, None] * state.y_hist[:, i]
      alphas.append(a)
    s0, y0 = state.s_hist[:, 0], state.y_hist[:, 0]
    yy = _bdot(y0, y0)
    gamma = jnp.where(state.rho[:, 0] > 0, _bdot(s0, y0) / jnp.where(yy > 0, yy, 1.0), 1.0)
    r = gamma[:, None] * q
    for i in reversed(range(self.history)):
      beta = state.rho[:, i] * _bdot(state.y_hist[:, i], r)
      r = r + (alphas[i] - beta)[:, None] * state.s_hist[:, i]
    p = -r
    descent = _bdot(p, state.grad) < 0
    return jnp.where(descent[:, None], p, -state.grad)

  def step(self, f: Callable, y: jax.Array, state: ConjugateState, context=None,
           extra: Callable | None = None) -> ConjugateState:
    """One iteration for every sample not yet done."""
    active = ~state.done
    if self.method == "adam":
      obj = _objective(f, y, context, extra)
      upd, opt_state = optax.adam(self.learning_rate).update(state.grad, state.opt_state)
      x_new = jnp.where(active[:, None], state.x + upd, state.x)
      h_new, g_new = obj(x_new)
      gn = jnp.linalg.norm(g_new, axis=-1)
      return state._replace(x=x_new, h=h_new, grad=g_new, opt_state=opt_state,
                            n_iters=state.n_iters + active, done=state.done | (gn < self.tol))

    p = self._direction(state)
    slope = _bdot(p, state.grad)

    def trial(t, take):
      h0, p_r, slope_r = take(state.h), take(p), take(slope)
      x_try = take(state.x) + t[:, None] * p_r
      h_try, g_try = _objective(f, take(y), jax.tree.map(take, context), extra)(x_try)
      armijo = h_try <= h0 + 1e-4 * t * slope_r
      # Approximate Wolfe (Hager and Zhang 2005): near the optimum, values stop
      # resolving decreases in float32, the directional derivative still does.
      eps_h = 1e-6 * jnp.abs(h0) + 1e-12
      approx = (h_try <= h0 + eps_h) & (jnp.abs(_bdot(g_try, p_r)) <= 0.9 * jnp.abs(slope_r))
      return jnp.isfinite(h_try) & (armijo | approx), (x_try, h_try, g_try)

    (x_new, h_new, g_new), accepted, _ = _backtrack(
        trial, (state.x, state.h, state.grad), state.done, jnp.ones_like(state.h),
        self.max_linesearch, self.retry_divisor)
    gn = jnp.linalg.norm(g_new, axis=-1)
    return _push_pair(state, x_new, h_new, g_new, active & accepted,
                      state.done | (gn < self.tol) | (active & ~accepted))

  def __call__(self, f: Callable, y: jax.Array, x0: jax.Array | None = None,
               context=None, extra: Callable | None = None) -> ConjugateResult:
    """Batched solve: ``y: (batch, d)``, warm start ``x0: (batch, d)`` (default ``y``).

    ``f`` maps one point ``(d,)`` to a scalar; with ``context`` (an array or pytree with a
    leading ``batch`` axis) it is ``f(x, c)`` and row ``i`` maximises
    ``<x, y_i> - f(x, c_i)`` (conditional potentials: one batched solve, each sample with its
    own context). ``extra(z)`` (smooth, one displacement ``z = x - y`` to a scalar) adds a
    term: row ``i`` maximises ``<x, y_i> - f(x) - extra(x - y_i)`` (the c-transform of a
    translation-invariant cost, :class:`neural_ot.TICost`). No gradient flows through the
    solve (use :func:`conjugate` for Danskin gradients).
    """
    y, x0, context = _inputs("ConjugateSolver", y, x0, context)
    state = self.init(f, y, x0, context, extra)
    cond = lambda st: jnp.any(~st.done & (st.n_iters < self.max_iters))
    state = jax.lax.while_loop(
        cond, lambda st: self.step(f, y, st._replace(done=st.done | (st.n_iters >= self.max_iters)),
                                   context, extra),
        state)
    return ConjugateResult(-state.h, state.x, state.n_iters, jnp.linalg.norm(state.grad, axis=-1))


def conjugate(f: Callable, y: jax.Array, x_star: jax.Array) -> jax.Array:
  """Differentiable ``f*(y)`` at a given argmax (Danskin): ``<x*, y> - f(x*)``
  with ``x*`` held constant, shape ``(batch,)``."""
  x_star = jax.lax.stop_gradient(x_star)
  return jnp.sum(x_star * y, -1) - jax.vmap(f)(x_star)


def _soft(v, t):
  return jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0.0)


@dataclasses.dataclass(frozen=True)
class ProxGradSolver:
  """Maximise ``<x, y> - f(x) - extra(x - y) - l1 |x - y|_1`` for each row of ``y``: batched
  proximal gradient with per-sample backtracking (Beck and Teboulle 2009, without momentum),
  for costs with an ``l1`` term (:class:`neural_ot.ElasticL1`), where L-BFGS would stall at
  the kinks. The prox of ``t l1 |x - y|_1`` is ``y + soft(x - y, t l1)``.

  A sample stops when its gradient mapping ``|x - prox(x - t grad)| / t`` is below ``tol``
  (reported as ``grad_norm``). Each sample's step starts at 1.5x its last accepted one.

  Example:
    >>> import jax.numpy as jnp
    >>> f = lambda x: jnp.sum(x ** 2)  # without l1 the argmax is y / 2; l1 pulls it to y
    >>> res = ProxGradSolver(l1=0.5, tol=1e-6)(f, jnp.array([[2.0, 0.2]]))
    >>> [round(float(v), 4) for v in res.x[0]], round(float(res.value[0]), 4)
    ([1.25, 0.2], 0.5625)
  """

  l1: float = 0.0
  tol: float = 1e-5
  max_iters: int = 100
  max_linesearch: int = 20
  retry_divisor: int = RETRY_DIVISOR

  def __post_init__(self):
    _check_fields(self)

  def __call__(self, f: Callable, y: jax.Array, x0: jax.Array | None = None, context=None,
               extra: Callable | None = None) -> ConjugateResult:
    y, x0, context = _inputs("ProxGradSolver", y, x0, context)
    smooth = _objective(f, y, context, extra)
    l1 = jnp.asarray(self.l1, y.dtype)
    nonsmooth = lambda x: l1 * jnp.sum(jnp.abs(x - y), -1)

    def body(c):
      x, val, grad, t, n, done, gm = c
      active = ~done

      def trial(tt, take):
        x_r, y_r, g_r, val_r = take(x), take(y), take(grad), take(val)
        x_try = y_r + _soft(x_r - tt[:, None] * g_r - y_r, tt[:, None] * l1)
        v_try, g_try = _objective(f, y_r, jax.tree.map(take, context), extra)(x_try)
        dx = x_try - x_r
        ok = jnp.isfinite(v_try) & (
            v_try <= val_r + _bdot(g_r, dx) + 0.5 * _bdot(dx, dx) / tt + 1e-7 * jnp.abs(val_r))
        return ok, (x_try, v_try, g_try)

      (x_new, v_new, g_new), accepted, t_new = _backtrack(
          trial, (x, val, grad), done, t, self.max_linesearch, self.retry_divisor)
      moved = active & accepted
      gm_new = jnp.linalg.norm(x_new - x, axis=-1) / t_new
      gm = jnp.where(moved, gm_new, gm)
      done = done | (moved & (gm_new < self.tol)) | (active & ~accepted)
      return (x_new, v_new, g_new, jnp.where(moved, 1.5 * t_new, t), n + active, done, gm)

    val, grad = smooth(x0)
    b = y.shape[0]
    init = (x0, val, grad, jnp.ones((b,), y.dtype), jnp.zeros((b,), jnp.int32),
            jnp.zeros((b,), bool), jnp.full((b,), jnp.inf, y.dtype))
    cond = lambda c: jnp.any(~c[5] & (c[4] < self.max_iters))
    stop_at_cap = lambda c: body(c[:5] + (c[5] | (c[4] >= self.max_iters),) + c[6:])
    x, val, _, _, n, _, gm = jax.lax.while_loop(cond, stop_at_cap, init)
    return ConjugateResult(-(val + nonsmooth(x)), x, n, gm)


def _pseudo_grad(grad, u, l1):
  """The minimum-norm subgradient of ``s + l1 |u|_1`` (OWL-QN's pseudo-gradient)."""
  right, left = grad + l1, grad - l1
  at_zero = jnp.where(right < 0, right, jnp.where(left > 0, left, 0.0))
  return jnp.where(u != 0, grad + l1 * jnp.sign(u), at_zero)


@dataclasses.dataclass(frozen=True)
class OWLQNSolver:
  """Maximise ``<x, y> - f(x) - extra(x - y) - l1 |x - y|_1`` for each row of ``y``: batched
  orthant-wise L-BFGS (Andrew and Gao 2007). L-BFGS on the smooth part, with the direction
  and the line search kept in the orthant of ``x - y`` that the pseudo-gradient points to, so
  coordinates land exactly on ``x_i = y_i`` (the kinks of the ``l1`` term). Converges like
  L-BFGS where :class:`ProxGradSolver` needs many more evaluations (measured on a quadratic
  with condition number 10, D = 8, ``l1 = 0.3``: 20.6 proximal-gradient iterations to
  ``|pseudo-gradient| < 1e-3``).

  ``grad_norm`` is the norm of the pseudo-gradient (0 at the optimum).

  Example:
    >>> import jax.numpy as jnp
    >>> f = lambda x: jnp.sum(x ** 2)  # without l1 the argmax is y / 2; l1 pulls it to y
    >>> res = OWLQNSolver(l1=0.5, tol=1e-6)(f, jnp.array([[2.0, 0.2]]))
    >>> [round(float(v), 4) for v in res.x[0]], round(float(res.value[0]), 4)
    ([1.25, 0.2], 0.5625)
  """

  l1: float = 0.0
  tol: float = 1e-5
  max_iters: int = 100
  history: int = 8
  max_linesearch: int = 20
  retry_divisor: int = RETRY_DIVISOR

  def __post_init__(self):
    _check_fields(self)

  def __call__(self, f: Callable, y: jax.Array, x0: jax.Array | None = None, context=None,
               extra: Callable | None = None) -> ConjugateResult:
    y, x0, context = _inputs("OWLQNSolver", y, x0, context)
    l1 = jnp.asarray(self.l1, y.dtype)
    total = lambda x, v: v + l1 * jnp.sum(jnp.abs(x - y), -1)
    lbfgs = ConjugateSolver(history=self.history)  # its two-loop recursion

    def body(st):
      state, fval = st
      active = ~state.done
      u = state.x - y
      pg = _pseudo_grad(state.grad, u, l1)
      p = lbfgs._direction(state._replace(grad=pg))
      p = jnp.where(p * pg < 0, p, 0.0)  # keep the components that descend
      orthant = jnp.where(u != 0, jnp.sign(u), -jnp.sign(pg))
      slope = _bdot(p, pg)

      def trial(t, take):
        y_r, fval_r = take(y), take(fval)
        u_try = take(u) + t[:, None] * take(p)
        u_try = jnp.where(jnp.sign(u_try) == take(orthant), u_try, 0.0)
        x_try = y_r + u_try
        v_try, g_try = _objective(f, y_r, jax.tree.map(take, context), extra)(x_try)
        f_try = v_try + l1 * jnp.sum(jnp.abs(x_try - y_r), -1)
        ok = jnp.isfinite(f_try) & (f_try <= fval_r + 1e-4 * _bdot(take(pg), x_try - take(state.x))
                                    + 1e-7 * jnp.abs(fval_r))
        return ok, (x_try, v_try, g_try, f_try)

      (x_new, v_new, g_new, f_new), accepted, _ = _backtrack(
          trial, (state.x, state.h, state.grad, fval), state.done | (slope >= 0),
          jnp.ones_like(fval), self.max_linesearch, self.retry_divisor)
      moved = active & accepted & (slope < 0)
      gn = jnp.linalg.norm(_pseudo_grad(g_new, x_new - y, l1), axis=-1)
      state = _push_pair(state, x_new, v_new, g_new, moved,
                         state.done | (gn < self.tol) | (active & ~moved))
      return state, f_new

    state = lbfgs.init(f, y, x0, context, extra)
    pg0 = jnp.linalg.norm(_pseudo_grad(state.grad, x0 - y, l1), axis=-1)
    state = state._replace(done=pg0 < self.tol)
    cond = lambda st: jnp.any(~st[0].done & (st[0].n_iters < self.max_iters))
    stop_at_cap = lambda st: body((st[0]._replace(
        done=st[0].done | (st[0].n_iters >= self.max_iters)), st[1]))
    state, fval = jax.lax.while_loop(cond, stop_at_cap, (state, total(x0, state.h)))
    gn = jnp.linalg.norm(_pseudo_grad(state.grad, state.x - y, l1), axis=-1)
    return ConjugateResult(-fval, state.x, state.n_iters, gn)
