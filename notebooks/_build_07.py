"""Writes notebooks/07_cost_maps.ipynb."""
from _nbwrite import write

cells = [
("md", """# 07 · Maps for non-quadratic costs

`neural_ot.fit_map(source, target, cost=...)` learns the optimal map for any translation-invariant
cost `c(x, y) = h(x - y)` with strictly convex `h`: the map is `T(x) = x - grad h*(grad f(x))`
for the dual potential `f` (Gangbo and McCann). Here the **elastic** cost
`h(z) = 0.5 |z|^2 + gamma |z|_1` (`neural_ot.ElasticL1(gamma)`): `grad h*` is soft-thresholding,
so the optimal displacement is *sparse*, and a map says which coordinates a change touches
(Cuturi et al. 2023, "Monge, Bregman and Occam"). The W2 map moves every coordinate a little.
Set `NEURAL_OT_SMALL=1` for the test-suite sizes."""),
("code", """import os
import numpy as np
import jax, jax.numpy as jnp
import matplotlib.pyplot as plt
import neural_ot
from neural_ot.w2bench import baselines, evaluate
from neural_ot.w2bench.cost_families import cost_family_pair

SMALL = os.environ.get("NEURAL_OT_SMALL") == "1"
rng = np.random.default_rng(0)"""),
("md", """## A pair whose optimal map is known

`cost_family_pair("elastic-box", 8)` is a uniform box pushed through
`T(x) = x - soft(grad phi(x), gamma)` with `||D^2 phi|| < 1`, which makes `T` the optimal map for
the elastic cost (the proof is in `neural_ot.w2bench.cost_families`). `phi` depends on half of
the coordinates only: the others never move."""),
("code", """pair = cost_family_pair("elastic-box", 8)
cost = pair.extras["cost"]
print(cost, "active coordinates:", pair.extras["active"])
steps = 800 if SMALL else 4000
elastic = neural_ot.fit_map(pair.sample_source, pair.sample_target, cost=cost, steps=steps,
                            progress=False)
w2 = neural_ot.fit_w2(pair.sample_source, pair.sample_target, steps=steps, progress=False)
for name, m in [("elastic fit_map", elastic), ("W2 fit_w2", w2)]:
    r = evaluate(pair, m.transport, m.inverse)
    print(f"{name:16s} L2-UVP forward {r['uvp_fwd']:.3f} %, inverse {r['uvp_inv']:.3f} %")
g = evaluate(pair, *baselines(pair)["linear"])
print(f"{'Gaussian map':16s} L2-UVP forward {g['uvp_fwd']:.3f} %, inverse {g['uvp_inv']:.3f} %")"""),
("md", """The W2 map is the optimal map for another cost, so it is measured against a map it does
not try to learn; what matters is *how* each one moves points. The mean absolute displacement per
coordinate, and the share of points whose coordinate moves by more than 0.01:"""),
("code", """x, y = pair.pairs(jax.random.PRNGKey(1), 4000)
disp = {"true map": np.asarray(y - x),
        "elastic fit_map": np.asarray(elastic.transport(x) - x),
        "W2 fit_w2": np.asarray(w2.transport(x) - x)}
fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
width = 0.27
for k, (name, d) in enumerate(disp.items()):
    idx = np.arange(8) + (k - 1) * width
    axes[0].bar(idx, np.abs(d).mean(0), width, label=name)
    axes[1].bar(idx, (np.abs(d) > 0.01).mean(0), width, label=name)
axes[0].set_title("mean |displacement| per coordinate")
axes[1].set_title("share of points moved (> 0.01) per coordinate")
for ax in axes:
    ax.set_xlabel("coordinate"); ax.set_xticks(range(8))
axes[0].legend(fontsize=8)
plt.tight_layout()
moved = {k: float((np.abs(d) > 0.01).mean()) for k, d in disp.items()}
print({k: round(v, 3) for k, v in moved.items()})
assert moved["elastic fit_map"] < 0.8 * moved["W2 fit_w2"]  # the elastic map moves fewer"""),
("md", """## The entropic map: a strong non-neural baseline

`neural_ot.entropic_map(out, x)` extends a Sinkhorn solution with the same cost to new points
(`T_eps(x) = x - grad h*(grad f_eps(x))`). It needs no training, but its accuracy is bounded by
the blur `epsilon` and the sample size."""),
("code", """xs = pair.sample_source(jax.random.PRNGKey(2), 2048)
ys = pair.sample_target(jax.random.PRNGKey(3), 2048)
out = neural_ot.sinkhorn(xs, ys, epsilon=0.05, cost=cost, tol=1e-3)
ent = evaluate(pair, lambda p: neural_ot.entropic_map(out, p),
               lambda p: neural_ot.entropic_map(out, p, forward=False))
print(f"entropic map (n = 2048, eps = 0.05): L2-UVP forward {ent['uvp_fwd']:.3f} %, "
      f"inverse {ent['uvp_inv']:.3f} %")"""),
("md", """Other costs: `neural_ot.PNorm(2, p)` for `|z|^p` with `p > 1` (closed-form `grad h*`),
`neural_ot.Mahalanobis(A)`, and `neural_ot.TranslationInvariant(h)` for your own strictly convex
`h` (`grad h*` by a batched numerical solve). `fit_map(..., cost=neural_ot.SqEuclidean())` is
`fit_w2`. The side-by-side with ott-jax's `ExpectileNeuralDual` is `benchmarks/costs.py`
(`benchmarks/RESULTS.md`, "Maps for non-quadratic costs")."""),
]
write(cells, "notebooks/07_cost_maps.ipynb")
