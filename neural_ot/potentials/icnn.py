"""Convex potentials: an input-convex neural network (ICNN) and a plain MLP.

ICNN (Amos, Xu, Kolter 2017): ``z_1 = s(A_0 x + b_0)``,
``z_{k+1} = s(W_k z_k + A_k x + b_k)`` with ``W_k >= 0`` (softplus of a free
parameter, so convexity holds by construction) and ``s`` convex and
non-decreasing; the output adds a learnable convex quadratic
``0.5 |x W|^2`` (``W = I`` at initialisation, so ``grad f`` starts near the
identity map; a trainer may set ``W`` and the linear term from the measures'
moments so that ``grad f`` starts at the Gaussian OT map) plus
``0.5 * strong_convexity |x|^2``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from neural_ot import gaussian

__all__ = ["ICNN", "MLPPotential", "MLPPredictor"]

_ACTS = {"softplus": jax.nn.softplus, "celu": jax.nn.celu, "elu": jax.nn.elu,
         "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.2), "relu": jax.nn.relu}


ACTIVATIONS = _ACTS  # the activation names the ICNNs accept


def _set_quadratic(params, a, b, strong_convexity=0.0):
  """Parameters with the quadratic and linear terms set so that ``grad f(x) = A x + b`` at
  initialisation (the network part starts near zero): ``W = (A - c I)^{1/2}``."""
  p = dict(params["params"])
  dtype = p["quad"].dtype
  # A - cI must stay PSD: eigenvalues below the strong convexity are clipped to (nearly) zero.
  root = gaussian.sqrtm_psd(jnp.asarray(a, jnp.float32), shift=strong_convexity, floor=1e-6)
  p["quad"] = root.astype(dtype)
  p["linear"] = {"kernel": jnp.asarray(b, dtype)[:, None], "bias": jnp.zeros((1,), dtype)}
  return {**params, "params": p}


def _decay_all_but_quad(params):
  """Weight-decay mask: every parameter except the quadratic term (its scale is the map's)."""
  return {**params, "params": {k: jax.tree.map(lambda _, k=k: k != "quad", v)
                               for k, v in params["params"].items()}}


class _PositiveDense(nn.Module):
  """Dense layer whose kernel is ``softplus(raw) / fan_in`` (>= 0), no bias."""

  features: int

  @nn.compact
  def __call__(self, z):
    fan_in = z.shape[-1]
    raw = self.param("raw_kernel", nn.initializers.normal(0.1), (fan_in, self.features))
    # softplus(-1.5) ~ 0.2: a small positive start keeps activations O(1).
    return z @ (jax.nn.softplus(raw - 1.5) / fan_in)


# Public alias (the class keeps its name: flax names parameters after it, and saved maps
# must keep loading).
PositiveDense = _PositiveDense


class ICNN(nn.Module):
  """Input-convex potential ``f: (d,) -> scalar`` (also accepts ``(..., d)``).

  Attributes:
    hidden: widths of the hidden layers.
    activation: convex non-decreasing activation name.
    strong_convexity: fixed extra ``0.5 * c |x|^2`` (c >= 0).
    output_scale: factor on the network part at initialisation scale (> 0).
  """

  hidden: Sequence[int] = (64, 64)
  activation: str = "celu"
  strong_convexity: float = 0.0
  output_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    if self.activation not in _ACTS:
      raise ValueError(f"ICNN: `activation` must be one of {sorted(_ACTS)}, got "
                       f"{self.activation!r}.")
    if not self.hidden:
      raise ValueError("ICNN: `hidden` must list at least one layer width.")
    act = _ACTS[self.activation]
    # Input layers at unit scale (features vary over standardised data); the
    # output layer starts small, so grad f starts near the quadratic's map.
    small = nn.initializers.normal(0.01)
    z = act(nn.Dense(self.hidden[0])(x))
    for width in self.hidden[1:]:
      z = act(_PositiveDense(width)(z) + nn.Dense(width)(x))
    out = self.output_scale * _PositiveDense(1)(z)[..., 0]
    out = out + nn.Dense(1, kernel_init=small, name="linear")(x)[..., 0]
    d = x.shape[-1]
    quad = self.param("quad", lambda key, shape: jnp.eye(shape[0]), (d, d))
    xw = x @ quad
    return (out + 0.5 * jnp.sum(xw * xw, axis=-1)
            + 0.5 * self.strong_convexity * jnp.sum(x * x, axis=-1))

  def from_affine(self, params, a, b):
    """``params`` (from ``init``) changed so that ``grad f`` starts at ``x -> A x + b``
    (``A`` symmetric PSD), with the strong convexity term counted in."""
    return _set_quadratic(params, a, b, self.strong_convexity)

  def from_moments(self, params, source_moments, target_moments):
    """``params`` set so that ``grad f`` starts at the OT map between the Gaussians with the
    given ``(mean, cov)`` moments (closed form, :func:`neural_ot.gaussian.gaussian_map`)."""
    return self.from_affine(params, *gaussian.gaussian_map(*source_moments, *target_moments))

  def decay_mask(self, params):
    """Which parameters take weight decay (all but the quadratic term)."""
    return _decay_all_but_quad(params)


class MLPPotential(nn.Module):
  """A plain (not necessarily convex) MLP potential plus the quadratic ``0.5 |x W|^2``, a linear
  term (``W = I`` at initialisation) and a fixed ``0.5 * strong_convexity |x|^2``.

  Softplus activations. The network part has a bounded gradient, so the conjugate's supremum is
  finite whenever the quadratic part is positive definite (``strong_convexity > 0`` guarantees
  it), but its argmax problem need not be concave: the trainer's local solve can miss the global
  one (``W2Trainer.batch_candidates``).
  """

  hidden: Sequence[int] = (64, 64)
  strong_convexity: float = 0.0
  leak: float = 0.0

  @nn.compact
  def __call__(self, x):
    z = x
    for width in self.hidden:
      u = nn.Dense(width)(z)
      # leak > 0: s(u) = leak * u + (1 - leak) softplus(u), whose slope never falls below
      # `leak`, so a unit pushed far negative still passes gradient back and can recover.
      z = jax.nn.softplus(u) if self.leak == 0 else self.leak * u + (1 - self.leak) * (
          jax.nn.softplus(u))
    out = nn.Dense(1, kernel_init=nn.initializers.normal(0.01))(z)[..., 0]
    out = out + nn.Dense(1, kernel_init=nn.initializers.normal(0.01), name="linear")(x)[..., 0]
    d = x.shape[-1]
    quad = self.param("quad", lambda key, shape: jnp.eye(shape[0]), (d, d))
    xw = x @ quad
    return out + 0.5 * jnp.sum(xw * xw, axis=-1) + 0.5 * self.strong_convexity * jnp.sum(
        x * x, axis=-1)

  def from_affine(self, params, a, b):
    """``params`` set so that ``grad f`` starts at ``x -> A x + b``."""
    return _set_quadratic(params, a, b, self.strong_convexity)

  def from_moments(self, params, source_moments, target_moments):
    """``params`` set so that ``grad f`` starts at the Gaussian OT map of the moments."""
    return self.from_affine(params, *gaussian.gaussian_map(*source_moments, *target_moments))

  def decay_mask(self, params):
    """Which parameters take weight decay (all but the quadratic term)."""
    return _decay_all_but_quad(params)


class MLPPredictor(nn.Module):
  """Amortized argmax model ``x_hat(y) = y B + c + MLP(y)`` for the conjugate.

  ``B = I``, ``c = 0`` and a zero last layer at initialisation, so the
  prediction starts at the identity (a trainer may set ``B, c`` to the inverse
  Gaussian map).
  """

  hidden: Sequence[int] = (64, 64)

  @nn.compact
  def __call__(self, y):
    d = y.shape[-1]
    z = y
    for width in self.hidden:
      z = jax.nn.gelu(nn.Dense(width)(z))
    res = nn.Dense(d, kernel_init=nn.initializers.zeros)(z)
    affine = nn.Dense(d, kernel_init=lambda key, shape, dtype=jnp.float32: jnp.eye(shape[0], dtype=dtype),
                      name="affine")
    return affine(y) + res

  def from_affine(self, params, a, b):
    """``params`` (from ``init``) changed so that the prediction starts at ``y -> A y + b``."""
    p = dict(params["params"])
    dtype = p["affine"]["kernel"].dtype
    # flax Dense computes y @ kernel: the kernel is A^T.
    p["affine"] = {"kernel": jnp.asarray(a, dtype).T, "bias": jnp.asarray(b, dtype)}
    return {**params, "params": p}

  def from_moments(self, params, source_moments, target_moments):
    """Start at the inverse Gaussian OT map (target Gaussian -> source Gaussian)."""
    return self.from_affine(params, *gaussian.gaussian_map(*target_moments, *source_moments))

  def decay_mask(self, params):
    """Weight decay on every parameter of the predictor."""
    return jax.tree.map(lambda _: True, params)
