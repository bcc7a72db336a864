"""Input checks for public entry points: clear errors naming the argument."""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp


def is_concrete(*xs) -> bool:
  """True when the values can be read here: no tracer, and no array spread over other
  processes' devices (multi-host global arrays are checked by their owners, not here)."""
  return not any(isinstance(x, jax.core.Tracer) or
                 (isinstance(x, jax.Array) and not x.is_fully_addressable)
                 for x in jax.tree.leaves(xs))


def as_float_array(x, name: str, ndim: int | None = None):
  """``x`` as a real floating array (ints and bools are cast to float32); a ``ValueError`` or
  ``TypeError`` naming ``name`` for None, ragged nesting, non-numeric or complex input, or
  the wrong number of dimensions."""
  if x is None:
    raise ValueError(f"`{name}` is required, got None.")
  if not isinstance(x, jax.core.Tracer):
    if isinstance(x, jax.Array):
      arr = x
    else:
      try:
        arr = np.asarray(x)
      except (ValueError, TypeError) as exc:  # ragged nesting, odd objects
        raise ValueError(f"`{name}` must be a rectangular numeric array ({exc}).") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
      raise TypeError(f"`{name}` must be a numeric array, got dtype {arr.dtype}.")
    x = arr
  if jnp.iscomplexobj(x):
    raise TypeError(f"`{name}` must be real, got complex dtype {x.dtype}.")
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  if ndim is not None and x.ndim != ndim:
    raise ValueError(f"`{name}` must have {ndim} dimensions, got shape {tuple(x.shape)}.")
  return x


def check_finite(x, name: str):
  # numpy, not jnp: inside a jit trace even ops on concrete arrays are staged.
  if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
    bad = int(np.sum(~np.isfinite(np.asarray(x))))
    raise ValueError(f"`{name}` must be finite, but it has {bad} NaN or inf entries.")


def check_points(x, name: str):
  x = as_float_array(x, name, ndim=2)
  if x.shape[0] == 0:
    raise ValueError(f"`{name}` must hold at least one point, got shape {tuple(x.shape)}.")
  if x.shape[1] == 0:
    raise ValueError(f"`{name}` must have dimension d >= 1, got shape {tuple(x.shape)}.")
  check_finite(x, name)
  return x


# Balanced weights whose total is within this of 1 are normalised by the solver (a mass gap
# is a floor on the marginal error, so it could never reach a tighter `tol`); further off,
# the weights are most likely not what the caller meant, and are refused.
MASS_TOL = 1e-4


def check_weights(w, n: int, name: str, points_name: str, balanced: bool, dtype,
                  batch: int | None = None):
  """Concrete weights: finite, non-negative, positive mass and (balanced) a total within
  ``MASS_TOL`` of one; ``(n,)``, or ``(batch, n)`` with one vector per problem (each checked,
  errors name the problem). Traced weights are checked on device instead (``diverged``)."""
  shape = (n,) if batch is None else (batch, n)
  if w is None:
    return jnp.full(shape, 1.0 / n, dtype)
  w = as_float_array(w, name, ndim=len(shape))
  if w.shape != shape:
    why = f"to match `{points_name}`" if batch is None else "(one weight vector per problem)"
    raise ValueError(f"`{name}` must have shape {shape} {why}, got {tuple(w.shape)}.")
  if is_concrete(w):
    check_finite(w, name)
    wn = np.asarray(w, np.float64).reshape(-1, n)
    mins, totals = wn.min(axis=1), wn.sum(axis=1)
    has = lambda i: ", got" if batch is None else f"; problem {i} has"
    every = "" if batch is None else " in every problem"
    if np.any(mins < 0):
      i = int(np.argmin(mins))
      raise ValueError(f"`{name}` must be non-negative{has(i)} min {mins[i]:.3g}.")
    if np.any(totals <= 0):
      i = int(np.argmin(totals))
      raise ValueError(f"`{name}` must have positive total mass{every}{has(i)} {totals[i]:.3g}.")
    gaps = np.abs(totals - 1.0)
    if balanced and np.any(gaps > MASS_TOL):
      i = int(np.argmax(gaps))
      sums = ", got" if batch is None else f"; problem {i} sums to"
      raise ValueError(
          f"`{name}` must sum to 1{every} for a balanced problem{sums} {totals[i]:.6g} (off by "
          f"{gaps[i]:.3g}; totals within {MASS_TOL:g} of 1 are normalised, larger gaps are "
          "refused): normalise it, or set rho_a/rho_b for unbalanced OT.")
  return w.astype(dtype)


def cloud_weights(w, n: int, name: str, points: str, caller: str):
  """Weights of a point cloud for a start or a prediction (host-side, concrete): uniform when
  ``None``; else ``(n,)``, finite, non-negative, positive mass; returned normalised (float32).
  Errors start with ``caller``."""
  if w is None:
    return jnp.full((n,), 1.0 / n, jnp.float32)
  w = as_float_array(w, name, ndim=1).astype(jnp.float32)
  if w.shape[0] != n:
    raise ValueError(f"{caller}: `{name}` must have one weight per point of `{points}` ({n}), "
                     f"got shape {tuple(w.shape)}.")
  wn = np.asarray(w)
  if not np.all(np.isfinite(wn)) or np.any(wn < 0) or not wn.sum() > 0:
    raise ValueError(f"{caller}: `{name}` must be finite, non-negative, with positive total "
                     f"mass.")
  return w / jnp.sum(w)


def _real_scalar_type(value, name: str):
  """A ``TypeError`` naming ``name`` unless ``value`` is a real number or real array."""
  if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
    raise TypeError(f"`{name}` must be a real number, got {type(value).__name__} {value!r}.")
  if isinstance(value, jax.core.Tracer):
    dtype = value.dtype
  else:
    try:
      dtype = np.asarray(value).dtype
    except (ValueError, TypeError):
      dtype = np.dtype(object)
  if dtype == bool or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
    raise TypeError(f"`{name}` must be a real number, got {type(value).__name__} {value!r}.")


def check_epsilon(epsilon):
  if epsilon is None:
    raise ValueError("`epsilon` is required (a positive float).")
  _real_scalar_type(epsilon, "epsilon")
  if is_concrete(epsilon):
    e = np.asarray(epsilon)
    if e.shape != () or not np.isfinite(e) or not e > 0:
      raise ValueError(f"`epsilon` must be a positive finite scalar, got {epsilon!r}.")
  return epsilon


def check_epsilon_batch(epsilon, batch: int):
  """A positive scalar or ``(batch,)`` vector of epsilons."""
  if epsilon is None:
    raise ValueError("`epsilon` is required (a positive float or one per problem).")
  _real_scalar_type(epsilon, "epsilon")
  if is_concrete(epsilon):
    e = np.asarray(epsilon, np.float64)
    if e.shape not in ((), (batch,)):
      raise ValueError(f"`epsilon` must be a scalar or have shape ({batch},), got {e.shape}.")
    if not np.all(np.isfinite(e)) or not np.all(e > 0):
      raise ValueError(f"`epsilon` must be positive and finite, got min {e.min():.3g}.")
  return epsilon


def check_problem(x, y, a, b, epsilon, init, balanced: bool):
  x = check_points(x, "x")
  y = check_points(y, "y")
  if x.shape[1] != y.shape[1]:
    raise ValueError(
        f"`x` and `y` must have the same dimension d, got x: {tuple(x.shape)} and "
        f"y: {tuple(y.shape)}.")
  dtype = jnp.promote_types(x.dtype, y.dtype)
  a = check_weights(a, x.shape[0], "a", "x", balanced, dtype)
  b = check_weights(b, y.shape[0], "b", "y", balanced, dtype)
  check_epsilon(epsilon)
  if init is not None:
    if not isinstance(init, (tuple, list)) or len(init) != 2:
      raise ValueError(f"`init` must be a pair (f, g) (either may be None), got {type(init).__name__}.")
    f0, g0 = init
    if f0 is not None:
      f0 = as_float_array(f0, "init[0] (f)", ndim=1).astype(dtype)
      if f0.shape[0] != x.shape[0]:
        raise ValueError(f"`init[0]` (f) must have shape ({x.shape[0]},), got {tuple(f0.shape)}.")
      check_finite(f0, "init[0] (f)")
    if g0 is not None:
      g0 = as_float_array(g0, "init[1] (g)", ndim=1).astype(dtype)
      if g0.shape[0] != y.shape[0]:
        raise ValueError(f"`init[1]` (g) must have shape ({y.shape[0]},), got {tuple(g0.shape)}.")
      check_finite(g0, "init[1] (g)")
    init = (f0, g0)
  return x.astype(dtype), y.astype(dtype), a, b, epsilon, init


def is_int(v) -> bool:
  """A Python or numpy integer, not a bool."""
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_widths(who: str, name: str, val) -> tuple[int, ...]:
  """Layer widths: a tuple (or list) of ints >= 1, returned as a tuple of Python ints; errors
  name ``who`` (the caller) and the argument ``name``."""
  if not (isinstance(val, (tuple, list)) and all(is_int(h) for h in val)):
    raise TypeError(f"{who}: `{name}` must be a tuple of layer widths (ints), got {val!r}.")
  if any(h < 1 for h in val):
    raise ValueError(f"{who}: `{name}` widths must be >= 1, got {tuple(val)}.")
  return tuple(int(h) for h in val)


def is_real(v) -> bool:
  """A Python or numpy real number (int or float), not a bool."""
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def check_config(solver):
  for name in ("tol", "epsilon_init_factor", "epsilon_decay"):
    v = getattr(solver, name)
    if not (is_real(v) and np.isfinite(v)):
      raise TypeError(f"`{name}` must be a real number, got {type(v).__name__} {v!r}.")
  for name in ("max_iters",):
    v = getattr(solver, name)
    if not (is_int(v) and v >= 1):
      raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
  for name in ("relative_epsilon", "record_errors", "init_check"):
    if not isinstance(getattr(solver, name), (bool, np.bool_)):
      raise TypeError(f"`{name}` must be True or False, got {getattr(solver, name)!r}.")
  if not (is_real(solver.tol) and solver.tol > 0):
    raise ValueError(f"`tol` must be a positive float, got {solver.tol!r}.")
  if not (isinstance(solver.max_iters, int) and solver.max_iters >= 1):
    raise ValueError(f"`max_iters` must be a positive int, got {solver.max_iters!r}.")
  for name in ("rho_a", "rho_b"):
    v = getattr(solver, name)
    if v is not None and not (is_real(v) and v > 0):
      raise ValueError(f"`{name}` must be None (balanced) or a positive float, got {v!r}.")
  if not (isinstance(solver.momentum, str) and solver.momentum == "auto") and not (
      is_real(solver.momentum) and 1.0 <= solver.momentum < 2.0):
    raise ValueError(f"`momentum` must be \"auto\" or a float in [1, 2), got {solver.momentum!r}.")
  if not solver.epsilon_init_factor >= 1.0:
    raise ValueError(f"`epsilon_init_factor` must be >= 1, got {solver.epsilon_init_factor!r}.")
  if not 0.0 < solver.epsilon_decay < 1.0:
    raise ValueError(f"`epsilon_decay` must be in (0, 1), got {solver.epsilon_decay!r}.")
  if solver.online not in (None, True, False):
    raise ValueError(f"`online` must be None (auto), True or False, got {solver.online!r}.")
