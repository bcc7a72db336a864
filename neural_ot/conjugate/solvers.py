"""Batched convex-conjugate solvers: ``f*(y) = max_x <x, y> - f(x)``.

Each sample is an independent smooth problem; the solver runs on one ``y``
with a ``lax.while_loop`` (per-sample gradient tolerance and iteration cap)
and is ``vmap``-ed over the batch. L-BFGS uses optax's zoom line search.
Gradients of ``f*`` with respect to the parameters of ``f`` follow Danskin's
theorem: differentiate ``<x*, y> - f(stop_gradient(x*))``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["ConjugateResult", "ConjugateSolver", "conjugate"]


class ConjugateResult(NamedTuple):
  """Per-sample result: ``value = <x, y> - f(x)``, ``x`` the argmax,
  ``n_iters`` and ``grad_norm = |y - grad f(x)|``."""

  value: jax.Array
  x: jax.Array
  n_iters: jax.Array
  grad_norm: jax.Array


@dataclasses.dataclass(frozen=True)
class ConjugateSolver:
  """Maximise ``<x, y> - f(x)`` for each row of ``y``.

  Attributes:
    method: ``"lbfgs"`` (with line search) or ``"adam"``.
    tol: stop a sample when ``|y - grad f(x)| < tol``.
    max_iters: iteration cap per sample.
    learning_rate: Adam step size (ignored by L-BFGS).
  """

  method: str = "lbfgs"
  tol: float = 1e-5
  max_iters: int = 100
  learning_rate: float = 0.05

  def __post_init__(self):
    if self.method not in ("lbfgs", "adam"):
      raise ValueError(f"ConjugateSolver: `method` must be 'lbfgs' or 'adam', got {self.method!r}.")
    if not self.tol > 0:
      raise ValueError(f"ConjugateSolver: `tol` must be > 0, got {self.tol!r}.")
    if not (isinstance(self.max_iters, int) and self.max_iters >= 0):
      raise ValueError(f"ConjugateSolver: `max_iters` must be an int >= 0, got {self.max_iters!r}.")

  def _optimizer(self):
    if self.method == "lbfgs":
      return optax.lbfgs()
    return optax.adam(self.learning_rate)

  def solve_one(self, f: Callable, y: jax.Array, x0: jax.Array) -> ConjugateResult:
    """Solve for a single ``y: (d,)`` from ``x0: (d,)`` (minimises ``f(x) - <x, y>``)."""
    obj = lambda x: f(x) - jnp.vdot(x, y)
    opt = self._optimizer()
    if self.method == "lbfgs":
      value_and_grad = optax.value_and_grad_from_state(obj)  # reuses the line search's values
    else:
      value_and_grad = lambda x, state: jax.value_and_grad(obj)(x)

    def cond(c):
      _, _, k, gnorm = c
      return (k < self.max_iters) & (gnorm >= self.tol)

    def body(c):
      x, state, k, _ = c
      val, grad = value_and_grad(x, state=state)
      if self.method == "lbfgs":
        updates, state = opt.update(grad, state, x, value=val, grad=grad, value_fn=obj)
      else:
        updates, state = opt.update(grad, state, x)
      x = optax.apply_updates(x, updates)
      return x, state, k + 1, jnp.linalg.norm(jax.grad(obj)(x))

    g0 = jnp.linalg.norm(jax.grad(obj)(x0))
    x, _, k, gnorm = jax.lax.while_loop(cond, body, (x0, opt.init(x0), 0, g0))
    return ConjugateResult(-obj(x), x, k, gnorm)

  def __call__(self, f: Callable, y: jax.Array, x0: jax.Array | None = None) -> ConjugateResult:
    """Batched solve: ``y: (batch, d)``, warm start ``x0: (batch, d)`` (default ``y``)."""
    if y.ndim != 2:
      raise ValueError(f"ConjugateSolver: `y` must have shape (batch, d), got {tuple(y.shape)}.")
    x0 = y if x0 is None else x0
    if x0.shape != y.shape:
      raise ValueError(f"ConjugateSolver: `x0` must have shape {tuple(y.shape)}, got {tuple(x0.shape)}.")
    sg = jax.lax.stop_gradient
    return jax.vmap(lambda yi, xi: self.solve_one(f, sg(yi), sg(xi)))(y, x0)


def conjugate(f: Callable, y: jax.Array, x_star: jax.Array) -> jax.Array:
  """Differentiable ``f*(y)`` at a given argmax (Danskin): ``<x*, y> - f(x*)``
  with ``x*`` held constant, shape ``(batch,)``."""
  x_star = jax.lax.stop_gradient(x_star)
  return jnp.sum(x_star * y, -1) - jax.vmap(f)(x_star)
