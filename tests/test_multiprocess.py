"""Several processes (``jax.distributed``, 2 processes x 2 CPU devices, gloo collectives) against
one process with the same global mesh (4 forced CPU devices).

Both runs are ``tests/multidevice/multiprocess_checks.py`` (the example of
``docs/multiprocess.md``), started in fresh processes: the forced device count and
``jax.distributed`` only take effect before JAX starts.
"""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).parent
SCRIPT = HERE / "multidevice" / "multiprocess_checks.py"
CASES = ["sinkhorn", "fit_w2", "resume", "budget", "conditional", "meta", "fit_map"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(out, nproc, pid, port, cases):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--num-processes", str(nproc),
         "--process-id", str(pid), "--coordinator", f"localhost:{port}", "--cases", *cases]
  log = open(f"{out}.p{pid}.log", "w")
  return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent)


def _run(out, nproc, cases, timeout=900, tries=2):
  for attempt in range(tries):
    port = _free_port()
    procs = [_start(out, nproc, pid, port, cases) for pid in range(nproc)]
    try:
      codes = [p.wait(timeout=timeout) for p in procs]
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
    logs = "\n".join(pathlib.Path(f"{out}.p{pid}.log").read_text()[-4000:]
                     for pid in range(nproc))
    # the free port may be taken between its choice and the coordinator's start: try another
    if codes == [0] * nproc or not any(s in logs for s in _PORT_TROUBLE):
      break
  assert codes == [0] * nproc, logs


_PORT_TROUBLE = ("Address already in use", "Failed to connect", "UNAVAILABLE")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multiprocess")
  two, one = root / "two", root / "one"
  _run(two, 2, CASES)
  _run(one, 1, [c for c in CASES if c != "budget"])  # a budget's steps depend on the clock
  load = lambda d, case, pid=0: dict(np.load(d / f"{case}-p{pid}.npz"))
  return two, one, load


@pytest.mark.slow
def test_sinkhorn_across_processes_equals_one_process(runs):
  two, one, load = runs
  a, b, ref = load(two, "sinkhorn"), load(two, "sinkhorn", 1), load(one, "sinkhorn")
  for k in ref:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # every process holds the result
    np.testing.assert_allclose(a[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # each process's own rows (process_points) give the solve of the global arrays
  np.testing.assert_allclose(a["local_cost"], a["cost"], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["fit_w2", "conditional", "meta", "fit_map"])
def test_fits_across_processes_equal_one_process(runs, case):
  two, one, load = runs
  a, b, ref = load(two, case), load(two, case, 1), load(one, case)
  for k in ref:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # parameters identical everywhere
    scale = float(np.max(np.abs(ref[k]))) + 1e-6
    np.testing.assert_allclose(a[k], ref[k], atol=1e-4 * scale, err_msg=k)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_uninterrupted_result(runs):
  two, _, load = runs
  done, resumed = load(two, "fit_w2"), load(two, "resume")
  assert int(resumed["steps"]) == 300
  np.testing.assert_allclose(resumed["t"], done["t"], atol=1e-6)
  # process 0 wrote the checkpoints, atomically: no temporary file is left
  for folder in ("ckpt-fit", "ckpt-resume"):
    names = sorted(os.listdir(two / folder))
    assert "checkpoint.msgpack" in names and not [n for n in names if n.startswith(".tmp")]


@pytest.mark.slow
def test_a_time_budget_gives_every_process_the_same_run(runs):
  two, _, load = runs
  a, b = load(two, "budget"), load(two, "budget", 1)
  assert int(a["steps"]) == int(b["steps"]) >= 20
  np.testing.assert_array_equal(a["t"], b["t"])
