"""Helpers for running on several devices with :mod:`jax.sharding`.

The library's sharded code paths take a :class:`jax.sharding.Mesh`; these
helpers build one and place point clouds on it. Nothing here is needed on one
device.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["make_mesh", "pad_points", "shard_points", "process_points", "mesh_of",
           "check_mesh_axis"]


def make_mesh(devices=None, axis_name: str = "points") -> Mesh:
  """A one-axis mesh over ``devices`` (default: all devices of the default backend)."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("make_mesh: `devices` is empty.")
  return Mesh(np.array(devices), (axis_name,))


def pad_points(x, w, multiple: int):
  """Pad ``x: (n, d)`` and weights ``w: (n,)`` to a multiple of ``multiple`` points.

  Padding points copy the first point and get weight 0, so they drop out of
  every Sinkhorn reduction. Returns ``(x, w)``; a no-op when already a multiple.
  """
  n = x.shape[0]
  pad = (-n) % multiple
  if pad == 0:
    return x, w
  x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])])
  w = jnp.concatenate([w, jnp.zeros((pad,), w.dtype)])
  return x, w


def shard_points(x, mesh: Mesh, axis_name: str | None = None):
  """Place ``x`` (points along axis 0) in equal blocks over a mesh axis."""
  axis_name = check_mesh_axis(mesh, axis_name)
  size = mesh.shape[axis_name]
  if x.shape[0] % size:
    raise ValueError(f"shard_points: {x.shape[0]} points do not split over {size} devices; "
                     f"pad them first (pad_points).")
  return jax.device_put(x, NamedSharding(mesh, PartitionSpec(axis_name)))


def process_points(x, mesh: Mesh, weights=None, axis_name: str | None = None):
  """One global point cloud from each process's own rows (several processes, jax.distributed).

  Every process calls this with its local rows ``x: (n_p, d)`` (and optionally their weights
  ``(n_p,)``, not normalised across processes); the result ``(x, w)`` is a pair of global
  arrays split over the mesh axis, each process's rows on its own devices, ready for
  :func:`neural_ot.sinkhorn` and friends (which see their sharding and solve on the mesh).
  Local rows are padded (zero-weight copies of the first row) to one count on every process, a
  multiple of its devices on the axis. Without ``weights`` every real row weighs ``1 / n``
  (``n`` the total over processes). Needs numpy (host) rows: each process's own data.
  """
  axis_name = check_mesh_axis(mesh, axis_name)
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"process_points: `x` must be this process's rows, shape (n_p, d) with "
                     f"n_p >= 1, got shape {x.shape}.")
  n_local = x.shape[0]
  w = np.ones(n_local, np.float32) if weights is None else np.asarray(weights, np.float32)
  if w.shape != (n_local,):
    raise ValueError(f"process_points: `weights` must have shape ({n_local},) like `x`'s rows, "
                     f"got {w.shape}.")
  counts = np.asarray([n_local])
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    counts = np.asarray(multihost_utils.process_allgather(np.asarray([n_local], np.int32)))
  if weights is None:
    w = w / float(np.sum(counts))
  here = sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())
  if here == 0:
    raise ValueError("process_points: the mesh has none of this process's devices.")
  rows = -(-int(np.max(counts)) // here) * here  # every process: the same padded row count
  pad = rows - n_local
  xp = np.concatenate([x, np.broadcast_to(x[:1], (pad,) + x.shape[1:])]) if pad else x
  wp = np.concatenate([w, np.zeros(pad, w.dtype)]) if pad else w
  total = rows * (mesh.shape[axis_name] // here)
  pieces = []
  for local in (xp, wp):
    spec = PartitionSpec(axis_name, *([None] * (local.ndim - 1)))
    pieces.append(jax.make_array_from_process_local_data(
        NamedSharding(mesh, spec), local, (total,) + local.shape[1:]))
  return pieces[0], pieces[1]


def mesh_of(x):
  """``(mesh, axis_name)`` if ``x`` is split along axis 0 by a NamedSharding, else None."""
  sharding = getattr(x, "sharding", None)
  if not isinstance(sharding, NamedSharding) or math.prod(sharding.mesh.devices.shape) == 1:
    return None
  spec = sharding.spec
  if len(spec) == 0 or spec[0] is None:
    return None
  axis = spec[0]
  if isinstance(axis, tuple):
    if len(axis) != 1:
      return None
    axis = axis[0]
  return sharding.mesh, axis


def check_mesh_axis(mesh, axis_name: str | None) -> str:
  """The mesh axis to shard points along: ``axis_name``, or the mesh's only axis."""
  if not isinstance(mesh, Mesh):
    raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
  if axis_name is None:
    if len(mesh.axis_names) != 1:
      raise ValueError(f"`axis_name` is required for a mesh with several axes "
                       f"{tuple(mesh.axis_names)}.")
    return mesh.axis_names[0]
  if axis_name not in mesh.axis_names:
    raise ValueError(f"`axis_name` must be one of the mesh axes {tuple(mesh.axis_names)}, "
                     f"got {axis_name!r}.")
  return axis_name
