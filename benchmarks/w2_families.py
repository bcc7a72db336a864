"""fit_w2's defaults on the known-map families of ``neural_ot.w2bench.families``.

For each family and dimension: ``fit_w2(source_sampler, target_sampler, max_seconds=S)`` (or
``steps=N``) with nothing else, scored by forward and inverse L2-UVP on 4096 fresh pairs,
beside the moment-matched Gaussian map's figure; the map's own diagnostics (held-out dual of
the start and the end, inactive units, the automatic choice) are printed too. One JSON line per
run, appended to ``--out``.

Run: ``python benchmarks/w2_families.py --half heldout --dims 8 16 --seconds 300``
(``--half probe``: the families added after the defaults were fixed; ``--families NAME ...``
picks families; ``--steps N`` runs at equal steps; extra fit_w2
options as ``--opt key=value``).
"""

import argparse
import ast
import json
import time

from neural_ot.w2bench import baselines, evaluate
from neural_ot.w2bench.families import family_names, family_pair
from neural_ot.w2bench.runner import run_method


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--half", choices=("tune", "heldout", "probe", "all"), default="heldout")
  p.add_argument("--families", nargs="*", default=None)
  p.add_argument("--dims", nargs="+", type=int, default=[8])
  p.add_argument("--seconds", type=float, default=None)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--opt", action="append", default=[], help="fit_w2 option key=value")
  p.add_argument("--out", default=None, help="append JSON lines to this file")
  p.add_argument("--save", default=None, help="save each map to SAVE/<family>_<dim> (W2Map.save)")
  args = p.parse_args()
  names = args.families or family_names(None if args.half == "all" else args.half)
  opts = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in args.opt)}
  for dim in args.dims:
    for name in names:
      pair = family_pair(name, dim, seed=args.seed)
      gauss = evaluate(pair, *baselines(pair)["linear"])
      t0 = time.time()
      r = run_method(pair, "regression", seconds=args.seconds, steps=args.steps, eval_every=0,
                     seed=args.seed, **opts)
      mp, f = r["map"], r["final"]
      # the inverse with the fixed 30-step solve that sessions before 41 reported
      inv30 = evaluate(pair, None, lambda y: mp.inverse(y, finetune_iters=30, tol=1e-4),
                       seed=args.seed + 1)["uvp_inv"]
      d = mp.diagnostics
      row = dict(family=name, dim=dim, seconds=args.seconds, steps=r["steps"],
                 opts={k: repr(v) for k, v in opts.items()}, potential=mp.trainer.potential,
                 fwd=round(f["uvp_fwd"], 4), inv=round(f["uvp_inv"], 4),
                 inv_30=round(inv30, 4),
                 gauss_fwd=round(gauss["uvp_fwd"], 4), gauss_inv=round(gauss["uvp_inv"], 4),
                 step_ms=round(r["step_ms"], 2), wall=round(time.time() - t0, 1),
                 stalled=d.stalled, returned_start=d.returned_start, dual_start=d.dual_start,
                 dual_end=d.dual_end, dual_gain_se=d.dual_gain_se,
                 inactive=round(d.inactive_share, 3),
                 heldout_residual=round(d.conj_residual_median / dim ** 0.5, 5),
                 push_start=round(d.push_start, 5), push_end=round(d.push_end, 5),
                 push_se=round(d.push_se, 5),
                 race_push=None if d.choice is None else {
                     k: round(v.get("push", float("nan")), 5)
                     for k, v in d.choice["candidates"].items()},
                 race_push_start=None if d.choice is None else {
                     k: round(v.get("push_start", float("nan")), 5)
                     for k, v in d.choice["candidates"].items()},
                 race_push_worse=None if d.choice is None else {
                     k: v.get("push_worse") for k, v in d.choice["candidates"].items()},
                 choice=None if d.choice is None else {
                     k: round(v["dual"], 5) for k, v in d.choice["candidates"].items()},
                 conj_residual=None if d.choice is None else {
                     k: round(v.get("conj_residual", float("nan")), 5)
                     for k, v in d.choice["candidates"].items()},
                 finetune_iters=mp.trainer.finetune_iters)
      if args.save:
        mp.save(f"{args.save}/{name}_{dim}")
      line = json.dumps(row)
      print(line, flush=True)
      if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
          fh.write(line + "\n")


if __name__ == "__main__":
  main()
