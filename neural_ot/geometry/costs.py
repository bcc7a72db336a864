"""Ground costs between points.

A cost maps two point sets ``x: (n, d)`` and ``y: (m, d)`` to a cost block
``(n, m)``. Costs are frozen (hashable) dataclasses so a solver that holds one
can be a static argument of :func:`jax.jit`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Cost", "TICost", "SqEuclidean", "PNorm", "ElasticL1", "Mahalanobis",
           "TranslationInvariant", "Cosine", "FunctionCost", "as_cost", "cost_from_json"]

_HIGHEST = jax.lax.Precision.HIGHEST


class Cost:
  """Base class: subclasses implement :meth:`pairwise`."""

  def pairwise(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """Cost block ``C[i, j] = c(x[i], y[j])`` of shape ``(n, m)``."""
    raise NotImplementedError

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """Cost between two single points ``x: (d,)`` and ``y: (d,)``."""
    return self.pairwise(x[None], y[None])[0, 0]

  def mean(self, x, y, a, b, pairwise_mean) -> jax.Array:
    """Weighted mean cost ``sum_ij a_i b_j C_ij``; ``pairwise_mean`` is the generic fallback."""
    return pairwise_mean()


class TICost(Cost):
  """A translation-invariant cost ``c(x, y) = h(x - y)`` with ``h`` strictly convex: what
  maps need (:func:`neural_ot.fit_map`, :func:`neural_ot.entropic_map`).

  Subclasses give ``h(z)`` of one point ``z: (d,)``; ``grad_h`` defaults to autodiff and
  ``grad_h_star`` (the displacement of the optimal map: ``T(x) = x - grad h*(grad f(x))``,
  Gangbo and McCann 1996) to a batched numerical solve of ``max_z <v, z> - h(z)``; closed forms
  override both. ``l1_weight`` is the weight ``gamma`` of a ``gamma |z|_1`` term inside ``h``
  (proximal solvers treat it exactly).
  """

  l1_weight = 0.0

  def h(self, z: jax.Array) -> jax.Array:
    """``h(z)`` for one displacement ``z: (d,)``."""
    raise NotImplementedError

  def grad_h(self, z: jax.Array) -> jax.Array:
    """``grad h(z)`` for ``z: (..., d)``."""
    flat = z.reshape(-1, z.shape[-1])
    return jax.vmap(jax.grad(self.h))(flat).reshape(z.shape)

  def grad_h_star(self, v: jax.Array) -> jax.Array:
    """``grad h*(v) = argmax_z <v, z> - h(z)`` for ``v: (..., d)`` (damped Newton, 50 steps)."""
    flat = v.reshape(-1, v.shape[-1])
    return jax.vmap(lambda u: _newton_argmax(self.h, u))(flat).reshape(v.shape)

  def pairwise(self, x, y):
    return jax.vmap(lambda xi: jax.vmap(lambda yj: self.h(xi - yj))(y))(x)

  def check_for_maps(self, dim: int, who: str = "fit_map") -> None:
    """Refuse, with a clear error, a cost whose ``h`` is not finite or not strictly convex on
    64 random chords of ``R^dim`` (the map ``x - grad h*(grad f(x))`` needs both)."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(64, dim)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(64, dim)), jnp.float32)
    h = jax.vmap(self.h)
    ha, hb, hm = (np.asarray(v, np.float64) for v in (h(a), h(b), h(0.5 * (a + b))))
    if not (np.all(np.isfinite(ha)) and np.all(np.isfinite(hb)) and np.all(np.isfinite(hm))):
      raise ValueError(f"{who}: `cost` {self!r}: h(z) is not finite at some points z.")
    gap = 0.5 * (ha + hb) - hm
    if not np.all(gap > 1e-6 * (np.abs(ha) + np.abs(hb) + 1e-12)):
      raise ValueError(f"{who}: `cost` {self!r}: h is not strictly convex (h at the midpoint "
                       f"of a chord is not below the chord: gap {gap.min():.3g}); maps need "
                       f"a strictly convex h, e.g. PNorm(2, 1.5), ElasticL1(0.1).")

  def growth(self, dim: int) -> float:
    """How fast ``h`` grows far away: ``k`` in ``h(r u) ~ r^k`` (2 for quadratic costs).

    Estimated from ``h`` at radii 1e2 and 1e3 along two directions of ``R^dim`` (the smaller
    of the two); closed forms override it. Below 2 a potential with a quadratic part other than
    ``0.5 |x|^2`` has an unbounded c-transform, so :func:`neural_ot.fit_map` keeps that part
    fixed (``W2Trainer.fixed_quadratic``)."""
    if isinstance(dim, bool) or not (isinstance(dim, (int, np.integer)) and dim >= 1):
      raise ValueError(f"{type(self).__name__}.growth: `dim` must be an int >= 1, got {dim!r}.")
    dirs = np.zeros((2, dim), np.float32)
    dirs[0, 0] = 1.0
    dirs[1] = 1.0 / np.sqrt(dim)
    h = jax.vmap(self.h)
    h0 = float(self.h(jnp.zeros((dim,), jnp.float32)))
    near = np.asarray(h(jnp.asarray(1e2 * dirs)), np.float64) - h0
    far = np.asarray(h(jnp.asarray(1e3 * dirs)), np.float64) - h0
    with np.errstate(divide="ignore", invalid="ignore"):
      k = np.log10(far / near)
    return float(np.min(np.where(np.isfinite(k), k, 2.0)))

  def residual(self, z: jax.Array) -> jax.Array:
    """``h(z) - 0.5 |z|^2``: what the cost adds to the W2 conjugate (``z: (d,)``)."""
    return self.h(z) - 0.5 * jnp.sum(z * z)

  def smooth_residual(self):
    """The smooth part of :meth:`residual` (without ``l1_weight |z|_1``) as a function of one
    ``z``, or ``None`` when it is zero."""
    return lambda z: self.residual(z) - self.l1_weight * jnp.sum(jnp.abs(z))

  def scaled(self, s: float) -> "TICost":
    """The cost of standardised data ``z' = z / s``, up to a positive factor (which leaves
    optimal maps unchanged): ``h(s z') / s^2``."""
    return _Scaled(self, float(s))

  def to_json(self) -> dict:
    """The cost as JSON (saved with a map): its class name and fields."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    return {"kind": type(self).__name__, **{k: _jsonable(v) for k, v in fields.items()}}


def _newton_argmax(h, v, iters=50):
  """``argmax_z <v, z> - h(z)`` for one ``v: (d,)`` by Newton steps on ``grad h(z) = v`` with
  backtracking (halving until the objective does not decrease), from ``v / 2`` (not 0, where
  ``|z|^p`` with ``p > 2`` has a zero Hessian); ``h`` strictly convex."""
  obj = lambda z: v @ z - h(z)
  grad = jax.grad(h)
  hess = jax.hessian(h)

  def step(_, z):
    g = v - grad(z)
    d = jnp.linalg.solve(hess(z) + 1e-9 * jnp.eye(z.shape[0], dtype=z.dtype), g)
    d = jnp.where(jnp.all(jnp.isfinite(d)), d, g)  # a singular Hessian: a gradient step
    base = obj(z)

    def cond(c):
      t, k = c
      return (obj(z + t * d) < base) & (k < 60)
    t, _ = jax.lax.while_loop(cond, lambda c: (0.5 * c[0], c[1] + 1),
                              (jnp.asarray(1.0, z.dtype), 0))
    return jnp.where(obj(z + t * d) >= base, z + t * d, z)
  return jax.lax.fori_loop(0, iters, step, 0.5 * v)  # the argmax for |z|^2; h'' > 0 there


def _jsonable(v):
  if isinstance(v, tuple):
    return [_jsonable(u) for u in v]
  if callable(v):
    raise TypeError("a cost given by a Python function cannot be saved with a map; "
                    "use a built-in cost (SqEuclidean, PNorm, ElasticL1, Mahalanobis).")
  return float(v) if isinstance(v, (float, np.floating)) else v


@dataclasses.dataclass(frozen=True)
class _Scaled(TICost):
  """``h(s z) / s^2`` (:meth:`TICost.scaled`)."""

  base: TICost
  s: float

  @property
  def l1_weight(self):
    return self.base.l1_weight / self.s

  def h(self, z):
    return self.base.h(self.s * z) / self.s ** 2

  def growth(self, dim):
    return self.base.growth(dim)

  def grad_h(self, z):
    return self.base.grad_h(self.s * z) / self.s

  def grad_h_star(self, v):  # h_s*(v) = h*(s v) / s^2
    return self.base.grad_h_star(self.s * v) / self.s

  def to_json(self):
    return {"kind": "_Scaled", "base": self.base.to_json(), "s": self.s}


@dataclasses.dataclass(frozen=True)
class SqEuclidean(TICost):
  """Squared Euclidean cost ``c(x, y) = |x - y|^2`` (ott-jax's convention).

  With this cost, entropic OT costs estimate ``W_2^2`` (not ``W_2^2 / 2``).
  """

  def h(self, z):
    return jnp.sum(z * z)

  def grad_h(self, z):
    return 2.0 * z

  def grad_h_star(self, v):
    return 0.5 * v

  def scaled(self, s):  # homogeneous: the same map
    return self

  def pairwise(self, x, y):
    if x.shape[-1] <= 8:
      # Small d: a sum of 2-D broadcasts is exact (no cancellation) and fuses
      # into the consumer's exp-sum (a 3-D (n, m, d) difference does not).
      c = (x[:, 0, None] - y[None, :, 0]) ** 2
      for k in range(1, x.shape[-1]):
        c = c + (x[:, k, None] - y[None, :, k]) ** 2
      return c
    xx = jnp.sum(x * x, axis=-1)
    yy = jnp.sum(y * y, axis=-1)
    xy = jnp.matmul(x, y.T, precision=_HIGHEST)
    return jnp.maximum(xx[:, None] + yy[None, :] - 2.0 * xy, 0.0)

  def mean(self, x, y, a, b, pairwise_mean):
    # E|x - y|^2 = E|x|^2 + E|y|^2 - 2 <E x, E y>, in O((n + m) d).
    ex = a @ x
    ey = b @ y
    return a @ jnp.sum(x * x, -1) + b @ jnp.sum(y * y, -1) - 2.0 * ex @ ey


@dataclasses.dataclass(frozen=True)
class PNorm(TICost):
  """``c(x, y) = ||x - y||_p ** power`` (``p >= 1``; ``PNorm(2, 1)`` is Euclidean).

  For maps (strictly convex ``h``) ``p = 2`` and ``power > 1``: ``h(z) = |z|^power``,
  ``grad h*(v) = power^(-1/(power-1)) |v|^(q-2) v`` with ``q = power / (power - 1)``.
  """

  p: float = 2.0
  power: float = 1.0

  def __post_init__(self):
    if not self.p >= 1.0:
      raise ValueError(f"PNorm: `p` must be >= 1, got {self.p!r}.")
    if not self.power > 0.0:
      raise ValueError(f"PNorm: `power` must be > 0, got {self.power!r}.")

  def pairwise(self, x, y):
    diff = jnp.abs(x[:, None, :] - y[None, :, :])
    s = jnp.sum(diff**self.p, axis=-1)
    # Safe root: gradient 0 (not NaN) where x == y.
    safe = jnp.where(s > 0, s, 1.0)
    return jnp.where(s > 0, safe ** (self.power / self.p), 0.0)

  def h(self, z):
    return self.pairwise(z[None], jnp.zeros_like(z)[None])[0, 0]

  def check_for_maps(self, dim, who="fit_map"):
    try:
      self._check_strict()
    except ValueError as exc:
      raise ValueError(f"{who}: `cost` {exc}") from None

  def _check_strict(self):
    if self.p != 2.0 or not self.power > 1.0:
      raise ValueError(f"PNorm(p={self.p}, power={self.power}): maps need a strictly convex "
                       f"h; use p=2 and power > 1 (|z|^power), e.g. PNorm(2, 1.5).")

  def grad_h(self, z):
    self._check_strict()
    n2 = jnp.sum(z * z, -1, keepdims=True)
    safe = jnp.where(n2 > 0, n2, 1.0)
    return jnp.where(n2 > 0, self.power * safe ** (0.5 * self.power - 1.0) * z, 0.0)

  def grad_h_star(self, v):
    self._check_strict()
    q = self.power / (self.power - 1.0)
    n2 = jnp.sum(v * v, -1, keepdims=True)
    safe = jnp.where(n2 > 0, n2, 1.0)
    scale = self.power ** (-1.0 / (self.power - 1.0))
    return jnp.where(n2 > 0, scale * safe ** (0.5 * q - 1.0) * v, 0.0)

  def scaled(self, s):  # homogeneous (|s z|^p = s^p |z|^p): the same map
    return self


@dataclasses.dataclass(frozen=True)
class ElasticL1(TICost):
  """The elastic cost ``h(z) = 0.5 |z|^2 + gamma |z|_1`` (Cuturi et al. 2023): optimal
  displacements ``grad h*(v) = sign(v) max(|v| - gamma, 0)`` (soft-thresholding) are sparse, so
  the map says which coordinates it changes.

  Note: ``0.5 |z|^2`` (not ``SqEuclidean``'s ``|z|^2``), so ``gamma = 0`` is the W2 map."""

  gamma: float = 1.0

  def __post_init__(self):
    if not (isinstance(self.gamma, (int, float, np.integer, np.floating))
            and 0.0 <= float(self.gamma) < float("inf")):
      raise ValueError(f"ElasticL1: `gamma` must be a finite number >= 0, got {self.gamma!r}.")
    object.__setattr__(self, "gamma", float(self.gamma))

  @property
  def l1_weight(self):
    return self.gamma

  def h(self, z):
    return 0.5 * jnp.sum(z * z) + self.gamma * jnp.sum(jnp.abs(z))

  def pairwise(self, x, y):
    diff = x[:, None, :] - y[None, :, :]
    return 0.5 * jnp.sum(diff * diff, -1) + self.gamma * jnp.sum(jnp.abs(diff), -1)

  def grad_h(self, z):  # a subgradient: sign(0) = 0
    return z + self.gamma * jnp.sign(z)

  def grad_h_star(self, v):
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - self.gamma, 0.0)

  def residual(self, z):
    return self.gamma * jnp.sum(jnp.abs(z))

  def smooth_residual(self):
    return None

  def scaled(self, s):  # (0.5 |s z|^2 + gamma |s z|_1) / s^2 = 0.5 |z|^2 + (gamma / s) |z|_1
    return ElasticL1(self.gamma / float(s))


@dataclasses.dataclass(frozen=True)
class Mahalanobis(TICost):
  """``h(z) = z^T A z`` for a symmetric positive definite ``A`` (given as a nested tuple or an
  array: stored as a tuple, so the cost stays hashable); ``grad h*(v) = A^{-1} v / 2``."""

  matrix: tuple

  def __post_init__(self):
    a = np.asarray(self.matrix, np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or not np.all(np.isfinite(a)):
      raise ValueError(f"Mahalanobis: `matrix` must be a finite square matrix, got shape "
                       f"{a.shape}.")
    if not np.allclose(a, a.T, rtol=1e-6, atol=1e-10 * np.abs(a).max()):
      raise ValueError("Mahalanobis: `matrix` must be symmetric.")
    low = float(np.linalg.eigvalsh(a).min())
    if not low > 0:
      raise ValueError(f"Mahalanobis: `matrix` must be positive definite (h strictly convex); "
                       f"its smallest eigenvalue is {low:.3g}.")
    object.__setattr__(self, "matrix", tuple(tuple(float(v) for v in row) for row in a))

  def h(self, z):
    return z @ jnp.asarray(self.matrix, z.dtype) @ z

  def grad_h(self, z):
    return 2.0 * z @ jnp.asarray(self.matrix, z.dtype)

  def grad_h_star(self, v):
    inv = np.linalg.inv(np.asarray(self.matrix, np.float64))
    return 0.5 * v @ jnp.asarray(inv, v.dtype)

  def scaled(self, s):  # homogeneous: the same map
    return self


@dataclasses.dataclass(frozen=True)
class TranslationInvariant(TICost):
  """A user's ``h(z)`` (``z: (d,)`` to a scalar, strictly convex, twice differentiable,
  jit-able): ``grad h`` by autodiff, ``grad h*`` by damped Newton steps (50)."""

  fn: Callable[[jax.Array], jax.Array]

  def __post_init__(self):
    if not callable(self.fn):
      raise TypeError(f"TranslationInvariant: `fn` must be a function h(z) -> scalar, got "
                      f"{type(self.fn).__name__}.")

  def h(self, z):
    return self.fn(z)


def cost_from_json(raw: dict) -> TICost:
  """The cost :meth:`TICost.to_json` wrote."""
  kinds = {"SqEuclidean": SqEuclidean, "PNorm": PNorm, "ElasticL1": ElasticL1,
           "Mahalanobis": Mahalanobis}
  if isinstance(raw, dict) and raw.get("kind") == "_Scaled":
    return _Scaled(cost_from_json(raw["base"]), float(raw["s"]))
  if not isinstance(raw, dict) or raw.get("kind") not in kinds:
    raise ValueError(f"cost_from_json: unknown cost {raw!r}; expected one of {sorted(kinds)}.")
  fields = {k: v for k, v in raw.items() if k != "kind"}
  if "matrix" in fields:
    fields["matrix"] = tuple(tuple(r) for r in fields["matrix"])
  return kinds[raw["kind"]](**fields)


@dataclasses.dataclass(frozen=True)
class Cosine(Cost):
  """Cosine distance ``c(x, y) = 1 - <x, y> / (|x| |y|)``, in ``[0, 2]``."""

  def pairwise(self, x, y):
    xn = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    yn = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
    return 1.0 - jnp.matmul(xn, yn.T, precision=_HIGHEST)


@dataclasses.dataclass(frozen=True)
class FunctionCost(Cost):
  """A user cost ``fn(x: (d,), y: (d,)) -> scalar``, vectorised with :func:`jax.vmap`."""

  fn: Callable[[jax.Array, jax.Array], jax.Array]

  def pairwise(self, x, y):
    return jax.vmap(lambda xi: jax.vmap(lambda yj: self.fn(xi, yj))(y))(x)


def as_cost(cost) -> Cost:
  """Accept a :class:`Cost`, a name (``"sqeuclidean"``, ``"euclidean"``, ``"l1"``,
  ``"cosine"``) or a callable ``c(x, y)``."""
  if cost is None:
    return SqEuclidean()
  if isinstance(cost, Cost):
    return cost
  if isinstance(cost, str):
    table = {
        "sqeuclidean": SqEuclidean(),
        "euclidean": PNorm(2.0, 1.0),
        "l1": PNorm(1.0, 1.0),
        "cosine": Cosine(),
    }
    if cost not in table:
      raise ValueError(
          f"`cost` must be one of {sorted(table)}, a Cost or a callable c(x, y); got {cost!r}.")
    return table[cost]
  if callable(cost):
    return FunctionCost(cost)
  raise TypeError(f"`cost` must be a Cost, a name or a callable c(x, y); got {type(cost).__name__}.")
