"""Meta OT (Amos, Cohen, Luise, Redko 2023): predict entropic dual potentials across problems.

For histograms ``a, b`` on a fixed support ``x`` (cost ``C_ij = |x_i - x_j|^2``), a network
predicts ``f = f_phi(a, b)``; ``g`` is its exact c-transform
``g_j = -eps log sum_i a_i exp((f_i - C_ij) / eps)``, so the column marginal is exact and the
dual is ``D = <f, a> + <g, b>``. Training maximises ``E D`` over a distribution of pairs: no
solver in the loop. At test time the prediction warm-starts Sinkhorn.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from neural_ot import _validation, io, train
from neural_ot.geometry import PointCloud, SqEuclidean
from neural_ot.meta.starts import coarsen_or_none, gaussian_init, multiscale_start
from neural_ot.sinkhorn import Sinkhorn, dual_objective
from neural_ot.train import TrainState, cosine_schedule

__all__ = ["MetaOT", "MetaTrainer", "fit_meta", "load_meta", "c_transform", "dual_value",
           "gaussian_init", "support_geometry"]

_FORMAT = "neural_ot.MetaOT/1"


class _Net(nn.Module):
  n: int
  hidden: Sequence[int]

  @nn.compact
  def __call__(self, a, b):
    # The network reads log-weights: a zero bin (accepted by the input checks) would be
    # log 0 = -inf and NaN potentials and gradients, in prediction and in training. Floored
    # below the 1e-6 floor of the training families (meta.histograms), positive inputs are unchanged;
    # the c-transform and the dual keep the true weights (a zero bin carries no mass there).
    a, b = jnp.maximum(a, _NET_FLOOR), jnp.maximum(b, _NET_FLOOR)
    z = jnp.concatenate([jnp.log(a * self.n), jnp.log(b * b.shape[-1])], -1)
    for w in self.hidden:
      z = jax.nn.gelu(nn.Dense(w)(z))
    return nn.Dense(self.n, kernel_init=nn.initializers.zeros)(z)  # zeros at init


_NET_FLOOR = 1e-7


def support_geometry(support) -> PointCloud:
  """The geometry of histograms on ``support: (n, d)``: cost ``|x_i - x_j|^2``, dense."""
  support = jnp.asarray(support)
  return PointCloud.create(support, support, SqEuclidean(), online=False)


def _as_geometry(geom, caller):
  if not isinstance(geom, PointCloud):
    raise TypeError(f"{caller}: `geom` must be a neural_ot.PointCloud (e.g. "
                    "neural_ot.meta.support_geometry(support)), got "
                    f"{type(geom).__name__}{getattr(geom, 'shape', '')}.")
  return geom


def c_transform(f, a, geom, eps):
  """Exact Sinkhorn half-step ``g_j = -eps log sum_i a_i exp((f_i - C_ij) / eps)``: the
  solver's :meth:`~neural_ot.Sinkhorn.c_transform` (the geometry's log-sum-exp).

  Args:
    f: ``(n,)`` potential. a: ``(n,)`` weights. geom: a :class:`~neural_ot.PointCloud`
      (:func:`support_geometry` of the support). eps: absolute regularisation.
  """
  geom = _as_geometry(geom, "c_transform")
  return Sinkhorn().c_transform(geom, a, f, eps)


def dual_value(f, a, b, geom, eps):
  """Entropic dual at ``(f, g)``, ``g`` the c-transform of ``f``: ``<f, a> + <g, b>`` for
  normalised weights. This is the solver's :func:`~neural_ot.dual_objective` with ``g=None``."""
  return dual_objective(_as_geometry(geom, "dual_value"), a, b, f, None, eps)


@dataclasses.dataclass(frozen=True, eq=False)
class MetaOT:
  """A trained Meta OT model on a fixed support.

  Attributes:
    support: ``(n, d)`` points shared by all histograms.
    epsilon: the (absolute) entropic regularisation it was trained for.
    hidden: widths of the MLP. params: flax parameters. history: logged dual values.
    base: what the network's output corrects: ``"multiscale"`` (:func:`multiscale_init`, a
      coarse solve extended to the support), ``"gaussian"`` (:func:`gaussian_init`) or
      ``"zeros"``.
  """

  support: Any
  epsilon: float
  hidden: tuple
  params: Any
  history: tuple = ()
  base: str = "gaussian"
  sparse_cells: bool = True  # the multiscale base's rule (coarsen_or_none); False: before 2026-12-08

  @property
  def net(self):
    return _Net(self.support.shape[0], tuple(self.hidden))

  @functools.cached_property
  def coarse(self):
    """The support's cells (:func:`~neural_ot.meta.starts.coarsen`) for ``base="multiscale"``."""
    return (coarsen_or_none(self.support, self.epsilon, sparse_cells=self.sparse_cells)
            if self.base == "multiscale" else None)

  def _check(self, h, name):
    h = _validation.as_float_array(h, name).astype(jnp.float32)
    n = self.support.shape[0]
    if h.ndim not in (1, 2) or h.shape[-1] != n or h.size == 0:
      raise ValueError(f"MetaOT: `{name}` must be a histogram of shape ({n},) or (batch, {n}) "
                       f"with batch >= 1, got {tuple(h.shape)}.")
    hn = np.asarray(h)
    if np.any(hn < 0) or not np.all(np.isfinite(hn)):
      raise ValueError(f"MetaOT: `{name}` must be finite with non-negative mass.")
    if not np.allclose(hn.sum(-1), 1.0, atol=1e-3):
      raise ValueError(f"MetaOT: `{name}` must sum to one, got sums {hn.sum(-1)}.")
    return h

  def predict(self, a, b):
    """Predicted ``(f, g)`` for ``a, b: (n,)`` or batches ``(k, n)`` (g = exact c-transform).

    Zero bins are allowed: the network sees weights floored at ``1e-7`` (it reads their
    logarithm), the c-transform the weights as given.
    """
    a, b = self._check(a, "a"), self._check(b, "b")
    if a.shape != b.shape:
      raise ValueError(f"MetaOT: `a` and `b` must have the same shape (one pair per row), got "
                       f"{tuple(a.shape)} and {tuple(b.shape)}.")
    return _predict(self.net, self.params, a, b, jnp.asarray(self.support), self.coarse,
                    float(self.epsilon), self.base)

  def save(self, path: str) -> None:
    meta = {"format": _FORMAT, "epsilon": self.epsilon, "hidden": list(self.hidden),
            "history": list(self.history), "base": self.base,
            "sparse_cells": self.sparse_cells}
    io.save_atomic(path, {"meta": json.dumps(meta), "support": np.asarray(self.support),
                                  "params": jax.tree.map(np.asarray, self.params)})


def _base(a, b, support, coarse, eps, base):
  """What the network's output corrects for one pair, centred (the dual ignores shifts)."""
  if base == "zeros":
    return jnp.zeros_like(a)
  if base == "multiscale" and coarse is not None:
    f0 = multiscale_start(support, coarse, a, b, eps)
  else:  # "gaussian", or no coarser level (a tiny support)
    f0 = gaussian_init(support, a, b)
  return jax.lax.stop_gradient(f0 - jnp.dot(f0, a))


def _potential(net, params, a, b, support, coarse, eps, base):
  return net.apply(params, a, b) + _base(a, b, support, coarse, eps, base)


def _predict_impl(net, params, a, b, support, coarse, eps, base):
  geom = support_geometry(support)
  def one(a, b):
    f = _potential(net, params, a, b, support, coarse, eps, base)
    return f, c_transform(f, a, geom, eps)
  return one(a, b) if a.ndim == 1 else jax.vmap(one)(a, b)


_predict = jax.jit(_predict_impl, static_argnums=(0, 6, 7))


def load_meta(path: str) -> MetaOT:
  """Load a model written by :meth:`MetaOT.save`."""
  raw = io.load(path)
  meta = json.loads(raw["meta"])
  if meta.get("format") != _FORMAT:
    raise ValueError(f"load_meta: {path!r} is not a neural_ot Meta OT file.")
  return MetaOT(jnp.asarray(raw["support"]), float(meta["epsilon"]), tuple(meta["hidden"]),
                jax.tree.map(jnp.asarray, raw["params"]), tuple(meta["history"]), meta["base"],
                bool(meta.get("sparse_cells", False)))  # files of before 2026-12-08: False


@dataclasses.dataclass(frozen=True)
class MetaTrainer:
  """Meta OT training as a :class:`neural_ot.train.Trainer`: maximise the entropic dual of
  the predicted potential (exact c-transform) over a batch of problems ``(a, b, support)``."""

  n: int
  hidden: tuple
  epsilon: float
  base: str = "gaussian"
  learning_rate: float = 1e-4

  @property
  def net(self):
    return _Net(self.n, tuple(self.hidden))

  def init_state(self, key, a0, b0, steps: int) -> TrainState:
    params = self.net.init(key, a0, b0)
    return TrainState(params, optax.adam(1.0).init(params), jnp.zeros((), jnp.int32),
                      jnp.asarray(float(steps), jnp.float32))

  def step(self, state: TrainState, batch):
    a, b, support, coarse = batch
    geom = support_geometry(support)
    # The base carries no gradient: computed once per batch, outside the differentiated loss.
    f0 = jax.vmap(lambda a, b: _base(a, b, support, coarse, self.epsilon, self.base))(a, b)
    loss_fn = lambda p: -jnp.mean(jax.vmap(lambda a, b, f0: dual_value(
        self.net.apply(p, a, b) + f0, a, b, geom, self.epsilon))(a, b, f0))
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return scheduled_adam(state, grads, self.learning_rate, 0), {
        "dual": -loss, "grad_norm": optax.global_norm(grads)}


def scheduled_adam(state: TrainState, grads, peak: float, warmup: int) -> TrainState:
  """One Adam step at the rate :func:`~neural_ot.train.cosine_schedule` gives this step (the
  update of both Meta OT trainers; Adam's state is kept at rate 1 and scaled here)."""
  updates, opt_state = optax.adam(1.0).update(grads, state.opt_state, state.params)
  lr = cosine_schedule(state.step, state.horizon, peak, warmup=warmup)
  params = optax.apply_updates(state.params, jax.tree.map(lambda u: lr * u, updates))
  return state._replace(params=params, opt_state=opt_state, step=state.step + 1)


@dataclasses.dataclass(frozen=True)
class _PairsSampler:
  pairs: Callable
  batch_size: int
  sharding: Any = None  # a NamedSharding: split the batch of problems over devices

  def __call__(self, key, data):
    a, b = self.pairs(key, self.batch_size)
    want = (self.batch_size, data["support"].shape[0])
    if jnp.shape(a) != want or jnp.shape(b) != want:  # static shapes: checked while tracing
      raise ValueError(f"fit_meta: `pairs(key, {self.batch_size})` must return two {want} "
                       f"arrays, got {jnp.shape(a)} and {jnp.shape(b)}.")
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if self.sharding is not None:
      a = jax.lax.with_sharding_constraint(a, self.sharding)
      b = jax.lax.with_sharding_constraint(b, self.sharding)
    return a, b, data["support"], data["coarse"]


def _probe_pairs(pairs, n: int, k: int = 2):
  """``pairs(PRNGKey(0), k)``, checked like :meth:`MetaOT.predict`'s
  inputs: real, shape ``(k, n)``, finite, non-negative, each row summing to one."""
  if not callable(pairs):
    raise TypeError(f"fit_meta: `pairs` must be a function `pairs(key, k) -> (a, b)`, got "
                    f"{type(pairs).__name__}.")
  try:
    out = pairs(jax.random.PRNGKey(0), k)
  except TypeError as exc:  # most often the signature
    raise TypeError(f"fit_meta: `pairs` failed when called as `pairs(key, {k})`: {exc}") from exc
  if not (isinstance(out, (tuple, list)) and len(out) == 2):
    raise ValueError(f"fit_meta: `pairs(key, k)` must return a pair (a, b) of (k, {n}) arrays, "
                     f"got {type(out).__name__}.")
  hs = []
  for h in out:
    try:
      h = np.asarray(h)
    except (ValueError, TypeError) as exc:  # ragged nesting
      raise ValueError(f"fit_meta: `pairs(key, k)` must return arrays ({exc}).") from None
    if h.dtype.kind not in "biuf":
      raise TypeError(f"fit_meta: `pairs(key, k)` must return real histograms, got dtype "
                      f"{h.dtype}.")
    hs.append(h.astype(np.float32))
  if hs[0].shape != (k, n) or hs[1].shape != (k, n):
    raise ValueError(f"fit_meta: `pairs(key, k)` must return two (k, {n}) arrays, got "
                     f"{hs[0].shape} and {hs[1].shape}.")
  for h in hs:
    if not np.all(np.isfinite(h)) or np.any(h < 0) or not np.allclose(h.sum(-1), 1.0, atol=1e-3):
      raise ValueError(f"fit_meta: `pairs(key, k)` must return histograms (finite, "
                       f"non-negative, each row summing to one); row sums {h.sum(-1)}, min "
                       f"{np.min(h):.3g}.")
  return out[0], out[1]


def fit_meta(pairs: Callable, support, epsilon: float, *, learning_rate: float = 1e-4,
             hidden=(1024, 1024), base: str = "multiscale", **options) -> MetaOT:
  """Train a Meta OT model by maximising the entropic dual over sampled problems.

  Runs on the shared training loop (:func:`neural_ot.train.run`): divergence guard,
  atomic checkpoints in ``checkpoint_dir`` with resume, progress, ``max_seconds`` budget.

  Args:
    pairs: ``pairs(key, k) -> (a, b)``, each ``(k, n)`` histograms on ``support`` (jit-able).
    support: ``(n, d)`` points. epsilon: absolute regularisation (> 0).
    learning_rate, hidden: training settings (Adam, cosine decay). The rate 1e-4 was chosen
      on Gaussian mixtures on a 16 x 16 grid (eps 0.01, 2000 steps; median Sinkhorn
      iterations to 1e-2 / 1e-3 on 30 held-out pairs: 5.5 / 14 at 1e-3, the old default,
      worse than the Gaussian start's 5 / 10.5; 4 / 10 at 3e-4, 3 / 9.5 at 1e-4, 3 / 10 at
      3e-5; zeros 16 / 24); ``benchmarks/RESULTS.md`` reports it on other families.
    base: what the network corrects: ``"multiscale"`` (the default: :func:`multiscale_init`,
      a coarse solve extended to the support; 1-3 fine iterations to 1e-2 against the
      Gaussian start's 5-24 on 16 x 16 grids, where the trained correction changed the median
      by at most one iteration, session 39), ``"gaussian"`` (:func:`gaussian_init`) or
      ``"zeros"``.
    **options: the options every fit shares (:class:`neural_ot.train.FitOptions`):
      ``steps`` (default 2000), ``batch_size`` (default 64), ``seed``, ``max_seconds``,
      ``checkpoint_dir``, ``checkpoint_every``, ``resume``, ``progress``, ``log_every``,
      ``callback``, ``eval_fn(model, step)``, ``eval_every``, ``eval_seconds``,
      ``max_param_norm``, ``mesh`` and ``axis_name`` (data parallel: each step's problems are
      split over the devices of the mesh axis, on one or several processes); float32 only
      (``dtype`` is refused).

  Example:
    >>> import jax
    >>> from neural_ot.meta import fit_meta, gaussian_mixture_histograms, grid
    >>> pairs = lambda k, n: (gaussian_mixture_histograms(k, n, 6),
    ...                       gaussian_mixture_histograms(jax.random.fold_in(k, 1), n, 6))
    >>> m = fit_meta(pairs, grid(6), 0.01, steps=5, batch_size=4, hidden=(32,), progress=False)
    >>> m.predict(*pairs(jax.random.PRNGKey(9), 1))[0].shape
    (1, 36)
  """
  support = _validation.check_points(support, "support").astype(jnp.float32)
  # The squared diagonal of the bounding box: at least the largest cost, at most d times it.
  cost_max = float(np.sum(np.ptp(np.asarray(support, np.float64), axis=0) ** 2))
  if not cost_max < float(np.finfo(np.float32).max):
    raise ValueError(f"fit_meta: `support` is too spread out: its squared diameter "
                     f"{cost_max:.3g} overflows float32.")
  opts, unknown = train.FitOptions.from_kwargs(
      "fit_meta", options, default_steps=2000, unsupported=("dtype",),
      steps=2000, batch_size=64)
  if unknown:
    raise TypeError(f"fit_meta: unknown option(s) {sorted(unknown)}.")
  steps, batch_size, seed = opts.steps, opts.batch_size, opts.seed
  if base not in ("multiscale", "gaussian", "zeros"):
    raise ValueError(f"fit_meta: `base` must be 'multiscale', 'gaussian' or 'zeros', got "
                     f"{base!r}.")
  try:
    kind = "O" if isinstance(epsilon, (str, bytes)) else np.asarray(epsilon).dtype.kind
  except (ValueError, TypeError):  # ragged nesting
    kind = "O"
  if kind not in "iuf":
    raise TypeError(f"fit_meta: `epsilon` must be a real number, got "
                    f"{type(epsilon).__name__} {epsilon!r}.")
  if np.shape(epsilon) != () or not 0 < float(epsilon) < float("inf"):
    raise ValueError(f"fit_meta: `epsilon` must be > 0 and finite, got {epsilon!r}.")
  # Below the float32 resolution of the largest cost the exponents (f - C) / eps lose all
  # precision: the c-transform of a prediction overflows to inf (measured at eps = 1e-12).
  if float(epsilon) < np.finfo(np.float32).eps * cost_max:
    raise ValueError(f"fit_meta: `epsilon` ({epsilon!r}) is below the float32 resolution of the "
                     f"costs (2^-23 x the support's squared diameter {cost_max:.3g}); it must "
                     f"be at least {np.finfo(np.float32).eps * cost_max:.3g}.")
  if not (isinstance(learning_rate, (int, float, np.integer, np.floating))
          and not isinstance(learning_rate, bool) and 0 < learning_rate < float("inf")):
    raise ValueError(f"fit_meta: `learning_rate` must be a finite number > 0, got "
                     f"{learning_rate!r}.")
  _validation.check_widths("fit_meta", "hidden", hidden)
  n = support.shape[0]
  coarse = coarsen_or_none(support, epsilon) if base == "multiscale" else None
  a0, b0 = _probe_pairs(pairs, n)  # what the fingerprint and the initialisation see
  if batch_size != 2:
    _probe_pairs(pairs, n, batch_size)  # and a training batch
  trainer = MetaTrainer(n, tuple(int(h) for h in hidden), float(epsilon), base,
                        float(learning_rate))
  key = jax.random.PRNGKey(seed)
  k_init, k_data = jax.random.split(key)
  state = trainer.init_state(k_init, jnp.asarray(a0[0], jnp.float32),
                             jnp.asarray(b0[0], jnp.float32), steps)
  # A coarse level solved at a larger epsilon (sparse cells) is a different base from the
  # Gaussian start that such supports had before 2026-12-08: their checkpoints are not resumed.
  sparse = {} if coarse is None or coarse.min_epsilon is None else {
      "coarse_min_epsilon": float(coarse.min_epsilon)}
  fingerprint = opts.fingerprint(
      dataclasses.asdict(trainer), support=train.data_fingerprint(support),
      pairs=getattr(pairs, "__qualname__", type(pairs).__name__) + " "
      + train.data_fingerprint(a0, b0), **sparse)

  def make_model(st, history=()):
    return MetaOT(support, trainer.epsilon, trainer.hidden, st.params, tuple(history), base)

  sharding, placement = train.data_parallel(opts.mesh, opts.axis_name, batch_size, "fit_meta")
  state, history = train.run_fit(
      "fit_meta", opts, trainer, state, _PairsSampler(pairs, batch_size, sharding),
      {"support": support, "coarse": coarse}, k_data, fingerprint=fingerprint,
      make_result=make_model,
      show=("dual",), placement=placement, advice="Lower `learning_rate` or raise `epsilon`")
  return make_model(state, [{"step": h["step"], "dual": h["dual"]} for h in history
                            if "dual" in h])
