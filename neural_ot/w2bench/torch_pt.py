"""Read PyTorch ``.pt`` state dicts without torch (restricted unpickler).

A ``.pt`` file (torch >= 1.6) is a zip archive: ``<root>/data.pkl`` pickles the
object, tensors refer to raw little-endian storages ``<root>/data/<key>`` via
persistent ids. Only what a state dict of tensors needs is rebuilt
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
``torch._utils._rebuild_parameter`` and the typed storages); any other global in
the pickle is refused, so a hostile file cannot run code.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import numpy as np

__all__ = ["load_pt", "convert_folder"]

_STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
             "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
             "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _StorageType:
  def __init__(self, dtype):
    self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *unused):
  del unused
  itemsize = storage.dtype.itemsize
  if not size:
    return storage[offset].copy()
  return np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
  del requires_grad, backward_hooks, unused
  return data


class _Unpickler(pickle.Unpickler):
  def __init__(self, fh, archive: zipfile.ZipFile, root: str):
    super().__init__(fh)
    self._archive, self._root = archive, root

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return _rebuild_parameter
    if module == "torch" and name in _STORAGES:
      return _StorageType(_STORAGES[name])
    raise pickle.UnpicklingError(
        f"load_pt: refusing to load global {module}.{name}: only tensors and OrderedDicts are "
        f"rebuilt (no torch, no code execution).")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"load_pt: unsupported persistent id {pid!r}")
    storage_type, key = pid[1], pid[2]
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"load_pt: unsupported storage type {storage_type!r}")
    raw = self._archive.read(f"{self._root}/data/{key}")
    return np.frombuffer(raw, dtype=np.dtype(storage_type.dtype).newbyteorder("<"))


def load_pt(path: str) -> dict[str, np.ndarray]:
  """Load a ``.pt`` state dict as ``{name: numpy array}``.

  Raises:
    ValueError: not a zip-format ``.pt`` file. pickle.UnpicklingError: the pickle holds
      anything besides tensors in (ordered) dicts.
  """
  if not zipfile.is_zipfile(path):
    raise ValueError(f"load_pt: {path!r} is not a zip-format PyTorch file (torch >= 1.6).")
  with zipfile.ZipFile(path) as archive:
    pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pkl) != 1:
      raise ValueError(f"load_pt: {path!r} has no single data.pkl entry.")
    root = pkl[0][: -len("/data.pkl")]
    obj = _Unpickler(io.BytesIO(archive.read(pkl[0])), archive, root).load()
  if not isinstance(obj, dict):
    raise ValueError(f"load_pt: {path!r} holds a {type(obj).__name__}, not a state dict.")
  return {str(k): np.asarray(v) for k, v in obj.items()}


def convert_folder(src: str, dst: str) -> list[str]:
  """Convert every ``*.pt`` in ``src`` to ``dst/<name>.npz`` (the layout the loader reads)."""
  os.makedirs(dst, exist_ok=True)
  written = []
  for name in sorted(os.listdir(src)):
    if name.endswith(".pt"):
      out = os.path.join(dst, name[:-3] + ".npz")
      np.savez(out, **load_pt(os.path.join(src, name)))
      written.append(out)
  return written
