"""The Gaussian start of the W2 fits: how many rows its moments and the held-out checks are
drawn from, and the moments themselves (:func:`start_moments`)."""

from __future__ import annotations

import jax.numpy as jnp

from neural_ot import _validation, gaussian

__all__ = ["held_out_rows", "moment_rows", "start_moments", "START_SOURCE_FLOOR", "N_HELD_OUT"]

N_HELD_OUT = 4096


def held_out_rows(dim: int) -> int:
  """Held-out draws per side from a sampler, for the W2 estimate, the race and the stall test:
  ``16384`` up to D = 8, else ``4096``. Near-Gaussian pairs gain little dual over their
  Gaussian start, and at D = 2 a fit 190x better than its start in L2-UVP gained 0.0032 against
  a standard error of 0.0013 on 4096 draws: flagged as stalled. Four times the draws halve the
  error (their cost was not timed separately; the 5-minute D = 2 runs ended at 311 s)."""
  return 4 * N_HELD_OUT if int(dim) <= 8 else N_HELD_OUT


def moment_rows(dim: int) -> int:
  """Rows the Gaussian start's moments are estimated from: ``max(2^14, 512 dim)``, at most
  ``2^16``. The start's error from the moments' sampling grows with ``dim``: at D = 128 the
  moment-matched Gaussian map's forward L2-UVP was 1.44 / 1.30 / 1.24 % from 2^14 / 2^16 /
  2^18 samples on the tune family icnn-student (held-out icnn-box 1.39 / 1.18 / 1.14,
  radial-student 0.66 / 0.45 / 0.41; ``benchmarks/RESULTS.md``, issue 27)."""
  return int(min(max(2 ** 14, 512 * int(dim)), 2 ** 16))


# The Gaussian start's source covariance has its eigenvalues floored at this fraction of its
# mean variance (1 once the data are standardised); see start_moments.
START_SOURCE_FLOOR = 1e-2


def start_moments(x, y, floor: float | None = None):
  """The moments ``((mx, Sx), (my, Sy))`` of the samples ``x``, ``y: (n, d)`` that the Gaussian
  start is built from, the eigenvalues of ``Sx`` floored at ``floor`` (default
  :data:`START_SOURCE_FLOOR`) times its mean variance.

  The start is the Gaussian OT map ``A x + b`` between the moments. A source that is nearly
  flat in some direction makes ``A`` nearly singular: a random linear image of a Student-t (the
  ``student`` sources of :mod:`neural_ot.w2bench.families`) had a covariance eigenvalue of 1e-6
  of the mean at D = 128, and the start's slope there was 272 (every other tune pair: 0.1 to
  6; the probe family huber-shell at D = 64: 1,440). The nonlinear map does not need that slope
  (the target's spread in that direction comes from the other directions), but a potential with
  a curvature ratio in the thousands, computed in float32 through ``Sx^{-1/2}``, is one whose
  conjugate is not solved in 10 steps, and training stalled at the start. Floored, the slope is
  at most about ``sqrt(var_max / floor)``; a source whose eigenvalues are all above the floor
  keeps its moments (so the start is unchanged). Only the source: a target flat in some
  direction (the Gaussian control at D = 4 has one at 0.4 % of its mean variance) is a map
  that compresses, which the start should keep. Chosen on the tune half
  (``benchmarks/RESULTS.md``, issue 27, session 45)."""
  f = START_SOURCE_FLOOR if floor is None else floor
  if not (_validation.is_real(f) and 0 <= f < 1):
    raise ValueError(f"start_moments: `floor` must be a real number in [0, 1) (a fraction of "
                     f"the source's mean variance), got {floor!r}.")
  (mx, sx), mt = gaussian.moments(x), gaussian.moments(y)
  w, v = jnp.linalg.eigh(0.5 * (sx + sx.T))
  low = f * jnp.mean(w)
  if bool(jnp.min(w) >= low):
    return (mx, sx), mt
  return (mx, (v * jnp.maximum(w, low)) @ v.T), mt
