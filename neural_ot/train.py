"""One host loop for every trainer: batching, guard, checkpoints, resume, progress, budgets.

A trainer is a hashable (frozen dataclass) object with

* ``init_state(key, ...) -> TrainState`` (parameters, optimizer state, ``step``, ``horizon``),
* ``step(state, batch) -> (state, metrics)``: one jit-able optimizer step; the learning-rate
  schedule reads ``state.horizon`` (the planned number of steps, a traced value, so a time
  budget can move it without recompiling).

A sampler is a hashable callable ``sampler(key, data) -> batch`` (``data``: a pytree of
arrays, e.g. the training sets). :func:`run` draws the batch of step ``s`` from
``fold_in(key, s)`` (a resumed run sees the batches an uninterrupted one would), takes the
step inside one compiled function together with the divergence guard, and fetches metrics
from the device only every ``log_every`` steps: between fetches nothing waits for the device.
The guard still sees every step: a non-finite metric or a parameter norm above
``max_param_norm`` freezes the state on the device at the last good step, and the next fetch
raises :class:`TrainingDivergedError` with that state saved.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from jax.sharding import NamedSharding, PartitionSpec

from neural_ot import _validation, io, tracing
from neural_ot.sharding import check_mesh_axis

__all__ = ["TrainState", "Trainer", "TrainingDivergedError", "FitOptions", "run", "run_fit",
           "guarded_step", "cosine_schedule",
           "data_fingerprint", "data_parallel"]


class TrainingDivergedError(RuntimeError):
  """Raised when the loss stops being finite or the parameters explode."""


class TrainState(NamedTuple):
  """Everything a run needs to continue: parameters, optimizer state, step, planned steps."""

  params: Any
  opt_state: Any
  step: jax.Array
  horizon: jax.Array  # float32: planned number of steps (the schedule's length)


class Trainer(Protocol):
  """What :func:`run` drives (see the module docstring)."""

  def step(self, state: TrainState, batch: Any) -> tuple[TrainState, dict]:
    ...


def cosine_schedule(step, horizon, peak: float, warmup: int, final: float = 0.05):
  """Linear warm-up over ``min(warmup, horizon / 10)`` steps, then cosine decay from ``peak``
  to ``final * peak`` at ``horizon``; ``step`` and ``horizon`` may be traced."""
  step = jnp.asarray(step, jnp.float32)
  horizon = jnp.maximum(jnp.asarray(horizon, jnp.float32), 1.0)
  warm = jnp.maximum(jnp.minimum(float(warmup), horizon / 10.0), 1.0)
  frac = jnp.clip((step - warm) / jnp.maximum(horizon - warm, 1.0), 0.0, 1.0)
  cos = final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
  return peak * jnp.where(step < warm, (step + 1.0) / warm, cos)


def _param_norm(params):
  return jnp.sqrt(sum(jnp.sum(jnp.square(v.astype(jnp.float32))) for v in jax.tree.leaves(params)))


@functools.partial(jax.jit, static_argnames=("trainer", "sampler"))
def guarded_step(state, ok, key, data, max_param_norm, *, trainer, sampler):
  """Draw the batch of step ``state.step`` and take one step of ``trainer``, guarded: the
  state only moves while every metric stays finite and the parameter norm below
  ``max_param_norm``; ``ok`` (a device bool) becomes and stays ``False`` at the first bad step.

  Returns ``(state, ok, metrics)`` (metrics with ``param_norm`` added).
  """
  tracing.traced("train_step")
  batch = sampler(jax.random.fold_in(key, state.step), data)
  new, metrics = trainer.step(state, batch)
  metrics = dict(metrics)
  metrics["param_norm"] = _param_norm(new.params)
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
  good = ok & finite & (metrics["param_norm"] < max_param_norm)
  state = jax.tree.map(lambda a, b: jnp.where(good, a, b), new, state)
  return state, good, metrics


class _Progress:
  """A progress line with a steady-state rate (compile excluded) and an ETA.

  On a terminal the line is redrawn in place; into a file or pipe, plain lines are written.
  """

  def __init__(self, name: str, enabled: bool):
    self.name, self.enabled = name, enabled
    self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()

  def show(self, step, total, rate, eta, metrics, keys):
    if not self.enabled:
      return
    vals = "  ".join(f"{k} {metrics[k]: .4g}" for k in keys if k in metrics)
    eta_s = f"  ETA {eta:4.0f} s" if math.isfinite(eta) else ""
    rate_s = f"  {rate:.1f} it/s" if math.isfinite(rate) else ""
    msg = f"[{self.name}] step {step:>6d}/{total}  {vals}{rate_s}{eta_s}"
    sys.stderr.write(("\r" + msg + " ") if self.tty else msg + "\n")
    sys.stderr.flush()

  def note(self, msg):
    if self.enabled:
      sys.stderr.write(("\n" if self.tty else "") + f"[{self.name}] {msg}\n")
      sys.stderr.flush()

  def close(self):
    if self.enabled and self.tty:
      sys.stderr.write("\n")


@dataclasses.dataclass(frozen=True)
class FitOptions:
  """The options every ``fit_*`` shares, as one value checked once (:meth:`checked`).

  A fit takes them as keyword arguments (``fit_w2(x, y, steps=..., checkpoint_dir=...)``):
  :meth:`from_kwargs` splits them from the fit's own options. A new option shared by the fits
  is a field here (with its check in :meth:`checked` and its use in :func:`run_fit`): every fit
  has it at once.

  Attributes:
    steps: optimizer steps (``None`` with ``max_seconds``: as many as fit; a fit's default
      when neither is given).
    max_seconds: wall-clock budget, compile included: the schedule is planned for the steps it
      buys (measured as training runs); with ``steps`` too, whichever ends first.
    batch_size: samples per step (``None``: the fit's default).
    seed: PRNG seed (initialisation, splits and batches; step ``s`` draws from
      ``fold_in(key, s)``, so a resumed run sees the batches of an uninterrupted one).
    checkpoint_dir: where checkpoints are written (atomically) every ``checkpoint_every``
      steps, at the end, on interruption and on divergence (last good state); with
      ``resume=True`` a checkpoint of the same settings and data is continued, one of others
      refused.
    checkpoint_seconds: also write one every this many seconds of training (at fetches; 0:
      off), so a time-budgeted run loses at most that much when stopped hard.
    eval_fn: ``eval_fn(result, step) -> dict`` every ``eval_every`` steps and/or every
      ``eval_seconds`` of training, and at the end (kept in the history).
    callback: ``callback(step, metrics)`` every ``log_every`` steps.
    progress: a progress line on stderr every ``log_every`` steps.
    log_every: steps between metric fetches (the only host syncs).
    max_param_norm: stop with :class:`TrainingDivergedError` beyond this parameter norm.
    dtype: float32 or float64 (default float32, or float64 under x64).
    mesh, axis_name: data-parallel training over a :class:`jax.sharding.Mesh` axis.
  """

  steps: int | None = None
  max_seconds: float | None = None
  batch_size: int | None = None
  seed: int = 0
  checkpoint_dir: Any = None
  checkpoint_every: int = 500
  checkpoint_seconds: float = 0.0
  resume: bool = True
  eval_fn: Callable | None = None
  eval_every: int = 0
  eval_seconds: float = 0.0
  callback: Callable | None = None
  progress: bool = True
  log_every: int = 100
  max_param_norm: float = 1e6
  dtype: Any = None
  mesh: Any = None
  axis_name: str | None = None

  @classmethod
  def from_kwargs(cls, who: str, kwargs: dict, *, default_steps: int | None = 4000,
                  unsupported=(), **defaults) -> tuple["FitOptions", dict]:
    """``(options, rest)``: the shared options among ``kwargs`` (over the fit's ``defaults``),
    checked, and the fit's own. ``unsupported`` names shared options this fit refuses."""
    names = {f.name for f in dataclasses.fields(cls)}
    refused = sorted(set(kwargs) & set(unsupported))
    if refused:
      raise TypeError(f"{who}: option(s) {refused} are not supported here.")
    shared = {k: v for k, v in kwargs.items() if k in names}
    rest = {k: v for k, v in kwargs.items() if k not in names}
    opts = cls(**{**defaults, **shared}).checked(who)
    if opts.steps is None and opts.max_seconds is None:
      opts = dataclasses.replace(opts, steps=default_steps)
    return opts, rest

  def checked(self, who: str) -> "FitOptions":
    """This value checked (a bad one is a ``ValueError``/``TypeError`` naming it) and
    normalised: Python ints (a checkpoint's JSON fingerprint takes no numpy ints) and a numpy
    float dtype."""
    for name, low in (("steps", 1), ("batch_size", 1), ("checkpoint_every", 1),
                      ("log_every", 1), ("eval_every", 0)):
      val = getattr(self, name)
      if val is not None and not (_validation.is_int(val) and val >= low):
        raise ValueError(f"{who}: `{name}` must be an int >= {low}, got {val!r}.")
    if not (_validation.is_int(self.seed) and 0 <= self.seed < 2 ** 32):
      raise ValueError(f"{who}: `seed` must be an int in [0, 2**32), got {self.seed!r}.")
    if self.max_seconds is not None and not (_validation.is_real(self.max_seconds)
                                             and 0 < self.max_seconds < math.inf):
      raise ValueError(f"{who}: `max_seconds` must be a number > 0 (finite), got "
                       f"{self.max_seconds!r}.")
    for name in ("eval_seconds", "checkpoint_seconds"):
      val = getattr(self, name)
      if not (_validation.is_real(val) and 0 <= val < math.inf):
        raise ValueError(f"{who}: `{name}` must be a number >= 0 (finite), got {val!r}.")
    if not (_validation.is_real(self.max_param_norm) and self.max_param_norm > 0):
      raise ValueError(f"{who}: `max_param_norm` must be a number > 0, got "
                       f"{self.max_param_norm!r}.")
    for name in ("resume", "progress"):
      if not isinstance(getattr(self, name), (bool, np.bool_)):
        raise TypeError(f"{who}: `{name}` must be True or False, got {getattr(self, name)!r}.")
    for name in ("callback", "eval_fn"):
      fn = getattr(self, name)
      if fn is not None and not callable(fn):
        raise TypeError(f"{who}: `{name}` must be callable or None, got {type(fn).__name__}.")
    if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir,
                                                          (str, os.PathLike)):
      raise TypeError(f"{who}: `checkpoint_dir` must be a path or None, got "
                      f"{type(self.checkpoint_dir).__name__}.")
    dtype = self.dtype
    if dtype is None:
      dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    try:
      dtype = np.dtype(dtype)
    except TypeError:
      raise TypeError(f"{who}: `dtype` must be a float dtype, got {self.dtype!r}.") from None
    # float16 and bfloat16 train to NaN at the first step (measured); ints cannot be trained.
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
      raise ValueError(f"{who}: `dtype` must be float32 or float64, got {dtype}.")
    as_int = lambda v: None if v is None else int(v)
    return dataclasses.replace(
        self, steps=as_int(self.steps), batch_size=as_int(self.batch_size), seed=int(self.seed),
        dtype=dtype, checkpoint_every=int(self.checkpoint_every),
        log_every=int(self.log_every), eval_every=int(self.eval_every))

  def checkpoint_path(self, name: str = "checkpoint.msgpack") -> str | None:
    """``checkpoint_dir/name``, or ``None`` without a checkpoint folder."""
    return os.path.join(self.checkpoint_dir, name) if self.checkpoint_dir else None

  def fingerprint(self, trainer_config: dict, **data) -> str:
    """The JSON that a checkpoint must match to be resumed: the trainer's configuration, the
    run's own settings and the fit's data tags."""
    return json.dumps({"trainer": trainer_config, "steps": self.steps,
                       "batch_size": self.batch_size, "seed": self.seed,
                       "dtype": self.dtype.name, **data}, sort_keys=True)


def run_fit(who: str, opts: FitOptions, trainer, state: TrainState, sampler: Callable, data: Any,
            key: jax.Array, *, fingerprint: str, make_result: Callable | None = None,
            checkpoint: str = "checkpoint.msgpack", show: tuple = ("loss",), advice: str = "",
            placement: Callable | None = None, steps: Any = "opts", max_seconds: Any = "opts",
            plan_seconds: float | None = None, history: list | None = None):
  """The one run behind every ``fit_*``: :func:`run` with the checked ``opts`` (no second
  validation), the checkpoint ``checkpoint`` in ``opts.checkpoint_dir``, and ``eval_fn``
  called on ``make_result(state)`` (the fit's map or model). ``steps`` and ``max_seconds``
  default to the options' (a part of a run, such as a race, passes its own)."""
  make = make_result or (lambda st: st)
  run_eval = None
  if opts.eval_fn is not None:
    run_eval = lambda st, step: opts.eval_fn(make(st), step)
  part = dataclasses.replace(opts, steps=opts.steps if steps == "opts" else steps,
                             max_seconds=opts.max_seconds if max_seconds == "opts" else
                             max_seconds)
  return _loop(trainer, state, sampler, data, key, part,
               checkpoint_path=opts.checkpoint_path(checkpoint), fingerprint=fingerprint,
               eval_fn=run_eval, name=who, show=show, advice=advice, placement=placement,
               plan_seconds=plan_seconds, history=history)


def run(trainer, state: TrainState, sampler: Callable, data: Any, key: jax.Array, *,
        steps: int | None, max_seconds: float | None = None, checkpoint_path: str | None = None,
        fingerprint: str = "", resume: bool = True, checkpoint_every: int = 500,
        log_every: int = 100, max_param_norm: float = 1e6, eval_fn: Callable | None = None,
        eval_every: int = 0, eval_seconds: float = 0.0, callback: Callable | None = None, progress: bool = True,
        name: str = "neural-ot", show: tuple = ("loss",), advice: str = "",
        placement: Callable | None = None, plan_seconds: float | None = None,
        history: list | None = None) -> tuple[TrainState, list]:
  """Train until ``steps`` steps or ``max_seconds`` of wall-clock, whichever comes first.

  Args:
    trainer, state, sampler, data, key: see the module docstring.
    steps: step limit (``None``: only the time budget; then ``max_seconds`` is required).
    max_seconds: wall-clock budget of this call, compile included. After the first logged
      steps the planned horizon (the schedule's length) is set to the steps that fit, and
      corrected at every fetch, so the learning rate has decayed when the time is up.
    checkpoint_path: the file written atomically every ``checkpoint_every`` steps (at a
      fetch), at the end, on interruption and on divergence (last good state). With
      ``resume=True`` an existing file is continued if its ``fingerprint`` matches, and
      refused otherwise.
    log_every: metrics are fetched from the device every ``log_every`` steps (the only host
      syncs), shown, kept in the history and passed to ``callback(step, metrics)``.
    eval_fn: ``eval_fn(state, step) -> dict`` every ``eval_every`` steps and/or every
      ``eval_seconds`` of training (checked at fetches), and at the end (host side; its time is
      excluded from the ``seconds`` kept in the history).
    placement: ``placement(tree) -> tree`` puts state and data on devices (data parallel).
    plan_seconds: with ``max_seconds``, plan the schedule's horizon for this many seconds
      (counted like ``max_seconds``) while stopping at ``max_seconds``: a short first part of
      a longer run (the model race of ``fit_w2``), continued later by another call.
    history: metrics already logged by an earlier part of the same run (kept in front).

  Returns:
    The final state and the history (a list of dicts with ``step`` and ``seconds``: training
    wall-clock since the first step finished compiling, evaluation excluded).
  """
  if steps is None and max_seconds is None:
    raise ValueError(f"{name}: give `steps`, `max_seconds` or both.")
  # Checked here, once for every trainer: a bad value would otherwise surface steps later as
  # a ZeroDivisionError, a "diverged" run or an object that is not callable.
  opts = FitOptions(steps=steps, max_seconds=max_seconds, checkpoint_every=checkpoint_every,
                    log_every=log_every, eval_every=eval_every, eval_seconds=eval_seconds,
                    max_param_norm=max_param_norm, eval_fn=eval_fn, callback=callback,
                    resume=bool(resume), progress=bool(progress)).checked(name)
  return _loop(trainer, state, sampler, data, key, opts, checkpoint_path=checkpoint_path,
               fingerprint=fingerprint, eval_fn=eval_fn, name=name, show=show, advice=advice,
               placement=placement, plan_seconds=plan_seconds, history=history)


def _loop(trainer, state, sampler, data, key, opts: FitOptions, *, checkpoint_path,
          fingerprint, eval_fn, name, show, advice, placement, plan_seconds, history):
  """:func:`run` after its checks: every option of the run comes from the one checked
  ``opts`` (``eval_fn`` takes the state; the fit's own ``opts.eval_fn`` is not called here)."""
  steps, max_seconds, resume, progress = opts.steps, opts.max_seconds, opts.resume, opts.progress
  log_every, eval_every, eval_seconds = opts.log_every, opts.eval_every, opts.eval_seconds
  checkpoint_every, callback = opts.checkpoint_every, opts.callback
  last_ckpt_s = 0.0  # training seconds at the last checkpoint (opts.checkpoint_seconds)
  if plan_seconds is not None and not (_validation.is_real(plan_seconds) and plan_seconds > 0):
    raise ValueError(f"{name}: `plan_seconds` must be a number > 0, got {plan_seconds!r}.")
  t_start = time.perf_counter()
  history = list(history or [])
  # Several processes (jax.distributed) run this loop in lockstep: the same steps, the same
  # decisions (process 0's clock decides), one writer and one progress line (process 0's).
  lockstep = jax.process_count() > 1
  prog = _Progress(name, progress and jax.process_index() == 0)
  if checkpoint_path and resume and io.seen_by_all(checkpoint_path, name):
    state, history = _restore(checkpoint_path, state, fingerprint, name)
    prog.note(f"resuming from step {int(state.step)} ({checkpoint_path})")
  limit = steps if steps is not None else 2 ** 31 - 1
  if placement is not None:
    state, data = placement((state, data))

  def save(st):
    if checkpoint_path:
      io.save_atomic(checkpoint_path, {"format": io.CHECKPOINT_FORMAT, "fingerprint": fingerprint,
                                       "state": st._asdict(), "history": json.dumps(history)})

  step_fn = functools.partial(guarded_step, trainer=trainer, sampler=sampler)
  ok = jnp.asarray(True)
  done = int(state.step)
  start = done
  t_first, eval_s, last_ckpt, next_eval = None, 0.0, done, float(eval_seconds or 0.0)
  mpn = jnp.asarray(opts.max_param_norm, jnp.float32)
  # Steps with collectives on CPU devices keep at most one step queued behind the running one:
  # with up to 99 queued, 300 data-parallel fit_w2 steps on 2 processes x 2 CPU devices (gloo)
  # hung in 3 of 3 runs, and 100 fit_meta steps on 4 forced CPU devices of one process
  # aborted (a device missed an all-reduce's 40 s rendezvous); with one queued, all finished.
  short_queue = lockstep or (placement is not None and jax.default_backend() == "cpu")
  try:
    while done < limit:
      n = min(log_every - done % log_every, limit - done)
      if t_first is None:
        n = 1  # the compiling step, timed on its own
      for _ in range(n):
        prev = ok
        state, ok, metrics = step_fn(state, ok, key, data, mpn)
        if short_queue:
          prev.block_until_ready()
      good = bool(ok)  # the fetch: one host sync per log_every steps
      now = time.perf_counter()
      if not good:
        bad = int(state.step) + 1
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        save(state)
        where = f"; the last good state (step {bad - 1}) is in {checkpoint_path}" if (
            checkpoint_path) else ""
        raise TrainingDivergedError(
            f"{name}: training diverged at step {bad} (or within the {n} steps before it): "
            + ", ".join(f"{k}={v:.3g}" for k, v in m.items()) + where
            + (f". {advice}" if advice else "."))
      done = int(state.step)
      if t_first is None:  # the compiling step: the steady-state clock starts after it
        t_first, start = now, done
      seconds = now - t_first - eval_s
      rate = (done - start) / seconds if seconds > 0 else float("nan")
      horizon = None
      if max_seconds is not None and done > start:
        elapsed = now - t_start
        planned = done + max(int(rate * (max_seconds - elapsed)), 0)
        limit = min(steps, planned) if steps is not None else planned
        horizon = limit if plan_seconds is None else done + max(
            int(rate * (plan_seconds - elapsed)), 0)
      eval_due = bool((eval_every and done % eval_every == 0) or (
          eval_seconds and seconds >= next_eval))
      ckpt_due = bool(opts.checkpoint_seconds and seconds - last_ckpt_s >= opts.checkpoint_seconds)
      if lockstep:  # process 0's clock decides for every process
        limit, horizon, eval_due, ckpt_due = _agree(limit, horizon, eval_due, ckpt_due)
      if horizon is not None:  # placed like the old one: a new placement would recompile
        state = state._replace(horizon=_like(float(max(horizon, 1)), state.horizon))
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      eta = (limit - done) / rate if rate > 0 else float("nan")
      if done % log_every == 0 or done >= limit:
        history.append({"step": done, "seconds": seconds, **m})
        prog.show(done, limit, rate, eta, m, show)
        if callback is not None:
          callback(done, m)
      due = eval_due or done >= limit
      if eval_fn is not None and (eval_every or eval_seconds) and due:
        next_eval = (math.floor(seconds / eval_seconds) + 1) * eval_seconds if eval_seconds else 0
        t = time.perf_counter()
        history.append({"step": done, "seconds": seconds, **{
            k: float(v) for k, v in eval_fn(state, done).items()}})
        eval_s += time.perf_counter() - t
      if checkpoint_path and (done - last_ckpt >= checkpoint_every or ckpt_due):
        save(state)
        last_ckpt, last_ckpt_s = done, seconds
  except KeyboardInterrupt:
    save(state)
    prog.close()
    if checkpoint_path:
      prog.note(f"interrupted at step {int(state.step)}; checkpoint saved to {checkpoint_path}; "
                f"run the same command again to resume")
    raise
  prog.close()
  state = state._replace(horizon=_like(float(max(done, 1)), state.horizon)) if (
      max_seconds is not None and plan_seconds is None) else state
  save(state)
  return state, history


def _like(value: float, old: jax.Array) -> jax.Array:
  """``value`` as a float32 scalar placed like ``old`` (every process gives the same value)."""
  return jax.device_put(np.float32(value), old.sharding)


def _agree(limit: int, horizon, eval_due: bool, ckpt_due: bool):
  """Process 0's ``(limit, horizon, eval_due, ckpt_due)`` on every process (a collective)."""
  from jax.experimental import multihost_utils
  top = np.iinfo(np.int32).max
  vals = np.asarray([min(limit, top), -1 if horizon is None else min(horizon, top), eval_due,
                     ckpt_due], np.int32)
  vals = np.asarray(multihost_utils.broadcast_one_to_all(vals))
  return int(vals[0]), None if vals[1] < 0 else int(vals[1]), bool(vals[2]), bool(vals[3])


def _restore(path, template: TrainState, fingerprint: str, name: str):
  raw = io.load(path, expect=io.CHECKPOINT_FORMAT, what="checkpoint")
  if raw.get("fingerprint") != fingerprint:
    raise ValueError(
        f"{name}: the checkpoint {path!r} was written by a run with other settings or other "
        f"data; pass `resume=False` (command line: `--restart`) to start over, or use another "
        f"checkpoint folder.")
  state = serialization.from_state_dict(template._asdict(), raw["state"])
  state = TrainState(**jax.tree.map(jnp.asarray, state))
  return state, json.loads(raw["history"])


def data_parallel(mesh, axis_name, batch_size: int, name: str):
  """``(sharding, placement)`` for data-parallel training on ``mesh`` (``(None, None)`` when
  ``mesh`` is None): each step's batch is split over the devices of ``axis_name`` (default: the
  mesh's only axis) and ``placement`` replicates state and data. ``batch_size`` must be a
  multiple of the number of devices."""
  if mesh is None:
    return None, None
  axis_name = check_mesh_axis(mesh, axis_name)
  ndev = mesh.shape[axis_name]
  if batch_size % ndev:
    raise ValueError(f"{name}: `batch_size` ({batch_size}) must be a multiple of the "
                     f"{ndev} devices of mesh axis {axis_name!r}.")
  replicated = NamedSharding(mesh, PartitionSpec())
  return (NamedSharding(mesh, PartitionSpec(axis_name)),
          lambda tree: jax.device_put(tree, replicated))


def data_fingerprint(*arrays) -> str:
  """A short hash of arrays (shape, dtype and bytes) for checkpoint fingerprints."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]
