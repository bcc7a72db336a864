"""A tiny assembler of torch ``.pt`` pickles (protocol 2), for tests of the torch-free reader
(`tests/test_torch_pt.py`, `tests/test_fuzz_entrypoints.py`): files built by hand, opcode by
opcode, so the tests run without torch and can declare anything a hostile file could."""

import struct


def pkl_str(s):
  b = s.encode()
  return b"X" + struct.pack("<I", len(b)) + b


def pkl_int(v):
  if -2 ** 31 <= v < 2 ** 31:
    return b"J" + struct.pack("<i", v)
  n = (v.bit_length() + 8) // 8
  return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def pkl_tuple(items):
  return b"(" + b"".join(items) + b"t"


def pkl_global(module, name):
  return b"c" + f"{module}\n{name}\n".encode()


def pt_tensor(key, size, stride, offset=0, storage="FloatStorage", numel=None):
  """``torch._utils._rebuild_tensor_v2`` of storage ``key`` (persistent id, as torch writes it;
  ``numel`` adds the storage's element count that newer torch versions record)."""
  pid = [pkl_str("storage"), pkl_global("torch", storage), pkl_str(key), pkl_str("cpu")]
  if numel is not None:
    pid.append(pkl_int(numel))
  args = [pkl_tuple(pid) + b"Q", pkl_int(offset), pkl_tuple([pkl_int(s) for s in size]),
          pkl_tuple([pkl_int(s) for s in stride]), b"\x89", b")"]
  return pkl_global("torch._utils", "_rebuild_tensor_v2") + pkl_tuple(args) + b"R"


def pt_state_dict(entries):
  """``entries``: (name, value opcodes) pairs -> a pickled OrderedDict."""
  body = b"(" + b"".join(pkl_str(k) + v for k, v in entries) + b"u"
  return b"\x80\x02" + pkl_global("collections", "OrderedDict") + b")R" + body + b"."
