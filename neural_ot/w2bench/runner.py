"""Train a method on a known-map pair and log benchmark metrics against wall-clock."""

from __future__ import annotations

import time

import numpy as np

from neural_ot.w2bench import metrics

__all__ = ["METHODS", "bench_defaults", "run_method"]

# Our methods: fit_w2 options on top of bench_defaults(dim).
_OURS = {
    "regression": dict(amortization="regression"),
    "objective": dict(amortization="objective"),
    "cycle": dict(amortization="cycle"),
    "mlp": dict(potential="mlp", amortization="regression"),
}
METHODS = (*_OURS, "ott-w2", "ott-expectile")


def bench_defaults(dim: int) -> dict:
  """Hyper-parameters as a function of the dimension only (never tuned per file).

  Widths follow the published setting (``[2m, 2m, m]``, ``m = max(D, 32)``); the learning
  rate shrinks with ``D`` because a step of the same size moves a wider map further.
  """
  m = max(int(dim), 32)
  lr = 1e-2 if dim <= 8 else (5e-3 if dim <= 32 else 3e-3)
  return dict(hidden=(2 * m, 2 * m, m), predictor_hidden=(2 * m, 2 * m), learning_rate=lr,
              finetune_iters=10, finetune_tol=1e-3, batch_size=256)


def run_method(pair, method: str, *, steps: int = 2000, seconds: float | None = None,
               seed: int = 0, eval_every: int = 500, eval_n: int = 4096, progress: bool = False,
               **overrides) -> dict:
  """Train ``method`` on ``pair`` and score it (L2-UVP and cos, forward and inverse).

  Ours run ``steps`` steps; ott-jax's run for ``seconds`` of step time (default: ours' time
  is not known here, so give it). Returns a dict with ``final`` metrics, ``curve``,
  ``steps``, ``train_s`` (compile and evaluations excluded), ``step_ms`` and, for ours,
  ``map`` (a :class:`neural_ot.W2Map`) and ``conj_iters``.
  """
  if method not in METHODS:
    raise ValueError(f"run_method: `method` must be one of {list(METHODS)}, got {method!r}.")
  score = lambda fwd, inv: metrics.evaluate(pair, fwd, inv, n=eval_n, seed=seed + 1)
  if method.startswith("ott-"):
    from neural_ot.w2bench.peers import train_ott
    out = train_ott(pair, method, seconds if seconds is not None else 60.0,
                    batch_size=overrides.get("batch_size", 256), seed=seed,
                    eval_every=eval_every, eval_fn=score)
    return {"method": method, "final": score(out["forward"], out["inverse"]), **{
        k: out[k] for k in ("steps", "train_s", "step_ms", "compile_s", "curve")}}

  from neural_ot.w2 import fit_w2
  opts = {**bench_defaults(pair.dim), **_OURS[method], **overrides}
  curve, eval_time, stamps, eval_dur = [], [0.0], [], {}

  def eval_fn(mp, step):
    t = time.perf_counter()
    seconds = t - stamps[0] - eval_time[0]  # training time since the first (compiling) step
    res = score(mp.transport, lambda y: mp.inverse(y, finetune_iters=30, tol=1e-4))
    eval_dur[step] = time.perf_counter() - t
    eval_time[0] += eval_dur[step]
    curve.append({"step": step, "seconds": seconds, **res})
    return res

  mp = fit_w2(pair.sample_source, pair.sample_target, steps=steps, seed=seed, eval_fn=eval_fn,
              eval_every=eval_every, callback=lambda s, m: stamps.append(time.perf_counter()),
              progress=progress, log_every=max(steps // 20, 1), **opts)
  steps_dt = np.diff(stamps)
  final = score(mp.transport, lambda y: mp.inverse(y, finetune_iters=30, tol=1e-4))
  # Evaluations run between steps; the one after the last step is outside the interval.
  train_s = float(stamps[-1] - stamps[0] - sum(v for k, v in eval_dur.items() if k < steps))
  conj = [h["conj_iters"] for h in mp.history if "conj_iters" in h]
  return {"method": method, "final": final, "curve": curve, "steps": steps, "train_s": train_s,
          "step_ms": 1000 * float(np.median(steps_dt)) if len(steps_dt) else float("nan"),
          "conj_iters": float(np.mean(conj)) if conj else float("nan"), "map": mp,
          "w2": mp.w2, "options": {k: list(v) if isinstance(v, tuple) else v
                                   for k, v in opts.items()}}
