"""Shared test problems (imported by the test modules and the multi-device checks)."""

import jax
import jax.numpy as jnp


def weighted_clouds(n=40, m=30, d=2, seed=0, weighted=True):
  """Two Gaussian clouds and (optionally random) normalised weights."""
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  x = jax.random.normal(k[0], (n, d))
  y = 0.7 * jax.random.normal(k[1], (m, d)) + 1.0
  a = jax.random.uniform(k[2], (n,)) + 0.2 if weighted else jnp.ones(n)
  b = jax.random.uniform(k[3], (m,)) + 0.2 if weighted else jnp.ones(m)
  return x, y, a / a.sum(), b / b.sum()
