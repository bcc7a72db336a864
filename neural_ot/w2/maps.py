"""A learned Wasserstein-2 map: ``T = grad f`` and its amortized inverse."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot.w2 import checkpoint
from neural_ot.w2.trainer import W2Trainer, as_config

__all__ = ["W2Map", "load_map"]

_FORMAT = "neural_ot.W2Map/1"


@functools.partial(jax.jit, static_argnums=0)
def _transport(trainer, params_f, x):
  return jax.vmap(jax.grad(trainer.potential_fn(params_f)))(x)


@functools.partial(jax.jit, static_argnums=0)
def _potential(trainer, params_f, x):
  return jax.vmap(trainer.potential_fn(params_f))(x)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _inverse(trainer, params, y, finetune_iters, tol):
  x_hat = trainer.predict(params["g"], y)
  if finetune_iters == 0:
    return x_hat, jnp.zeros(y.shape[:1], jnp.int32)
  solver = dataclasses.replace(trainer.solver, max_iters=finetune_iters, tol=tol)
  res = solver(trainer.potential_fn(params["f"]), y, x_hat)
  return res.x, res.n_iters


@dataclasses.dataclass(frozen=True)
class W2Map:
  """A learned OT map for the cost ``|x - y|^2``: ``transport = grad f``,
  ``inverse = grad f*`` (predicted argmax, fine-tuned).

  Attributes:
    trainer: the configuration the map was trained with (networks, solver).
    params: ``{"f": potential params, "g": predictor params}``.
    dim: dimension of the space.
    w2: squared W2 estimate from the dual on held-out samples (``nan`` if unknown).
    history: list of logged metric dicts.
  """

  trainer: W2Trainer
  params: Any
  dim: int
  w2: float = float("nan")
  history: tuple = ()

  def _check(self, x, name):
    arr = jnp.asarray(x)
    if arr.ndim not in (1, 2) or arr.shape[-1] != self.dim:
      raise ValueError(f"W2Map: `{name}` must have shape (n, {self.dim}) or ({self.dim},), got "
                       f"{tuple(np.shape(x))}.")
    dtype = jax.tree.leaves(self.params)[0].dtype
    return arr.astype(dtype)

  def transport(self, x) -> jax.Array:
    """Forward map ``grad f(x)``; ``x: (n, d)`` or ``(d,)``, numpy or jax."""
    arr = self._check(x, "x")
    out = _transport(self.trainer, self.params["f"], jnp.atleast_2d(arr))
    return out if arr.ndim == 2 else out[0]

  def __call__(self, x) -> jax.Array:
    return self.transport(x)

  def potential(self, x) -> jax.Array:
    """Convex potential ``f(x)``, shape ``(n,)``."""
    arr = self._check(x, "x")
    out = _potential(self.trainer, self.params["f"], jnp.atleast_2d(arr))
    return out if arr.ndim == 2 else out[0]

  def inverse(self, y, finetune_iters: int = 50, tol: float = 1e-5, return_iters: bool = False):
    """Inverse map ``grad f*(y) = argmax_x <x, y> - f(x)``: the predictor's
    guess refined by up to ``finetune_iters`` solver steps to ``|grad f(x) - y| < tol``."""
    arr = self._check(y, "y")
    x, iters = _inverse(self.trainer, self.params, jnp.atleast_2d(arr), int(finetune_iters),
                        float(tol))
    x = x if arr.ndim == 2 else x[0]
    return (x, iters) if return_iters else x

  def save(self, path: str) -> None:
    """Write the map to one file (atomic); read it back with :func:`load_map`."""
    meta = {"format": _FORMAT, "trainer": as_config(self.trainer), "dim": self.dim,
            "w2": self.w2, "history": list(self.history)}
    checkpoint.save_atomic(path, {"meta": json.dumps(meta),
                                  "params": jax.tree.map(np.asarray, self.params)})


def load_map(path: str) -> W2Map:
  """Load a map written by :meth:`W2Map.save`."""
  try:
    raw = checkpoint.load(path)
    meta = json.loads(raw["meta"])
    if meta.get("format") != _FORMAT:
      raise KeyError("format")
  except FileNotFoundError:
    raise
  except Exception as exc:  # msgpack, JSON or layout errors all mean "not a map file"
    raise ValueError(f"load_map: {path!r} is not a neural_ot W2 map file.") from exc
  trainer = W2Trainer(**meta["trainer"])
  params = jax.tree.map(jnp.asarray, raw["params"])
  return W2Map(trainer, params, int(meta["dim"]), float(meta["w2"]), tuple(meta["history"]))
