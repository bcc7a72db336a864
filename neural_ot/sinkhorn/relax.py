"""The adaptive over-relaxation of :class:`neural_ot.Sinkhorn` (``momentum="auto"``): when to
switch it on, which ``omega``, when to drop back to plain iterations, and which entries it
leaves plain (:func:`relax`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["OMEGA_MAX", "OMEGA_LOCAL", "WARMUP", "relax", "adapt_omega"]

WARMUP = 20  # plain iterations before adaptive momentum kicks in (from any start)
_SPAN = 10  # iterations over which a convergence rate is measured
OMEGA_MAX = 1.8  # the cap at the switch, where the error may still be far from the fixed point
# Once the L1 error at the switch is at most _LOCAL_ERR, or has fallen _LOCAL_DROP-fold since
# it, the iteration is in its linear regime, where two-block SOR converges for any omega < 2
# (Young): omega may then rise to the rate's optimum up to OMEGA_LOCAL. A cap of 1.9 at the
# switch itself made a d = 2 point-cloud solve at eps = 1e-3 x mean cost blow up (error 1.1
# -> 1e9); 1.95 in the linear regime diverged on a heavy-tailed pair at 3e-3. Measured in
# benchmarks/RESULTS.md ("The over-relaxation's cap near the fixed point").
OMEGA_LOCAL = 1.9
_LOCAL_DROP = 0.1
_LOCAL_ERR = 0.1
_CHECK = 30  # after the switch, the error must halve every _CHECK iterations
# Plain steps longer than this many eps are not over-relaxed (relax). 10 cost 9 % more
# iterations on 36 Gaussian problems (d = 2, 8; eps 1e-3 to 1e-2 x the mean cost), where 30
# cost none and still kept the far-out warm starts finite (session 47).
_RELAX_STEPS = 30.0


def relax(omega, step, eps):
  """Per-entry over-relaxation: ``omega`` where the plain step is at most ``_RELAX_STEPS * eps``,
  1 elsewhere. A row whose kernel sum under- or overflowed moves by the clip's bound
  (``69 eps``), not by its own error, and relaxing that step overshoots into overflow: from a
  warm start that left three far-out points at ``f = 0``, NaN after 44-615 iterations on 7 of 8
  heavy-tailed problems (benchmarks/RESULTS.md, session 47)."""
  return jnp.where(jnp.abs(step) <= _RELAX_STEPS * eps, omega, 1.0)


def adapt_omega(it, err, omega, lam, err_ref, err_span, warmup, eps_t, eps,
                 err_switch=jnp.inf):
  """Adaptive over-relaxation (Thibault et al. 2017; Lehmann et al. 2021).

  Plain Sinkhorn runs until iteration ``warmup`` (``WARMUP``, from zeros or a warm start
  alike); its linear rate ``lam`` is estimated from the errors ``_SPAN`` iterations apart,
  or ``_SPAN / 2`` apart where that rate is slower (plain Sinkhorn's decay slows towards
  its slowest mode's; from a warm start the whole span still holds the fast modes'
  transient: on 8 x 8 digits with a Meta OT start this took the share of pairs slower
  than zeros at 1e-4 from 8 % to 0), and ``omega`` is set to ``2 / (1 + sqrt(1 - lam))``
  (capped). From a warm start that
  estimate is often too optimistic (the early decay is a transient of the fast modes), and
  a too small omega costs more than the head start gained, so the rate keeps being
  measured: every ``2 _SPAN`` iterations the relaxed rate ``mu`` over the last ``_SPAN``
  (one span after the last change of omega) gives back the plain rate by Young's relation
  for two-block SOR, ``lam = (mu + omega - 1)^2 / (omega^2 mu)``, and omega rises to that
  rate's optimum (it never falls: past the optimum ``mu = omega - 1`` and the relation
  returns omega's own rate). Over-relaxation can raise the error for a while; every
  ``_CHECK`` iterations after the switch the error must have at least halved (the first
  time: from its peak after the switch). If not, the estimate is restarted: plain
  iterations for ``2 _SPAN`` (they also remove the relaxation's overshoot, often most of
  the measured error), then a fresh rate and switch. Dropping to plain Sinkhorn for good
  instead cost a warm start that reached the slow regime first hundreds of iterations.
  """
  err = jax.lax.stop_gradient(err)
  at_target = jnp.asarray(eps_t <= eps)
  since = it - warmup
  switch = (since == 0) & at_target
  check = (since > 0) & (since % _CHECK == 0)
  # the cap: OMEGA_MAX, or OMEGA_LOCAL where the error at the switch was at most
  # _LOCAL_ERR or has fallen _LOCAL_DROP-fold since (the linear regime)
  local = (jnp.where(switch, err, err_switch) <= _LOCAL_ERR) | (
      jnp.isfinite(err_switch) & (err <= _LOCAL_DROP * err_switch))
  cap = jnp.where(local, OMEGA_LOCAL, OMEGA_MAX)

  def optimum(lam):
    guess = 2.0 / (1.0 + jnp.sqrt(jnp.clip(1.0 - lam, 1e-6, 1.0)))
    return jnp.where((lam < 1.0) & jnp.isfinite(lam), jnp.clip(guess, 1.0, cap), 1.0)
  failed = check & ~(err <= 0.5 * err_ref)
  mark = (since > 0) & (since % _SPAN == 0)
  mu = (err / err_span) ** (1.0 / _SPAN)
  lam_mu = (mu + omega - 1.0) ** 2 / (omega ** 2 * mu)
  refine = (mark & (since % (2 * _SPAN) == 0) & at_target & (omega > 1.0) & ~failed
            & (mu > 0.0) & (lam_mu > lam) & (lam_mu < 1.0))
  lam = jnp.where(refine, lam_mu, lam)
  # The plain rate at the switch: over the last span, or over its last half where that is
  # slower (the local decay of plain Sinkhorn slows towards its slowest mode's rate; from a
  # warm start the fast modes' transient still shows in the whole span).
  lam_half = (err / err_span) ** (2.0 / _SPAN)
  lam_half = jnp.where((lam_half < 1.0) & jnp.isfinite(lam_half), lam_half, 0.0)
  lam = jnp.where(switch, jnp.maximum((err / err_ref) ** (1.0 / _SPAN), lam_half), lam)
  omega = jnp.where(refine | switch, jnp.maximum(jnp.where(switch, 1.0, omega), optimum(lam)),
                    omega)
  omega = jnp.where(failed, 1.0, omega)
  warmup = jnp.where(failed, it + 2 * _SPAN, warmup)
  err_ref = jnp.where((it == warmup - _SPAN) | ~at_target | switch | check, err, err_ref)
  # Over-relaxation first raises the error (a transient of a few iterations),
  # most visibly from a good warm start; the first check measures the halving
  # from that peak, not from the error at the switch.
  first_window = (since > 0) & (since < _CHECK)
  err_ref = jnp.where(first_window, jnp.maximum(err_ref, err), err_ref)
  err_span = jnp.where(mark | switch | ~at_target | (it == warmup - _SPAN // 2), err, err_span)
  err_switch = jnp.where(switch, err, jnp.where(failed | ~at_target, jnp.inf, err_switch))
  return omega, lam, err_ref, err_span, warmup, err_switch
