"""Read PyTorch ``.pt`` state dicts without torch (restricted unpickler).

A ``.pt`` file (torch >= 1.6) is a zip archive: ``<root>/data.pkl`` pickles the
object, tensors refer to raw little-endian storages ``<root>/data/<key>`` via
persistent ids. Only what a state dict of tensors needs is rebuilt
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
``torch._utils._rebuild_parameter`` and the typed storages); any other global in
the pickle is refused, so a hostile file cannot run code.

The input is treated as hostile throughout: every declared size is checked before
anything is allocated or read (zip entries and rebuilt tensors against what is left of
``max_bytes``, storages against their declared element count and dtype, tensor views
against their storage, the pickle's memo indices against its length), so a crafted file
ends in a :class:`PtFileError` naming it, never in a read outside a buffer, a huge
allocation or a crash.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import struct
import zipfile
import zlib

try:  # zipfile decompresses LZMA members with it when present
  from lzma import LZMAError
except ImportError:  # pragma: no cover
  LZMAError = zlib.error

import numpy as np

__all__ = ["PtFileError", "load_pt"]

_STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
             "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
             "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}
_MAX_NDIM = 32
_MAX_BYTES = 2 ** 31  # per file; a state dict of this library's sizes is far below
# Opcodes a state dict never holds: out-of-band buffers (protocol 5).
_NO_OPS = frozenset({"NEXT_BUFFER", "READONLY_BUFFER", "BYTEARRAY8"})


class PtFileError(ValueError, pickle.UnpicklingError):
  """A ``.pt`` file that is malformed, corrupt or holds more than tensors.

  A ``ValueError`` (and, for code written against earlier versions, a
  ``pickle.UnpicklingError``); the message names the file.
  """


class _Refused(Exception):
  """Raised inside the unpickler; :func:`load_pt` adds the file name."""


class _StorageType:
  def __init__(self, name, dtype):
    self.name, self.dtype = name, np.dtype(dtype)

  def __repr__(self):
    return f"torch.{self.name}"


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def _rebuild_tensor(storage, offset, size, stride, *unused, max_bytes=_MAX_BYTES):
  """``torch._utils._rebuild_tensor_v2``: a checked strided view of ``storage``, copied."""
  del unused
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    raise _Refused(f"a tensor's storage is a {type(storage).__name__}, not a stored buffer")
  if not _is_int(offset) or offset < 0:
    raise _Refused(f"a tensor has storage offset {offset!r}; expected an int >= 0")
  if not (isinstance(size, tuple) and isinstance(stride, tuple)):
    raise _Refused(f"a tensor has size {size!r} and stride {stride!r}; expected tuples")
  if len(size) != len(stride) or len(size) > _MAX_NDIM:
    raise _Refused(f"a tensor has size {size!r} and stride {stride!r} (different lengths or "
                   f"more than {_MAX_NDIM} dimensions)")
  if not all(_is_int(s) and s >= 0 for s in size):
    raise _Refused(f"a tensor has size {size!r}; expected ints >= 0")
  if not all(_is_int(s) and s >= 0 for s in stride):
    raise _Refused(f"a tensor has stride {stride!r}; expected ints >= 0 (negative strides are "
                   f"not written by torch)")
  n, numel = len(storage), math.prod(size)
  if numel * storage.dtype.itemsize > max_bytes:
    raise _Refused(f"a tensor of size {size} declares {numel} elements (more than the "
                   f"{max_bytes} bytes left of `max_bytes`)")
  if numel == 0:
    if offset > n:
      raise _Refused(f"a tensor has storage offset {offset} beyond its storage of {n} elements")
    return np.zeros(size, storage.dtype)
  # Python ints: no overflow however absurd the declared sizes are.
  last = offset + sum((s - 1) * st for s, st in zip(size, stride))
  if last >= n:
    raise _Refused(f"a tensor of size {size} stride {stride} at offset {offset} reaches element "
                   f"{last} of a storage of {n} elements (out of bounds)")
  if not size:
    return np.array(storage[offset])
  itemsize = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(
      storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
  del requires_grad, backward_hooks, unused
  if not isinstance(data, np.ndarray):
    raise _Refused(f"a parameter wraps a {type(data).__name__}, not a tensor")
  return data


def _scan(raw: bytes) -> None:
  """Refuse, before unpickling, what the C unpickler would turn into a huge allocation: a
  memo index far beyond the opcodes read so far (it grows its memo table to the index, e.g.
  ``LONG_BINPUT 774909555`` is gigabytes), or a frame longer than the pickle."""
  for i, (op, arg, pos) in enumerate(pickletools.genops(raw)):
    if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg <= i:
      raise _Refused(f"memo index {arg} at byte {pos} of the pickle, after only {i} opcodes")
    if op.name in _NO_OPS:
      raise _Refused(f"opcode {op.name} at byte {pos} of the pickle (not part of a state dict)")
    if op.name == "FRAME" and arg > len(raw) - pos:
      raise _Refused(f"a frame of {arg} bytes at byte {pos} of a {len(raw)}-byte pickle")


def _read(archive: zipfile.ZipFile, name: str, max_bytes: int) -> bytes:
  """An entry's bytes, refusing declared sizes above ``max_bytes`` before reading them."""
  try:
    info = archive.getinfo(name)
  except KeyError:
    raise _Refused(f"the archive has no entry {name!r}") from None
  if info.file_size > max_bytes:
    raise _Refused(f"entry {name!r} declares {info.file_size} bytes (limit {max_bytes} left of "
                   f"`max_bytes`; pass `max_bytes` to raise it)")
  with archive.open(info) as fh:
    raw = fh.read(info.file_size + 1)  # +1: catches an entry longer than declared
  if len(raw) != info.file_size:
    raise _Refused(f"entry {name!r} holds {len(raw)} bytes but declares {info.file_size}")
  return raw


class _Unpickler(pickle.Unpickler):
  def __init__(self, fh, archive: zipfile.ZipFile, root: str, max_bytes: int):
    super().__init__(fh)
    # One budget for everything read or rebuilt: many entries or many zero-stride views of a
    # small storage cannot add up to more than `max_bytes`.
    self._archive, self._root, self._left = archive, root, max_bytes
    self._storages = {}

  def _rebuild(self, *args):
    arr = _rebuild_tensor(*args, max_bytes=self._left)
    self._left -= arr.nbytes
    return arr

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return self._rebuild
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return _rebuild_parameter
    if module == "torch" and name in _STORAGES:
      return _StorageType(name, _STORAGES[name])
    raise _Refused(f"refusing to load global {module}.{name}: only tensors and OrderedDicts are "
                   f"rebuilt (no torch, no code execution)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
      raise _Refused(f"unsupported persistent id {pid!r}")
    storage_type, key = pid[1], pid[2]
    if not isinstance(storage_type, _StorageType):
      raise _Refused(f"unsupported storage type {storage_type!r}")
    if not isinstance(key, str) or not key or "/" in key or ".." in key:
      raise _Refused(f"bad storage key {key!r}")
    dtype = storage_type.dtype.newbyteorder("<")
    if key in self._storages:
      arr = self._storages[key]
      if arr.dtype != dtype:
        raise _Refused(f"storage {key!r} is used as {arr.dtype} and as {dtype} (dtype mismatch)")
      return arr
    raw = _read(self._archive, f"{self._root}/data/{key}", self._left)
    self._left -= len(raw)
    if len(raw) % dtype.itemsize:
      raise _Refused(f"storage {key!r} has {len(raw)} bytes, not a whole number of {dtype} "
                     f"elements (dtype mismatch)")
    numel = pid[4] if len(pid) >= 5 else None
    if numel is not None and (not _is_int(numel) or numel * dtype.itemsize != len(raw)):
      raise _Refused(f"storage {key!r} declares {numel!r} {dtype} elements but holds "
                     f"{len(raw)} bytes")
    arr = np.frombuffer(raw, dtype=dtype)
    self._storages[key] = arr
    return arr


def load_pt(path: str, max_bytes: int = _MAX_BYTES) -> dict[str, np.ndarray]:
  """Load a ``.pt`` state dict as ``{name: numpy array}`` (no torch, no code execution).

  Args:
    path: a zip-format PyTorch file (``torch.save`` of a state dict, torch >= 1.6).
    max_bytes: the most bytes read from the archive (pickle and storages) and allocated for
      the tensors rebuilt from them, in all; declared sizes are checked against what is left
      before anything is read or allocated.

  Returns:
    ``{name: array}`` in the file's order, arrays copied out of the archive.

  Raises:
    FileNotFoundError: no such file. TypeError: ``path`` is not a path.
    PtFileError: (a ``ValueError``) not a zip archive, a truncated or corrupt one (CRC
      errors), a pickle holding anything besides tensors in (ordered) dicts, a tensor view
      outside its storage, negative strides or offsets, a storage whose byte length does not
      match its dtype or declared element count, an entry above ``max_bytes``.

  Example:
    >>> sd = load_pt("2_v1.pt")  # doctest: +SKIP
    >>> sd["final_layer.weight"].shape  # doctest: +SKIP
    (1, 32)
  """
  if not isinstance(path, (str, bytes, os.PathLike)):
    raise TypeError(f"load_pt: `path` must be a path, got {type(path).__name__}.")
  path = os.fsdecode(path)
  if not (isinstance(max_bytes, int) and not isinstance(max_bytes, bool) and max_bytes >= 1):
    raise ValueError(f"load_pt: `max_bytes` must be an int >= 1, got {max_bytes!r}.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"load_pt: no such file: {path!r}")
  try:
    is_zip = zipfile.is_zipfile(path)
  except (zipfile.BadZipFile, ValueError, OverflowError, struct.error):
    is_zip = False  # is_zipfile lets some of these escape (e.g. a damaged ZIP64 record)
  if not is_zip:
    raise PtFileError(f"load_pt: {path!r} is not a zip-format PyTorch file (torch >= 1.6), or "
                      f"it is truncated.")
  try:
    with zipfile.ZipFile(path) as archive:
      pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
      if len(pkl) != 1:
        raise _Refused(f"expected one data.pkl entry, found {len(pkl)}")
      root = pkl[0][: -len("/data.pkl")] if "/" in pkl[0] else ""
      raw = _read(archive, pkl[0], max_bytes)
      _scan(raw)
      obj = _Unpickler(io.BytesIO(raw), archive, root, max_bytes - len(raw)).load()
  except _Refused as exc:
    raise PtFileError(f"load_pt: {path!r}: {exc}.") from None
  except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError,
          pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
          OverflowError, RecursionError, UnicodeDecodeError, MemoryError, zlib.error,
          LZMAError, struct.error) as exc:
    # Corrupt archive (CRC), truncated pickle, or a pickle whose opcodes do not fit together.
    raise PtFileError(f"load_pt: {path!r} is corrupt or not a PyTorch state dict "
                      f"({type(exc).__name__}: {exc}).") from None
  if not isinstance(obj, dict):
    raise PtFileError(f"load_pt: {path!r} holds a {type(obj).__name__}, not a state dict.")
  if not all(isinstance(k, str) for k in obj):  # str() of a deeply nested key would recurse
    raise PtFileError(f"load_pt: {path!r}: a state dict's keys are names, found a "
                      f"{type(next(k for k in obj if not isinstance(k, str))).__name__}.")
  bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
  if bad:
    raise PtFileError(f"load_pt: {path!r}: entry {bad[0]!r} is a {type(obj[bad[0]]).__name__}, "
                      f"not a tensor.")
  return {str(k): v for k, v in obj.items()}
