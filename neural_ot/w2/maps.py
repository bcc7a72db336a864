"""A learned Wasserstein-2 map: ``T = grad f`` and its amortized inverse."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot import _validation, io
from neural_ot.w2.diagnostics import FitDiagnostics
from neural_ot.w2.trainer import W2Trainer, as_config

__all__ = ["W2Map", "Frame", "load_w2_map", "inverse_settings"]


class Frame(NamedTuple):
  """Standardisation of the two measures: ``x' = (x - mx) / sx``, ``y' = (y - my) / sy``
  (scalars ``sx, sy > 0``; translations and positive scalings keep optimal maps optimal)."""

  mx: Any
  sx: Any
  my: Any
  sy: Any

  @classmethod
  def fit(cls, x, y) -> "Frame":
    """Means and root mean per-coordinate standard deviations of samples ``x``, ``y``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = lambda v: max(float(np.sqrt(np.mean(np.var(v, 0)))), 1e-12)
    return cls(x.mean(0), np.float64(scale(x)), y.mean(0), np.float64(scale(y)))

  @classmethod
  def common(cls, x, y) -> "Frame":
    """One frame for both measures (what a cost ``h(x - y)`` allows): the mean of the two
    means and the root of the two mean per-coordinate variances' average."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m = 0.5 * (x.mean(0) + y.mean(0))
    s = max(float(np.sqrt(0.5 * (np.mean(np.var(x, 0)) + np.mean(np.var(y, 0))))), 1e-12)
    return cls(m, np.float64(s), m, np.float64(s))

  @classmethod
  def identity(cls, dim: int) -> "Frame":
    return cls(np.zeros(dim), np.float64(1.0), np.zeros(dim), np.float64(1.0))

  def astype(self, dtype) -> "Frame":
    return Frame(*(jnp.asarray(v, dtype) for v in self))

  def to_source(self, x):
    return (x - self.mx) / self.sx

  def to_target(self, y):
    return (y - self.my) / self.sy

  def from_source(self, x):
    return x * self.sx + self.mx

  def from_target(self, y):
    return y * self.sy + self.my


@functools.partial(jax.jit, static_argnums=0)
def _transport(trainer, params_f, x):
  return trainer.transport(params_f, x)


@functools.partial(jax.jit, static_argnums=0)
def _potential(trainer, params_f, x):
  return jax.vmap(trainer.potential_fn(params_f))(x)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _inverse(trainer, params, y, finetune_iters, tol):
  x_hat = trainer.predict(params["g"], y)
  if finetune_iters == 0:
    return x_hat, jnp.zeros(y.shape[:1], jnp.int32)
  solver = dataclasses.replace(trainer.solver, max_iters=finetune_iters, tol=tol)
  res = trainer.solve(solver, trainer.potential_fn(params["f"]), y, x_hat)
  return res.x, res.n_iters


# The convex potential's conjugate is a concave problem: a long solve is its exact gradient.
ICNN_INVERSE = (50, 1e-5)


def inverse_settings(trainer, finetune_iters=None, tol=None, who="W2Map.inverse"):
  """The conjugate solve ``(steps, tol)`` of a map's inverse; ``None`` takes the default.

  For the non-convex MLP potential the default is the solve it was trained with
  (``trainer.finetune_iters`` steps to ``trainer.finetune_tol``): the dual was minimised with
  that conjugate, so ``f`` was corrected only where that solve reaches, and a longer solve finds
  maxima of ``<x, y> - f(x)`` where ``f`` is too low. Measured (inverse L2-UVP %, 10 / 30 / 50
  steps to 1e-3 / 1e-4 / 1e-5, ``fit_w2`` defaults for 200-300 s, tune half of
  :mod:`neural_ot.w2bench.families`): lse-box D = 64 30.6 / 114 / 289, D = 32 15.8 / 22.2 /
  29.8; ridges-gmm D = 64 1.44 / 1.45 / 1.45, icnn-student D = 64 1.160 all three. For the
  convex ICNN (a concave argmax problem) :data:`ICNN_INVERSE`.
  """
  steps0, tol0 = ((trainer.finetune_iters, trainer.finetune_tol) if trainer.potential == "mlp"
                  else ICNN_INVERSE)
  finetune_iters = steps0 if finetune_iters is None else finetune_iters
  tol = tol0 if tol is None else tol
  if not (_validation.is_int(finetune_iters) and finetune_iters >= 0):
    raise ValueError(f"{who}: `finetune_iters` must be None or an int >= 0, got "
                     f"{finetune_iters!r}.")
  if not (_validation.is_real(tol) and tol > 0):
    raise ValueError(f"{who}: `tol` must be None or a number > 0, got {tol!r}.")
  return int(finetune_iters), float(tol)


@dataclasses.dataclass(frozen=True)
class W2Map:
  """A learned OT map for the cost ``|x - y|^2``: ``transport = grad f``,
  ``inverse = grad f*`` (predicted argmax, fine-tuned); or, when ``trainer.cost`` is a
  translation-invariant cost ``h(x - y)`` (:func:`neural_ot.fit_map`),
  ``transport = x - grad h*(x - grad f(x))`` and ``inverse`` the c-transform's minimiser.

  Attributes:
    trainer: the configuration the map was trained with (networks, solver, cost).
    params: ``{"f": potential params, "g": predictor params}``.
    dim: dimension of the space.
    w2: squared W2 estimate from the dual on held-out samples (``nan`` if unknown); for a
      map of another cost, its transport cost ``E h(x - T(x))`` on held-out samples.
    history: list of logged metric dicts.
    frame: the standardisation the networks were trained in (:class:`Frame`); the map's
      methods take and return the user's units.
    diagnostics: what ``fit_w2`` measured on held-out samples at the end (a
      :class:`neural_ot.w2.diagnostics.FitDiagnostics`: held-out dual of the Gaussian start and
      of the map, inactive units, conjugate residuals, a stall flag, the automatic model
      choice), or ``None``.
  """

  trainer: W2Trainer
  params: Any
  dim: int
  w2: float = float("nan")
  history: tuple = ()
  frame: Frame | None = None
  diagnostics: Any = None

  def __post_init__(self):
    if self.frame is None:
      object.__setattr__(self, "frame", Frame.identity(self.dim))

  def __repr__(self):
    n = sum(int(np.size(v)) for v in jax.tree.leaves(self.params))
    return (f"W2Map(dim={self.dim}, potential={self.trainer.potential!r}, "
            f"hidden={self.trainer.hidden}, parameters={n}, w2={self.w2:.6g})")

  @property
  def dtype(self):
    return jax.tree.leaves(self.params)[0].dtype
  def _check(self, x, name):
    arr = _validation.as_float_array(x, name)  # None, ragged, strings, complex: named errors
    if arr.ndim not in (1, 2) or arr.shape[-1] != self.dim:
      raise ValueError(f"W2Map: `{name}` must have shape (n, {self.dim}) or ({self.dim},), got "
                       f"{tuple(arr.shape)}.")
    _validation.check_finite(arr, name)  # NaN in, NaN out would be silent
    return arr.astype(self.dtype)

  def transport(self, x) -> jax.Array:
    """Forward map ``grad f(x)``; ``x: (n, d)`` or ``(d,)``, numpy or jax."""
    arr = self._check(x, "x")
    fr = self.frame.astype(self.dtype)
    out = fr.from_target(_transport(self.trainer, self.params["f"],
                                    fr.to_source(jnp.atleast_2d(arr))))
    return out if arr.ndim == 2 else out[0]

  def __call__(self, x) -> jax.Array:
    return self.transport(x)

  def potential(self, x) -> jax.Array:
    """The potential ``f(x)`` (up to a constant; ``grad f`` is :meth:`transport`; convex with
    ``potential="icnn"``), shape ``(n,)``."""
    arr = self._check(x, "x")
    fr = self.frame.astype(self.dtype)
    x2 = jnp.atleast_2d(arr)
    out = (fr.sx * fr.sy * _potential(self.trainer, self.params["f"], fr.to_source(x2))
           + x2 @ fr.my)
    return out if arr.ndim == 2 else out[0]

  def inverse(self, y, finetune_iters: int | None = None, tol: float | None = None,
              return_iters: bool = False):
    """Inverse map ``grad f*(y) = argmax_x <x, y> - f(x)``: the predictor's
    guess refined by up to ``finetune_iters`` solver steps to ``|grad f(x) - y| < tol``.

    ``None`` (the default) takes :func:`inverse_settings`: for the non-convex MLP potential
    the solve the map was trained with (``trainer.finetune_iters``, ``trainer.finetune_tol``),
    for the convex ICNN 50 steps to 1e-5.
    """
    arr = self._check(y, "y")
    fr = self.frame.astype(self.dtype)
    finetune_iters, tol = inverse_settings(self.trainer, finetune_iters, tol, "W2Map.inverse")
    x, iters = _inverse(self.trainer, self.params, fr.to_target(jnp.atleast_2d(arr)),
                        finetune_iters, tol)
    x = fr.from_source(x)
    x = x if arr.ndim == 2 else x[0]
    return (x, iters) if return_iters else x

  def save(self, path: str) -> None:
    """Write the map to one file (atomic); read it back with :func:`neural_ot.load_map`."""
    meta = {"format": io.W2_MAP_FORMAT, "trainer": as_config(self.trainer), "dim": self.dim,
            "w2": self.w2, "history": list(self.history),
            "diagnostics": None if self.diagnostics is None else self.diagnostics.as_dict()}
    io.save_atomic(path, {"format": io.W2_MAP_FORMAT, "meta": json.dumps(meta),
                          "frame": {k: np.asarray(v) for k, v in self.frame._asdict().items()},
                          "params": jax.tree.map(np.asarray, self.params)})

  def to_ott(self, finetune_iters: int | None = None, tol: float | None = None):
    """The map as ott-jax dual potentials, for ott-jax's transport, plotting and evaluation.

    ott-jax writes the dual of OT with ``c(x, y) = |x - y|^2`` (``costs.SqEuclidean``) as
    ``f(x) + g(y) <= |x - y|^2`` and transports by ``x - grad f(x) / 2``. With this map's
    potential ``phi`` (``grad phi`` = :meth:`transport`, in the user's units) the
    optimal pair is ``f(x) = |x|^2 - 2 phi(x)``, ``g(y) = |y|^2 - 2 phi*(y)``, so that
    ``to_ott().transport(x)`` equals :meth:`transport` and ``transport(y, forward=False)``
    equals :meth:`inverse`, and ``distance(x, y)`` estimates W2^2. ``phi*(y)`` is evaluated
    at the fine-tuned argmax of :meth:`inverse` (Danskin: its gradient is that argmax).

    Args:
      finetune_iters: conjugate-solver steps for ``g`` (as in :meth:`inverse`; ``None``:
        :func:`inverse_settings`).
      tol: the solver's tolerance on ``|grad phi(x) - y|`` (standardised units; ``None``: as
        ``finetune_iters``).

    Returns:
      ``ott.problems.linear.potentials.DualPotentials`` with ``cost_fn=SqEuclidean()``;
      ``f`` and ``g`` take one point ``(d,)`` and return a scalar.
    """
    if self.trainer.cost is not None:
      raise ValueError(f"W2Map.to_ott: only maps of the cost |x - y|^2 convert; this map's "
                       f"cost is {self.trainer.cost!r}.")
    from ott.geometry import costs  # pylint: disable=import-outside-toplevel  (optional: ott-jax loads on use, it is slow to import)
    from ott.problems.linear import potentials  # pylint: disable=import-outside-toplevel

    fr = self.frame.astype(self.dtype)
    phi_std = self.trainer.potential_fn(self.params["f"])
    iters, tol = inverse_settings(self.trainer, finetune_iters, tol, "W2Map.to_ott")
    trainer, params = self.trainer, self.params

    def phi(x):  # the potential in user units: grad phi(x) = sy grad phi_std(x') + my
      return fr.sx * fr.sy * phi_std(fr.to_source(x)) + x @ fr.my

    def phi_star(y):  # <x*, y> - phi(x*) at the argmax x*, held fixed (Danskin)
      x_std, _ = _inverse(trainer, params, fr.to_target(y)[None], iters, tol)
      x_star = jax.lax.stop_gradient(fr.from_source(x_std[0]))
      return x_star @ y - phi(x_star)

    return potentials.DualPotentials(
        f=lambda x: jnp.sum(x ** 2) - 2.0 * phi(x),
        g=lambda y: jnp.sum(y ** 2) - 2.0 * phi_star(y),
        cost_fn=costs.SqEuclidean())


def load_w2_map(path: str, raw: dict | None = None) -> W2Map:
  """Load a map written by :meth:`W2Map.save` (``raw``: the file's contents, already read).
  :func:`neural_ot.load_map` reads any map file of the library."""
  raw, meta = io.read_map_file(path, (io.W2_MAP_FORMAT,)) if raw is None else (
      raw, json.loads(raw["meta"]))
  try:  # a damaged file (bit flips) can be valid msgpack with broken contents
    trainer = W2Trainer(**meta["trainer"])
    params = jax.tree.map(jnp.asarray, raw["params"])
    frame = Frame(**raw["frame"]) if "frame" in raw else None  # older files: identity
    diag = meta.get("diagnostics")
    if diag is not None:
      diag = FitDiagnostics(**{**diag, "inactive_by_layer": tuple(diag["inactive_by_layer"])})
    mp = W2Map(trainer, params, int(meta["dim"]), float(meta["w2"]), tuple(meta["history"]),
               frame, diag)
    io.check_map_contents(trainer, params, mp.dim, mp.frame)
  except Exception as exc:
    raise ValueError(f"load_map: {path!r} is a damaged neural_ot W2 map file ({exc}).") from exc
  return mp
