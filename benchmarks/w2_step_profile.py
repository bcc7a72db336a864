"""Where a fit_w2 step spends its time at high dimension: the whole step and its parts.

For each D: the default trainer (``default_options(D)`` with the potential given), one compiled
guarded step on batches of a known-map pair, timed as the median of ``--reps`` blocks of
``--block`` steps after a warm-up (compile excluded, reported apart); then the same step with
one part changed, so the difference is that part's cost:

* ``no-finetune``: ``finetune_iters=0`` (the conjugate's L-BFGS),
* ``no-candidates``: ``batch_candidates=False`` (the batch's points as conjugate candidates),
* ``finetune-5``: 5 L-BFGS steps instead of 10.

Run: ``python benchmarks/w2_step_profile.py --dims 64 128 256 --potential mlp``
"""

import argparse
import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot import train
from neural_ot.w2 import PairSampler, W2Trainer, default_options
from neural_ot.w2.maps import Frame
from neural_ot.w2bench import random_pair

VARIANTS = {"default": {}, "no-finetune": dict(finetune_iters=0),
            "no-candidates": dict(batch_candidates=False), "finetune-5": dict(finetune_iters=5)}


def time_step(trainer, pair, dim, block, reps):
  sampler = PairSampler(256, pair.sample_source, pair.sample_target)
  data = {"frame": Frame.identity(dim).astype(jnp.float32)}
  state = trainer.init_state(jax.random.PRNGKey(0), dim, 10 ** 6)
  step = functools.partial(train.guarded_step, trainer=trainer, sampler=sampler)
  key, ok, mpn = jax.random.PRNGKey(1), jnp.asarray(True), jnp.asarray(1e6, jnp.float32)
  t0 = time.perf_counter()
  state, ok, m = step(state, ok, key, data, mpn)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(reps + 1):
    t = time.perf_counter()
    for _ in range(block):
      state, ok, m = step(state, ok, key, data, mpn)
    jax.block_until_ready(state)
    times.append((time.perf_counter() - t) / block)
  return 1000 * float(np.median(times[1:])), compile_s


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dims", nargs="+", type=int, default=[64, 128, 256])
  p.add_argument("--potential", default="mlp", choices=("mlp", "icnn"))
  p.add_argument("--variants", nargs="+", default=list(VARIANTS))
  p.add_argument("--block", type=int, default=20)
  p.add_argument("--reps", type=int, default=5)
  args = p.parse_args()
  for dim in args.dims:
    pair = random_pair(dim, seed=1)
    opts = default_options(dim, potential=args.potential)
    opts.pop("batch_size")
    base = W2Trainer(**opts)
    for name in args.variants:
      trainer = dataclasses.replace(base, **VARIANTS[name])
      ms, comp = time_step(trainer, pair, dim, args.block, args.reps)
      print(json.dumps(dict(dim=dim, potential=args.potential, variant=name,
                            step_ms=round(ms, 2), steps_per_s=round(1000 / ms, 1),
                            compile_s=round(comp, 1))), flush=True)


if __name__ == "__main__":
  main()
