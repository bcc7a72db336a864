"""Writes notebooks/06_conditional_maps.ipynb."""
from _nbwrite import write

cells = [
("md", """# 06 · Conditional and meta W2 maps

One model for many OT problems: `fit_conditional_w2` learns a potential `f(x; c)` that is
convex in `x` for every context `c` (a partially input-convex network), so
`T(x; c) = grad_x f(x; c)` is an optimal map under each condition. Contexts can be labels, real
vectors (a dose) or a pair of sample sets (a *meta* map: the map for a new pair is predicted
without training, then fine-tuned in a few steps). Set `NEURAL_OT_SMALL=1` for the
test-suite sizes."""),
("code", """import os
import numpy as np
import jax, jax.numpy as jnp
import matplotlib.pyplot as plt
import neural_ot

SMALL = os.environ.get("NEURAL_OT_SMALL") == "1"
rng = np.random.default_rng(0)"""),
("md", """## Dose response

A population of cells in three clusters (here in 2-D, so we can look at it). As a scalar dose
`t` grows, the population rotates, drifts and one cluster splits in two. We observe the
population at doses 0, 0.25, 0.5, 0.75 and 1 only (unpaired samples, as in single-cell
perturbation data) and ask for the map at any dose."""),
("code", """centres = np.array([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]])

def cells(n):
    lab = rng.integers(0, 3, n)
    return centres[lab] + 0.4 * rng.normal(size=(n, 2)), lab

def treated(t, n):
    x, lab = cells(n)
    th = t * np.pi / 3
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    y = x @ rot.T + t * np.array([1.0, 0.5])
    split = lab == 0
    y[split, 1] += 1.2 * t * np.where(rng.random(split.sum()) < 0.5, -1, 1)
    return y

doses = [0.0, 0.25, 0.5, 0.75, 1.0]
n = 1000 if SMALL else 4000
data = {t: (cells(n)[0], treated(t, n)) for t in doses}
dose_map = neural_ot.fit_conditional_w2(data, steps=1500 if SMALL else 4000, progress=False)
dose_map"""),
("code", """x_test, _ = cells(600)
show = [0.125, 0.375, 0.625, 0.875, 1.25]   # between the training doses, and beyond them
fig, axes = plt.subplots(1, len(show), figsize=(3.2 * len(show), 3.2), sharex=True, sharey=True)
for ax, t in zip(axes, show):
    y = treated(t, 600)
    tx = np.asarray(dose_map.transport(x_test, t))
    ax.scatter(*y.T, s=3, alpha=0.4, label="observed at this dose")
    ax.scatter(*tx.T, s=3, alpha=0.4, label="predicted T(x; t)")
    ax.set_title(f"dose {t}" + (" (beyond)" if t > 1 else ""))
axes[0].legend(loc="lower left", fontsize=7, markerscale=3)
plt.tight_layout()"""),
("md", """The map at a dose it never saw is a proper OT map: `f(.; t)` is convex for every `t`, and the
inverse map follows from the conjugate. A check on one held-out dose: the mapped cells and the
observed cells have the same mean and spread."""),
("code", """t = 0.625
tx, y = np.asarray(dose_map.transport(x_test, t)), treated(t, 600)
print("mean  mapped", tx.mean(0).round(2), " observed", y.mean(0).round(2))
print("std   mapped", tx.std(0).round(2), " observed", y.std(0).round(2))
back = np.asarray(dose_map.inverse(tx, t))
print("inverse(transport(x)) - x, RMS:", float(np.sqrt(np.mean(np.sum((back - x_test) ** 2, 1)))))
assert np.abs(tx.mean(0) - y.mean(0)).max() < 0.3"""),
("md", """## Meta maps for colour transfer

Colour transfer moves the palette of one image onto another: the OT map between the two sets of
pixel colours (points in RGB space). Instead of training one map per image pair, we train one
model on many pairs of image crops; the context of a pair is the pair itself
(`neural_ot.conditional.pair_features`: a permutation-invariant summary of both palettes).
For a new pair, `predict` gives a map in milliseconds and `finetune` improves it from there.
The photos ship with scikit-learn and matplotlib (no download)."""),
("code", """from sklearn.datasets import load_sample_images
from matplotlib import cbook

photos = [im / 255.0 for im in load_sample_images().images]
with cbook.get_sample_data("grace_hopper.jpg") as fh:
    photos.append(plt.imread(fh, format="jpg") / 255.0)

def crop(size=192):   # a 192 x 192 window, every third pixel: 64 x 64
    im = photos[rng.integers(len(photos))]
    i, j = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
    return im[i:i + size:3, j:j + size:3, :3].astype(np.float32)

def palette(img, k=1000):
    px = img.reshape(-1, 3)
    return px[rng.integers(0, len(px), k)]

crops = [crop() for _ in range(80 if SMALL else 200)]
pairs = [(palette(crops[rng.integers(len(crops))]), palette(crops[rng.integers(len(crops))]))
         for _ in range(60 if SMALL else 200)]
colour_map = neural_ot.fit_conditional_w2(pairs, steps=1000 if SMALL else 4000, progress=False,
                                         max_param_norm=1e9)
colour_map"""),
("code", """src, tgt = crop(), crop()                    # a new pair of crops
xs, ys = palette(src, 2000), palette(tgt, 2000)
import time
colour_map.predict((xs, ys))                 # the first call compiles the encoding
t0 = time.perf_counter(); predicted = colour_map.predict((xs, ys)); t_pred = time.perf_counter() - t0
tuned = colour_map.finetune(xs, ys, (xs, ys), steps=100 if SMALL else 300,
                             max_param_norm=1e9)
recolour = lambda m: np.clip(np.asarray(m.transport(src.reshape(-1, 3))).reshape(src.shape), 0, 1)
fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
for ax, im, title in zip(axes, [src, tgt, recolour(predicted), recolour(tuned)],
                         ["source crop", "palette from", f"predicted ({t_pred * 1e3:.0f} ms)",
                          "fine-tuned"]):
    ax.imshow(im); ax.set_title(title); ax.axis("off")
from neural_ot.w2 import dual_w2
print("W2^2 dual estimate, predicted:", round(dual_w2(predicted, xs, ys), 4),
      " fine-tuned:", round(dual_w2(tuned, xs, ys), 4))"""),
]
write(cells, "notebooks/06_conditional_maps.ipynb")
