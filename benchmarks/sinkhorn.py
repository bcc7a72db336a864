"""Sinkhorn side by side: neural_ot vs ott-jax vs POT (log-domain), one run.

For each n = m, d and epsilon (relative to the mean cost; the same absolute
epsilon is given to every solver) it reports iterations, median solve time
after warm-up (compile excluded and reported apart), final L1 marginal error
and the relative reg_ot_cost difference to ott-jax, plus the fraction of this
machine's measured exp-sum throughput one iteration reaches. A separate
subprocess solves n = m = --online-n in online (tiled) mode and reports its
peak memory and time per iteration.

Usage: python benchmarks/sinkhorn.py [--sizes 1000 4000 16000] [--json out.json]

``--online-scan`` instead times online Sinkhorn iterations (and the stable
log-sum-exp half-step) at n = 4k..100k, d = 2 and 64, with the streamed
``(rows, cols)`` blocks against the previous scheme (rows against the whole
reduced axis) in the same process, then the whole n = 50k solve to 1e-3 in a
subprocess (iterations, seconds, peak RSS), and appends a section to
benchmarks/RESULTS.md.
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


# --- --online-scan: per-entry speed of online (tiled) Sinkhorn as n grows ------------------

def _scan_case(n, d, legacy, tile_size):
  """Compiled (step, stable half-step) functions and their arguments for one configuration."""
  import neural_ot
  from neural_ot.geometry import pointcloud as pc
  from neural_ot.sinkhorn.solver import Sinkhorn

  # "legacy": the previous scheme, the blocked one with whole-axis blocks (tile_size=(256, None))
  x, y = _data(n, d)
  a = jnp.full((n,), 1.0 / n)
  eps = jnp.asarray(0.05 * _mean_cost(x, y))
  solver = Sinkhorn(tol=1e-30, max_iters=10, online=True,
                    tile_size=(256, None) if legacy else tile_size)
  geom = pc.PointCloud.create(x, y, online=True, tile_size=solver.tile_size)
  f0 = jnp.zeros((n,))
  half = jax.jit(lambda geom, a, f, eps: solver.c_transform(geom, a, f, eps))
  half_c = half.lower(geom, a, f0, eps).compile()
  state = jax.jit(lambda geom, a, eps: solver.init(geom, a, a, eps))(geom, a, eps)
  step = jax.jit(lambda geom, a, eps, st: solver.step(geom, a, a, eps, st))
  step_c = step.lower(geom, a, eps, state).compile()
  return dict(step=(step_c, (geom, a, eps, state)), half=(half_c, (geom, a, f0, eps)))


def _median_time(compiled, args, reps):
  """Median wall and process-CPU seconds (all threads) of ``reps`` calls."""
  ts, cs = [], []
  for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(*args))
    ts.append(time.perf_counter() - t0)
    cs.append(time.process_time() - c0)
  return float(np.median(ts)), float(np.median(cs))


_REF = {}


def online_scan_point(n, d, legacy_max_n, tile_size, budget_s, ref_n=4000):
  """Before (whole-axis tiles) and after (blocks), timed alternately in this process, with
  the after-step at ``ref_n`` timed in the same rounds (the machine is shared: its load
  changes between configurations, so throughput ratios vs n use this same-round reference)."""
  impls = ["after"] + (["before"] if n <= legacy_max_n else [])
  cases = {}
  for impl in impls:
    t0 = time.perf_counter()
    cases[impl] = _scan_case(n, d, impl == "before", tile_size)
    cases[impl]["compile_s"] = time.perf_counter() - t0
  if (ref_n, d) not in _REF:
    _REF[ref_n, d] = _scan_case(ref_n, d, False, tile_size)["step"]
  ref_fn, ref_args = _REF[ref_n, d]
  _median_time(ref_fn, ref_args, 2)
  # warm-up (one call of each), which also sizes the number of repeats
  first = {}
  for impl in impls:
    for what in ("step", "half"):
      fn, args = cases[impl][what]
      first[impl, what] = _median_time(fn, args, 1)[0]
  per_round = sum(first.values())
  reps = int(max(1, min(5, budget_s // max(per_round, 1e-9))))
  ts = {key: [] for key in first}
  ref = []
  for _ in range(reps):  # alternate implementations within each round (shared, noisy machine)
    ref.append(_median_time(ref_fn, ref_args, 3))
    for impl, what in first:
      fn, args = cases[impl][what]
      ts[impl, what].append(_median_time(fn, args, 1))
  ref.append(_median_time(ref_fn, ref_args, 3))
  ref_wall = float(np.median([r[0] for r in ref]))
  ref_cpu = float(np.median([r[1] for r in ref]))
  ref_g = 2 * ref_n * ref_n / ref_wall / 1e9
  out = dict(n=n, d=d, reps=reps, ref=dict(n=ref_n, step_s=ref_wall, step_cpu_s=ref_cpu,
                                           step_G_per_s=ref_g,
                                           step_G_per_cpu_s=2 * ref_n * ref_n / ref_cpu / 1e9))
  for impl in impls:
    t_step = float(np.median([t[0] for t in ts[impl, "step"]]))
    c_step = float(np.median([t[1] for t in ts[impl, "step"]]))
    t_half = float(np.median([t[0] for t in ts[impl, "half"]]))
    g = 2 * n * n / t_step / 1e9
    out[impl] = dict(step_s=t_step, step_cpu_s=c_step, step_G_per_s=g,
                     step_G_per_cpu_s=2 * n * n / c_step / 1e9,
                     vs_ref=g / ref_g,
                     half_step_s=t_half, half_G_per_s=n * n / t_half / 1e9,
                     half_vs_ref=(n * n / t_half / 1e9) / ref_g,
                     compile_s=cases[impl]["compile_s"])
  return out


def online_solve_child(n, tol, tile_size):
  """The whole online solve to ``tol`` (subprocess: ru_maxrss is this solve's peak)."""
  import neural_ot
  x, y = _data(n, 2, seed=1)

  def fn(x, y):
    o = neural_ot.sinkhorn(x, y, epsilon=0.05, relative_epsilon=True, tol=tol, online=True,
                           tile_size=tile_size)
    return o.reg_ot_cost, o.n_iters, o.marginal_error, o.converged

  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(x, y).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  cost, iters, err, conv = jax.block_until_ready(compiled(x, y))
  t = time.perf_counter() - t0
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
  print(json.dumps(dict(n=n, d=2, iters=int(iters), time_s=t, compile_s=compile_s,
                        per_iter_s=t / max(int(iters), 1), marginal_error=float(err),
                        converged=bool(conv), reg_ot_cost=float(cost), peak_rss_gb=rss,
                        dense_cost_matrix_gb=4 * n * n / 1e9)))


def _scan_table(rows):
  lines = ["| d | n = m | before: s / it | before: G/s | after: s / it | after: G/s | "
           "after: G per CPU-s | speed-up | after vs 4k, same rounds | "
           "half-step G/s before / after |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    b, a = r.get("before"), r["after"]
    bs = (f"{b['step_s']:.3g} | {b['step_G_per_s']:.2f}" if b else "- | -")
    sp = f"{b['step_s'] / a['step_s']:.1f}x" if b else "-"
    bh = f"{b['half_G_per_s']:.2f}" if b else "-"
    lines.append(f"| {r['d']} | {r['n']:,} | {bs} | {a['step_s']:.3g} | "
                 f"{a['step_G_per_s']:.2f} | {a['step_G_per_cpu_s']:.2f} | {sp} | "
                 f"{a['vs_ref']:.2f} | {bh} / {a['half_G_per_s']:.2f} |")
  return "\n".join(lines)


def online_scan(args):
  from neural_ot.geometry import pointcloud as pc
  tile = tuple(args.tile_size) if args.tile_size else pc.DEFAULT_TILE_SIZE
  machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"jax {jax.__version__}, load average at start {os.getloadavg()[0]:.1f}")
  print(f"online scan: blocks {tile} (after) vs 256 rows x whole axis (before); {machine}",
        flush=True)
  rows = []
  result = dict(machine=machine, tile_size=list(tile), rows=rows)

  def save():
    os.makedirs(os.path.dirname(args.scan_json) or ".", exist_ok=True)
    with open(args.scan_json, "w") as fh:
      json.dump(result, fh, indent=2)

  for d in args.dims:
    for n in args.scan_sizes:
      if d > 8 and n > args.max_n_high_d:
        print(f"  d={d} n={n}: skipped (--max-n-high-d {args.max_n_high_d})", flush=True)
        continue
      legacy_max = args.legacy_max_n if d <= 8 else args.legacy_max_n_high_d
      r = online_scan_point(n, d, legacy_max, tile, args.scan_budget_s)
      rows.append(r)
      b, a = r.get("before"), r["after"]
      print(f"  d={d:>2} n={n:>6}: after {a['step_s']:.3g} s/it {a['step_G_per_s']:.2f} G/s "
            f"({a['step_G_per_cpu_s']:.2f} G/CPU-s, {a['vs_ref']:.2f}x the 4k step in the same "
            f"rounds) "
            f"(half-step {a['half_G_per_s']:.2f} G/s)" +
            (f" | before {b['step_s']:.3g} s/it {b['step_G_per_s']:.2f} G/s "
             f"(half-step {b['half_G_per_s']:.2f} G/s)" if b else " | before: not run") +
            f" [{r['reps']} reps, load {os.getloadavg()[0]:.1f}]", flush=True)
      save()
  if args.solve_n:
    cmd = [sys.executable, __file__, "--_solve-child", str(args.solve_n), "--tol", str(args.tol)]
    if args.tile_size:
      cmd += ["--tile-size", *map(str, args.tile_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result["solve"] = json.loads(out.stdout.strip().splitlines()[-1])
    s = result["solve"]
    print(f"  solve n=m={s['n']} d=2 eps=0.05 relative, tol {args.tol}: {s['iters']} iterations, "
          f"{s['time_s']:.1f} s (+{s['compile_s']:.1f} s compile), error {s['marginal_error']:.1e}, "
          f"peak RSS {s['peak_rss_gb']:.2f} GB", flush=True)
  result["load_average_end"] = os.getloadavg()[0]
  save()
  table = _scan_table(rows)
  print(table)
  if args.results_md:
    _append_scan_section(args.results_md, result, table, tile)


def _append_scan_section(path, result, table, tile):
  by = {(r["d"], r["n"]): r for r in result["rows"]}
  lines = [f"\n## Online Sinkhorn: per-entry speed vs n (`python benchmarks/sinkhorn.py "
           f"--online-scan`, {time.strftime('%Y-%m-%d')})\n",
           f"Machine: {result['machine']}; load average at the end "
           f"{result['load_average_end']:.1f} (the machine is shared: compare columns of one run, "
           "not runs). One iteration = both kernel passes (`Sinkhorn.step`), G entries/s = "
           "2 n^2 / (s / iteration); the stable half-step is the log-sum-exp c-transform that "
           "starts a solve (n^2 entries). Medians of alternating before/after calls after a "
           "warm-up call, compile excluded; G per CPU-s divides by the process CPU time of all "
           "threads (less sensitive to other users' load); 'after vs 4k, same rounds' is the "
           "throughput relative to the n=4,000 step timed between the same calls. Before: 256 rows of the kept axis against the whole "
           f"reduced axis (the previous scheme: `tile_size=(256, None)`); after: "
           f"streamed {tile[0]} x {tile[1]} blocks.\n", table, ""]
  base = by.get((2, 4000))
  for n in (50000, 100000):
    if (2, n) in by:
      r = by[2, n]["after"]
      seq = (f"{r['step_G_per_s'] / base['after']['step_G_per_s']:.2f}x in wall time vs the 4k row, "
             f"{r['step_G_per_cpu_s'] / base['after']['step_G_per_cpu_s']:.2f}x per CPU-second; "
             if base else "")
      lines.append(f"- d=2, after: throughput at n={n:,} is {seq}{r['vs_ref']:.2f}x the 4k step "
                   "timed in the same rounds (target >= 0.7).")
  s = result.get("solve")
  if s:
    lines.append(f"- Whole solve, n = m = {s['n']:,}, d = 2, `epsilon=0.05, relative_epsilon=True`, "
                 f"tol 1e-3: {s['iters']} iterations in {s['time_s']:.1f} s "
                 f"(+{s['compile_s']:.1f} s compile), {s['per_iter_s']:.2f} s / iteration, marginal "
                 f"error {s['marginal_error']:.1e}, peak RSS {s['peak_rss_gb']:.2f} GB "
                 f"(a dense C would be {s['dense_cost_matrix_gb']:.0f} GB).")
  with open(path, "a") as fh:
    fh.write("\n".join(lines) + "\n")
  print(f"appended a section to {path}")


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
  p.add_argument("--online-scan", action="store_true",
                 help="per-entry speed of online Sinkhorn vs n, before/after blocking")
  p.add_argument("--scan-sizes", type=int, nargs="+", default=[4000, 10000, 20000, 50000, 100000])
  p.add_argument("--tile-size", type=int, nargs=2, default=None, help="(rows, cols) blocks")
  p.add_argument("--legacy-max-n", type=int, default=50000,
                 help="largest n timed with the previous scheme at d <= 8")
  p.add_argument("--legacy-max-n-high-d", type=int, default=20000)
  p.add_argument("--max-n-high-d", type=int, default=50000, help="largest n at d > 8")
  p.add_argument("--scan-budget-s", type=float, default=20.0,
                 help="timed seconds per configuration (1-5 rounds after the warm-up)")
  p.add_argument("--solve-n", type=int, default=50000)
  p.add_argument("--scan-json", default="benchmarks/results/online_scan.json")
  p.add_argument("--results-md", default="benchmarks/RESULTS.md")
  p.add_argument("--_solve-child", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args._solve_child:
    online_solve_child(args._solve_child, args.tol,
                       tuple(args.tile_size) if args.tile_size else None)
    return
  if args.online_scan:
    online_scan(args)
    return
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
