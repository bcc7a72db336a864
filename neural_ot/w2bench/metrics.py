"""Benchmark metrics (Korotin et al. 2021): L2-UVP and cosine similarity, both directions."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot import gaussian

__all__ = ["l2_uvp", "cos_similarity", "evaluate", "baselines"]


def l2_uvp(pred, true, var: float) -> float:
  """``100 * mean |pred - true|^2 / var`` (percent of the unexplained variance)."""
  return float(100.0 * jnp.mean(jnp.sum((jnp.asarray(pred) - jnp.asarray(true)) ** 2, -1)) / var)


def cos_similarity(x, true, pred, two_cost: float) -> float:
  """``mean <true - x, pred - x> / sqrt(two_cost * mean |pred - x|^2)``.

  A map that does not move any point (the identity baseline, ``pred == x``) has no
  direction to compare: its cosine is defined as ``0.0`` (no alignment with the true
  displacement, like an uninformative map), not ``0 / 0``.
  """
  x, true, pred = jnp.asarray(x), jnp.asarray(true), jnp.asarray(pred)
  num = jnp.mean(jnp.sum((true - x) * (pred - x), -1))
  den2 = two_cost * jnp.mean(jnp.sum((pred - x) ** 2, -1))
  if float(den2) == 0.0:  # NaN inputs still give NaN
    return 0.0
  return float(num / jnp.sqrt(den2))


def evaluate(pair, forward: Callable | None = None, inverse: Callable | None = None,
             n: int = 4096, seed: int = 0) -> dict:
  """Score a forward map ``P -> Q`` and/or an inverse ``Q -> P`` on pairs ``(X, T(X))``."""
  x, y = pair.pairs(jax.random.PRNGKey(seed), n)
  out = {}
  if forward is not None:
    tx = forward(x)
    out["uvp_fwd"] = l2_uvp(tx, y, pair.var_target)
    out["cos_fwd"] = cos_similarity(x, y, tx, pair.two_cost)
  if inverse is not None:
    sy = inverse(y)
    out["uvp_inv"] = l2_uvp(sy, x, pair.var_source)
    out["cos_inv"] = cos_similarity(y, x, sy, pair.two_cost)
  return out


def baselines(pair) -> dict:
  """``{name: (forward, inverse)}``: identity, constant (the other measure's mean) and the
  linear (Gaussian/Bures) maps: the stored ones when the pair carries them (the benchmark
  files), otherwise the closed-form map between the moment-matched Gaussians of 2^14 samples."""
  key = jax.random.PRNGKey(777)
  mx = jnp.mean(pair.sample_source(key, 2 ** 14), 0)
  my = jnp.mean(pair.sample_target(key, 2 ** 14), 0)
  out = {"identity": (lambda x: x, lambda y: y),
         "constant": (lambda x: jnp.broadcast_to(my, x.shape),
                      lambda y: jnp.broadcast_to(mx, y.shape))}
  e = pair.extras
  if "linear_map_fwd_weight" in e:
    wf, bf = np.asarray(e["linear_map_fwd_weight"]), np.asarray(e["linear_map_fwd_bias"])
    wi, bi = np.asarray(e["linear_map_inv_weight"]), np.asarray(e["linear_map_inv_bias"])
    out["linear"] = (lambda x: x @ wf.T + bf, lambda y: y @ wi.T + bi)
  else:
    ms = gaussian.moments(pair.sample_source(key, 2 ** 14))
    mt = gaussian.moments(pair.sample_target(key, 2 ** 14))
    af, bf = gaussian.gaussian_map(*ms, *mt)
    ai, bi = gaussian.gaussian_map(*mt, *ms)
    out["linear"] = (lambda x: x @ af.T + bf, lambda y: y @ ai.T + bi)
  return out
