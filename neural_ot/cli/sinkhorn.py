"""``neural-ot sinkhorn``: entropic OT between two point clouds, files or built-in measures."""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot import _plotting, data
from neural_ot.cli.common import UserError, load_points, make_out, report, write_json
from neural_ot.sinkhorn import sinkhorn, sinkhorn_divergence


# One sentence per number of `neural-ot sinkhorn`'s summary.
_SINKHORN_MEANINGS = {
    "epsilon": "the entropic regularisation used, in cost units",
    "n_iters": "Sinkhorn iterations run; good: well below max_iters",
    "converged": "whether the marginal error fell below --tol",
    "marginal_error": "L1 gap between the plan's marginals and the weights; good: <= --tol",
    "reg_ot_cost": "entropic cost <P,C> + eps KL(P | a b^T); above W2^2 by the entropy term",
    "primal_cost": "<P,C>, the cost of the blurred plan; >= W2^2, reaches it as eps -> 0",
    "sinkhorn_divergence_W2sq_estimate": "debiased Sinkhorn divergence: the best W2^2 "
                                         "estimate at this epsilon",
    "seconds_incl_compile": "wall-clock seconds of the solve, compilation included",
    "diverged": "whether the solve met a NaN/inf and stopped; good: False",
}


def _points_for_sinkhorn(spec, key, n):
  if spec in data.SAMPLERS and not os.path.isfile(spec):
    return data.SAMPLERS[spec](key, n)
  return jnp.asarray(load_points(spec, min_points=2))


def run(args) -> int:
  """``neural-ot sinkhorn``; returns the exit code."""
  if (args.source_file is None) != (args.target_file is None):
    raise UserError("give both SOURCE and TARGET (files or built-in measures), or neither")
  src = args.source_file or args.source
  tgt = args.target_file or args.target
  k1, k2 = jax.random.split(jax.random.PRNGKey(args.seed))
  x, y = _points_for_sinkhorn(src, k1, args.n), _points_for_sinkhorn(tgt, k2, args.n)
  if x.shape[1] != y.shape[1]:
    raise UserError(f"source and target must have the same dimension: {src} has "
                    f"{x.shape[1]} columns, {tgt} has {y.shape[1]}")
  kw = dict(epsilon=args.epsilon, relative_epsilon=args.relative_epsilon, tol=args.tol,
            max_iters=args.max_iters)
  t0 = time.perf_counter()
  out = sinkhorn(x, y, **kw)
  jax.block_until_ready(out.f)
  elapsed = time.perf_counter() - t0
  div = sinkhorn_divergence(x, y, **kw)
  summary = {
      "source": src, "target": tgt, "n_source": int(x.shape[0]), "n_target": int(y.shape[0]),
      "dimension": int(x.shape[1]),
      "epsilon": float(out.epsilon),
      "epsilon_given": f"{args.epsilon} "
                       f"({'relative to the mean cost' if args.relative_epsilon else 'absolute'})",
      "n_iters": int(out.n_iters), "max_iters": args.max_iters,
      "converged": bool(out.converged), "marginal_error": float(out.marginal_error),
      "reg_ot_cost": float(out.reg_ot_cost), "primal_cost": float(out.primal_cost),
      "sinkhorn_divergence_W2sq_estimate": float(div), "seconds_incl_compile": elapsed,
  }
  if getattr(out, "diverged", None) is not None:
    summary["diverged"] = bool(out.diverged)
  make_out(args.out)
  files = []
  if x.shape[1] == 2:
    png = os.path.join(args.out, "sinkhorn_demo.png")
    small = x.shape[0] * y.shape[0] <= 4_000_000
    _plotting.plot_sinkhorn(np.asarray(x), np.asarray(y), np.asarray(out.barycentric_map()),
                            np.asarray(out.matrix) if small else None, {
                                **summary, "source": os.path.basename(src),
                                "target": os.path.basename(tgt),
                                "n": x.shape[0] if x.shape[0] == y.shape[0]
                                else f"{x.shape[0]}/{y.shape[0]}"}, png)
    files.append((png, "picture"))
  js = os.path.join(args.out, "sinkhorn_demo.json")
  write_json(js, summary)
  files.append((js, "this summary"))
  report(summary, files, _SINKHORN_MEANINGS)
  if bool(getattr(out, "diverged", False)):
    print(f"neural-ot sinkhorn: the solve diverged (a NaN or inf appeared) at epsilon "
          f"{float(out.epsilon):.3g}; try another --epsilon", file=sys.stderr)
    return 1
  if not out.converged:
    print(f"neural-ot sinkhorn: not converged after {int(out.n_iters)} iterations (marginal "
          f"error {float(out.marginal_error):.2g} > --tol {args.tol}); raise --max-iters or "
          f"--epsilon", file=sys.stderr)
    return 1
  return 0


