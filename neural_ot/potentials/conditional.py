"""Conditional potentials: convex in ``x`` for every context ``c`` (a partially input-convex
network, PICNN; Amos, Xu, Kolter 2017) and a conditional amortized argmax.

``ConditionalICNN`` is an ICNN whose layers are modulated by a context path
``u = MLP(c)`` (not convex, unconstrained):

  ``z_1 = s(A_0 x * (1 + a_0(u)) + b_0(u))``,
  ``z_{k+1} = s(W_k^+ z_k * g_k(u) + A_k x * (1 + a_k(u)) + b_k(u))``,
  ``f(x; c) = w^+ z_L * g_L(u) + <b(c), x> + 0.5 |x Q(c)|^2 + 0.5 m |x|^2``

with ``W^+ >= 0`` and gains ``g(u) = softplus(.) > 0``: every pre-activation is a
non-negative combination of convex functions of ``x`` plus an affine function of ``x``, so
``f(.; c)`` is convex for every ``c``. The base ``0.5 |x Q(c)|^2 + <b(c), x>`` is affine in the
(standardised) context, ``Q(c) = Q_0 + sum_j c_j Q_j``, ``b(c) = b_0 + c K``; a trainer sets it
(``from_base``) so that ``grad f(.; c)`` starts at the Gaussian OT map of each training
context, and the network learns the correction. ``ConditionalPredictor`` predicts the
conjugate's argmax, ``x_hat(y; c) = y B(c) + e(c) + MLP([y, u])``, with its affine part set to
the inverse Gaussian maps.

The context path sees ``4 tanh(c / 4)`` (a soft clip of the standardised context).
``FixedContext`` wraps either network into a plain (unconditional) one whose context is a
parameter: a conditional prediction becomes the starting point of an ordinary fit.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from neural_ot.potentials.icnn import ACTIVATIONS, PositiveDense

__all__ = ["ConditionalICNN", "ConditionalPredictor", "FixedContext"]

_ONE = 0.5413248546129181  # softplus(_ONE) == 1: context gains start at 1


def _context_path(c, hidden):
  # A soft clip to |c| < 4 (about the identity on standardised training contexts): a context
  # far outside the training range (a new pair of measures, a large dose) cannot drive the
  # correction wild; the affine base still sees the context as it is.
  u = 4.0 * jnp.tanh(c / 4.0)
  for width in hidden:
    u = jax.nn.gelu(nn.Dense(width)(u))
  return u


def _zeros_dense(features, name=None, use_bias=True):
  return nn.Dense(features, kernel_init=nn.initializers.zeros, use_bias=use_bias, name=name)


def _affine_in_context(module, c, d, name, eye: bool):
  """``M(c) = M_0 + sum_j c_j M_j`` (``(..., d, d)``) and ``v(c) = v_0 + c K`` (``(..., d)``)."""
  m0 = module.param(f"{name}_0", lambda key, shape: jnp.eye(d) if eye else jnp.zeros(shape), (d, d))
  mc = module.param(f"{name}_c", nn.initializers.zeros, (c.shape[-1], d, d))
  v0 = module.param(f"{name}_v0", nn.initializers.zeros, (d,))
  vc = module.param(f"{name}_vc", nn.initializers.zeros, (c.shape[-1], d))
  mat = m0 + jnp.einsum("...j,jab->...ab", c, mc)
  return mat.astype(c.dtype), (v0 + c @ vc).astype(c.dtype)


def _set_base(params, name, m0, mc, v0, vc):
  p = dict(params["params"])
  dtype = p[f"{name}_0"].dtype
  for key, val in ((f"{name}_0", m0), (f"{name}_c", mc), (f"{name}_v0", v0), (f"{name}_vc", vc)):
    p[key] = jnp.asarray(val, dtype).reshape(p[key].shape)
  return {**params, "params": p}


class ConditionalICNN(nn.Module):
  """Potential ``f(x; c)``, convex in ``x: (..., d)`` for every context ``c: (..., k)``.

  Attributes:
    hidden: widths of the convex path.
    context_hidden: widths of the context path ``u = MLP(c)``.
    activation: convex non-decreasing activation of the convex path.
    strong_convexity: fixed extra ``0.5 * m |x|^2`` (m >= 0).
  """

  hidden: Sequence[int] = (64, 64)
  context_hidden: Sequence[int] = (64, 64)
  activation: str = "celu"
  strong_convexity: float = 0.0

  @nn.compact
  def __call__(self, x, c):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"ConditionalICNN: `activation` must be one of {sorted(ACTIVATIONS)}, got "
                       f"{self.activation!r}.")
    act = ACTIVATIONS[self.activation]
    u = _context_path(c, self.context_hidden)
    gain = lambda width: jax.nn.softplus(_zeros_dense(width)(u) + _ONE)

    def affine_x(width):
      return nn.Dense(width)(x) * (1.0 + _zeros_dense(width)(u)) + _zeros_dense(width)(u)

    z = act(affine_x(self.hidden[0]))
    for width in self.hidden[1:]:
      z = act(PositiveDense(width)(z) * gain(width) + affine_x(width))
    out = (PositiveDense(1)(z) * gain(1))[..., 0]
    d = x.shape[-1]
    quad, lin = _affine_in_context(self, c, d, "quad", eye=True)
    xq = jnp.einsum("...a,...ab->...b", x, quad)
    return (out + jnp.sum(lin * x, -1) + 0.5 * jnp.sum(xq * xq, -1)
            + 0.5 * self.strong_convexity * jnp.sum(x * x, -1))

  def from_base(self, params, q0, qc, b0, bc):
    """Set the base: ``Q(c) = q0 + sum_j c_j qc[j]`` (``(d, d)``, ``(k, d, d)``) and
    ``b(c) = b0 + c bc`` (``(d,)``, ``(k, d)``); ``grad f(x; c)`` starts near
    ``Q(c) Q(c)^T x + m x + b(c)`` (``x Q`` is a row vector times ``Q``)."""
    return _set_base(params, "quad", q0, qc, b0, bc)

  def decay_mask(self, params):
    """Weight decay on everything but the base (its scale is the map's)."""
    return {**params, "params": {k: jax.tree.map(lambda _, k=k: not k.startswith("quad"), v)
                                 for k, v in params["params"].items()}}


class ConditionalPredictor(nn.Module):
  """Amortized argmax ``x_hat(y; c) = y B(c) + e(c) + MLP([y, u(c)])`` (last layer zero at
  initialisation, so the prediction starts at the affine part)."""

  hidden: Sequence[int] = (64, 64)
  context_hidden: Sequence[int] = (64, 64)

  @nn.compact
  def __call__(self, y, c):
    d = y.shape[-1]
    u = _context_path(c, self.context_hidden)
    z = jnp.concatenate([y, jnp.broadcast_to(u, y.shape[:-1] + u.shape[-1:])], -1)
    for width in self.hidden:
      z = jax.nn.gelu(nn.Dense(width)(z))
    res = _zeros_dense(d)(z)
    mat, vec = _affine_in_context(self, c, d, "affine", eye=True)
    return jnp.einsum("...a,...ab->...b", y, mat) + vec + res

  def from_base(self, params, m0, mc, v0, vc):
    """Set the affine part ``y -> y B(c) + e(c)``, ``B(c) = m0 + sum_j c_j mc[j]``,
    ``e(c) = v0 + c vc``."""
    return _set_base(params, "affine", m0, mc, v0, vc)

  def decay_mask(self, params):
    """Weight decay on every parameter of the predictor."""
    return jax.tree.map(lambda _: True, params)


class FixedContext(nn.Module):
  """``x -> net(x, context)`` with the context a (trainable) parameter of shape ``(k,)``: a
  conditional network as a plain one, e.g. to fine-tune the prediction for one context."""

  net: nn.Module
  context_dim: int

  @nn.compact
  def __call__(self, x):
    c = self.param("context", nn.initializers.zeros, (self.context_dim,))
    return self.net(x, jnp.broadcast_to(c.astype(x.dtype), x.shape[:-1] + c.shape))

  @staticmethod
  def wrap(params, context):
    """Plain parameters from the conditional network's ``params`` and a context ``(k,)``."""
    return {"params": {"net": params["params"], "context": jnp.asarray(context)}}

  def decay_mask(self, params):
    inner = self.net.decay_mask({"params": params["params"]["net"]})["params"]
    return {"params": {"net": inner, "context": False}}
