"""The torch-free ``.pt`` reader on hostile files: crafted pickles and zips (no torch needed).

The pickles are assembled opcode by opcode, so each test states exactly what a hostile file
declares (sizes, strides, offsets, storage types) and checks that the reader refuses it with a
``ValueError`` naming the file, never reading outside a buffer or allocating what was declared.
"""

import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from neural_ot.w2bench import load_pt
from neural_ot.w2bench.torch_pt import PtFileError
from _pt_pickle import (pkl_global as _global, pkl_int as _int, pkl_str as _str,
                        pkl_tuple as _tuple, pt_state_dict as _state_dict, pt_tensor as _tensor)


def _write(path, pkl, storages):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pkl)
    for key, raw in storages.items():
      z.writestr(f"archive/data/{key}", raw)
    z.writestr("archive/version", "3\n")
  return str(path)


def _valid(tmp_path, name="ok.pt"):
  data = np.arange(12, dtype=np.float32)
  pkl = _state_dict([("w", _tensor("0", (3, 4), (4, 1), numel=12)),
                     ("wt", _tensor("0", (4, 3), (1, 4))),  # a transposed view
                     ("tail", _tensor("0", (2,), (1,), offset=10)),
                     ("scalar", _tensor("1", (), (), storage="LongStorage")),
                     ("empty", _tensor("0", (0, 5), (5, 1)))])
  return _write(tmp_path / name, pkl, {"0": data.tobytes(), "1": np.int64(7).tobytes()})


def _refuses(path, match, **kw):
  with pytest.raises(PtFileError, match=match) as info:
    load_pt(path, **kw)
  assert os.path.basename(str(path)) in str(info.value)
  assert isinstance(info.value, ValueError)
  return str(info.value)


def _one_tensor(tmp_path, name="bad.pt", nbytes=16, storage="FloatStorage", **tensor):
  pkl = _state_dict([("x", _tensor("0", **tensor, storage=storage))])
  return _write(tmp_path / name, pkl, {"0": bytes(nbytes)})


# --- tests ------------------------------------------------------------------------------


def test_assembled_file_loads_with_views_offsets_scalars_and_empty_tensors(tmp_path):
  sd = load_pt(_valid(tmp_path))
  ref = np.arange(12, dtype=np.float32).reshape(3, 4)
  np.testing.assert_array_equal(sd["w"], ref)
  np.testing.assert_array_equal(sd["wt"], ref.T)
  np.testing.assert_array_equal(sd["tail"], [10, 11])
  assert sd["scalar"] == 7 and sd["scalar"].dtype == np.int64
  assert sd["empty"].shape == (0, 5)
  assert list(sd) == ["w", "wt", "tail", "scalar", "empty"]


def test_out_of_bounds_view_is_refused(tmp_path):
  # The reproduction: 4 stored floats, declared size (64,).
  msg = _refuses(_one_tensor(tmp_path, size=(64,), stride=(1,)), "out of bounds")
  assert "element 63 of a storage of 4" in msg
  # The last element just past the end (offset + (size - 1) * stride == len).
  _refuses(_one_tensor(tmp_path, size=(2,), stride=(1,), offset=3), "out of bounds")
  _refuses(_one_tensor(tmp_path, size=(2, 2), stride=(3, 1)), "out of bounds")
  # Exactly in bounds loads.
  assert load_pt(_one_tensor(tmp_path, size=(2, 2), stride=(2, 1)))["x"].shape == (2, 2)


def test_negative_strides_offsets_and_sizes_are_refused(tmp_path):
  _refuses(_one_tensor(tmp_path, size=(4,), stride=(-1,), offset=3), "stride")
  _refuses(_one_tensor(tmp_path, size=(2,), stride=(1,), offset=-2), "offset")
  _refuses(_one_tensor(tmp_path, size=(-2,), stride=(1,)), "size")
  _refuses(_one_tensor(tmp_path, size=(2, 2), stride=(1,)), "different lengths")


def test_absurd_sizes_are_refused_without_allocating(tmp_path):
  # Python-int arithmetic: no overflow wraps these back into bounds.
  _refuses(_one_tensor(tmp_path, size=(2 ** 62, 2 ** 62), stride=(1, 1)), "declares 2126764")
  _refuses(_one_tensor(tmp_path, size=(2, 2), stride=(2 ** 63, 2 ** 62)), "out of bounds")
  # Stride 0 (an expanded tensor) is in bounds, but copying 2^64 elements is not on.
  _refuses(_one_tensor(tmp_path, size=(2 ** 64 + 1,), stride=(0,)), "declares 18446744073709551617")
  assert load_pt(_one_tensor(tmp_path, size=(3,), stride=(0,)))["x"].shape == (3,)
  _refuses(_one_tensor(tmp_path, size=(1,) * 40, stride=(1,) * 40), "dimensions")


def test_dtype_mismatches_are_refused(tmp_path):
  # 6 bytes are not a whole number of float32s.
  _refuses(_one_tensor(tmp_path, nbytes=6, size=(1,), stride=(1,)), "dtype mismatch")
  # Declared element count differs from the stored bytes.
  pkl = _state_dict([("x", _tensor("0", (2,), (1,), numel=100))])
  _refuses(_write(tmp_path / "n.pt", pkl, {"0": bytes(16)}), "declares 100")
  # One storage read as float32 and as float64.
  pkl = _state_dict([("a", _tensor("0", (2,), (1,))),
                     ("b", _tensor("0", (1,), (1,), storage="DoubleStorage"))])
  _refuses(_write(tmp_path / "m.pt", pkl, {"0": bytes(16)}), "dtype mismatch")


def test_foreign_pickles_are_refused(tmp_path):
  evil = b"\x80\x02" + _global("os", "system") + _str("echo pwned") + b"\x85R."
  _refuses(_write(tmp_path / "evil.pt", evil, {}), "refusing to load global os.system")
  # A storage type torch does not have, a foreign persistent id, a missing storage entry.
  _refuses(_one_tensor(tmp_path, storage="EvilStorage", size=(1,), stride=(1,)),
           "torch.EvilStorage")
  pkl = b"\x80\x02" + _tuple([_str("module"), _str("x")]) + b"Q."
  _refuses(_write(tmp_path / "pid.pt", pkl, {}), "persistent id")
  pkl = _state_dict([("x", _tensor("missing", (1,), (1,)))])
  _refuses(_write(tmp_path / "miss.pt", pkl, {}), "no entry")
  # _rebuild_tensor_v2 handed an int instead of a storage; a dict of ints; a list.
  fake = _global("torch._utils", "_rebuild_tensor_v2") + _tuple(
      [_int(5), _int(0), _tuple([_int(1)]), _tuple([_int(1)])]) + b"R"
  _refuses(_write(tmp_path / "int.pt", _state_dict([("x", fake)]), {}), "not a stored buffer")
  _refuses(_write(tmp_path / "ints.pt", _state_dict([("x", _int(3))]), {}), "not a tensor")
  _refuses(_write(tmp_path / "list.pt", b"\x80\x02]." , {}), "not a state dict")
  # Not a zip at all (a plain pickle), no data.pkl, two data.pkl.
  (tmp_path / "plain.pt").write_bytes(pickle.dumps({"a": 1}))
  _refuses(tmp_path / "plain.pt", "not a zip-format")
  with zipfile.ZipFile(tmp_path / "nopkl.pt", "w") as z:
    z.writestr("archive/version", "3")
  _refuses(tmp_path / "nopkl.pt", "one data.pkl")


def test_huge_declared_sizes_are_refused_before_reading(tmp_path):
  path = _valid(tmp_path)
  _refuses(path, "limit 20", max_bytes=20)
  # Patch the central directory: storage "0" now declares 4 GB minus 2 bytes.
  raw = bytearray(open(path, "rb").read())
  name = b"archive/data/0"
  cd = raw.index(b"PK\x01\x02" + raw[raw.index(b"PK\x01\x02") + 4:raw.index(b"PK\x01\x02") + 6])
  while raw[cd + 46:cd + 46 + len(name)] != name or raw[cd + 46 + len(name)] == ord("/"):
    cd = raw.index(b"PK\x01\x02", cd + 4)
  raw[cd + 24:cd + 28] = struct.pack("<I", 2 ** 32 - 2)
  (tmp_path / "huge.pt").write_bytes(bytes(raw))
  _refuses(tmp_path / "huge.pt", "declares 4294967294 bytes")


def test_truncated_files_are_refused(tmp_path):
  good = open(_valid(tmp_path), "rb").read()
  for cut in (10, len(good) // 2, len(good) - 30, len(good) - 1):
    (tmp_path / "cut.pt").write_bytes(good[:cut])
    _refuses(tmp_path / "cut.pt", "cut.pt")
  # A truncated pickle inside a well-formed zip.
  pkl = _state_dict([("x", _tensor("0", (2,), (1,)))])
  _refuses(_write(tmp_path / "tp.pt", pkl[: len(pkl) // 2], {"0": bytes(8)}), "corrupt")


def test_bit_flips_load_or_fail_with_a_value_error(tmp_path):
  """Every single-bit flip of a valid file loads (CRC-free bytes such as timestamps) or ends in
  a PtFileError naming the file; nothing else escapes."""
  good = open(_valid(tmp_path), "rb").read()
  rng = np.random.default_rng(0)
  outcomes = {"loaded": 0, "refused": 0}
  for i in range(300):
    raw = bytearray(good)
    pos = int(rng.integers(len(raw)))
    raw[pos] ^= 1 << int(rng.integers(8))
    path = tmp_path / f"flip{i % 4}.pt"
    path.write_bytes(bytes(raw))
    try:
      sd = load_pt(str(path))
    except PtFileError as exc:
      assert path.name in str(exc)
      outcomes["refused"] += 1
    else:
      assert all(isinstance(v, np.ndarray) for v in sd.values())
      outcomes["loaded"] += 1
  assert outcomes["refused"] > 100, outcomes


def test_missing_file_is_a_file_not_found_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.pt"):
    load_pt(str(tmp_path / "nope.pt"))
