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

import functools
import json
import math
import os
import sys
import time
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot import _validation, io

__all__ = ["TrainState", "Trainer", "TrainingDivergedError", "run", "guarded_step", "cosine_schedule",
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


def _is_real(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _param_norm(params):
  return jnp.sqrt(sum(jnp.sum(jnp.square(v.astype(jnp.float32))) for v in jax.tree.leaves(params)))


@functools.partial(jax.jit, static_argnames=("trainer", "sampler"))
def guarded_step(state, ok, key, data, max_param_norm, *, trainer, sampler):
  """Draw the batch of step ``state.step`` and take one step of ``trainer``, guarded: the
  state only moves while every metric stays finite and the parameter norm below
  ``max_param_norm``; ``ok`` (a device bool) becomes and stays ``False`` at the first bad step.

  Returns ``(state, ok, metrics)`` (metrics with ``param_norm`` added).
  """
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
  if max_seconds is not None and not (_is_real(max_seconds) and 0 < max_seconds < math.inf):
    raise ValueError(f"{name}: `max_seconds` must be a number > 0 (finite), got {max_seconds!r}.")
  if not (_is_real(eval_seconds) and 0 <= eval_seconds < math.inf):
    raise ValueError(f"{name}: `eval_seconds` must be >= 0, got {eval_seconds!r}.")
  for what, val, low in (("log_every", log_every, 1), ("checkpoint_every", checkpoint_every, 1),
                         ("eval_every", eval_every, 0)):
    if not (_validation.is_int(val) and val >= low):
      raise ValueError(f"{name}: `{what}` must be an int >= {low}, got {val!r}.")
  if not (_is_real(max_param_norm) and max_param_norm > 0):
    raise ValueError(f"{name}: `max_param_norm` must be a number > 0, got {max_param_norm!r}.")
  for what, fn in (("callback", callback), ("eval_fn", eval_fn)):
    if fn is not None and not callable(fn):
      raise TypeError(f"{name}: `{what}` must be callable or None, got {type(fn).__name__}.")
  if plan_seconds is not None and not (_is_real(plan_seconds) and plan_seconds > 0):
    raise ValueError(f"{name}: `plan_seconds` must be a number > 0, got {plan_seconds!r}.")
  t_start = time.perf_counter()
  history = list(history or [])
  prog = _Progress(name, progress)
  if checkpoint_path and resume and os.path.isfile(checkpoint_path):
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
  mpn = jnp.asarray(max_param_norm, jnp.float32)
  try:
    while done < limit:
      n = min(log_every - done % log_every, limit - done)
      if t_first is None:
        n = 1  # the compiling step, timed on its own
      for _ in range(n):
        state, ok, metrics = step_fn(state, ok, key, data, mpn)
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
      if max_seconds is not None and done > start:
        elapsed = now - t_start
        planned = done + max(int(rate * (max_seconds - elapsed)), 0)
        limit = min(steps, planned) if steps is not None else planned
        horizon = limit if plan_seconds is None else done + max(
            int(rate * (plan_seconds - elapsed)), 0)
        state = state._replace(horizon=jnp.asarray(float(max(horizon, 1)), jnp.float32))
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      eta = (limit - done) / rate if rate > 0 else float("nan")
      if done % log_every == 0 or done >= limit:
        history.append({"step": done, "seconds": seconds, **m})
        prog.show(done, limit, rate, eta, m, show)
        if callback is not None:
          callback(done, m)
      due = (eval_every and done % eval_every == 0) or (
          eval_seconds and seconds >= next_eval) or done >= limit
      if eval_fn is not None and (eval_every or eval_seconds) and due:
        next_eval = (math.floor(seconds / eval_seconds) + 1) * eval_seconds if eval_seconds else 0
        t = time.perf_counter()
        history.append({"step": done, "seconds": seconds, **{
            k: float(v) for k, v in eval_fn(state, done).items()}})
        eval_s += time.perf_counter() - t
      if checkpoint_path and done - last_ckpt >= checkpoint_every:
        save(state)
        last_ckpt = done
  except KeyboardInterrupt:
    save(state)
    prog.close()
    if checkpoint_path:
      prog.note(f"interrupted at step {int(state.step)}; checkpoint saved to {checkpoint_path}; "
                f"run the same command again to resume")
    raise
  prog.close()
  state = state._replace(horizon=jnp.asarray(float(max(done, 1)), jnp.float32)) if (
      max_seconds is not None and plan_seconds is None) else state
  save(state)
  return state, history


def _restore(path, template: TrainState, fingerprint: str, name: str):
  from flax import serialization  # pylint: disable=import-outside-toplevel
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
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  from neural_ot.sharding import check_mesh_axis  # pylint: disable=import-outside-toplevel
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
  import hashlib  # pylint: disable=import-outside-toplevel
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]
