"""Host syncs in the training loop: a fit_w2 step with metrics fetched every step vs every 100.

Trains the same problem (batch 256, D = 2 and 16, fit_w2 defaults otherwise) with
``log_every=1`` (a host sync per step, as the loop did before) and ``log_every=100``,
alternating the two settings ``--repeats`` times, and reports the median steady-state ms/step
of each (from the loop's own clock: compile excluded) and their ratio.

Run: ``python benchmarks/train_loop.py [--steps 1000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import platform

import jax
import numpy as np

import neural_ot


def ms_per_step(x, y, steps, log_every):
  mp = neural_ot.fit_w2(x, y, steps=steps, batch_size=256, log_every=log_every, progress=False)
  logs = [h for h in mp.history if "loss" in h]
  first = next(h for h in logs if h["step"] >= 100)  # after warm-up
  return 1000 * (logs[-1]["seconds"] - first["seconds"]) / (logs[-1]["step"] - first["step"])


def main():
  p = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dims", type=int, nargs="+", default=[2, 16])
  args = p.parse_args()
  print(f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, batch 256")
  print(f"{'D':>3} {'ms/step, fetch every step':>26} {'every 100':>10} {'ratio':>6}")
  for d in args.dims:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, d)).astype(np.float32)
    y = (2 * x + 1 + 0.3 * np.tanh(x)).astype(np.float32)
    res = {1: [], 100: []}
    for _ in range(args.repeats):
      for le in (1, 100):
        res[le].append(ms_per_step(x, y, args.steps, le))
    a, b = np.median(res[1]), np.median(res[100])
    print(f"{d:>3} {a:26.3f} {b:10.3f} {a / b:6.2f}", flush=True)


if __name__ == "__main__":
  main()
