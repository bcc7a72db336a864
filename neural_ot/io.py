"""Files: atomic msgpack writes (flax serialization) with a format tag, and checked reads.

Every object the library saves (W2 maps, Meta OT models, training checkpoints) is one
msgpack file holding a dict with a ``"format"`` tag; :func:`load` with ``expect=`` refuses a
file of another kind with a message that says what it is.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax
import numpy as np
from flax import serialization

__all__ = ["save_atomic", "write_bytes_atomic", "write_json_atomic", "seen_by_all", "load",
           "read_map_file", "check_map_contents", "CHECKPOINT_FORMAT", "W2_MAP_FORMAT",
           "CONDITIONAL_MAP_FORMAT"]

CHECKPOINT_FORMAT = "neural_ot.Checkpoint/1"
W2_MAP_FORMAT = "neural_ot.W2Map/1"
CONDITIONAL_MAP_FORMAT = "neural_ot.ConditionalW2Map/1"
MAP_FORMATS = {W2_MAP_FORMAT: "W2 map", CONDITIONAL_MAP_FORMAT: "conditional map"}


def _umask() -> int:
  """The process umask, read without changing it (``os.umask`` would race with threads)."""
  try:
    with open("/proc/self/status") as fh:
      for line in fh:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  return 0o022


def save_atomic(path: str, tree: Any) -> None:
  """Write ``tree`` (dicts of arrays, numbers, strings) to ``path`` atomically.

  The bytes go to a temporary file in the same directory, are flushed to disk and then
  renamed over ``path``: a crash leaves either the old or the new file, never a truncated one.
  """
  write_bytes_atomic(path, serialization.msgpack_serialize(serialization.to_state_dict(tree)))


def write_json_atomic(path: str, obj: Any) -> None:
  """Write ``obj`` as JSON to ``path`` atomically (as :func:`save_atomic`)."""
  write_bytes_atomic(path, json.dumps(obj, sort_keys=True).encode())


def seen_by_all(path: str, name: str) -> bool:
  """Whether the file ``path`` exists; with several processes every one must agree (a resume
  that only some of them see would train different states), else a clear error."""
  here = os.path.isfile(path)
  if jax.process_count() == 1:
    return here
  from jax.experimental import multihost_utils
  seen = np.asarray(multihost_utils.process_allgather(np.asarray([here], np.int32)))
  if seen.min() != seen.max():
    raise ValueError(
        f"{name}: the checkpoint {path!r} is seen by processes {np.flatnonzero(seen).tolist()} "
        f"but not by {np.flatnonzero(seen == 0).tolist()}: with several processes "
        f"`checkpoint_dir` must be a folder every process sees (a shared filesystem); process 0 "
        f"writes it.")
  return here


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Write ``data`` to ``path`` through a flushed temporary file renamed over it.

  With several processes (``jax.distributed``) only process 0 writes: every process may call
  this with the same (replicated) contents, as the fits do, and the file is written once.
  """
  if jax.process_index() != 0:
    return
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".msgpack")
  try:
    with os.fdopen(fd, "wb") as fh:
      fh.write(data)
      fh.flush()
      os.fsync(fh.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def load(path: str, expect: str | None = None, what: str = "file") -> dict:
  """Read a file written by :func:`save_atomic` (nested dict of numpy arrays).

  With ``expect``, the file's ``"format"`` tag must equal it (a ``ValueError`` says what the
  file is otherwise); unreadable bytes raise ``ValueError`` too.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no {what} at {path!r}")
  with open(path, "rb") as fh:
    raw = fh.read()
  try:
    tree = serialization.msgpack_restore(raw)
  except Exception as exc:  # msgpack raises several types on corrupt bytes
    raise ValueError(f"{path!r} is not a readable neural_ot {what} (corrupt or not msgpack).") \
        from exc
  if not isinstance(tree, dict):
    raise ValueError(f"{path!r} is not a neural_ot {what}.")
  if expect is not None:
    tag = tree.get("format")
    if isinstance(tag, bytes):
      tag = tag.decode(errors="replace")
    if tag != expect:
      raise ValueError(f"{path!r} is not a neural_ot {what} (format {tag!r}, expected {expect!r}).")
  return tree


def read_map_file(path: str, formats=tuple(MAP_FORMATS)) -> tuple[dict, dict]:
  """``(raw, meta)`` of a map file whose format tag is one of ``formats``; a file that is not
  one (msgpack, JSON or layout errors, another tag) is a ``ValueError`` naming it."""
  try:
    raw = load(path)
    meta = json.loads(raw["meta"])
    if meta.get("format") not in formats:
      raise KeyError("format")
  except FileNotFoundError:
    raise
  except Exception as exc:  # msgpack, JSON or layout errors all mean "not a map file"
    what = " or ".join(MAP_FORMATS.get(f, f) for f in formats)
    raise ValueError(f"load_map: {path!r} is not a neural_ot {what} file.") from exc
  return raw, meta


def check_map_contents(trainer, params, dim: int, frame) -> None:
  """Parameters laid out as ``trainer.init_params`` builds them for ``dim``, finite numbers
  throughout and positive frame scales (a damaged file can be valid msgpack with broken
  contents); a ``ValueError`` otherwise."""
  dtype = jax.tree.leaves(params)[0].dtype
  want = jax.eval_shape(lambda: trainer.init_params(jax.random.PRNGKey(0), dim, dtype))
  shapes = lambda t: [tuple(np.shape(v)) for v in jax.tree.leaves(t)]
  if jax.tree.structure(want) != jax.tree.structure(params) or shapes(want) != shapes(params):
    raise ValueError("parameters do not match the recorded network")
  for leaf in jax.tree.leaves(params) + [np.asarray(v) for v in frame]:
    if not np.all(np.isfinite(np.asarray(leaf, np.float64))):
      raise ValueError("non-finite parameters")
  if not (float(frame.sx) > 0 and float(frame.sy) > 0):
    raise ValueError("non-positive frame scales")
