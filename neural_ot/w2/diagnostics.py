"""What a user can check about a learned W2 map without knowing the true map.

* The **held-out dual** ``E f(x) + E f*(y)`` on samples the fit never trained on (lower is
  better; every potential's value bounds the optimum from above). ``f*(y)`` is the larger of a
  local solve from the predictor's argmax and the best held-out source point
  (``max_i <x_i, y> - f(x_i)``, a discrete c-transform), so a non-convex potential cannot look
  better than it is where the local solve misses the global argmax.
* **Inactive units**: hidden units whose activation has no curvature (``|s''(z)| < 1e-3``
  relative to its peak) on at least 99 % of the held-out source samples. Such a unit adds an
  affine function of ``x`` to its layer: when most units are inactive, ``grad f`` is (nearly)
  the affine Gaussian start, whatever the training metrics say.
* **Conjugate residuals**: ``|grad f(x*) - y|`` at the local solve's argmax (standardised
  units), the median and 99th percentile.
* **The pushforward check** (no conjugate): the energy distance between the map's images of
  held-out source samples and held-out target samples, beside the Gaussian start's
  (:func:`push_distances`). The held-out dual's ``f*`` comes from a solve, and an unsolved
  solve makes the dual look better than it is; the map's images need no solve. Where the solve
  converged and the dual gained clearly, the dual decides (:func:`push_worse`): the energy
  distance weighs the moments the Gaussian start matches by construction.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from neural_ot.geometry.costs import SqEuclidean
from neural_ot.potentials.icnn import ACTIVATIONS

__all__ = ["FitDiagnostics", "HeldoutTerms", "heldout_dual_terms", "inactive_units", "diagnose",
           "cut_off", "warn_if_stalled", "keep_start", "stall_advice", "push_distances",
           "push_worse", "solved", "dual_gain", "clearly_gained"]

# A fit "stalled" when its held-out dual is no better than the Gaussian start's by more than
# this many standard errors of the paired difference (and by this fraction of the start's
# value, whichever is larger) ...
_STALL_SE = 3.0
_STALL_REL = 1e-4
# A gain of more than this many standard errors is a fit that learned: its inactive units are
# recorded, not flagged. (10 before session 44: the tune pair softplus2-gmm at D = 2, 190x better
# than its Gaussian map in L2-UVP with 63 % of its units inactive, gained 7.6 standard errors
# and was flagged; every stall measured gained under 3.)
_CLEAR_GAIN_SE = 5.0
# A flagged fit's message also names an unsolved conjugate: the held-out solve (100 L-BFGS
# steps to 1e-5) left a median residual |grad f(x*) - y| above this per coordinate (standardised
# units). Measured on the probe family huber-shell at D = 64 (session 45): both race candidates'
# training solves ended 14-34 per coordinate from converged and the fit returned its start; the
# smooth tune families' training solves end under 0.009 (neural_ot.w2.race, session 42).
_UNSOLVED_RESIDUAL = 0.03
# A map is flagged, and the start returned, when its images of held-out source samples are
# farther from the held-out targets than the start's: an energy distance larger by more than
# this many standard errors of the paired difference and by a factor, _PUSH_RATIO where the
# held-out conjugate is unsolved (the dual's f* is then a lower bound: its gain is no evidence)
# and _PUSH_RATIO_SOLVED where it is solved. Measured on the probe family lse-student at
# D = 32 (session 46), the ICNN forced, 5 minutes: with 10 solver steps it ended at forward
# L2-UVP 186 % against the Gaussian map's 88 %, unflagged, its held-out dual 65 standard errors
# below the start's, its held-out conjugate unsolved (median residual 0.19 per coordinate),
# energy distance 13x the start's; with 20 solver steps its conjugate was solved (0.009), it
# was better than the start in L2-UVP (53 / 55 % against 88 / 77) and still 1.4x the start's
# energy distance (an energy distance weighs the moments the Gaussian start matches). The 16
# fits that learned in that session's checks (tune, held-out and probe pairs, D = 8 to 32)
# ended at 0.47x the start's or less (near or below 0 where the images match: the statistic
# is unbiased, so the ratio is to the start's positive part). Four standard errors: the
# error is estimated from 8 blocks.
_PUSH_SE = 4.0
_PUSH_RATIO = 1.25
_PUSH_RATIO_SOLVED = 3.0
PUSH_ROWS, PUSH_BLOCKS = 4096, 8
# ... or when at least this share of its hidden units is inactive, or this share of one layer's
# (every path from the input to the output of an MLP crosses each layer: one dead layer freezes
# the network before it; measured, the stalls at D = 48 and at D = 2 with a rate of 1.0 had the
# last layer 100 % inactive and the others below 20 %).
INACTIVE_FLAG = 0.5
LAYER_FLAG = 0.9


def cut_off(share: float, by_layer) -> bool:
  """Whether the potential's network is (mostly) cut off by inactive units."""
  return share >= INACTIVE_FLAG or max(by_layer, default=0.0) >= LAYER_FLAG


@dataclasses.dataclass(frozen=True)
class FitDiagnostics:
  """What :func:`neural_ot.fit_w2` measured on held-out samples at the end of a fit.

  Attributes:
    dual_start, dual_end: held-out dual ``E f(x) + E f*(y)`` (standardised units; lower is
      better) of the Gaussian start and of the returned map.
    dual_gain: ``dual_start - dual_end``; ``dual_gain_se`` its standard error (paired samples).
    inactive_share: share of hidden units without curvature on the held-out samples;
      ``inactive_by_layer`` per hidden layer.
    conj_residual_median, conj_residual_p99: ``|grad f(x*) - y|`` after the inverse solve.
    stalled: the fit ended no better than its start (see :attr:`message`).
    message: what was seen, in words ("" when nothing was flagged).
    choice: the automatic model choice (``potential="auto"``): candidate names and their
      held-out duals at the end of their race, and the one kept; ``None`` otherwise.
    returned_start: the trained map's held-out dual was worse than its Gaussian start's (or
      its pushforward was than its :attr:`reference`'s), so the fit returned that start
      instead; the other figures describe the trained map.
    push_start, push_end: energy distance (standardised units) between the images of held-out
      source samples under the :attr:`reference` and under the map, and held-out target
      samples (:func:`push_distances`); ``push_se`` the standard error of their difference;
      ``push_flagged`` whether the map's images were clearly the farther (:func:`push_worse`).
    reference: the start the map was compared with: ``"Gaussian start"``, ``"identity
      start"`` (the ``|x - y|^p`` costs' maps) or ``"map it was fine-tuned from"``
      (``init_map``).
  """

  dual_start: float
  dual_end: float
  dual_gain: float
  dual_gain_se: float
  inactive_share: float
  inactive_by_layer: tuple
  conj_residual_median: float
  conj_residual_p99: float
  stalled: bool
  message: str = ""
  choice: dict | None = None
  returned_start: bool = False
  push_start: float = float("nan")
  push_end: float = float("nan")
  push_se: float = float("nan")
  push_flagged: bool = False
  reference: str = "Gaussian start"

  def as_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["inactive_by_layer"] = list(self.inactive_by_layer)
    return out


def _hidden_preactivations(trainer, params_f, x):
  """Pre-activations ``(n, width)`` of each hidden layer of the potential at ``x: (n, d)``."""
  _, state = trainer.f_module.apply(params_f, x, capture_intermediates=True)
  inter = state["intermediates"]
  out = lambda name: inter[name]["__call__"][0]
  layers = len(trainer.hidden)
  if trainer.potential == "mlp":
    return [out(f"Dense_{k}") for k in range(layers)]
  return [out("Dense_0")] + [out(f"_PositiveDense_{k - 1}") + out(f"Dense_{k}")
                             for k in range(1, layers)]


@functools.partial(jax.jit, static_argnums=0)
def _inactive(trainer, params_f, x):
  act = jax.nn.softplus if trainer.potential == "mlp" else ACTIVATIONS[trainer.activation]
  curv = jax.vmap(jax.grad(jax.grad(lambda z: act(z).sum())))
  peak = jnp.max(jnp.abs(curv(jnp.linspace(-3.0, 3.0, 601))))
  shares = []
  for z in _hidden_preactivations(trainer, params_f, x):
    flat = jnp.abs(curv(z.reshape(-1)).reshape(z.shape)) < 1e-3 * peak
    shares.append(jnp.mean(jnp.mean(flat, axis=0) >= 0.99))
  return jnp.stack(shares)


def inactive_units(trainer, params_f, x) -> tuple[float, tuple]:
  """``(share, per layer)`` of hidden units of the potential without curvature on at least
  99 % of the rows of ``x`` (standardised source samples ``(n, d)``). ReLU units (no
  curvature anywhere) are not meaningful here; conditional networks give ``(nan, ())``."""
  if trainer.context_dim:  # conditional networks (a fine-tuned prediction): not measured
    return float("nan"), ()
  per = np.asarray(_inactive(trainer, params_f, jnp.asarray(x)), np.float64)
  widths = np.asarray(trainer.hidden, np.float64)
  return float(np.sum(per * widths) / np.sum(widths)), tuple(float(v) for v in per)


def _energy_blocks(a, y):
  """Energy distance between the rows of ``a`` and ``y`` (``(k, m, d)`` each: ``k`` blocks of
  ``m``), per block: the unbiased U-statistic ``2 E|a - y| - E|a - a'| - E|y - y'|``."""
  dist = lambda u, v: jnp.sqrt(jnp.maximum(SqEuclidean().pairwise(u, v), 0.0))

  m = a.shape[1]

  def within(u):  # mean over pairs i != j (the diagonal is 0 up to rounding: left out)
    d = dist(u, u)
    return (jnp.sum(d) - jnp.trace(d)) / (m * (m - 1))

  one = lambda u, v: 2 * jnp.mean(dist(u, v)) - within(u) - within(v)
  return jax.vmap(one)(a, y)


@functools.partial(jax.jit, static_argnums=0)
def _push_blocks(trainer, params_f, start_f, x, y):
  k = PUSH_BLOCKS
  m = min(x.shape[0], y.shape[0], PUSH_ROWS) // k
  blocks = lambda v: v[:k * m].reshape(k, m, -1)
  # each block of images meets the next block of targets: held-out rows drawn with one key
  # can be pairs (a known-map sampler's y_i = T(x_i)), and pairs would bias E|T(x) - y| down
  yb = jnp.roll(blocks(y), 1, axis=0)
  return (_energy_blocks(blocks(trainer.transport(params_f, x)), yb),
          _energy_blocks(blocks(trainer.transport(start_f, x)), yb))


def push_distances(trainer, params_f, start_f, x, y) -> tuple[float, float, float]:
  """``(end, start, se)``: the energy distance between the map ``params_f``'s images of the
  held-out source rows ``x`` and the held-out target rows ``y`` (standardised units, at most
  :data:`PUSH_ROWS` of each, in :data:`PUSH_BLOCKS` blocks; block ``b`` of the images against
  block ``b - 1`` of the targets), the same for the Gaussian start
  ``start_f``, and the standard error of their paired difference (over the blocks).

  The energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` is zero only when the laws agree
  and needs neither a solve nor a bandwidth. A map that carries ``P`` onto ``Q`` has images
  closer to ``Q`` than the Gaussian start's, unless ``Q`` is the start's image already.
  ``x`` and ``y`` need at least ``2 * PUSH_BLOCKS`` rows each."""
  x, y = jnp.asarray(x), jnp.asarray(y)
  for name, v in (("x", x), ("y", y)):
    if v.ndim != 2 or v.shape[0] < 2 * PUSH_BLOCKS:
      raise ValueError(f"push_distances: `{name}` must be an (n, d) array with n >= "
                       f"{2 * PUSH_BLOCKS}, got shape {tuple(v.shape)}.")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"push_distances: `x` and `y` must have the same number of columns, got "
                     f"{x.shape[1]} and {y.shape[1]}.")
  end, start = (np.asarray(v, np.float64) for v in _push_blocks(trainer, params_f, start_f, x, y))
  return float(end.mean()), float(start.mean()), float(np.std(end - start, ddof=1)
                                                       / np.sqrt(len(end)))


def solved(resid, dim: int) -> bool:
  """Whether held-out conjugate solves with residuals ``resid`` (``|grad f(x*) - y|`` per row,
  standardised units) count as solved: median per coordinate at most ``_UNSOLVED_RESIDUAL``."""
  return not float(np.median(np.asarray(resid, np.float64))) / np.sqrt(dim) > _UNSOLVED_RESIDUAL


def dual_gain(terms, start_terms) -> tuple[float, float, float]:
  """``(start, gain, se)``: the start's held-out dual ``E f0(x) + E f0*(y)``, the gain
  ``start - end`` of the map whose held-out terms are ``terms`` (``(fx, fcy, ...)``, as
  :func:`heldout_dual_terms` gives; ``start_terms`` the same for the start, on the same rows)
  and the gain's standard error (paired samples)."""
  fx, fcy = (np.asarray(v, np.float64) for v in terms[:2])
  fx0, fcy0 = (np.asarray(v, np.float64) for v in start_terms[:2])
  for name, a, b in (("f(x)", fx, fx0), ("f*(y)", fcy, fcy0)):
    if a.ndim != 1 or a.shape != b.shape or a.size < 2:
      raise ValueError(f"dual_gain: the {name} terms of `terms` and `start_terms` must be "
                       f"vectors of the same length >= 2 (the same held-out rows), got shapes "
                       f"{a.shape} and {b.shape}.")
  start = float(fx0.mean() + fcy0.mean())
  se = float(np.sqrt(np.var(fx0 - fx) / len(fx) + np.var(fcy0 - fcy) / len(fcy)))
  return start, start - float(fx.mean() + fcy.mean()), se


def clearly_gained(gain: float, se: float) -> bool:
  """Whether a held-out dual gain ``gain`` with standard error ``se`` is clear: more than
  ``_CLEAR_GAIN_SE`` standard errors (NaN: no)."""
  return bool(np.isfinite(gain) and gain > _CLEAR_GAIN_SE * se)


def push_worse(end: float, start: float, se: float, solved: bool = False,
               gained: bool = False) -> bool:
  """Whether a map's energy distance ``end`` is clearly above its start's ``start``: by more
  than ``_PUSH_SE`` standard errors ``se`` and by the factor ``_PUSH_RATIO`` on the start's
  positive part (``_PUSH_RATIO_SOLVED`` where the map's held-out conjugate was ``solved``, so
  that its held-out dual is evidence too). Never where the conjugate was ``solved`` and the
  held-out dual ``gained`` clearly on the start's (by ``_CLEAR_GAIN_SE`` standard errors):
  the dual is then the yardstick, and the energy distance, which weighs the moments the
  Gaussian start matches by construction, is not (tune pair lse-box at D = 128, session 49: a
  map at 35.7 / 35.4 % forward / inverse L2-UVP against its start's 125.5 / 127.1 %, held-out
  dual gain 63 with a standard error of 0.22, had 9.9x its start's energy distance)."""
  if solved and gained:
    return False
  ratio = _PUSH_RATIO_SOLVED if solved else _PUSH_RATIO
  return bool(end - start > _PUSH_SE * se and end > ratio * max(start, 0.0))


class HeldoutTerms(NamedTuple):
  """Per-sample terms of the held-out dual (standardised units): ``fx = f(x_i)``, ``fcy =
  f*(y_j)`` as used by the diagnostics, ``resid = |grad f(x*) - y_j|`` of the local solve and
  ``local`` its value ``<x*, y_j> - f(x*)`` (the W2 estimate's conjugate)."""

  fx: jax.Array
  fcy: jax.Array
  resid: jax.Array
  local: jax.Array


@functools.partial(jax.jit, static_argnames=("trainer", "discrete"))
def heldout_dual_terms(trainer, params, x, y, discrete: bool = True) -> HeldoutTerms:
  """Per-sample ``f(x_i)`` and ``f*(y_j)`` and the local solve's residuals
  ``|grad f(x*) - y_j|``, all in standardised units (a :class:`HeldoutTerms`). ``f*(y_j)`` is
  the local solve (L-BFGS to ``|grad| < 1e-5`` from the predictor's argmax) or, with
  ``discrete``, the larger of it and the best ``x_i``."""
  f = trainer.potential_fn(params["f"])
  solver = dataclasses.replace(trainer.solver, tol=1e-5, max_iters=100)
  res = trainer.solve(solver, f, y, trainer.predict(params["g"], y))
  fx = jax.vmap(f)(x)
  if not discrete:
    return HeldoutTerms(fx, res.value, res.grad_norm, res.value)
  local = jnp.sum(res.x * y, -1) - jax.vmap(f)(res.x) - trainer.residual_rows(res.x, y)
  if trainer.cost is None:
    best = jax.lax.map(lambda yj: jnp.max(x @ yj - fx), y, batch_size=256)
  else:  # the c-transform over the held-out points: - r(x_i - y_j)
    best = jax.lax.map(lambda yj: jnp.max(x @ yj - fx - jax.vmap(trainer.cost.residual)(x - yj)),
                       y, batch_size=256)
  return HeldoutTerms(fx, jnp.maximum(local, best), res.grad_norm, res.value)


def diagnose(trainer, params, start_params, x, y, choice=None, terms=None,
             start_terms=None, push_params=None,
             reference: str = "Gaussian start") -> FitDiagnostics:
  """Diagnostics of ``params`` against its Gaussian start ``start_params`` on held-out
  standardised samples ``x ~ P``, ``y ~ Q`` (the same rows for both, so the difference of the
  duals is paired). ``start_params`` may be ``None`` (no Gaussian start): no stall test, and
  the pushforward check compares with ``push_params`` (named ``reference``: the identity start
  of the ``|x - y|^p`` costs' maps, or the map a fine-tune started from), if given.
  ``terms``, ``start_terms``: ``heldout_dual_terms(trainer, params, x, y)`` and the same for
  ``start_params``, when the caller has them."""
  x, y = jnp.asarray(x), jnp.asarray(y)
  terms = heldout_dual_terms(trainer, params, x, y) if terms is None else terms
  fx, fcy, resid = (np.asarray(v, np.float64) for v in terms[:3])
  end = float(fx.mean() + fcy.mean())
  share, per = inactive_units(trainer, params["f"], x)
  resid_med, resid_99 = (float(v) for v in np.percentile(resid, [50, 99]))
  if start_params is None:
    start, gain, se = float("nan"), float("nan"), float("nan")
  else:
    if start_terms is None:
      start_terms = heldout_dual_terms(trainer, start_params, x, y)
    start, gain, se = dual_gain(terms, start_terms)
  push = (float("nan"),) * 3
  ref = start_params if start_params is not None else push_params
  reference = "Gaussian start" if start_params is not None else reference
  if (ref is not None and not trainer.context_dim
      and min(x.shape[0], y.shape[0]) >= 2 * PUSH_BLOCKS):  # (a few held-out rows: no check)
    push = push_distances(trainer, params["f"], ref["f"], x, y)
  notes = []
  per_coord = resid_med / np.sqrt(x.shape[1])
  gained = clearly_gained(gain, se)
  pushed = push_worse(*push, solved=solved(resid, x.shape[1]), gained=gained)
  if pushed:
    notes.append(f"the map carries held-out source samples farther from held-out target samples "
                 f"than its {reference} does (energy distance {push[0]:.3g} against "
                 f"{push[1]:.3g}, standard error of the difference {push[2]:.3g}), whatever its "
                 f"held-out dual says")
  no_gain = np.isfinite(gain) and gain <= max(_STALL_SE * se, _STALL_REL * abs(start))
  if no_gain:
    notes.append(f"the held-out dual ended no better than the Gaussian start's (gain {gain:.3g}, "
                 f"standard error {se:.3g}): the map is (close to) the Gaussian map between "
                 f"the measures' moments")
  leaky = trainer.potential == "mlp" and trainer.leak > 0  # its units pass gradient back
  # inactive units matter where they hold the map at its start: a fit that gained clearly is
  # not flagged for them (at D = 2 the ICNN of radial-student ended at 0.05 % against the
  # Gaussian map's 9.5 % with many units in their affine range)
  if cut_off(share, per) and not leaky and not gained:
    notes.append(f"{100 * share:.0f} % of the potential's hidden units are inactive (no "
                 f"curvature on 99 % of held-out samples; by layer "
                 + ", ".join(f"{100 * v:.0f} %" for v in per) + ")")
  if notes and per_coord > _UNSOLVED_RESIDUAL:  # (NaN compares False)
    notes.append(f"the trained potential's conjugate was not solved on held-out targets "
                 f"(median residual |grad f(x*) - y| {per_coord:.3g} per coordinate after 100 "
                 f"solver steps), so its training gradients were biased: more solver steps "
                 f"(`finetune_iters`) or a smaller `learning_rate` may train it")
  return FitDiagnostics(start, end, gain, se, share, per, resid_med, resid_99,
                        bool(notes), "; ".join(notes), choice, push_start=push[1],
                        push_end=push[0], push_se=push[2], push_flagged=pushed,
                        reference=reference)


def keep_start(diag: FitDiagnostics) -> FitDiagnostics | None:
  """The diagnostics of a fit that returns its Gaussian start instead of the trained map, or
  ``None``: the start is kept when the trained map's held-out dual is higher (worse). Measured
  at D = 128 (5-minute runs, ``benchmarks/RESULTS.md``, issue 27): on every pair whose trained
  map ended above its start's held-out dual (icnn-box, radial-student, quadratic-gauss,
  icnn-student), the start's L2-UVP to the known map was the lower one (1.12 vs 1.14 %,
  0.39 vs 0.44 %, 0.001 vs 0.026 %, 1.28 vs 1.31 %). The start is also kept when the map's
  pushforward is clearly farther from the target than the start's (``push_flagged``; the
  probe pair lse-student at D = 32, session 46: the ICNN's forward L2-UVP 186 %, the start's
  88 %)."""
  pushed = diag.push_flagged
  if not (diag.dual_gain < 0 or pushed):  # also False without a start (nan)
    return None
  note = (f"the {diag.reference} is returned in its place"
          if pushed and not diag.dual_gain < 0
          else f"the trained map's held-out dual is higher than its Gaussian start's by "
               f"{-diag.dual_gain:.3g} (standard error {diag.dual_gain_se:.3g}): the Gaussian "
               f"start is returned in its place")
  message = "; ".join(m for m in (diag.message, note) if m)
  return dataclasses.replace(diag, stalled=True, message=message, returned_start=True)


def stall_advice(trainer=None) -> str:
  """What to try after a stall, for the ``trainer`` that stalled (``None``: the general list):
  the other potential, a leak where the MLP has none, a longer run (at D = 128 the held-out
  pairs that stalled had 1,500-4,400 steps in 5 minutes), a smaller rate."""
  tips = []
  if trainer is None or trainer.potential == "mlp":
    tips.append("potential='icnn'")
  if trainer is None or trainer.potential == "icnn":
    tips.append("potential='mlp'")
  if trainer is None or (trainer.potential == "mlp" and not trainer.leak > 0):
    tips.append("leak=0.02 (an MLP whose units cannot die)")
  tips += ["a longer `max_seconds` or more `steps`", "a smaller `learning_rate`"]
  return ", ".join(tips[:-1]) + " or " + tips[-1]


def warn_if_stalled(diag: FitDiagnostics, who: str = "fit_w2", trainer=None) -> None:
  """A ``RuntimeWarning`` naming what was seen, when :attr:`FitDiagnostics.stalled`, and what
  to try for ``trainer`` (:func:`stall_advice`)."""
  if not diag.stalled:
    return
  if diag.push_flagged:  # not a stall: it went astray
    lead = "The trained map went astray (it does not carry the source onto the target)"
  else:
    lead = ("If the measures are close to Gaussian-related this is the right answer; otherwise "
            "training stalled")
  warnings.warn(f"{who}: {diag.message}. {lead}: try {stall_advice(trainer)} (map.diagnostics "
                f"has the figures).", RuntimeWarning, stacklevel=3)
