"""A conditional W2 map: ``T(x; c) = grad_x f(x; c)``, convex in ``x`` for every context."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot import _validation, gaussian, io
from neural_ot.potentials.conditional import FixedContext
from neural_ot.w2.fit import fit_w2
from neural_ot.w2.maps import Frame, W2Map, inverse_settings
from neural_ot.w2.trainer import W2Trainer, as_config

__all__ = ["ConditionalW2Map", "Contexts", "load_conditional_map", "pair_features"]



class Contexts(NamedTuple):
  """How user contexts become network inputs ``(k,)``.

  ``kind="vector"``: a real vector (or scalar) ``c``, standardised ``(c - mean) / scale``.
  ``kind="label"``: one of ``labels`` (strings or ints), one-hot encoded (the network's first
  context layer is then a learned embedding).
  ``kind="pairs"``: a pair of sample sets ``(source, target)`` (meta maps), encoded by
  :func:`pair_features` (permutation invariant), then standardised.
  """

  kind: str
  labels: tuple = ()
  mean: Any = None
  scale: Any = None

  @property
  def dim(self) -> int:
    """Width ``k`` of the encoded context."""
    return len(self.labels) if self.kind == "label" else int(np.size(self.mean))

  @classmethod
  def for_labels(cls, keys, name: str = "data") -> "Contexts":
    """Label contexts (strings or ints) in the given order."""
    bad = [k for k in keys if not _is_label(k)]
    if bad:
      raise ValueError(f"`{name}`: label conditions must be strings or ints, got {bad[:3]!r}.")
    return cls("label", tuple(_label_key(k) for k in keys))

  @classmethod
  def fit_vectors(cls, c, kind: str = "vector") -> "Contexts":
    c = np.asarray(c, np.float64).reshape(len(c), -1)
    scale = np.std(c, 0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    return cls(kind, (), c.mean(0), scale)

  def encode(self, c, n: int | None = None, name: str = "c") -> np.ndarray:
    """Encoded contexts ``(n, k)`` (float64). ``c`` is one context (broadcast to ``n`` rows)
    or one per row; a ``ValueError`` names ``name`` for unknown labels, wrong shapes or
    non-finite values."""
    if self.kind == "pairs":
      if not (isinstance(c, (tuple, list)) and len(c) == 2):
        raise ValueError(f"`{name}` must be a pair (source samples, target samples) for this "
                         f"meta map, got {type(c).__name__}.")
      feats = pair_features(c[0], c[1], name)
      if feats.size != self.dim:
        raise ValueError(f"`{name}`: the samples have the wrong dimension for this map.")
      out = (feats[None] - np.asarray(self.mean)) / np.asarray(self.scale)
    elif self.kind == "label":
      index = {lab: i for i, lab in enumerate(self.labels)}
      single = _is_label(c)
      items = [c] if single else list(np.asarray(c, object).ravel())
      bad = [v for v in items if not _is_label(v) or _label_key(v) not in index]
      if bad:
        raise ValueError(f"`{name}`: unknown condition label(s) {bad[:5]!r}; the map knows "
                         f"{list(self.labels)[:20]!r}.")
      out = np.zeros((len(items), self.dim))
      out[np.arange(len(items)), [index[_label_key(v)] for v in items]] = 1.0
    else:
      k = self.dim
      try:
        arr = np.asarray(c, np.float64)
      except (TypeError, ValueError) as exc:
        raise TypeError(f"`{name}` must be a context vector of length {k} (or one per row), "
                        f"got {type(c).__name__}.") from exc
      if arr.ndim == 0:
        arr = arr.reshape(1, 1)
      elif arr.ndim == 1:  # k = 1: one scalar per row; k > 1: one context vector
        arr = arr[:, None] if k == 1 else arr[None, :]
      if arr.ndim != 2 or arr.shape[1] != k:
        raise ValueError(f"`{name}` must be a context of length {k} or an array (n, {k}), got "
                         f"shape {np.shape(c)}.")
      if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite, got NaN or inf.")
      out = (arr - np.asarray(self.mean)) / np.asarray(self.scale)
    if n is not None:
      if out.shape[0] == 1:
        out = np.repeat(out, n, 0)
      elif out.shape[0] != n:
        raise ValueError(f"`{name}` must be one context or one per row ({n}), got "
                         f"{out.shape[0]}.")
    return out

  def to_json(self) -> dict:
    return {"kind": self.kind, "labels": [_json_label(v) for v in self.labels],
            "mean": None if self.mean is None else np.asarray(self.mean).tolist(),
            "scale": None if self.scale is None else np.asarray(self.scale).tolist()}

  @classmethod
  def from_json(cls, d) -> "Contexts":
    labels = tuple(v[1] if isinstance(v, list) else v for v in d["labels"])
    mean = None if d["mean"] is None else np.asarray(d["mean"], np.float64)
    scale = None if d["scale"] is None else np.asarray(d["scale"], np.float64)
    return cls(d["kind"], labels, mean, scale)


def pair_features(source, target, name: str = "c") -> np.ndarray:
  """A permutation-invariant summary of a pair of sample sets ``(n, d)``, ``(m, d)``: the
  symmetric root of the Gaussian OT map's matrix, its shift, and the same for the inverse map
  (``2 d^2 + 2 d`` numbers). A conditional network whose base is affine in its context can
  then reproduce every pair's Gaussian map exactly, new pairs included."""
  x = _validation.check_points(source, f"{name}[0] (source samples)")
  y = _validation.check_points(target, f"{name}[1] (target samples)")
  if x.shape[1] != y.shape[1] or x.shape[0] < 2 or y.shape[0] < 2:
    raise ValueError(f"`{name}`: source and target samples must have the same dimension and "
                     f"at least 2 rows each, got {tuple(x.shape)} and {tuple(y.shape)}.")
  mx, sx = (np.asarray(v, np.float64) for v in gaussian.moments(np.asarray(x, np.float64)))
  my, sy = (np.asarray(v, np.float64) for v in gaussian.moments(np.asarray(y, np.float64)))
  a, b = (np.asarray(v, np.float64) for v in gaussian.gaussian_map(mx, sx, my, sy))
  ai, bi = (np.asarray(v, np.float64) for v in gaussian.gaussian_map(my, sy, mx, sx))
  root = np.asarray(gaussian.sqrtm_psd(a, floor=0.0), np.float64)
  return np.concatenate([root.ravel(), b, ai.ravel(), bi])


def _is_label(v) -> bool:
  return isinstance(v, (str, int, np.integer)) and not isinstance(v, bool)


def _label_key(v):
  return int(v) if isinstance(v, np.integer) else v


def _json_label(v):
  return v if isinstance(v, str) else ["int", int(v)]


@functools.partial(jax.jit, static_argnums=0)
def _transport(trainer, params_f, x, c):
  return jax.vmap(jax.grad(trainer.potential_fn(params_f)))(x, c)


@functools.partial(jax.jit, static_argnums=0)
def _potential(trainer, params_f, x, c):
  return jax.vmap(trainer.potential_fn(params_f))(x, c)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _inverse(trainer, params, y, c, finetune_iters, tol):
  x_hat = trainer.predict(params["g"], y, c)
  if finetune_iters == 0:
    return x_hat, jnp.zeros(y.shape[:1], jnp.int32)
  solver = dataclasses.replace(trainer.solver, max_iters=finetune_iters, tol=tol)
  res = solver(trainer.potential_fn(params["f"]), y, x_hat, context=c)
  return res.x, res.n_iters


@dataclasses.dataclass(frozen=True)
class ConditionalW2Map:
  """A learned family of OT maps for the cost ``|x - y|^2``, one per context:
  ``transport(x, c) = grad_x f(x; c)`` with ``f(.; c)`` convex for every ``c``, ``inverse``
  its conjugate's gradient (predicted and fine-tuned).

  Contexts ``c`` are given as the training data gave them (labels, or vectors/scalars): one
  context for all rows, or one per row.

  Attributes:
    trainer: the configuration (conditional networks, solver).
    params: ``{"f": ..., "g": ...}``.
    dim: dimension of the space.
    contexts: how contexts are encoded (:class:`Contexts`).
    frame: the standardisation of the space (shared by all contexts).
    history: logged metrics.
  """

  trainer: W2Trainer
  params: Any
  dim: int
  contexts: Contexts
  frame: Frame
  history: tuple = ()

  def __repr__(self):
    n = sum(int(np.size(v)) for v in jax.tree.leaves(self.params))
    what = (f"labels={list(self.contexts.labels)[:6]}" if self.contexts.kind == "label"
            else f"context_dim={self.contexts.dim}")
    return f"ConditionalW2Map(dim={self.dim}, {what}, hidden={self.trainer.hidden}, parameters={n})"

  @property
  def dtype(self):
    return jax.tree.leaves(self.params)[0].dtype

  def _points(self, x, name):
    arr = _validation.as_float_array(x, name)
    if arr.ndim not in (1, 2) or arr.shape[-1] != self.dim:
      raise ValueError(f"ConditionalW2Map: `{name}` must have shape (n, {self.dim}) or "
                       f"({self.dim},), got {tuple(arr.shape)}.")
    _validation.check_finite(arr, name)
    return arr.astype(self.dtype)

  def _inputs(self, x, c, name):
    arr = self._points(x, name)
    x2 = jnp.atleast_2d(arr)
    try:
      feats = self.contexts.encode(c, x2.shape[0], "c")
    except (TypeError, ValueError) as exc:
      raise type(exc)(f"ConditionalW2Map: {exc}") from None
    return arr, x2, jnp.asarray(feats, self.dtype)

  def transport(self, x, c) -> jax.Array:
    """Forward map ``grad_x f(x; c)``: ``x: (n, d)`` or ``(d,)``; ``c`` one context or one per row."""
    arr, x2, feats = self._inputs(x, c, "x")
    fr = self.frame.astype(self.dtype)
    out = fr.from_target(_transport(self.trainer, self.params["f"], fr.to_source(x2), feats))
    return out if arr.ndim == 2 else out[0]

  def __call__(self, x, c) -> jax.Array:
    return self.transport(x, c)

  def potential(self, x, c) -> jax.Array:
    """The convex potential ``f(x; c)`` (up to a constant per context), shape ``(n,)``."""
    arr, x2, feats = self._inputs(x, c, "x")
    fr = self.frame.astype(self.dtype)
    out = (fr.sx * fr.sy * _potential(self.trainer, self.params["f"], fr.to_source(x2), feats)
           + x2 @ fr.my)
    return out if arr.ndim == 2 else out[0]

  def inverse(self, y, c, finetune_iters: int | None = None,
              tol: float | None = None) -> jax.Array:
    """Inverse map ``grad f*(y; c)``: the predicted argmax refined by up to ``finetune_iters``
    batched solver steps (each row with its own context); ``None`` takes
    :func:`neural_ot.w2.maps.inverse_settings` (the conditional potential is an ICNN: 50 steps
    to 1e-5)."""
    finetune_iters, tol = inverse_settings(self.trainer, finetune_iters, tol,
                                           "ConditionalW2Map.inverse")
    arr, y2, feats = self._inputs(y, c, "y")
    fr = self.frame.astype(self.dtype)
    x, _ = _inverse(self.trainer, self.params, fr.to_target(y2), feats, finetune_iters, tol)
    x = fr.from_source(x)
    return x if arr.ndim == 2 else x[0]

  def predict(self, c) -> W2Map:
    """The map for one context ``c`` as a plain :class:`W2Map` (zero-shot: no training)."""
    feats = self.contexts.encode(c, None, "c")
    if feats.shape[0] != 1:
      raise ValueError(f"ConditionalW2Map.predict: `c` must be one context, got {feats.shape[0]}.")
    ctx = jnp.asarray(feats[0], self.dtype)
    trainer = dataclasses.replace(self.trainer, context_mode="fixed")
    params = {k: FixedContext.wrap(v, ctx) for k, v in self.params.items()}
    return W2Map(trainer, params, self.dim, float("nan"), (), self.frame)

  def finetune(self, source, target, c, steps: int = 100, **fit_options) -> W2Map:
    """Fit a plain map for context ``c`` on ``source``/``target`` samples, starting from the
    prediction (:meth:`predict`): ``fit_w2(source, target, init_map=self.predict(c), ...)``.

    The learning rate defaults to a fifth of the trained one and the warm-up to 10 steps (a
    prediction is already close; a full rate would first move it away). Other keywords go to
    :func:`neural_ot.fit_w2` (``max_seconds``, ``batch_size``, ``learning_rate``, ...).
    """
    fit_options.setdefault("learning_rate", self.trainer.learning_rate / 5)
    fit_options.setdefault("warmup_steps", 10)
    fit_options.setdefault("progress", False)
    return fit_w2(source, target, steps=steps, init_map=self.predict(c), **fit_options)

  def save(self, path: str) -> None:
    """Write the map to one file (atomic); read it back with :func:`neural_ot.load_map`."""
    meta = {"format": io.CONDITIONAL_MAP_FORMAT, "trainer": as_config(self.trainer), "dim": self.dim,
            "contexts": self.contexts.to_json(), "history": list(self.history)}
    io.save_atomic(path, {"format": io.CONDITIONAL_MAP_FORMAT, "meta": json.dumps(meta),
                          "frame": {k: np.asarray(v) for k, v in self.frame._asdict().items()},
                          "params": jax.tree.map(np.asarray, self.params)})


def load_conditional_map(path: str, raw: dict | None = None) -> ConditionalW2Map:
  """Load a map written by :meth:`ConditionalW2Map.save` (``raw``: the file's contents, already
  read). :func:`neural_ot.load_map` reads any map file of the library."""
  raw, meta = io.read_map_file(path, (io.CONDITIONAL_MAP_FORMAT,)) if raw is None else (
      raw, json.loads(raw["meta"]))
  try:
    trainer = W2Trainer(**meta["trainer"])
    params = jax.tree.map(jnp.asarray, raw["params"])
    mp = ConditionalW2Map(trainer, params, int(meta["dim"]), Contexts.from_json(meta["contexts"]),
                          Frame(**raw["frame"]), tuple(meta["history"]))
    if not trainer.conditional or trainer.context_dim != mp.contexts.dim:
      raise ValueError("parameters do not match the recorded network")
    io.check_map_contents(trainer, params, mp.dim, mp.frame)
  except Exception as exc:
    raise ValueError(f"load_map: {path!r} is a damaged neural_ot conditional map file "
                     f"({exc}).") from exc
  return mp
