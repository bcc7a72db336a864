"""Convert the Korotin et al. Mix3toMix10 folder of ``.pt`` files into the layout of
:func:`neural_ot.w2bench.load_pair` (no torch).

The published benchmark is ``benchmarks/Mix3toMix10/{D}_{v1,v2}.pt`` in
github.com/iamalexkorotin/Wasserstein2Benchmark. Besides the two potentials a pair needs
its input mixture and a few constants; the original code computes them on the fly:

- the input mixture ``P`` is fully determined by numpy's legacy ``RandomState(0)``
  (``Mix3ToMix10Benchmark`` seeds it, then ``RandomGaussianMixSampler`` draws centres and
  maps), so :func:`input_mixture` regenerates it bit for bit;
- the constants (``shift``, ``scale``, the moments of ``P`` and ``Q``, the cost and the
  linear baseline maps) are Monte-Carlo estimates: :func:`benchmark_constants` recomputes them
  by the same procedure on more samples and stores the standard error of each (``*_se``).
  They differ from the authors' (GPU, n = 2^14) run by Monte-Carlo noise.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot.w2bench.pairs import dense_icnn
from neural_ot.w2bench.torch_pt import load_pt

__all__ = ["input_mixture", "benchmark_constants", "convert_folder", "dense_icnn_shapes"]

_STRONG_CONVEXITY = 1e-2  # what Mix3ToMix10Benchmark passes to DenseICNN (not in the files)
_PT = re.compile(r"^([1-9]\d*)_(v1|v2)(_conj)?\.pt$")


def input_mixture(dim: int, seed: int = 0, num: int = 3, dist: float = 1.0,
                  std: float = 0.4) -> dict[str, np.ndarray]:
  """The benchmark's input mixture ``P`` in dimension ``dim``, regenerated from the seed.

  Follows ``RandomGaussianMixSampler(dim, num=3)`` after ``np.random.seed(0)``: each
  coordinate of the ``num`` centres is a random permutation of ``0, dist, 2 dist, ...``
  (centred); each component's map is a Gaussian matrix with unit rows; both are divided by
  ``mult`` so that the total variance is ``dim``. Float32 as in the original, so the arrays
  equal the published ones exactly.

  Returns:
    ``centers (num, dim)``, ``maps (num, dim, dim)``, ``std``, ``weights``, ``mult``,
    ``centers_grid`` (the integer grid before scaling), ``component_covs``
    (``std^2 maps maps^T``), ``mean_exact``, ``cov_exact``, ``var_exact``, ``seed``.
  """
  if not isinstance(dim, (int, np.integer)) or dim < 1:
    raise ValueError(f"input_mixture: `dim` must be a positive int, got {dim!r}.")
  rs = np.random.RandomState(seed)  # the legacy generator: its stream is frozen
  centers = np.zeros((num, dim), dtype=np.float32)
  for d in range(dim):
    centers[:, d] += dist * rs.choice(list(range(num)), num, replace=False)
  centers -= dist * (num - 1) / 2
  grid = centers.astype(np.int8)
  maps = rs.normal(size=(num, dim, dim)).astype(np.float32)
  maps /= np.sqrt((maps ** 2).sum(axis=2, keepdims=True))
  mult = np.sqrt((centers ** 2).sum(axis=1).mean() + dim * std ** 2) / np.sqrt(dim)
  centers /= mult
  maps /= mult
  m64, c64 = maps.astype(np.float64), centers.astype(np.float64)
  covs = std ** 2 * np.einsum("kij,klj->kil", m64, m64)
  mean = c64.mean(0)
  cov = covs.mean(0) + (c64 - mean).T @ (c64 - mean) / num
  return {"centers": centers, "maps": maps, "std": np.float32(std),
          "weights": np.full(num, 1.0 / num), "mult": np.float64(mult), "centers_grid": grid,
          "component_covs": covs, "mean_exact": mean, "cov_exact": cov,
          "var_exact": np.float64(np.trace(cov)), "seed": np.int64(seed)}


def _sqrtm(s, inverse=False):
  # float64 on the host: the constants are stored in double precision.
  w, v = np.linalg.eigh(0.5 * (s + s.T))
  r = np.sqrt(np.clip(w, 1e-300, None))
  return (v / r) @ v.T if inverse else (v * r) @ v.T


def _linear_map(m1, s1, m2, s2):
  r1, r1_inv = _sqrtm(s1), _sqrtm(s1, inverse=True)
  a = r1_inv @ _sqrtm(r1 @ s2 @ r1) @ r1_inv
  a = 0.5 * (a + a.T)
  return a, m2 - a @ m1


def _sample(mix, rng, n):
  comp = rng.integers(0, len(mix["weights"]), size=n)
  z = rng.standard_normal((n, mix["centers"].shape[1])).astype(np.float32)
  return (mix["std"] * np.einsum("nij,nj->ni", mix["maps"][comp], z)
          + mix["centers"][comp]).astype(np.float32)


def _moments(z, prefix):
  """Mean, total variance, covariance of ``z (n, d)`` and standard errors (float64)."""
  n = len(z)
  z = z.astype(np.float64)
  mean = z.mean(0)
  sq = np.sum((z - mean) ** 2, 1)  # the total variance is the mean of this
  return {f"{prefix}_mean_mc": mean, f"{prefix}_mean_mc_se": z.std(0, ddof=1) / np.sqrt(n),
          f"{prefix}_var_mc": np.float64(sq.mean()),
          f"{prefix}_var_mc_se": np.float64(sq.std(ddof=1) / np.sqrt(n)),
          f"{prefix}_cov_mc": np.cov(z.T).reshape(z.shape[1], z.shape[1])}


def benchmark_constants(p1: dict, p2: dict, mixture: dict, n: int = 2 ** 16, seed: int = 0,
                        batch: int = 8192) -> dict[str, np.ndarray]:
  """The pair's constants by Monte Carlo, as ``Mix3ToMix10Benchmark`` computes them.

  With ``G = grad F1 + grad F2`` (the two DenseICNNs, strong convexity 1e-2):
  ``shift = -E[G(X)]``, ``scale = 1 / sqrt(mean_d Var(G(X))_d)`` (so ``Q`` has mean ~0 and
  total variance ~``D``), then on fresh samples the moments of ``P`` and ``Q = T # P``,
  ``cost_mc = E|T(X) - X|^2 / 2`` and the linear (Bures) maps between the moment-matched
  Gaussians (input mean exactly 0, as in the original). Three independent sample sets of size
  ``n`` (the original: 2^14, and 1024 for the cost).

  Returns:
    the keys ``load_pair`` reads (``shift``, ``scale``, ``strong_convexity``,
    ``input_var_mc``, ``output_var_mc``, ``cost_mc``, ``linear_map_{fwd,inv}_{weight,bias}``,
    ...), each Monte-Carlo estimate ``k`` with its standard error ``k_se`` (delta method for
    ``scale``), and ``n_mc``, ``seed_mc``.
  """
  q1 = {k: jnp.asarray(v) for k, v in p1.items()}
  q2 = {k: jnp.asarray(v) for k, v in p2.items()}
  c = _STRONG_CONVEXITY
  grad = jax.jit(jax.vmap(jax.grad(lambda x: dense_icnn(q1, x, c) + dense_icnn(q2, x, c))))

  def push(x):
    return np.concatenate([np.asarray(grad(x[i:i + batch])) for i in range(0, len(x), batch)])

  rng = np.random.default_rng(seed)
  # 1. Standardisation (potentials.standardize_potential): shift and scale of G # P.
  g = push(_sample(mixture, rng, n)).astype(np.float64)
  mean = g.mean(0)
  per_sample = np.mean((g - mean) ** 2, 1)
  mean_var = per_sample.mean()
  mean_var_se = per_sample.std(ddof=1) / np.sqrt(n)
  scale = 1.0 / np.sqrt(mean_var)
  out = {"shift": -mean, "shift_se": g.std(0, ddof=1) / np.sqrt(n), "scale": np.float64(scale),
         "scale_se": np.float64(0.5 * scale * mean_var_se / mean_var), "mean": mean,
         "mean_var": np.float64(mean_var), "mean_var_se": np.float64(mean_var_se),
         "strong_convexity": np.float64(c)}
  shift32, scale32 = (-mean).astype(np.float32), np.float32(scale)
  t = lambda x: scale32 * (push(x) + shift32)
  # 2. Moments of P and Q on fresh samples (the original's _estimate_moments).
  x = _sample(mixture, rng, n)
  inp = _moments(x, "input")
  out.update({k: v for k, v in inp.items() if "mean" not in k})
  x = _sample(mixture, rng, n)
  y = t(x)
  out.update(_moments(y, "output"))
  # 3. The cost (PotentialMapBenchmark._estimate_cost): E|X - T(X)|^2 / 2.
  d2 = 0.5 * np.sum((y.astype(np.float64) - x) ** 2, 1)
  out["cost_mc"], out["cost_mc_se"] = np.float64(d2.mean()), np.float64(d2.std(ddof=1) / np.sqrt(n))
  # 4. Linear baselines between the moment-matched Gaussians (input mean exactly zero).
  m_in, s_in = np.zeros(x.shape[1]), out["input_cov_mc"]
  m_out, s_out = out["output_mean_mc"], out["output_cov_mc"]
  out["linear_map_fwd_weight"], out["linear_map_fwd_bias"] = _linear_map(m_in, s_in, m_out, s_out)
  out["linear_map_inv_weight"], out["linear_map_inv_bias"] = _linear_map(m_out, s_out, m_in, s_in)
  r = _sqrtm(s_out)
  out["linear_cost"] = np.float64(0.5 * (np.sum((m_out - m_in) ** 2) + np.trace(s_out + s_in)
                                          - 2 * np.trace(_sqrtm(r @ s_in @ r))))
  out["n_mc"], out["seed_mc"] = np.int64(n), np.int64(seed)
  return out


def dense_icnn_shapes(dim: int) -> dict:
  """``{parameter name: shape}`` of the benchmark's DenseICNN potential of dimension ``dim``
  (torch layout), as the converter expects it."""
  h1, h3 = max(2 * dim, 64), max(dim, 32)
  hs = (h1, h1, h3)
  shapes = {}
  for i, h in enumerate(hs):
    shapes[f"quadratic_layers.{i}.quadratic_decomposed"] = (dim, 1, h)
    shapes[f"quadratic_layers.{i}.weight"] = (h, dim)
    shapes[f"quadratic_layers.{i}.bias"] = (h,)
  shapes.update({"convex_layers.0.weight": (hs[1], hs[0]), "convex_layers.1.weight": (hs[2], hs[1]),
                 "final_layer.weight": (1, hs[2])})
  return shapes


def _check_potential(path, params, dim):
  want = dense_icnn_shapes(dim)
  got = {k: tuple(v.shape) for k, v in params.items()}
  if got != want:
    diff = sorted(set(want.items()) ^ set(got.items()))[:3]
    raise ValueError(f"convert_folder: {path!r} is not a DenseICNN potential of dimension "
                     f"{dim} (parameters differ: {diff}).")
  if not all(np.issubdtype(v.dtype, np.floating) and np.all(np.isfinite(v))
             for v in params.values()):
    raise ValueError(f"convert_folder: {path!r} holds non-float or non-finite parameters.")


def _sha256(path):
  h = hashlib.sha256()
  with open(path, "rb") as fh:
    for chunk in iter(lambda: fh.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _save(path, arrays):
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def convert_folder(src: str, dst: str, n_mc: int = 2 ** 16, seed: int = 0,
                   progress=None) -> list[str]:
  """Convert the benchmark's ``.pt`` folder into a folder :func:`load_pair` reads.

  Writes into ``dst``: every ``{D}_{v1,v2}[_conj].pt`` as ``.npz`` (the same arrays, no
  pickle), and for every dimension with both ``{D}_v1`` and ``{D}_v2``:
  ``input_mixture_{D}.npz`` (regenerated exactly from the seed, see :func:`input_mixture`)
  and ``benchmark_constants_{D}.npz`` (Monte-Carlo estimates with standard errors on
  ``n_mc`` samples, see :func:`benchmark_constants`); then ``manifest.json`` (every file
  with its shapes and sha256, the source files' sha256, how the constants were computed,
  and the dimensions left incomplete).

  Args:
    src: the folder of ``.pt`` files (``Wasserstein2Benchmark/benchmarks/Mix3toMix10``, or
      its parent ``benchmarks``).
    dst: output folder (created); pass it to ``load_pair(dim, data_dir=dst)``.
    n_mc: Monte-Carlo samples per estimate.
    seed: seed of the Monte-Carlo samples (not of the mixture, which is fixed).
    progress: optional ``callable(str)`` told what is being done.

  Returns:
    the paths written, manifest last.

  Raises:
    FileNotFoundError: ``src`` is not a folder. ValueError: no ``.pt`` files in it, or a file
      that is not a state dict of a DenseICNN of its dimension (the message names it); ``dst``
      is a file; ``n_mc < 2``. TypeError: ``src``/``dst`` not paths, ``progress`` not callable.
  """
  for name, val in (("src", src), ("dst", dst)):
    if not isinstance(val, (str, os.PathLike)):
      raise TypeError(f"convert_folder: `{name}` must be a path, got {type(val).__name__}.")
  src, dst = os.fspath(src), os.fspath(dst)
  # n_mc = 1 gives NaN standard errors and scale (ddof = 1); checked before any work.
  if not (isinstance(n_mc, (int, np.integer)) and not isinstance(n_mc, bool) and n_mc >= 2):
    raise ValueError(f"convert_folder: `n_mc` must be an int >= 2, got {n_mc!r}.")
  if not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0):
    raise ValueError(f"convert_folder: `seed` must be an int >= 0, got {seed!r}.")
  n_mc, seed = int(n_mc), int(seed)
  if progress is not None and not callable(progress):
    raise TypeError(f"convert_folder: `progress` must be callable or None, got "
                    f"{type(progress).__name__}.")
  if not os.path.isdir(src):
    raise FileNotFoundError(f"convert_folder: no such folder: {src!r}")
  if os.path.exists(dst) and not os.path.isdir(dst):
    raise ValueError(f"convert_folder: `dst` {dst!r} exists and is not a folder.")
  if not any(n.endswith(".pt") for n in os.listdir(src)) and os.path.isdir(
      os.path.join(src, "Mix3toMix10")):
    src = os.path.join(src, "Mix3toMix10")
  names = sorted(n for n in os.listdir(src)
                 if n.endswith(".pt") and os.path.isfile(os.path.join(src, n)))
  if not names:
    raise ValueError(f"convert_folder: no .pt files in {src!r}; expected the benchmark's "
                     f"benchmarks/Mix3toMix10 folder ({{D}}_v1.pt, {{D}}_v2.pt, ...).")
  say = progress or (lambda msg: None)
  os.makedirs(dst, exist_ok=True)
  written, files, potentials = [], {}, {}
  for name in names:
    path = os.path.join(src, name)
    params = load_pt(path)
    m = _PT.match(name)
    if m:
      _check_potential(path, params, int(m.group(1)))
      if not m.group(3):
        potentials[(int(m.group(1)), m.group(2))] = params
    out = os.path.join(dst, name[:-3] + ".npz")
    _save(out, params)
    written.append(out)
    files[os.path.basename(out)] = {"source_file": name, "source_pt_sha256": _sha256(path)}
  dims = sorted({d for d, _ in potentials})
  complete = [d for d in dims if (d, "v1") in potentials and (d, "v2") in potentials]
  for d in complete:
    say(f"D={d}: input mixture (numpy RandomState(0)), constants (Monte Carlo, n={n_mc})")
    mix = input_mixture(d)
    out = os.path.join(dst, f"input_mixture_{d}.npz")
    _save(out, mix)
    written.append(out)
    files[os.path.basename(out)] = {"generated": "exact, numpy legacy RandomState(0)"}
    const = benchmark_constants(potentials[(d, "v1")], potentials[(d, "v2")], mix, n=n_mc,
                                seed=seed)
    out = os.path.join(dst, f"benchmark_constants_{d}.npz")
    _save(out, const)
    written.append(out)
    files[os.path.basename(out)] = {"generated": f"Monte Carlo, n={n_mc}, seed={seed}"}
  for fname, entry in files.items():
    path = os.path.join(dst, fname)
    with np.load(path, allow_pickle=False) as f:
      entry["arrays"] = {k: {"shape": list(f[k].shape), "dtype": str(f[k].dtype)} for k in f.files}
    entry["sha256"] = _sha256(path)
  manifest = {
      "source": "github.com/iamalexkorotin/Wasserstein2Benchmark, benchmarks/Mix3toMix10",
      "source_folder": os.path.abspath(src),
      "converter": "neural_ot.w2bench.convert_folder (torch-free)",
      "complete_dimensions": complete,
      "incomplete_dimensions": {str(d): "needs both {D}_v1.pt and {D}_v2.pt" for d in dims
                                if d not in complete},
      "constants_note": (
          "benchmark_constants_{D}.npz are Monte-Carlo estimates recomputed by the original "
          f"procedure on n_mc={n_mc} samples per estimate (seed {seed}); each estimate k has its "
          "standard error in k_se. They differ from the authors' published run by Monte-Carlo "
          "noise. input_mixture_{D}.npz is exact."),
      "strong_convexity": _STRONG_CONVEXITY,
      "files": files,
  }
  out = os.path.join(dst, "manifest.json")
  with open(out, "w") as fh:
    json.dump(manifest, fh, indent=1)
  written.append(out)
  return written

