"""What a user's wall-clock budget buys: ``fit_w2`` with its defaults under ``max_seconds``.

For each D, trains on the W2 benchmark pair (Mix3toMix10, or ``--pair random``) with nothing
but ``max_seconds=--minutes * 60`` (compile included), evaluates L2-UVP and cos (forward and
inverse, 4096 fresh pairs) every ``--minutes / --evals`` of training, and prints one table.
Issue 12's targets: forward L2-UVP <= 0.5 % at D = 8 and <= 3 % at D = 64 within 15 minutes.

Run: ``python benchmarks/w2_budget.py --dims 8 64 --minutes 15``; writes
``benchmarks/results/w2_budget_D{D}_{M}min.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import jax

from neural_ot.w2bench import load_pair, random_pair
from neural_ot.w2bench.runner import run_method

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dims", type=int, nargs="+", default=[8, 64])
  p.add_argument("--minutes", type=float, default=15.0)
  p.add_argument("--evals", type=int, default=6)
  p.add_argument("--pair", choices=("bench", "random"), default="bench")
  p.add_argument("--data-dir", default=None)
  args = p.parse_args()
  os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
  seconds = 60.0 * args.minutes
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}; "
        f"budget {seconds:.0f} s per D (compile included)")
  print("| D | steps | train s | fwd L2-UVP % | inv L2-UVP % | fwd cos | curve (s: fwd %) |")
  print("|---|---|---|---|---|---|---|")
  for dim in args.dims:
    pair = random_pair(dim, seed=0) if args.pair == "random" else load_pair(dim, args.data_dir)
    res = run_method(pair, "regression", seconds=seconds, eval_every=0,
                     eval_seconds=seconds / args.evals)
    res.pop("map", None)
    fin = res["final"]
    curve = ", ".join(f"{c['seconds']:.0f}: {c['uvp_fwd']:.3g}" for c in res["curve"])
    print(f"| {dim} | {res['steps']} | {res['train_s']:.0f} | {fin['uvp_fwd']:.3g} | "
          f"{fin['uvp_inv']:.3g} | {fin['cos_fwd']:.3f} | {curve} |", flush=True)
    out = os.path.join(HERE, "results", f"w2_budget_D{dim}_{args.minutes:g}min.json")
    with open(out, "w") as fh:
      json.dump({"dim": dim, "pair": args.pair, "seconds": seconds, **res}, fh, indent=1,
                default=float)


if __name__ == "__main__":
  main()
