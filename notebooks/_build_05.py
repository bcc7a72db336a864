"""Writes notebooks/05_meta_ot.ipynb."""
from _nbwrite import write

cells = [
("md", """# 05 · Meta OT: learn to warm-start Sinkhorn

When the same kind of OT problem is solved again and again (here: pairs of handwritten digits as
histograms on the 8x8 grid), a network can learn to predict the entropic dual potential f from
(a, b), trained by maximising the dual objective over many pairs — no solver in the loop (Amos,
Cohen, Luise, Redko, ICML 2023). g follows by one exact c-transform, and the prediction
warm-starts `neural_ot.sinkhorn`. Set `NEURAL_OT_SMALL=1` for the test-suite sizes."""),
("code", """import os
import jax, jax.numpy as jnp, numpy as np
import matplotlib.pyplot as plt
import neural_ot
from neural_ot.meta import digits_histograms, fit_meta, gaussian_init, grid

SMALL = os.environ.get("NEURAL_OT_SMALL") == "1"
eps = 0.01
H = jnp.asarray(digits_histograms())          # (1797, 64), scikit-learn's digits
perm = np.random.default_rng(0).permutation(len(H))
train, test = H[perm[:1500]], H[perm[1500:]]
x = grid(8)

def pairs(key, n):
    i = jax.random.randint(key, (2, n), 0, train.shape[0])
    return train[i[0]], train[i[1]]

model = fit_meta(pairs, x, eps, steps=1500 if SMALL else 8000, batch_size=128, hidden=(512, 512))
print("dual value during training:", [round(h["dual"], 5) for h in model.history[::5]])"""),
("md", "## Marginal error against iterations, from three starts, on a held-out pair"),
("code", """a, b = test[0], test[1]
f_meta, _ = model.predict(a, b)
starts = {"zeros": None, "Gaussian initializer": gaussian_init(x, a, b), "Meta OT": f_meta}
fig, ax = plt.subplots(figsize=(6, 4))
iters = {}
for name, f0 in starts.items():
    out = neural_ot.sinkhorn(x, x, a, b, epsilon=eps, tol=1e-5, max_iters=2000,
                             init=None if f0 is None else (f0, None), record_errors=True)
    e = np.asarray(out.errors); e = e[e >= 0]
    iters[name] = int(np.argmax(e < 1e-2))
    ax.semilogy(e, label=f"{name} ({iters[name]} it to 1e-2)")
ax.set_xlabel("Sinkhorn iteration"); ax.set_ylabel("L1 marginal error"); ax.legend()
print(iters)
assert iters["Meta OT"] < iters["zeros"]"""),
("md", "## Predicted and converged plans"),
("code", """# tol=1 stops before the first update: the plan of the predicted (f, c-transform of f).
pred = neural_ot.sinkhorn(x, x, a, b, epsilon=eps, tol=1.0, max_iters=1, init=(f_meta, None))
conv = neural_ot.sinkhorn(x, x, a, b, epsilon=eps, tol=1e-5, max_iters=2000)
fig, axes = plt.subplots(1, 4, figsize=(14, 3.5))
axes[0].imshow(np.asarray(a).reshape(8, 8).T, cmap="gray_r"); axes[0].set_title("a")
axes[1].imshow(np.asarray(b).reshape(8, 8).T, cmap="gray_r"); axes[1].set_title("b")
axes[2].imshow(np.sqrt(np.asarray(pred.matrix)), cmap="magma"); axes[2].set_title("plan from the prediction")
axes[3].imshow(np.sqrt(np.asarray(conv.matrix)), cmap="magma"); axes[3].set_title("converged plan")
print("marginal error of the predicted plan:", float(pred.marginal_error))"""),
]
write(cells, "notebooks/05_meta_ot.ipynb")
