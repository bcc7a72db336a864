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
  ended no better than its Gaussian start, with its network cut off by inactive units, or with
  its images of held-out source samples farther from the held-out targets than the start's
  (an energy distance: no conjugate solve, which an unsolved one would flatter; where the
  held-out conjugate is solved and the held-out dual gained clearly, the dual decides); in the
  last case, and where the held-out dual is worse than the start's, the start is returned.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot import _validation, train
from neural_ot.geometry.costs import SqEuclidean, TICost
from neural_ot.train import TrainingDivergedError
from neural_ot.w2 import diagnostics, race
from neural_ot.w2.defaults import START_HORIZON, default_options
from neural_ot.w2.maps import Frame, W2Map
from neural_ot.w2.start import N_HELD_OUT, held_out_rows, moment_rows, start_moments
from neural_ot.w2.trainer import W2Trainer, as_config

__all__ = ["fit_w2", "fit_map", "transport_cost", "default_options", "training_rows", "PairSampler", "dual_w2",
           "TrainingDivergedError"]

_CKPT = "checkpoint.msgpack"
_NETWORK_FIELDS = frozenset({"potential", "hidden", "activation", "strong_convexity",
                             "predictor_hidden", "context_dim", "context_hidden", "context_mode"})
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


def _check_sampler(fn, name, n=8, seed=0, who="fit_w2"):
  """``fn(PRNGKey(seed), n)`` as a numpy array, checked: real numbers, shape ``(n, d)``, finite."""
  try:
    probe = np.asarray(fn(jax.random.PRNGKey(seed), n))
  except TypeError as exc:  # most often the signature: not sample(key, n)
    raise TypeError(f"{who}: sampler `{name}` failed when called as `{name}(key, {n})`: "
                    f"{exc}") from exc
  if probe.dtype.kind not in "biuf":
    raise TypeError(f"{who}: sampler `{name}(key, n)` must return real numbers, it returned "
                    f"dtype {probe.dtype}.")
  if probe.ndim != 2 or probe.shape[0] != n:
    raise ValueError(f"{who}: sampler `{name}(key, n)` must return an array of shape (n, d); "
                     f"for n={n} it returned shape {probe.shape}.")
  if not np.all(np.isfinite(probe)):
    raise ValueError(f"{who}: sampler `{name}` returned non-finite values (NaN or inf) for "
                     f"n={n}.")
  return probe


def _check_spread(arr, name, who="fit_w2"):
  # All rows one point (up to rounding, e.g. a large offset in float32): the standardisation
  # and the Gaussian start divide by a zero spread, and training diverges at its first step.
  a64 = arr.astype(np.float64)  # no overflow in the range of float32 data near its max
  if np.max(np.ptp(a64, axis=0)) <= 4 * np.finfo(arr.dtype).eps * np.max(np.abs(a64)):
    raise ValueError(f"{who}: all samples of `{name}` are the same point (up to rounding); "
                     f"a W2 map needs measures with some spread.")


def _prepare(data, name: str, dtype, rng, seed, who="fit_w2"):
  """``(fn or None, train array or None, moment sample, held-out sample, fingerprint part)``."""
  if callable(data):
    probe = _check_sampler(data, name, who=who)
    moment = _check_sampler(data, name, moment_rows(probe.shape[1]), 10 ** 6 + seed,
                            who).astype(dtype)
    held = _check_sampler(data, name, held_out_rows(probe.shape[1]), 2 * 10 ** 6 + seed,
                          who).astype(dtype)
    tag = f"sampler {getattr(data, '__qualname__', type(data).__name__)} " + \
        train.data_fingerprint(probe.astype(np.float32))
    return data, None, moment, held, tag
  try:
    arr = np.asarray(data)
    if np.iscomplexobj(arr):  # the cast would drop the imaginary part with only a warning
      raise TypeError(f"{who}: `{name}` must be real, got complex dtype {arr.dtype}.")
    arr = arr.astype(dtype)
  except (TypeError, ValueError) as exc:
    if str(exc).startswith(f"{who}:"):
      raise
    raise TypeError(f"{who}: `{name}` must be an array (n, d) or a sampler "
                    f"`sample(key, n) -> (n, d)`, got {type(data).__name__}.") from exc
  if arr.ndim == 1:
    arr = arr[:, None]
  if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
    raise ValueError(f"{who}: `{name}` must have shape (n, d) with n > 0 and d > 0, got "
                     f"{arr.shape}.")
  if not np.all(np.isfinite(arr)):
    bad = int(np.sum(~np.all(np.isfinite(arr), axis=1)))
    raise ValueError(f"{who}: `{name}` has {bad} row(s) with NaN or inf values.")
  if arr.shape[0] < 2:
    raise ValueError(f"{who}: `{name}` needs at least 2 samples, got {arr.shape[0]}.")
  tag = "array " + train.data_fingerprint(arr)
  perm = rng.permutation(arr.shape[0])
  n_held = arr.shape[0] - training_rows(arr.shape[0])
  held, rest = arr[perm[:n_held]], arr[perm[n_held:]]
  if n_held == 0:  # too few rows to hold any out: the estimate is in-sample (documented)
    held = rest
  return None, rest, rest[:moment_rows(arr.shape[1])], held, tag


def training_rows(n: int) -> int:
  """How many of ``n`` array rows ``fit_w2`` trains on: it holds out ``min(4096, n // 5)``
  at random for the W2 estimate when ``n >= 50`` (fewer rows: none, the estimate is then
  in-sample)."""
  return n - (min(N_HELD_OUT, n // 5) if n >= 50 else 0)


@dataclasses.dataclass
class _Pair:
  """The two measures of a fit, checked: per side a sampler or training rows, a sample for the
  moments, a held-out sample and a fingerprint part."""

  src_fn: Callable | None
  src_arr: np.ndarray | None
  src_mom: np.ndarray
  src_held: np.ndarray
  src_tag: str
  tgt_fn: Callable | None
  tgt_arr: np.ndarray | None
  tgt_mom: np.ndarray
  tgt_held: np.ndarray
  tgt_tag: str

  @classmethod
  def prepare(cls, source, target, dtype, seed, who="fit_w2") -> "_Pair":
    rng = np.random.default_rng(seed)
    pair = cls(*_prepare(source, "source", dtype, rng, seed, who),
               *_prepare(target, "target", dtype, rng, seed, who))
    d_src, d_tgt = pair.src_mom.shape[1], pair.tgt_mom.shape[1]
    if d_src != d_tgt:
      raise ValueError(f"{who}: `source` and `target` must have the same dimension, got "
                       f"d={d_src} and d={d_tgt}.")
    _check_spread(pair.src_mom, "source", who)
    _check_spread(pair.tgt_mom, "target", who)
    return pair

  @property
  def dim(self) -> int:
    return self.src_mom.shape[1]

  @property
  def n_min(self) -> int | None:
    """Training rows of the smaller array side (``None`` when both are samplers)."""
    rows = [a.shape[0] for a in (self.src_arr, self.tgt_arr) if a is not None]
    return min(rows) if rows else None

  def check_batch(self, batch_size: int, who: str = "fit_w2") -> None:
    for arr, name in ((self.src_arr, "source"), (self.tgt_arr, "target")):
      if arr is not None and batch_size > arr.shape[0]:
        raise ValueError(f"{who}: `batch_size` ({batch_size}) is larger than `{name}`, which "
                         f"has {arr.shape[0]} training samples.")

  def device_data(self, frame) -> dict:
    """The data argument of :class:`PairSampler`: the frame and the training rows."""
    data = {"frame": frame}
    if self.src_arr is not None:
      data["x"] = jnp.asarray(self.src_arr)
    if self.tgt_arr is not None:
      data["y"] = jnp.asarray(self.tgt_arr)
    return data


def fit_w2(source, target, *, standardize: bool = True, init_map: W2Map | None = None,
           **options) -> W2Map:
  """Learn the W2 optimal map ``T = grad f`` from ``source`` to ``target``.

  Which potential fits the data best depends on the data, not only on the dimension (on the
  known-map families of :mod:`neural_ot.w2bench.families` the convex ICNN was 3x better on one
  and 25x worse on another at the same D). So by default (``potential="auto"``) a run of at
  least 2000 steps or 60 seconds starts with a race: the non-convex MLP and the ICNN each
  train for a tenth of the run from the same Gaussian start, and the one with the lower
  held-out dual objective (no known map needed) goes on (where the MLP is the dimension's
  default, the ICNN needs a clear lead: :func:`neural_ot.w2.race.keeps_mlp`); a shorter run or
  a fine-tune takes the dimension's rule of :func:`default_options`. The Gaussian start is the
  OT map between the measures' moments, the source's nearly flat directions floored
  (:func:`start_moments`). ``potential="mlp"`` or ``"icnn"`` fixes it.
  The race also reads how well the winner's conjugate was solved: above 16 dimensions an MLP
  whose solves ended far from converged (:func:`neural_ot.w2.race.unsolved`; on the tune
  families, log-sum-exp potentials, whose maps are nearly piecewise constant) goes on with
  twice the solver steps (``choice["finetune_iters"]``; the map's inverse then defaults to that
  solve too) and, from 33 to 64 dimensions, twice the hidden widths (``choice["hidden"]``; not
  where ``hidden`` is given), restarted from its Gaussian start.

  At the end the map carries :class:`~neural_ot.w2.diagnostics.FitDiagnostics`
  (``map.diagnostics``): the held-out dual of the Gaussian start and of the map, the share of
  inactive hidden units, conjugate residuals and the race's figures. A fit that ended no
  better than its start, or with most units inactive, warns (``RuntimeWarning``) and says so
  there; one whose held-out dual ended above the start's returns the start (the Gaussian map
  between the measures' moments) in its place (``diagnostics.returned_start``).

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
  return _fit("fit_w2", source, target, None, standardize, init_map, options)


def fit_map(source, target, *, cost: TICost, standardize: bool = True,
            init_map: W2Map | None = None, **options) -> W2Map:
  """Learn the optimal map for a translation-invariant cost ``c(x, y) = h(x - y)``.

  The neural dual of :func:`fit_w2` with the cost's c-transform: the network is
  ``psi = 0.5 |x|^2 - f`` for the dual potential ``f``; each step predicts the minimiser of
  ``h(x - y) - f(x)`` for every target sample with the amortized predictor and refines it with
  a few batched solver steps (L-BFGS; proximal gradient when ``h`` has an ``l1`` part, as
  :class:`~neural_ot.ElasticL1`); the map is ``T(x) = x - grad h*(grad f(x))`` (Gangbo and
  McCann 1996) and the inverse the refined minimiser. Both measures share one
  standardisation (a common centre and scale; the cost is rescaled with it), the potential is
  raced and diagnosed as in :func:`fit_w2`, and it starts from the Gaussian W2 map.

  For ``cost=SqEuclidean()`` the optimal map is the W2 map: this is :func:`fit_w2` (the same
  map, bit for bit).

  Args:
    source, target: arrays ``(n, d)`` or samplers ``sample(key, n) -> (n, d)``.
    cost: a :class:`~neural_ot.TICost` with strictly convex ``h``: ``ElasticL1(gamma)``,
      ``PNorm(2, p)`` with ``p > 1``, ``Mahalanobis(A)``, ``TranslationInvariant(h)`` (``grad
      h*`` by a numerical solve), ``SqEuclidean()``.
    standardize, init_map, **options: as in :func:`fit_w2`.

  Returns:
    A :class:`W2Map` whose ``transport`` is ``T``, ``inverse`` its inverse and ``w2`` the
    transport cost ``E h(x - T(x))`` on held-out source samples (user units).

  Example:
    >>> import jax, neural_ot
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (512, 2))
    >>> m = neural_ot.fit_map(x, x + 1.0, cost=neural_ot.ElasticL1(0.1), steps=5,
    ...                       batch_size=64, progress=False)
    >>> m.transport(x[:3]).shape
    (3, 2)
  """
  if not isinstance(cost, TICost):
    raise TypeError(f"fit_map: `cost` must be a translation-invariant cost (neural_ot.TICost: "
                    f"ElasticL1, PNorm(2, p), Mahalanobis, TranslationInvariant(h), "
                    f"SqEuclidean), got {type(cost).__name__}.")
  if isinstance(cost, SqEuclidean):
    return _fit("fit_map", source, target, None, standardize, init_map, options)
  return _fit("fit_map", source, target, cost, standardize, init_map, options)


def transport_cost(mp: W2Map, cost: TICost, x) -> float:
  """``E h(x - T(x))`` over the rows of ``x`` (user units): the cost of transporting them by
  the map (an estimate of the OT cost when ``T`` pushes ``x``'s measure onto the target)."""
  x = np.asarray(x, np.float64)
  tx = np.asarray(mp.transport(x), np.float64)
  return float(np.mean(np.asarray(jax.vmap(cost.h)(jnp.asarray(x - tx)), np.float64)))


def _fit(who, source, target, cost, standardize, init_map, options) -> W2Map:
  """The body of :func:`fit_w2` (``cost=None``) and :func:`fit_map` (a :class:`TICost`)."""
  opts, options = train.FitOptions.from_kwargs(who, options)
  W2Trainer.check_options(who, options, exclude=("cost",))
  if not isinstance(standardize, (bool, np.bool_)):
    raise TypeError(f"{who}: `standardize` must be True or False, got {standardize!r}.")
  t_call = time.perf_counter()  # max_seconds counts from the call (data checks included)
  steps, max_seconds, seed, dtype = opts.steps, opts.max_seconds, opts.seed, opts.dtype
  pair = _Pair.prepare(source, target, dtype, seed, who)
  dim = pair.dim
  if cost is not None:  # checked on the data's dimension, once the data are checked
    cost.check_for_maps(dim, who)
  chosen = options.pop("potential", "auto")
  if chosen == "auto" and "activation" in options:
    chosen = "icnn"  # an activation is an ICNN option
  if not (isinstance(chosen, str) and chosen in ("auto", "icnn", "mlp")):
    raise ValueError(f"{who}: `potential` must be 'auto', 'icnn' or 'mlp', got {chosen!r}.")
  l1_cost = cost is not None and cost.l1_weight > 0
  subquadratic = cost is not None and cost.growth(dim) < 1.99
  if subquadratic and chosen == "auto":
    chosen = "mlp"  # with psi's quadratic fixed at 0.5 |x|^2 an ICNN cannot contract
  racing = chosen == "auto" and init_map is None and race.worthwhile(steps, max_seconds)
  if chosen == "auto" and not racing:
    chosen = None  # a short run or a fine-tune: the dimension's rule (default_options)
  candidates = race.CANDIDATES if racing else (chosen,)
  defaults = {c: default_options(dim, pair.n_min, c, l1_cost=l1_cost, subquadratic=subquadratic)
              for c in candidates}
  batch_size = defaults[candidates[0]]["batch_size"] if opts.batch_size is None else \
      opts.batch_size
  opts = dataclasses.replace(opts, batch_size=batch_size)
  pair.check_batch(batch_size, who)
  if init_map is not None:
    trainers = {None: _finetune_trainer(init_map, dim, chosen, options, who)}
    if init_map.trainer.cost != (None if cost is None else cost.scaled(init_map.frame.sx)):
      raise ValueError(f"{who}: `init_map` was trained for another cost "
                       f"({init_map.trainer.cost!r}); fine-tune it with the cost it has.")
    frame = init_map.frame
  else:
    if cost is None:  # W2: each measure in its own frame (positive scalings keep maps optimal)
      frame = Frame.fit(pair.src_mom, pair.tgt_mom) if standardize else Frame.identity(dim)
    else:  # h(x - y): one frame for both, the cost rescaled with it
      frame = Frame.common(pair.src_mom, pair.tgt_mom) if standardize else Frame.identity(dim)
    std_cost = None if cost is None else cost.scaled(float(frame.sx))
    trainers = {c: W2Trainer(**{**{k: v for k, v in defaults[c].items() if k != "batch_size"},
                                **options, "cost": std_cost}) for c in candidates}
    if racing:
      trainers[race.RECOVERY] = dataclasses.replace(trainers["mlp"], leak=race.RECOVERY_LEAK)
  if opts.mesh is not None:  # a batch split over devices: whole-batch line-search retries
    trainers = {k: dataclasses.replace(t, sharded=True) for k, t in trainers.items()}
  moments = None if init_map is not None else start_moments(frame.to_source(pair.src_mom),
                                                             frame.to_target(pair.tgt_mom))
  k_init, k_data = jax.random.split(jax.random.PRNGKey(seed))
  horizon = steps if steps is not None else START_HORIZON  # re-planned from the step rate

  starts = {}  # a start is built once per trainer (the diagnostics compare with it again)

  def start(trainer):
    if trainer not in starts:
      use = moments if trainer.init == "gaussian" else None
      starts[trainer] = trainer.init_state(k_init, dim, horizon, *(use or (None, None)),
                                           dtype=dtype,
                                           params=None if init_map is None else init_map.params)
    return starts[trainer]

  sharding, placement = train.data_parallel(opts.mesh, opts.axis_name, batch_size, who)
  sampler = PairSampler(int(batch_size), pair.src_fn, pair.tgt_fn, dtype.name, sharding)
  data = pair.device_data(frame.astype(dtype))
  x_held = np.asarray(frame.to_source(pair.src_held), dtype)
  y_held = np.asarray(frame.to_target(pair.tgt_held), dtype)

  def fingerprint(trainer):
    return opts.fingerprint(
        as_config(trainer), dim=dim, standardize=standardize, source=pair.src_tag,
        target=pair.tgt_tag, init_map=None if init_map is None else train.data_fingerprint(
            *jax.tree.leaves(init_map.params)))

  def make_map(trainer, st, history=()):
    return W2Map(trainer, st.params, dim, float("nan"), tuple(history), frame)

  def train_part(trainer, state, **kw):
    return train.run_fit(
        who, opts, trainer, state, sampler, data, k_data, fingerprint=fingerprint(trainer),
        make_result=lambda st: make_map(trainer, st), show=("loss", "conj_iters"),
        placement=placement,
        advice="Try a smaller `learning_rate`, `init='gaussian'` or standardised data", **kw)

  t0 = time.perf_counter()
  if max_seconds is not None:  # what the probes, moments and held-out draws took
    max_seconds = max(max_seconds - (t0 - t_call), 1e-3)
  history, choice, race_states = [], None, {}
  ckpt = opts.checkpoint_path
  if racing:
    trainer, state, history, choice, race_states = race.race(
        trainers, start, train_part, ckpt, fingerprint, x_held, y_held, steps, max_seconds,
        opts.resume, opts.progress, widen="hidden" not in options)
    left = None if max_seconds is None else max(max_seconds - (time.perf_counter() - t0), 1e-3)
    # (a widened winner restarts from its start: the race's narrower network is not copied)
    if (opts.checkpoint_dir and opts.resume and not os.path.isfile(ckpt(_CKPT))
        and not choice.get("hidden")):
      race.copy_checkpoint(ckpt(f"race-{choice['chosen']}.msgpack"), ckpt(_CKPT),
                           fingerprint(trainer))
  else:
    trainer = next(iter(trainers.values()))
    state, left = start(trainer), max_seconds
  held_starts = {}

  def start_terms(t):  # the Gaussian start's held-out dual terms, once per trainer
    if t.init != "gaussian" or init_map is not None:
      return None
    if t not in held_starts:
      held_starts[t] = jax.block_until_ready(
          diagnostics.heldout_dual_terms(t, start(t).params, x_held, y_held))
    return held_starts[t]

  # The diagnostics after training evaluate the map on the held-out rows as this does the
  # start (compiled once): its time is kept out of the training budget (at most a quarter of
  # it, so a short budget still trains), so the whole call stays near max_seconds (at D = 64
  # the evaluations after training took ~20 s of a 300 s run before).
  t_eval = time.perf_counter()
  start_terms(trainer)
  if left is not None:
    left = max(left - min(time.perf_counter() - t_eval, 0.25 * left), 1e-3)
  if steps is None or int(state.step) < steps:
    state, history = train_part(trainer, state, max_seconds=left, checkpoint=_CKPT,
                                history=history)
  mp = make_map(trainer, state, history)
  gaussian_start = lambda t: start(t).params if t.init == "gaussian" and init_map is None \
      else None
  # without a Gaussian start the pushforward check compares with the trainer's own start: the
  # identity (|x - y|^p costs) or the map a fine-tune began from
  own_start = lambda t: start(t).params
  reference = lambda t: ("map it was fine-tuned from" if init_map is not None else
                         "Gaussian start" if t.init == "gaussian" else f"{t.init} start")
  terms = diagnostics.heldout_dual_terms(trainer, mp.params, x_held, y_held)
  diag = diagnostics.diagnose(trainer, mp.params, gaussian_start(trainer), x_held, y_held, choice,
                              terms, start_terms(trainer), own_start(trainer), reference(trainer))
  back = race.fall_back(choice, race_states, diag.dual_end, diag.push_flagged) if racing else None
  if back is not None:
    name, choice = back
    trainer, (state, hist) = trainers[name], race_states[name]
    mp = make_map(trainer, state, hist)
    terms = diagnostics.heldout_dual_terms(trainer, mp.params, x_held, y_held)
    diag = diagnostics.diagnose(trainer, mp.params, gaussian_start(trainer), x_held, y_held,
                                choice, terms, start_terms(trainer), own_start(trainer),
                                reference(trainer))
  kept = diagnostics.keep_start(diag)
  if kept is not None:  # the trained map is worse than its start: return the start
    mp = make_map(trainer, start(trainer), mp.history)
    diag, terms = kept, start_terms(trainer)
    if terms is None:  # no Gaussian start: the identity, or the map a fine-tune began from
      terms = diagnostics.heldout_dual_terms(trainer, mp.params, x_held, y_held)
  _warn_if_map_diverged(mp, pair.src_held, pair.tgt_held, who)
  diagnostics.warn_if_stalled(diag, who, trainer)
  # the diagnostics' local solve is the estimate's conjugate (the same held-out rows)
  estimate = _dual_w2_from(mp, pair.src_held, pair.tgt_held, terms.fx, terms.local) if (
      cost is None) else transport_cost(mp, cost, pair.src_held)
  return dataclasses.replace(mp, w2=estimate, diagnostics=diag)


def _finetune_trainer(init_map, dim, chosen, options, who="fit_w2"):
  """``init_map``'s trainer with the optimisation ``options`` changed (checked: a fine-tune
  keeps the networks)."""
  if not isinstance(init_map, W2Map):
    raise TypeError(f"{who}: `init_map` must be a W2Map, got {type(init_map).__name__}.")
  if init_map.dim != dim:
    raise ValueError(f"{who}: `init_map` maps dimension {init_map.dim}, the data have "
                     f"dimension {dim}.")
  fixed = sorted(set(options) & _NETWORK_FIELDS) + (
      ["potential"] if chosen not in (None, init_map.trainer.potential) else [])
  if fixed:
    raise ValueError(f"{who}: option(s) {fixed} would change the networks of `init_map`; "
                     f"only optimisation options can be given with it.")
  return dataclasses.replace(init_map.trainer, **options)


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


def _warn_if_map_diverged(mp, x, y, who="fit_w2"):
  """Training metrics cannot see where the conjugate never looks: a non-convex potential can be
  pushed down at source points far from every argmax (measured: ``potential="mlp"`` at D = 64 on
  the W2 benchmark, forward L2-UVP 5.7e7 % after a run that reported nothing wrong)."""
  ratio = map_spread(mp, x, y)
  if not ratio <= _DIVERGED_SPREAD:
    warnings.warn(
        f"{who}: the learned map sends held-out source samples {ratio:.3g}x as far from the "
        f"target's mean as the target's own spread; the map has diverged. "
        + ("A non-convex potential (potential='mlp') can do this; use potential='icnn' "
           "(convex) or a smaller `learning_rate`." if mp.trainer.potential == "mlp" else
           "Try a smaller `learning_rate`."), RuntimeWarning, stacklevel=3)


def dual_w2(mp: W2Map, x, y) -> float:
  """The dual estimate of ``W2^2`` (cost ``|x - y|^2``) from samples ``x ~ P``, ``y ~ Q``:
  ``E|x|^2 + E|y|^2 - 2 (E f(x) + E f*(y))`` with ``f*`` solved to ``|grad| < 1e-5``, in the
  user's units (the map's standardisation is undone in closed form)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  fr = mp.frame
  xs, ys = fr.to_source(jnp.asarray(x, mp.dtype)), fr.to_target(jnp.asarray(y, mp.dtype))
  terms = diagnostics.heldout_dual_terms(mp.trainer, mp.params, xs, ys, discrete=False)
  return _dual_w2_from(mp, x, y, terms.fx, terms.local)


def _dual_w2_from(mp: W2Map, x, y, fx, fcy) -> float:
  """:func:`dual_w2` from the standardised terms ``f(x_i)``, ``f*(y_j)`` of the rows ``x, y``."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  fr = mp.frame
  ef, efc = float(jnp.mean(fx)), float(jnp.mean(fcy))
  mx, sx, my, sy = (np.asarray(v, np.float64) for v in (fr.mx, fr.sx, fr.my, fr.sy))
  # f(x) = sx sy f'((x - mx)/sx) + <my, x>;  f*(y) = <mx, y - my> + sx sy f'*((y - my)/sy).
  dual = float(sx * sy) * (ef + efc) + float(my @ x.mean(0)) + float(mx @ (y.mean(0) - my))
  return float(np.mean(np.sum(x * x, -1)) + np.mean(np.sum(y * y, -1)) - 2 * dual)
