"""The ``neural-ot`` command line: ``demo``, ``fit``, ``sinkhorn``, ``bench w2``, ``bench convert``.

A mistake the user can fix (a bad option value, a file that cannot be read or is unsuitable,
a run that diverges) ends in one line on stderr and exit code 2, never a traceback; Ctrl-C
ends with exit code 130 (``fit`` says where its checkpoint is and how to resume). Set
``NEURAL_OT_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

_MIN_POINTS = 10  # below this a map cannot be fitted (nor held-out samples scored)


class UsageError(SystemExit):
  """An error in the command line itself (exit code 2, like argparse's); ``str`` is the line
  printed on stderr."""

  def __init__(self, message: str):
    super().__init__(2)
    self.message = message

  def __str__(self):
    return self.message


class _UserError(Exception):
  """A mistake found while running a command: one line on stderr, exit code 2."""


def _one_line(text) -> str:
  return " ".join(str(text).split())


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (no usage block) and defaults shown in ``--help``."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
    super().__init__(*args, **kwargs)

  def error(self, message):
    line = f"{self.prog}: {_one_line(message)} (see `{self.prog} --help`)"
    print(line, file=sys.stderr)
    raise UsageError(line)


# --- argument types ----------------------------------------------------------------------


def _int_at_least(lo: int, hi: int = 2 ** 31 - 1):
  # The upper bound keeps values inside what a jitted int32 (or an allocation) can take.
  def parse(text):
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < lo:
      raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
    if value > hi:
      raise argparse.ArgumentTypeError(f"must be <= {hi}, got {value}")
    return value
  parse.__name__ = f"int >= {lo}"
  return parse


_seed = _int_at_least(0, 2 ** 32 - 1)  # PRNGKey(2**32) is PRNGKey(0)
_MAX_SAMPLES = 10 ** 6  # --n: more points than this do not fit the (n, m) problems in memory


def _positive_float(text):
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if not (math.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
  return value


def _positive_float32(text):
  """A number > 0 that float32 holds (epsilon, tolerance, learning rate are float32 on the
  device: 1e-300 would become 0 and 1e300 inf)."""
  value = _positive_float(text)
  lo, hi = 1.1754943508222875e-38, 3.4028234663852886e38  # float32 tiny and max
  if not lo <= value <= hi:
    raise argparse.ArgumentTypeError(f"must be between {lo:.3g} and {hi:.3g} (float32), got "
                                     f"{text}")
  return value


def _make_out(path: str, flag: str = "--out") -> None:
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as exc:
    raise _UserError(f"{flag} {path!r}: cannot create the output folder "
                     f"({exc.strerror or exc})") from None


def _input_file(text):
  if not os.path.isfile(text):
    raise argparse.ArgumentTypeError(f"no such file: {text!r}")
  return text


def _file_or_measure(text):
  from neural_ot import data  # pylint: disable=import-outside-toplevel
  if text in data.SAMPLERS or os.path.isfile(text):
    return text
  raise argparse.ArgumentTypeError(
      f"no such file: {text!r} (nor a built-in measure: {', '.join(sorted(data.SAMPLERS))})")


# --- input and output --------------------------------------------------------------------


def _load_points(path: str, min_points: int = _MIN_POINTS):
  """``(n, d)`` float32 points from a ``.npy`` or ``.csv``/``.txt`` file, checked."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  name = os.path.basename(path)
  if path.endswith(".npy"):
    with open(path, "rb") as fh:
      if fh.read(6) != b"\x93NUMPY":
        raise _UserError(f"{path}: not a .npy file (no NPY header)")
    try:
      arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # pylint: disable=broad-except
      # A hostile header escapes np.load as ValueError, but also as TokenError, MemoryError
      # (a declared shape of terabytes), ...: all of them mean the file is unusable.
      raise _UserError(f"{path}: not a readable .npy array ({type(exc).__name__}: "
                       f"{_one_line(exc)})") from None
  elif path.endswith((".csv", ".txt")):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # "input contained no data": reported below
      try:
        arr = np.loadtxt(path, delimiter=",", ndmin=2)
      except ValueError:
        try:  # a header line
          arr = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1)
        except ValueError as exc:
          raise _UserError(f"{path}: not comma-separated numbers ({_one_line(exc)})") from None
  else:
    raise _UserError(f"{path}: expected a .npy, .csv or .txt file")
  if arr.dtype.kind not in "biuf":
    raise _UserError(f"{path}: expected numbers, the array holds {arr.dtype}")
  if arr.ndim == 1:
    arr = arr[:, None]
  if arr.ndim != 2:
    raise _UserError(f"{path}: expected rows of points (n, d), got an array of shape {arr.shape}")
  if len(arr) < min_points or arr.shape[1] == 0:
    raise _UserError(f"{name} has {len(arr)} points of dimension {arr.shape[1]}; at least "
                     f"{min_points} points are needed")
  bad = ~np.isfinite(arr).all(axis=1)
  if bad.any():
    raise _UserError(f"{path}: row {int(np.argmax(bad))} (of {len(arr)}) holds NaN or inf; "
                     f"{int(bad.sum())} rows do")
  return arr.astype("float32")


def _json_safe(obj):
  """Plain JSON values: NaN and inf become ``null``, arrays lists, numpy scalars numbers."""
  if isinstance(obj, dict):
    return {str(k): _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_safe(v) for v in obj]
  if isinstance(obj, (str, bool)) or obj is None:
    return obj
  if isinstance(obj, int):
    return obj
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if hasattr(obj, "__array__"):
    import numpy as np  # pylint: disable=import-outside-toplevel
    arr = np.asarray(obj)
    return _json_safe(arr.item() if arr.ndim == 0 else arr.tolist())
  if hasattr(obj, "item"):
    return _json_safe(obj.item())
  return str(obj)


def _write_json(path: str, obj) -> None:
  with open(path, "w") as fh:
    json.dump(_json_safe(obj), fh, indent=2, allow_nan=False)


def _fmt(v) -> str:
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def _report(summary: dict, files: list, meanings: dict | None = None) -> None:
  """Print the summary as ``name: value  - what it is and what good looks like``, then every
  file written as ``path (what it is)``."""
  meanings = meanings or {}
  width = max((len(k) for k in summary), default=5)
  for k, v in summary.items():
    line = f"{k:>{width}}: {_fmt(v)}"
    print(f"{line:<{width + 12}}  - {meanings[k]}" if k in meanings else line)
  for i, (path, what) in enumerate(files):
    print(f"{'wrote' if i == 0 else '':>{width}}: {path}  ({what})")


# One sentence per number of `neural-ot sinkhorn`'s summary.
_SINKHORN_MEANINGS = {
    "epsilon": "the entropic regularisation used, in cost units",
    "n_iters": "Sinkhorn iterations run; good: well below max_iters",
    "converged": "whether the marginal error fell below --tol",
    "marginal_error": "L1 gap between the plan's marginals and the weights; good: <= --tol",
    "reg_ot_cost": "entropic cost <P,C> + eps KL(P | a b^T); above W2^2 by the entropy term",
    "primal_cost": "<P,C>, the cost of the blurred plan; >= W2^2, reaches it as eps -> 0",
    "sinkhorn_divergence_W2sq_estimate": "debiased Sinkhorn divergence: the best W2^2 "
                                         "estimate at this epsilon",
    "seconds_incl_compile": "wall-clock seconds of the solve, compilation included",
    "diverged": "whether the solve met a NaN/inf and stopped; good: False",
}


def _summarise(mp, x, y, seconds, steps):
  """Quality figures of a learned map on held-out samples.

  Returns ``(T(x), T^-1(y), summary, meanings)``; ``meanings`` holds one sentence per number
  saying what it is and what good looks like.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  import neural_ot  # pylint: disable=import-outside-toplevel

  tx = mp.transport(x)
  iy = mp.inverse(y)
  # One absolute epsilon for every divergence, so that they compare with each other:
  # 0.002 x the mean cost |x - y|^2 between the held-out source and target.
  mean_cost = (jnp.mean(jnp.sum(x ** 2, -1)) + jnp.mean(jnp.sum(y ** 2, -1))
               - 2 * jnp.sum(jnp.mean(x, 0) * jnp.mean(y, 0)))
  eps = 0.002 * float(mean_cost)
  kw = dict(epsilon=eps, tol=1e-3, max_iters=5000)
  h = len(y) // 2
  summary = {
      "w2_squared_dual": mp.w2,
      "w2_squared_moved": float(jnp.mean(jnp.sum((tx - x) ** 2, -1))),
      "divergence_before": float(neural_ot.sinkhorn_divergence(x, y, **kw)),
      "divergence_after": float(neural_ot.sinkhorn_divergence(tx, y, **kw)),
      "divergence_inverse": float(neural_ot.sinkhorn_divergence(iy, x, **kw)),
      "divergence_noise_floor": float(neural_ot.sinkhorn_divergence(y[:h], y[h:2 * h], **kw)),
      "epsilon": eps,
      "train_seconds": seconds,
      "steps": steps,
  }
  meanings = {
      "w2_squared_dual": "W2^2 (cost |x - y|^2) from the learned potentials on held-out "
                         "samples; good: close to w2_squared_moved",
      "w2_squared_moved": "mean |x - T(x)|^2 on held-out x, what the map pays; the optimal "
                          "map pays exactly W2^2",
      "divergence_before": "Sinkhorn divergence between source and target samples: how far "
                           "apart they start",
      "divergence_after": "divergence between T(source) and target; good: far below "
                          "divergence_before, near divergence_noise_floor",
      "divergence_inverse": "divergence between T^-1(target) and source; good: as for after",
      "divergence_noise_floor": "divergence between two halves of the target sample: "
                                "sampling noise alone (at half the sample size, so a perfect "
                                "map scores somewhat below it)",
      "epsilon": "entropic regularisation of the divergences above (0.002 x the mean cost "
                 "between source and target)",
      "train_seconds": "wall-clock training time, compilation included",
      "steps": "optimizer steps taken",
  }
  return tx, iy, summary, meanings


def _train_options(args) -> dict:
  opts = dict(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
              amortization=args.amortization, progress=not args.quiet)
  # Unset options are left to fit_w2, which picks them from the data.
  for key, val in (("learning_rate", args.lr), ("finetune_iters", args.finetune_iters),
                   ("potential", args.potential)):
    if val is not None:
      opts[key] = val
  return opts


# --- commands ----------------------------------------------------------------------------


def _demo(args) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  import neural_ot  # pylint: disable=import-outside-toplevel
  from neural_ot import _plotting, data  # pylint: disable=import-outside-toplevel

  _make_out(args.out)
  src, tgt = data.SAMPLERS[args.source], data.SAMPLERS[args.target]
  t0 = time.perf_counter()
  mp = neural_ot.fit_w2(src, tgt, **_train_options(args))
  seconds = time.perf_counter() - t0
  k1, k2 = jax.random.split(jax.random.PRNGKey(args.seed + 1000))
  x, y = src(k1, args.n), tgt(k2, args.n)  # held out: not the training stream
  tx, iy, summary, meanings = _summarise(mp, x, y, seconds, args.steps)
  summary = {"source": args.source, "target": args.target, **summary}
  png = os.path.join(args.out, "neural_map_demo.png")
  _plotting.plot_map(np.asarray(x), np.asarray(y), np.asarray(tx), np.asarray(iy),
                     f"{args.source} -> {args.target}: learned W2 map, W2^2 ~ {mp.w2:.3f}", png)
  map_path = os.path.join(args.out, "map.msgpack")
  mp.save(map_path)
  js = os.path.join(args.out, "neural_map_demo.json")
  _write_json(js, summary)
  _report(summary, [(png, "picture"), (map_path, "the learned map; neural_ot.load_map"),
                    (js, "this summary")], meanings)
  return 0


def _fit(args) -> int:
  import numpy as np  # pylint: disable=import-outside-toplevel

  import neural_ot  # pylint: disable=import-outside-toplevel
  from neural_ot import _plotting  # pylint: disable=import-outside-toplevel

  x, y = _load_points(args.source), _load_points(args.target)
  if x.shape[1] != y.shape[1]:
    raise _UserError(f"source and target must have the same dimension: {args.source} has "
                     f"{x.shape[1]} columns, {args.target} has {y.shape[1]}")
  _make_out(args.out)
  opts = _train_options(args)
  if args.steps is None and args.minutes is None:
    opts["steps"] = 2000
  if args.minutes is not None:
    opts["max_seconds"] = 60.0 * args.minutes
  if opts["batch_size"] is not None:  # the rows fit_w2 trains on (it holds some out)
    from neural_ot.w2.fit import training_rows  # pylint: disable=import-outside-toplevel
    opts["batch_size"] = min(opts["batch_size"], training_rows(len(x)), training_rows(len(y)))
  ckpt_dir = os.path.join(args.out, "checkpoints")
  ckpt = os.path.join(ckpt_dir, "checkpoint.msgpack")
  if os.path.isfile(ckpt) and not args.restart:
    print(f"neural-ot fit: resuming from {ckpt} (--restart to start over)", file=sys.stderr)
  t0 = time.perf_counter()
  try:
    mp = neural_ot.fit_w2(x, y, checkpoint_dir=ckpt_dir, resume=not args.restart, **opts)
  except KeyboardInterrupt:
    where = (f"the last checkpoint is {ckpt}; run the same command again to resume, or add "
             f"--restart to start over" if os.path.isfile(ckpt) else "no checkpoint was saved")
    print(f"neural-ot fit: interrupted; {where}", file=sys.stderr)
    return 130
  except neural_ot.TrainingDivergedError as exc:
    raise _UserError(f"training diverged ({_one_line(exc)}); try a smaller --lr, more points "
                     f"or --restart") from None
  seconds = time.perf_counter() - t0
  n = min(len(x), len(y), 2000)
  steps = int(mp.history[-1]["step"]) if getattr(mp, "history", None) else args.steps
  tx, iy, summary, meanings = _summarise(mp, x[:n], y[:n], seconds, steps)
  map_path = os.path.join(args.out, "map.msgpack")
  mp.save(map_path)
  moved = os.path.join(args.out, "transported.npy")
  np.save(moved, np.asarray(mp.transport(x)))
  files = [(map_path, "the learned map; neural_ot.load_map"),
           (moved, f"T(source), {len(x)} x {x.shape[1]}")]
  if x.shape[1] == 2:
    png = os.path.join(args.out, "map.png")
    _plotting.plot_map(x[:n], y[:n], np.asarray(tx), np.asarray(iy), "learned W2 map", png)
    files.append((png, "picture"))
  js = os.path.join(args.out, "summary.json")
  _write_json(js, summary)
  files += [(js, "this summary"), (ckpt, "checkpoint; rerun to continue, --restart to start over")]
  _report(summary, files, meanings)
  return 0


def _points_for_sinkhorn(spec, key, n):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from neural_ot import data  # pylint: disable=import-outside-toplevel
  if spec in data.SAMPLERS and not os.path.isfile(spec):
    return data.SAMPLERS[spec](key, n)
  return jnp.asarray(_load_points(spec, min_points=2))


def _sinkhorn(args) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  import neural_ot  # pylint: disable=import-outside-toplevel
  from neural_ot import _plotting  # pylint: disable=import-outside-toplevel

  if (args.source_file is None) != (args.target_file is None):
    raise _UserError("give both SOURCE and TARGET (files or built-in measures), or neither")
  src = args.source_file or args.source
  tgt = args.target_file or args.target
  k1, k2 = jax.random.split(jax.random.PRNGKey(args.seed))
  x, y = _points_for_sinkhorn(src, k1, args.n), _points_for_sinkhorn(tgt, k2, args.n)
  if x.shape[1] != y.shape[1]:
    raise _UserError(f"source and target must have the same dimension: {src} has "
                     f"{x.shape[1]} columns, {tgt} has {y.shape[1]}")
  kw = dict(epsilon=args.epsilon, relative_epsilon=args.relative_epsilon, tol=args.tol,
            max_iters=args.max_iters)
  t0 = time.perf_counter()
  out = neural_ot.sinkhorn(x, y, **kw)
  jax.block_until_ready(out.f)
  elapsed = time.perf_counter() - t0
  div = neural_ot.sinkhorn_divergence(x, y, **kw)
  summary = {
      "source": src, "target": tgt, "n_source": int(x.shape[0]), "n_target": int(y.shape[0]),
      "dimension": int(x.shape[1]),
      "epsilon": float(out.epsilon),
      "epsilon_given": f"{args.epsilon} ({'relative to the mean cost' if args.relative_epsilon else 'absolute'})",
      "n_iters": int(out.n_iters), "max_iters": args.max_iters,
      "converged": bool(out.converged), "marginal_error": float(out.marginal_error),
      "reg_ot_cost": float(out.reg_ot_cost), "primal_cost": float(out.primal_cost),
      "sinkhorn_divergence_W2sq_estimate": float(div), "seconds_incl_compile": elapsed,
  }
  if getattr(out, "diverged", None) is not None:
    summary["diverged"] = bool(out.diverged)
  _make_out(args.out)
  files = []
  if x.shape[1] == 2:
    png = os.path.join(args.out, "sinkhorn_demo.png")
    small = x.shape[0] * y.shape[0] <= 4_000_000
    _plotting.plot_sinkhorn(np.asarray(x), np.asarray(y), np.asarray(out.barycentric_map()),
                            np.asarray(out.matrix) if small else None, {
                                **summary, "source": os.path.basename(src),
                                "target": os.path.basename(tgt),
                                "n": x.shape[0] if x.shape[0] == y.shape[0]
                                else f"{x.shape[0]}/{y.shape[0]}"}, png)
    files.append((png, "picture"))
  js = os.path.join(args.out, "sinkhorn_demo.json")
  _write_json(js, summary)
  files.append((js, "this summary"))
  _report(summary, files, _SINKHORN_MEANINGS)
  if bool(getattr(out, "diverged", False)):
    print(f"neural-ot sinkhorn: the solve diverged (a NaN or inf appeared) at epsilon "
          f"{float(out.epsilon):.3g}; try another --epsilon", file=sys.stderr)
    return 1
  if not out.converged:
    print(f"neural-ot sinkhorn: not converged after {int(out.n_iters)} iterations (marginal "
          f"error {float(out.marginal_error):.2g} > --tol {args.tol}); raise --max-iters or "
          f"--epsilon", file=sys.stderr)
    return 1
  return 0


def _bench_w2(args) -> int:
  from neural_ot import w2bench  # pylint: disable=import-outside-toplevel
  from neural_ot.w2bench.runner import run_method  # pylint: disable=import-outside-toplevel

  try:
    pair = w2bench.load_pair(args.dim, args.data_dir)
  except FileNotFoundError as exc:
    hint = "" if "bench convert" in str(exc) else (
        " Make the folder with `neural-ot bench convert SRC DST` (README: Getting the benchmark "
        "data).")
    raise _UserError(_one_line(str(exc) + hint)) from None
  _make_out(args.out)
  rows = {}
  for name, (fwd, inv) in w2bench.baselines(pair).items():
    rows[f"baseline: {name}"] = w2bench.evaluate(pair, fwd, inv)
  res = run_method(pair, args.method, steps=args.steps, seconds=args.seconds,
                   eval_every=args.eval_every, seed=args.seed, progress=not args.quiet)
  files = []
  if "map" in res:
    map_path = os.path.join(args.out, "map.msgpack")
    res.pop("map").save(map_path)
    files.append((map_path, "the learned map; neural_ot.load_map"))
  rows[res["method"]] = res["final"]
  print(f"{'':<20} {'UVP fwd %':>10} {'UVP inv %':>10} {'cos fwd':>8} {'cos inv':>8}")
  for name, f in rows.items():
    print(f"{name:<20} {f['uvp_fwd']:10.3f} {f['uvp_inv']:10.3f} {f['cos_fwd']:8.4f} "
          f"{f['cos_inv']:8.4f}")
  print(f"steps {res['steps']}, training {res['train_s']:.1f} s, {res['step_ms']:.2f} ms/step")
  js = os.path.join(args.out, "bench_w2.json")
  _write_json(js, {"dim": args.dim, "baselines_and_final": rows,
                   **{k: v for k, v in res.items() if k != "final"}})
  files.append((js, "scores, learning curve and options"))
  _report({}, files)
  return 0


def _bench_convert(args) -> int:
  from neural_ot.w2bench import convert  # pylint: disable=import-outside-toplevel

  say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
  written = convert.convert_folder(args.src, args.dst, n_mc=args.n_mc, seed=args.seed,
                                   progress=say)
  with open(written[-1]) as fh:
    complete = json.load(fh)["complete_dimensions"]
  _report({"complete dimensions": complete or "none (each D needs {D}_v1.pt and {D}_v2.pt)"},
          [(p, "manifest" if p.endswith(".json") else "converted") for p in written])
  if complete:
    print(f"use it with: neural-ot bench w2 --dim {complete[0]} --data-dir {args.dst}")
  return 0


# --- the parser --------------------------------------------------------------------------


def _add_training(p, steps, steps_help="optimizer steps"):
  p.add_argument("--steps", type=_int_at_least(1), default=steps, help=steps_help)
  p.add_argument("--batch-size", type=_int_at_least(1, 2 ** 20), default=None,
                 help="samples per measure per step (None: fit_w2 picks it from the data)")
  p.add_argument("--lr", type=_positive_float32, default=None,
                 help="peak learning rate (None: fit_w2's default)")
  p.add_argument("--potential", default=None, choices=["icnn", "mlp"],
                 help="network of the potential: input-convex (icnn) or plain MLP (None: fit_w2 "
                      "picks it from the dimension: MLP in 8-16)")
  p.add_argument("--amortization", default="regression",
                 choices=["regression", "objective", "cycle"],
                 help="how the inverse-map predictor is trained")
  p.add_argument("--finetune-iters", type=_int_at_least(0), default=None,
                 help="conjugate-solver iterations after the predictor's guess (None: default)")
  p.add_argument("--seed", type=_seed, default=0, help="random seed")
  p.add_argument("--quiet", action="store_true", help="no progress output")


def _parser() -> argparse.ArgumentParser:
  from neural_ot import data  # pylint: disable=import-outside-toplevel
  from neural_ot.w2bench.runner import METHODS  # pylint: disable=import-outside-toplevel

  measures = sorted(data.SAMPLERS)
  parser = _Parser(prog="neural-ot", description="Neural and entropic OT in JAX.")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  demo = sub.add_parser("demo", help="learn a 2-D W2 map between built-in measures, write a "
                        "picture", description="Learn a 2-D W2 map between built-in measures; "
                        "write a picture, the map and a summary.")
  demo.add_argument("--source", default="8gaussians", choices=measures, help="source measure")
  demo.add_argument("--target", default="normal", choices=measures, help="target measure")
  demo.add_argument("--n", type=_int_at_least(2, _MAX_SAMPLES), default=2000,
                    help="held-out samples for the picture and the scores")
  demo.add_argument("--out", default="out", help="output folder")
  _add_training(demo, steps=4000)

  fit = sub.add_parser("fit", help="learn a W2 map between two point clouds (.npy or .csv)",
                       description="Learn the W2 optimal map from SOURCE to TARGET points. "
                       "Checkpoints go to OUT/checkpoints; rerunning the same command resumes.")
  fit.add_argument("source", type=_input_file,
                   help="source points: .npy array or .csv/.txt (comma-separated, one point per "
                   "row, an optional header line), shape (n, d)")
  fit.add_argument("target", type=_input_file, help="target points, same format, (m, d)")
  fit.add_argument("--out", required=True, help="output folder (map, transported points, "
                   "summary, checkpoints)")
  _add_training(fit, steps=None, steps_help="optimizer steps (2000 when --minutes is not given)")
  fit.add_argument("--minutes", type=_positive_float, default=None,
                   help="wall-clock budget in minutes (the schedule fits the steps it buys; "
                   "with --steps, whichever ends first)")
  fit.add_argument("--restart", action="store_true",
                   help="start over, ignoring the checkpoint in OUT/checkpoints")

  sk = sub.add_parser("sinkhorn", help="solve entropic OT between two point clouds (files or "
                      "built-in 2-D measures)",
                      description="Solve entropic OT between SOURCE and TARGET (uniform weights, "
                      "squared Euclidean cost); write a summary, and a picture in 2-D.")
  sk.add_argument("source_file", nargs="?", default=None, type=_file_or_measure,
                  metavar="SOURCE", help=f"source points: a .npy/.csv file or a built-in "
                  f"measure ({', '.join(measures)}); default: --source")
  sk.add_argument("target_file", nargs="?", default=None, type=_file_or_measure,
                  metavar="TARGET", help="target points, same forms; default: --target")
  sk.add_argument("--source", default="8gaussians", choices=measures,
                  help="built-in source measure when no SOURCE is given")
  sk.add_argument("--target", default="moons", choices=measures,
                  help="built-in target measure when no TARGET is given")
  sk.add_argument("--n", type=_int_at_least(2, _MAX_SAMPLES), default=1000,
                  help="samples drawn from a built-in measure")
  sk.add_argument("--epsilon", type=_positive_float32, default=0.01,
                  help="entropic regularisation (relative to the mean cost unless "
                  "--absolute-epsilon)")
  eps = sk.add_mutually_exclusive_group()
  eps.add_argument("--relative-epsilon", dest="relative_epsilon", action="store_true",
                   default=True, help="--epsilon is a fraction of the mean pairwise cost")
  eps.add_argument("--absolute-epsilon", dest="relative_epsilon", action="store_false",
                   help="--epsilon is in the units of the cost")
  sk.add_argument("--tol", type=_positive_float32, default=1e-3,
                  help="stop when the L1 marginal error is below this")
  sk.add_argument("--max-iters", type=_int_at_least(1), default=2000, help="iteration cap")
  sk.add_argument("--seed", type=_seed, default=0, help="seed of the built-in samples")
  sk.add_argument("--out", default="out", help="output folder")

  bench = sub.add_parser("bench", help="benchmarks: `bench w2` (the Korotin et al. W2 "
                         "benchmark), `bench convert` (get its data)")
  bsub = bench.add_subparsers(dest="suite", required=True, parser_class=_Parser)
  w2 = bsub.add_parser("w2", help="train on the Mix3toMix10 pair of dimension D and score it")
  w2.add_argument("--dim", type=_int_at_least(1), required=True, help="dimension D")
  w2.add_argument("--data-dir", default=None, help="converted benchmark folder (default: "
                  "$NEURAL_OT_W2BENCH or ../shared/data/w2bench; make one with `neural-ot "
                  "bench convert`)")
  w2.add_argument("--steps", type=_int_at_least(1), default=2000, help="optimizer steps (ours)")
  w2.add_argument("--seconds", type=_positive_float, default=None,
                  help="time budget for ott-jax methods")
  w2.add_argument("--method", default="regression", choices=list(METHODS), help="method")
  w2.add_argument("--eval-every", type=_int_at_least(1), default=500,
                  help="steps between evaluations")
  w2.add_argument("--seed", type=_seed, default=0, help="random seed")
  w2.add_argument("--quiet", action="store_true", help="no progress output")
  w2.add_argument("--out", default="out/bench_w2", help="output folder")
  cv = bsub.add_parser("convert", help="convert the original .pt files into the folder `bench "
                       "w2 --data-dir` reads (no torch needed)",
                       description="Convert github.com/iamalexkorotin/Wasserstein2Benchmark's "
                       "benchmarks/Mix3toMix10 folder: potentials to .npz, the input mixture "
                       "regenerated from its seed, the constants by Monte Carlo (with standard "
                       "errors), a manifest.")
  cv.add_argument("src", metavar="SRC", help="folder of {D}_v1.pt, {D}_v2.pt, ... files")
  cv.add_argument("dst", metavar="DST", help="output folder (pass it as --data-dir)")
  cv.add_argument("--n-mc", type=_int_at_least(256, 2 ** 22), default=2 ** 16,
                  help="Monte-Carlo samples per constant")
  cv.add_argument("--seed", type=_seed, default=0, help="seed of the Monte-Carlo samples")
  cv.add_argument("--quiet", action="store_true", help="no progress output")
  return parser


def main(argv=None) -> int:
  """Run the command line; returns the exit code.

  Errors in the command line itself (unknown options, bad values, missing input files)
  raise ``SystemExit(2)`` as argparse does, after one line on stderr.
  """
  args = _parser().parse_args(argv)
  name = "neural-ot " + (f"bench {args.suite}" if args.command == "bench" else args.command)
  run = {"demo": _demo, "fit": _fit, "sinkhorn": _sinkhorn, "w2": _bench_w2,
         "convert": _bench_convert}[args.suite if args.command == "bench" else args.command]
  try:
    return run(args)
  except KeyboardInterrupt:
    print(f"{name}: interrupted", file=sys.stderr)
    return 130
  except (_UserError, ValueError, TypeError, OSError) as exc:  # OSError: missing, existing,
    # unwritable files and folders, a full disk
    if os.environ.get("NEURAL_OT_DEBUG"):
      raise
    print(f"{name}: {_one_line(exc)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
