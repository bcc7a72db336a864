"""How often the library's compiled functions were traced: a count per name, bumped by a Python
side effect that runs only while JAX traces the function (never on a cached call).

Tests use it to check that a second call with new data of the same shape does not compile
again, without JAX's private cache API; a user can do the same.

Example:
  >>> import neural_ot, numpy as np
  >>> from neural_ot.tracing import trace_count
  >>> x = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
  >>> _ = neural_ot.sinkhorn(x, x + 1, epsilon=0.5)
  >>> before = trace_count("sinkhorn")
  >>> _ = neural_ot.sinkhorn(2 * x, x, epsilon=0.7)  # same shapes: no new trace
  >>> trace_count("sinkhorn") == before
  True
"""

from __future__ import annotations

import collections

__all__ = ["traced", "trace_count"]

NAMES = ("sinkhorn", "train_step", "multiscale_start")  # what the library counts
_COUNTS: collections.Counter = collections.Counter()


def traced(name: str) -> None:
  """Count one trace of ``name``, one of :data:`NAMES` (call it in the body of a jitted
  function; it runs only while JAX traces)."""
  _COUNTS[name] += 1


def trace_count(name: str) -> int:
  """How many times ``name`` has been traced in this process: ``"sinkhorn"`` (the solve
  behind :func:`neural_ot.sinkhorn` and friends), ``"train_step"`` (one guarded training
  step of every ``fit_*``) or ``"multiscale_start"`` (:func:`neural_ot.sinkhorn.multiscale_points_init`)."""
  if name not in NAMES:
    raise ValueError(f"trace_count: `name` must be one of {list(NAMES)}, got {name!r}.")
  return _COUNTS[name]
