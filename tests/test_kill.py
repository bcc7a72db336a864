"""Interrupted saves lose nothing: SIGKILL a training run at random moments (checkpointing
every step, so kills land inside writes too); the checkpoint left behind always loads, and the
run resumes from it to the same result as an uninterrupted one."""

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from neural_ot import io

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, neural_ot
    x = np.random.default_rng(0).normal(size=(400, 2)).astype(np.float32)
    m = neural_ot.fit_w2(x, 2 * x + 1, steps=int(sys.argv[2]), batch_size=32, seed=1,
                         hidden=(16, 16), predictor_hidden=(16,), checkpoint_dir=sys.argv[1],
                         checkpoint_every=1, log_every=1, progress=False)
    np.save(sys.argv[1] + "/params.npy", np.concatenate(
        [np.ravel(v) for v in __import__("jax").tree.leaves(m.params)]))
""")


@pytest.mark.slow
def test_sigkill_during_checkpointing_never_loses_the_run(tmp_path):
  script = tmp_path / "train.py"
  script.write_text(SCRIPT)
  steps = "400"
  run = lambda d: subprocess.Popen([sys.executable, str(script), str(d), steps],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = tmp_path / "killed"
  ckpt = ckpt_dir / "checkpoint.msgpack"
  rng = np.random.default_rng(0)
  resumed_from = []
  for _ in range(3):
    proc = run(ckpt_dir)
    t0 = time.time()
    while not ckpt.exists() and time.time() - t0 < 120 and proc.poll() is None:
      time.sleep(0.05)
    before = int(io.load(str(ckpt), expect=io.CHECKPOINT_FORMAT)["state"]["step"]) if (
        ckpt.exists()) else 0
    time.sleep(float(rng.uniform(0.2, 1.5)))  # a random moment while it writes every step
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    raw = io.load(str(ckpt), expect=io.CHECKPOINT_FORMAT)  # never truncated or half-written
    step = int(raw["state"]["step"])
    assert step >= before
    resumed_from.append(step)
  assert resumed_from[-1] > 0
  proc = run(ckpt_dir)
  assert proc.wait(timeout=300) == 0
  ref_dir = tmp_path / "clean"
  assert run(ref_dir).wait(timeout=300) == 0
  np.testing.assert_array_equal(np.load(ckpt_dir / "params.npy"), np.load(ref_dir / "params.npy"))
