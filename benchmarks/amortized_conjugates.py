"""What amortization buys: conjugate-solver iterations and error from the prediction vs a cold start.

Trains a map 8 Gaussians -> N(0, I) (3000 steps), then on 1000 target points: mean / max L-BFGS
iterations to reach |grad f(x) - y| < tol from x = y (cold) and from the amortized prediction,
and the median error |x_k - x*| after k steps against a reference solved to 1e-5.
Run: ``python benchmarks/amortized_conjugates.py``.
"""

import jax
import jax.numpy as jnp

import neural_ot
from neural_ot import data
from neural_ot.conjugate import ConjugateSolver


def main():
  mp = neural_ot.fit_w2(data.eight_gaussians, data.SAMPLERS["normal"], steps=3000, progress=False)
  f = mp.trainer.potential_fn(mp.params["f"])
  y = jax.random.normal(jax.random.PRNGKey(3), (1000, 2))
  x_pred = mp.inverse(y, finetune_iters=0)
  ref = ConjugateSolver(tol=1e-5, max_iters=300)(f, y, x_pred)
  print(f"reference: max |grad f(x*) - y| = {float(ref.grad_norm.max()):.1e}")
  print(f"{'tol':>6} {'cold mean':>10} {'cold max':>9} {'pred mean':>10} {'pred max':>9}")
  for tol in (1e-2, 1e-3, 1e-4, 1e-5):
    solver = ConjugateSolver(tol=tol, max_iters=300)
    cold, warm = solver(f, y, y), solver(f, y, x_pred)
    print(f"{tol:6.0e} {float(cold.n_iters.mean()):10.2f} {int(cold.n_iters.max()):9d} "
          f"{float(warm.n_iters.mean()):10.2f} {int(warm.n_iters.max()):9d}")
  print(f"{'k':>3} {'cold |x_k - x*|':>16} {'pred |x_k - x*|':>16}")
  for k in (0, 1, 2, 3, 5, 10):
    solver = ConjugateSolver(tol=1e-12, max_iters=k)
    err = [float(jnp.median(jnp.linalg.norm(solver(f, y, x0).x - ref.x, axis=1)))
           for x0 in (y, x_pred)]
    print(f"{k:3d} {err[0]:16.2e} {err[1]:16.2e}")


if __name__ == "__main__":
  main()
