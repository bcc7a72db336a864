"""Training Wasserstein-2 dual potentials with amortized, fine-tuned conjugates.

Loss (semi-dual, cost ``0.5 |x - y|^2`` up to constants; Makkuva 2020, Amos 2023):

  ``min_f  E_x f(x) + E_y f*(y)``,  ``f*(y) = max_x <x, y> - f(x)``.

Each step predicts the conjugate's argmax ``x_hat(y)`` with a second network,
fine-tunes it with ``finetune_iters`` L-BFGS (or Adam) steps to ``x_tilde``
and uses ``x_tilde`` (stop-gradient, Danskin) in the potential's loss; the
predictor learns by one of three losses: ``"regression"`` onto ``x_tilde``,
``"objective"`` (maximise ``<x_hat, y> - f(x_hat)``) or ``"cycle"``
(``|grad f(x_hat) - y|^2``). ``finetune_iters=0`` with ``"objective"`` is
Makkuva et al.'s min-max scheme (parallel updates).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from neural_ot._validation import check_widths, is_int
from neural_ot.conjugate import ConjugateSolver
from neural_ot.conjugate.solvers import RETRY_DIVISOR, OWLQNSolver, ProxGradSolver
from neural_ot.geometry.costs import TICost, cost_from_json
from neural_ot.potentials import ICNN, MLPPotential, MLPPredictor
from neural_ot.potentials.conditional import ConditionalICNN, ConditionalPredictor, FixedContext
from neural_ot.train import TrainState, cosine_schedule

__all__ = ["W2Trainer", "TrainState"]


_AMORTIZATION = ("regression", "objective", "cycle")
_POTENTIALS = ("icnn", "mlp")
_INITS = ("gaussian", "identity")


@dataclasses.dataclass(frozen=True)
class W2Trainer:
  """Configuration of a W2 dual training run (immutable; hashable for ``jit``).

  Attributes:
    potential: ``"icnn"`` (convex by construction) or ``"mlp"`` (not convex; softplus).
    hidden: hidden widths of the potential.
    activation: ICNN activation (the MLP potential's is softplus).
    strong_convexity: extra ``0.5 c |x|^2`` in the potential.
    predictor_hidden: hidden widths of the amortized argmax model.
    amortization: ``"regression"``, ``"objective"`` or ``"cycle"``.
    finetune: conjugate solver for fine-tuning, ``"lbfgs"`` or ``"adam"``; for a cost with an
      ``l1`` part, ``"lbfgs"`` is orthant-wise L-BFGS (:class:`~neural_ot.conjugate.solvers.
      OWLQNSolver`) and ``"prox"`` proximal gradient.
    finetune_iters: solver steps from the prediction per training step (0: none).
    finetune_tol: the solver stops a sample when ``|grad f(x) - y| < finetune_tol``.
    learning_rate: peak AdamW learning rate (cosine decay to ``final_lr_fraction`` of it
      over the run's horizon).
    predictor_lr_factor: the predictor's rate as a fraction of the potential's (default 1).
      At the potential's rate the predictor chases a moving target: on the W2 benchmark at
      D = 8 its RMS error stayed at 1.2 (standardised units) over 3000 steps at factor 1 and
      fell to 0.3 at factor 0.1. A better prediction lets a smaller ``finetune_iters`` do (5
      instead of 10: forward L2-UVP 13-30 % lower at equal wall-clock at D = 8-32), but the
      inverse map then came out worse at D = 8, 32 and 64, so the default is unchanged
      (``benchmarks/RESULTS.md``).
    b1, b2: AdamW's moment decay rates.
    warmup_steps: linear warm-up steps.
    weight_decay: AdamW decoupled weight decay (where the networks' ``decay_mask`` allows).
    grad_clip: global gradient norm clip.
    init: ``"gaussian"`` (``grad f`` starts at the OT map between the measures'
      moment-matched Gaussians) or ``"identity"``.
    context_dim: ``k > 0`` makes the networks conditional (:mod:`neural_ot.potentials.conditional`):
      with ``context_mode="input"`` the potential is ``f(x, c)`` and batches are ``(x, y, c)``
      (``c: (b, k)``, each row its own context); with ``"fixed"`` the context is a parameter
      (a conditional map's prediction for one context, fine-tuned as a plain map).
    context_hidden: widths of the networks' context path.
    context_mode: ``"input"`` or ``"fixed"``.
    batch_candidates: the conjugate also takes the batch's source points as candidates:
      ``f*(y_j) >= max_i <x_i, y_j> - f(x_i)`` (a discrete c-transform; ``b^2 d`` flops), and a
      row uses the batch point where it beats the fine-tuned argmax. For a convex potential the
      solve's local maximum is global, so this changes nothing once the solve converges; a
      non-convex potential cannot be pushed down at source points that the local search never
      visits (``potential="mlp"`` diverged that way at D = 64 without it). Rows of a conditional
      batch have their own contexts, so there the option is ignored.
    leak: the MLP potential's activation is ``leak * u + (1 - leak) softplus(u)``: with
      ``leak > 0`` a unit pushed far negative still passes gradient back and can recover
      (the stall of ``benchmarks/RESULTS.md``, issue 27, measured with 0 and 0.02).
    cost: ``None`` (the W2 cost ``0.5 |x - y|^2``) or a translation-invariant cost
      :class:`neural_ot.TICost` ``h(x - y)`` (in the standardised units the trainer sees).
      The network is then ``psi = 0.5 |x|^2 - f`` for the dual potential ``f``, the conjugate
      ``max_x <x, y> - psi(x) - r(x - y)`` with ``r = h - 0.5 |.|^2`` (so ``r = 0`` is the W2
      case) and the map ``x - grad h*(x - grad psi(x))``; an ``l1`` part of ``h`` is solved
      by orthant-wise L-BFGS (``finetune="lbfgs"``) or proximal gradient (``"prox"``).
    fixed_quadratic: the potential's quadratic term keeps its starting value (the others
      train). For costs that grow slower than ``|z|^2`` (``fit_map`` sets it, with
      ``init="identity"``): any curvature of ``psi`` below 1 makes their conjugate unbounded.
    quad_lr_scale: the potential's quadratic term trains at this fraction of the rate (>= 0;
      1 trains it as the rest, 0 is ``fixed_quadratic``). Adam moves each of its ``D^2``
      entries by about the rate whatever its gradient's size, so at high ``D`` the map's
      linear part takes noise of spectral size ``~ 2 rate sqrt(D)`` per step.
    sharded: the batch is split over devices (the fits set it when given a ``mesh``): the
      conjugate's line search then retries on the whole batch, since gathering the few rows
      that search would be a collective. Not part of the run's configuration (a map or
      checkpoint does not record it).
  """

  potential: str = "icnn"
  hidden: Sequence[int] = (64, 64, 64)
  activation: str = "celu"
  strong_convexity: float = 0.0
  predictor_hidden: Sequence[int] = (64, 64)
  amortization: str = "regression"
  finetune: str = "lbfgs"
  finetune_iters: int = 10
  finetune_tol: float = 1e-3
  learning_rate: float = 1e-2
  predictor_lr_factor: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  warmup_steps: int = 50
  final_lr_fraction: float = 0.05
  weight_decay: float = 1e-5
  grad_clip: float = 10.0
  init: str = "gaussian"
  context_dim: int = 0
  context_hidden: Sequence[int] = (64, 64)
  context_mode: str = "input"
  batch_candidates: bool = True
  leak: float = 0.0
  cost: Any = None
  fixed_quadratic: bool = False
  quad_lr_scale: float = 1.0
  # how the batch is laid out, not what is trained: no option, map or checkpoint records it
  sharded: bool = dataclasses.field(default=False, metadata={"config": False})

  def __post_init__(self):
    if isinstance(self.cost, dict):  # a saved map's configuration
      object.__setattr__(self, "cost", cost_from_json(self.cost))
    if self.finetune == "prox" and (self.cost is None or not self.cost.l1_weight > 0):
      raise ValueError("W2Trainer: `finetune='prox'` (proximal gradient) is for costs with an "
                       "l1 part (ElasticL1); use 'lbfgs' or 'adam'.")
    if not (self.cost is None or isinstance(self.cost, TICost)):
      raise TypeError(f"W2Trainer: `cost` must be None or a translation-invariant cost "
                      f"(neural_ot.TICost, e.g. ElasticL1(0.1) or PNorm(2, 1.5)), got "
                      f"{type(self.cost).__name__}.")
    for name in ("hidden", "predictor_hidden", "context_hidden"):
      object.__setattr__(self, name, check_widths("W2Trainer", name, getattr(self, name)))
    if not isinstance(self.fixed_quadratic, (bool, np.bool_)):
      raise ValueError(f"W2Trainer: `fixed_quadratic` must be True or False, got "
                       f"{self.fixed_quadratic!r}.")
    for name in ("context_dim", "finetune_iters"):
      val = getattr(self, name)
      if not (is_int(val) and val >= 0):
        raise ValueError(f"W2Trainer: `{name}` must be an int >= 0, got {val!r}.")
      object.__setattr__(self, name, int(val))
    if self.context_mode not in ("input", "fixed"):
      raise ValueError(f"W2Trainer: `context_mode` must be 'input' or 'fixed', got "
                       f"{self.context_mode!r}.")
    if self.context_dim and self.potential != "icnn":
      raise ValueError(f"W2Trainer: conditional maps (`context_dim` > 0) need potential='icnn', got "
                       f"{self.potential!r}.")
    for name, allowed in (("potential", _POTENTIALS), ("amortization", _AMORTIZATION),
                          ("finetune", ("lbfgs", "adam", "prox")), ("init", _INITS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"W2Trainer: `{name}` must be one of {list(allowed)}, got "
                         f"{getattr(self, name)!r}.")
    for name in ("learning_rate", "predictor_lr_factor", "finetune_tol", "grad_clip"):
      if not 0 < float(getattr(self, name)) < float("inf"):
        raise ValueError(f"W2Trainer: `{name}` must be finite and > 0, got "
                         f"{getattr(self, name)!r}.")
    if not 0.0 <= float(self.final_lr_fraction) <= 1.0:
      raise ValueError(f"W2Trainer: `final_lr_fraction` (where the schedule ends, as a fraction "
                       f"of the peak) must be in [0, 1], got {self.final_lr_fraction!r}.")
    q = self.quad_lr_scale
    if not (isinstance(q, (int, float, np.integer, np.floating)) and not isinstance(q, bool)
            and 0.0 <= q < float("inf")):
      raise ValueError(f"W2Trainer: `quad_lr_scale` (the quadratic term's share of the rate) "
                       f"must be finite and >= 0, got {self.quad_lr_scale!r}.")
    if not 0.0 <= float(self.weight_decay) < float("inf"):
      raise ValueError(f"W2Trainer: `weight_decay` must be finite and >= 0, got "
                       f"{self.weight_decay!r}.")
    if not (is_int(self.warmup_steps) and self.warmup_steps >= 0):
      raise ValueError(f"W2Trainer: `warmup_steps` must be an int >= 0, got "
                       f"{self.warmup_steps!r}.")
    for name in ("b1", "b2"):
      if not 0.0 <= float(getattr(self, name)) < 1.0:
        raise ValueError(f"W2Trainer: `{name}` must be in [0, 1), got {getattr(self, name)!r}.")
    if not 0.0 <= float(self.leak) < 1.0:
      raise ValueError(f"W2Trainer: `leak` (the MLP potential's least activation slope) must be "
                       f"in [0, 1), got {self.leak!r}.")
    if not float(self.strong_convexity) >= 0:
      raise ValueError(f"W2Trainer: `strong_convexity` must be >= 0, got {self.strong_convexity!r}.")
    if not self.hidden:
      raise ValueError("W2Trainer: `hidden` must list at least one layer width.")
    if not isinstance(self.batch_candidates, (bool, np.bool_)):
      raise ValueError(f"W2Trainer: `batch_candidates` must be True or False, got "
                       f"{self.batch_candidates!r}.")
    object.__setattr__(self, "batch_candidates", bool(self.batch_candidates))

  @classmethod
  def check_options(cls, who: str, options: dict, exclude=frozenset()) -> None:
    """Names and types/ranges of trainer ``options`` a fit was given, read from the type of
    each field's default (``__post_init__`` checks the allowed strings and tighter ranges): a
    bad value is a ``TypeError``/``ValueError`` naming it, not a failure deep inside flax or
    the schedule. ``potential`` may also be ``"auto"`` (the fit chooses)."""
    fields = {f.name for f in dataclasses.fields(cls) if f.metadata.get("config", True)} - set(
        exclude)
    unknown = sorted(set(options) - fields)
    if unknown:
      raise TypeError(f"{who}: unknown option(s) {unknown}; valid options are {sorted(fields)} "
                      f"and the keyword arguments of {who}.")
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, val in options.items():
      default = defaults.get(name)
      if isinstance(default, str) and not isinstance(val, str):
        raise TypeError(f"{who}: `{name}` must be a string, got {val!r}.")
      if isinstance(default, tuple):  # layer widths
        check_widths(who, name, val)
      elif isinstance(default, int) and not isinstance(default, bool):
        if not (is_int(val) and val >= 0):
          raise ValueError(f"{who}: `{name}` must be an int >= 0, got {val!r}.")
      elif isinstance(default, float):
        if not (isinstance(val, (int, float, np.integer, np.floating)) and not isinstance(
            val, (bool, np.bool_))):
          raise TypeError(f"{who}: `{name}` must be a real number, got {val!r}.")
        if not (np.isfinite(val) and val >= 0):
          raise ValueError(f"{who}: `{name}` must be finite and >= 0, got {val!r}.")

  # -- networks ------------------------------------------------------------

  @property
  def conditional(self) -> bool:
    """Whether the networks take a context input (batches ``(x, y, c)``)."""
    return self.context_dim > 0 and self.context_mode == "input"

  @property
  def f_module(self) -> nn.Module:
    if self.context_dim:
      net = ConditionalICNN(hidden=self.hidden, context_hidden=self.context_hidden,
                            activation=self.activation, strong_convexity=self.strong_convexity)
      return net if self.context_mode == "input" else FixedContext(net, self.context_dim)
    if self.potential == "icnn":
      return ICNN(hidden=self.hidden, activation=self.activation,
                  strong_convexity=self.strong_convexity)
    return MLPPotential(hidden=self.hidden, strong_convexity=self.strong_convexity,
                        leak=self.leak)

  @property
  def g_module(self) -> nn.Module:
    if self.context_dim:
      net = ConditionalPredictor(hidden=self.predictor_hidden, context_hidden=self.context_hidden)
      return net if self.context_mode == "input" else FixedContext(net, self.context_dim)
    return MLPPredictor(hidden=self.predictor_hidden)

  @property
  def solver(self) -> ConjugateSolver | ProxGradSolver:
    """The conjugate solver (``ProxGradSolver`` for a cost with an ``l1`` part)."""
    divisor = 1 if self.sharded else RETRY_DIVISOR
    if self.cost is not None and self.cost.l1_weight > 0:
      l1 = float(self.cost.l1_weight)
      if self.finetune == "prox":
        return ProxGradSolver(l1, tol=self.finetune_tol, max_iters=self.finetune_iters,
                              retry_divisor=divisor)
      return OWLQNSolver(l1, tol=self.finetune_tol, max_iters=self.finetune_iters,
                         retry_divisor=divisor)
    return ConjugateSolver(self.finetune, tol=self.finetune_tol, max_iters=self.finetune_iters,
                           retry_divisor=divisor)

  @property
  def extra(self) -> Callable | None:
    """The smooth term the cost adds to the conjugate objective (``None`` for W2)."""
    return None if self.cost is None else self.cost.smooth_residual()

  def solve(self, solver, f: Callable, y: jax.Array, x0: jax.Array, context=None):
    """``solver``'s conjugate of ``f`` at ``y`` for this trainer's cost."""
    if self.cost is None:  # the W2 path, unchanged
      return solver(f, y, x0, context=context)
    return solver(f, y, x0, context=context, extra=self.extra)

  def residual_rows(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """``r(x - y)`` row by row (``x, y: (b, d)``; zeros for W2)."""
    if self.cost is None:
      return jnp.zeros(x.shape[:1], x.dtype)
    return jax.vmap(self.cost.residual)(x - y)

  def residual_matrix(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """``R[j, i] = r(x_i - y_j)``, shape ``(len(y), len(x))``."""
    diff = x[None, :, :] - y[:, None, :]
    return jax.vmap(jax.vmap(self.cost.residual))(diff)

  def displacement(self, v: jax.Array) -> jax.Array:
    """The map's displacement ``grad h*(v)`` for ``v = x - grad psi(x)`` (``v`` for W2)."""
    return v if self.cost is None else self.cost.grad_h_star(v)

  def optimizer(self) -> optax.GradientTransformation:
    """Clipped AdamW at unit rate; :meth:`step` scales its updates by the schedule."""
    mask = lambda p: {"f": self.f_module.decay_mask(p["f"]), "g": self.g_module.decay_mask(p["g"])}
    opt = optax.chain(optax.clip_by_global_norm(self.grad_clip),
                      optax.adamw(1.0, b1=self.b1, b2=self.b2, weight_decay=self.weight_decay,
                                  mask=mask))
    scale = 0.0 if self.fixed_quadratic else float(self.quad_lr_scale)
    if scale == 1.0:
      return opt
    # the potential's quadratic term trains at `scale` times the rate (0: keeps its start)
    quad = lambda p: {"f": jax.tree.map(lambda m: not m, self.f_module.decay_mask(p["f"])),
                      "g": jax.tree.map(lambda m: False, p["g"])}
    return optax.chain(opt, optax.masked(
        optax.set_to_zero() if scale == 0.0 else optax.scale(scale), quad))

  def init_params(self, key: jax.Array, dim: int, dtype=jnp.float32):
    """Freshly initialised ``{"f": ..., "g": ...}`` for dimension ``dim``."""
    kf, kg = jax.random.split(key)
    args = (jnp.zeros((dim,), dtype),)
    if self.conditional:
      args += (jnp.zeros((self.context_dim,), dtype),)
    return {"f": self.f_module.init(kf, *args), "g": self.g_module.init(kg, *args)}

  def init_state(self, key: jax.Array, dim: int, steps: int, source_moments=None,
                 target_moments=None, dtype=jnp.float32, params=None) -> TrainState:
    """Initial parameters and optimizer state for a run planned to last ``steps`` steps.

    With ``init="gaussian"`` and the moments ``(mean, cov)`` of both measures, ``grad f``
    starts at the Gaussian OT map ``A x + b`` (the networks set their own parameters:
    ``from_moments``) and the predictor at its inverse. ``params`` (e.g. a conditional
    map's prediction, or a base set with ``from_base``) replaces the initialisation.
    """
    if params is None:
      params = self.init_params(key, dim, dtype)
      if self.init == "gaussian" and source_moments is not None:
        params = {"f": self.f_module.from_moments(params["f"], source_moments, target_moments),
                  "g": self.g_module.from_moments(params["g"], source_moments, target_moments)}
    params = jax.tree.map(lambda v: jnp.asarray(v, dtype), params)
    opt_state = self.optimizer().init(params)
    return TrainState(params, opt_state, jnp.zeros((), jnp.int32),
                      jnp.asarray(float(steps), jnp.float32))

  # -- losses --------------------------------------------------------------

  def potential_fn(self, params_f) -> Callable:
    """``f(x)`` of one point (``f(x, c)`` for conditional networks)."""
    return lambda *args: self.f_module.apply(params_f, *args)

  def transport(self, params_f, x: jax.Array) -> jax.Array:
    """The map at standardised rows ``x: (n, d)``: ``grad f(x)`` (W2), ``x - grad h*(x - grad
    f(x))`` for a translation-invariant cost (``f = |x|^2 / 2 - psi``)."""
    grad = jax.vmap(jax.grad(self.potential_fn(params_f)))(x)
    return grad if self.cost is None else x - self.displacement(x - grad)

  def predict(self, params_g, y: jax.Array, c: jax.Array | None = None) -> jax.Array:
    return self.g_module.apply(params_g, y, *(() if c is None else (c,)))

  def finetuned_argmax(self, params, y: jax.Array, c: jax.Array | None = None):
    """Predict and fine-tune the conjugate's argmax (no gradient flows through it); ``c``:
    the rows' contexts (conditional networks)."""
    f = self.potential_fn(jax.lax.stop_gradient(params["f"]))
    x_hat = self.predict(params["g"], y, c)
    if self.finetune_iters == 0:
      x_t = jax.lax.stop_gradient(x_hat)
      grad = jax.vmap(jax.grad(f))(x_t, *(() if c is None else (c,)))
      grad_norm = jnp.linalg.norm(grad - y, axis=-1)
      return x_hat, x_t, jnp.zeros(y.shape[:1], jnp.int32), grad_norm
    res = self.solve(self.solver, f, y, x_hat, context=c)
    return x_hat, jax.lax.stop_gradient(res.x), res.n_iters, res.grad_norm

  def loss(self, params, x: jax.Array, y: jax.Array, c: jax.Array | None = None):
    """Total loss (potential + predictor) and metrics for a batch ``x, y: (b, d)`` (and the
    rows' contexts ``c: (b, k)`` for conditional networks: row ``i`` is the pair ``x_i``,
    ``y_i`` under context ``c_i``, the loss the mean over contexts of each one's dual)."""
    ctx = () if c is None else (c,)
    f = self.potential_fn(params["f"])
    f_sg = self.potential_fn(jax.lax.stop_gradient(params["f"]))
    x_hat, x_t, iters, grad_norm = self.finetuned_argmax(params, y, c)
    fx, fxt = jax.vmap(f)(x, *ctx), jax.vmap(f)(x_t, *ctx)
    wins = jnp.zeros(y.shape[:1], bool)
    if self.batch_candidates and c is None:
      # f at the batch points is fx already: pick per row, no further pass of the network.
      sg = jax.lax.stop_gradient
      scores = y @ x.T - sg(fx)[None, :]  # (b_y, b_x): <x_i, y_j> - f(x_i)
      local = jnp.sum(x_t * y, -1) - sg(fxt)
      if self.cost is not None:  # - r(x_i - y_j)
        scores = scores - self.residual_matrix(x, y)
        local = local - self.residual_rows(x_t, y)
      best = jnp.argmax(scores, axis=1)
      wins = jnp.take_along_axis(scores, best[:, None], 1)[:, 0] > local
      x_t = jnp.where(wins[:, None], x[best], x_t)
      fxt = jnp.where(wins, fx[best], fxt)
    conj = jnp.sum(x_t * y, -1) - fxt
    if self.cost is not None:
      conj = conj - self.residual_rows(x_t, y)
    loss_f = fx.mean() - fxt.mean()  # Danskin: <x_t, y> (and r(x_t - y)) has no gradient
    if self.amortization == "regression":
      loss_g = jnp.mean(jnp.sum((x_hat - x_t) ** 2, -1))
    elif self.amortization == "objective":
      loss_g = -jnp.mean(jnp.sum(x_hat * y, -1) - jax.vmap(f_sg)(x_hat, *ctx))
    else:
      loss_g = jnp.mean(jnp.sum((jax.vmap(jax.grad(f_sg))(x_hat, *ctx) - y) ** 2, -1))
    dual = fx.mean() + conj.mean()
    w2 = jnp.mean(jnp.sum(x * x, -1)) + jnp.mean(jnp.sum(y * y, -1)) - 2 * dual
    sg = jax.lax.stop_gradient
    # For a cost h the dual estimate of OT is E f + E f^c = (E|x|^2 + E|y|^2) / 2 - dual.
    metrics = {"loss": sg(dual), ("w2" if self.cost is None else "ot_cost"): sg(
        w2 if self.cost is None else 0.5 * w2), "loss_g": sg(loss_g),
               "conj_iters": iters.mean().astype(jnp.float32),
               "conj_iters_max": iters.max().astype(jnp.float32),
               "conj_grad_norm": grad_norm.max(),
               "conj_batch_wins": wins.mean(dtype=jnp.float32),
               "pred_error": jnp.sqrt(jnp.mean(jnp.sum((sg(x_hat) - x_t) ** 2, -1)))}
    return loss_f + loss_g, metrics

  def step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
    """One optimizer step on a batch ``(x, y)`` (``(x, y, c)`` for conditional networks);
    returns the new state and metrics."""
    (_, metrics), grads = jax.value_and_grad(self.loss, has_aux=True)(state.params, *batch)
    updates, opt_state = self.optimizer().update(grads, state.opt_state, state.params)
    lr = cosine_schedule(state.step, state.horizon, self.learning_rate, self.warmup_steps,
                         self.final_lr_fraction)
    rates = {"f": lr, "g": lr * self.predictor_lr_factor}
    updates = {k: jax.tree.map(lambda u, r=rates[k]: (r * u).astype(u.dtype), v)
               for k, v in updates.items()}
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1), metrics


def as_config(trainer: W2Trainer) -> dict:
  """JSON-able dict of the trainer's fields."""
  out = {f.name: getattr(trainer, f.name) for f in dataclasses.fields(trainer)
         if f.metadata.get("config", True)}
  if trainer.cost is None:  # W2: the configuration (and checkpoint fingerprints) of before
    del out["cost"]
  else:
    out["cost"] = trainer.cost.to_json()
  return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
