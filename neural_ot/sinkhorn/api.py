"""``neural_ot.sinkhorn(x, y, ...)``: the one-call entry point (validation, options, named
starts)."""

from __future__ import annotations

from neural_ot import _ott
from neural_ot.sinkhorn import multiscale
from neural_ot.sinkhorn.output import SinkhornOutput
from neural_ot.sinkhorn.solver import make_solver

__all__ = ["sinkhorn"]


def sinkhorn(x, y=None, a=None, b=None, *, epsilon=None, tol: float = 1e-3,
             max_iters: int = 2000, init=None, **kwargs) -> SinkhornOutput:
  """Entropic optimal transport between two weighted point clouds (log-domain Sinkhorn).

  ``min_P <P, C> + epsilon KL(P | a b^T)`` subject to ``P 1 = a, P^T 1 = b``
  (or KL-relaxed marginals with ``rho_a`` / ``rho_b``). The default cost is
  ``C_ij = |x_i - y_j|^2``. Compiles once per input shape and configuration;
  composes with ``jit``, ``vmap`` and ``grad``. Caveat: a callable ``cost``
  is part of the configuration and compared by identity, so an inline
  ``cost=lambda u, v: ...`` is a new function on every call and *recompiles
  every time* (a warning says so from the second one). Define the cost once
  (``def`` or a variable) and pass that same object.

  Invalid input is refused with a ``ValueError``/``TypeError`` naming the
  argument. Under ``jit`` the host cannot inspect traced values; then negative,
  non-finite or massless weights, and NaN/inf points or a NaN/inf error during
  the iterations, stop the solve at once with ``diverged=True`` (NaN ``f``,
  ``g`` and ``reg_ot_cost``) instead of running to ``max_iters``.

  Args:
    x: ``(n, d)`` source points, or an ott-jax ``PointCloud``: then its points, cost
      and epsilon (``geom.epsilon``, unless ``epsilon`` is given) are used, and the
      call reads ``sinkhorn(geom, a, b)``.
    y: ``(m, d)`` target points (none with a ``PointCloud``).
    a: ``(n,)`` source weights, uniform when ``None``.
    b: ``(m,)`` target weights, uniform when ``None``.
    epsilon: regularisation; absolute, or relative to the mean cost with
      ``relative_epsilon=True``.
    tol: stop when the L1 marginal error is below ``tol``.
    max_iters: iteration cap.
    init: warm start ``(f, g)`` (either may be ``None``), or ``"multiscale"``: the start of
      :func:`neural_ot.sinkhorn.multiscale.multiscale_points_init` (a pyramid of coarser
      problems on grid cells of both clouds; the Gaussian start where the cells cannot resolve
      ``epsilon``), for the default cost and balanced problems on one device.
    **kwargs: any other :class:`Sinkhorn` field (``rho_a``, ``rho_b``,
      ``cost``, ``online``, ``momentum``, ``epsilon_init_factor``,
      ``adjoint``, ...).

  Returns:
    A :class:`~neural_ot.sinkhorn.output.SinkhornOutput`. ``reg_ot_cost`` is
    the entropic cost; ``primal_cost`` is ``<P, C>``; see that class for which
    one estimates ``W_2^2``.

  Example:
    >>> import jax, neural_ot
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    >>> out = neural_ot.sinkhorn(x, x + 1.0, epsilon=0.05)
    >>> bool(out.converged), round(float(out.primal_cost), 1)
    (True, 2.0)
  """
  x, y, a, b, epsilon, kwargs = _ott.sinkhorn_inputs(x, y, a, b, epsilon, kwargs)
  solver = make_solver("sinkhorn", dict(kwargs, tol=tol, max_iters=max_iters))
  if isinstance(init, str):
    init = multiscale.resolve_init(init, solver, x, y, a, b, epsilon)
  return solver(x, y, a, b, epsilon=epsilon, init=init)
