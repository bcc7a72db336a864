"""Histogram problem families on fixed grids for Meta OT: Gaussian mixtures and 8x8 digits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["grid", "gaussian_mixture_histograms", "digits_histograms"]


def grid(size: int) -> jax.Array:
  """Points of a ``size x size`` grid on ``[0, 1]^2``, shape ``(size**2, 2)``, row-major."""
  t = (jnp.arange(size) + 0.5) / size
  gx, gy = jnp.meshgrid(t, t, indexing="ij")
  return jnp.stack([gx.ravel(), gy.ravel()], -1)


def gaussian_mixture_histograms(key, n: int, size: int = 28, max_components: int = 3,
                                floor: float = 1e-6) -> jax.Array:
  """``n`` random mixtures of 1..``max_components`` Gaussians rasterised on the grid.

  Returns ``(n, size**2)`` histograms (non-negative, rows sum to one); a small ``floor``
  keeps every bin positive, as log-domain Sinkhorn needs no zero mass but a fixed support.
  """
  pts = grid(size)
  k1, k2, k3, k4 = jax.random.split(key, 4)
  centers = jax.random.uniform(k1, (n, max_components, 2), minval=0.2, maxval=0.8)
  scales = jax.random.uniform(k2, (n, max_components), minval=0.05, maxval=0.15)
  active = jnp.arange(max_components)[None, :] < jax.random.randint(k3, (n, 1), 1,
                                                                    max_components + 1)
  weights = jax.random.uniform(k4, (n, max_components), minval=0.3, maxval=1.0) * active
  d2 = jnp.sum((pts[None, None] - centers[:, :, None]) ** 2, -1)  # (n, K, P)
  dens = jnp.sum(weights[..., None] * jnp.exp(-0.5 * d2 / scales[..., None] ** 2)
                 / scales[..., None] ** 2, 1)
  h = dens / dens.sum(-1, keepdims=True) + floor
  return h / h.sum(-1, keepdims=True)


def digits_histograms(floor: float = 1e-4) -> np.ndarray:
  """scikit-learn's 8x8 digits (1797, no download) as histograms ``(1797, 64)`` on ``grid(8)``."""
  try:
    from sklearn.datasets import load_digits
  except ImportError as exc:
    raise ImportError("digits_histograms needs scikit-learn: pip install scikit-learn") from exc
  img = load_digits().images.astype(np.float64)  # (N, 8, 8), row = y from the top
  h = img.transpose(0, 2, 1).reshape(len(img), 64)  # row-major in (x, y) like grid()
  h = h / h.sum(-1, keepdims=True) + floor
  return (h / h.sum(-1, keepdims=True)).astype(np.float32)
