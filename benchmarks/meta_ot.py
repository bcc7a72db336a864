"""Meta OT warm starts: iterations and time to a marginal error, from zeros / Gaussian / Meta OT.

Families: scikit-learn's 8x8 digits (train/test split of the images) and random Gaussian
mixtures on a ``--size`` x ``--size`` grid. Our model and ott-jax's ``MetaInitializer`` (same MLP
widths, same pairs, steps and batch) are trained on the training pairs; every start is then run
through *our* Sinkhorn (ott's potentials converted to our convention, ``f - eps log a``) on
held-out pairs, recording the L1 marginal error at every iteration.

Run: ``python benchmarks/meta_ot.py [--steps 8000] [--size 28] [--eps 0.01 0.003]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neural_ot
from neural_ot.meta import (digits_histograms, fit_meta, gaussian_init,
                            gaussian_mixture_histograms, grid, multiscale_init)

THRESHOLDS = (1e-2, 1e-3, 1e-4)


class _OttMLP(nn.Module):
  n: int
  hidden: tuple

  @nn.compact
  def __call__(self, ab):
    z = ab
    for w in self.hidden:
      z = jax.nn.gelu(nn.Dense(w)(z))
    return nn.Dense(self.n, kernel_init=nn.initializers.zeros)(z)


def train_ott(pairs, support, eps, steps, batch, hidden):
  from ott.geometry import pointcloud
  from ott.initializers.neural import meta_initializer
  from ott.problems.linear import linear_problem

  geom = pointcloud.PointCloud(support, support, epsilon=eps)
  init = meta_initializer.MetaInitializer(geom, _OttMLP(support.shape[0], hidden),
                                          opt=optax.adam(1e-3))
  state = init.state
  for k in range(steps):
    a, b = pairs(jax.random.fold_in(jax.random.PRNGKey(0), k), batch)
    _, _, state = init.update(state, a, b)
  init.state = state
  # ott's f includes eps log a; ours does not.
  return lambda a, b: init.init_fu(linear_problem.LinearProblem(geom, a, b), lse_mode=True
                                   ) - eps * jnp.log(a)


def iterations(x, a, b, eps, f0, check=True):
  out = neural_ot.sinkhorn(x, x, a, b, epsilon=eps, tol=min(THRESHOLDS), max_iters=5000,
                           init=None if f0 is None else (f0, None), record_errors=True,
                           init_check=check)
  e = np.asarray(out.errors)
  return [int(np.argmax((e >= 0) & (e < t))) if np.any((e >= 0) & (e < t)) else 5000
          for t in THRESHOLDS]


def seconds(x, a, b, eps, start, tol, check=True):
  """Wall-clock of one solve to ``tol``, the start's prediction ``start()`` included."""
  def run():
    f0 = start()
    return neural_ot.sinkhorn(x, x, a, b, epsilon=eps, tol=tol, max_iters=5000,
                              init=None if f0 is None else (f0, None), init_check=check).f
  jax.block_until_ready(run())
  t = time.perf_counter()
  jax.block_until_ready(run())
  return time.perf_counter() - t


def rings_histograms(key, k, size):
  """``k`` histograms on the ``size`` x ``size`` grid of [0, 1]^2: one or two blurred rings with
  random centres, radii and widths (a family no model here is trained on)."""
  g = grid(size)
  kc, kr, kw, kn = jax.random.split(key, 4)
  c = jax.random.uniform(kc, (k, 2, 2), minval=0.25, maxval=0.75)
  r = jax.random.uniform(kr, (k, 2), minval=0.08, maxval=0.3)
  w = jax.random.uniform(kw, (k, 2), minval=0.02, maxval=0.06)
  on = jnp.stack([jnp.ones(k), jax.random.bernoulli(kn, 0.5, (k,)).astype(jnp.float32)], 1)
  dist = jnp.linalg.norm(g[None, None] - c[:, :, None], axis=-1)  # (k, 2, n)
  h = jnp.sum(on[..., None] * jnp.exp(-0.5 * ((dist - r[..., None]) / w[..., None]) ** 2), 1)
  h = h + 1e-6
  return h / h.sum(-1, keepdims=True)


def field_histograms(key, k, size, n_freq=16):
  """``k`` histograms ``exp(beta phi)`` of random smooth fields ``phi`` (a sum of ``n_freq``
  random cosines, wavelengths 1/4 to 1 of the domain, ``beta`` in [1, 5]): many irregular
  bumps and ridges, a family no model here is trained on."""
  g = grid(size)
  kw, ks, kp, ka, kb = jax.random.split(key, 5)
  scale = jax.random.uniform(ks, (k, 1, 1), minval=1.0, maxval=4.0)
  w = 2 * jnp.pi * scale * jax.random.normal(kw, (k, n_freq, 2))
  ph = jax.random.uniform(kp, (k, n_freq), maxval=2 * jnp.pi)
  amp = jax.random.normal(ka, (k, n_freq)) / jnp.sqrt(n_freq)
  phi = jnp.sum(amp[:, :, None] * jnp.cos(jnp.einsum("kfd,nd->kfn", w, g) + ph[:, :, None]), 1)
  z = jax.random.uniform(kb, (k, 1), minval=1.0, maxval=5.0) * phi
  h = jnp.exp(z - z.max(-1, keepdims=True))
  h = h / h.sum(-1, keepdims=True) + 1e-6
  return h / h.sum(-1, keepdims=True)


def upsampled_digits(size):
  """The test digits (images 1500-1599) on the ``size`` x ``size`` grid (nearest pixel)."""
  img = digits_histograms().reshape(-1, 8, 8)[1500:1600]
  idx = (np.arange(size) * 8) // size
  h = img[:, idx][:, :, idx].reshape(len(img), size * size)
  h = h / h.sum(-1, keepdims=True)
  return jnp.asarray(h[:50]), jnp.asarray(h[50:])


def family(name, size):
  if name == "fields":
    return grid(size), None, (field_histograms(jax.random.PRNGKey(11), 50, size),
                              field_histograms(jax.random.PRNGKey(12), 50, size))
  if name == "digits-grid":
    return grid(size), None, upsampled_digits(size)
  if name == "rings":
    return grid(size), None, (rings_histograms(jax.random.PRNGKey(7), 50, size),
                              rings_histograms(jax.random.PRNGKey(8), 50, size))
  if name == "digits":
    h = jnp.asarray(digits_histograms())
    perm = np.random.default_rng(0).permutation(len(h))
    train, test = h[perm[:1500]], h[perm[1500:]]

    def pairs(k, n):
      i = jax.random.randint(k, (2, n), 0, train.shape[0])
      return train[i[0]], train[i[1]]
    return grid(8), pairs, (test[:50], test[50:100])
  pairs = lambda k, n: (gaussian_mixture_histograms(k, n, size),
                        gaussian_mixture_histograms(jax.random.fold_in(k, 1), n, size))
  return grid(size), pairs, pairs(jax.random.PRNGKey(10 ** 6), 50)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--families", nargs="+", default=["digits", "mixtures"])
  p.add_argument("--size", type=int, default=28)
  p.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.003])
  p.add_argument("--steps", type=int, default=8000)
  p.add_argument("--mixture-steps", type=int, default=1500)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
  p.add_argument("--no-ott", action="store_true")
  p.add_argument("--base", default="multiscale", help="fit_meta's base")
  p.add_argument("--unseen", nargs="*", default=[],
                 help="families never trained on, tested with each mixtures model (same grid)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = p.parse_args()
  rows = []
  for fam in args.families:
    x, pairs, (ta, tb) = family(fam, args.size)
    steps = args.steps if fam == "digits" else args.mixture_steps
    for eps in args.eps:
      t0 = time.perf_counter()
      ours = fit_meta(pairs, x, eps, steps=steps, batch_size=args.batch, hidden=tuple(args.hidden),
                      base=args.base)
      train_s = time.perf_counter() - t0
      starts = _starts(x, ta, tb, eps, ours)
      ott_s = None
      if not args.no_ott:
        t0 = time.perf_counter()
        ott_pred = train_ott(pairs, x, eps, steps, args.batch, tuple(args.hidden))
        ott_s = time.perf_counter() - t0
        starts["meta (ott-jax)"] = lambda i: ott_pred(ta[i], tb[i])
      tests = [(fam, ta, tb, starts)]
      for other in args.unseen if fam != "digits" else []:
        _, _, (ua, ub) = family(other, args.size)
        tests.append((f"{other} (unseen)", ua, ub, _starts(x, ua, ub, eps, ours)))
      for tname, sa, sb, tstarts in tests:  # not ta, tb: the next eps tests them again
        rows += _evaluate(tname, fam, x, sa, sb, eps, tstarts, steps, train_s, ott_s)
  _report(rows, args)


def _starts(x, ta, tb, eps, model):
  """Each start as ``start(i) -> f`` for test pair ``i``, computed when called (so the timed
  solves include the prediction)."""
  return {"zeros": lambda i: None,
          "gaussian": lambda i: gaussian_init(x, ta[i], tb[i]),
          "multiscale (no network)": lambda i: multiscale_init(x, ta[i], tb[i], eps),
          "meta (ours)": lambda i: model.predict(ta[i], tb[i])[0]}


def _evaluate(tname, fam, x, ta, tb, eps, starts, steps, train_s, ott_s):
  rows, zero_its = [], None
  for name, start in list(starts.items()) + [("meta (ours, unchecked)", starts["meta (ours)"])]:
    check = name != "meta (ours, unchecked)"
    its = np.array([iterations(x, ta[i], tb[i], eps, start(i), check) for i in range(len(ta))])
    if name == "zeros":
      zero_its = its
    slower = (its > zero_its + 1).mean(0).tolist()  # share of pairs slower than zeros by > 1
    secs = [float(np.median([seconds(x, ta[i], tb[i], eps, lambda: start(i), t, check)
                             for i in range(0, len(ta), 5)])) for t in THRESHOLDS]
    row = {"family": tname, "trained_on": fam, "n": int(x.shape[0]), "eps": eps,
           "start": name, "iters_median": np.median(its, 0).tolist(),
           "iters_mean": its.mean(0).tolist(), "slower_than_zeros": slower,
           "seconds_median": secs, "train_steps": steps,
           "train_s": {"meta (ours)": train_s, "meta (ott-jax)": ott_s}.get(name)}
    rows.append(row)
    print(json.dumps(row), flush=True)
  return rows


def _report(rows, args):
  print(f"\n{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}; held-out pairs: "
        f"50; iterations of our Sinkhorn (median) to L1 marginal error 1e-2 / 1e-3 / 1e-4")
  print(f"{'family':<18} {'n':>4} {'eps':>6} {'start':<22} {'it 1e-2':>8} {'it 1e-3':>8} "
        f"{'it 1e-4':>8} {'ms 1e-2':>8} {'ms 1e-4':>8}  slower than zeros by > 1 it (share)")
  for r in rows:
    i, s, w = r["iters_median"], r["seconds_median"], r["slower_than_zeros"]
    print(f"{r['family']:<18} {r['n']:>4} {r['eps']:>6} {r['start']:<22} {i[0]:8.1f} "
          f"{i[1]:8.1f} {i[2]:8.1f} {1000 * s[0]:8.2f} {1000 * s[2]:8.2f}  "
          f"{w[0]:.2f} / {w[1]:.2f} / {w[2]:.2f}")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "meta_ot.json"), "w") as fh:
    json.dump(rows, fh, indent=1)


if __name__ == "__main__":
  main()
