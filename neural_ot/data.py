"""Small built-in 2-D point clouds for demos and tutorials."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["eight_gaussians", "moons", "circles", "SAMPLERS"]


def eight_gaussians(key, n: int, radius: float = 2.0, std: float = 0.2) -> jax.Array:
  """``n`` samples from 8 Gaussians on a circle, shape ``(n, 2)``."""
  k1, k2 = jax.random.split(key)
  idx = jax.random.randint(k1, (n,), 0, 8)
  ang = idx * (2 * jnp.pi / 8)
  centers = radius * jnp.stack([jnp.cos(ang), jnp.sin(ang)], -1)
  return centers + std * jax.random.normal(k2, (n, 2))


def moons(key, n: int, noise: float = 0.08) -> jax.Array:
  """Two interleaved half circles, shape ``(n, 2)``, roughly centred."""
  k1, k2, k3 = jax.random.split(key, 3)
  t = jax.random.uniform(k1, (n,)) * jnp.pi
  upper = jax.random.bernoulli(k2, 0.5, (n,))
  x = jnp.where(upper, jnp.cos(t), 1.0 - jnp.cos(t))
  y = jnp.where(upper, jnp.sin(t), 0.5 - jnp.sin(t))
  pts = jnp.stack([x - 0.5, y - 0.25], -1) * 1.5
  return pts + noise * jax.random.normal(k3, (n, 2))


def circles(key, n: int, noise: float = 0.05) -> jax.Array:
  """Two concentric circles (radii 1 and 2), shape ``(n, 2)``."""
  k1, k2, k3 = jax.random.split(key, 3)
  t = jax.random.uniform(k1, (n,)) * 2 * jnp.pi
  r = jnp.where(jax.random.bernoulli(k2, 0.5, (n,)), 1.0, 2.0)
  return r[:, None] * jnp.stack([jnp.cos(t), jnp.sin(t)], -1) + noise * jax.random.normal(k3, (n, 2))


SAMPLERS = {"8gaussians": eight_gaussians, "moons": moons, "circles": circles,
            "normal": lambda key, n: jax.random.normal(key, (n, 2))}
