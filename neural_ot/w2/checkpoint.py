"""Atomic checkpoints (flax msgpack serialization) for training runs and maps."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from flax import serialization

__all__ = ["save_atomic", "load"]


def _umask() -> int:
  """The process umask, read without setting it (``os.umask`` would race with threads)."""
  try:
    with open("/proc/self/status") as fh:
      for line in fh:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  return 0o022  # the usual default where /proc is unavailable


def save_atomic(path: str, tree: Any) -> None:
  """Write ``tree`` (dicts of arrays, numbers, strings) to ``path`` atomically.

  The bytes go to a temporary file in the same directory, are flushed to disk
  and then renamed over ``path``: a crash leaves either the old or the new file,
  never a truncated one.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  data = serialization.msgpack_serialize(serialization.to_state_dict(tree))
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


def load(path: str) -> dict:
  """Read a file written by :func:`save_atomic` (nested dict of numpy arrays)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no checkpoint at {path!r}")
  with open(path, "rb") as fh:
    return serialization.msgpack_restore(fh.read())
