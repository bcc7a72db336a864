"""Writes notebooks/02_neural_maps.ipynb."""
from _nbwrite import write

cells = [
("md", """# 02 · Learning Wasserstein-2 maps with `neural_ot.fit_w2`

By Brenier's theorem the optimal map for the cost |x − y|² is the gradient of a convex
function f. `fit_w2` learns f (an input-convex network) from samples by minimising the dual
E f(x) + E f*(y); the conjugate's argmax (the inverse map) is predicted by a second network and
fine-tuned by a few L-BFGS steps. Set `NEURAL_OT_SMALL=1` for the test-suite sizes."""),
("code", """import os, tempfile
import jax, jax.numpy as jnp, numpy as np
import matplotlib.pyplot as plt
import neural_ot
from neural_ot import data

SMALL = os.environ.get("NEURAL_OT_SMALL") == "1"
steps = 300 if SMALL else 4000"""),
("md", """## Moons to circles
Sources and targets can be arrays `(n, d)` or samplers `sample(key, n)`; here, samplers."""),
("code", """mp = neural_ot.fit_w2(data.moons, data.circles, steps=steps, batch_size=256, progress=False)
x = data.moons(jax.random.PRNGKey(1), 1500)
y = data.circles(jax.random.PRNGKey(2), 1500)
tx, iy = mp.transport(x), mp.inverse(y)
kw = dict(epsilon=0.002, relative_epsilon=True)
before = float(neural_ot.sinkhorn_divergence(x, y, **kw))
after = float(neural_ot.sinkhorn_divergence(tx, y, **kw))
print(f"W2^2 (dual estimate) {mp.w2:.3f};  S_eps(x, y) {before:.3f} -> S_eps(T(x), y) {after:.4f}")
assert after < 0.5 * before"""),
("code", """fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
axes[0].scatter(*np.asarray(y).T, s=3, c="tab:orange", label="target y")
axes[0].scatter(*np.asarray(tx).T, s=3, c="tab:green", label="T(x)")
axes[0].set_title("forward: T(x) = grad f(x)")
idx = np.arange(0, len(x), 8)
d = np.asarray(tx - x)
axes[1].quiver(*np.asarray(x[idx]).T, *d[idx].T, angles="xy", scale_units="xy", scale=1, width=0.003,
               label="displacement T(x) - x")
axes[1].set_title("displacements x -> T(x)")
axes[2].scatter(*np.asarray(x).T, s=3, c="tab:blue", label="source x")
axes[2].scatter(*np.asarray(iy).T, s=3, c="tab:purple", label="T^-1(y)")
axes[2].set_title("inverse: argmax_x <x, y> - f(x)")
for ax in axes:
    ax.set_aspect("equal"); ax.legend(loc="upper right", fontsize=7)
    ax.set_xlabel("first coordinate"); ax.set_ylabel("second coordinate")
fig.tight_layout()"""),
("md", """## A warped grid
The map is the gradient of a convex function, so it never folds: grid lines do not cross."""),
("code", """t = np.linspace(-2.5, 2.5, 200)
fig, ax = plt.subplots(figsize=(5, 5))
for v in np.linspace(-2.5, 2.5, 21):
    for pts in (np.stack([np.full_like(t, v), t], 1), np.stack([t, np.full_like(t, v)], 1)):
        tp = np.asarray(mp.transport(pts))
        ax.plot(tp[:, 0], tp[:, 1], lw=0.6, c="0.3")
ax.set_title("T applied to a grid"); ax.set_aspect("equal")"""),
("md", """## Forward and inverse agree
`inverse(transport(x))` returns x up to the conjugate solver's tolerance (where the map is
strictly monotone)."""),
("code", """back = mp.inverse(tx, tol=1e-5, finetune_iters=100)
err = float(jnp.median(jnp.linalg.norm(back - x, axis=1)))
print("median |T^-1(T(x)) - x| =", err)
assert err < 0.05"""),
("md", """## Save, load, resume
`save` writes one file atomically; `neural_ot.load_map` reads it back. With
`checkpoint_dir=...`, an interrupted `fit_w2` continues from its last checkpoint."""),
("code", """with tempfile.TemporaryDirectory() as tmp:
    mp.save(f"{tmp}/map.msgpack")
    back = neural_ot.load_map(f"{tmp}/map.msgpack")
np.testing.assert_array_equal(back.transport(x[:10]), mp.transport(x[:10]))
print("round trip ok; W2^2 =", back.w2)"""),
]
write(cells, "notebooks/02_neural_maps.ipynb")
