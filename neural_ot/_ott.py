"""ott-jax objects at the library's entry points (ott-jax is imported only when one arrives)."""

from __future__ import annotations


def is_ott_geometry(obj) -> bool:
  """Whether ``obj`` is an ott-jax geometry (checked by module, so ott is not imported)."""
  return type(obj).__module__.startswith("ott.geometry")


def sinkhorn_inputs(x, y, a, b, epsilon, options: dict):
  """``sinkhorn``'s arguments with an ott-jax ``PointCloud`` in place of ``x`` unpacked.

  ``sinkhorn(geom, a, b)`` and ``sinkhorn(geom, a=a, b=b)`` both work: with a geometry the
  positional slot of ``y`` holds ``a``. The geometry gives the points, the cost
  (``SqEuclidean`` is the default cost, ``Euclidean`` and ``Cosine`` map to ours, any other
  ott-jax ``CostFn`` is used as a callable ``c(x, y)``), online mode when it has a
  ``batch_size``, and the absolute epsilon it computes (``geom.epsilon``: its own epsilon,
  relative or not, or ott-jax's default ``0.05 * std(C)``) unless ``epsilon`` is given.

  Returns:
    ``(x, y, a, b, epsilon, options)`` for the plain-array solve.
  """
  if not is_ott_geometry(x):
    if y is None:
      raise TypeError("sinkhorn: `y` (the target points) is required unless `x` is an "
                      "ott-jax PointCloud.")
    if epsilon is None:
      raise TypeError("sinkhorn: `epsilon` is required unless `x` is an ott-jax PointCloud "
                      "that sets it.")
    return x, y, a, b, epsilon, options
  from ott.geometry import costs, pointcloud  # pylint: disable=import-outside-toplevel  (optional: ott-jax loads on use, it is slow to import)

  geom = x
  if not isinstance(geom, pointcloud.PointCloud):
    raise TypeError(f"sinkhorn: an ott-jax geometry must be a PointCloud (the solver needs "
                    f"the points), got {type(geom).__name__}.")
  if y is not None:
    if b is not None:
      raise TypeError("sinkhorn: with an ott-jax PointCloud, pass at most two weight vectors "
                      "(a, b); the points come from the geometry.")
    a, b = y, a
  scale = getattr(geom, "_scale_cost", 1.0)
  if not (isinstance(scale, (int, float)) and float(scale) == 1.0):
    raise ValueError(f"sinkhorn: the PointCloud's scale_cost={scale!r} is not supported; "
                     f"scale the points or epsilon instead.")
  options = dict(options)
  if "cost" in options:
    raise TypeError("sinkhorn: `cost` comes from the ott-jax PointCloud's cost_fn; do not "
                    "pass it as well.")
  cost_fn = geom.cost_fn
  names = {costs.SqEuclidean: None, costs.Euclidean: "euclidean", costs.Cosine: "cosine"}
  options["cost"] = names.get(type(cost_fn), cost_fn)
  if getattr(geom, "batch_size", None) is not None:
    options.setdefault("online", True)
  if epsilon is None:
    if options.get("relative_epsilon"):
      raise TypeError("sinkhorn: `relative_epsilon` needs an `epsilon`; without one the "
                      "PointCloud's absolute epsilon is used.")
    epsilon = geom.epsilon
  return geom.x, geom.y, a, b, epsilon, options
