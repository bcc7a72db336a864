"""Scaling out: sharded online Sinkhorn, many small problems, data-parallel fit_w2.

One run, three sections (``--sections``):

* ``sharded``: n = m from 1e4 to 1e6 at d = 2 and 3 with the sharded online
  solver on ``--devices`` devices (forced CPU devices when there is no
  accelerator: ``--xla_force_host_platform_device_count``). Per device: the
  compiled program's memory (XLA's memory analysis: arguments + temporaries;
  one iteration, so it is the solver's working set; "1-dev MB" is the same
  for the unsharded online solver) and the median time of one
  Sinkhorn iteration after warm-up (compile reported apart). Sizes whose
  iteration would take longer than ``--max-iter-s`` (estimated from the
  measured entries/s) are compiled and sized but not timed. At the smaller
  sizes the same problem is also solved to ``--tol`` sharded and on one device,
  and the costs compared.
* ``small``: ``--batch`` problems of ``--small-n`` points: our ``sinkhorn_batch``
  (one device, and split over the devices), ott-jax's Sinkhorn under ``vmap``,
  and a Python loop over POT's log-domain Sinkhorn (on ``--pot-problems``
  problems, reported as problems/s). Same absolute epsilon and tolerance.
* ``fit``: ``fit_w2`` step time on one device and data-parallel over the mesh.

Forced CPU devices share this machine's cores: they show correctness and
memory per device, not speed-up.

Usage: python benchmarks/scale.py [--devices 4] [--sizes 10000 30000 100000 1000000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--devices", type=int, default=4)
p.add_argument("--sections", nargs="+", default=["sharded", "small", "fit"])
p.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 100000, 300000, 1000000])
p.add_argument("--dims", type=int, nargs="+", default=[2, 3])
p.add_argument("--eps", type=float, default=0.05, help="epsilon relative to the mean cost")
p.add_argument("--tol", type=float, default=1e-3)
p.add_argument("--solve-max-n", type=int, default=30000)
p.add_argument("--max-iter-s", type=float, default=60.0)
p.add_argument("--tile-size", type=int, default=512)
p.add_argument("--batch", type=int, default=4096)
p.add_argument("--small-n", type=int, default=32)
p.add_argument("--pot-problems", type=int, default=256)
p.add_argument("--json", default="benchmarks/results/scale.json")
args = p.parse_args()

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={args.devices}").strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import neural_ot  # noqa: E402
from neural_ot.sharding import make_mesh, shard_points  # noqa: E402


def _median_time(fn, *a, repeats=3, warmup=True):
  if warmup:  # an AOT-compiled fn does not compile on its first call: the warm-up is optional
    jax.block_until_ready(fn(*a))
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*a))
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts))


def _cloud(n, d, seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(k1, (n, d)), 0.5 * jax.random.normal(k2, (n, d)) + 1.0


def _mean_cost(x, y):
  return float(jnp.mean(jnp.sum(x**2, 1)) + jnp.mean(jnp.sum(y**2, 1))
               - 2 * x.mean(0) @ y.mean(0))


def sharded_section(mesh):
  ndev = mesh.devices.size
  rows, rate = [], None
  print(f"\n== sharded online Sinkhorn on {ndev} {jax.devices()[0].platform} devices "
        f"(tile {args.tile_size}, eps {args.eps} x mean cost) ==")
  print(f"{'n=m':>8} {'d':>2} {'compile s':>9} {'s/iter':>9} {'Gentry/s':>8} "
        f"{'args MB/dev':>11} {'temp MB/dev':>11} {'1-dev MB':>8} {'dense C GB':>10}  {'check':<40}")
  for d in args.dims:
    for n in args.sizes:
      x, y = _cloud(n, d)
      eps = args.eps * _mean_cost(x, y)
      xs, ys = shard_points(x, mesh), shard_points(y, mesh)
      solver = neural_ot.Sinkhorn(mesh=mesh, tile_size=args.tile_size, momentum=1.0,
                                  tol=args.tol, max_iters=100000)
      a = jnp.full((n,), 1.0 / n)
      geom, a_, b_, _, _ = solver.geometry(xs, ys, a, a)

      def one_iter(geom, a, b):
        st = solver.init(geom, a, b, jnp.asarray(eps, jnp.float32))
        return solver.step(geom, a, b, jnp.asarray(eps, jnp.float32), st).f

      t0 = time.perf_counter()
      compiled = jax.jit(one_iter).lower(geom, a_, b_).compile()
      compile_s = time.perf_counter() - t0
      mem = compiled.memory_analysis()
      # the same iteration on one device (online), compiled only: its memory
      single = dataclasses.replace(solver, mesh=None, axis_name=None, online=True)
      geom1 = single.geometry(x, y, a, a)[0]
      mem1 = jax.jit(lambda g, a, b, s=single: s.step(g, a, b, jnp.asarray(eps, jnp.float32), s.init(
          g, a, b, jnp.asarray(eps, jnp.float32))).f).lower(geom1, a, a).compile().memory_analysis()
      hlo = compiled.as_text()
      assert "all-gather" not in hlo, "the sharded iteration gathers an array"
      entries = 3 * n * n  # init (one pass) + one iteration (two passes)
      est = None if rate is None else entries / rate
      row = dict(n=n, d=d, devices=ndev, compile_s=compile_s,
                 args_mb_per_device=mem.argument_size_in_bytes / 2**20,
                 temp_mb_per_device=mem.temp_size_in_bytes / 2**20,
                 one_device_mb=(mem1.temp_size_in_bytes + mem1.argument_size_in_bytes) / 2**20,
                 dense_cost_gb=4 * n * n / 1e9, per_iter_s=None, check="")
      if est is None or est < args.max_iter_s:
        big = n > args.solve_max_n
        t = _median_time(compiled, geom, a_, b_, repeats=1 if big else 3, warmup=not big)
        # one init pass + two iteration passes; report the two-pass iteration
        row["per_iter_s"] = t * 2 / 3
        rate = entries / t
        row["gentries_per_s"] = rate / 1e9
      else:
        row["per_iter_s_estimated"] = est * 2 / 3
      if n <= args.solve_max_n:
        out = solver(xs, ys, epsilon=eps)
        ref = neural_ot.sinkhorn(x, y, epsilon=eps, tol=args.tol, online=True, momentum=1.0,
                                 tile_size=args.tile_size, max_iters=100000)
        rel = abs(float(out.reg_ot_cost) - float(ref.reg_ot_cost)) / abs(float(ref.reg_ot_cost))
        row.update(iters=int(out.n_iters), ref_iters=int(ref.n_iters), rel_cost_diff=rel)
        row["check"] = f"solved {int(out.n_iters)} it (1 dev {int(ref.n_iters)}), dcost {rel:.1e}"
      rows.append(row)
      it = (f"{row['per_iter_s']:9.3f}" if row["per_iter_s"] is not None
            else f"~{row['per_iter_s_estimated']:8.0f}")
      print(f"{n:>8} {d:>2} {compile_s:9.2f} {it} {row.get('gentries_per_s', float('nan')):8.2f} "
            f"{row['args_mb_per_device']:11.2f} {row['temp_mb_per_device']:11.2f} "
            f"{row['one_device_mb']:8.1f} {row['dense_cost_gb']:10.1f}  {row['check']:<40}",
            flush=True)
  return rows


def small_section(mesh):
  import ot
  from ott.geometry import pointcloud
  from ott.problems.linear import linear_problem
  from ott.solvers.linear import sinkhorn as ott_sinkhorn
  bsz, n = args.batch, args.small_n
  k1, k2 = jax.random.split(jax.random.PRNGKey(3))
  x = jax.random.normal(k1, (bsz, n, 2))
  y = 0.5 * jax.random.normal(k2, (bsz, n, 2)) + 1.0
  eps = 0.05  # absolute (mean cost here is about 2.5)
  tol = args.tol
  print(f"\n== {bsz} problems of n = m = {n}, d = 2, eps {eps}, tol {tol} ==")

  ours = lambda: neural_ot.sinkhorn_batch(x, y, epsilon=eps, tol=tol, max_iters=5000)
  ours_sh = lambda: neural_ot.sinkhorn_batch(x, y, epsilon=eps, tol=tol, max_iters=5000,
                                             mesh=mesh)

  @jax.jit
  def ott_fn(x, y):
    def one(x, y):
      geom = pointcloud.PointCloud(x, y, epsilon=eps)
      o = ott_sinkhorn.Sinkhorn(threshold=tol, max_iterations=5000)(
          linear_problem.LinearProblem(geom))
      return o.reg_ot_cost, o.n_iters
    return jax.vmap(one)(x, y)

  res = {}
  for name, fn in (("ours (1 device)", lambda: ours().reg_ot_cost),
                   (f"ours (sharded, {mesh.devices.size} dev)", lambda: ours_sh().reg_ot_cost),
                   ("ott-jax vmap", lambda: ott_fn(x, y)[0])):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    t = _median_time(fn)
    res[name] = dict(time_s=t, problems_per_s=bsz / t, first_call_s=first)
  o = ours()
  c_ott, it_ott = ott_fn(x, y)
  res["ours (1 device)"]["mean_iters"] = float(o.n_iters.mean())
  res["ott-jax vmap"]["mean_iters"] = float(it_ott.mean())
  rel = float(jnp.max(jnp.abs(o.reg_ot_cost - c_ott) / jnp.abs(c_ott)))
  xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
  w = np.full(n, 1.0 / n)
  npot = min(args.pot_problems, bsz)
  t0 = time.perf_counter()
  pot_costs = []
  for i in range(npot):
    C = ot.dist(xs[i], ys[i])
    P = ot.sinkhorn(w, w, C, eps, method="sinkhorn_log", stopThr=tol, numItermax=5000)
    pot_costs.append(np.sum(P * C))
  t = time.perf_counter() - t0
  res["POT loop (log)"] = dict(time_s=t * bsz / npot, problems_per_s=npot / t,
                               measured_on=npot)
  ours_primal = jax.vmap(lambda i: jax.tree.map(lambda z: z[i], o).primal_cost)(jnp.arange(npot))
  rel_pot = float(np.max(np.abs(np.asarray(ours_primal) - np.array(pot_costs)) / np.array(pot_costs)))
  ref = res["ott-jax vmap"]["problems_per_s"]
  print(f"{'method':<26} {'problems/s':>11} {'x ott':>6} {'s (batch)':>9} {'1st call s':>10}")
  for name, r in res.items():
    print(f"{name:<26} {r['problems_per_s']:11.0f} {r['problems_per_s'] / ref:6.2f} "
          f"{r['time_s']:9.3f} {r.get('first_call_s', float('nan')):10.2f}")
  print(f"max rel. reg_ot_cost diff ours vs ott: {rel:.1e}; primal cost vs POT ({npot} problems): "
        f"{rel_pot:.1e}; mean iterations ours {res['ours (1 device)']['mean_iters']:.1f}, "
        f"ott {res['ott-jax vmap']['mean_iters']:.1f} (ott checks every 10 iterations)")
  return dict(results=res, rel_cost_diff_vs_ott=rel, rel_primal_diff_vs_pot=rel_pot)


def fit_section(mesh):
  from neural_ot import train
  from neural_ot.w2 import Frame, PairSampler
  from neural_ot.w2.trainer import W2Trainer
  from jax.sharding import NamedSharding, PartitionSpec
  print(f"\n== fit_w2 step, batch 1024, d = 16, widths (64, 64, 64): 1 device vs "
        f"{mesh.devices.size} ==")
  trainer = W2Trainer()
  data = jax.random.normal(jax.random.PRNGKey(0), (8192, 16))
  res = {}
  for name, sharding in (("1 device", None),
                         ("data-parallel", NamedSharding(mesh, PartitionSpec("points")))):
    state = trainer.init_state(jax.random.PRNGKey(0), 16, 100)
    d = data
    if sharding is not None:
      rep = NamedSharding(mesh, PartitionSpec())
      state, d = jax.device_put((state, data), rep)
    sampler = PairSampler(1024, sharding=sharding)
    frame = Frame.identity(16).astype(jnp.float32)
    step = lambda s, d=d, sampler=sampler: train.guarded_step(
        s, jnp.asarray(True), jax.random.PRNGKey(1), {"frame": frame, "x": d, "y": d * 2.0 + 1.0},
        1e6, trainer=trainer, sampler=sampler)[0]
    t0 = time.perf_counter()
    jax.block_until_ready(step(state))
    first = time.perf_counter() - t0
    t = _median_time(step, state, repeats=10)
    res[name] = dict(ms_per_step=1e3 * t, first_call_s=first)
    print(f"{name:<14} {1e3 * t:8.1f} ms/step (first call {first:.1f} s)")
  return res


def main():
  mesh = make_mesh(jax.devices()[:args.devices])
  out = dict(machine=dict(platform=platform.platform(), processor=platform.machine(),
                          cpus=os.cpu_count(), jax=jax.__version__,
                          devices=[str(d) for d in mesh.devices.flat]), args=vars(args))
  if "sharded" in args.sections:
    out["sharded"] = sharded_section(mesh)
  if "small" in args.sections:
    out["small"] = small_section(mesh)
  if "fit" in args.sections:
    out["fit"] = fit_section(mesh)
  os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
  with open(args.json, "w") as fh:
    json.dump(out, fh, indent=1)
  print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
  main()
