"""The ``neural-ot`` command line: ``demo`` (neural W2 map), ``fit``, ``sinkhorn``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _summarise(mp, x, y, seconds, steps):
  """Quality figures of a learned 2-D+ map on held-out samples."""
  import jax.numpy as jnp

  import neural_ot

  tx = mp.transport(x)
  iy = mp.inverse(y)
  kw = dict(epsilon=0.002, relative_epsilon=True, tol=1e-3, max_iters=5000)
  return tx, iy, {
      "w2_dual_estimate": mp.w2,
      "w2_primal_E|x-T(x)|^2": float(jnp.mean(jnp.sum((tx - x) ** 2, -1))),
      "S_eps(x, y) before": float(neural_ot.sinkhorn_divergence(x, y, **kw)),
      "S_eps(T(x), y) after": float(neural_ot.sinkhorn_divergence(tx, y, **kw)),
      "S_eps(T^-1(y), x) inverse": float(neural_ot.sinkhorn_divergence(iy, x, **kw)),
      "train_seconds_incl_compile": seconds, "steps": steps,
  }


def _train_options(args) -> dict:
  return dict(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
              learning_rate=args.lr, potential=args.potential, amortization=args.amortization,
              finetune_iters=args.finetune_iters, progress=not args.quiet)


def _report(summary, out, name):
  with open(os.path.join(out, name + ".json"), "w") as fh:
    json.dump(summary, fh, indent=2)
  for k, v in summary.items():
    print(f"{k:>30}: {v}")


def _demo(args) -> int:
  import jax
  import numpy as np

  import neural_ot
  from neural_ot import _plotting, data

  os.makedirs(args.out, exist_ok=True)
  src, tgt = data.SAMPLERS[args.source], data.SAMPLERS[args.target]
  t0 = time.perf_counter()
  mp = neural_ot.fit_w2(src, tgt, **_train_options(args))
  seconds = time.perf_counter() - t0
  k1, k2 = jax.random.split(jax.random.PRNGKey(args.seed + 1000))
  x, y = src(k1, args.n), tgt(k2, args.n)  # held out: not the training stream
  tx, iy, summary = _summarise(mp, x, y, seconds, args.steps)
  summary = {"source": args.source, "target": args.target, **summary}
  png = os.path.join(args.out, "neural_map_demo.png")
  _plotting.plot_map(np.asarray(x), np.asarray(y), np.asarray(tx), np.asarray(iy),
                     f"{args.source} -> {args.target}: learned W2 map, W2^2 ~ {mp.w2:.3f}", png)
  mp.save(os.path.join(args.out, "map.msgpack"))
  _report(summary, args.out, "neural_map_demo")
  print(f"{'picture':>30}: {png}")
  print(f"{'map':>30}: {os.path.join(args.out, 'map.msgpack')} (neural_ot.load_map)")
  return 0


def _load_points(path: str):
  import numpy as np

  if not os.path.isfile(path):
    raise SystemExit(f"neural-ot fit: no such file: {path!r}")
  if path.endswith(".npy"):
    arr = np.load(path, allow_pickle=False)
  elif path.endswith((".csv", ".txt")):
    try:
      arr = np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError:  # a header line
      arr = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1)
  else:
    raise SystemExit(f"neural-ot fit: {path!r}: expected a .npy or .csv file")
  return arr.astype("float32")


def _fit(args) -> int:
  import numpy as np

  import neural_ot
  from neural_ot import _plotting

  x, y = _load_points(args.source), _load_points(args.target)
  os.makedirs(args.out, exist_ok=True)
  opts = _train_options(args)
  opts["batch_size"] = min(opts["batch_size"], len(x), len(y))
  t0 = time.perf_counter()
  try:
    mp = neural_ot.fit_w2(x, y, checkpoint_dir=os.path.join(args.out, "checkpoints"), **opts)
  except (ValueError, TypeError) as exc:
    print(f"neural-ot fit: {exc}", file=sys.stderr)
    return 2
  seconds = time.perf_counter() - t0
  n = min(len(x), len(y), 2000)
  tx, iy, summary = _summarise(mp, x[:n], y[:n], seconds, args.steps)
  mp.save(os.path.join(args.out, "map.msgpack"))
  np.save(os.path.join(args.out, "transported.npy"), np.asarray(mp.transport(x)))
  if x.shape[1] == 2:
    _plotting.plot_map(x[:n], y[:n], np.asarray(tx), np.asarray(iy), "learned W2 map",
                       os.path.join(args.out, "map.png"))
  _report(summary, args.out, "summary")
  print(f"{'map':>30}: {os.path.join(args.out, 'map.msgpack')}")
  return 0


def _sinkhorn(args) -> int:
  import jax
  import numpy as np

  import neural_ot
  from neural_ot import _plotting, data

  if args.n < 2:
    print(f"neural-ot sinkhorn: --n must be >= 2, got {args.n}", file=sys.stderr)
    return 2
  k1, k2 = jax.random.split(jax.random.PRNGKey(args.seed))
  x = data.SAMPLERS[args.source](k1, args.n)
  y = data.SAMPLERS[args.target](k2, args.n)
  t0 = time.perf_counter()
  out = neural_ot.sinkhorn(x, y, epsilon=args.epsilon, relative_epsilon=True, tol=args.tol)
  jax.block_until_ready(out.f)
  elapsed = time.perf_counter() - t0
  div = neural_ot.sinkhorn_divergence(x, y, epsilon=args.epsilon, relative_epsilon=True,
                                      tol=args.tol)
  summary = {
      "source": args.source, "target": args.target, "n": args.n,
      "epsilon": float(out.epsilon), "n_iters": int(out.n_iters),
      "converged": bool(out.converged), "marginal_error": float(out.marginal_error),
      "reg_ot_cost": float(out.reg_ot_cost), "primal_cost": float(out.primal_cost),
      "sinkhorn_divergence_W2sq_estimate": float(div), "seconds_incl_compile": elapsed,
  }
  os.makedirs(args.out, exist_ok=True)
  png = os.path.join(args.out, "sinkhorn_demo.png")
  _plotting.plot_sinkhorn(np.asarray(x), np.asarray(y), np.asarray(out.barycentric_map()),
                          np.asarray(out.matrix) if args.n <= 2000 else None, summary, png)
  _report(summary, args.out, "sinkhorn_demo")
  print(f"{'picture':>30}: {png}")
  return 0 if out.converged else 1


def _bench_w2(args) -> int:
  from neural_ot import w2bench
  from neural_ot.w2bench.runner import run_method

  try:
    pair = w2bench.load_pair(args.dim, args.data_dir)
  except (FileNotFoundError, ValueError) as exc:
    print(f"neural-ot bench w2: {exc}", file=sys.stderr)
    return 2
  os.makedirs(args.out, exist_ok=True)
  rows = {}
  for name, (fwd, inv) in w2bench.baselines(pair).items():
    rows[f"baseline: {name}"] = w2bench.evaluate(pair, fwd, inv)
  res = run_method(pair, args.method, steps=args.steps, seconds=args.seconds,
                   eval_every=args.eval_every, seed=args.seed, progress=not args.quiet)
  if "map" in res:
    res.pop("map").save(os.path.join(args.out, "map.msgpack"))
  rows[res["method"]] = res["final"]
  print(f"{'':<20} {'UVP fwd %':>10} {'UVP inv %':>10} {'cos fwd':>8} {'cos inv':>8}")
  for name, f in rows.items():
    print(f"{name:<20} {f['uvp_fwd']:10.3f} {f['uvp_inv']:10.3f} {f['cos_fwd']:8.4f} "
          f"{f['cos_inv']:8.4f}")
  print(f"steps {res['steps']}, training {res['train_s']:.1f} s, {res['step_ms']:.2f} ms/step")
  with open(os.path.join(args.out, "bench_w2.json"), "w") as fh:
    json.dump({"dim": args.dim, "baselines_and_final": rows, **{
        k: v for k, v in res.items() if k != "final"}}, fh, indent=1, default=float)
  return 0


def _add_training(p, steps):
  p.add_argument("--steps", type=int, default=steps)
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
  p.add_argument("--potential", default="icnn", choices=["icnn", "mlp"])
  p.add_argument("--amortization", default="regression", choices=["regression", "objective",
                                                                   "cycle"])
  p.add_argument("--finetune-iters", type=int, default=10)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quiet", action="store_true", help="no progress line")


def main(argv=None) -> int:
  from neural_ot import data

  parser = argparse.ArgumentParser(prog="neural-ot", description="Neural and entropic OT in JAX.")
  sub = parser.add_subparsers(dest="command", required=True)
  demo = sub.add_parser("demo", help="learn a 2-D W2 map between built-in measures, write a picture")
  demo.add_argument("--source", default="8gaussians", choices=sorted(data.SAMPLERS))
  demo.add_argument("--target", default="normal", choices=sorted(data.SAMPLERS))
  demo.add_argument("--n", type=int, default=2000, help="held-out samples for the picture")
  demo.add_argument("--out", default="out")
  _add_training(demo, steps=4000)
  fit = sub.add_parser("fit", help="learn a W2 map between two point clouds (.npy or .csv)")
  fit.add_argument("source")
  fit.add_argument("target")
  fit.add_argument("--out", required=True)
  _add_training(fit, steps=2000)
  sk = sub.add_parser("sinkhorn", help="solve a 2-D entropic OT example and write a picture")
  sk.add_argument("--source", default="8gaussians", choices=sorted(data.SAMPLERS))
  sk.add_argument("--target", default="moons", choices=sorted(data.SAMPLERS))
  sk.add_argument("--n", type=int, default=1000)
  sk.add_argument("--epsilon", type=float, default=0.01, help="relative to the mean cost")
  sk.add_argument("--tol", type=float, default=1e-3)
  sk.add_argument("--seed", type=int, default=0)
  sk.add_argument("--out", default="out")
  bench = sub.add_parser("bench", help="benchmarks; `bench w2`: the Korotin et al. W2 benchmark")
  bsub = bench.add_subparsers(dest="suite", required=True)
  w2 = bsub.add_parser("w2", help="train on the Mix3toMix10 pair of dimension D and score it")
  from neural_ot.w2bench.runner import METHODS
  w2.add_argument("--dim", type=int, required=True)
  w2.add_argument("--data-dir", default=None, help="converted benchmark folder (default: "
                  "$NEURAL_OT_W2BENCH or ../shared/data/w2bench)")
  w2.add_argument("--steps", type=int, default=2000)
  w2.add_argument("--seconds", type=float, default=None, help="time budget for ott-jax methods")
  w2.add_argument("--method", default="regression", choices=list(METHODS))
  w2.add_argument("--eval-every", type=int, default=500)
  w2.add_argument("--seed", type=int, default=0)
  w2.add_argument("--quiet", action="store_true")
  w2.add_argument("--out", default="out/bench_w2")
  args = parser.parse_args(argv)
  if args.command == "bench":
    return _bench_w2(args)
  return {"demo": _demo, "fit": _fit, "sinkhorn": _sinkhorn}[args.command](args)


if __name__ == "__main__":
  sys.exit(main())
