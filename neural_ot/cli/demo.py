"""``neural-ot demo``: learn a 2-D W2 map between built-in measures; write a picture, the map
and a summary."""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from neural_ot import _plotting, data, w2
from neural_ot.cli.common import make_out, report, write_json
from neural_ot.cli.fit import summarise, train_options


def run(args) -> int:
  """``neural-ot demo``; returns the exit code."""
  make_out(args.out)
  src, tgt = data.SAMPLERS[args.source], data.SAMPLERS[args.target]
  t0 = time.perf_counter()
  mp = w2.fit_w2(src, tgt, **train_options(args))
  seconds = time.perf_counter() - t0
  k1, k2 = jax.random.split(jax.random.PRNGKey(args.seed + 1000))
  x, y = src(k1, args.n), tgt(k2, args.n)  # held out: not the training stream
  tx, iy, summary, meanings = summarise(mp, x, y, seconds, args.steps)
  summary = {"source": args.source, "target": args.target, **summary}
  png = os.path.join(args.out, "neural_map_demo.png")
  _plotting.plot_map(np.asarray(x), np.asarray(y), np.asarray(tx), np.asarray(iy),
                     f"{args.source} -> {args.target}: learned W2 map, W2^2 ~ {mp.w2:.3f}", png)
  map_path = os.path.join(args.out, "map.msgpack")
  mp.save(map_path)
  js = os.path.join(args.out, "neural_map_demo.json")
  write_json(js, summary)
  report(summary, [(png, "picture"), (map_path, "the learned map; neural_ot.load_map"),
                   (js, "this summary")], meanings)
  return 0


