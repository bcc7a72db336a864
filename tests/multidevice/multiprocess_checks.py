"""One process of a multi-process run (``jax.distributed``, CPU devices, gloo collectives).

Every fit and solve of the library on one global mesh, written to ``--out`` as
``<case>-p<process>.npz`` for ``tests/test_multiprocess.py`` to compare: the same cases on
2 processes x 2 devices and on 1 process x 4 devices (the same global mesh size) must agree.
This is also the example of docs/multiprocess.md: start it once per process,

  python tests/multidevice/multiprocess_checks.py --out /tmp/mp --num-processes 2 \\
      --process-id 0 --coordinator localhost:12355 &
  python tests/multidevice/multiprocess_checks.py --out /tmp/mp --num-processes 2 \\
      --process-id 1 --coordinator localhost:12355

(``--num-processes 1 --devices-per-process 4`` runs the one-process reference.)
"""

from __future__ import annotations

import argparse
import os
import sys

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--num-processes", type=int, default=1)
p.add_argument("--process-id", type=int, default=0)
p.add_argument("--coordinator", default="localhost:12355")
p.add_argument("--devices-per-process", type=int, default=None,
               help="forced CPU devices per process (default: 4 / num-processes)")
p.add_argument("--cases", nargs="+",
               default=["sinkhorn", "fit_w2", "resume", "budget", "conditional", "meta",
                        "fit_map"])
p.add_argument("--dump-after", type=float, default=0,
               help="print every thread's stack after this many seconds (finding hangs)")
args = p.parse_args()
if args.dump_after:
  import faulthandler
  faulthandler.dump_traceback_later(args.dump_after, exit=True)

ndev = args.devices_per_process or 4 // args.num_processes
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={ndev}").strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402  (after XLA_FLAGS)

if args.num_processes > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=args.coordinator,
                             num_processes=args.num_processes, process_id=args.process_id)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import neural_ot  # noqa: E402
from neural_ot.sharding import make_mesh, process_points  # noqa: E402

PID, NPROC = jax.process_index(), jax.process_count()
mesh = make_mesh()  # every device of every process: the global mesh
os.makedirs(args.out, exist_ok=True)


def gather(a):
  """A global array as one numpy array on this process (rows from every process)."""
  a = jax.numpy.asarray(a) if not isinstance(a, jax.Array) else a
  if a.is_fully_addressable:
    return np.asarray(a)
  return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def save(case, **arrays):
  np.savez(os.path.join(args.out, f"{case}-p{PID}.npz"), **arrays)
  print(f"[process {PID}/{NPROC}] {case} done", flush=True)


def pair(n=2000, d=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (x @ rng.normal(size=(d, d)).astype(np.float32) * 0.5 + 1.0
       + 0.3 * np.tanh(x[:, ::-1])).astype(np.float32)
  return x, y


def case_sinkhorn():
  x, y = pair(1998, 3)
  y = y[:1502]
  kw = dict(epsilon=0.05, tol=1e-5, tile_size=128)
  out = neural_ot.sinkhorn(x, y, mesh=mesh, **kw)  # the same global arrays on every process
  # each process passes only its own rows
  share_x, share_y = np.array_split(x, NPROC)[PID], np.array_split(y, NPROC)[PID]
  xg, a = process_points(share_x, mesh)
  yg, b = process_points(share_y, mesh)
  local = neural_ot.sinkhorn(xg, yg, a, b, **kw)
  div = neural_ot.sinkhorn_divergence(x, y, mesh=mesh, **kw)
  rng = np.random.default_rng(1)
  xb = rng.normal(size=(64, 16, 2)).astype(np.float32)
  yb = (0.5 * rng.normal(size=(64, 12, 2)) + 1.0).astype(np.float32)
  batch = neural_ot.sinkhorn_batch(xb, yb, epsilon=0.1, tol=1e-5, mesh=mesh)
  save("sinkhorn", cost=gather(out.reg_ot_cost), f=gather(out.f)[:1998],
       g=gather(out.g)[:1502], local_cost=gather(local.reg_ot_cost),
       divergence=gather(div), batch=gather(batch.reg_ot_cost))


W2_OPTS = dict(steps=300, batch_size=256, hidden=(32, 32), predictor_hidden=(32,),
               potential="mlp", progress=PID == 0)


def case_fit_w2():
  x, y = pair()
  m = neural_ot.fit_w2(x, y, mesh=mesh, checkpoint_dir=os.path.join(args.out, "ckpt-fit"),
                       **W2_OPTS)
  save("fit_w2", t=gather(m.transport(x[:256])), w2=np.float64(m.w2))


class _Stop(Exception):
  pass


def case_resume():
  x, y = pair()
  ckpt = os.path.join(args.out, "ckpt-resume")

  def stop(step, metrics):
    if step == 200:
      raise KeyboardInterrupt  # as Ctrl-C on every process

  try:
    neural_ot.fit_w2(x, y, mesh=mesh, checkpoint_dir=ckpt, callback=stop, **W2_OPTS)
    raise _Stop("the interrupted run finished")
  except KeyboardInterrupt:
    pass
  m = neural_ot.fit_w2(x, y, mesh=mesh, checkpoint_dir=ckpt, **W2_OPTS)
  save("resume", t=gather(m.transport(x[:256])), steps=np.int64(m.history[-1]["step"]))


def case_budget():
  """A wall-clock budget: each process's clock differs, process 0's decides for all."""
  x, y = pair()
  m = neural_ot.fit_w2(x, y, mesh=mesh, max_seconds=20,
                       **{k: v for k, v in W2_OPTS.items() if k != "steps"})
  save("budget", t=gather(m.transport(x[:256])), steps=np.int64(m.history[-1]["step"]))


def case_conditional():
  rng = np.random.default_rng(0)
  data = {t: (rng.normal(size=(512, 2)), (1 + t) * rng.normal(size=(512, 2)) + t)
          for t in (0.0, 0.5, 1.0)}
  m = neural_ot.fit_conditional_w2(data, mesh=mesh, steps=100, batch_size=128, progress=False,
                                   hidden=(16, 16), predictor_hidden=(16,), context_hidden=(8,))
  xq = rng.normal(size=(128, 2)).astype(np.float32)
  save("conditional", t=gather(m.transport(xq, 0.25)))


def case_meta():
  from neural_ot.meta import fit_meta, gaussian_mixture_histograms, grid
  pairs = lambda k, n: (gaussian_mixture_histograms(k, n, 6),
                        gaussian_mixture_histograms(jax.random.fold_in(k, 1), n, 6))
  m = fit_meta(pairs, grid(6), 0.05, steps=100, batch_size=8, hidden=(32,), progress=False,
               mesh=mesh)
  f, g = m.predict(*pairs(jax.random.PRNGKey(9), 4))
  save("meta", f=gather(f), g=gather(g))


def case_fit_map():
  x, y = pair(1000, 2)
  m = neural_ot.fit_map(x, y, cost=neural_ot.PNorm(2, 1.5), mesh=mesh, steps=100, batch_size=128,
                        hidden=(16, 16), predictor_hidden=(16,), progress=False)
  save("fit_map", t=gather(m.transport(x[:128])))


for case in args.cases:
  globals()[f"case_{case}"]()
multihost_utils.sync_global_devices("multiprocess_checks done")
print(f"[process {PID}/{NPROC}] all done", flush=True)
sys.exit(0)
