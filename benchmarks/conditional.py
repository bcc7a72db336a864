"""Conditional W2 maps (issue 15): one model for a family of problems vs one map per problem.

``gaussian``: Gaussian pairs whose means and covariances depend smoothly on a context
``c in [-1, 1]^2`` (source ``N(0, S)`` fixed, target ``N(m(c), R(c) diag(exp(W c)) R(c)^T)``
with ``R(c)`` a rotation; closed-form maps). ``fit_conditional_w2`` trains on 16 contexts (and 64, ``--contexts``);
on 4 held-out contexts we score forward and inverse L2-UVP zero-shot, after 100 and 500
fine-tuning steps from the prediction, and against ``fit_w2`` trained from scratch on the
held-out context with the same number of steps as the conditional model, and with 2000.

``dose``: a single-cell-like family in ``--dose-dim`` dimensions: the source is a 3-cluster
Gaussian mixture; the target at dose ``t`` rotates two coordinates by ``t pi / 2``, shifts
all by ``t v`` and splits one cluster in two along a third axis (``+-t``). Trained on doses
0, 0.2, ..., 1.0; scored on held-out doses 0.1, 0.5, 0.9 (between) and 1.2 (beyond) by the
unbiased energy distance between the mapped source and fresh target samples, against
per-dose ``fit_w2`` maps with the same steps.

``colour``: a meta map for colour transfer (the context of a pair of palettes is the pair,
``pair_features``) trained on pairs of 64 x 64 crops of photographs that ship with
scikit-learn and matplotlib; on new pairs, the dual W2^2 estimate of the predicted map
relative to ``fit_w2`` run for 4000 steps on the pair, and the steps to reach 0.99 of it from
the prediction vs from scratch.

Run: ``python benchmarks/conditional.py [--parts gaussian dose colour] [--steps 2000]``; writes
``benchmarks/results/conditional.json`` and the "Conditional maps" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np
from scipy.linalg import expm

import neural_ot
from neural_ot import gaussian

HERE = os.path.dirname(os.path.abspath(__file__))


# -- Gaussian family ---------------------------------------------------------------------

def gaussian_family(dim, seed=0):
  rng = np.random.default_rng(seed)
  s_src = np.cov(rng.normal(size=(dim, 2 * dim))) + 0.5 * np.eye(dim)
  m_lin = rng.normal(size=(dim, 2))
  w_log = 0.6 * rng.normal(size=(dim, 2))
  skews = []
  for _ in range(2):
    a = rng.normal(size=(dim, dim)) * 0.4
    skews.append(a - a.T)

  def target(c):
    rot = expm(c[0] * skews[0] + c[1] * skews[1])
    cov = rot @ np.diag(np.exp(w_log @ c)) @ rot.T
    mean = m_lin @ c + 0.5 * np.sin(2 * c[0]) * np.ones(dim)
    return mean, cov
  return np.zeros(dim), s_src, target


def uvp_scores(fwd, inv, x, y, a, b):
  """Forward and inverse L2-UVP (%) of maps ``fwd``, ``inv`` against ``x -> A x + b``."""
  tx = x @ a.T + b
  ainv = np.linalg.inv(a)
  ty = (y - b) @ ainv.T
  var_q = np.mean(np.sum((tx - tx.mean(0)) ** 2, -1))
  var_p = np.mean(np.sum((x - x.mean(0)) ** 2, -1))
  f = 100 * np.mean(np.sum((np.asarray(fwd(x)) - tx) ** 2, -1)) / var_q
  i = 100 * np.mean(np.sum((np.asarray(inv(y)) - ty) ** 2, -1)) / var_p
  return float(f), float(i)


def run_gaussian(args):
  dim, n = args.dim, args.n
  rng = np.random.default_rng(1)
  m_src, s_src, target = gaussian_family(dim)
  l_src = np.linalg.cholesky(s_src)
  draw_src = lambda k: rng.normal(size=(k, dim)) @ l_src.T + m_src

  def draw_tgt(c, k):
    m, s = target(c)
    return rng.normal(size=(k, dim)) @ np.linalg.cholesky(s).T + m

  counts = sorted(args.contexts)
  train_c = rng.uniform(-1, 1, size=(max(counts), 2))
  test_c = rng.uniform(-0.8, 0.8, size=(4, 2))
  data = {tuple(c): (draw_src(n), draw_tgt(c, n)) for c in train_c}
  models, t_cond = {}, {}
  for count in counts:  # the first `count` training contexts
    t0 = time.perf_counter()
    models[count] = neural_ot.fit_conditional_w2(dict(list(data.items())[:count]),
                                                 steps=args.steps, progress=False)
    t_cond[count] = time.perf_counter() - t0
  cond = models[counts[0]]
  rows = []
  for c in test_c:
    x_te = draw_src(4096)
    m, s = target(c)
    a, b = (np.asarray(v, np.float64) for v in gaussian.gaussian_map(m_src, s_src, m, s))
    y_te = draw_tgt(c, 4096)
    x_tr, y_tr = draw_src(n), draw_tgt(c, n)
    row = {"c": c.tolist()}
    row["zero_shot"] = uvp_scores(lambda u: cond.transport(u, c), lambda v: cond.inverse(v, c),
                                  x_te, y_te, a, b)
    for count in counts[1:]:
      mc = models[count]
      row[f"zero_shot_{count}_contexts"] = uvp_scores(
          lambda u: mc.transport(u, c), lambda v: mc.inverse(v, c), x_te, y_te, a, b)
    for k in (100, 500):
      tuned = cond.finetune(x_tr, y_tr, c, steps=k)
      row[f"finetune_{k}"] = uvp_scores(tuned.transport, tuned.inverse, x_te, y_te, a, b)
    # one map per context from scratch: with the conditional model's steps split over its
    # training contexts (the same total), with all of them, and with 2000
    for k in sorted({max(1, args.steps // counts[0]), args.steps, 2000}):
      t0 = time.perf_counter()
      plain = neural_ot.fit_w2(x_tr, y_tr, steps=k, progress=False)
      row[f"scratch_{k}_seconds"] = time.perf_counter() - t0
      row[f"scratch_{k}"] = uvp_scores(plain.transport, plain.inverse, x_te, y_te, a, b)
    rows.append(row)
    print(json.dumps(row), flush=True)
  return {"dim": dim, "n_per_context": n, "steps": args.steps, "train_contexts": counts,
          "conditional_seconds": t_cond, "rows": rows}


# -- Dose response -----------------------------------------------------------------------

def dose_family(dim, seed=0):
  rng = np.random.default_rng(seed)
  centres = 2.0 * rng.normal(size=(3, dim))
  shift = rng.normal(size=dim)
  shift /= np.linalg.norm(shift)

  def source(k, r):
    lab = r.integers(0, 3, size=k)
    return centres[lab] + 0.5 * r.normal(size=(k, dim)), lab

  def target(t, k, r):
    x, lab = source(k, r)
    th = t * np.pi / 2
    y = x.copy()
    y[:, 0] = np.cos(th) * x[:, 0] - np.sin(th) * x[:, 1]
    y[:, 1] = np.sin(th) * x[:, 0] + np.cos(th) * x[:, 1]
    y += 1.5 * t * shift
    split = (lab == 0)
    y[split, 2] += t * 1.5 * np.where(r.random(int(split.sum())) < 0.5, -1.0, 1.0)
    return y
  return source, target


@jax.jit
def _mean_dist(a, b):
  return jax.numpy.mean(jax.numpy.sqrt(jax.numpy.maximum(
      jax.numpy.sum(a * a, 1)[:, None] + jax.numpy.sum(b * b, 1)[None] - 2 * a @ b.T, 1e-12)))


def energy(a, b):
  """Unbiased energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (each set split in two
  halves for the within-set terms, so its expectation is 0 for equal distributions)."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  ha, hb = len(a) // 2, len(b) // 2
  return float(2 * _mean_dist(a, b) - _mean_dist(a[:ha], a[ha:]) - _mean_dist(b[:hb], b[hb:]))


def run_dose(args):
  dim, n = args.dose_dim, args.n
  rng = np.random.default_rng(2)
  source, target = dose_family(dim)
  train_t = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
  data = {t: (source(n, rng)[0], target(t, n, rng)) for t in train_t}
  t0 = time.perf_counter()
  cond = neural_ot.fit_conditional_w2(data, steps=args.steps, progress=False)
  t_cond = time.perf_counter() - t0
  rows = []
  for t in (0.1, 0.5, 0.9, 1.2):
    x_te, y_te = source(10000, rng)[0], target(t, 10000, rng)
    before = energy(x_te, y_te)
    floor = energy(target(t, 10000, rng), y_te)  # two samples of the target: the noise level
    plain = neural_ot.fit_w2(source(n, rng)[0], target(t, n, rng), steps=args.steps,
                             progress=False)
    row = {"dose": t, "unmapped": before, "floor": floor,
           "conditional": energy(cond.transport(x_te, t), y_te),
           "per_dose": energy(plain.transport(x_te), y_te)}
    row["ratio"] = row["conditional"] / row["per_dose"]
    rows.append(row)
    print(json.dumps(row), flush=True)
  return {"dim": dim, "n_per_dose": n, "steps": args.steps, "train_doses": train_t,
          "conditional_seconds": t_cond, "rows": rows}


# -- Meta maps for colour transfer --------------------------------------------------------

def photos():
  """Photographs that ship inside installed packages: scikit-learn's china.jpg and
  flower.jpg, matplotlib's grace_hopper.jpg (RGB in [0, 1])."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib import cbook  # pylint: disable=import-outside-toplevel
  from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
  out = [im / 255.0 for im in load_sample_images().images]
  with cbook.get_sample_data("grace_hopper.jpg") as fh:
    out.append(plt.imread(fh, format="jpg") / 255.0)
  return [np.asarray(im[..., :3], np.float32) for im in out]


def run_colour(args):
  from neural_ot.w2 import dual_w2  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  ims = photos()

  def crop(size=192):
    im = ims[rng.integers(len(ims))]
    i, j = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
    return im[i:i + size:3, j:j + size:3].reshape(-1, 3)

  def palette(px, k):
    return px[rng.integers(0, len(px), k)]
  train_crops = [crop() for _ in range(200)]
  pairs = [(palette(train_crops[rng.integers(200)], 1000), palette(train_crops[rng.integers(200)], 1000))
           for _ in range(args.colour_pairs)]
  t0 = time.perf_counter()
  meta = neural_ot.fit_conditional_w2(pairs, steps=args.steps, progress=False)
  t_meta = time.perf_counter() - t0
  rows = []
  for _ in range(args.colour_test):
    src, tgt = crop(), crop()  # new crops (random windows, none of the training ones)
    xs, ys = palette(src, 2000), palette(tgt, 2000)
    xe, ye = palette(src, 2000), palette(tgt, 2000)  # evaluation samples
    conv = neural_ot.fit_w2(xs, ys, steps=4000, progress=False)
    best = dual_w2(conv, xe, ye)
    meta.predict((xs, ys))  # compile the encoding once; time the second call
    t0 = time.perf_counter()
    pred = meta.predict((xs, ys))
    t_pred = time.perf_counter() - t0
    gauss = neural_ot.fit_w2(xs, ys, steps=1, learning_rate=1e-12, progress=False)
    row = {"converged_w2": best, "predicted": dual_w2(pred, xe, ye) / best,
           "gaussian_init": dual_w2(gauss, xe, ye) / best, "predict_ms": 1e3 * t_pred}

    def steps_to(fit, budget):
      hits = []
      fit(lambda mp, step: hits.append((step, dual_w2(mp, xe, ye) / best)) or {}, budget)
      reach = [s_ for s_, v in hits if v >= 0.99]
      return (reach[0] if reach else None), hits
    row["steps_from_prediction"], _ = steps_to(
        lambda ev, k: meta.finetune(xs, ys, (xs, ys), steps=k, eval_fn=ev, eval_every=25,
                                    log_every=25), 1000)
    row["steps_from_scratch"], _ = steps_to(
        lambda ev, k: neural_ot.fit_w2(xs, ys, steps=k, eval_fn=ev, eval_every=25, log_every=25,
                                       progress=False), 4000)
    rows.append(row)
    print(json.dumps(row), flush=True)
  return {"pairs": args.colour_pairs, "steps": args.steps, "meta_seconds": t_meta, "rows": rows}


# -- Report ------------------------------------------------------------------------------

def report(res) -> str:
  lines = ["## Conditional maps (`benchmarks/conditional.py`)", "",
           f"Machine: {platform.machine()} CPU, jax {jax.__version__}. "
           "L2-UVP in %, forward / inverse, on 4096 fresh samples per held-out context.", ""]
  if "gaussian" in res:
    g = res["gaussian"]
    extra = sorted((k for k in g["rows"][0] if k.endswith("_contexts")),
                   key=lambda k: int(k.split("_")[2]))
    keys = ["zero_shot"] + extra + ["finetune_100", "finetune_500"] + sorted(
        (k for k in g["rows"][0] if k.startswith("scratch_") and not k.endswith("seconds")),
        key=lambda k: int(k.split("_")[1]))
    c0 = g["train_contexts"][0]
    secs = ", ".join(f"{k} contexts {v:.0f} s" for k, v in g["conditional_seconds"].items())
    lines += [f"### Gaussian family, D = {g['dim']}, {g['n_per_context']} samples per context, "
              f"conditional models {g['steps']} steps ({secs})", "",
              f"'zero shot' is the model trained on {c0} contexts (the one fine-tuned); "
              "'zero shot N contexts' one trained on N. 'scratch K' is `fit_w2` with its "
              "defaults for K steps on the held-out context's own samples.", "",
              "| held-out c | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
              "|---|" + "---|" * len(keys)]
    for r in g["rows"]:
      cells = [f"{r[k][0]:.3g} / {r[k][1]:.3g}" for k in keys]
      lines.append(f"| ({r['c'][0]:.2f}, {r['c'][1]:.2f}) | " + " | ".join(cells) + " |")
    med = {k: np.median([r[k][0] for r in g["rows"]]) for k in keys}
    sk = f"scratch_{g['steps']}"
    split = f"scratch_{max(1, g['steps'] // c0)}"
    lines += ["", f"Median forward: zero-shot {med['zero_shot']:.3g}; one map per context with "
              f"the same total steps ({g['steps']} over {c0} contexts) {med[split]:.3g} "
              f"(ratio {med['zero_shot'] / med[split]:.2f}, target <= 2), with {g['steps']} "
              f"steps for the one context {med[sk]:.3g} (ratio {med['zero_shot'] / med[sk]:.2f}); "
              + "".join(f"zero-shot trained on {k.split('_')[2]} contexts {med[k]:.3g}; "
                        for k in extra) +
              f"finetune 100 {med['finetune_100']:.3g} vs scratch 2000 "
              f"{med['scratch_2000']:.3g} (target: finetune 100 <= scratch 2000).", ""]
  if "dose" in res:
    d = res["dose"]
    lines += [f"### Dose response, D = {d['dim']}, doses {d['train_doses']}, {d['n_per_dose']} "
              f"samples each, {d['steps']} steps (conditional {d['conditional_seconds']:.0f} s)", "",
              "Unbiased energy distance between the mapped source and fresh target samples "
              "(10,000 points each), in % of the distance before mapping; 'noise' is the same "
              "for two samples of the target (expectation 0), so differences of that size mean "
              "nothing. Per-dose maps are `fit_w2` from scratch with the same steps.", "",
              "| dose | unmapped | noise % | conditional % | per-dose % | ratio |",
              "|---|---|---|---|---|---|"]
    for r in d["rows"]:
      pct = lambda v: 100 * v / r["unmapped"]
      lines.append(f"| {r['dose']} | {r['unmapped']:.3g} | {pct(r['floor']):.2f} | "
                   f"{pct(r['conditional']):.2f} | {pct(r['per_dose']):.2f} | {r['ratio']:.2f} |")
    lines.append("")
  if "colour" in res:
    c = res["colour"]
    lines += [f"### Meta maps for colour transfer: {c['pairs']} training pairs of 64 x 64 crops "
              f"(china.jpg, flower.jpg from scikit-learn, grace_hopper.jpg from matplotlib), "
              f"{c['steps']} steps ({c['meta_seconds']:.0f} s)", "",
              "Dual W2^2 estimate on held-out pixels relative to `fit_w2` for 4000 steps on the "
              "pair; steps (evaluated every 25) to reach 0.99 of it by fine-tuning the "
              "prediction vs `fit_w2` from scratch (its Gaussian initialisation included).", "",
              "| converged W2^2 | predicted | Gaussian init | predict ms | steps to 0.99 from "
              "prediction | from scratch |", "|---|---|---|---|---|---|"]
    for r in c["rows"]:
      lines.append(f"| {r['converged_w2']:.4g} | {r['predicted']:.3f} | {r['gaussian_init']:.3f} | "
                   f"{r['predict_ms']:.1f} | {r['steps_from_prediction']} | "
                   f"{r['steps_from_scratch']} |")
    lines.append("")
  return "\n".join(lines)


def write_results_md(section: str):
  path = os.path.join(HERE, "RESULTS.md")
  text = open(path).read() if os.path.exists(path) else ""
  start = text.find("## Conditional maps")
  if start >= 0:
    end = text.find("\n## ", start + 3)
    text = text[:start] + (text[end + 1:] if end >= 0 else "")
  open(path, "w").write(text.rstrip() + "\n\n" + section + "\n")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--parts", nargs="+", default=["gaussian", "dose", "colour"])
  p.add_argument("--colour-pairs", type=int, default=200)
  p.add_argument("--colour-test", type=int, default=6)
  p.add_argument("--dim", type=int, default=4)
  p.add_argument("--dose-dim", type=int, default=16)
  p.add_argument("--n", type=int, default=4000)
  p.add_argument("--steps", type=int, default=2000)
  p.add_argument("--contexts", type=int, nargs="+", default=[16, 64],
                 help="numbers of training contexts of the Gaussian family")
  args = p.parse_args()
  res = {}
  if "gaussian" in args.parts:
    res["gaussian"] = run_gaussian(args)
  if "dose" in args.parts:
    res["dose"] = run_dose(args)
  if "colour" in args.parts:
    res["colour"] = run_colour(args)
  os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
  path = os.path.join(HERE, "results", "conditional.json")
  if os.path.exists(path):  # parts run separately are merged
    with open(path) as fh:
      res = {**json.load(fh), **res}
  with open(path, "w") as fh:
    json.dump(res, fh, indent=1)
  section = report(res)
  print(section)
  write_results_md(section)


if __name__ == "__main__":
  main()
