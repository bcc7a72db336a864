"""Meta OT for point clouds of any size: a set network predicts a Sinkhorn warm start.

Fixed-support Meta OT (:mod:`neural_ot.meta.model`) reads two histograms on one grid. Most users
have two weighted point clouds ``(x, a)``, ``(y, b)`` of arbitrary sizes instead. Here:

1. **Frame.** Both clouds are centred on their joint mean and scaled by ``sqrt(mean cost)``
   (``mean cost = sum_ij a_i b_j |x_i - y_j|^2``, from the moments: ``O((n + m) d)``); the
   network sees the relative regularisation ``eps / mean cost``, so one model serves any scale.
2. **Landmarks.** ``k`` points of each cloud, drawn with probability proportional to the
   weights (uniform weights on the draw); all the points when a cloud has at most ``k``.
3. **Prediction.** A small transformer over the ``2k`` landmark tokens, then one
   cross-attention block from every point of ``x`` onto those tokens, predicts a correction to
   the Gaussian start (the potential of the OT map between the moment-matched Gaussians of the
   whole clouds, :func:`gaussian_potential`) at every point: ``O(n k)``. The output layer starts
   at zero, so an untrained model is the Gaussian start. The init is ``(f, None)`` and the
   solver computes ``g`` from it.
4. **Landmark solve** (optional, ``refine_tol``): Sinkhorn on the ``k x k`` landmark problem from
   the predicted start, then the landmark ``g`` defines ``f`` everywhere by the soft c-transform
   ``f(x) = -eps log sum_j b'_j exp((g_j - |x - y'_j|^2) / eps)`` (``O(n k)``).

5. **Multiscale** (``MetaPointsOT.multiscale``, on by default): where both clouds have at least 64
   points and grid cells of the clouds resolve ``epsilon``, the start is the multiscale pyramid
   of :mod:`neural_ot.sinkhorn.multiscale` (coarser problems solved from coarse to fine, extended to
   every point), its coarsest level started by the network's prediction at the cells; elsewhere
   (high dimension at small ``epsilon``) the network's start above.

Training maximises the entropic dual of the landmark problem, ``<f, a'> + <f^c, b'>`` with the
exact c-transform, over pairs drawn by the user's ``pairs(key, batch)``: no solver in the loop.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from neural_ot import _validation, io, train
from neural_ot.geometry import PointCloud, SqEuclidean
from neural_ot.sinkhorn import Sinkhorn, dual_objective
from neural_ot.meta.model import scheduled_adam
from neural_ot.sinkhorn.multiscale import MIN_POINTS, multiscale_points_start
from neural_ot.meta.starts import gaussian_potential
from neural_ot.train import TrainState

__all__ = ["MetaPointsOT", "MetaPointsTrainer", "fit_meta_points", "load_meta_points",
           "gaussian_potential"]

_FORMAT = "neural_ot.MetaPointsOT/1"
_PREDICT_KEY = 0  # landmarks are drawn with a fixed key: a prediction is deterministic


def _frame(x, a, y, b):
  """Joint centre and the weighted mean cost (the squared scale), from moments only."""
  mx, my = a @ x, b @ y
  mean_cost = a @ jnp.sum(x * x, -1) + b @ jnp.sum(y * y, -1) - 2 * mx @ my
  centre = 0.5 * (mx + my)
  # |x - y|^2 averaged is at least the spread of each cloud: floored against round-off.
  return centre, jnp.maximum(mean_cost, 1e-12)


class _SetNet(nn.Module):
  """Pre-norm transformer over the landmark tokens of both clouds, then one cross-attention
  block from query points of the x cloud onto them: one number per query."""

  width: int
  depth: int
  heads: int

  @nn.compact
  def __call__(self, xs, ys, log_eps, queries):
    def tokens(z, flag):
      extra = jnp.broadcast_to(jnp.stack([jnp.asarray(flag, z.dtype), log_eps]), (z.shape[0], 2))
      return nn.Dense(self.width)(jnp.concatenate([z, extra], -1))
    t = jnp.concatenate([tokens(xs, 0.0), tokens(ys, 1.0)], 0)
    for _ in range(self.depth):
      h = nn.LayerNorm()(t)
      t = t + nn.MultiHeadDotProductAttention(self.heads, qkv_features=self.width)(h, h)
      h = nn.LayerNorm()(t)
      t = t + nn.Dense(self.width)(jax.nn.gelu(nn.Dense(2 * self.width)(h)))
    # Queries (any points of the x cloud) read the landmark tokens: f is a function of x.
    q = tokens(queries, 0.0)
    h, kv = nn.LayerNorm()(q), nn.LayerNorm()(t)
    q = q + nn.MultiHeadDotProductAttention(self.heads, qkv_features=self.width)(h, kv)
    h = nn.LayerNorm()(q)
    q = q + nn.Dense(self.width)(jax.nn.gelu(nn.Dense(2 * self.width)(h)))
    out = nn.Dense(1, kernel_init=nn.initializers.zeros)(nn.LayerNorm()(q))
    return out[:, 0]


def _landmarks(key, z, w, k: int):
  """``k`` points drawn with probability ``w`` (uniform weights), or all of ``z`` if ``n <= k``."""
  n = z.shape[0]
  if n <= k:
    return z, w
  idx = jax.random.choice(key, n, (k,), replace=True, p=w)
  return z[idx], jnp.full((k,), 1.0 / k, z.dtype)


def _landmark_start(net, params, x, a, y, b, eps, k, key, queries=None):
  """Landmarks of both clouds and the predicted ``f`` (absolute units) at ``queries`` (default:
  the x landmarks): the Gaussian start of the whole clouds plus the network's correction."""
  centre, mean_cost = _frame(x, a, y, b)
  kx, ky = jax.random.split(key)
  xs, a_s = _landmarks(kx, x, a, k)
  ys, b_s = _landmarks(ky, y, b, k)
  queries = xs if queries is None else queries
  scale = jnp.sqrt(mean_cost)
  log_eps = jnp.log(eps / mean_cost)
  corr = net.apply(params, (xs - centre) / scale, (ys - centre) / scale, log_eps,
                   (queries - centre) / scale)
  f0 = jax.lax.stop_gradient(gaussian_potential(x, a, y, b, 1e-6, at=queries))
  return xs, a_s, ys, b_s, f0 + mean_cost * corr, mean_cost


def _dense(xs, ys):
  return PointCloud.create(xs, ys, SqEuclidean(), online=False)


@dataclasses.dataclass(frozen=True, eq=False)
class MetaPointsOT:
  """A trained point-cloud Meta OT model (see the module docstring).

  Attributes:
    epsilon: the relative regularisation(s) it was trained for: ``(lo, hi)`` (``eps / mean
      cost`` drawn log-uniformly in training; equal for one value).
    dim: the dimension of the points. landmarks: ``k``. width, depth, heads: the network.
    params: flax parameters. history: logged training duals.
    refine_tol: default landmark refinement tolerance of :meth:`predict` (``None``: none).
    multiscale: start from the multiscale pyramid (:func:`neural_ot.meta.multiscale_points_init`,
      its coarsest level started by the network) where its cells resolve ``epsilon`` and its
      first marginal error is the smaller; the network's start elsewhere (and always when
      ``False``). ``refine_tol`` then applies only
      where the pyramid is not used.
  """

  epsilon: tuple
  dim: int
  landmarks: int
  width: int
  depth: int
  heads: int
  params: Any
  history: tuple = ()
  refine_tol: float | None = None
  multiscale: bool = True

  @property
  def net(self):
    return _SetNet(self.width, self.depth, self.heads)

  def predict(self, x, y, a=None, b=None, *, epsilon, refine_tol: Any = "default"):
    """A warm start ``(f, None)`` for ``neural_ot.sinkhorn(x, y, a, b, epsilon=epsilon,
    init=...)`` (cost ``|x - y|^2``, absolute ``epsilon`` as there).

    Args:
      x: ``(n, d)`` points, y: ``(m, d)`` points, any ``n, m >= 1``. a, b: weights (uniform by
        default; normalised). epsilon: the absolute regularisation of the solve.
      refine_tol: solve the landmark problem to this marginal error from the network's start
        before extending (``None``: the network's start only); default: the model's.
    """
    x = _validation.check_points(x, "x").astype(jnp.float32)
    y = _validation.check_points(y, "y").astype(jnp.float32)
    for name, z in (("x", x), ("y", y)):
      if z.shape[1] != self.dim:
        raise ValueError(f"MetaPointsOT.predict: `{name}` must have dimension {self.dim} (the "
                         f"model's), got shape {tuple(z.shape)}.")
      _validation.check_finite(z, name)
    a = _validation.cloud_weights(a, x.shape[0], "a", "x", "MetaPointsOT.predict")
    b = _validation.cloud_weights(b, y.shape[0], "b", "y", "MetaPointsOT.predict")
    eps = _validation.check_epsilon(epsilon)
    tol = self.refine_tol if isinstance(refine_tol, str) and refine_tol == "default" \
        else refine_tol
    if tol is not None and not (_validation.is_real(tol) and 0 < tol < float("inf")):
      raise ValueError(f"MetaPointsOT.predict: `refine_tol` must be None or a number > 0, got "
                       f"{tol!r}.")
    rel = float(eps) / float(_frame(x, a, y, b)[1])
    lo, hi = self.epsilon
    if not lo / 2 <= rel <= 2 * hi:  # the network extrapolates in log(eps / mean cost)
      warnings.warn(f"MetaPointsOT.predict: `epsilon` = {float(eps):.4g} is {rel:.4g} x these "
                    f"clouds' mean cost, outside the range the model was trained on ({lo:g} "
                    f"to {hi:g}); the warm start may be no better than zeros (the solve's "
                    f"first-error check then starts from zeros).", stacklevel=2)
    f = _predict(self.net, self.params, x, a, y, b, jnp.asarray(eps, jnp.float32),
                 int(self.landmarks), None if tol is None else float(tol),
                 bool(self.multiscale))
    return f, None

  def save(self, path: str) -> None:
    meta = {"format": _FORMAT, "epsilon": list(self.epsilon), "dim": self.dim,
            "landmarks": self.landmarks, "width": self.width, "depth": self.depth,
            "heads": self.heads, "history": list(self.history), "refine_tol": self.refine_tol,
            "multiscale": bool(self.multiscale)}
    io.save_atomic(path, {"meta": json.dumps(meta),
                          "params": jax.tree.map(np.asarray, self.params)})


def _network_start(net, params, x, a, y, b, eps, k, refine_tol):
  key = jax.random.PRNGKey(_PREDICT_KEY)
  if refine_tol is None:  # the network's f at every point of x
    return _landmark_start(net, params, x, a, y, b, eps, k, key, queries=x)[4]
  xs, a_s, ys, b_s, f_s, _ = _landmark_start(net, params, x, a, y, b, eps, k, key)
  g_s = Sinkhorn(tol=refine_tol, max_iters=1000, init_check=False).solve(
      _dense(xs, ys), a_s, b_s, eps, (f_s, None)).g
  # Extension: f(x) = -eps log sum_j b'_j exp((g_j - |x - y'_j|^2) / eps), the c-transform of
  # the landmark g seen from the y side (the geometry's tiled log-sum-exp).
  return Sinkhorn().c_transform(PointCloud.create(ys, x, SqEuclidean()), b_s, g_s, eps)


def _predict_impl(net, params, x, a, y, b, eps, k, refine_tol, multiscale):
  network = lambda: _network_start(net, params, x, a, y, b, eps, k, refine_tol)  # noqa: E731
  if not multiscale or min(x.shape[0], y.shape[0]) < MIN_POINTS:
    return network()
  key = jax.random.PRNGKey(_PREDICT_KEY)

  def first_f(cx, ac, cy, bc, e):  # the network's f (whole clouds, at `e`) at the coarse cells
    return _landmark_start(net, params, x, a, y, b, e, k, key, queries=cx)[4]

  return multiscale_points_start(x, a, y, b, eps, first_f=first_f, fallback=network)[0]


_predict = jax.jit(_predict_impl, static_argnums=(0, 7, 8, 9))


def load_meta_points(path: str) -> MetaPointsOT:
  """Load a model written by :meth:`MetaPointsOT.save`."""
  raw = io.load(path)
  meta = json.loads(raw["meta"])
  if meta.get("format") != _FORMAT:
    raise ValueError(f"load_meta_points: {path!r} is not a neural_ot point-cloud Meta OT file "
                     f"(format {meta.get('format')!r}).")
  return MetaPointsOT(tuple(meta["epsilon"]), int(meta["dim"]), int(meta["landmarks"]),
                      int(meta["width"]), int(meta["depth"]), int(meta["heads"]),
                      jax.tree.map(jnp.asarray, raw["params"]), tuple(meta["history"]),
                      meta["refine_tol"], bool(meta.get("multiscale", False)))


@dataclasses.dataclass(frozen=True)
class MetaPointsTrainer:
  """Training as a :class:`neural_ot.train.Trainer`: maximise the landmark dual (divided by the
  mean cost, so pairs of every scale count alike) of the predicted ``f``."""

  dim: int
  landmarks: int
  width: int
  depth: int
  heads: int
  epsilon: tuple
  learning_rate: float

  @property
  def net(self):
    return _SetNet(self.width, self.depth, self.heads)

  def init_state(self, key, steps: int) -> TrainState:
    k = self.landmarks
    z = jnp.zeros((k, self.dim), jnp.float32)
    params = self.net.init(key, z, z, jnp.zeros((), jnp.float32), z)
    return TrainState(params, optax.adam(1.0).init(params), jnp.zeros((), jnp.int32),
                      jnp.asarray(float(steps), jnp.float32))

  def pair_dual(self, params, x, a, y, b, key):
    k_eps, k_land = jax.random.split(key)
    lo, hi = self.epsilon
    rel = jnp.exp(jax.random.uniform(k_eps, (), jnp.float32, np.log(lo), np.log(hi)))
    _, mean_cost = _frame(x, a, y, b)
    eps = jax.lax.stop_gradient(rel * mean_cost)
    xs, a_s, ys, b_s, f_s, mean_cost = _landmark_start(self.net, params, x, a, y, b, eps,
                                                       self.landmarks, k_land)
    return dual_objective(_dense(xs, ys), a_s, b_s, f_s, None, eps) / mean_cost

  def step(self, state: TrainState, batch):
    x, a, y, b, key = batch
    keys = jax.random.split(key, x.shape[0])
    loss_fn = lambda p: -jnp.mean(jax.vmap(
        lambda *args: self.pair_dual(p, *args))(x, a, y, b, keys))
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return scheduled_adam(state, grads, self.learning_rate, 100), {
        "dual": -loss, "grad_norm": optax.global_norm(grads)}


def _check_pairs_out(out, k, dim=None, where="pairs(key, k)"):
  """Host check of one sampler output: ``(x, a, y, b)`` with ``(k, n, d)``, ``(k, n)``,
  ``(k, m, d)``, ``(k, m)`` real arrays, finite, non-negative weights with positive mass."""
  if not (isinstance(out, (tuple, list)) and len(out) == 4):
    raise ValueError(f"fit_meta_points: `{where}` must return (x, a, y, b), got "
                     f"{type(out).__name__}" + (f" of length {len(out)}"
                                                if isinstance(out, (tuple, list)) else "") + ".")
  arrs = []
  for name, h in zip("xayb", out):
    try:
      h = np.asarray(h)
    except (ValueError, TypeError) as exc:
      raise ValueError(f"fit_meta_points: `{where}` must return arrays ({name}: {exc}).") \
          from None
    if h.dtype.kind not in "biuf":
      raise TypeError(f"fit_meta_points: `{where}` must return real arrays, got {name} of "
                      f"dtype {h.dtype}.")
    arrs.append(h.astype(np.float32))
  x, a, y, b = arrs
  ok = (x.ndim == 3 and y.ndim == 3 and x.shape[0] == k and y.shape[0] == k
        and a.shape == x.shape[:2] and b.shape == y.shape[:2] and x.shape[2] == y.shape[2]
        and x.shape[1] >= 1 and y.shape[1] >= 1 and x.shape[2] >= 1)
  if not ok:
    raise ValueError(f"fit_meta_points: `{where}` must return x ({k}, n, d), a ({k}, n), "
                     f"y ({k}, m, d), b ({k}, m); got {x.shape}, {a.shape}, {y.shape}, "
                     f"{b.shape}.")
  if dim is not None and x.shape[2] != dim:
    raise ValueError(f"fit_meta_points: `{where}` returned points of dimension {x.shape[2]}, "
                     f"expected {dim}.")
  for name, h in zip("xayb", arrs):
    if not np.all(np.isfinite(h)):
      raise ValueError(f"fit_meta_points: `{where}` returned non-finite values in {name}.")
  for name, w in (("a", a), ("b", b)):
    if np.any(w < 0) or not np.all(w.sum(-1) > 0):
      raise ValueError(f"fit_meta_points: `{where}` must return non-negative weights {name} "
                       f"with positive mass per pair; min {w.min():.3g}, smallest total "
                       f"{w.sum(-1).min():.3g}.")
  return arrs


@dataclasses.dataclass(frozen=True)
class _PointPairs:
  pairs: Callable
  batch_size: int
  shapes: tuple  # the probe's (n, m, d): a traced batch must keep them
  sharding: Any = None

  def __call__(self, key, data):
    k_pairs, k_step = jax.random.split(key)
    x, a, y, b = self.pairs(k_pairs, self.batch_size)
    n, m, d = self.shapes
    want = [(self.batch_size, n, d), (self.batch_size, n), (self.batch_size, m, d),
            (self.batch_size, m)]
    got = [jnp.shape(v) for v in (x, a, y, b)]
    if got != want:  # static shapes: checked while tracing
      raise ValueError(f"fit_meta_points: `pairs(key, {self.batch_size})` must return the "
                       f"shapes {want} every call, got {got}.")
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    a, b = a / jnp.sum(a, -1, keepdims=True), b / jnp.sum(b, -1, keepdims=True)
    out = [x, a, y, b]
    if self.sharding is not None:
      out = [jax.lax.with_sharding_constraint(v, self.sharding) for v in out]
    return (*out, k_step)


def _probe(pairs, k):
  if not callable(pairs):
    raise TypeError(f"fit_meta_points: `pairs` must be a function `pairs(key, k) -> (x, a, y, "
                    f"b)`, got {type(pairs).__name__}.")
  try:
    out = pairs(jax.random.PRNGKey(0), k)
  except TypeError as exc:
    raise TypeError(f"fit_meta_points: `pairs` failed when called as `pairs(key, {k})`: "
                    f"{exc}") from exc
  return _check_pairs_out(out, k, where=f"pairs(key, {k})")


def _relative_epsilon(epsilon):
  vals = epsilon if isinstance(epsilon, (tuple, list)) else (epsilon, epsilon)
  if len(vals) != 2 or not all(_validation.is_real(v) for v in vals):
    raise TypeError(f"fit_meta_points: `epsilon` must be a number or a (lo, hi) pair of "
                    f"numbers (relative to the mean cost), got {epsilon!r}.")
  lo, hi = float(vals[0]), float(vals[1])
  if not (0 < lo <= hi < float("inf")):
    raise ValueError(f"fit_meta_points: `epsilon` must satisfy 0 < lo <= hi < inf (relative "
                     f"to the mean cost), got {epsilon!r}.")
  return lo, hi


def fit_meta_points(pairs: Callable, epsilon=(0.005, 0.05), *, landmarks: int = 128,
                    width: int = 64, depth: int = 2, heads: int = 4,
                    learning_rate: float = 3e-4, refine_tol: float | None = None,
                    **options) -> MetaPointsOT:
  """Train a point-cloud Meta OT model: warm starts for Sinkhorn between clouds of any size.

  What to expect (``benchmarks/RESULTS.md``, "Point clouds of any size"): the network alone,
  trained with these defaults on Gaussian mixtures and boxes (d = 2 and 8) and tested at eps =
  0.01 x mean cost on 1,000 and 4,000 points of mixtures, rings and a curved 1-D family, needs
  1.0-1.4x fewer iterations than zeros to 1e-3 and is mostly no better than
  :func:`gaussian_potential` alone. What gains is the multiscale pyramid the model starts
  (``multiscale=True``, session 40): in d = 2, 0-11 iterations to 1e-3 where zeros take 40-241,
  and 1.7-12x less wall-clock including the prediction; in d >= 4 at this eps the cells mostly
  cannot resolve the problem and the start is the network's. The pyramid needs no training:
  :func:`neural_ot.meta.multiscale_points_init`.

  Args:
    pairs: ``pairs(key, k) -> (x, a, y, b)``: ``k`` training problems, ``x: (k, n, d)``,
      ``a: (k, n)``, ``y: (k, m, d)``, ``b: (k, m)`` (weights non-negative, normalised here),
      jit-able with the same shapes every call. Test clouds may have any other sizes.
    epsilon: the relative regularisation ``eps / mean cost`` to train for: a number or a
      ``(lo, hi)`` range drawn log-uniformly per problem (the mean cost is
      ``sum_ij a_i b_j |x_i - y_j|^2``, as ``Sinkhorn(relative_epsilon=True)`` uses it).
    landmarks: ``k`` points per cloud the network reads (and the refinement solves on).
    width, depth, heads: the transformer. learning_rate: Adam peak (warm-up, cosine decay).
    refine_tol: the model's default landmark refinement (see :meth:`MetaPointsOT.predict`);
      ``None`` by default: solved to 1e-3, the landmark problem ends at the same start whatever
      the network predicted (measured, ``benchmarks/RESULTS.md``).
    **options: the options every fit shares (:class:`neural_ot.train.FitOptions`): ``steps``
      (default 2000), ``batch_size`` (default 8), ``seed``, ``max_seconds``,
      ``checkpoint_dir``, ``checkpoint_every``, ``resume``, ``progress``, ``log_every``,
      ``callback``, ``eval_fn(model, step)``, ``eval_every``, ``eval_seconds``,
      ``max_param_norm``, ``mesh``, ``axis_name``; float32 only.

  Example:
    >>> import jax
    >>> from neural_ot.meta import fit_meta_points
    >>> def pairs(key, k):
    ...   kx, ky = jax.random.split(key)
    ...   x = jax.random.normal(kx, (k, 64, 2))
    ...   y = 2.0 + 0.5 * jax.random.normal(ky, (k, 48, 2))
    ...   return x, jax.numpy.ones((k, 64)), y, jax.numpy.ones((k, 48))
    >>> m = fit_meta_points(pairs, 0.05, steps=5, batch_size=2, landmarks=16, width=16,
    ...                     depth=1, progress=False)
    >>> x, _, y, _ = pairs(jax.random.PRNGKey(1), 1)
    >>> m.predict(x[0], y[0, :30], epsilon=0.1)[0].shape
    (64,)
  """
  lo, hi = _relative_epsilon(epsilon)
  for name, v in (("landmarks", landmarks), ("width", width), ("depth", depth),
                  ("heads", heads)):
    if not (_validation.is_int(v) and v >= 1):
      raise ValueError(f"fit_meta_points: `{name}` must be an integer >= 1, got {v!r}.")
  if width % heads:
    raise ValueError(f"fit_meta_points: `width` ({width}) must be a multiple of `heads` "
                     f"({heads}).")
  if not (_validation.is_real(learning_rate) and 0 < learning_rate < float("inf")):
    raise ValueError(f"fit_meta_points: `learning_rate` must be a finite number > 0, got "
                     f"{learning_rate!r}.")
  if refine_tol is not None and not (_validation.is_real(refine_tol)
                                     and 0 < refine_tol < float("inf")):
    raise ValueError(f"fit_meta_points: `refine_tol` must be None or a number > 0, got "
                     f"{refine_tol!r}.")
  opts, unknown = train.FitOptions.from_kwargs(
      "fit_meta_points", options, default_steps=2000, unsupported=("dtype",),
      steps=2000, batch_size=8)
  if unknown:
    raise TypeError(f"fit_meta_points: unknown option(s) {sorted(unknown)}.")
  x0, a0, y0, b0 = _probe(pairs, 2)
  if opts.batch_size != 2:
    _probe(pairs, opts.batch_size)
  shapes = (x0.shape[1], y0.shape[1], x0.shape[2])
  trainer = MetaPointsTrainer(shapes[2], int(landmarks), int(width), int(depth), int(heads),
                              (lo, hi), float(learning_rate))
  key = jax.random.PRNGKey(opts.seed)
  k_init, k_data = jax.random.split(key)
  state = trainer.init_state(k_init, opts.steps)
  fingerprint = opts.fingerprint(
      dataclasses.asdict(trainer), pairs=getattr(pairs, "__qualname__", type(pairs).__name__)
      + " " + train.data_fingerprint(x0, a0, y0, b0))

  def make_model(st, history=()):
    return MetaPointsOT((lo, hi), trainer.dim, trainer.landmarks, trainer.width, trainer.depth,
                        trainer.heads, st.params, tuple(history), refine_tol)

  sharding, placement = train.data_parallel(opts.mesh, opts.axis_name, opts.batch_size,
                                            "fit_meta_points")
  state, history = train.run_fit(
      "fit_meta_points", opts, trainer, state,
      _PointPairs(pairs, opts.batch_size, shapes, sharding), {}, k_data,
      fingerprint=fingerprint, make_result=make_model, show=("dual",), placement=placement,
      advice="Lower `learning_rate`")
  return make_model(state, [{"step": h["step"], "dual": h["dual"]} for h in history
                            if "dual" in h])
