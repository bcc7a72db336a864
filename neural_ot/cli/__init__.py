"""The ``neural-ot`` command line: ``demo``, ``fit``, ``sinkhorn``, ``bench w2``, ``bench convert``.

A mistake the user can fix (a bad option value, a file that cannot be read or is unsuitable,
a run that diverges) ends in one line on stderr and exit code 2, never a traceback; Ctrl-C
ends with exit code 130 (``fit`` says where its checkpoint is and how to resume). Set
``NEURAL_OT_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from neural_ot import data
from neural_ot.cli.common import (UsageError, UserError, file_or_measure, input_file,
                                  int_at_least, one_line, positive_float, positive_float32, seed)
from neural_ot.w2bench.runner import METHODS

__all__ = ["UsageError", "main"]

_MAX_SAMPLES = 10 ** 6  # --n: more points than this do not fit the (n, m) problems in memory


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (no usage block) and defaults shown in ``--help``."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
    super().__init__(*args, **kwargs)

  def error(self, message):
    line = f"{self.prog}: {one_line(message)} (see `{self.prog} --help`)"
    print(line, file=sys.stderr)
    raise UsageError(line)


def _add_training(p, steps, steps_help="optimizer steps"):
  p.add_argument("--steps", type=int_at_least(1), default=steps, help=steps_help)
  p.add_argument("--batch-size", type=int_at_least(1, 2 ** 20), default=None,
                 help="samples per measure per step (None: fit_w2 picks it from the data)")
  p.add_argument("--lr", type=positive_float32, default=None,
                 help="peak learning rate (None: fit_w2's default)")
  p.add_argument("--potential", default=None, choices=["icnn", "mlp"],
                 help="network of the potential: input-convex (icnn) or plain MLP (None: fit_w2 "
                      "picks it from the dimension: MLP in 8-16)")
  p.add_argument("--amortization", default="regression",
                 choices=["regression", "objective", "cycle"],
                 help="how the inverse-map predictor is trained")
  p.add_argument("--finetune-iters", type=int_at_least(0), default=None,
                 help="conjugate-solver iterations after the predictor's guess (None: default)")
  p.add_argument("--seed", type=seed, default=0, help="random seed")
  p.add_argument("--quiet", action="store_true", help="no progress output")


def _parser() -> argparse.ArgumentParser:
  measures = sorted(data.SAMPLERS)
  parser = _Parser(prog="neural-ot", description="Neural and entropic OT in JAX.")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  demo = sub.add_parser("demo", help="learn a 2-D W2 map between built-in measures, write a "
                        "picture", description="Learn a 2-D W2 map between built-in measures; "
                        "write a picture, the map and a summary.")
  demo.add_argument("--source", default="8gaussians", choices=measures, help="source measure")
  demo.add_argument("--target", default="normal", choices=measures, help="target measure")
  demo.add_argument("--n", type=int_at_least(2, _MAX_SAMPLES), default=2000,
                    help="held-out samples for the picture and the scores")
  demo.add_argument("--out", default="out", help="output folder")
  _add_training(demo, steps=4000)

  fit = sub.add_parser("fit", help="learn a W2 map between two point clouds (.npy or .csv)",
                       description="Learn the W2 optimal map from SOURCE to TARGET points. "
                       "Checkpoints go to OUT/checkpoints; rerunning the same command resumes.")
  fit.add_argument("source", type=input_file,
                   help="source points: .npy array or .csv/.txt (comma-separated, one point per "
                   "row, an optional header line), shape (n, d)")
  fit.add_argument("target", type=input_file, help="target points, same format, (m, d)")
  fit.add_argument("--out", required=True, help="output folder (map, transported points, "
                   "summary, checkpoints)")
  _add_training(fit, steps=None, steps_help="optimizer steps (2000 when --minutes is not given)")
  fit.add_argument("--minutes", type=positive_float, default=None,
                   help="wall-clock budget in minutes (the schedule fits the steps it buys; "
                   "with --steps, whichever ends first)")
  fit.add_argument("--restart", action="store_true",
                   help="start over, ignoring the checkpoint in OUT/checkpoints")

  sk = sub.add_parser("sinkhorn", help="solve entropic OT between two point clouds (files or "
                      "built-in 2-D measures)",
                      description="Solve entropic OT between SOURCE and TARGET (uniform weights, "
                      "squared Euclidean cost); write a summary, and a picture in 2-D.")
  sk.add_argument("source_file", nargs="?", default=None, type=file_or_measure,
                  metavar="SOURCE", help=f"source points: a .npy/.csv file or a built-in "
                  f"measure ({', '.join(measures)}); default: --source")
  sk.add_argument("target_file", nargs="?", default=None, type=file_or_measure,
                  metavar="TARGET", help="target points, same forms; default: --target")
  sk.add_argument("--source", default="8gaussians", choices=measures,
                  help="built-in source measure when no SOURCE is given")
  sk.add_argument("--target", default="moons", choices=measures,
                  help="built-in target measure when no TARGET is given")
  sk.add_argument("--n", type=int_at_least(2, _MAX_SAMPLES), default=1000,
                  help="samples drawn from a built-in measure")
  sk.add_argument("--epsilon", type=positive_float32, default=0.01,
                  help="entropic regularisation (relative to the mean cost unless "
                  "--absolute-epsilon)")
  eps = sk.add_mutually_exclusive_group()
  eps.add_argument("--relative-epsilon", dest="relative_epsilon", action="store_true",
                   default=True, help="--epsilon is a fraction of the mean pairwise cost")
  eps.add_argument("--absolute-epsilon", dest="relative_epsilon", action="store_false",
                   help="--epsilon is in the units of the cost")
  sk.add_argument("--tol", type=positive_float32, default=1e-3,
                  help="stop when the L1 marginal error is below this")
  sk.add_argument("--max-iters", type=int_at_least(1), default=2000, help="iteration cap")
  sk.add_argument("--seed", type=seed, default=0, help="seed of the built-in samples")
  sk.add_argument("--out", default="out", help="output folder")

  bench = sub.add_parser("bench", help="benchmarks: `bench w2` (the Korotin et al. W2 "
                         "benchmark), `bench convert` (get its data)")
  bsub = bench.add_subparsers(dest="suite", required=True, parser_class=_Parser)
  w2 = bsub.add_parser("w2", help="train on the Mix3toMix10 pair of dimension D and score it")
  w2.add_argument("--dim", type=int_at_least(1), required=True, help="dimension D")
  w2.add_argument("--data-dir", default=None, help="converted benchmark folder (default: "
                  "$NEURAL_OT_W2BENCH or ../shared/data/w2bench; make one with `neural-ot "
                  "bench convert`)")
  w2.add_argument("--steps", type=int_at_least(1), default=2000, help="optimizer steps (ours)")
  w2.add_argument("--seconds", type=positive_float, default=None,
                  help="time budget for ott-jax methods")
  w2.add_argument("--method", default="regression", choices=list(METHODS), help="method")
  w2.add_argument("--eval-every", type=int_at_least(1), default=500,
                  help="steps between evaluations")
  w2.add_argument("--seed", type=seed, default=0, help="random seed")
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
  cv.add_argument("--n-mc", type=int_at_least(256, 2 ** 22), default=2 ** 16,
                  help="Monte-Carlo samples per constant")
  cv.add_argument("--seed", type=seed, default=0, help="seed of the Monte-Carlo samples")
  cv.add_argument("--quiet", action="store_true", help="no progress output")
  return parser


def main(argv=None) -> int:
  """Run the command line; returns the exit code.

  Errors in the command line itself (unknown options, bad values, missing input files)
  raise ``SystemExit(2)`` as argparse does, after one line on stderr.
  """
  args = _parser().parse_args(argv)
  name = "neural-ot " + (f"bench {args.suite}" if args.command == "bench" else args.command)
  try:
    # Imported only now, so that `--help` and a bad option need not load flax or matplotlib.
    return importlib.import_module(f"neural_ot.cli.{args.command}").run(args)
  except KeyboardInterrupt:
    print(f"{name}: interrupted", file=sys.stderr)
    return 130
  except (UserError, ValueError, TypeError, OSError) as exc:  # OSError: missing, existing,
    # unwritable files and folders, a full disk
    if os.environ.get("NEURAL_OT_DEBUG"):
      raise
    print(f"{name}: {one_line(exc)}", file=sys.stderr)
    return 2
