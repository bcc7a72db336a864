"""Many small OT problems at once: one compiled, vmapped solve, optionally sharded."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from neural_ot import _validation
from neural_ot.sharding import check_mesh_axis
from neural_ot.sinkhorn.output import SinkhornOutput
from neural_ot.sinkhorn.solver import make_solver, solve_points

__all__ = ["sinkhorn_batch"]


def _check_batch(x, y, a, b, epsilon, balanced):
  x = _validation.as_float_array(x, "x", ndim=3)
  y = _validation.as_float_array(y, "y", ndim=3)
  if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
    raise ValueError(f"`x` (B, n, d) and `y` (B, m, d) must agree in B and d, got "
                     f"x: {tuple(x.shape)} and y: {tuple(y.shape)}.")
  if x.shape[0] == 0 or x.shape[1] == 0 or y.shape[1] == 0:
    raise ValueError(f"`x` and `y` must hold at least one problem and one point each, got "
                     f"x: {tuple(x.shape)} and y: {tuple(y.shape)}.")
  _validation.check_finite(x, "x")
  _validation.check_finite(y, "y")
  dtype = jnp.promote_types(x.dtype, y.dtype)
  batch = x.shape[0]
  a = _validation.check_weights(a, x.shape[1], "a", "x", balanced, dtype, batch=batch)
  b = _validation.check_weights(b, y.shape[1], "b", "y", balanced, dtype, batch=batch)
  eps = jnp.asarray(_validation.check_epsilon_batch(epsilon, batch), dtype)
  return x.astype(dtype), y.astype(dtype), a, b, jnp.broadcast_to(eps, (batch,))


def _solve_many(solver, x, y, a, b, eps):
  return jax.vmap(lambda *args: solve_points(solver, *args))(x, y, a, b, eps)


def _entry(solver, mesh, axis_name, x, y, a, b, eps):
  if mesh is None:
    return _solve_many(solver, x, y, a, b, eps)
  batch = x.shape[0]
  ndev = mesh.shape[axis_name]
  pad = (-batch) % ndev
  if pad:  # repeat problem 0; trimmed below
    rep = lambda z: jnp.concatenate([z, jnp.broadcast_to(z[:1], (pad,) + z.shape[1:])])
    x, y, a, b, eps = map(rep, (x, y, a, b, eps))
  spec = PartitionSpec(axis_name)
  # Each device runs its own while loop over its problems: no per-iteration sync.
  fn = jax.shard_map(lambda *args: _solve_many(solver, *args), mesh=mesh,
                     in_specs=(spec,) * 5, out_specs=spec, check_vma=False)
  out = fn(x, y, a, b, eps)
  return jax.tree.map(lambda z: z[:batch], out) if pad else out


_jitted = jax.jit(_entry, static_argnums=(0, 1, 2))


def sinkhorn_batch(x, y, a=None, b=None, *, epsilon, mesh=None, axis_name: str | None = None,
                   **kwargs) -> SinkhornOutput:
  """Solve ``B`` independent entropic OT problems of equal size in one compiled call.

  The problems are ``vmap``-ed (each stops at its own tolerance: converged
  problems stop updating while the others finish). With ``mesh`` they are also
  split over the devices of ``axis_name``, each device looping over its own
  problems without synchronising with the others. Pad problems of different
  sizes with zero-weight points.

  Args:
    x: ``(B, n, d)`` source clouds. y: ``(B, m, d)`` target clouds.
    a, b: ``(B, n)`` / ``(B, m)`` weights (uniform when ``None``).
    epsilon: a scalar or one value per problem ``(B,)``.
    mesh: optional :class:`jax.sharding.Mesh` to split the batch over.
    axis_name: mesh axis for the batch (default: the mesh's only axis).
    **kwargs: :class:`Sinkhorn` options (``tol``, ``max_iters``, ``rho_a``, ...).

  Returns:
    A :class:`SinkhornOutput` whose fields carry a leading batch axis. Its
    methods act on one problem: map them over the batch,
    ``jax.vmap(lambda o: o.primal_cost)(out)``, or take problem ``i`` with
    ``jax.tree.map(lambda z: z[i], out)``.

  Example:
    >>> import jax, neural_ot
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (100, 16, 2))
    >>> out = neural_ot.sinkhorn_batch(x, x + 1.0, epsilon=0.1)
    >>> out.reg_ot_cost.shape
    (100,)
  """
  solver = make_solver("sinkhorn_batch", kwargs)
  if solver.mesh is not None:
    raise ValueError("sinkhorn_batch: pass `mesh` to sinkhorn_batch itself (it splits the "
                     "batch of problems, not the points).")
  if mesh is not None:
    axis_name = check_mesh_axis(mesh, axis_name)
  x, y, a, b, eps = _check_batch(x, y, a, b, epsilon, solver.balanced)
  return _jitted(solver, mesh, axis_name, x, y, a, b, eps)
