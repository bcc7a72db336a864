"""Convex potentials: an input-convex neural network (ICNN) and a plain MLP.

ICNN (Amos, Xu, Kolter 2017): ``z_1 = s(A_0 x + b_0)``,
``z_{k+1} = s(W_k z_k + A_k x + b_k)`` with ``W_k >= 0`` (softplus of a free
parameter, so convexity holds by construction) and ``s`` convex and
non-decreasing; the output adds ``0.5 * alpha |x|^2`` with ``alpha > 0``
learnable (``alpha = 1`` at initialisation, so ``grad f`` starts near the
identity map) plus ``0.5 * strong_convexity |x|^2``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["ICNN", "MLPPotential"]

_ACTS = {"softplus": jax.nn.softplus, "celu": jax.nn.celu, "elu": jax.nn.elu,
         "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.2), "relu": jax.nn.relu}


class _PositiveDense(nn.Module):
  """Dense layer whose kernel is ``softplus(raw) / fan_in`` (>= 0), no bias."""

  features: int

  @nn.compact
  def __call__(self, z):
    fan_in = z.shape[-1]
    raw = self.param("raw_kernel", nn.initializers.normal(0.1), (fan_in, self.features))
    # softplus(-1.5) ~ 0.2: a small positive start keeps activations O(1).
    return z @ (jax.nn.softplus(raw - 1.5) / fan_in)


class ICNN(nn.Module):
  """Input-convex potential ``f: (d,) -> scalar`` (also accepts ``(..., d)``).

  Attributes:
    hidden: widths of the hidden layers.
    activation: convex non-decreasing activation name.
    strong_convexity: fixed extra ``0.5 * c |x|^2`` (c >= 0).
  """

  hidden: Sequence[int] = (64, 64)
  activation: str = "softplus"
  strong_convexity: float = 0.0

  @nn.compact
  def __call__(self, x):
    if self.activation not in _ACTS:
      raise ValueError(f"ICNN: `activation` must be one of {sorted(_ACTS)}, got "
                       f"{self.activation!r}.")
    if not self.hidden:
      raise ValueError("ICNN: `hidden` must list at least one layer width.")
    act = _ACTS[self.activation]
    small = nn.initializers.normal(0.01)
    z = act(nn.Dense(self.hidden[0], kernel_init=small)(x))
    for width in self.hidden[1:]:
      z = act(_PositiveDense(width)(z) + nn.Dense(width, kernel_init=small)(x))
    out = _PositiveDense(1)(z)[..., 0] + nn.Dense(1, kernel_init=small)(x)[..., 0]
    log_alpha = self.param("log_alpha", nn.initializers.zeros, ())
    sq = 0.5 * jnp.sum(x * x, axis=-1)
    return out + (jnp.exp(log_alpha) + self.strong_convexity) * sq


class MLPPotential(nn.Module):
  """A plain (not necessarily convex) MLP potential plus ``0.5 |x|^2``."""

  hidden: Sequence[int] = (64, 64)

  @nn.compact
  def __call__(self, x):
    z = x
    for width in self.hidden:
      z = jax.nn.softplus(nn.Dense(width)(z))
    return nn.Dense(1, kernel_init=nn.initializers.normal(0.01))(z)[..., 0] + 0.5 * jnp.sum(
        x * x, axis=-1)
