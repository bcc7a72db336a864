"""Pairs of measures with a known W2 map: the Korotin et al. benchmark, Gaussians, your own.

A :class:`KnownMapPair` samples the source ``P``, pushes it forward by the
exact OT map ``T = grad psi`` (``psi`` convex, Brenier) and carries the
constants the metrics need (``Var(P)``, ``Var(Q)``, ``E|T(X) - X|^2``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot import gaussian

__all__ = ["KnownMapPair", "dense_icnn", "load_pair", "gaussian_pair", "mc_constants",
           "potential_pair",
           "random_pair", "default_data_dir"]

_ENV = "NEURAL_OT_W2BENCH"
_SUB = "Mix3toMix10"


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: usable as a static sampler
class KnownMapPair:
  """Source sampler and exact map; ``Q = T # P`` is sampled by pushing forward.

  Attributes:
    dim: dimension.
    sample_source_fn: ``(key, n) -> (n, dim)``, jit-able.
    map_fn: the exact OT map ``T`` on a batch ``(n, dim) -> (n, dim)``.
    var_source, var_target: total variances (sum over coordinates) of ``P`` and ``Q``.
    two_cost: ``E |T(X) - X|^2``.
    name: label for tables.
  """

  dim: int
  sample_source_fn: Callable
  map_fn: Callable
  var_source: float
  var_target: float
  two_cost: float
  name: str = "pair"
  extras: dict = dataclasses.field(default_factory=dict)

  def sample_source(self, key, n):
    """``n`` samples of ``P``, shape ``(n, dim)``."""
    return self.sample_source_fn(key, n)

  def sample_target(self, key, n):
    """``n`` samples of ``Q = T # P``."""
    return self.map_fn(self.sample_source_fn(key, n))

  def true_map(self, x):
    """The exact OT map ``T(x)``."""
    return self.map_fn(jnp.asarray(x))

  def pairs(self, key, n):
    """``(X, T(X))`` with ``X ~ P``: scores forward maps on ``X`` and inverses on ``T(X)``."""
    x = self.sample_source_fn(key, n)
    return x, self.map_fn(x)


def mc_constants(sample, map_fn, n=2 ** 15, seed=12345) -> tuple[float, float, float]:
  """Monte-Carlo ``(var_source, var_target, E|T(X) - X|^2)`` of the pair ``(sample, map_fn)``
  on ``n`` samples (total variances: sums over coordinates)."""
  x = sample(jax.random.PRNGKey(seed), n)
  y = map_fn(x)
  var = lambda z: float(jnp.sum(jnp.var(z, axis=0)))
  return var(x), var(y), float(jnp.mean(jnp.sum((y - x) ** 2, -1)))


def gaussian_pair(m1, s1, m2, s2, name: str = "gaussian") -> KnownMapPair:
  """``N(m1, s1) -> N(m2, s2)`` with the closed-form map ``A x + b`` (any dimension)."""
  m1, s1, m2, s2 = (np.asarray(v, np.float64) for v in (m1, s1, m2, s2))
  a, b = (np.asarray(v, np.float32) for v in gaussian.gaussian_map(m1, s1, m2, s2))
  chol = np.linalg.cholesky(s1).astype(np.float32)
  mean = m1.astype(np.float32)
  d = len(m1)
  sample = lambda key, n: mean + jax.random.normal(key, (n, d)) @ chol.T
  map_fn = lambda x: x @ a.T + b
  two_cost = float(gaussian.gaussian_w2(m1, s1, m2, s2))
  return KnownMapPair(d, sample, map_fn, float(np.trace(s1)), float(np.trace(s2)), two_cost, name,
                      {"A": a, "b": b})


def potential_pair(sample_source: Callable, potential: Callable, dim: int,
                   name: str = "custom") -> KnownMapPair:
  """The pair ``(P, grad(psi) # P)`` for a user's source sampler and convex ``psi: (d,) -> ()``.

  By Brenier's theorem ``grad psi`` is the OT map when ``psi`` is convex (not checked here).
  The constants are Monte-Carlo estimates on 32768 samples.
  """
  probe = jnp.asarray(sample_source(jax.random.PRNGKey(0), 4))
  if probe.shape != (4, dim):
    raise ValueError(f"potential_pair: `sample_source(key, n)` must return shape (n, {dim}); "
                     f"for n=4 it returned {tuple(probe.shape)}.")
  map_fn = jax.jit(jax.vmap(jax.grad(potential)))
  var_s, var_t, two_cost = mc_constants(sample_source, map_fn)
  return KnownMapPair(dim, sample_source, map_fn, var_s, var_t, two_cost, name)


def random_pair(dim: int, seed: int = 0, n_components: int = 3, n_features: int | None = None,
                name: str | None = None) -> KnownMapPair:
  """A random known-map pair built in code (no files): a Gaussian-mixture source pushed
  through the gradient of a random convex potential.

  ``P`` has ``n_components`` equally weighted Gaussians with random centres and random
  covariances, scaled to total variance ``dim``; the potential is
  ``psi(x) = 0.5 x^T M x + sum_k w_k softplus(s (u_k . x - b_k)) / s`` with ``M`` random
  positive definite and ``w_k >= 0`` (convex, so ``grad psi`` is the OT map), with
  ``n_features`` (default ``2 * max(dim, 8)``) random directions ``u_k``, rescaled and shifted
  (a positive factor and a linear term) so that ``Q`` has mean ~0 and total variance ~``dim``
  like the benchmark's pairs. Different seeds give
  different pairs; use it to check that settings generalise beyond the Korotin files.

  Example:
    >>> pair = random_pair(4, seed=1)
    >>> x, y = pair.pairs(jax.random.PRNGKey(0), 8)
    >>> x.shape, y.shape
    ((8, 4), (8, 4))
  """
  if not isinstance(dim, (int, np.integer)) or dim < 1:
    raise ValueError(f"random_pair: `dim` must be a positive int, got {dim!r}.")
  rng = np.random.default_rng(seed)
  k = int(n_components)
  feats = int(n_features or 2 * max(dim, 8))
  centers = rng.normal(size=(k, dim)) * 1.5
  maps = rng.normal(size=(k, dim, dim)) / np.sqrt(dim) + 0.5 * np.eye(dim)
  # total variance of the mixture = dim (centres spread + component covariances)
  var = (np.sum(np.var(centers, 0)) + np.mean([np.trace(a @ a.T) for a in maps]))
  scale = np.sqrt(dim / var)
  centers, maps = (centers * scale).astype(np.float32), (maps * scale).astype(np.float32)
  centers -= centers.mean(0)
  half = rng.normal(size=(dim, dim)) / np.sqrt(dim)
  quad = (0.05 * np.eye(dim) + 0.1 * half @ half.T).astype(np.float32)
  u = rng.normal(size=(feats, dim)).astype(np.float32)
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  b = rng.normal(size=(feats,)).astype(np.float32)
  w = (rng.exponential(size=(feats,)) * 2.0).astype(np.float32)
  sharp = 3.0
  centers, maps, quad, u, b, w = (jnp.asarray(v) for v in (centers, maps, quad, u, b, w))

  def sample(key, n):
    kc, kz = jax.random.split(key)
    comp = jax.random.randint(kc, (n,), 0, k)
    z = jax.random.normal(kz, (n, dim))
    return jnp.einsum("nij,nj->ni", maps[comp], z) + centers[comp]

  def psi0(x):
    return (0.5 * x @ quad @ x
            + jnp.sum(w * jax.nn.softplus(sharp * (u @ x - b))) / sharp)

  # Standardise Q as the benchmark does (mean 0, total variance dim): psi = a (psi0 + <c, x>).
  y0 = jax.vmap(jax.grad(psi0))(sample(jax.random.PRNGKey(seed + 1), 2 ** 14))
  shift = -jnp.mean(y0, 0)
  a = float(np.sqrt(dim / float(jnp.sum(jnp.var(y0, 0)))))
  psi = lambda x: a * (psi0(x) + x @ shift)
  return potential_pair(sample, psi, dim, name or f"random D={dim} seed={seed}")


def dense_icnn(params: dict, x: jax.Array, strong_convexity: float) -> jax.Array:
  """Korotin et al.'s DenseICNN potential at one point ``x: (D,)`` (torch layout params)."""
  def quad(i):
    q = params[f"quadratic_layers.{i}.quadratic_decomposed"]  # (D, r, H)
    lin = params[f"quadratic_layers.{i}.weight"] @ x + params[f"quadratic_layers.{i}.bias"]
    return jnp.sum(jnp.einsum("d,drh->rh", x, q) ** 2, axis=0) + lin
  z = quad(0)
  z = jax.nn.celu(params["convex_layers.0.weight"] @ z + quad(1))
  z = jax.nn.celu(params["convex_layers.1.weight"] @ z + quad(2))
  return params["final_layer.weight"][0] @ z + 0.5 * strong_convexity * jnp.sum(x * x)


def default_data_dir() -> str | None:
  """``$NEURAL_OT_W2BENCH`` or ``../shared/data/w2bench`` next to the project, if present."""
  env = os.environ.get(_ENV)
  if env:
    return env
  here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  cand = os.path.join(os.path.dirname(here), "shared", "data", "w2bench")
  return cand if os.path.isdir(cand) else None


def _npz(path):
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"load_pair: missing {path!r}. Expected the layout of the converted benchmark "
        f"({_SUB}/{{D}}_v1.npz, {{D}}_v2.npz, input_mixture_{{D}}.npz, "
        f"benchmark_constants_{{D}}.npz); see neural_ot.w2bench.convert_folder.")
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def load_pair(dim: int, data_dir: str | None = None) -> KnownMapPair:
  """The Mix3toMix10 pair of dimension ``dim`` (Korotin et al. 2021) from ``data_dir``.

  ``P`` is a 3-component Gaussian mixture, ``T(x) = scale (grad F1 + grad F2 + shift)`` with
  two DenseICNNs ``F1, F2`` (strong convexity 1e-2). ``extras`` holds the raw constants
  (``linear_map_*`` baselines, ``output_mean_mc``, ...).
  """
  data_dir = data_dir or default_data_dir()
  if data_dir is None:
    tried = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))), "shared", "data", "w2bench")
    raise FileNotFoundError(
        f"load_pair: no benchmark data: ${_ENV} is not set and {tried!r} does not exist. Pass "
        f"`data_dir` (command line: --data-dir DIR) or set ${_ENV}; make the folder from the "
        f"original .pt files with `neural-ot bench convert SRC DST` (README: Getting the "
        f"benchmark data).")
  base = os.path.join(data_dir, _SUB) if os.path.isdir(os.path.join(data_dir, _SUB)) else data_dir
  if not isinstance(dim, (int, np.integer)) or dim < 1:
    raise ValueError(f"load_pair: `dim` must be a positive int, got {dim!r}.")
  v1, v2 = _npz(os.path.join(base, f"{dim}_v1.npz")), _npz(os.path.join(base, f"{dim}_v2.npz"))
  mix, const = _npz(os.path.join(base, f"input_mixture_{dim}.npz")), _npz(
      os.path.join(base, f"benchmark_constants_{dim}.npz"))
  p1 = {k: jnp.asarray(v) for k, v in v1.items()}
  p2 = {k: jnp.asarray(v) for k, v in v2.items()}
  c = float(const.get("strong_convexity", 1e-2))
  scale, shift = float(const["scale"]), jnp.asarray(const["shift"], jnp.float32)
  centers, maps = jnp.asarray(mix["centers"], jnp.float32), jnp.asarray(mix["maps"], jnp.float32)
  std, logits = float(mix["std"]), jnp.log(jnp.asarray(mix["weights"], jnp.float32))

  def sample(key, n):
    kc, kz = jax.random.split(key)
    comp = jax.random.categorical(kc, logits, shape=(n,))
    z = jax.random.normal(kz, (n, dim))
    return std * jnp.einsum("nij,nj->ni", maps[comp], z) + centers[comp]

  grad1 = jax.vmap(jax.grad(lambda x: dense_icnn(p1, x, c)))
  grad2 = jax.vmap(jax.grad(lambda x: dense_icnn(p2, x, c)))
  map_fn = jax.jit(lambda x: scale * (grad1(x) + grad2(x) + shift))
  return KnownMapPair(dim, sample, map_fn, float(const["input_var_mc"]),
                      float(const["output_var_mc"]), 2.0 * float(const["cost_mc"]),
                      f"Mix3toMix10 D={dim}", const)
