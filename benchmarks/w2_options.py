"""fit_w2 options side by side at equal wall-clock (or equal steps) on a W2 benchmark pair.

Each configuration is ``name:key=value;key=value`` (values are Python literals) and runs
``run_method(pair, "regression", seconds=S, **options)``: ``fit_w2`` with the library's defaults
plus those options, scored on 4096 fresh pairs. One JSON line per configuration.

Run: ``python benchmarks/w2_options.py --dim 8 --seconds 120 "default:" "mlp:potential='mlp'"``
(``--steps N`` compares at equal steps instead, which machine load does not change;
``--pair rand1`` uses ``w2bench.random_pair(dim, seed=1)`` instead of the benchmark files).
"""

import argparse
import ast
import json
import time

from neural_ot.w2bench import load_pair, random_pair
from neural_ot.w2bench.runner import run_method


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dim", type=int, default=8)
  p.add_argument("--seconds", type=float, default=120)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--pair", default="bench", help="'bench' or 'randK' (random_pair seed K)")
  p.add_argument("configs", nargs="+", help="name:key=value;key=value")
  args = p.parse_args()
  if args.pair.startswith("rand"):
    pair = random_pair(args.dim, seed=int(args.pair[4:] or 0))
  else:
    pair = load_pair(args.dim)
  for cfg in args.configs:
    name, _, rest = cfg.partition(":")
    opts = {k: ast.literal_eval(v) for k, v in (kv.split("=", 1) for kv in rest.split(";") if kv)}
    t0 = time.time()
    r = run_method(pair, "regression", seconds=None if args.steps else args.seconds,
                   steps=args.steps, eval_every=0, **opts)
    f = r["final"]
    print(json.dumps(dict(dim=args.dim, pair=args.pair, name=name,
                          opts={k: repr(v) for k, v in opts.items()}, steps=r["steps"],
                          train_s=round(r["train_s"], 1), step_ms=round(r["step_ms"], 2),
                          fwd=round(f["uvp_fwd"], 4), inv=round(f["uvp_inv"], 4),
                          conj_iters=r.get("conj_iters"), wall=round(time.time() - t0, 1))),
          flush=True)


if __name__ == "__main__":
  main()
