"""Writes notebooks/01_sinkhorn.ipynb (kept as code so diffs stay readable)."""
from _nbwrite import write

cells = [
("md", """# 01 · Entropic optimal transport with `neural_ot.sinkhorn`

This tutorial solves entropic OT between two point clouds, shows what epsilon does to the
plan, and moves one cloud onto another by gradient descent on the differentiable Sinkhorn
divergence. Set `NEURAL_OT_SMALL=1` for the small sizes the test-suite uses."""),
("code", """import os
import jax, jax.numpy as jnp, numpy as np
import matplotlib.pyplot as plt
import neural_ot
from neural_ot import data

SMALL = os.environ.get("NEURAL_OT_SMALL") == "1"
n = 150 if SMALL else 800
kx, ky = jax.random.split(jax.random.PRNGKey(0))
x = data.eight_gaussians(kx, n)
y = data.moons(ky, n)"""),
("md", """## Solve
`reg_ot_cost` is the entropic cost (dual value), `primal_cost` is ⟨P, C⟩; the debiased
`sinkhorn_divergence` is the best W2² estimate at a fixed epsilon (cost |x − y|²)."""),
("code", """out = neural_ot.sinkhorn(x, y, epsilon=0.01, relative_epsilon=True, tol=1e-3)
print(f"iterations {int(out.n_iters)}, converged {bool(out.converged)}, error {float(out.marginal_error):.2e}")
print(f"reg_ot_cost {float(out.reg_ot_cost):.4f}  primal_cost {float(out.primal_cost):.4f}")
print("divergence", float(neural_ot.sinkhorn_divergence(x, y, epsilon=0.01, relative_epsilon=True)))
r, c = out.marginals
assert float(jnp.abs(r - out.a).sum() + jnp.abs(c - out.b).sum()) < 2e-3"""),
("md", "## The effect of epsilon: larger epsilon blurs the plan"),
("code", """order_x = np.argsort(np.arctan2(x[:, 1], x[:, 0])); order_y = np.argsort(np.arctan2(y[:, 1], y[:, 0]))
fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
for ax, eps in zip(axes, [0.002, 0.02, 0.2]):
    o = neural_ot.sinkhorn(x, y, epsilon=eps, relative_epsilon=True, tol=1e-3, max_iters=5000)
    P = np.asarray(o.matrix)[order_x][:, order_y]
    ax.imshow(np.sqrt(P * n), cmap="magma", aspect="auto")
    ax.set_title(f"eps = {eps} x mean cost\\n{int(o.n_iters)} iterations, <P,C> = {float(o.primal_cost):.2f}")
    ax.set_xlabel("target point (sorted by angle)"); ax.set_ylabel("source point (sorted by angle)")
fig.tight_layout()"""),
("md", "## Barycentric map: where each source point goes on average"),
("code", """T = np.asarray(out.barycentric_map())
fig, ax = plt.subplots(figsize=(5, 5))
ax.scatter(*np.asarray(x).T, s=5, label="x"); ax.scatter(*np.asarray(y).T, s=5, label="y")
for i in range(0, n, max(1, n // 100)):
    ax.annotate("", T[i], np.asarray(x)[i], arrowprops=dict(arrowstyle="->", lw=0.5, color="0.4"))
ax.legend(); ax.set_aspect("equal")"""),
("md", """## Gradient flow through the divergence
`sinkhorn_divergence` is differentiable (implicit differentiation by default). Descending it in
the positions of `z` moves the cloud onto `y`."""),
("code", """loss_and_grad = jax.jit(jax.value_and_grad(
    lambda z: neural_ot.sinkhorn_divergence(z, y, epsilon=0.01, relative_epsilon=True)))
z = x
steps = 15 if SMALL else 60
history = []
for _ in range(steps):
    loss, grad = loss_and_grad(z)
    z = z - 0.5 * n * grad   # gradient w.r.t. a point carries its weight 1/n
    history.append(float(loss))
print(f"divergence {history[0]:.3f} -> {history[-1]:.4f}")
assert history[-1] < 0.2 * history[0]
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
axes[0].semilogy(history); axes[0].set_xlabel("step"); axes[0].set_ylabel("S_eps(z, y)")
axes[1].scatter(*np.asarray(y).T, s=5, label="y"); axes[1].scatter(*np.asarray(z).T, s=5, label="z after flow")
axes[1].legend(); axes[1].set_aspect("equal")"""),
]
write(cells, "notebooks/01_sinkhorn.ipynb")
