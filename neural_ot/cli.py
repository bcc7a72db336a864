"""The ``neural-ot`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _demo(args) -> int:
  import jax
  import numpy as np

  import neural_ot
  from neural_ot import data

  if args.n < 2:
    print(f"neural-ot demo: --n must be >= 2, got {args.n}", file=sys.stderr)
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
  _plot(np.asarray(x), np.asarray(y), np.asarray(out.barycentric_map()),
        np.asarray(out.matrix) if args.n <= 2000 else None, summary, png)
  with open(os.path.join(args.out, "sinkhorn_demo.json"), "w") as fh:
    json.dump(summary, fh, indent=2)
  for k, v in summary.items():
    print(f"{k:>34}: {v}")
  print(f"{'picture':>34}: {png}")
  return 0 if out.converged else 1


def _plot(x, y, tx, plan, summary, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  fig, axes = plt.subplots(1, 2, figsize=(11, 5))
  ax = axes[0]
  ax.scatter(x[:, 0], x[:, 1], s=6, c="tab:blue", label="source x")
  ax.scatter(y[:, 0], y[:, 1], s=6, c="tab:orange", label="target y")
  step = max(1, len(x) // 150)
  for i in range(0, len(x), step):
    ax.annotate("", tx[i], x[i], arrowprops=dict(arrowstyle="->", color="0.4", lw=0.6))
  ax.set_title("Entropic OT: barycentric map x -> E[y | x]")
  ax.legend(loc="upper right")
  ax.set_aspect("equal")
  ax = axes[1]
  if plan is not None:
    order_x = np.argsort(np.arctan2(x[:, 1], x[:, 0]))
    order_y = np.argsort(np.arctan2(y[:, 1], y[:, 0]))
    img = np.sqrt(plan[order_x][:, order_y] * len(x))
    ax.imshow(img, aspect="auto", cmap="magma", vmax=np.quantile(img, 0.999))
    ax.set_title("sqrt(n P): plan, rows/cols sorted by angle")
    ax.set_xlabel("target index")
    ax.set_ylabel("source index")
  else:
    ax.axis("off")
  fig.suptitle(f"{summary['source']} -> {summary['target']}, n={summary['n']}, "
               f"{summary['n_iters']} iterations, S_eps={summary['sinkhorn_divergence_W2sq_estimate']:.3f}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  from neural_ot import data

  parser = argparse.ArgumentParser(prog="neural-ot", description="Neural and entropic OT in JAX.")
  sub = parser.add_subparsers(dest="command", required=True)
  demo = sub.add_parser("demo", help="solve a 2-D Sinkhorn example and write a picture")
  demo.add_argument("--source", default="8gaussians", choices=sorted(data.SAMPLERS))
  demo.add_argument("--target", default="moons", choices=sorted(data.SAMPLERS))
  demo.add_argument("--n", type=int, default=1000)
  demo.add_argument("--epsilon", type=float, default=0.01, help="relative to the mean cost")
  demo.add_argument("--tol", type=float, default=1e-3)
  demo.add_argument("--seed", type=int, default=0)
  demo.add_argument("--out", default="out")
  args = parser.parse_args(argv)
  if args.command == "demo":
    return _demo(args)
  return 2


if __name__ == "__main__":
  sys.exit(main())
