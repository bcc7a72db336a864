"""The one table of defaults of the W2 fits (``fit_w2``, ``fit_conditional_w2``).

Every default a fit takes from the data is decided here, by :func:`default_options`; the
:class:`~neural_ot.w2.trainer.W2Trainer` fields hold only what no rule changes (``b1``, ``b2``,
``warmup``, ...). Each rule names what it was chosen on; the figures are in
``benchmarks/RESULTS.md`` (sections "W2 maps: the non-convex MLP potential", "Maps a user can
trust" and "Conditional maps").
"""

from __future__ import annotations

import numpy as np

__all__ = ["default_options", "MLP_DIMS"]

MLP_DIMS = (4, 64)  # the dimensions (inclusive) whose default potential is the non-convex MLP


def default_options(dim: int, n: int | None = None, potential: str | None = None, *,
                    conditional: bool = False, l1_cost: bool = False,
                    subquadratic: bool = False) -> dict:
  """The settings a W2 fit uses for data of dimension ``dim`` (and ``n`` training rows).

  A function of the data's shape only, never of a benchmark file (the data are standardised
  first, so scale does not enter).

  * Potential, when not raced (``fit_w2(potential="auto")`` races the two on runs of >= 2000
    steps or 60 s, :mod:`neural_ot.w2.race`): the non-convex ``"mlp"`` for
    ``4 <= dim <= 64`` (:data:`MLP_DIMS`), the convex ``"icnn"`` otherwise. Chosen on
    Mix3toMix10 and ``w2bench.random_pair``, D = 2 to 128.
  * Widths ``[2m, 2m, m]``, ``m = max(dim, 32)`` (the published setting: Amos 2023, Korotin
    2021).
  * Learning rate: cosine decay from the peak to ``final_lr_fraction = 0.005`` of it. Peak
    5e-2 for the ICNN; for the MLP 2e-2 up to D = 32 and ``min(1e-2, 0.64 / m)`` above (higher
    rates stalled at the Gaussian start at D = 48). Fewer than 10,000 rows get less (a fifth
    of the peak at n = 0, linear up to n = 10,000): a high rate overfits a small sample.
  * The MLP's units are leaky (``leak=0.02``) above D = 16: its 2e-2 rate killed the last
    hidden layer in long runs at D = 32, and at D = 64 (rate 1e-2) a layer of the plain MLP
    died in 3 of 5 tune-half 300 s runs (radial-subspace ended at 0.82x the Gaussian map's
    L2-UVP; leaky: 0.30x; ridges-gmm 0.50 -> 0.33 %, icnn-student 0.65 -> 0.74 %, softplus2-gmm
    equal; tune half of :mod:`neural_ot.w2bench.families`, ``benchmarks/RESULTS.md``).
  * Above D = 64 the potential's quadratic term trains at a tenth of the rate
    (``quad_lr_scale=0.1``; both potentials): Adam moves each of its ``D^2`` entries by about
    the rate whatever the size of its gradient, noise of spectral size ``~ 2 rate sqrt(D)`` on
    the map's linear part, which at D = 128 buried the nonlinear gain. Chosen on the tune half
    at D = 128 (forward / inverse L2-UVP %, 1.0 -> 0.1): lse-box 45.3 / 263 -> 46.5 / 86.2 and
    ridges-gmm 3.81 / 5.13 -> 3.19 / 4.62 in 5 minutes, icnn-student 1.41 / 1.47 -> 1.26 / 1.39
    in 15 (its Gaussian start: 1.33 / 1.45); the race's ICNN candidate ended at a held-out dual
    of 2290-2784 (diverged) with 1.0 and 114-118 with 0.1 (``benchmarks/RESULTS.md``, session
    38). Not measured at D <= 64 nor for conditional fits, where it stays 1.
  * Batch 256 (capped by ``n``); the conjugate: 10 L-BFGS steps to ``|grad| < 1e-3`` (a
    race that finds the winner's solves unsolved doubles them: :mod:`neural_ot.w2.race`).
  * ``l1_cost=True`` (``fit_map`` with a cost that has an ``l1`` part, e.g. ``ElasticL1``): 5
    orthant-wise L-BFGS steps instead of 10 (tune family ``elastic-gmm``, D = 8 and 16, 60 s:
    forward / inverse L2-UVP 0.11 / 0.13 % and 0.38 / 0.33 % against 0.17 / 0.18 % and
    0.50 / 0.47 % with 10 steps, and 0.29 / 0.30 % and 0.48 / 0.44 % with proximal gradient;
    ``benchmarks/RESULTS.md``, "Maps for non-quadratic costs").
  * ``subquadratic=True`` (``fit_map`` with a cost whose ``h`` grows slower than ``|z|^2``, e.g.
    ``PNorm(2, 1.5)``: :meth:`~neural_ot.TICost.growth` < 2): the potential starts at the
    identity map and its quadratic part stays ``0.5 |x|^2`` (``fixed_quadratic``); ``fit_map``
    then takes the MLP potential at every dimension (no race: an ICNN on top of that fixed
    quadratic cannot represent a contraction). A trained or Gaussian-started quadratic makes
    the c-transform unbounded below wherever its curvature drops under 1: on a contracting 2-D
    pair ``fit_map`` diverged at step 1-2 in 6 of 6 runs (3 seeds, two widths) with the
    Gaussian start and in 4 of 6 by step 65 with the identity start alone, and trained in 6 of
    6 with both (``benchmarks/RESULTS.md``, "Costs that grow slower than |z|^2").
  * ``conditional=True`` (``fit_conditional_w2``): the ICNN (conditional networks are ICNNs in
    ``x``), a rate of at most 1e-2 (a Gaussian family, D = 4, 16 contexts: 5-10x lower forward
    L2-UVP than 5e-2 after 1000 steps, lower held-out error than 3e-3; ``benchmarks/
    conditional.py``), and a decay to 0.05 of the peak (the 0.005 above was measured on plain
    maps only).

  Args:
    dim: dimension of the data, an int >= 1.
    n: training rows of the smaller data set (``None`` for samplers).
    potential: ``"icnn"`` or ``"mlp"`` fixes the potential, and with it the rate; ``None``
      picks it from ``dim``.
    conditional: the settings of a conditional fit.
    l1_cost: the settings of a fit whose cost has an ``l1`` part.
    subquadratic: the settings of a fit whose cost grows slower than ``|z|^2``.

  Returns:
    A dict of ``W2Trainer`` fields plus ``batch_size``.

  Example:
    >>> default_options(8)["hidden"]
    (64, 64, 32)
  """
  if not (isinstance(dim, (int, np.integer)) and dim >= 1):
    raise ValueError(f"default_options: `dim` must be an int >= 1, got {dim!r}.")
  if n is not None and not (isinstance(n, (int, np.integer)) and n >= 1):
    raise ValueError(f"default_options: `n` must be None or an int >= 1, got {n!r}.")
  if not (potential is None or (isinstance(potential, str) and potential in ("icnn", "mlp"))):
    raise ValueError(f"default_options: `potential` must be None, 'icnn' or 'mlp', got "
                     f"{potential!r}.")
  if conditional and potential == "mlp":
    raise ValueError("default_options: a conditional fit's potential is an ICNN in x; "
                     "`potential` must be None or 'icnn' with `conditional=True`, got 'mlp'.")
  dim = int(dim)
  m = max(dim, 32)
  if conditional:
    mlp = False
  else:
    mlp = MLP_DIMS[0] <= dim <= MLP_DIMS[1] if potential is None else potential == "mlp"
  # The MLP's peak falls with its width above 32 dimensions: at 1.33e-2 and 2e-2, D = 48 runs
  # stalled near the Gaussian start (most units of the last hidden layer saturated at 0).
  peak = (2e-2 if dim <= 32 else min(1e-2, 0.64 / m)) if mlp else 5e-2
  # Small data sets: a high rate fits the sample's own structure (400 points of an affine pair:
  # RMS error 0.041 at 5e-2 vs 0.030 at 1e-2 after 4000 steps); from 10,000 rows (or with
  # samplers) the full peak.
  lr = peak if n is None or n >= 10000 else peak * (0.2 + 0.8 * n / 10000)
  if conditional:
    lr = min(lr, 1e-2)
  batch = 256 if n is None else max(1, min(256, int(n)))
  # Above 16 dimensions a layer of the plain MLP died in long runs (tune half: D = 32 at 2e-2,
  # both races; D = 64 at 1e-2, 3 of 5 pairs): leaky units cannot die (W2Trainer.leak;
  # RESULTS.md, issue 27).
  leak = 0.02 if mlp and dim > 16 else 0.0
  # Above 64 dimensions Adam's per-entry steps on the D x D quadratic term are noise that
  # buries the nonlinear gain (tune half at D = 128, RESULTS.md session 38).
  quad_lr_scale = 0.1 if dim > 64 and not conditional else 1.0
  out = dict(potential="mlp" if mlp else "icnn", hidden=(2 * m, 2 * m, m), leak=leak,
             quad_lr_scale=quad_lr_scale,
             predictor_hidden=(2 * m, 2 * m), learning_rate=lr,
             final_lr_fraction=0.05 if conditional else 0.005,
             finetune_iters=5 if l1_cost else 10, finetune_tol=1e-3, batch_size=batch)
  if subquadratic:
    out.update(init="identity", fixed_quadratic=True)
  return out


# The planned number of steps of a run given by ``max_seconds`` before its step rate is
# measured (train.run re-plans the schedule from the measured rate).
START_HORIZON = 1000
