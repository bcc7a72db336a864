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
("md", """## Point clouds of any sizes

Most users have two weighted point clouds rather than histograms on one grid. Without any
training, `multiscale_points_init` bins each cloud into grid cells, solves a pyramid of coarser
problems from coarse to fine (each level started from the one below, solved at a blurrier
epsilon where its cells are too wide for the problem's) and extends the finest level's
potential to every point. Where the cells cannot resolve epsilon (points farther apart than
about sqrt(eps), as in high dimension at small eps) it returns the Gaussian start instead. A
`fit_meta_points` model (a set network over landmarks of both clouds) predicts the start of the
pyramid's coarsest level, or the whole start where the pyramid does not apply."""),
("code", """import time
from neural_ot.meta import fit_meta_points, gaussian_potential, multiscale_points_init

def blobs(key, n, d=2):
    k1, k2, k3 = jax.random.split(key, 3)
    centres = 2.0 * jax.random.normal(k1, (3, d))
    comp = jax.random.randint(k2, (n,), 0, 3)
    return centres[comp] + 0.5 * jax.random.normal(k3, (n, d))

def ring(key, n):
    k1, k2 = jax.random.split(key)
    t = jax.random.uniform(k1, (n,), maxval=2 * np.pi)
    r = 2.0 + 0.1 * jax.random.normal(k2, (n,))
    return jnp.stack([r * jnp.cos(t), r * jnp.sin(t)], 1)

def train_pairs(key, k):  # small clouds of random blobs; tested below on other shapes and sizes
    kx, ky = jax.random.split(key)
    x = jax.vmap(lambda kk: blobs(kk, 256))(jax.random.split(kx, k))
    y = jax.vmap(lambda kk: blobs(kk, 300))(jax.random.split(ky, k))
    return x, jnp.ones((k, 256)), y, jnp.ones((k, 300))

meta = fit_meta_points(train_pairs, (0.005, 0.05), steps=200 if SMALL else 2000, progress=False)

x, y = ring(jax.random.PRNGKey(1), 3000), blobs(jax.random.PRNGKey(2), 2500)
mean_cost = float(jnp.mean(jnp.sum(x * x, 1)) + jnp.mean(jnp.sum(y * y, 1))
                  - 2 * jnp.mean(x, 0) @ jnp.mean(y, 0))
eps_pc = 0.01 * mean_cost
a_pc, b_pc = jnp.full(3000, 1 / 3000), jnp.full(2500, 1 / 2500)
starts = {
    "zeros": lambda: None,
    "Gaussian start": lambda: (gaussian_potential(x, a_pc, y, b_pc), None),
    "multiscale (no training)": lambda: multiscale_points_init(x, y, epsilon=eps_pc),
    "Meta OT (network + pyramid)": lambda: meta.predict(x, y, epsilon=eps_pc),
}
fig, ax = plt.subplots(figsize=(6, 4))
iters_pc = {}
for name, make in starts.items():
    make()  # compile once; the timing below is a second call on the same shapes
    t = time.perf_counter()
    init = make()
    out = neural_ot.sinkhorn(x, y, epsilon=eps_pc, tol=1e-3, max_iters=2000, init=init)
    out.f.block_until_ready()
    seconds = time.perf_counter() - t
    trace = neural_ot.sinkhorn(x, y, epsilon=eps_pc, tol=1e-4, max_iters=2000, init=init,
                               record_errors=True)
    e = np.asarray(trace.errors); e = e[e >= 0]
    iters_pc[name] = int(out.n_iters)
    ax.semilogy(e, label=f"{name}: {iters_pc[name]} it to 1e-3, {seconds:.2f} s")
ax.set_xlabel("Sinkhorn iteration"); ax.set_ylabel("L1 marginal error"); ax.legend(fontsize=8)
ax.set_title("a ring (3,000 points) to three blobs (2,500), eps = 0.01 x mean cost")
print(iters_pc)
assert iters_pc["multiscale (no training)"] < iters_pc["zeros"] / 3"""),
]
write(cells, "notebooks/05_meta_ot.ipynb")
