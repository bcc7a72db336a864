"""Point-cloud Meta OT (``fit_meta_points``): Sinkhorn iterations and wall-clock to 1e-2 / 1e-3 /
1e-4 from zeros, the Gaussian start, the landmark solve without the network, and the model.

Families of clouds are built here. The model is trained on the ``train`` families only
(Gaussian mixtures and rotated boxes) at training sizes; it is reported on held-out pairs of
the training families *and* on families never trained on (rings, heavy tails, data near a
subspace), at sizes never trained on (n from 1,000 to 20,000; the two clouds of a pair have
different sizes). Wall-clock includes the prediction (landmarks, network, landmark solve,
extension); medians over pairs after a warm-up solve of each shape (compile excluded).

Run: ``python benchmarks/meta_points.py --dims 2 8 --sizes 1000 4000 --pairs 6``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import neural_ot
from neural_ot.meta import fit_meta_points, gaussian_potential, multiscale_points_init

from warm_start import MAX_ITERS, TOLS, _iters_to  # the same counting as the other warm starts


def _rotation(key, d):
  q, _ = jnp.linalg.qr(jax.random.normal(key, (d, d)))
  return q


def cloud(key, family, n, d):
  """``n`` points of one random member of ``family`` in dimension ``d``."""
  ks = jax.random.split(key, 6)
  if family == "mixtures":  # 1-6 anisotropic Gaussian components
    k = 6
    n_comp = jax.random.randint(ks[0], (), 1, k + 1)
    means = 2.0 * jax.random.normal(ks[1], (k, d))
    scales = jnp.exp(0.5 * jax.random.normal(ks[2], (k, d)))
    comp = jax.random.randint(ks[3], (n,), 0, n_comp)
    z = means[comp] + scales[comp] * jax.random.normal(ks[4], (n, d))
  elif family == "boxes":  # rotated, stretched uniform boxes
    side = jnp.exp(0.5 * jax.random.normal(ks[0], (d,)))
    z = (jax.random.uniform(ks[1], (n, d), minval=-1, maxval=1) * side) @ _rotation(ks[2], d)
    z = z + jax.random.normal(ks[3], (d,))
  elif family == "rings":  # a noisy sphere (a circle in 2-D) with a random radius and centre
    r = 1.0 + 2.0 * jax.random.uniform(ks[0])
    u = jax.random.normal(ks[1], (n, d))
    u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
    z = r * u * (1 + 0.08 * jax.random.normal(ks[2], (n, 1))) + jax.random.normal(ks[3], (d,))
  elif family == "heavy":  # Student t, 3 degrees of freedom, random covariance
    g = jax.random.normal(ks[0], (n, d))
    chi = jnp.sum(jax.random.normal(ks[1], (n, 3)) ** 2, 1, keepdims=True) / 3.0
    z = (g / jnp.sqrt(chi)) @ (_rotation(ks[2], d) * jnp.exp(0.4 * jax.random.normal(ks[3], (d,))))
  elif family == "subspace":  # a curved 1-D manifold plus small noise, embedded at random
    t = jax.random.uniform(ks[0], (n,), minval=-2, maxval=2)
    base = jnp.stack([t, jnp.sin(2 * t)] + [0.0 * t] * (d - 2), 1)[:, :d]
    z = base @ _rotation(ks[1], d) + 0.05 * jax.random.normal(ks[2], (n, d))
  else:
    raise ValueError(family)
  return z


TRAIN = ("mixtures", "boxes")
UNSEEN = ("rings", "heavy", "subspace")


def train_pairs(d, n, m):
  def pairs(key, k):
    keys = jax.random.split(key, 4 * k).reshape(k, 4, 2)
    def one(kk):
      fx = jax.random.bernoulli(kk[0], 0.5)
      fy = jax.random.bernoulli(kk[1], 0.5)
      x = jnp.where(fx, cloud(kk[2], "mixtures", n, d), cloud(kk[2], "boxes", n, d))
      y = jnp.where(fy, cloud(kk[3], "mixtures", m, d), cloud(kk[3], "boxes", m, d))
      return x, y
    x, y = jax.vmap(one)(keys)
    return x, jnp.ones((k, n)), y, jnp.ones((k, m))
  return pairs


def solve(x, y, eps, init, tol=TOLS[-1]):
  return neural_ot.sinkhorn(x, y, epsilon=eps, tol=tol, max_iters=MAX_ITERS, init=init,
                            record_errors=True)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--dims", type=int, nargs="+", default=[2, 8])
  p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
  p.add_argument("--pairs", type=int, default=6)
  p.add_argument("--eps", type=float, default=0.01, help="relative to the mean cost")
  p.add_argument("--steps", type=int, default=2000)
  p.add_argument("--train-size", type=int, default=512)
  p.add_argument("--landmarks", type=int, default=128)
  p.add_argument("--families", nargs="+", default=["mixtures", "boxes", *UNSEEN])
  p.add_argument("--timing", action="store_true", help="also time each start (median of --reps)")
  p.add_argument("--reps", type=int, default=3, help="timed solves per pair (after a warm-up)")
  p.add_argument("--timed-pairs", type=int, default=3, help="pairs timed (the first ones)")
  p.add_argument("--starts", nargs="+", default=None,
                 help="starts to run (default all): zeros gaussian multiscale landmarks meta "
                      "meta-network meta+refine; without meta* / landmarks no model is trained")
  p.add_argument("--json", default=None)
  args = p.parse_args()
  rows = []
  for d in args.dims:
    wanted = args.starts or ["zeros", "gaussian", "multiscale", "landmarks", "meta",
                             "meta-network", "meta+refine"]
    train = any(s.startswith("meta") or s == "landmarks" for s in wanted)
    t0 = time.perf_counter()
    model = fit_meta_points(train_pairs(d, args.train_size, args.train_size + 37),
                            landmarks=args.landmarks, steps=args.steps, progress=False) \
        if train else None
    train_s = time.perf_counter() - t0
    if model is not None:
      untrained = dataclasses.replace(
          model, params=jax.tree.map(jnp.zeros_like, model.params), multiscale=False)
      network = dataclasses.replace(model, multiscale=False)
    starts = {
        "zeros": lambda x, y, eps: None,
        "gaussian": lambda x, y, eps: (gaussian_potential(
            x, jnp.full(len(x), 1 / len(x)), y, jnp.full(len(y), 1 / len(y))), None),
        "multiscale": lambda x, y, eps: multiscale_points_init(x, y, epsilon=eps),
        "landmarks": lambda x, y, eps: untrained.predict(x, y, epsilon=eps, refine_tol=1e-3),
        "meta": lambda x, y, eps: model.predict(x, y, epsilon=eps),
        "meta-network": lambda x, y, eps: network.predict(x, y, epsilon=eps, refine_tol=None),
        "meta+refine": lambda x, y, eps: network.predict(x, y, epsilon=eps, refine_tol=1e-3),
    }
    starts = {s: starts[s] for s in wanted}
    if model is not None:
      print(f"# d={d}: trained {args.steps} steps in {train_s:.0f} s "
            f"(dual {model.history[-1]['dual'] if model.history else float('nan'):.4f})",
            flush=True)
    for fam in args.families:
      for n in args.sizes:
        res = {s: [] for s in starts}
        secs = {s: [] for s in starts}
        for i in range(args.pairs):
          key = jax.random.PRNGKey(10_000 + 97 * i + d)
          kx, ky = jax.random.split(key)
          x = cloud(kx, fam, n, d)
          y = cloud(ky, fam, n + n // 7, d)
          mean_cost = float(jnp.mean(jnp.sum(x * x, 1)) + jnp.mean(jnp.sum(y * y, 1))
                            - 2 * jnp.mean(x, 0) @ jnp.mean(y, 0))
          eps = args.eps * mean_cost
          for s, make in starts.items():
            init = make(x, y, eps)
            out = solve(x, y, eps, init)
            res[s].append(_iters_to(out.errors))
            if args.timing and i < args.timed_pairs:
              for tol in TOLS[1:2]:
                def run():
                  it = make(x, y, eps)
                  o = neural_ot.sinkhorn(x, y, epsilon=eps, tol=tol, max_iters=MAX_ITERS,
                                         init=it)
                  return o.f.block_until_ready()
                run()  # compile
                ts = []
                for _ in range(args.reps):
                  t = time.perf_counter(); run(); ts.append(time.perf_counter() - t)
                secs[s].append(float(np.median(ts)))
        z = np.array(res["zeros"])
        line = {"d": d, "family": fam, "n": n, "trained": fam in TRAIN}
        for s in starts:
          r = np.array(res[s])
          line[s] = {"median_iters": np.median(r, 0).tolist(),
                     "speedup_min": (z / np.maximum(r, 1)).min(0).tolist(),
                     "slower_than_zeros_by_2": float(np.mean(r > z + 1)),
                     "seconds_1e-3": float(np.median(secs[s])) if secs[s] else None}
        rows.append(line)
        cells = "  ".join(f"{s} {'/'.join(f'{v:g}' for v in line[s]['median_iters'])}"
                          + (f" ({line[s]['seconds_1e-3']:.3f}s)" if secs[s] else "")
                          for s in starts)
        print(f"d={d} {fam:9s}{'*' if fam in TRAIN else ' '} n={n:6d}: {cells}", flush=True)
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(rows, fh, indent=1)


if __name__ == "__main__":
  main()
