"""``fit_w2``: learn a Wasserstein-2 map from samples (driver around :class:`W2Trainer`)."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot.w2 import checkpoint, gaussian
from neural_ot.w2.maps import W2Map
from neural_ot.w2.trainer import TrainState, W2Trainer, as_config

__all__ = ["fit_w2", "TrainingDivergedError"]

_CKPT = "checkpoint.msgpack"
_N_EVAL = 4096


class TrainingDivergedError(RuntimeError):
  """Raised when the loss stops being finite or the parameters explode."""


@dataclasses.dataclass(frozen=True)
class _Sampler:
  """A user sampler ``fn(key, n)`` cast to ``dtype``; equal (same jit cache) for the same fn."""

  fn: Callable
  dtype: str

  def __call__(self, key, n, data):
    del data
    return jnp.asarray(self.fn(key, n)).astype(self.dtype)


def _from_array(key, n, data):
  return data[jax.random.randint(key, (n,), 0, data.shape[0])]


def _as_source(data, name: str, batch_size: int, dtype):
  """Return ``(sample(key, n, data), dim, data or None, moment sample)``."""
  if callable(data):
    probe = np.asarray(data(jax.random.PRNGKey(0), 8))
    if probe.ndim != 2 or probe.shape[0] != 8:
      raise ValueError(f"fit_w2: sampler `{name}(key, n)` must return an array of shape (n, d); "
                       f"for n=8 it returned shape {probe.shape}.")
    if not np.all(np.isfinite(probe)):
      raise ValueError(f"fit_w2: sampler `{name}` returned non-finite values (NaN or inf).")
    moment_sample = np.asarray(data(jax.random.PRNGKey(1), _N_EVAL), dtype)
    return _Sampler(data, dtype.name), probe.shape[1], None, moment_sample
  try:
    arr = np.asarray(data, dtype)
  except (TypeError, ValueError) as exc:
    raise TypeError(f"fit_w2: `{name}` must be an array (n, d) or a sampler "
                    f"`sample(key, n) -> (n, d)`, got {type(data).__name__}.") from exc
  if arr.ndim == 1:
    arr = arr[:, None]
  if arr.ndim != 2 or arr.shape[0] == 0:
    raise ValueError(f"fit_w2: `{name}` must have shape (n, d) with n > 0, got {arr.shape}.")
  if not np.all(np.isfinite(arr)):
    bad = int(np.sum(~np.all(np.isfinite(arr), axis=1)))
    raise ValueError(f"fit_w2: `{name}` has {bad} row(s) with NaN or inf values.")
  if batch_size > arr.shape[0]:
    raise ValueError(f"fit_w2: `batch_size` ({batch_size}) is larger than `{name}`, which has "
                     f"{arr.shape[0]} samples.")
  return _from_array, arr.shape[1], jnp.asarray(arr), arr[:_N_EVAL * 4]


@functools.partial(jax.jit, static_argnames=("trainer", "src_fn", "tgt_fn", "batch_size", "steps",
                                             "batch_sharding"))
def _train_step(state: TrainState, key, src_data, tgt_data, *, trainer, src_fn, tgt_fn,
                batch_size, steps, batch_sharding=None):
  """Draw the batches of step ``state.step`` (``fold_in(key, step)``) and take one step.

  With ``batch_sharding`` the batches are split over the devices of a mesh (the
  parameters are replicated); XLA reduces the gradients across devices.
  """
  ks, kt = jax.random.split(jax.random.fold_in(key, state.step))
  x = src_fn(ks, batch_size, src_data)
  y = tgt_fn(kt, batch_size, tgt_data)
  if batch_sharding is not None:
    x = jax.lax.with_sharding_constraint(x, batch_sharding)
    y = jax.lax.with_sharding_constraint(y, batch_sharding)
  return trainer.step(state, x, y, steps)


def _fingerprint(trainer, steps, batch_size, seed, dim) -> str:
  return json.dumps({"trainer": as_config(trainer), "steps": steps, "batch_size": batch_size,
                     "seed": seed, "dim": dim}, sort_keys=True)


def _progress(step, steps, metrics, rate):
  msg = (f"\r[neural-ot] step {step:>6d}/{steps}  loss {metrics['loss']: .4e}  "
         f"W2^2 {metrics['w2']: .4f}  conj it {metrics['conj_iters']:.1f}"
         f" (max {int(metrics['conj_iters_max'])})  {rate:.1f} it/s ")
  sys.stderr.write(msg)
  sys.stderr.flush()


def fit_w2(source, target, *, steps: int = 2000, batch_size: int = 256, seed: int = 0,
           checkpoint_dir: str | None = None, checkpoint_every: int = 500, resume: bool = True,
           eval_fn: Callable | None = None, eval_every: int = 0, callback: Callable | None = None,
           progress: bool = True, log_every: int = 100, max_param_norm: float = 1e6,
           dtype=None, mesh=None, axis_name: str | None = None, **options) -> W2Map:
  """Learn the W2 optimal map ``T = grad f`` (``f`` convex) from ``source`` to ``target``.

  Args:
    source, target: arrays ``(n, d)`` (numpy or jax; ``(n,)`` means ``d = 1``) or samplers
      ``sample(key, n) -> (n, d)`` (jit-able).
    steps: optimizer steps. batch_size: samples per measure per step. seed: PRNG seed
      (initialisation and batches; step ``s`` uses ``fold_in(key, s)``, so a resumed run
      draws the same batches as an uninterrupted one).
    checkpoint_dir: where ``checkpoint.msgpack`` is written (atomically) every
      ``checkpoint_every`` steps, at the end, on interruption and on divergence (last good
      state). With ``resume=True`` a matching checkpoint there is continued.
    eval_fn: ``eval_fn(map, step) -> dict`` called every ``eval_every`` steps; the results
      are kept in ``map.history``.
    callback: ``callback(step, metrics)`` after every step (metrics as floats).
    progress: print a progress line to stderr every ``log_every`` steps.
    max_param_norm: stop with :class:`TrainingDivergedError` beyond this parameter norm.
    dtype: float dtype of training (default float32, or float64 under x64).
    mesh: a :class:`jax.sharding.Mesh`: data-parallel training, each step's batch split
      over the devices of ``axis_name`` (default: the mesh's only axis), parameters and
      optimizer state replicated, gradients reduced across devices by XLA. Same batches
      as on one device, so the same seed gives the same run up to float round-off.
      ``batch_size`` must be a multiple of the number of devices.
    **options: fields of :class:`W2Trainer` (potential, hidden, amortization, finetune,
      finetune_iters, learning_rate, init, ...).

  Returns:
    A :class:`W2Map` with ``transport``, ``inverse``, ``w2``, ``save``.

  Example:
    >>> import jax, neural_ot
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (512, 2))
    >>> m = neural_ot.fit_w2(x, 2.0 * x + 1.0, steps=5, batch_size=64, progress=False)
    >>> m.transport(x[:3]).shape
    (3, 2)
  """
  fields = {f.name for f in dataclasses.fields(W2Trainer)}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise TypeError(f"fit_w2: unknown option(s) {unknown}; valid options are {sorted(fields)} "
                    f"and the keyword arguments of fit_w2.")
  for name, val in (("steps", steps), ("batch_size", batch_size), ("checkpoint_every",
                                                                    checkpoint_every)):
    if not (isinstance(val, (int, np.integer)) and val >= 1):
      raise ValueError(f"fit_w2: `{name}` must be an int >= 1, got {val!r}.")
  trainer = W2Trainer(**options)
  if dtype is None:
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  dtype = np.dtype(dtype)

  src_fn, d_src, src_data, src_mom = _as_source(source, "source", batch_size, dtype)
  tgt_fn, d_tgt, tgt_data, tgt_mom = _as_source(target, "target", batch_size, dtype)
  if d_src != d_tgt:
    raise ValueError(f"fit_w2: `source` and `target` must have the same dimension, got "
                     f"d={d_src} and d={d_tgt}.")
  dim = d_src

  key = jax.random.PRNGKey(seed)
  k_init, k_data = jax.random.split(key)
  moments = None
  if trainer.init == "gaussian":
    moments = (gaussian.moments(src_mom), gaussian.moments(tgt_mom))
  state = trainer.init_state(k_init, dim, steps, *(moments or (None, None)), dtype=dtype)

  batch_sharding = None
  if mesh is not None:
    from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
    from neural_ot.geometry.pointcloud import check_mesh_axis  # pylint: disable=import-outside-toplevel
    axis_name = check_mesh_axis(mesh, axis_name)
    ndev = mesh.shape[axis_name]
    if batch_size % ndev:
      raise ValueError(f"fit_w2: `batch_size` ({batch_size}) must be a multiple of the "
                       f"{ndev} devices of mesh axis {axis_name!r}.")
    batch_sharding = NamedSharding(mesh, PartitionSpec(axis_name))
    replicated = NamedSharding(mesh, PartitionSpec())

  train_step = functools.partial(_train_step, trainer=trainer, src_fn=src_fn, tgt_fn=tgt_fn,
                                 batch_size=int(batch_size), steps=int(steps),
                                 batch_sharding=batch_sharding)

  fingerprint = _fingerprint(trainer, steps, batch_size, seed, dim)
  ckpt_path = os.path.join(checkpoint_dir, _CKPT) if checkpoint_dir else None
  history: list[dict] = []
  if ckpt_path and resume and os.path.isfile(ckpt_path):
    state, history = _restore(ckpt_path, state, fingerprint)
    if progress:
      sys.stderr.write(f"[neural-ot] resuming from step {int(state.step)} ({ckpt_path})\n")
  if mesh is not None:
    state, src_data, tgt_data = jax.device_put((state, src_data, tgt_data), replicated)

  def save(st, hist):
    if ckpt_path:
      checkpoint.save_atomic(ckpt_path, {"fingerprint": fingerprint, "state": st._asdict(),
                                         "history": json.dumps(hist)})

  def make_map(st, w2=float("nan")):
    return W2Map(trainer, st.params, dim, w2, tuple(history))

  good = state
  t0, step0 = time.perf_counter(), int(state.step)
  try:
    for step in range(int(state.step), steps):
      new_state, metrics = train_step(good, k_data, src_data, tgt_data)
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
              and m["param_norm"] < max_param_norm):
        save(good, history)
        where = f"; the last good state (step {step}) is in {ckpt_path}" if ckpt_path else ""
        raise TrainingDivergedError(
            f"fit_w2: training diverged at step {step + 1}: loss={m['loss']:.3g}, gradient norm="
            f"{m['grad_norm']:.3g}, parameter norm={m['param_norm']:.3g}{where}. Try a smaller "
            f"`learning_rate`, `init='gaussian'` or standardised data.")
      good = new_state
      done = step + 1
      if callback is not None:
        callback(done, m)
      if progress and (done % log_every == 0 or done == steps):
        _progress(done, steps, m, (done - step0) / (time.perf_counter() - t0))
      if done % log_every == 0 or done == steps:
        history.append({"step": done, **{k: m[k] for k in ("loss", "w2", "conj_iters",
                                                            "pred_error")}})
      if eval_fn is not None and eval_every and done % eval_every == 0:
        history.append({"step": done, **{k: float(v) for k, v in
                                         eval_fn(make_map(good), done).items()}})
      if ckpt_path and done % checkpoint_every == 0:
        save(good, history)
  except (KeyboardInterrupt, Exception) as exc:
    if not isinstance(exc, TrainingDivergedError):
      save(good, history)
    if progress:
      sys.stderr.write("\n")
    raise
  if progress:
    sys.stderr.write("\n")
  save(good, history)
  w2 = _dual_w2(trainer, good.params, src_mom[:_N_EVAL], tgt_mom[:_N_EVAL])
  return make_map(good, w2)


@functools.partial(jax.jit, static_argnums=0)
def _dual_w2_impl(trainer, params, x, y):
  f = trainer.potential_fn(params["f"])
  solver = dataclasses.replace(trainer.solver, tol=1e-5, max_iters=100)
  res = solver(f, y, trainer.predict(params["g"], y))
  dual = jax.vmap(f)(x).mean() + res.value.mean()
  return jnp.mean(jnp.sum(x * x, -1)) + jnp.mean(jnp.sum(y * y, -1)) - 2 * dual


def _dual_w2(trainer, params, x, y) -> float:
  """W2^2 = E|x|^2 + E|y|^2 - 2 (E f(x) + E f*(y)), conjugate solved to |grad| < 1e-5."""
  return float(_dual_w2_impl(trainer, params, jnp.asarray(x), jnp.asarray(y)))


def _restore(path, template: TrainState, fingerprint: str):
  from flax import serialization
  raw = checkpoint.load(path)
  if raw.get("fingerprint") != fingerprint:
    raise ValueError(
        f"fit_w2: the checkpoint in {os.path.dirname(path)!r} was written by a run with other "
        f"settings; pass `resume=False` to start over or use another `checkpoint_dir`.")
  state = serialization.from_state_dict(template._asdict(), raw["state"])
  state = TrainState(**jax.tree.map(jnp.asarray, state))
  return state, json.loads(raw["history"])
