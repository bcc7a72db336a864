"""Writes notebooks/03_amortized_conjugates.ipynb."""
from _nbwrite import write

cells = [
("md", """# 03 · What amortization and fine-tuning buy

Each training step needs the convex conjugate f*(y) = max_x ⟨x, y⟩ − f(x) for a batch of y.
Solving it from scratch every step is what makes neural dual solvers slow. Following Amos
(ICLR 2023), `fit_w2` trains a predictor x̂(y) of the argmax and fine-tunes it with a few
L-BFGS steps. Here we measure, on a trained map: iterations to reach a tolerance from the
prediction vs from a cold start, and the conjugate error after k steps. Set
`NEURAL_OT_SMALL=1` for the test-suite sizes."""),
("code", """import os
import jax, jax.numpy as jnp, numpy as np
import matplotlib.pyplot as plt
import neural_ot
from neural_ot import data
from neural_ot.conjugate import ConjugateSolver

SMALL = os.environ.get("NEURAL_OT_SMALL") == "1"
steps = 300 if SMALL else 3000
mp = neural_ot.fit_w2(data.eight_gaussians, data.SAMPLERS["normal"], steps=steps, progress=False)
# fit_w2 trains in a standardised frame (mp.frame); the conjugate problems live there.
f = mp.trainer.potential_fn(mp.params["f"])
y = mp.frame.astype(jnp.float32).to_target(data.SAMPLERS["normal"](jax.random.PRNGKey(3), 1000))
x_pred = mp.trainer.predict(mp.params["g"], y)    # the amortized prediction alone
ref = ConjugateSolver(tol=1e-5, max_iters=200)(f, y, x_pred)   # reference argmax
print("reference solve: max |grad f(x) - y| =", float(ref.grad_norm.max()))"""),
("md", """## Iterations to reach a tolerance"""),
("code", """rows = []
for tol in [1e-2, 1e-3, 1e-4]:
    s = ConjugateSolver(tol=tol, max_iters=200)
    cold = s(f, y, y)            # cold start: x = y (the identity map's inverse)
    warm = s(f, y, x_pred)
    rows.append((tol, float(cold.n_iters.mean()), float(warm.n_iters.mean())))
    print(f"tol {tol:.0e}: cold start {rows[-1][1]:5.2f} iterations, from the prediction {rows[-1][2]:5.2f}")
assert all(w < c for _, c, w in rows)"""),
("md", """## Conjugate error after k fine-tuning steps
Error = |x_k − x*| against the reference argmax, median over the batch."""),
("code", """ks = list(range(0, 11))
err = {"cold start (x = y)": [], "amortized prediction": []}
for k in ks:
    s = ConjugateSolver(tol=1e-12, max_iters=k)
    for name, x0 in (("cold start (x = y)", y), ("amortized prediction", x_pred)):
        xk = s(f, y, x0).x
        err[name].append(float(jnp.median(jnp.linalg.norm(xk - ref.x, axis=1))))
fig, ax = plt.subplots(figsize=(6, 4))
for name, e in err.items():
    ax.semilogy(ks, np.maximum(e, 1e-8), marker="o", label=name)
ax.set_xlabel("L-BFGS steps k"); ax.set_ylabel("median |x_k - x*|"); ax.legend()
ax.set_title("fine-tuning from the prediction")
print({n: [f"{v:.1e}" for v in e[:4]] for n, e in err.items()})
assert err["amortized prediction"][0] < err["cold start (x = y)"][0]"""),
("md", """## The three amortization losses
`regression` fits x̂ to the fine-tuned argmax, `objective` maximises ⟨x̂, y⟩ − f(x̂) directly,
`cycle` penalises |∇f(x̂) − y|². `finetune_iters=0` with `objective` is Makkuva et al.'s
min-max training (no solver in the loop)."""),
("code", """short = 150 if SMALL else 1500
for amort, k in [("regression", 10), ("objective", 10), ("cycle", 10), ("objective", 0)]:
    m = neural_ot.fit_w2(data.eight_gaussians, data.SAMPLERS["normal"], steps=short,
                         amortization=amort, finetune_iters=k, progress=False)
    h = m.history[-1]
    print(f"{amort:>10}, finetune_iters={k:2d}: W2^2 {m.w2:.3f}, prediction error {h['pred_error']:.2e}, "
          f"solver iterations/step {h['conj_iters']:.2f}")"""),
]
write(cells, "notebooks/03_amortized_conjugates.ipynb")
