"""ott-jax's neural dual solvers, driven step by step under a wall-clock budget.

ott-jax's ``W2NeuralDual`` and ``ExpectileNeuralDual`` train from Python
iterators with their own loops; here their jitted step functions are called
directly on batches drawn from the same samplers as ours, so time per step,
steps done and the map quality at equal wall-clock are comparable. Needs
``ott.neural`` (which imports ``diffrax``: ``pip install neural_ot[bench]``).
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np

__all__ = ["train_ott"]


def _solver(kind: str, dim: int, seed: int):
  try:
    from ott.neural.methods import expectile_neural_dual, neuraldual
  except ImportError as exc:  # diffrax missing
    raise ImportError("ott-jax's neural solvers need `diffrax`: pip install -e '.[bench]'") from exc
  key = jax.random.PRNGKey(seed)
  if kind == "ott-w2":
    return neuraldual.W2NeuralDual(dim_data=dim, rng=key)
  if kind == "ott-expectile":
    return expectile_neural_dual.ExpectileNeuralDual(dim_data=dim, rng=key)
  raise ValueError(f"train_ott: `kind` must be 'ott-w2' or 'ott-expectile', got {kind!r}.")


def train_ott(pair, kind: str, seconds: float, batch_size: int = 256, seed: int = 0,
              eval_every: int = 0, eval_fn: Callable | None = None, max_steps: int = 10 ** 9,
              eval_seconds: float = 0.0):
  """Train ott-jax's solver on ``pair`` for ``seconds`` of step time (compile excluded).

  Returns a dict: ``forward``, ``inverse`` (maps), ``steps``, ``step_ms`` (median),
  ``compile_s``, ``wall_s`` and ``curve`` (``eval_fn(forward, inverse)`` every ``eval_every``
  steps and/or every ``eval_seconds`` of step time, with the step and the training seconds so
  far).
  """
  solver = _solver(kind, pair.dim, seed)
  expectile = kind == "ott-expectile"
  step_fn = solver.train_step if expectile else solver.train_step_parallel
  back_and_forth = expectile or bool(getattr(solver, "back_and_forth", False))
  draw = jax.jit(lambda k: (pair.sample_source(jax.random.fold_in(k, 0), batch_size),
                            pair.sample_target(jax.random.fold_in(k, 1), batch_size)))
  sf, sg = solver.state_f, solver.state_g

  def one(sf, sg, k):
    x, y = draw(jax.random.PRNGKey(seed * 100003 + k))
    jax.block_until_ready(y)
    t = time.perf_counter()
    if back_and_forth and k % 2 == 1:
      sg, sf, loss, *_ = step_fn(sg, sf, {"source": y, "target": x})
    else:
      sf, sg, loss, *_ = step_fn(sf, sg, {"source": x, "target": y})
    jax.block_until_ready(loss)
    return sf, sg, time.perf_counter() - t, float(loss)

  def maps(sf, sg):
    solver.state_f, solver.state_g = sf, sg
    pots = solver.to_dual_potentials()
    return (jax.jit(lambda x: pots.transport(x, forward=True)),
            jax.jit(lambda y: pots.transport(y, forward=False)))

  t0 = time.perf_counter()
  sf, sg, _, _ = one(sf, sg, 0)  # compile (and one step, counted)
  if back_and_forth:
    sf, sg, _, _ = one(sf, sg, 1)
  compile_s = time.perf_counter() - t0
  times, curve, k, spent = [], [], 2 if back_and_forth else 1, 0.0
  next_eval = eval_seconds
  wall0 = time.perf_counter()
  while spent < seconds and k < max_steps:
    sf, sg, dt, loss = one(sf, sg, k)
    if not np.isfinite(loss):
      curve.append({"step": k, "seconds": spent, "diverged": True})
      break
    times.append(dt)
    spent += dt
    k += 1
    if eval_fn is not None and ((eval_every and k % eval_every == 0) or (
        eval_seconds and spent >= next_eval)):
      curve.append({"step": k, "seconds": spent, **eval_fn(*maps(sf, sg))})
      next_eval = (int(spent / eval_seconds) + 1) * eval_seconds if eval_seconds else 0
  fwd, inv = maps(sf, sg)
  if eval_fn is not None and (eval_every or eval_seconds):
    curve.append({"step": k, "seconds": spent, **eval_fn(fwd, inv)})
  return {"forward": fwd, "inverse": inv, "steps": k, "compile_s": compile_s,
          "step_ms": 1000 * float(np.median(times)) if times else float("nan"),
          "train_s": spent, "wall_s": time.perf_counter() - wall0, "curve": curve}
