"""Closed forms for Gaussian measures: the W2 map and distance (Bures)."""

from __future__ import annotations

import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["sqrtm_psd", "gaussian_map", "gaussian_potential", "gaussian_w2", "moments"]


def sqrtm_psd(s: ArrayLike, inverse: bool = False, *, shift: float = 0.0,
              floor: float | None = None) -> jnp.ndarray:
  """Symmetric square root (or inverse square root) of the PSD matrix ``s - shift * I``.

  Args:
    s: a symmetric ``(d, d)`` matrix (symmetrised first).
    inverse: return ``(s - shift I)^{-1/2}`` instead.
    shift: subtracted from the eigenvalues first (e.g. a strong-convexity constant).
    floor: eigenvalues below it are clipped to it; default ``1e-12`` of the largest one
      (eigenvalues at or below zero, e.g. under a large ``shift``, end there). Must be
      ``>= 0``, and ``> 0`` with ``inverse``.
  """
  if floor is not None and not (floor > 0 or (floor == 0 and not inverse)):
    raise ValueError(f"sqrtm_psd: `floor` must be None or >= 0 (> 0 with inverse=True), got "
                     f"{floor!r}.")
  s = jnp.asarray(s)
  w, v = jnp.linalg.eigh(0.5 * (s + s.T))
  w = w - shift
  w = jnp.clip(w, 1e-12 * jnp.max(jnp.abs(w)) + 1e-30 if floor is None else floor)
  r = jnp.sqrt(w)
  return (v / r) @ v.T if inverse else (v * r) @ v.T


def gaussian_map(m1: ArrayLike, s1: ArrayLike, m2: ArrayLike, s2: ArrayLike):
  """OT map ``T(x) = A x + b`` from ``N(m1, s1)`` to ``N(m2, s2)``.

  ``A = s1^{-1/2} (s1^{1/2} s2 s1^{1/2})^{1/2} s1^{-1/2}`` (symmetric PD), ``b = m2 - A m1``.

  Returns:
    ``(A, b)`` with shapes ``(d, d)`` and ``(d,)``.

  Example:
    >>> import jax.numpy as jnp
    >>> A, b = gaussian_map(jnp.zeros(2), jnp.eye(2), jnp.ones(2), 4.0 * jnp.eye(2))
    >>> [round(float(v), 6) for v in (A[0, 0], A[0, 1], b[0])]
    [2.0, 0.0, 1.0]
  """
  r1, r1_inv = sqrtm_psd(s1), sqrtm_psd(s1, inverse=True)
  a = r1_inv @ sqrtm_psd(r1 @ jnp.asarray(s2) @ r1) @ r1_inv
  a = 0.5 * (a + a.T)
  return a, jnp.asarray(m2) - a @ jnp.asarray(m1)


def gaussian_w2(m1: ArrayLike, s1: ArrayLike, m2: ArrayLike, s2: ArrayLike) -> jnp.ndarray:
  """Squared W2 distance (cost ``|x - y|^2``) between two Gaussians:
  ``|m1 - m2|^2 + tr(s1 + s2 - 2 (s1^{1/2} s2 s1^{1/2})^{1/2})``."""
  r1 = sqrtm_psd(s1)
  cross = sqrtm_psd(r1 @ jnp.asarray(s2) @ r1)
  dm = jnp.asarray(m1) - jnp.asarray(m2)
  return dm @ dm + jnp.trace(jnp.asarray(s1) + jnp.asarray(s2) - 2 * cross)


def moments(x: ArrayLike):
  """Mean ``(d,)`` and covariance ``(d, d)`` of samples ``(n, d)``."""
  x = jnp.asarray(x)
  m = x.mean(0)
  xc = x - m
  return m, xc.T @ xc / max(x.shape[0] - 1, 1)


def _weighted_moments(z, w):
  m = w @ z
  zc = z - m
  return m, (zc * w[:, None]).T @ zc


def _gaussian_map(x, a, y, b, ridge):
  (m1, s1), (m2, s2) = _weighted_moments(x, a), _weighted_moments(y, b)
  eye = ridge * jnp.eye(x.shape[-1], dtype=x.dtype)
  return gaussian_map(m1, s1 + eye, m2, s2 + eye)


def _quadratic(z, mat, c):
  return jnp.sum(z * z, -1) - jnp.sum((z @ mat) * z, -1) - 2 * z @ c


def gaussian_potential(x, a, y, b, ridge: float = 1e-6, at=None):
  """``f`` at ``x`` for the cost ``|x - y|^2`` from the OT map ``T(x) = A x + c`` between the
  Gaussians matching the moments of ``(x, a)`` and ``(y, b)``: ``f(x) = |x|^2 - x^T A x - 2
  c.x`` (``ridge`` is added to both covariances). The same start as ott-jax's
  ``GaussianInitializer``, for clouds of any sizes. ``at``: where to evaluate it (default
  ``x``)."""
  return _quadratic(x if at is None else at, *_gaussian_map(x, a, y, b, ridge))
