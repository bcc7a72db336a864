"""Train a method on a known-map pair and log benchmark metrics against wall-clock."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from neural_ot.w2bench import metrics

__all__ = ["METHODS", "run_method"]

# Our methods: fit_w2 options on top of its own defaults (the benchmark runs the library's
# defaults: nothing here is tuned per benchmark file).
_OURS = {
    "regression": {},
    "objective": dict(amortization="objective"),
    "cycle": dict(amortization="cycle"),
    "mlp": dict(potential="mlp"),
}
METHODS = (*_OURS, "ott-w2", "ott-expectile")


def run_method(pair, method: str, *, steps: int | None = None, seconds: float | None = None,
               seed: int = 0, eval_every: int = 500, eval_seconds: float = 0.0,
               eval_n: int = 4096, progress: bool = False, **overrides) -> dict:
  """Train ``method`` on ``pair`` and score it (L2-UVP and cos, forward and inverse).

  Ours run ``fit_w2`` with its defaults (plus ``overrides``) for ``steps`` steps and/or
  ``seconds`` of wall-clock (``max_seconds``); ott-jax's run for ``seconds`` of step time
  (default 60). Returns a dict with ``final`` metrics, ``curve`` (evaluations every
  ``eval_every`` steps and/or ``eval_seconds`` of training, with the training seconds so far,
  evaluation excluded), ``steps``,
  ``train_s``, ``step_ms`` and, for ours, ``map`` and ``conj_iters``.
  """
  if method not in METHODS:
    raise ValueError(f"run_method: `method` must be one of {list(METHODS)}, got {method!r}.")
  score = lambda fwd, inv: metrics.evaluate(pair, fwd, inv, n=eval_n, seed=seed + 1)
  if method.startswith("ott-"):
    from neural_ot.w2bench.peers import train_ott
    out = train_ott(pair, method, seconds if seconds is not None else 60.0,
                    batch_size=overrides.get("batch_size", 256), seed=seed,
                    eval_every=eval_every, eval_seconds=eval_seconds, eval_fn=score)
    return {"method": method, "final": score(out["forward"], out["inverse"]), **{
        k: out[k] for k in ("steps", "train_s", "step_ms", "compile_s", "curve")}}

  from neural_ot.w2 import fit_w2
  if steps is None and seconds is None:
    steps = 2000
  opts = {**_OURS[method], **overrides}
  inverse = lambda mp: mp.inverse  # the library's default solve (W2Map.inverse)
  t0 = time.perf_counter()
  mp = fit_w2(pair.sample_source, pair.sample_target, steps=steps, max_seconds=seconds, seed=seed,
              eval_fn=lambda mp, step: score(mp.transport, inverse(mp)), eval_every=eval_every,
              eval_seconds=eval_seconds, progress=progress, **opts)
  wall = time.perf_counter() - t0
  final = score(mp.transport, inverse(mp))
  logs = [h for h in mp.history if "conj_iters" in h]
  curve = [h for h in mp.history if "uvp_fwd" in h]
  done = logs[-1]["step"] if logs else 0
  train_s = logs[-1]["seconds"] if logs else float("nan")
  step_ms = (1000 * (logs[-1]["seconds"] - logs[0]["seconds"]) / max(done - logs[0]["step"], 1)
             if len(logs) > 1 else float("nan"))
  conj = [h["conj_iters"] for h in logs]
  return {"method": method, "final": final, "curve": curve, "steps": done, "train_s": train_s,
          "wall_s": wall, "step_ms": step_ms,
          "conj_iters": float(np.mean(conj)) if conj else float("nan"), "map": mp, "w2": mp.w2,
          "options": {f: (list(v) if isinstance(v, tuple) else v)
                      for f, v in dataclasses.asdict(mp.trainer).items()}}
