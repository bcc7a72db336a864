"""``neural-ot fit``: learn the W2 map between two point clouds read from files; and the
summary of a learned map that ``neural-ot demo`` prints too."""

from __future__ import annotations

import os
import sys
import time

import jax.numpy as jnp
import numpy as np

from neural_ot import _plotting, w2
from neural_ot.cli.common import UserError, load_points, make_out, one_line, report, write_json
from neural_ot.sinkhorn import sinkhorn_divergence


def summarise(mp, x, y, seconds, steps):
  """Quality figures of a learned map on held-out samples.

  Returns ``(T(x), T^-1(y), summary, meanings)``; ``meanings`` holds one sentence per number
  saying what it is and what good looks like.
  """
  tx = mp.transport(x)
  iy = mp.inverse(y)
  # One absolute epsilon for every divergence, so that they compare with each other:
  # 0.002 x the mean cost |x - y|^2 between the held-out source and target.
  mean_cost = (jnp.mean(jnp.sum(x ** 2, -1)) + jnp.mean(jnp.sum(y ** 2, -1))
               - 2 * jnp.sum(jnp.mean(x, 0) * jnp.mean(y, 0)))
  eps = 0.002 * float(mean_cost)
  kw = dict(epsilon=eps, tol=1e-3, max_iters=5000)
  h = len(y) // 2
  summary = {
      "w2_squared_dual": mp.w2,
      "w2_squared_moved": float(jnp.mean(jnp.sum((tx - x) ** 2, -1))),
      "divergence_before": float(sinkhorn_divergence(x, y, **kw)),
      "divergence_after": float(sinkhorn_divergence(tx, y, **kw)),
      "divergence_inverse": float(sinkhorn_divergence(iy, x, **kw)),
      "divergence_noise_floor": float(sinkhorn_divergence(y[:h], y[h:2 * h], **kw)),
      "epsilon": eps,
      "train_seconds": seconds,
      "steps": steps,
  }
  meanings = {
      "w2_squared_dual": "W2^2 (cost |x - y|^2) from the learned potentials on held-out "
                         "samples; good: close to w2_squared_moved",
      "w2_squared_moved": "mean |x - T(x)|^2 on held-out x, what the map pays; the optimal "
                          "map pays exactly W2^2",
      "divergence_before": "Sinkhorn divergence between source and target samples: how far "
                           "apart they start",
      "divergence_after": "divergence between T(source) and target; good: far below "
                          "divergence_before, near divergence_noise_floor",
      "divergence_inverse": "divergence between T^-1(target) and source; good: as for after",
      "divergence_noise_floor": "divergence between two halves of the target sample: "
                                "sampling noise alone (at half the sample size, so a perfect "
                                "map scores somewhat below it)",
      "epsilon": "entropic regularisation of the divergences above (0.002 x the mean cost "
                 "between source and target)",
      "train_seconds": "wall-clock training time, compilation included",
      "steps": "optimizer steps taken",
  }
  return tx, iy, summary, meanings


def train_options(args) -> dict:
  opts = dict(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
              amortization=args.amortization, progress=not args.quiet)
  # Unset options are left to fit_w2, which picks them from the data.
  for key, val in (("learning_rate", args.lr), ("finetune_iters", args.finetune_iters),
                   ("potential", args.potential)):
    if val is not None:
      opts[key] = val
  return opts


def run(args) -> int:
  """``neural-ot fit``; returns the exit code."""
  x, y = load_points(args.source), load_points(args.target)
  if x.shape[1] != y.shape[1]:
    raise UserError(f"source and target must have the same dimension: {args.source} has "
                    f"{x.shape[1]} columns, {args.target} has {y.shape[1]}")
  make_out(args.out)
  opts = train_options(args)
  if args.steps is None and args.minutes is None:
    opts["steps"] = 2000
  if args.minutes is not None:
    opts["max_seconds"] = 60.0 * args.minutes
  if opts["batch_size"] is not None:  # the rows fit_w2 trains on (it holds some out)
    opts["batch_size"] = min(opts["batch_size"], w2.training_rows(len(x)),
                             w2.training_rows(len(y)))
  ckpt_dir = os.path.join(args.out, "checkpoints")
  ckpt = os.path.join(ckpt_dir, "checkpoint.msgpack")
  if os.path.isfile(ckpt) and not args.restart:
    print(f"neural-ot fit: resuming from {ckpt} (--restart to start over)", file=sys.stderr)
  t0 = time.perf_counter()
  try:
    mp = w2.fit_w2(x, y, checkpoint_dir=ckpt_dir, resume=not args.restart, **opts)
  except KeyboardInterrupt:
    where = (f"the last checkpoint is {ckpt}; run the same command again to resume, or add "
             f"--restart to start over" if os.path.isfile(ckpt) else "no checkpoint was saved")
    print(f"neural-ot fit: interrupted; {where}", file=sys.stderr)
    return 130
  except w2.TrainingDivergedError as exc:
    raise UserError(f"training diverged ({one_line(exc)}); try a smaller --lr, more points "
                    f"or --restart") from None
  seconds = time.perf_counter() - t0
  n = min(len(x), len(y), 2000)
  steps = int(mp.history[-1]["step"]) if getattr(mp, "history", None) else args.steps
  tx, iy, summary, meanings = summarise(mp, x[:n], y[:n], seconds, steps)
  map_path = os.path.join(args.out, "map.msgpack")
  mp.save(map_path)
  moved = os.path.join(args.out, "transported.npy")
  np.save(moved, np.asarray(mp.transport(x)))
  files = [(map_path, "the learned map; neural_ot.load_map"),
           (moved, f"T(source), {len(x)} x {x.shape[1]}")]
  if x.shape[1] == 2:
    png = os.path.join(args.out, "map.png")
    _plotting.plot_map(x[:n], y[:n], np.asarray(tx), np.asarray(iy), "learned W2 map", png)
    files.append((png, "picture"))
  js = os.path.join(args.out, "summary.json")
  write_json(js, summary)
  files += [(js, "this summary"), (ckpt, "checkpoint; rerun to continue, --restart to start over")]
  report(summary, files, meanings)
  return 0


