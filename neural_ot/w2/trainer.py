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
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from neural_ot.conjugate import ConjugateSolver
from neural_ot.potentials import ICNN, MLPPotential, MLPPredictor
from neural_ot.train import TrainState, cosine_schedule

__all__ = ["W2Trainer", "TrainState"]

_AMORTIZATION = ("regression", "objective", "cycle")
_POTENTIALS = ("icnn", "mlp")
_INITS = ("gaussian", "identity")


@dataclasses.dataclass(frozen=True)
class W2Trainer:
  """Configuration of a W2 dual training run (immutable; hashable for ``jit``).

  Attributes:
    potential: ``"icnn"`` (convex by construction) or ``"mlp"`` (not convex).
    hidden: hidden widths of the potential.
    activation: ICNN activation.
    strong_convexity: extra ``0.5 c |x|^2`` in the ICNN.
    predictor_hidden: hidden widths of the amortized argmax model.
    amortization: ``"regression"``, ``"objective"`` or ``"cycle"``.
    finetune: conjugate solver for fine-tuning, ``"lbfgs"`` or ``"adam"``.
    finetune_iters: solver steps from the prediction per training step (0: none).
    finetune_tol: the solver stops a sample when ``|grad f(x) - y| < finetune_tol``.
    learning_rate: peak AdamW learning rate (cosine decay to ``final_lr_fraction`` of it
      over the run's horizon).
    b1, b2: AdamW's moment decay rates.
    warmup_steps: linear warm-up steps.
    weight_decay: AdamW decoupled weight decay (where the networks' ``decay_mask`` allows).
    grad_clip: global gradient norm clip.
    init: ``"gaussian"`` (``grad f`` starts at the OT map between the measures'
      moment-matched Gaussians) or ``"identity"``.
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
  b1: float = 0.9
  b2: float = 0.999
  warmup_steps: int = 50
  final_lr_fraction: float = 0.05
  weight_decay: float = 1e-5
  grad_clip: float = 10.0
  init: str = "gaussian"

  def __post_init__(self):
    object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
    object.__setattr__(self, "predictor_hidden", tuple(int(h) for h in self.predictor_hidden))
    for name, allowed in (("potential", _POTENTIALS), ("amortization", _AMORTIZATION),
                          ("finetune", ("lbfgs", "adam")), ("init", _INITS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"fit_w2: `{name}` must be one of {list(allowed)}, got "
                         f"{getattr(self, name)!r}.")
    if not (isinstance(self.finetune_iters, int) and self.finetune_iters >= 0):
      raise ValueError(f"fit_w2: `finetune_iters` must be an int >= 0, got {self.finetune_iters!r}.")
    for name in ("learning_rate", "finetune_tol", "grad_clip"):
      if not float(getattr(self, name)) > 0:
        raise ValueError(f"fit_w2: `{name}` must be > 0, got {getattr(self, name)!r}.")
    for name in ("b1", "b2"):
      if not 0.0 <= float(getattr(self, name)) < 1.0:
        raise ValueError(f"fit_w2: `{name}` must be in [0, 1), got {getattr(self, name)!r}.")
    if not float(self.strong_convexity) >= 0:
      raise ValueError(f"fit_w2: `strong_convexity` must be >= 0, got {self.strong_convexity!r}.")
    if not self.hidden:
      raise ValueError("fit_w2: `hidden` must list at least one layer width.")

  # -- networks ------------------------------------------------------------

  @property
  def f_module(self) -> nn.Module:
    if self.potential == "icnn":
      return ICNN(hidden=self.hidden, activation=self.activation,
                  strong_convexity=self.strong_convexity)
    return MLPPotential(hidden=self.hidden)

  @property
  def g_module(self) -> nn.Module:
    return MLPPredictor(hidden=self.predictor_hidden)

  @property
  def solver(self) -> ConjugateSolver:
    return ConjugateSolver(self.finetune, tol=self.finetune_tol, max_iters=self.finetune_iters)

  def optimizer(self) -> optax.GradientTransformation:
    """Clipped AdamW at unit rate; :meth:`step` scales its updates by the schedule."""
    mask = lambda p: {"f": self.f_module.decay_mask(p["f"]), "g": self.g_module.decay_mask(p["g"])}
    return optax.chain(optax.clip_by_global_norm(self.grad_clip),
                       optax.adamw(1.0, b1=self.b1, b2=self.b2, weight_decay=self.weight_decay,
                                   mask=mask))

  def init_state(self, key: jax.Array, dim: int, steps: int, source_moments=None,
                 target_moments=None, dtype=jnp.float32) -> TrainState:
    """Initial parameters and optimizer state for a run planned to last ``steps`` steps.

    With ``init="gaussian"`` and the moments ``(mean, cov)`` of both measures, ``grad f``
    starts at the Gaussian OT map ``A x + b`` (the networks set their own parameters:
    ``from_moments``) and the predictor at its inverse.
    """
    kf, kg = jax.random.split(key)
    zero = jnp.zeros((dim,), dtype)
    pf, pg = self.f_module.init(kf, zero), self.g_module.init(kg, zero)
    if self.init == "gaussian" and source_moments is not None:
      pf = self.f_module.from_moments(pf, source_moments, target_moments)
      pg = self.g_module.from_moments(pg, source_moments, target_moments)
    params = jax.tree.map(lambda v: jnp.asarray(v, dtype), {"f": pf, "g": pg})
    opt_state = self.optimizer().init(params)
    return TrainState(params, opt_state, jnp.zeros((), jnp.int32),
                      jnp.asarray(float(steps), jnp.float32))

  # -- losses --------------------------------------------------------------

  def potential_fn(self, params_f) -> Callable:
    return lambda x: self.f_module.apply(params_f, x)

  def predict(self, params_g, y: jax.Array) -> jax.Array:
    return self.g_module.apply(params_g, y)

  def finetuned_argmax(self, params, y: jax.Array):
    """Predict and fine-tune the conjugate's argmax (no gradient flows through it)."""
    f = self.potential_fn(jax.lax.stop_gradient(params["f"]))
    x_hat = self.predict(params["g"], y)
    if self.finetune_iters == 0:
      x_t = jax.lax.stop_gradient(x_hat)
      grad_norm = jnp.linalg.norm(jax.vmap(jax.grad(f))(x_t) - y, axis=-1)
      return x_hat, x_t, jnp.zeros(y.shape[:1], jnp.int32), grad_norm
    res = self.solver(f, y, x_hat)
    return x_hat, jax.lax.stop_gradient(res.x), res.n_iters, res.grad_norm

  def loss(self, params, x: jax.Array, y: jax.Array):
    """Total loss (potential + predictor) and metrics for a batch ``x, y: (b, d)``."""
    f = self.potential_fn(params["f"])
    f_sg = self.potential_fn(jax.lax.stop_gradient(params["f"]))
    x_hat, x_t, iters, grad_norm = self.finetuned_argmax(params, y)
    fx, fxt = jax.vmap(f)(x), jax.vmap(f)(x_t)
    conj = jnp.sum(x_t * y, -1) - fxt
    loss_f = fx.mean() - fxt.mean()  # Danskin: <x_t, y> has no gradient
    if self.amortization == "regression":
      loss_g = jnp.mean(jnp.sum((x_hat - x_t) ** 2, -1))
    elif self.amortization == "objective":
      loss_g = -jnp.mean(jnp.sum(x_hat * y, -1) - jax.vmap(f_sg)(x_hat))
    else:
      loss_g = jnp.mean(jnp.sum((jax.vmap(jax.grad(f_sg))(x_hat) - y) ** 2, -1))
    dual = fx.mean() + conj.mean()
    w2 = jnp.mean(jnp.sum(x * x, -1)) + jnp.mean(jnp.sum(y * y, -1)) - 2 * dual
    sg = jax.lax.stop_gradient
    metrics = {"loss": sg(dual), "w2": sg(w2), "loss_g": sg(loss_g),
               "conj_iters": iters.mean().astype(jnp.float32),
               "conj_iters_max": iters.max().astype(jnp.float32),
               "conj_grad_norm": grad_norm.max(),
               "pred_error": jnp.sqrt(jnp.mean(jnp.sum((sg(x_hat) - x_t) ** 2, -1)))}
    return loss_f + loss_g, metrics

  def step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
    """One optimizer step on a batch ``(x, y)``; returns the new state and metrics."""
    x, y = batch
    (_, metrics), grads = jax.value_and_grad(self.loss, has_aux=True)(state.params, x, y)
    updates, opt_state = self.optimizer().update(grads, state.opt_state, state.params)
    lr = cosine_schedule(state.step, state.horizon, self.learning_rate, self.warmup_steps,
                         self.final_lr_fraction)
    updates = jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1), metrics


def as_config(trainer: W2Trainer) -> dict:
  """JSON-able dict of the trainer's fields."""
  out = dataclasses.asdict(trainer)
  return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
