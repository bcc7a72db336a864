"""``fit_conditional_w2``: one model of W2 maps under many conditions (a thin call of
:func:`neural_ot.train.run`, like ``fit_w2``).

Data are a mapping ``condition -> (source, target)`` (arrays ``(n_c, d)``; conditions are
labels, or real scalars/vectors such as doses), or a sampler ``sample(key, n) -> (c, x, y)``
whose row ``i`` draws ``x_i`` from the source and ``y_i`` from the target under context
``c_i``. Each step draws a batch that mixes conditions (uniformly over the conditions of a
mapping) and takes one step on the mean over the batch's contexts of the semi-dual
``E f(x; c) + E f*(y; c)``, with the conjugates of all rows fine-tuned in one batched solve.

What it does with no options (as ``fit_w2``): the space is standardised once for all
conditions (pooled means and scales); vector contexts are standardised per coordinate; the
networks' base (``grad f(.; c)`` before training) is the Gaussian OT map of each training
condition, as an affine function of the context fitted by least squares (exact per label;
for a sampler, the conditional means are regressed on the context and the residual
covariances pooled), and the network learns the correction.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot import gaussian, train
from neural_ot.conditional.maps import ConditionalW2Map, Contexts, pair_features
from neural_ot.w2.defaults import START_HORIZON, default_options
from neural_ot.w2.maps import Frame
from neural_ot._validation import is_int
from neural_ot.w2.trainer import W2Trainer, as_config

__all__ = ["fit_conditional_w2", "ConditionSampler"]

_N_PROBE = 16384
_NAME = "fit_conditional_w2"


@dataclasses.dataclass(frozen=True)
class ConditionSampler:
  """Draws a batch ``(x, y, c)`` that mixes conditions; hashable (a static argument of the
  compiled step: new data of the same shapes do not recompile).

  With ``fn=None``: ``data`` holds padded per-condition arrays ``x: (C, n_max, d)`` with row
  counts ``nx: (C,)`` (likewise ``y``, ``ny``) and encoded contexts ``c: (C, k)``; each row
  picks a condition uniformly, then a sample of that condition. Otherwise
  ``fn(key, n) -> (c, x, y)`` is called and its contexts encoded with ``data["cmean"]``,
  ``data["cscale"]``.
  """

  batch_size: int
  fn: Callable | None = None
  dtype: str = "float32"
  sharding: Any = None

  def __post_init__(self):
    b = self.batch_size
    if not (is_int(b) and b >= 1):
      raise ValueError(f"ConditionSampler: `batch_size` must be an int >= 1, got {b!r}.")
    object.__setattr__(self, "batch_size", int(b))
    if self.fn is not None and not callable(self.fn):
      raise TypeError(f"ConditionSampler: `fn` must be a sampler `fn(key, n) -> (c, x, y)` or "
                      f"None, got {type(self.fn).__name__}.")
    if self.dtype not in ("float32", "float64"):
      raise ValueError(f"ConditionSampler: `dtype` must be 'float32' or 'float64', got "
                       f"{self.dtype!r}.")

  def __call__(self, key, data):
    frame = data["frame"]
    b = self.batch_size
    if self.fn is None:
      kc, kx, ky = jax.random.split(key, 3)
      cond = jax.random.randint(kc, (b,), 0, data["c"].shape[0])
      ix = jnp.floor(jax.random.uniform(kx, (b,)) * data["nx"][cond]).astype(jnp.int32)
      iy = jnp.floor(jax.random.uniform(ky, (b,)) * data["ny"][cond]).astype(jnp.int32)
      x, y, c = data["x"][cond, ix], data["y"][cond, iy], data["c"][cond]
    else:
      c, x, y = self.fn(key, b)
      c = jnp.asarray(c).reshape(b, -1)
      c = (c - data["cmean"]) / data["cscale"]
    x, y = frame.to_source(jnp.asarray(x)), frame.to_target(jnp.asarray(y))
    out = tuple(v.astype(self.dtype) for v in (x, y, c))
    if self.sharding is not None:
      out = tuple(jax.lax.with_sharding_constraint(v, self.sharding) for v in out)
    return out


def _as_points(v, name, dtype):
  try:
    arr = np.asarray(v, dtype)
  except (TypeError, ValueError) as exc:
    raise TypeError(f"{_NAME}: `{name}` must be an array (n, d), got {type(v).__name__}.") from exc
  if arr.ndim == 1:
    arr = arr[:, None]
  if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] == 0:
    raise ValueError(f"{_NAME}: `{name}` must have shape (n, d) with n >= 2, got {arr.shape}.")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{_NAME}: `{name}` has NaN or inf values.")
  return arr


def _check_pairs(items, dtype):
  """Source and target arrays of ``items = [(name, (source, target)), ...]``, checked."""
  xs, ys = [], []
  for name, pair in items:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
      raise ValueError(f"{_NAME}: `data[{name}]` must be a pair (source, target), got "
                       f"{type(pair).__name__}.")
    xs.append(_as_points(pair[0], f"data[{name}][0] (source)", dtype))
    ys.append(_as_points(pair[1], f"data[{name}][1] (target)", dtype))
  dims = {a.shape[1] for a in xs + ys}
  if len(dims) != 1:
    raise ValueError(f"{_NAME}: every source and target must have the same dimension, got "
                     f"{sorted(dims)}.")
  return xs, ys


def _from_pairs(data, dtype):
  """A sequence of ``(source, target)`` pairs: meta maps, each pair its own context."""
  if len(data) == 0:
    raise ValueError(f"{_NAME}: `data` must hold at least one pair, got an empty sequence.")
  xs, ys = _check_pairs([(repr(i), pair) for i, pair in enumerate(data)], dtype)
  feats = np.stack([pair_features(x, y, f"data[{i}]") for i, (x, y) in enumerate(zip(xs, ys))])
  return Contexts.fit_vectors(feats, "pairs"), feats, xs, ys


def _from_mapping(data: Mapping, context: str, dtype):
  if not data:
    raise ValueError(f"{_NAME}: `data` must hold at least one condition, got an empty mapping.")
  keys = list(data)
  if context == "auto":
    context = "label" if all(isinstance(k, str) for k in keys) else "vector"
  if context == "label":
    try:
      contexts = Contexts.for_labels(keys)
    except ValueError as exc:
      raise ValueError(f"{_NAME}: {exc}") from None
  else:
    try:
      vecs = [np.asarray(k, np.float64).ravel() for k in keys]
    except (TypeError, ValueError) as exc:
      raise ValueError(f"{_NAME}: vector conditions must be numbers or tuples of numbers "
                       f"(or pass context='label'), got {keys[:3]!r}.") from exc
    if len({v.size for v in vecs}) != 1 or not all(np.all(np.isfinite(v)) for v in vecs):
      raise ValueError(f"{_NAME}: vector conditions must all have the same length and be "
                       f"finite, got {keys[:3]!r}.")
    contexts = Contexts.fit_vectors(np.stack(vecs))
  xs, ys = _check_pairs([(repr(k), data[k]) for k in keys], dtype)
  return contexts, keys, xs, ys


def _stack_padded(arrs):
  n_max = max(a.shape[0] for a in arrs)
  out = np.zeros((len(arrs), n_max, arrs[0].shape[1]), arrs[0].dtype)
  for i, a in enumerate(arrs):
    out[i, :a.shape[0]] = a
  return out, np.array([a.shape[0] for a in arrs], np.int32)


def _lstsq_base(feats, mats, vecs):
  """Least-squares ``M(c) = M0 + sum_j c_j Mj``, ``v(c) = v0 + c V`` through the conditions'
  ``mats: (C, d, d)`` and ``vecs: (C, d)`` (minimum norm when underdetermined)."""
  n, d = vecs.shape
  design = np.concatenate([np.ones((n, 1)), feats], 1)
  target = np.concatenate([mats.reshape(n, -1), vecs], 1)
  coef, *_ = np.linalg.lstsq(design, target, rcond=None)
  m_all, v_all = coef[:, :d * d].reshape(-1, d, d), coef[:, d * d:]
  return m_all[0], m_all[1:], v_all[0], v_all[1:]


def _pooled(arrs, rng):
  """A random subsample of every condition's rows, about ``_N_PROBE`` in all (at least 64 per
  condition): the pooled sample that sets the standardisation."""
  per = max(64, _N_PROBE // len(arrs))
  return np.concatenate([a[rng.permutation(len(a))[:per]] for a in arrs])


def _psd_root(a, shift):
  """``(A - shift I)^{1/2}`` with eigenvalues below the shift clipped (float64)."""
  return np.asarray(gaussian.sqrtm_psd(a, shift=shift, floor=1e-6), np.float64)


def _base_from_conditions(feats, src_moments, tgt_moments, strong_convexity):
  roots, bs, invs, binvs = [], [], [], []
  for (ms, ss), (mt, st) in zip(src_moments, tgt_moments):
    a, b = (np.asarray(v, np.float64) for v in gaussian.gaussian_map(ms, ss, mt, st))
    ai, bi = (np.asarray(v, np.float64) for v in gaussian.gaussian_map(mt, st, ms, ss))
    roots.append(_psd_root(a, strong_convexity))
    bs.append(b)
    invs.append(ai)
    binvs.append(bi)
  f_base = _lstsq_base(feats, np.stack(roots), np.stack(bs))
  g_base = _lstsq_base(feats, np.stack(invs), np.stack(binvs))
  return f_base, g_base


def _base_from_sampler(feats, x, y, strong_convexity):
  """Conditional means linear in the context, pooled residual covariances."""
  design = np.concatenate([np.ones((len(feats), 1)), feats], 1)
  bx, *_ = np.linalg.lstsq(design, x, rcond=None)
  by, *_ = np.linalg.lstsq(design, y, rcond=None)
  rx, ry = x - design @ bx, y - design @ by
  d, k = x.shape[1], feats.shape[1]
  zero = np.zeros(d)
  a, _ = (np.asarray(v, np.float64) for v in gaussian.gaussian_map(zero, np.cov(rx.T).reshape(d, d),
                                                                   zero, np.cov(ry.T).reshape(d, d)))
  ai = np.linalg.inv(a)
  # grad f = A x + b(c): b(c) = m_y(c) - A m_x(c); inverse: e(c) = m_x(c) - A^-1 m_y(c).
  f_base = (_psd_root(a, strong_convexity), np.zeros((k, d, d)), by[0] - a @ bx[0],
            by[1:] - bx[1:] @ a.T)
  g_base = (ai, np.zeros((k, d, d)), bx[0] - ai @ by[0], bx[1:] - by[1:] @ ai.T)
  return f_base, g_base


def fit_conditional_w2(data, *, context: str = "auto", standardize: bool = True,
                       **options) -> ConditionalW2Map:
  """Learn W2 maps ``T(.; c) = grad_x f(.; c)`` for many conditions ``c`` with one model.

  Args:
    data: a mapping ``condition -> (source, target)`` (arrays ``(n_c, d)``); a sequence of
      ``(source, target)`` pairs (a meta map: the context of a pair is the pair itself,
      summarised by :func:`pair_features`, and a new pair's map is ``predict((x, y))``); or a
      sampler ``sample(key, n) -> (c, x, y)`` with ``c: (n, k)`` (or ``(n,)``), ``x, y: (n, d)``.
    context: ``"auto"`` (string keys are labels, numbers and tuples of numbers are vectors),
      ``"label"`` or ``"vector"``; samplers always give vectors.
    standardize: as in :func:`neural_ot.fit_w2`.
    **options: the options every fit shares (:class:`neural_ot.train.FitOptions`: ``steps``
      (default 4000 when ``max_seconds`` is not given), ``max_seconds``, ``batch_size``,
      ``seed``, checkpoints, ``eval_fn(map, step)`` (it gets the :class:`ConditionalW2Map`),
      progress, ``dtype``, ``mesh``, ...), and fields of :class:`neural_ot.W2Trainer` (widths,
      ``context_hidden``, learning rate, conjugate budget, ...); unset ones follow
      :func:`neural_ot.w2.default_options`.

  Returns:
    A :class:`ConditionalW2Map` (``transport(x, c)``, ``inverse(y, c)``, ``predict(c)``,
    ``finetune(source, target, c)``, ``save``).

  Example:
    >>> import numpy as np, neural_ot
    >>> x = np.random.default_rng(0).normal(size=(256, 2))
    >>> m = neural_ot.fit_conditional_w2({0.0: (x, x), 1.0: (x, x + 1.0)}, steps=5,
    ...                                  batch_size=32, progress=False)
    >>> m.transport(x[:3], 0.5).shape
    (3, 2)
  """
  if context not in ("auto", "label", "vector"):
    raise ValueError(f"{_NAME}: `context` must be 'auto', 'label' or 'vector', got {context!r}.")
  opts, options = train.FitOptions.from_kwargs(_NAME, options)
  W2Trainer.check_options(_NAME, options, exclude=("context_dim", "context_mode"))
  if not isinstance(standardize, (bool, np.bool_)):
    raise TypeError(f"{_NAME}: `standardize` must be True or False, got {standardize!r}.")
  steps, seed, dtype = opts.steps, opts.seed, opts.dtype
  rng = np.random.default_rng(seed)

  if callable(data) and not isinstance(data, Mapping):
    fn = data
    c_probe, x_probe, y_probe = _probe_sampler(fn, seed)
    contexts = Contexts.fit_vectors(c_probe)
    dim = x_probe.shape[1]
    pooled_x, pooled_y = x_probe, y_probe
    n_min, tag = None, "sampler " + getattr(fn, "__qualname__", type(fn).__name__) + " " + \
        train.data_fingerprint(c_probe[:8].astype(np.float32), x_probe[:8].astype(np.float32))
  elif isinstance(data, Mapping):
    fn = None
    contexts, keys, xs, ys = _from_mapping(data, context, dtype)
    dim = xs[0].shape[1]
    pooled_x, pooled_y = _pooled(xs, rng), _pooled(ys, rng)
    n_min = min(a.shape[0] for a in xs + ys)
    feats = contexts.encode(list(contexts.labels) if contexts.kind == "label" else
                            np.stack([np.asarray(k, np.float64).ravel() for k in keys]))
    tag = "mapping " + train.data_fingerprint(
        np.asarray(json.dumps(contexts.to_json())), *xs, *ys)
  elif isinstance(data, (list, tuple)):
    fn = None
    contexts, raw_feats, xs, ys = _from_pairs(data, dtype)
    keys = list(range(len(xs)))
    dim = xs[0].shape[1]
    pooled_x, pooled_y = _pooled(xs, rng), _pooled(ys, rng)
    n_min = min(a.shape[0] for a in xs + ys)
    feats = (raw_feats - contexts.mean) / contexts.scale
    tag = "pairs " + train.data_fingerprint(*xs, *ys)
  else:
    raise TypeError(f"{_NAME}: `data` must be a mapping condition -> (source, target), a "
                    f"sequence of (source, target) pairs or a sampler "
                    f"`sample(key, n) -> (c, x, y)`, got {type(data).__name__}.")

  defaults = default_options(dim, n_min, conditional=True)  # the one table of defaults
  batch_default = defaults.pop("batch_size")
  batch_size = batch_default if opts.batch_size is None else opts.batch_size
  opts = dataclasses.replace(opts, batch_size=batch_size)
  trainer = W2Trainer(**{**defaults, **options, "context_dim": contexts.dim,
                         "context_mode": "input", "sharded": opts.mesh is not None})
  frame = Frame.fit(pooled_x, pooled_y) if standardize else Frame.identity(dim)

  # The base: Gaussian OT maps of the conditions, affine in the encoded context.
  base = None
  if trainer.init == "gaussian":
    if fn is None:
      mom = lambda arrs, to: [gaussian.moments(np.asarray(to(a[:_N_PROBE]), np.float64))
                              for a in arrs]
      base = _base_from_conditions(feats, mom(xs, frame.to_source), mom(ys, frame.to_target),
                                   trainer.strong_convexity)
    else:
      base = _base_from_sampler(contexts.encode(c_probe), np.asarray(frame.to_source(x_probe)),
                                np.asarray(frame.to_target(y_probe)), trainer.strong_convexity)
  key = jax.random.PRNGKey(seed)
  k_init, k_data = jax.random.split(key)
  horizon = steps if steps is not None else START_HORIZON
  params = trainer.init_params(k_init, dim, dtype)
  if base is not None:
    params = {"f": trainer.f_module.from_base(params["f"], *base[0]),
              "g": trainer.g_module.from_base(params["g"], *base[1])}
  state = trainer.init_state(k_init, dim, horizon, dtype=dtype, params=params)

  sharding, placement = train.data_parallel(opts.mesh, opts.axis_name, batch_size, _NAME)

  sampler = ConditionSampler(batch_size, fn, dtype.name, sharding)
  arrays = {"frame": frame.astype(dtype)}
  if fn is None:
    (xp, nx), (yp, ny) = _stack_padded(xs), _stack_padded(ys)
    arrays.update(x=jnp.asarray(xp), nx=jnp.asarray(nx), y=jnp.asarray(yp), ny=jnp.asarray(ny),
                  c=jnp.asarray(feats, dtype))
  else:
    arrays.update(cmean=jnp.asarray(contexts.mean, dtype), cscale=jnp.asarray(contexts.scale, dtype))

  fingerprint = opts.fingerprint(as_config(trainer), dim=dim, standardize=standardize, data=tag)

  def make_map(st, history=()):
    return ConditionalW2Map(trainer, st.params, dim, contexts, frame, tuple(history))

  state, history = train.run_fit(
      _NAME, opts, trainer, state, sampler, arrays, k_data, fingerprint=fingerprint,
      make_result=make_map, show=("loss", "conj_iters"), placement=placement,
      advice="Try a smaller `learning_rate`")
  return make_map(state, history)


def _probe_sampler(fn, seed):
  try:
    out = fn(jax.random.PRNGKey(10 ** 6 + seed), _N_PROBE)
    c, x, y = (np.asarray(v, np.float64) for v in out)
  except (TypeError, ValueError) as exc:
    raise ValueError(f"{_NAME}: the sampler must return a tuple (c, x, y) of arrays "
                     f"({exc}).") from exc
  if c.ndim == 1:
    c = c[:, None]
  n = _N_PROBE
  if c.shape[:1] != (n,) or c.ndim != 2 or x.ndim != 2 or y.shape != x.shape or x.shape[0] != n:
    raise ValueError(f"{_NAME}: the sampler must return c: (n, k), x: (n, d), y: (n, d); for "
                     f"n={n} it returned shapes {c.shape}, {x.shape}, {y.shape}.")
  if not (np.all(np.isfinite(c)) and np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    raise ValueError(f"{_NAME}: the sampler returned non-finite values (NaN or inf).")
  return c, x, y
