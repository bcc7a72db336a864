"""Warm starts against zeros: Sinkhorn iterations to 1e-2 / 1e-3 / 1e-4 (``momentum="auto"``).

A better start must never cost iterations later. For each family, pairs are solved from zeros and
from warm starts (the converged ``f`` of a nearby problem; the Gaussian initializer; a briefly
trained Meta OT prediction on the 16x16 mixtures), recording the marginal error at every iteration.
Printed: median iterations to each tolerance and the fraction of pairs where the warm start needs
more iterations than zeros, for the default solver (``momentum="auto"``) and for plain Sinkhorn
(``momentum=1``, no over-relaxation): the plain rows show which of the slower cases the start
itself causes (plain Sinkhorn from a start closer to the solution, in the Hilbert metric it
contracts in, can still need more iterations to a marginal tolerance than from zeros). Iteration
counts only (no timing), so it runs on a busy machine.

Run: ``python benchmarks/warm_start.py [--pairs 40] [--meta-steps 600] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

import neural_ot
from neural_ot.geometry import PointCloud
from neural_ot.meta import (digits_histograms, fit_meta, gaussian_init,
                            gaussian_mixture_histograms, grid)

TOLS = (1e-2, 1e-3, 1e-4)
MAX_ITERS = 4000


def _iters_to(errors):
  """First iteration whose measured error is below each tolerance (MAX_ITERS if never)."""
  errors = np.asarray(errors)
  out = []
  for tol in TOLS:
    hit = np.nonzero((errors >= 0) & (errors < tol))[0]
    out.append(int(hit[0]) if hit.size else MAX_ITERS)
  return out


def _solve_errors(solver, geoms, a, b, eps, f0):
  """Per-problem error traces, vmapped over problems (geometry, weights, start)."""
  def one(geom, a, b, f0):
    init = None if f0 is None else (f0, None)
    return solver.solve(geom, a, b, eps, init).errors
  if f0 is None:
    return jax.jit(jax.vmap(lambda g, a, b: one(g, a, b, None)))(geoms, a, b)
  return jax.jit(jax.vmap(one))(geoms, a, b, f0)


def histogram_family(name, hist, support, eps, k, key, meta_steps, momentum="auto"):
  """Pairs (a_i, b_i); nearby problem: (a_i, b_i) mixed 10 % with another pair."""
  n = support.shape[0]
  ka, kb, kc = jax.random.split(key, 3)
  ia = jax.random.choice(ka, hist.shape[0], (2 * k,), replace=False)
  a, b = hist[ia[:k]], hist[ia[k:]]
  perm = jax.random.permutation(kc, k)
  a_near = 0.9 * a + 0.1 * a[perm]
  b_near = 0.9 * b + 0.1 * b[perm]
  geom = PointCloud.create(support, support, online=False)
  geoms = jax.tree.map(lambda z: jnp.broadcast_to(z, (k,) + z.shape), geom)
  solver = neural_ot.Sinkhorn(tol=min(TOLS) / 10, max_iters=MAX_ITERS, record_errors=True,
                              momentum=momentum)
  tight = neural_ot.Sinkhorn(tol=1e-6, max_iters=MAX_ITERS)
  near = jax.jit(jax.vmap(lambda a, b: tight.solve(geom, a, b, eps).f))(a_near, b_near)
  starts = {"nearby": near,
            "gaussian": jax.vmap(lambda a, b: gaussian_init(support, a, b))(a, b)}
  if meta_steps:
    def pairs(key, m):
      idx = jax.random.choice(key, hist.shape[0], (2 * m,))
      return hist[idx[:m]], hist[idx[m:]]
    model = fit_meta(pairs, support, eps, steps=meta_steps, batch_size=32, hidden=(256, 256),
                     progress=False)
    starts["meta"] = model.predict(a, b)[0]
  rows = []
  zeros = np.array([_iters_to(e) for e in _solve_errors(solver, geoms, a, b, eps, None)])
  rows.append((name, n, eps, momentum, "zeros", zeros, None))
  for start, f0 in starts.items():
    its = np.array([_iters_to(e) for e in _solve_errors(solver, geoms, a, b, eps, f0)])
    rows.append((name, n, eps, momentum, start, its, zeros))
  return rows


def cloud_family(k, n, eps, key, momentum="auto"):
  """Gaussian clouds; nearby problem: the target moved by a small random shift."""
  kx, ky, ks = jax.random.split(key, 3)
  x = jax.random.normal(kx, (k, n, 2))
  y = 0.7 * jax.random.normal(ky, (k, n, 2)) @ jnp.array([[1.0, 0.3], [0.0, 0.8]]) + 1.0
  y_near = y + 0.05 * jax.random.normal(ks, (k, 1, 2))
  w = jnp.full((k, n), 1.0 / n)
  solver = neural_ot.Sinkhorn(tol=min(TOLS) / 10, max_iters=MAX_ITERS, record_errors=True,
                              momentum=momentum)
  tight = neural_ot.Sinkhorn(tol=1e-6, max_iters=MAX_ITERS)
  geoms = jax.vmap(lambda x, y: PointCloud.create(x, y, online=False))(x, y)
  near_geoms = jax.vmap(lambda x, y: PointCloud.create(x, y, online=False))(x, y_near)
  near = jax.jit(jax.vmap(lambda g, a, b: tight.solve(g, a, b, eps).f))(near_geoms, w, w)
  zeros = np.array([_iters_to(e) for e in _solve_errors(solver, geoms, w, w, eps, None)])
  warm = np.array([_iters_to(e) for e in _solve_errors(solver, geoms, w, w, eps, near)])
  return [("clouds", n, eps, momentum, "zeros", zeros, None),
          ("clouds", n, eps, momentum, "nearby", warm, zeros)]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--pairs", type=int, default=40)
  p.add_argument("--meta-steps", type=int, default=600)
  p.add_argument("--json", default=None)
  args = p.parse_args()
  key = jax.random.PRNGKey(0)
  k = args.pairs
  rows = []
  mix = gaussian_mixture_histograms(jax.random.fold_in(key, 2), 2000, 16)
  for mom in ("auto", 1.0):
    rows += histogram_family("digits", jnp.asarray(digits_histograms()), grid(8), 0.01, k,
                             jax.random.fold_in(key, 1), 0, mom)
    rows += histogram_family("mixture", mix, grid(16), 0.01, k, jax.random.fold_in(key, 3),
                             args.meta_steps, mom)
    rows += cloud_family(k, 200, 0.01, jax.random.fold_in(key, 4), mom)
    rows += cloud_family(k, 200, 0.1, jax.random.fold_in(key, 5), mom)
  print(f"{'family':<8} {'n':>4} {'eps':>5} {'momentum':>8} {'start':<9} " +
        " ".join(f"{'med ' + format(t, 'g'):>9}" for t in TOLS) + "  " +
        " ".join(f"{'slower ' + format(t, 'g'):>12}" for t in TOLS) + "  max excess")
  out = []
  for fam, n, eps, mom, start, its, zeros in rows:
    med = np.median(its, 0)
    slower = [float(np.mean(its[:, j] > zeros[:, j])) if zeros is not None else float("nan")
              for j in range(len(TOLS))]
    excess = int((its - zeros).max()) if zeros is not None else 0
    print(f"{fam:<8} {n:>4} {eps:>5} {mom!s:>8} {start:<9} " + " ".join(f"{m:9.1f}" for m in med) + "  "
          + " ".join(f"{s:12.2f}" for s in slower) + f"  {excess:10d}")
    out.append({"family": fam, "n": n, "eps": eps, "momentum": mom, "start": start,
                "median_iters": med.tolist(), "frac_slower": slower, "max_excess": excess})
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(out, fh, indent=1)


if __name__ == "__main__":
  main()
