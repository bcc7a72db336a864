"""Runs tests/multidevice/sharded_checks.py on 4 forced CPU devices in a fresh process.

``--xla_force_host_platform_device_count`` only takes effect before JAX starts,
so the sharded checks cannot share this process.
"""

import os
import pathlib
import subprocess
import sys

import jax
import pytest

import neural_ot
from neural_ot.sharding import make_mesh

HERE = pathlib.Path(__file__).parent


@pytest.mark.slow
def test_sharded_checks_on_four_cpu_devices():
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header",
       "-o", "addopts=", str(HERE / "multidevice" / "sharded_checks.py")],
      env=env, capture_output=True, text=True, timeout=1200, cwd=HERE.parent)
  tail = proc.stdout[-6000:] + proc.stderr[-3000:]
  assert proc.returncode == 0, tail
  assert " passed" in proc.stdout and "skipped" not in proc.stdout, tail


def test_one_device_mesh_equals_plain_solve():
  import jax
  import numpy as np
  x = jax.random.normal(jax.random.PRNGKey(0), (37, 2))
  y = x[:29] + 1.0
  mesh = make_mesh(jax.devices()[:1])
  out = neural_ot.sinkhorn(x, y, epsilon=0.1, tol=1e-5, mesh=mesh)
  ref = neural_ot.sinkhorn(x, y, epsilon=0.1, tol=1e-5, online=True)
  np.testing.assert_allclose(out.reg_ot_cost, ref.reg_ot_cost, rtol=1e-6)
  np.testing.assert_allclose(out.f, ref.f, atol=1e-5)


def test_process_points_on_one_process_is_the_cloud_with_uniform_weights():
  import jax
  import numpy as np
  from neural_ot.sharding import process_points
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(37, 2)).astype(np.float32), rng.normal(size=(29, 2)).astype(np.float32)
  mesh = make_mesh(jax.devices()[:1])
  xg, a = process_points(x, mesh)
  yg, b = process_points(y, mesh, weights=np.full(29, 1 / 29))
  np.testing.assert_array_equal(xg, x)
  np.testing.assert_allclose(a, np.full(37, 1 / 37), rtol=1e-6)
  out = neural_ot.sinkhorn(xg, yg, a, b, epsilon=0.1, tol=1e-5)
  ref = neural_ot.sinkhorn(x, y, epsilon=0.1, tol=1e-5)
  np.testing.assert_allclose(out.reg_ot_cost, ref.reg_ot_cost, rtol=1e-5)
  with pytest.raises(ValueError, match="`x` must be this process's rows"):
    process_points(x[0], mesh)
  with pytest.raises(ValueError, match="`weights` must have shape"):
    process_points(x, mesh, weights=np.ones(5))


@pytest.mark.slow  # > 17 s on 2 cores: in CI's slow run
def test_a_fit_given_a_mesh_keeps_whole_batch_line_search_retries():
  # gathering the rows still searching would be a collective on a batch split over devices:
  # a fit given a `mesh` must say so to its trainer (W2Trainer.sharded), plain fits must not
  import numpy as np
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(512, 2)), rng.normal(size=(512, 2)) * 0.5 + 1.0
  mesh = make_mesh(jax.devices()[:1])
  on_mesh = neural_ot.fit_w2(x, y, steps=3, potential="mlp", mesh=mesh)
  plain = neural_ot.fit_w2(x, y, steps=3, potential="mlp")
  assert on_mesh.trainer.sharded and on_mesh.trainer.solver.retry_divisor == 1
  assert not plain.trainer.sharded and plain.trainer.solver.retry_divisor > 1
