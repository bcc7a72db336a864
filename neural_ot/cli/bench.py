"""``neural-ot bench w2`` (train and score on the Korotin et al. W2 benchmark) and ``neural-ot
bench convert`` (make its data folder from the original ``.pt`` files)."""

from __future__ import annotations

import json
import os
import sys

from neural_ot import w2bench
from neural_ot.cli.common import UserError, make_out, one_line, report, write_json
from neural_ot.w2bench import convert
from neural_ot.w2bench.runner import run_method


def run(args) -> int:
  """``neural-ot bench w2`` or ``neural-ot bench convert``; returns the exit code."""
  return {"w2": _w2, "convert": _convert}[args.suite](args)


def _w2(args) -> int:
  try:
    pair = w2bench.load_pair(args.dim, args.data_dir)
  except FileNotFoundError as exc:
    hint = "" if "bench convert" in str(exc) else (
        " Make the folder with `neural-ot bench convert SRC DST` (README: Getting the benchmark "
        "data).")
    raise UserError(one_line(str(exc) + hint)) from None
  make_out(args.out)
  rows = {}
  for name, (fwd, inv) in w2bench.baselines(pair).items():
    rows[f"baseline: {name}"] = w2bench.evaluate(pair, fwd, inv)
  res = run_method(pair, args.method, steps=args.steps, seconds=args.seconds,
                   eval_every=args.eval_every, seed=args.seed, progress=not args.quiet)
  files = []
  if "map" in res:
    map_path = os.path.join(args.out, "map.msgpack")
    res.pop("map").save(map_path)
    files.append((map_path, "the learned map; neural_ot.load_map"))
  rows[res["method"]] = res["final"]
  print(f"{'':<20} {'UVP fwd %':>10} {'UVP inv %':>10} {'cos fwd':>8} {'cos inv':>8}")
  for name, f in rows.items():
    print(f"{name:<20} {f['uvp_fwd']:10.3f} {f['uvp_inv']:10.3f} {f['cos_fwd']:8.4f} "
          f"{f['cos_inv']:8.4f}")
  print(f"steps {res['steps']}, training {res['train_s']:.1f} s, {res['step_ms']:.2f} ms/step")
  js = os.path.join(args.out, "bench_w2.json")
  write_json(js, {"dim": args.dim, "baselines_and_final": rows,
                  **{k: v for k, v in res.items() if k != "final"}})
  files.append((js, "scores, learning curve and options"))
  report({}, files)
  return 0


def _convert(args) -> int:
  say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
  written = convert.convert_folder(args.src, args.dst, n_mc=args.n_mc, seed=args.seed,
                                   progress=say)
  with open(written[-1]) as fh:
    complete = json.load(fh)["complete_dimensions"]
  report({"complete dimensions": complete or "none (each D needs {D}_v1.pt and {D}_v2.pt)"},
         [(p, "manifest" if p.endswith(".json") else "converted") for p in written])
  if complete:
    print(f"use it with: neural-ot bench w2 --dim {complete[0]} --data-dir {args.dst}")
  return 0


