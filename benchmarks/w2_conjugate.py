"""How exact is the fine-tuned conjugate during training, and how good is the predictor?

Trains ``fit_w2`` (defaults plus the given options) for ``--steps`` on a W2 benchmark pair,
then, on 256 fresh target samples in the map's standardised frame, solves the conjugate from
the predictor's argmax to ``|grad| < 1e-7`` (300 L-BFGS steps) as the reference and prints, for
budgets of 1-30 L-BFGS steps at the training tolerance, the gradient norms and the RMS distance
to the reference argmax; and the predictor's RMS error along training (``pred_error``).

Run: ``python benchmarks/w2_conjugate.py --dim 8 --steps 3000 [--option predictor_lr_factor=0.1]``
"""

import argparse
import ast

import jax
import jax.numpy as jnp

from neural_ot.conjugate import ConjugateSolver
from neural_ot.w2 import fit_w2
from neural_ot.w2bench import load_pair


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dim", type=int, default=8)
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--option", action="append", default=[], help="key=value (a Python literal)")
  args = p.parse_args()
  opts = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in args.option)}
  pair = load_pair(args.dim)
  mp = fit_w2(pair.sample_source, pair.sample_target, steps=args.steps, progress=False, **opts)
  tr = mp.trainer
  y = mp.frame.to_target(pair.sample_target(jax.random.PRNGKey(5), 256))
  f = tr.potential_fn(mp.params["f"])
  x_hat = tr.predict(mp.params["g"], y)
  ref = ConjugateSolver(tol=1e-7, max_iters=300)(f, y, x_hat)
  rms = lambda a: float(jnp.sqrt(jnp.mean(jnp.sum((a - ref.x) ** 2, -1))))
  print(f"D = {args.dim}, {args.steps} steps, options {opts}: reference |grad| max "
        f"{float(ref.grad_norm.max()):.2e}; predictor RMS error {rms(x_hat):.3f}")
  print("| L-BFGS steps | mean steps taken | median / max |grad| | RMS distance to reference |")
  print("|---|---|---|---|")
  for k in (1, 2, 3, 5, 10, 15, 20, 30):
    r = ConjugateSolver(tol=tr.finetune_tol, max_iters=k)(f, y, x_hat)
    print(f"| {k} | {float(r.n_iters.mean()):.2f} | {float(jnp.median(r.grad_norm)):.2e} / "
          f"{float(r.grad_norm.max()):.2e} | {rms(r.x):.4f} |")
  hist = [(h["step"], h["pred_error"]) for h in mp.history if "pred_error" in h]
  print("predictor RMS error along training:",
        ", ".join(f"{s}: {e:.2f}" for s, e in hist[::max(len(hist) // 8, 1)]))


if __name__ == "__main__":
  main()
