"""``fit_w2``: learn a Wasserstein-2 map from samples (on the one fit driver,
:func:`neural_ot.train.run_fit`).

What ``fit_w2(source, target)`` does with no options:

* splits array data at random into training rows and a held-out set (for the W2 estimate);
  samplers get fresh held-out draws;
* standardises both measures (each centred by its mean and divided by its own scale, the root
  mean variance per coordinate, estimated on a random subsample). Centring and positive
  scalings keep optimal maps optimal (``(T(s_x x + m_x) - m_y) / s_y`` is the gradient of a
  convex function whenever ``T`` is), so the map is learned at unit scale and composed back:
  :class:`W2Map` maps in the user's units;
* races a non-convex MLP potential against a convex ICNN for a tenth of the run each and
  keeps the one with the lower held-out dual (``potential="auto"``; short runs take the
  dimension's rule), with widths, learning rate and conjugate budget from the dimension
  (:func:`default_options`); starts ``grad f`` at the closed-form map between the
  moment-matched Gaussians, and trains with a cosine schedule that fits ``steps`` or the
  ``max_seconds`` budget;
* measures the result on held-out samples (:mod:`neural_ot.w2.diagnostics`) and warns when it
  ended no better than its Gaussian start or with its network cut off by inactive units.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot import _validation, gaussian, io, train
from neural_ot.w2 import diagnostics
from neural_ot.train import TrainingDivergedError
from neural_ot.w2.maps import Frame, W2Map
from neural_ot._validation import check_widths, is_int
from neural_ot.w2.trainer import W2Trainer, as_config

__all__ = ["fit_w2", "default_options", "training_rows", "PairSampler", "dual_w2",
           "TrainingDivergedError"]

_CKPT = "checkpoint.msgpack"
_NETWORK_FIELDS = frozenset({"potential", "hidden", "activation", "strong_convexity",
                             "predictor_hidden", "context_dim", "context_hidden", "context_mode"})
_N_HELD_OUT = 4096
MLP_DIMS = (4, 64)  # the dimensions (inclusive) whose default potential is the non-convex MLP
_N_MOMENTS = 16384


def default_options(dim: int, n: int | None = None, potential: str | None = None) -> dict:
  """The settings ``fit_w2`` uses for data of dimension ``dim`` (and ``n`` training rows).

  A function of the data's shape only, never of a benchmark file (the data are standardised
  first, so scale does not enter). Each rule below names what it was chosen on; the tables are
  in ``benchmarks/RESULTS.md`` (sections "W2 maps: the non-convex MLP potential" and "Maps a
  user can trust", issue 27).

  * Potential, when not raced (``potential="auto"`` races the two on runs of >= 2000 steps or
    60 s): the non-convex ``"mlp"`` for ``4 <= dim <= 64`` (:data:`MLP_DIMS`), the convex
    ``"icnn"`` otherwise. Chosen on Mix3toMix10 and ``w2bench.random_pair``, D = 2 to 128.
  * Widths ``[2m, 2m, m]``, ``m = max(dim, 32)`` (the published setting: Amos 2023, Korotin
    2021).
  * Learning rate: cosine decay from the peak to ``final_lr_fraction = 0.005`` of it. Peak
    5e-2 for the ICNN; for the MLP 2e-2 up to D = 32 and ``min(1e-2, 0.64 / m)`` above (higher
    rates stalled at the Gaussian start at D = 48). Fewer than 10,000 rows get less (a fifth
    of the peak at n = 0, linear up to n = 10,000): a high rate overfits a small sample.
  * The MLP's units are leaky (``leak=0.02``) from D = 17 to 32, where its 2e-2 rate killed
    the last hidden layer in long runs (tune half of :mod:`neural_ot.w2bench.families`, D = 32).
  * Batch 256 (capped by ``n``); the conjugate: 10 L-BFGS steps to ``|grad| < 1e-3``.

  Args:
    dim: dimension of the data, an int >= 1.
    n: training rows of the smaller data set (``None`` for samplers).
    potential: ``"icnn"`` or ``"mlp"`` fixes the potential, and with it the rate; ``None``
      picks it from ``dim``.

  Returns:
    A dict of ``W2Trainer`` fields plus ``batch_size``.

  Example:
    >>> default_options(8)["hidden"]
    (64, 64, 32)
  """
  if not (isinstance(dim, (int, np.integer)) and dim >= 1):
    raise ValueError(f"default_options: `dim` must be an int >= 1, got {dim!r}.")
  if n is not None and not (isinstance(n, (int, np.integer)) and n >= 1):
    raise ValueError(f"default_options: `n` must be None or an int >= 1, got {n!r}.")
  if not (potential is None or (isinstance(potential, str) and potential in ("icnn", "mlp"))):
    raise ValueError(f"default_options: `potential` must be None, 'icnn' or 'mlp', got "
                     f"{potential!r}.")
  dim = int(dim)
  m = max(dim, 32)
  mlp = MLP_DIMS[0] <= dim <= MLP_DIMS[1] if potential is None else potential == "mlp"
  # The MLP's peak falls with its width above 32 dimensions: at 1.33e-2 and 2e-2, D = 48 runs
  # stalled near the Gaussian start (most units of the last hidden layer saturated at 0).
  peak = (2e-2 if dim <= 32 else min(1e-2, 0.64 / m)) if mlp else 5e-2
  # Small data sets: a high rate fits the sample's own structure (400 points of an affine pair:
  # RMS error 0.041 at 5e-2 vs 0.030 at 1e-2 after 4000 steps); from 10,000 rows (or with
  # samplers) the full peak.
  lr = peak if n is None or n >= 10000 else peak * (0.2 + 0.8 * n / 10000)
  batch = 256 if n is None else max(1, min(256, int(n)))
  # Between 17 and 32 dimensions (the MLP's 2e-2 rate) the plain MLP's last hidden layer died in
  # both races of the tune half's D = 32 runs (icnn-student, radial-subspace, 300 s): leaky units
  # cannot die (W2Trainer.leak; RESULTS.md, issue 27).
  leak = 0.02 if mlp and 16 < dim <= 32 else 0.0
  return dict(potential="mlp" if mlp else "icnn", hidden=(2 * m, 2 * m, m), leak=leak,
              predictor_hidden=(2 * m, 2 * m), learning_rate=lr, final_lr_fraction=0.005,
              finetune_iters=10, finetune_tol=1e-3, batch_size=batch)


@dataclasses.dataclass(frozen=True)
class PairSampler:
  """Draws a training batch ``(x, y)`` of ``batch_size`` rows from each measure.

  A side whose function is ``None`` draws rows (with replacement) from ``data["x"]`` or
  ``data["y"]``; otherwise the function ``fn(key, n) -> (n, d)`` is called. Batches are then
  standardised with ``data["frame"]`` (a :class:`Frame`). Hashable, so it is a static
  argument of the compiled step: a second run with new data of the same shape does not
  recompile.
  """

  batch_size: int
  source_fn: Callable | None = None
  target_fn: Callable | None = None
  dtype: str = "float32"
  sharding: Any = None  # a NamedSharding: split the batch over devices (data parallel)

  def _side(self, fn, key, arr):
    if fn is None:
      return arr[jax.random.randint(key, (self.batch_size,), 0, arr.shape[0])]
    return jnp.asarray(fn(key, self.batch_size)).astype(self.dtype)

  def __call__(self, key, data):
    ks, kt = jax.random.split(key)
    frame = data["frame"]
    x = frame.to_source(self._side(self.source_fn, ks, data.get("x")))
    y = frame.to_target(self._side(self.target_fn, kt, data.get("y")))
    if self.sharding is not None:
      x = jax.lax.with_sharding_constraint(x, self.sharding)
      y = jax.lax.with_sharding_constraint(y, self.sharding)
    return x.astype(self.dtype), y.astype(self.dtype)


def _check_sampler(fn, name, n=8, seed=0):
  """``fn(PRNGKey(seed), n)`` as a numpy array, checked: real numbers, shape ``(n, d)``, finite."""
  try:
    probe = np.asarray(fn(jax.random.PRNGKey(seed), n))
  except TypeError as exc:  # most often the signature: not sample(key, n)
    raise TypeError(f"fit_w2: sampler `{name}` failed when called as `{name}(key, {n})`: "
                    f"{exc}") from exc
  if probe.dtype.kind not in "biuf":
    raise TypeError(f"fit_w2: sampler `{name}(key, n)` must return real numbers, it returned "
                    f"dtype {probe.dtype}.")
  if probe.ndim != 2 or probe.shape[0] != n:
    raise ValueError(f"fit_w2: sampler `{name}(key, n)` must return an array of shape (n, d); "
                     f"for n={n} it returned shape {probe.shape}.")
  if not np.all(np.isfinite(probe)):
    raise ValueError(f"fit_w2: sampler `{name}` returned non-finite values (NaN or inf) for "
                     f"n={n}.")
  return probe


def _check_spread(arr, name):
  # All rows one point (up to rounding, e.g. a large offset in float32): the standardisation
  # and the Gaussian start divide by a zero spread, and training diverges at its first step.
  a64 = arr.astype(np.float64)  # no overflow in the range of float32 data near its max
  if np.max(np.ptp(a64, axis=0)) <= 4 * np.finfo(arr.dtype).eps * np.max(np.abs(a64)):
    raise ValueError(f"fit_w2: all samples of `{name}` are the same point (up to rounding); "
                     f"a W2 map needs measures with some spread.")


def _prepare(data, name: str, dtype, rng, seed):
  """``(fn or None, train array or None, moment sample, held-out sample, fingerprint part)``."""
  if callable(data):
    probe = _check_sampler(data, name)
    moment = _check_sampler(data, name, _N_MOMENTS, 10 ** 6 + seed).astype(dtype)
    held = _check_sampler(data, name, _N_HELD_OUT, 2 * 10 ** 6 + seed).astype(dtype)
    tag = f"sampler {getattr(data, '__qualname__', type(data).__name__)} " + \
        train.data_fingerprint(probe.astype(np.float32))
    return data, None, moment, held, tag
  try:
    arr = np.asarray(data)
    if np.iscomplexobj(arr):  # the cast would drop the imaginary part with only a warning
      raise TypeError(f"fit_w2: `{name}` must be real, got complex dtype {arr.dtype}.")
    arr = arr.astype(dtype)
  except (TypeError, ValueError) as exc:
    if str(exc).startswith("fit_w2:"):
      raise
    raise TypeError(f"fit_w2: `{name}` must be an array (n, d) or a sampler "
                    f"`sample(key, n) -> (n, d)`, got {type(data).__name__}.") from exc
  if arr.ndim == 1:
    arr = arr[:, None]
  if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
    raise ValueError(f"fit_w2: `{name}` must have shape (n, d) with n > 0 and d > 0, got "
                     f"{arr.shape}.")
  if not np.all(np.isfinite(arr)):
    bad = int(np.sum(~np.all(np.isfinite(arr), axis=1)))
    raise ValueError(f"fit_w2: `{name}` has {bad} row(s) with NaN or inf values.")
  if arr.shape[0] < 2:
    raise ValueError(f"fit_w2: `{name}` needs at least 2 samples, got {arr.shape[0]}.")
  tag = "array " + train.data_fingerprint(arr)
  perm = rng.permutation(arr.shape[0])
  n_held = arr.shape[0] - training_rows(arr.shape[0])
  held, rest = arr[perm[:n_held]], arr[perm[n_held:]]
  if n_held == 0:  # too few rows to hold any out: the estimate is in-sample (documented)
    held = rest
  return None, rest, rest[:_N_MOMENTS], held, tag


def training_rows(n: int) -> int:
  """How many of ``n`` array rows ``fit_w2`` trains on: it holds out ``min(4096, n // 5)``
  at random for the W2 estimate when ``n >= 50`` (fewer rows: none, the estimate is then
  in-sample)."""
  return n - (min(_N_HELD_OUT, n // 5) if n >= 50 else 0)


def fit_w2(source, target, *, standardize: bool = True, init_map: W2Map | None = None,
           **options) -> W2Map:
  """Learn the W2 optimal map ``T = grad f`` from ``source`` to ``target``.

  Which potential fits the data best depends on the data, not only on the dimension (on the
  known-map families of :mod:`neural_ot.w2bench.families` the convex ICNN was 3x better on one
  and 25x worse on another at the same D). So by default (``potential="auto"``) a run of at
  least 2000 steps or 60 seconds starts with a race: the non-convex MLP and the ICNN each
  train for a tenth of the run from the same Gaussian start, and the one with the lower
  held-out dual objective (no known map needed) goes on; a shorter run or a fine-tune takes
  the dimension's rule of :func:`default_options`. ``potential="mlp"`` or ``"icnn"`` fixes it.

  At the end the map carries :class:`~neural_ot.w2.diagnostics.FitDiagnostics`
  (``map.diagnostics``): the held-out dual of the Gaussian start and of the map, the share of
  inactive hidden units, conjugate residuals and the race's figures. A fit that ended no
  better than its start, or with most units inactive, warns (``RuntimeWarning``) and says so
  there.

  Args:
    source, target: arrays ``(n, d)`` (numpy or jax; ``(n,)`` means ``d = 1``) or samplers
      ``sample(key, n) -> (n, d)`` (jit-able).
    standardize: learn at unit scale and compose back (see the module docstring).
    init_map: start from this map instead of a fresh initialisation (fine-tuning): its
      networks, parameters and standardisation are kept (``standardize`` is ignored);
      ``options`` may change the optimisation (learning rate, conjugate budget, ...) but not
      the networks.
    **options: the options every fit shares (:class:`neural_ot.train.FitOptions`: ``steps``
      (default 4000 when ``max_seconds`` is not given), ``max_seconds``, ``batch_size``
      (default from :func:`default_options`), ``seed``, ``checkpoint_dir``,
      ``checkpoint_every``, ``resume``, ``eval_fn(map, step)``, ``eval_every``,
      ``eval_seconds``, ``callback``, ``progress``, ``log_every``, ``max_param_norm``,
      ``dtype``, ``mesh``, ``axis_name``), and fields of :class:`W2Trainer` (potential,
      hidden, amortization, finetune,
      finetune_iters, learning_rate, b1, b2, init, ...); unset ones come from
      :func:`default_options` (for each raced potential its own). ``potential`` is
      ``"auto"`` (default), ``"mlp"`` or ``"icnn"``.

  Returns:
    A :class:`W2Map` with ``transport``, ``inverse``, ``w2`` (dual estimate on held-out
    samples, in the user's units), ``diagnostics``, ``save``. A ``RuntimeWarning`` says when the forward map
    sends held-out source samples more than 10x as far from the target's mean as the target's
    own spread (:func:`map_spread`): a diverged map, which training metrics cannot see (a
    non-convex ``potential="mlp"`` did this at D = 64 before ``batch_candidates``).

  Example:
    >>> import jax, neural_ot
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (512, 2))
    >>> m = neural_ot.fit_w2(x, 2.0 * x + 1.0, steps=5, batch_size=64, progress=False)
    >>> m.transport(x[:3]).shape
    (3, 2)
  """
  opts, options = train.FitOptions.from_kwargs("fit_w2", options)
  W2Trainer.check_options("fit_w2", options)
  if not isinstance(standardize, (bool, np.bool_)):
    raise TypeError(f"fit_w2: `standardize` must be True or False, got {standardize!r}.")
  steps, max_seconds, seed, dtype = opts.steps, opts.max_seconds, opts.seed, opts.dtype
  rng = np.random.default_rng(seed)
  src_fn, src_arr, src_mom, src_held, src_tag = _prepare(source, "source", dtype, rng, seed)
  tgt_fn, tgt_arr, tgt_mom, tgt_held, tgt_tag = _prepare(target, "target", dtype, rng, seed)
  d_src, d_tgt = src_mom.shape[1], tgt_mom.shape[1]
  if d_src != d_tgt:
    raise ValueError(f"fit_w2: `source` and `target` must have the same dimension, got "
                     f"d={d_src} and d={d_tgt}.")
  _check_spread(src_mom, "source")
  _check_spread(tgt_mom, "target")
  dim = d_src
  n_min = min(a.shape[0] for a in (src_arr, tgt_arr) if a is not None) if (
      src_arr is not None or tgt_arr is not None) else None
  chosen = options.pop("potential", "auto")
  if chosen == "auto" and "activation" in options:
    chosen = "icnn"  # an activation is an ICNN option
  if not (isinstance(chosen, str) and chosen in ("auto", "icnn", "mlp")):
    raise ValueError(f"fit_w2: `potential` must be 'auto', 'icnn' or 'mlp', got {chosen!r}.")
  race = chosen == "auto" and init_map is None and _race_worthwhile(steps, max_seconds)
  if chosen == "auto" and not race:
    chosen = None  # a short run or a fine-tune: the dimension's rule (default_options)
  candidates = _RACE if race else (chosen,)
  defaults = {c: default_options(dim, n_min, c) for c in candidates}
  first = defaults[candidates[0]]
  batch_size = first["batch_size"] if opts.batch_size is None else opts.batch_size
  opts = dataclasses.replace(opts, batch_size=batch_size)
  for arr, name in ((src_arr, "source"), (tgt_arr, "target")):
    if arr is not None and batch_size > arr.shape[0]:
      raise ValueError(f"fit_w2: `batch_size` ({batch_size}) is larger than `{name}`, which has "
                       f"{arr.shape[0]} training samples.")
  if init_map is not None:
    if not isinstance(init_map, W2Map):
      raise TypeError(f"fit_w2: `init_map` must be a W2Map, got {type(init_map).__name__}.")
    if init_map.dim != dim:
      raise ValueError(f"fit_w2: `init_map` maps dimension {init_map.dim}, the data have "
                       f"dimension {dim}.")
    fixed = sorted(set(options) & _NETWORK_FIELDS) + (
        ["potential"] if chosen not in (None, init_map.trainer.potential) else [])
    if fixed:
      raise ValueError(f"fit_w2: option(s) {fixed} would change the networks of `init_map`; "
                       f"only optimisation options can be given with it.")
    trainers = {None: dataclasses.replace(init_map.trainer, **options)}
  else:
    trainers = {c: W2Trainer(**{**{k: v for k, v in defaults[c].items() if k != "batch_size"},
                                **options}) for c in candidates}
    if race:
      trainers[_RECOVERY] = dataclasses.replace(trainers["mlp"], leak=_RECOVERY_LEAK)

  if init_map is not None:
    frame = init_map.frame
  else:
    frame = Frame.fit(src_mom, tgt_mom) if standardize else Frame.identity(dim)
  moments = None
  if init_map is None:
    moments = (gaussian.moments(frame.to_source(src_mom)),
               gaussian.moments(frame.to_target(tgt_mom)))
  key = jax.random.PRNGKey(seed)
  k_init, k_data = jax.random.split(key)
  horizon = steps if steps is not None else 1000  # re-planned from the measured step rate

  def start(trainer):
    use = moments if trainer.init == "gaussian" else None
    return trainer.init_state(k_init, dim, horizon, *(use or (None, None)), dtype=dtype,
                              params=None if init_map is None else init_map.params)

  sharding, placement = train.data_parallel(opts.mesh, opts.axis_name, batch_size, "fit_w2")
  sampler = PairSampler(int(batch_size), src_fn, tgt_fn, dtype.name, sharding)
  data = {"frame": frame.astype(dtype)}
  if src_arr is not None:
    data["x"] = jnp.asarray(src_arr)
  if tgt_arr is not None:
    data["y"] = jnp.asarray(tgt_arr)
  x_held = np.asarray(frame.to_source(src_held), dtype)
  y_held = np.asarray(frame.to_target(tgt_held), dtype)

  def fingerprint(trainer):
    return opts.fingerprint(
        as_config(trainer), dim=dim, standardize=standardize, source=src_tag, target=tgt_tag,
        init_map=None if init_map is None else train.data_fingerprint(
            *jax.tree.leaves(init_map.params)))

  def make_map(trainer, st, history=()):
    return W2Map(trainer, st.params, dim, float("nan"), tuple(history), frame)

  ckpt = opts.checkpoint_path

  def train_part(trainer, state, **kw):
    return train.run_fit(
        "fit_w2", opts, trainer, state, sampler, data, k_data, fingerprint=fingerprint(trainer),
        make_result=lambda st: make_map(trainer, st), show=("loss", "conj_iters"),
        placement=placement,
        advice="Try a smaller `learning_rate`, `init='gaussian'` or standardised data", **kw)

  t0 = time.perf_counter()
  history: list = []
  choice, race_states = None, {}
  if race:
    trainer, state, history, choice, race_states = _race(
        trainers, start, train_part, ckpt, fingerprint, x_held, y_held, steps, max_seconds,
        opts.resume, opts.progress)
    left = None if max_seconds is None else max(max_seconds - (time.perf_counter() - t0), 1e-3)
  else:
    trainer = next(iter(trainers.values()))
    state, left = start(trainer), max_seconds
  start_params = start(trainer).params if trainer.init == "gaussian" and init_map is None else None
  if race and opts.checkpoint_dir and opts.resume and not os.path.isfile(ckpt(_CKPT)):
    _copy_checkpoint(ckpt(f"race-{choice['chosen']}.msgpack"), ckpt(_CKPT))
  if steps is None or int(state.step) < steps:
    state, history = train_part(trainer, state, max_seconds=left, checkpoint=_CKPT,
                                history=history)
  mp = make_map(trainer, state, history)
  diag = diagnostics.diagnose(trainer, mp.params, start_params, x_held, y_held, choice)
  if choice is not None:
    # A late stall (measured: an MLP that ran 79,000 steps at its peak rate ended at its start)
    # can leave the winner worse than a race candidate: return the lowest held-out dual seen.
    others = {n: r for n, r in choice["candidates"].items() if n != choice["chosen"]
              and n in race_states and not r["cut_off"] and r["dual"] < diag.dual_end}
    if others:
      name = min(others, key=lambda n: others[n]["dual"])
      trainer, state = trainers[name], race_states[name][0]
      mp = make_map(trainer, state, race_states[name][1])
      choice = {**choice, "chosen": name, "fallback_from": choice["chosen"],
                "fallback_dual": diag.dual_end}
      diag = diagnostics.diagnose(trainer, mp.params, start(trainer).params, x_held, y_held,
                                  choice)
  _warn_if_map_diverged(mp, src_held, tgt_held)
  diagnostics.warn_if_stalled(diag)
  return dataclasses.replace(mp, w2=dual_w2(mp, src_held, tgt_held), diagnostics=diag)


# The model race of potential="auto": each candidate trains for this share of the run (steps or
# seconds) from the same Gaussian start, and the one with the lowest held-out dual goes on.
_RACE = ("mlp", "icnn")
# The restart of an MLP whose network was cut off in the race (the stall of issue 27: its last
# hidden layer died at a high rate): leak=0.02 kept it learning at D = 48 and a rate of 2e-2
# (1000 steps: forward L2-UVP 2.87 % against 6.68 % stalled), but costs 1.1-1.3x at equal steps
# on healthy runs (Mix3toMix10 D = 8, ridges-gmm D = 32), so it is not the default.
_RECOVERY = "mlp-leak"
_RECOVERY_LEAK = 0.02
_RACE_SHARE = 0.1
_RACE_MIN_STEPS, _RACE_MIN_SECONDS = 2000, 60.0


def _race_worthwhile(steps, max_seconds) -> bool:
  """A race needs a run long enough for its tenth to say something (measured: the held-out dual
  ordered the two potentials as their final L2-UVP did after 300 steps at D = 16)."""
  if steps is not None and steps < _RACE_MIN_STEPS:
    return False
  return max_seconds is None or max_seconds >= _RACE_MIN_SECONDS


def _race(trainers, start, train_part, ckpt, fingerprint, x_held, y_held, steps, max_seconds,
          resume, progress):
  """Train each candidate for ``_RACE_SHARE`` of the run and keep the one with the lowest
  held-out dual (a candidate whose network is cut off by inactive units is passed over; an MLP
  cut off is restarted once with ``leak``, whose units cannot die). The result is
  recorded in ``race.json`` beside the checkpoints, so a resumed run does not race again."""
  record = ckpt("race.json")
  key = hashlib.sha256("".join(fingerprint(t) for t in trainers.values()).encode()).hexdigest()
  done = None
  if record and resume and os.path.isfile(record):
    with open(record, encoding="utf-8") as fh:
      saved = json.load(fh)
    if saved.get("fingerprint") == key:
      done = saved["choice"]
  results, states, hists = {}, {}, {}
  if done is None:
    for name, trainer in trainers.items():
      if name == _RECOVERY and not results.get("mlp", {}).get("cut_off"):
        continue  # the restart runs only when the MLP's network was cut off
      if steps is not None:
        kw = dict(steps=max(int(steps * _RACE_SHARE), 1), max_seconds=None)
      else:
        kw = dict(steps=None, max_seconds=_RACE_SHARE * max_seconds,
                  plan_seconds=(1.0 - _RACE_SHARE * (len(_RACE) - 1)) * max_seconds)
      state, hist = train_part(trainer, start(trainer), checkpoint=f"race-{name}.msgpack", **kw)
      fx, fcy, _ = diagnostics.heldout_dual_terms(trainer, state.params, x_held, y_held)
      share, per = diagnostics.inactive_units(trainer, state.params["f"], x_held)
      results[name] = {"dual": float(jnp.mean(fx) + jnp.mean(fcy)), "inactive_share": share,
                       "cut_off": diagnostics.cut_off(share, per) and not trainer.leak,
                       "steps": int(state.step)}
      states[name], hists[name] = state, hist
    live = [n for n in results if not results[n]["cut_off"]]
    best = min(live or list(results), key=lambda n: results[n]["dual"])
    done = {"candidates": results, "chosen": best}
    if record:
      io.write_json_atomic(record, {"fingerprint": key, "choice": done})
  best = done["chosen"]
  trainer = trainers[best]
  if best in states:
    state, hist = states[best], hists[best]
  else:  # resumed: the winner's race checkpoint (or the main one) carries its state
    state, hist = start(trainer), []
  if progress:
    figures = ", ".join(f"{n} {r['dual']:.6g}" for n, r in done["candidates"].items())
    sys.stderr.write(f"[fit_w2] potential='auto': held-out dual after the race: {figures}; "
                     f"continuing with {best!r}\n")
  return trainer, state, hist, done, {n: (states[n], hists[n]) for n in states}


def _copy_checkpoint(src, dst):
  if src and os.path.isfile(src):
    with open(src, "rb") as fh:
      io.write_bytes_atomic(dst, fh.read())


# A forward map whose outputs on held-out source samples spread this many times further from the
# target's mean than the target's own samples has diverged (L2-UVP of order 10^4 % or more).
_DIVERGED_SPREAD = 10.0


def map_spread(mp: W2Map, x, y) -> float:
  """RMS distance of ``T(x)`` from the mean of ``y``, over the RMS spread of ``y`` itself: about 1
  for a map that pushes ``x``'s measure onto ``y``'s; far above it for a diverged map.
  ``x``: source samples ``(n, d)``; ``y``: target samples ``(m, d)`` with ``m >= 2``."""
  y = np.asarray(_validation.check_points(y, "y"), np.float64)
  if y.shape[0] < 2 or y.shape[1] != mp.dim:
    raise ValueError(f"map_spread: `y` must have shape (m, {mp.dim}) with m >= 2, got "
                     f"{tuple(y.shape)}.")
  tx = np.asarray(mp.transport(x), np.float64)
  my = y.mean(0)
  spread_y = np.sqrt(np.mean(np.sum((y - my) ** 2, -1)))
  return float(np.sqrt(np.mean(np.sum((tx - my) ** 2, -1))) / max(spread_y, 1e-30))


def _warn_if_map_diverged(mp, x, y):
  """Training metrics cannot see where the conjugate never looks: a non-convex potential can be
  pushed down at source points far from every argmax (measured: ``potential="mlp"`` at D = 64 on
  the W2 benchmark, forward L2-UVP 5.7e7 % after a run that reported nothing wrong)."""
  ratio = map_spread(mp, x, y)
  if not ratio <= _DIVERGED_SPREAD:
    warnings.warn(
        f"fit_w2: the learned map sends held-out source samples {ratio:.3g}x as far from the "
        f"target's mean as the target's own spread; the map has diverged. "
        + ("A non-convex potential (potential='mlp') can do this; use potential='icnn' "
           "(convex) or a smaller `learning_rate`." if mp.trainer.potential == "mlp" else
           "Try a smaller `learning_rate`."), RuntimeWarning, stacklevel=3)


@functools.partial(jax.jit, static_argnums=0)
def _dual_terms(trainer, params, x, y):
  f = trainer.potential_fn(params["f"])
  solver = dataclasses.replace(trainer.solver, tol=1e-5, max_iters=100)
  res = solver(f, y, trainer.predict(params["g"], y))
  return jax.vmap(f)(x).mean(), res.value.mean()


def dual_w2(mp: W2Map, x, y) -> float:
  """The dual estimate of ``W2^2`` (cost ``|x - y|^2``) from samples ``x ~ P``, ``y ~ Q``:
  ``E|x|^2 + E|y|^2 - 2 (E f(x) + E f*(y))`` with ``f*`` solved to ``|grad| < 1e-5``, in the
  user's units (the map's standardisation is undone in closed form)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  fr = mp.frame
  xs, ys = fr.to_source(jnp.asarray(x, mp.dtype)), fr.to_target(jnp.asarray(y, mp.dtype))
  ef, efc = (float(v) for v in _dual_terms(mp.trainer, mp.params, xs, ys))
  mx, sx, my, sy = (np.asarray(v, np.float64) for v in (fr.mx, fr.sx, fr.my, fr.sy))
  # f(x) = sx sy f'((x - mx)/sx) + <my, x>;  f*(y) = <mx, y - my> + sx sy f'*((y - my)/sy).
  dual = float(sx * sy) * (ef + efc) + float(my @ x.mean(0)) + float(mx @ (y.mean(0) - my))
  return float(np.mean(np.sum(x * x, -1)) + np.mean(np.sum(y * y, -1)) - 2 * dual)
