"""Sinkhorn side by side: neural_ot vs ott-jax vs POT (log-domain), one run.

For each n = m, d and epsilon (relative to the mean cost; the same absolute
epsilon is given to every solver) it reports iterations, median solve time
after warm-up (compile excluded and reported apart), final L1 marginal error
and the relative reg_ot_cost difference to ott-jax, plus the fraction of this
machine's measured exp-sum throughput one iteration reaches. A separate
subprocess solves n = m = --online-n in online (tiled) mode and reports its
peak memory and time per iteration.

Usage: python benchmarks/sinkhorn.py [--sizes 1000 4000 16000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def _data(n, d, seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  x = jax.random.normal(k1, (n, d))
  y = 0.5 * jax.random.normal(k2, (n, d)) + 1.0
  return x, y


def _mean_cost(x, y):
  return float(jnp.mean(jnp.sum(x**2, 1)) + jnp.mean(jnp.sum(y**2, 1)) - 2 * x.mean(0) @ y.mean(0))


def _time(fn, args, repeats):
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))  # warm-up
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    ts.append(time.perf_counter() - t0)
  return out, float(np.median(ts)), compile_s


def _exp_throughput(n):
  """Entries/s of a fused exp-sum row reduction over a stored (n, n) matrix."""
  z = -jax.random.uniform(jax.random.PRNGKey(0), (n, n)) * 10
  f = jax.jit(lambda z: jnp.sum(jnp.exp(z), axis=1))
  jax.block_until_ready(f(z))
  ts = []
  for _ in range(5):
    t0 = time.perf_counter()
    jax.block_until_ready(f(z))
    ts.append(time.perf_counter() - t0)
  return n * n / float(np.median(ts))


def run_ours(x, y, eps, tol, online=None):
  import neural_ot

  def fn(x, y):
    o = neural_ot.sinkhorn(x, y, epsilon=eps, tol=tol, max_iters=20000, online=online)
    return o.reg_ot_cost, o.n_iters, o.marginal_error
  return fn


def run_ott(eps, tol):
  from ott.geometry import pointcloud
  from ott.problems.linear import linear_problem
  from ott.solvers.linear import sinkhorn

  def fn(x, y):
    geom = pointcloud.PointCloud(x, y, epsilon=eps)
    o = sinkhorn.Sinkhorn(threshold=tol, max_iterations=20000)(linear_problem.LinearProblem(geom))
    return o.reg_ot_cost, o.n_iters, o.errors[jnp.maximum(o.n_iters // 10 - 1, 0)]
  return fn


def run_pot(x, y, eps, tol):
  import ot
  xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n = len(xn)
  a = np.full(n, 1.0 / n)
  t0 = time.perf_counter()
  C = ot.dist(xn, yn)
  P, log = ot.sinkhorn(a, a, C, eps, method="sinkhorn_log", stopThr=tol, numItermax=20000,
                       log=True)
  t = time.perf_counter() - t0
  err = np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - a).sum()
  return dict(iters=int(log["niter"]), time_s=t, marginal_error=float(err),
              primal_cost=float(np.sum(P * C)))


def online_child(n, d, eps_rel, tol):
  """Runs in a subprocess so that ru_maxrss is this solve's peak."""
  import neural_ot
  x, y = _data(n, d, seed=1)
  eps = eps_rel * _mean_cost(x, y)
  fn = run_ours(x, y, eps, tol, online=True)
  (cost, iters, err), t, c = _time(fn, (x, y), repeats=1)
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
  print(json.dumps(dict(n=n, d=d, eps_rel=eps_rel, iters=int(iters), time_s=t, compile_s=c,
                        per_iter_s=t / max(int(iters), 1), marginal_error=float(err),
                        reg_ot_cost=float(cost), peak_rss_gb=rss,
                        dense_cost_matrix_gb=4 * n * n / 1e9)))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
  p.add_argument("--dims", type=int, nargs="+", default=[2, 64])
  p.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.01])
  p.add_argument("--tol", type=float, default=1e-3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--pot-max-n", type=int, default=4000)
  p.add_argument("--online-n", type=int, default=50000)
  p.add_argument("--json", default="benchmarks/results/sinkhorn.json")
  p.add_argument("--_online-child", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args._online_child:
    online_child(args._online_child, 2, 0.05, args.tol)
    return

  rows = []
  thr = _exp_throughput(4000)
  print(f"machine exp-sum throughput: {thr / 1e9:.2f} G entries/s "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__})")
  hdr = (f"{'n':>6} {'d':>3} {'eps':>5} | {'ours it':>7} {'t(s)':>7} {'comp':>5} {'err':>8} | "
         f"{'ott it':>6} {'t(s)':>7} {'comp':>5} {'err':>8} | {'ratio':>5} {'dcost':>8} {'exp%':>5} | "
         f"{'POT it':>6} {'t(s)':>7} {'err':>8}")
  print(hdr)
  print("-" * len(hdr))
  for n in args.sizes:
    for d in args.dims:
      x, y = _data(n, d)
      mc = _mean_cost(x, y)
      for er in args.eps:
        eps = er * mc
        reps = args.repeats if n < 16000 else 1
        (c1, i1, e1), t1, k1 = _time(run_ours(x, y, eps, args.tol), (x, y), reps)
        (c2, i2, e2), t2, k2 = _time(run_ott(eps, args.tol), (x, y), reps)
        frac = 2 * n * n * int(i1) / t1 / thr
        row = dict(n=n, d=d, eps_rel=er, eps=eps,
                   ours=dict(iters=int(i1), time_s=t1, compile_s=k1, marginal_error=float(e1),
                             reg_ot_cost=float(c1)),
                   ott=dict(iters=int(i2), time_s=t2, compile_s=k2, marginal_error=float(e2),
                            reg_ot_cost=float(c2)),
                   time_ratio=t1 / t2, cost_rel_diff=abs(float(c1) - float(c2)) / abs(float(c2)),
                   exp_throughput_fraction=frac)
        pot_s = f"{'-':>6} {'-':>7} {'-':>8}"
        if n <= args.pot_max_n:
          row["pot"] = run_pot(x, y, eps, args.tol)
          pot_s = (f"{row['pot']['iters']:>6} {row['pot']['time_s']:>7.3f} "
                   f"{row['pot']['marginal_error']:>8.1e}")
        rows.append(row)
        print(f"{n:>6} {d:>3} {er:>5} | {int(i1):>7} {t1:>7.3f} {k1:>5.2f} {float(e1):>8.1e} | "
              f"{int(i2):>6} {t2:>7.3f} {k2:>5.2f} {float(e2):>8.1e} | {t1 / t2:>5.2f} "
              f"{row['cost_rel_diff']:>8.1e} {100 * frac:>4.0f}% | {pot_s}", flush=True)
  result = dict(exp_throughput=thr, rows=rows, jax=jax.__version__)
  if args.online_n:
    out = subprocess.run([sys.executable, __file__, "--_online-child", str(args.online_n),
                          "--tol", str(args.tol)], capture_output=True, text=True, check=True)
    onl = json.loads(out.stdout.strip().splitlines()[-1])
    onl["exp_throughput_fraction"] = 2 * onl["n"] ** 2 / onl["per_iter_s"] / thr
    result["online"] = onl
    print(f"\nonline n=m={onl['n']} d=2 eps=0.05*mean: {onl['iters']} iterations, "
          f"{onl['per_iter_s']:.2f} s/iteration, {onl['time_s']:.1f} s total (+{onl['compile_s']:.1f} s "
          f"compile), error {onl['marginal_error']:.1e}, peak RSS {onl['peak_rss_gb']:.2f} GB "
          f"(dense C would be {onl['dense_cost_matrix_gb']:.1f} GB), "
          f"{100 * onl['exp_throughput_fraction']:.0f}% of exp-sum throughput")
  os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
  with open(args.json, "w") as fh:
    json.dump(result, fh, indent=2)
  print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
