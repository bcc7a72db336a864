"""Neural W2 dual training: neural_ot vs ott-jax's ``W2NeuralDual`` on Gaussian pairs.

For each dimension, the same Gaussian pair (closed-form map) and the same sampler.
Per method: time per training step (median after warm-up, compile reported
separately), conjugate-solver iterations per step, and the map's L2-UVP (forward
and inverse, percent of the target / source variance) after an equal wall-clock
budget. Run: ``python benchmarks/neural_dual.py [--budget 60] [--dims 2 16]``
(needs ``diffrax`` for ``ott.neural``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np
import optax

import neural_ot
from neural_ot import w2bench
from neural_ot.w2bench import metrics


def gaussian_pair(d, seed=0):
  """A random Gaussian pair N(m1, s1) -> N(m2, s2) with its closed-form map."""
  rng = np.random.default_rng(seed)
  m1, m2 = rng.normal(size=d), rng.normal(size=d)
  r1, r2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
  s1, s2 = r1 @ r1.T / d + 0.3 * np.eye(d), r2 @ r2.T / d + 0.3 * np.eye(d)
  return w2bench.gaussian_pair(m1, s1, m2, s2, name=f"gaussian d={d}")


def run_ours(name, options, pair, budget, batch, seed=0):
  """fit_w2 with a time budget (its schedule fits the budget); metrics fetched every 100 steps."""
  t0 = time.perf_counter()
  mp = neural_ot.fit_w2(pair.sample_source, pair.sample_target, max_seconds=budget,
                        batch_size=batch, seed=seed, progress=False, **options)
  wall = time.perf_counter() - t0
  hist = [h for h in mp.history if "conj_iters" in h]
  steps = hist[-1]["step"]
  # Steady-state step time from the logged (step, seconds) pairs; compile is outside them.
  step_ms = 1000 * (hist[-1]["seconds"] - hist[0]["seconds"]) / max(steps - hist[0]["step"], 1)
  compile_s = wall - hist[-1]["seconds"]
  iters = [h["conj_iters"] for h in hist]
  return finish(name, pair, mp.transport, mp.inverse, [step_ms / 1000], compile_s, iters, steps,
                wall)


def finish(name, pair, fwd, inv, t_steps, compile_s, iters, steps, wall):
  """Timing summary plus L2-UVP of both maps on 4096 fresh pairs (X, T(X))."""
  scores = metrics.evaluate(pair, fwd, inv, n=4096, seed=100)
  return {"method": name, "step_ms": 1000 * float(np.median(t_steps[5:] or t_steps)),
          "compile_s": compile_s, "conj_iters": float(np.mean(iters)), "steps": steps,
          "wall_s": wall, "uvp_fwd": scores["uvp_fwd"], "uvp_inv": scores["uvp_inv"]}


def run_ott(name, pair, budget, batch, matched: bool, seed=0):
  from ott.neural.methods import neuraldual
  from ott.neural.networks import icnn
  from ott.neural.networks.layers import conjugate

  src, tgt, d = pair.sample_source, pair.sample_target, pair.dim
  kw = {}
  if matched:  # our architecture sizes, learning rate and conjugate budget
    kw = dict(neural_f=icnn.ICNN(dim_data=d, dim_hidden=[64, 64, 64]),
              neural_g=icnn.ICNN(dim_data=d, dim_hidden=[64, 64]),
              optimizer_f=optax.adam(1e-2), optimizer_g=optax.adam(1e-2),
              conjugate_solver=conjugate.FenchelConjugateLBFGS(gtol=1e-3, max_iter=10,
                                                               max_linesearch_iter=10))
  solver = neuraldual.W2NeuralDual(dim_data=d, rng=jax.random.PRNGKey(seed), **kw)
  draw = jax.jit(lambda k: {"source": src(jax.random.fold_in(k, 0), batch),
                            "target": tgt(jax.random.fold_in(k, 1), batch)})
  step_fn = solver.train_step_parallel
  sf, sg = solver.state_f, solver.state_g
  conj = solver.conjugate_solver

  @jax.jit
  def conj_iters(sf, sg, y):
    f_val = sf.potential_value_fn(sf.params)
    x0 = sg.potential_gradient_fn(sg.params)(y)
    return jax.vmap(lambda yi, xi: conj.solve(f_val, yi, x_init=xi).num_iter)(y, x0).mean()

  batch0 = draw(jax.random.PRNGKey(0))
  t = time.perf_counter()
  out = step_fn(sf, sg, batch0)
  jax.block_until_ready(out[2])
  compile_s = time.perf_counter() - t
  iters, t_steps, t0, k = [], [], time.perf_counter(), 0
  while time.perf_counter() - t0 < budget:
    bt = draw(jax.random.PRNGKey(k + 1))
    jax.block_until_ready(bt)
    t = time.perf_counter()
    sf, sg, loss, *_ = step_fn(sf, sg, bt)
    jax.block_until_ready(loss)
    t_steps.append(time.perf_counter() - t)
    if k % 10 == 0:
      iters.append(float(conj_iters(sf, sg, bt["target"])))
    k += 1
  wall = time.perf_counter() - t0
  solver.state_f, solver.state_g = sf, sg
  pots = solver.to_dual_potentials()
  fwd = jax.jit(lambda x: pots.transport(x, forward=True))
  inv = jax.jit(lambda y: pots.transport(y, forward=False))
  return finish(name, pair, fwd, inv, t_steps, compile_s, iters, k, wall)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--budget", type=float, default=60.0, help="seconds of training per method")
  parser.add_argument("--dims", type=int, nargs="+", default=[2, 16])
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args()
  rows = []
  for d in args.dims:
    pair = gaussian_pair(d)
    runs = [
        lambda: run_ours("ours (identity init)", dict(init="identity"), pair, args.budget,
                         args.batch),
        lambda: run_ours("ours (Gaussian init)", {}, pair, args.budget, args.batch),
        lambda: run_ott("ott W2NeuralDual defaults", pair, args.budget, args.batch, False),
        lambda: run_ott("ott W2NeuralDual matched", pair, args.budget, args.batch, True),
    ]
    for run in runs:
      row = {"d": d, **run()}
      rows.append(row)
      print(json.dumps(row), flush=True)
  ott_default = {r["d"]: r["step_ms"] for r in rows if r["method"] == "ott W2NeuralDual defaults"}
  print(f"\n{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, batch "
        f"{args.batch}, budget {args.budget:.0f} s per method; UVP = 100 |T - T*|^2 / Var, percent")
  hdr = (f"{'d':>3} {'method':<28} {'ms/step':>8} {'vs ott':>7} {'compile':>8} {'conj it':>8} "
         f"{'steps':>6} {'UVP fwd %':>10} {'UVP inv %':>10}")
  print(hdr)
  print("-" * len(hdr))
  for r in rows:
    print(f"{r['d']:>3} {r['method']:<28} {r['step_ms']:8.2f} {r['step_ms'] / ott_default[r['d']]:7.3f} "
          f"{r['compile_s']:8.1f} {r['conj_iters']:8.2f} {r['steps']:6d} {r['uvp_fwd']:10.4f} "
          f"{r['uvp_inv']:10.4f}")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "neural_dual.json"), "w") as fh:
    json.dump({"machine": platform.machine(), "cores": os.cpu_count(), "jax": jax.__version__,
               "budget_s": args.budget, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
  main()
