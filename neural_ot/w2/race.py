"""The model race of ``fit_w2(potential="auto")``: which potential fits *these* data.

On the known-map families of :mod:`neural_ot.w2bench.families` the convex ICNN was 3x better
than the non-convex MLP on one family and 25x worse on another at the same dimension, so no
rule on ``dim`` can choose. Each candidate trains for :data:`SHARE` of the run (steps or
seconds) from the same Gaussian start, and the one with the lowest held-out dual
(:func:`neural_ot.w2.diagnostics.heldout_dual_terms`, no known map needed) goes on; where the
MLP is the dimension's default, the ICNN needs a clear margin for that (:func:`keeps_mlp`). A
candidate whose network is cut off by inactive units, or whose held-out conjugate is unsolved
and images of held-out source samples farther from the targets than its start's
(:func:`neural_ot.w2.diagnostics.push_worse`), is passed over; a cut-off plain MLP is
restarted once with leaky units (:data:`RECOVERY`). The result is recorded in ``race.json``
beside the checkpoints, so a resumed run does not race again.

The race also measures how well the winner's conjugate was solved: where its solves end far
from converged above 16 dimensions (:func:`unsolved`), the rest of the run gives them
:data:`HARD_SOLVE_FACTOR` times the steps (and the map's inverse, which defaults to the
training solve, does too) and, for the MLP from 33 to 64 dimensions, a network
:data:`HARD_WIDTH_FACTOR` times wider, from its Gaussian start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot import io
from neural_ot.w2 import diagnostics
from neural_ot.w2.defaults import MLP_DIMS

__all__ = ["CANDIDATES", "RECOVERY", "RECOVERY_LEAK", "SHARE", "ICNN_GAIN_RATIO", "keeps_mlp",
           "HARD_SOLVE_RESIDUAL", "HARD_SOLVE_FACTOR", "HARD_SOLVE_MIN_DIM", "worthwhile",
           "conjugate_residual", "unsolved", "race", "fall_back", "copy_checkpoint"]

CANDIDATES = ("mlp", "icnn")
# The restart of an MLP whose network was cut off in the race (the stall of issue 27: its last
# hidden layer died at a high rate): leak=0.02 kept it learning at D = 48 and a rate of 2e-2
# (1000 steps: forward L2-UVP 2.87 % against 6.68 % stalled), but costs 1.1-1.3x at equal steps
# on healthy runs (Mix3toMix10 D = 8, ridges-gmm D = 32), so it is not the default.
RECOVERY = "mlp-leak"
RECOVERY_LEAK = 0.02
SHARE = 0.1
# A race needs a run long enough for its tenth to say something (measured: the held-out dual
# ordered the two potentials as their final L2-UVP did after 300 steps at D = 16).
MIN_STEPS, MIN_SECONDS = 2000, 60.0
# The conjugate's residual above which the MLP's solve counts as unsolved (RMS per coordinate
# of the batch's largest |grad f(x) - y| after the solve; data standardised, tol 1e-3). Tune
# half of `w2bench.families`, MLP race runs: lse-box 0.15-1.0 at D = 64 (its solves never
# converged: 10 of 10 steps, forward L2-UVP 20.6 % in 300 s; 20 steps: 15.4 %, inverse 30.6 ->
# 9.4 %), ridges-gmm 0.002-0.004, softplus2-gmm 0.004-0.009, icnn-student 0.001, radial-subspace
# 0.0001 (converged in 5-7 steps). benchmarks/RESULTS.md, session 42.
HARD_SOLVE_RESIDUAL = 0.03
HARD_SOLVE_FACTOR = 2
# At D = 16 the longer solves cost steps for nothing (lse-box, 300 s: forward / inverse 0.102 /
# 0.968 % with 10 steps, 0.150 / 0.983 % with 20); at D = 32 they halved the forward error
# (9.92 / 15.4 -> 4.93 / 3.74 %). The ICNN too (session 48): on the probe pair ridges-box at
# D = 32, where the race chose it with a residual of 0.12, 5 minutes gave 0.62 / 1.70 % against
# 0.77 / 3.41 % with 10 steps (benchmarks/RESULTS.md, sessions 46 and 48).
HARD_SOLVE_MIN_DIM = 16
# ... and, from 33 to HARD_WIDTH_MAX_DIM dimensions, the network is widened by this factor and
# restarted from its Gaussian start: the unsolved pairs' maps are nearly piecewise constant
# (log-sum-exp potentials). Tune family lse-box, 300 s, 20 solver steps, forward / inverse
# L2-UVP %: D = 64 18.3 / 10.0 -> 10.3 / 10.6 (widths x2); D = 32 4.93 / 3.74 -> 3.26 / 5.11
# (mixed: not widened); D = 128 50.9 / 49.7 -> 61.0 / 69.9 (a step cost 3.7x as much: 573
# steps). The smooth tune families, whose solves converge, keep their width (wider, they were
# worse: benchmarks/RESULTS.md, sessions 41, 44).
HARD_WIDTH_FACTOR = 2
HARD_WIDTH_MIN_DIM, HARD_WIDTH_MAX_DIM = 33, 64
# Where the MLP is the dimension's default (defaults.MLP_DIMS) and its race gained on the start,
# the ICNN replaces it only with a race gain (start's held-out dual minus the candidate's) at
# least this many times the MLP's. On the tune half the race never chose the ICNN there; on
# the probe families of session 45 it did by slim margins (gain 1.16x the MLP's on huber-gmm
# D = 16, 1.23x on ridges-box D = 32, 1.01x on huber-shell D = 16), and the ICNN's inverse
# missed the target on the first two (5.26 and 3.35 % inverse L2-UVP; the MLP, forced on
# huber-gmm D = 16: 0.65 %). The MLP keeps improving after the race where the ICNN levels off
# (held-out dual gained after the race over that gained in it, medians of the runs of sessions
# 41-45: 0.36 for the MLP, 0.15 for the ICNN), so a tie at a tenth of the run is the MLP's.
ICNN_GAIN_RATIO = 1.5


def worthwhile(steps, max_seconds) -> bool:
  """Whether a run of ``steps`` (or ``max_seconds``) is long enough to race."""
  if steps is not None and steps < MIN_STEPS:
    return False
  return max_seconds is None or max_seconds >= MIN_SECONDS


def conjugate_residual(history, dim: int) -> float:
  """The median over ``history``'s logged steps of the conjugate's largest residual
  ``|grad f(x) - y|`` after the solve, per coordinate (``/ sqrt(dim)``); NaN when none."""
  vals = [float(h["conj_grad_norm"]) for h in history if "conj_grad_norm" in h]
  return float(np.median(vals)) / np.sqrt(dim) if vals else float("nan")


def unsolved(trainer, residual: float, dim: int) -> bool:
  """Whether a race candidate's conjugate solves ended unsolved and the rest of the run should
  get longer ones: the potential (MLP or ICNN) of a W2 fit above :data:`HARD_SOLVE_MIN_DIM`
  dimensions with a residual above :data:`HARD_SOLVE_RESIDUAL`."""
  return (trainer.cost is None and dim > HARD_SOLVE_MIN_DIM
          and bool(residual > HARD_SOLVE_RESIDUAL))


def keeps_mlp(dim: int, start_dual: float, mlp_dual: float, icnn_dual: float) -> bool:
  """Whether a race whose lower held-out dual is the ICNN's keeps the MLP: at a dimension whose
  default is the MLP (:data:`neural_ot.w2.defaults.MLP_DIMS`), when the MLP gained on the start
  (``start_dual - mlp_dual > 0``) and the ICNN's gain is under :data:`ICNN_GAIN_RATIO` times it."""
  gain_mlp, gain_icnn = start_dual - mlp_dual, start_dual - icnn_dual
  return bool(MLP_DIMS[0] <= dim <= MLP_DIMS[1] and gain_mlp > 0
              and gain_icnn < ICNN_GAIN_RATIO * gain_mlp)


def _keep_mlp(best, live, results, trainers, start_terms, dim) -> dict | None:
  """``{"start_dual", "gain_ratio"}`` when the race keeps the MLP (:func:`keeps_mlp`), else
  ``None``; ``start_terms(trainer)``: the start's held-out dual terms."""
  if best != "icnn" or "mlp" not in live or not MLP_DIMS[0] <= dim <= MLP_DIMS[1]:
    return None
  fx, fcy = start_terms(trainers["mlp"])[:2]
  start_dual = float(jnp.mean(fx) + jnp.mean(fcy))
  m, i = results["mlp"]["dual"], results["icnn"]["dual"]
  if not keeps_mlp(dim, start_dual, m, i):
    return None
  return {"start_dual": start_dual, "gain_ratio": (start_dual - i) / (start_dual - m)}


def _record_key(trainers, fingerprint) -> str:
  return hashlib.sha256("".join(fingerprint(t) for t in trainers.values()).encode()).hexdigest()


def _budget(steps, max_seconds) -> dict:
  if steps is not None:
    return dict(steps=max(int(steps * SHARE), 1), max_seconds=None)
  return dict(steps=None, max_seconds=SHARE * max_seconds,
              plan_seconds=(1.0 - SHARE * (len(CANDIDATES) - 1)) * max_seconds)


def race(trainers: dict, start: Callable, train_part: Callable, ckpt: Callable,
         fingerprint: Callable, x_held, y_held, steps, max_seconds, resume: bool,
         progress: bool, widen: bool = True):
  """Race ``trainers`` (a dict ``name -> W2Trainer`` over :data:`CANDIDATES` and
  :data:`RECOVERY`) and return ``(trainer, state, history, choice, states)``.

  ``start(trainer)`` is a fresh state; ``train_part(trainer, state, checkpoint=, steps=,
  max_seconds=, ...)`` trains it on the fit driver; ``ckpt(name)`` is a checkpoint path (or
  ``None``); ``choice`` is ``{"candidates": {name: figures}, "chosen": name}`` and
  ``states`` maps each candidate raced in this call to ``(state, history)``. ``widen=False``
  (widths the user chose) keeps the winner's widths where its conjugate was unsolved.
  """
  record = ckpt("race.json")
  key = _record_key(trainers, fingerprint)
  done = None
  if record and resume and io.seen_by_all(record, "fit_w2"):
    with open(record, encoding="utf-8") as fh:
      saved = json.load(fh)
    if saved.get("fingerprint") == key:
      done = saved["choice"]
  results, states, held_starts = {}, {}, {}

  def start_terms(trainer):  # the start's held-out dual terms, once per trainer, when needed
    if trainer not in held_starts:
      held_starts[trainer] = diagnostics.heldout_dual_terms(trainer, start(trainer).params,
                                                            x_held, y_held)
    return held_starts[trainer]

  if done is None:
    for name, trainer in trainers.items():
      if name == RECOVERY and not results.get("mlp", {}).get("cut_off"):
        continue  # the restart runs only when the MLP's network was cut off
      state, hist = train_part(trainer, start(trainer), checkpoint=f"race-{name}.msgpack",
                               **_budget(steps, max_seconds))
      terms = diagnostics.heldout_dual_terms(trainer, state.params, x_held, y_held)
      fx, fcy, resid = terms[:3]
      is_solved = diagnostics.solved(resid, x_held.shape[1])
      share, per = diagnostics.inactive_units(trainer, state.params["f"], x_held)
      push = diagnostics.push_distances(trainer, state.params["f"], start(trainer).params["f"],
                                        x_held, y_held)
      worse = diagnostics.push_worse(*push, solved=is_solved)
      if worse and is_solved:  # the start's dual is needed only here (push_worse's `gained`)
        gain, se = diagnostics.dual_gain(terms, start_terms(trainer))[1:]
        worse = diagnostics.push_worse(*push, solved=True,
                                       gained=diagnostics.clearly_gained(gain, se))
      results[name] = {"dual": float(jnp.mean(fx) + jnp.mean(fcy)), "inactive_share": share,
                       "cut_off": diagnostics.cut_off(share, per) and not trainer.leak,
                       "steps": int(state.step),
                       "conj_residual": conjugate_residual(hist, x_held.shape[1]),
                       "push": push[0], "push_start": push[1],
                       "push_worse": worse}
      states[name] = (state, hist)
    # Passed over: a network cut off by inactive units, or images farther from the target than
    # the start's where the held-out conjugate is unsolved (the dual is then no yardstick:
    # probe lse-student at D = 32, the ICNN won a race by its dual and ended at 186 % forward
    # L2-UVP; where it is solved, images a little off a tenth into the run are common on
    # candidates that go on to fit, e.g. the ICNN of held-out radial-student at D = 16, and a
    # clear gain of the dual overrules them: tune pair lse-box at D = 128, session 49).
    live = [n for n in results if not (results[n]["cut_off"] or results[n]["push_worse"])]
    best = min(live or list(results), key=lambda n: results[n]["dual"])
    kept = _keep_mlp(best, live, results, trainers, start_terms, x_held.shape[1])
    best = "mlp" if kept else best
    done = {"candidates": results, "chosen": best}
    if kept:
      done["mlp_kept"] = kept
    if unsolved(trainers[best], results[best]["conj_residual"], x_held.shape[1]):
      done["finetune_iters"] = HARD_SOLVE_FACTOR * trainers[best].finetune_iters
      if (widen and trainers[best].potential == "mlp"
          and HARD_WIDTH_MIN_DIM <= x_held.shape[1] <= HARD_WIDTH_MAX_DIM):
        done["hidden"] = [HARD_WIDTH_FACTOR * int(h) for h in trainers[best].hidden]
    if record:
      io.write_json_atomic(record, {"fingerprint": key, "choice": done})
  best = done["chosen"]
  trainer = trainers[best]
  if done.get("finetune_iters"):  # the winner's solves were unsolved: longer ones from here
    trainer = dataclasses.replace(trainer, finetune_iters=int(done["finetune_iters"]))
  if done.get("hidden"):  # ... and a wider network, from its Gaussian start
    trainer = dataclasses.replace(trainer, hidden=tuple(int(h) for h in done["hidden"]))
    state, hist = start(trainer), []
  else:  # Resumed: the winner's race checkpoint (or the main one) carries its state.
    state, hist = states.get(best, (start(trainer), []))
  if progress:
    figures = ", ".join(f"{n} {r['dual']:.6g}" for n, r in done["candidates"].items())
    longer = (f" (its conjugate unsolved: {trainer.finetune_iters} solver steps from here"
              + (f", widths {tuple(trainer.hidden)} restarted from the Gaussian start"
                 if done.get("hidden") else "") + ")" if done.get("finetune_iters") else "")
    kept = (" (the ICNN's lead too slim to leave the dimension's default: gain "
            f"{done['mlp_kept']['gain_ratio']:.2f}x the MLP's)" if done.get("mlp_kept") else "")
    sys.stderr.write(f"[fit_w2] potential='auto': held-out dual after the race: {figures}; "
                     f"continuing with {best!r}{kept}{longer}\n")
  return trainer, state, hist, done, states


def fall_back(choice: dict, states: dict, dual_end: float, untrusted: bool = False):
  """The race candidate to return instead of the winner, or ``None``: a late stall (measured:
  an MLP that ran 79,000 steps at its peak rate ended at its start) can leave the winner worse
  than a candidate after its race. Returns ``(name, new choice)`` for the candidate (raced in
  this call, not cut off, its pushforward not worse than its start's) with the lowest held-out
  dual below ``dual_end``, or with the lowest held-out dual when the winner is ``untrusted``
  (its pushforward ended worse than its start's: ``FitDiagnostics.push_flagged``, so its dual
  is no yardstick)."""
  others = {n: r for n, r in choice["candidates"].items() if n != choice["chosen"]
            and n in states and not r["cut_off"] and not r.get("push_worse")
            and (untrusted or r["dual"] < dual_end)}
  if not others:
    return None
  name = min(others, key=lambda n: others[n]["dual"])
  # the longer solve and the width were the winner's; the candidate returned keeps its own
  kept = {k: v for k, v in choice.items() if k not in ("finetune_iters", "hidden")}
  return name, {**kept, "chosen": name, "fallback_from": choice["chosen"],
                "fallback_dual": dual_end}


def copy_checkpoint(src, dst, fingerprint: str):
  """Copy the checkpoint ``src`` to ``dst`` atomically, when ``src`` exists, tagged with
  ``fingerprint`` (the winner may go on with longer conjugate solves: the same parameters,
  another trainer, so the copy must carry the trainer that resumes it)."""
  if src and os.path.isfile(src) and jax.process_index() == 0:
    raw = io.load(src, expect=io.CHECKPOINT_FORMAT, what="checkpoint")
    io.save_atomic(dst, {**raw, "fingerprint": fingerprint})
  if jax.process_count() > 1:  # every process continues once the copy is there
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"neural_ot copy_checkpoint {dst}")
