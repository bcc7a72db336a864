"""Property-based fuzzing of the entry points ``test_fuzz.py`` does not reach: ``fit_w2``,
``fit_meta``, ``load_pt``, ``convert_folder`` and the command line.

Every call must end in a ``ValueError``/``TypeError`` (``FileNotFoundError`` for a missing
path) whose message names the argument or file that was broken, or work: finite maps,
predictions and constants. Never a hang, a crash with another exception, a huge allocation or
a NaN nobody flagged. The command line must exit non-zero with one line on stderr that names
the argument, never a traceback.

Where training starts, it is one or two steps of tiny networks. How each kind of input was
answered is counted in ``TABLE``; set ``NEURAL_OT_FUZZ_ENTRYPOINTS_TABLE`` to a file name to
have it written there as a markdown table at the end of the module.
"""

import collections
import contextlib
import io
import os
import pickle
import struct
import tracemalloc
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import neural_ot
from neural_ot import cli
from neural_ot.meta import fit_meta, gaussian_mixture_histograms, grid
from neural_ot.w2bench import convert
from neural_ot.w2bench.torch_pt import PtFileError, load_pt
from _pt_pickle import (pkl_global as _global, pkl_str as _str,
                        pt_state_dict as _state_dict, pt_tensor as _tensor)

TABLE = collections.Counter()
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
REAL_PT = "/work/shared/data/w2bench/original_pt/2_v1.pt"  # mutated when present

RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 2)).astype(np.float32)
Y = (0.5 * X + 1.0).astype(np.float32)
W2_KW = dict(steps=1, hidden=(8,), predictor_hidden=(8,), finetune_iters=2, progress=False)


@pytest.fixture(scope="module", autouse=True)
def _write_table():
  """A report, not a test: the tally of answers, written where the variable says."""
  yield
  path = os.environ.get("NEURAL_OT_FUZZ_ENTRYPOINTS_TABLE")
  if path and TABLE:
    with open(path, "w") as fh:
      fh.write(_markdown())


def _markdown():
  lines = ["| entry point | kind of bad input | answer | examples |", "|---|---|---|---:|"]
  for (entry, kind, answer), count in sorted(TABLE.items()):
    lines.append(f"| {entry} | {kind} | {answer} | {count} |")
  totals = collections.Counter()
  for (entry, _, _), count in TABLE.items():
    totals[entry] += count
  lines += ["", "| entry point | examples |", "|---|---:|"]
  lines += [f"| {e} | {n} |" for e, n in sorted(totals.items())]
  return "\n".join(lines) + "\n"


def _answer(entry, kind, names, call, check, own=None):
  """Run ``call``: an error must be a ValueError/TypeError/FileNotFoundError naming one of
  ``names`` (or ``own``, the exception a user's callback raised, passed on unchanged); a
  result goes to ``check``, which asserts it is usable and returns how it was answered."""
  try:
    out = call()
  except (ValueError, TypeError, FileNotFoundError) as exc:
    if own is not None and isinstance(exc, own):
      TABLE[(entry, kind, f"user's {type(exc).__name__} passed on")] += 1
      return
    msg = str(exc)
    assert any(n in msg for n in names), f"{entry}/{kind}: error does not name {names}: {msg}"
    TABLE[(entry, kind, type(exc).__name__)] += 1
    return
  except Exception as exc:  # pylint: disable=broad-except
    if own is not None and isinstance(exc, own):
      TABLE[(entry, kind, f"user's {type(exc).__name__} passed on")] += 1
      return
    raise
  TABLE[(entry, kind, check(out))] += 1


def _finite(*arrays):
  return all(bool(np.all(np.isfinite(np.asarray(v)))) for v in arrays)


def _corrupt(v, i, value):
  v = np.array(v, np.float32, copy=True)
  v.flat[i % v.size] = value
  return v


# --- fit_w2 --------------------------------------------------------------------------------

_BAD_ARRAYS = {
    "shape": [lambda v: v[0], lambda v: v[None], lambda v: np.float32(3.0), lambda v: v[:0],
              lambda v: v[:1], lambda v: np.zeros((len(v), 0), np.float32), lambda v: None,
              lambda v: [list(v[0]), [1.0]], lambda v: np.c_[v, v[:, :1] ** 2]],
    "dtype": [lambda v: np.full(v.shape, "a"), lambda v: np.array([{"k": 1}] * len(v)),
              lambda v: v + 1j, lambda v: v > 0, lambda v: np.round(3 * v).astype(np.int32),
              lambda v: v.astype(np.float64), lambda v: v.tolist()],
    "degenerate": [lambda v: np.ones_like(v), lambda v: v + np.float32(1e8),
                   lambda v: np.repeat(v[:1], len(v), 0)],
}


def _bad_sampler(which):
  """Samplers with one defect each (``which`` indexes them)."""
  good = lambda k, n: jax.random.normal(k, (n, 2))
  return [
      ("1-D output", lambda k, n: jnp.zeros((n,))),
      ("3-D output", lambda k, n: jnp.zeros((n, 2, 2))),
      ("NaN output", lambda k, n: jnp.full((n, 2), jnp.nan)),
      ("strings", lambda k, n: np.full((n, 2), "a")),
      ("returns None", lambda k, n: None),
      ("ignores n", lambda k, n: jax.random.normal(k, (8, 2))),
      ("NaN for large n", lambda k, n: good(k, n) * (jnp.nan if n > 8 else 1.0)),
      ("wrong signature", lambda k: good(k, 8)),
      ("other dimension", lambda k, n: jax.random.normal(k, (n, 3))),
      ("one point", lambda k, n: jnp.ones((n, 2))),
      ("raises its own error", lambda k, n: 1 / 0),
  ][which]


@settings(max_examples=70, **SETTINGS)
@given(data=st.data())
def test_fit_w2_malformed_data(data):
  arg = data.draw(st.sampled_from(["source", "target"]))
  kind = data.draw(st.sampled_from(["shape", "dtype", "nonfinite", "degenerate", "sampler"]))
  base = X if arg == "source" else Y
  own = None
  if kind == "nonfinite":
    value = _corrupt(base, data.draw(st.integers(0, base.size - 1)),
                     data.draw(st.sampled_from([np.nan, np.inf, -np.inf])))
  elif kind == "sampler":
    what, value = _bad_sampler(data.draw(st.integers(0, 10)))
    kind = f"sampler: {what}"
    own = ZeroDivisionError if what == "raises its own error" else None
  else:
    value = data.draw(st.sampled_from(_BAD_ARRAYS[kind]))(base)
  pair = {"source": X, "target": Y, arg: value}

  def check(mp):
    assert _finite(mp.w2, mp.transport(X[:4]), mp.inverse(Y[:4])), "silent NaN from fit_w2"
    return "works"

  _answer("fit_w2", kind, [f"`{arg}"], lambda: neural_ot.fit_w2(pair["source"],
                                                                 pair["target"], **W2_KW),
          check, own)


_BAD_W2_OPTIONS = [
    ("steps", v) for v in (0, -1, 1.5, True, "2", np.float64(1.0))] + [
    ("batch_size", v) for v in (0, -3, 2.5, True, 10 ** 6)] + [
    ("seed", v) for v in (-1, 2 ** 32, 1.5, "a", True)] + [
    ("max_seconds", v) for v in (0, -1.0, np.nan, np.inf, True, "1")] + [
    ("log_every", 0), ("checkpoint_every", 0), ("eval_every", -1), ("eval_seconds", -1.0),
    ("eval_seconds", np.nan), ("max_param_norm", 0.0), ("max_param_norm", np.nan),
    ("callback", 3), ("eval_fn", "f"), ("checkpoint_dir", 3), ("standardize", "no"),
    ("resume", None), ("dtype", np.int32), ("dtype", "bogus"), ("dtype", np.float16),
    ("dtype", complex), ("mesh", "gpu")] + [
    ("learning_rate", v) for v in (0.0, -1.0, np.nan, np.inf, "a", None)] + [
    ("hidden", v) for v in ((), (0,), (-3,), 8, "ab", (1.5,))] + [
    ("predictor_hidden", (0,)), ("predictor_hidden", 8), ("finetune_iters", -1),
    ("finetune_iters", 2.0), ("finetune_iters", True), ("finetune_tol", 0.0),
    ("finetune_tol", np.nan), ("b1", 1.0), ("b2", -0.1), ("warmup_steps", -1),
    ("weight_decay", np.nan), ("weight_decay", -1.0), ("final_lr_fraction", -1.0),
    ("final_lr_fraction", np.nan), ("predictor_lr_factor", 0.0),
    ("predictor_lr_factor", np.inf), ("grad_clip", 0.0), ("grad_clip", np.inf),
    ("strong_convexity", np.nan), ("strong_convexity", -1.0), ("potential", "x"),
    ("potential", 3), ("amortization", "nope"), ("finetune", "sgd"), ("activation", "bogus"),
    ("activation", 3), ("init", "random"), ("stepz", 3), ("learning_rat", 0.1)]


@settings(max_examples=60, **SETTINGS)
@given(option=st.sampled_from(_BAD_W2_OPTIONS))
def test_fit_w2_bad_options(option):
  name, value = option
  kw = {**W2_KW, name: value}
  kind = "unknown option" if name in ("stepz", "learning_rat") else f"option {name}"
  _answer("fit_w2", kind, [f"`{name}`", f"'{name}'"], lambda: neural_ot.fit_w2(X, Y, **kw),
          _usable_map)


@settings(max_examples=30, **SETTINGS)
@given(option=st.sampled_from(_BAD_W2_OPTIONS + [("finetune", "prox"), ("cost", "l1")]))
def test_fit_map_bad_options(option):
  # The cost path (an l1 cost: the orthant-wise solver) takes fit_w2's options and checks.
  name, value = option
  kw = {**W2_KW, name: value}
  kind = "unknown option" if name in ("stepz", "learning_rat", "cost") else f"option {name}"
  names = [f"`{name}`", f"'{name}'"] + (["l1 part"] if name == "finetune" else [])
  _answer("fit_map", kind, names,
          lambda: neural_ot.fit_map(X, Y, cost=neural_ot.ElasticL1(0.3), **kw), _usable_map)


def _usable_map(mp):
  """A map that came back must be usable: a NaN estimate or map is a silent failure."""
  assert _finite(mp.w2, mp.transport(X[:4]), mp.inverse(Y[:4])), "silent NaN from fit_w2"
  return "works"


def test_the_option_fuzz_fails_on_a_silent_nan():
  """The check that answers the option fuzz does fail on a map with a NaN (planted), and on
  an entry point that returns one without an error."""
  good = neural_ot.fit_w2(X, Y, **W2_KW)
  assert _usable_map(good) == "works"
  planted = type(good)(good.trainer, jax.tree.map(lambda v: v * jnp.nan, good.params), good.dim,
                       float("nan"), (), good.frame)
  with pytest.raises(AssertionError, match="silent NaN"):
    _usable_map(planted)
  with pytest.raises(AssertionError, match="silent NaN"):
    _answer("fit_w2", "planted", ["x"], lambda: planted, _usable_map)


# --- fit_meta ------------------------------------------------------------------------------

SUPPORT = grid(3)
META_KW = dict(steps=1, batch_size=3, hidden=(8,), progress=False)


def _pairs(key, k):
  return (gaussian_mixture_histograms(key, k, 3),
          gaussian_mixture_histograms(jax.random.fold_in(key, 1), k, 3))


def _sparse_pairs(key, k):  # zero bins are allowed: this one must work
  a, b = _pairs(key, k)
  a = jnp.where(a < 0.05, 0.0, a)
  return a / a.sum(-1, keepdims=True), b


_U = jnp.full((3, 9), 1.0 / 9)
_BAD_PAIRS = {
    "not callable": None, "an int": 3,
    "other size": lambda k, n: (jnp.ones((n, 4)) / 4,) * 2,
    "one array": lambda k, n: _U[:n], "three arrays": lambda k, n: (_U[:n],) * 3,
    "returns None": lambda k, n: None, "NaN": lambda k, n: (_U[:n] * jnp.nan, _U[:n]),
    "negative": lambda k, n: (-_U[:n], _U[:n]), "unnormalised": lambda k, n: (9 * _U[:n],) * 2,
    "all zero": lambda k, n: (0 * _U[:n], _U[:n]),
    "strings": lambda k, n: (np.full((n, 9), "a"),) * 2,
    "complex": lambda k, n: (_U[:n] + 1j, _U[:n]),
    "ignores k": lambda k, n: (_U[:1], _U[:1]),
    "NaN for k > 2": lambda k, n: (jnp.full((n, 9), 1.0 / 9 if n <= 2 else jnp.nan),) * 2,
    "wrong signature": lambda k: _U,
    "zero bins (valid)": _sparse_pairs,
    "raises its own error": lambda k, n: {}["missing"],
}
_BAD_META = {
    "support": [None, SUPPORT[:, 0], SUPPORT[None], SUPPORT[:0], np.zeros((9, 0)),
                SUPPORT.at[0, 0].set(jnp.nan), SUPPORT.at[1, 1].set(jnp.inf),
                np.full((9, 2), "a"), np.asarray(SUPPORT) + 1j, [[1.0, 2.0], [1.0]], grid(2),
                SUPPORT * 1e20],
    "epsilon": [0.0, -1.0, np.nan, np.inf, "a", None, True, np.array([0.1, 0.2]), 1e-30,
                1e-12, [0.1], 0.1 + 1j],
    "steps": [0, True, 1.5, -2], "batch_size": [0, 2.0, -1, False],
    "learning_rate": [0.0, np.nan, -1.0, "a", np.inf], "hidden": [(0,), (-1,), 8, "ab", (1.5,)],
    "base": ["x", None, ["zeros"]], "seed": [-1, "a", 2 ** 32], "log_every": [0],
    "checkpoint_every": [0], "max_seconds": [0, np.nan, "a"], "callback": [3],
    "checkpoint_dir": [3],
}


@settings(max_examples=70, **SETTINGS)
@given(data=st.data())
def test_fit_meta_malformed_input(data):
  arg = data.draw(st.sampled_from(["pairs"] * 8 + sorted(_BAD_META)))
  args = dict(pairs=_pairs, support=SUPPORT, epsilon=0.05, **META_KW)
  own = None
  if arg == "pairs":
    what = data.draw(st.sampled_from(sorted(_BAD_PAIRS)))
    args["pairs"], kind = _BAD_PAIRS[what], f"pairs: {what}"
    own = KeyError if what == "raises its own error" else None
  else:
    args[arg] = data.draw(st.sampled_from(_BAD_META[arg]))
    kind = arg if arg in ("support", "epsilon") else f"option {arg}"

  def check(model):
    f, g = model.predict(_U[0], _U[1])
    assert _finite(f, g), "silent NaN prediction from a model fit_meta accepted"
    return "works"

  # A support of another size is named through `pairs`, whose histograms no longer fit it.
  names = [f"`{arg}"] + (["`pairs"] if arg == "support" else [])
  _answer("fit_meta", kind, names, lambda: fit_meta(**args), check, own)


# --- load_pt -------------------------------------------------------------------------------
# Files assembled opcode by opcode (tests/_pt_pickle.py) state exactly what a torch.save'd
# state dict declares, so the tests run without torch and without the benchmark's files.


def _zip(entries, compression=zipfile.ZIP_STORED):
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", compression) as z:
    for name, raw in entries.items():
      z.writestr(name, raw)
  return buf.getvalue()


def _potential_entries(dim=2, seed=0):
  """Zip entries of a DenseICNN state dict of dimension ``dim`` (what ``convert_folder``
  checks), as ``torch.save`` lays it out: one storage per tensor."""
  rng = np.random.default_rng(seed)
  tensors, storages = [], {}
  for i, (name, shape) in enumerate(convert.dense_icnn_shapes(dim).items()):
    strides = tuple(int(np.prod(shape[j + 1:])) for j in range(len(shape)))
    tensors.append((name, _tensor(str(i), shape, strides)))
    storages[f"archive/data/{i}"] = (0.1 * rng.normal(size=shape)).astype("<f4").tobytes()
  return {"archive/data.pkl": _state_dict(tensors), **storages, "archive/version": b"3\n"}


BUILT = _zip(_potential_entries())


def _real_or_built(which):
  if which == "real 2_v1.pt":
    if not os.path.isfile(REAL_PT):
      pytest.skip(f"{REAL_PT} is not here; the built file covers the same paths")
    with open(REAL_PT, "rb") as fh:
      return fh.read()
  return BUILT


def _entries(raw):
  with zipfile.ZipFile(io.BytesIO(raw)) as z:
    return {n: z.read(n) for n in z.namelist()}


def _memo_bomb():  # LONG_BINPUT 774909555: the C unpickler would zero a memo of gigabytes
  return b"\x80\x02}r" + struct.pack("<I", 774909555) + b"."


_HOSTILE_PICKLES = {
    "os.system": b"\x80\x02" + _global("os", "system") + _str("echo pwned") + b"\x85R.",
    "builtins.eval": b"\x80\x02" + _global("builtins", "eval") + _str("1+1") + b"\x85R.",
    "numpy array pickle": pickle.dumps({"w": np.zeros(3)}, protocol=2),
    "dict of ints": pickle.dumps({"w": 3}, protocol=2),
    "list": pickle.dumps([1, 2], protocol=2),
    "set (protocol 4)": pickle.dumps({"w": {1, 2}}, protocol=4),
    "memo index 774909555": _memo_bomb(),
    "bytes8 of 2^60 bytes": b"\x80\x04\x8e" + struct.pack("<Q", 2 ** 60) + b"ab.",
    "frame of 2^40 bytes": b"\x80\x04\x95" + struct.pack("<Q", 2 ** 40) + b"}.",
    "out-of-band buffer": b"\x80\x05\x97.",
    "non-string key": b"\x80\x02}(J\x01\x00\x00\x00" + _tensor("0", (1,), (1,)) + b"u.",
    "view past its storage": _state_dict([("w", _tensor("0", (64,), (1,)))]),
    "2^62 x 2^62 elements": _state_dict([("w", _tensor("0", (2 ** 62, 2 ** 62), (1, 1)))]),
    "stride-0 view of 2^28 floats": _state_dict([("w", _tensor("0", (2 ** 28,), (0,)))]),
    "many stride-0 views": _state_dict([(f"w{i}", _tensor("0", (2 ** 18,), (0,)))
                                        for i in range(40)]),
    "negative stride": _state_dict([("w", _tensor("0", (4,), (-1,), offset=3))]),
    "storage read as two dtypes": _state_dict([
        ("a", _tensor("0", (2,), (1,))), ("b", _tensor("0", (1,), (1,), storage="DoubleStorage"))]),
}


def _mutate(draw, raw, kind):
  b = bytearray(raw)
  if kind == "truncated":
    return bytes(b[:draw(st.integers(0, len(b) - 1))])
  if kind in ("bit-flipped", "pickle bit-flipped"):
    for _ in range(draw(st.integers(1, 4))):
      b[draw(st.integers(0, len(b) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(b)
  if kind in ("bytes spliced in", "pickle bytes spliced in"):
    at = draw(st.integers(0, len(b)))
    return bytes(b[:at]) + draw(st.binary(min_size=1, max_size=24)) + bytes(b[at:])
  if kind == "pickle chunk duplicated":
    i, j = draw(st.integers(0, len(b) - 1)), draw(st.integers(0, len(b) - 1))
    return bytes(b[:i]) + bytes(b[j:j + draw(st.integers(1, 24))]) + bytes(b[i:])
  raise AssertionError(kind)


_PT_KINDS = ["truncated", "bit-flipped", "bytes spliced in", "pickle bit-flipped",
             "pickle bytes spliced in", "pickle chunk duplicated", "compressed + bit-flipped",
             "foreign or crafted pickle", "huge declared entry size", "junk", "path"]


def _pt_case(draw, tmp):
  """``(kind, path or bad path argument, max_bytes)`` for one damaged or crafted file."""
  kind = draw(st.sampled_from(_PT_KINDS))
  base = _real_or_built(draw(st.sampled_from(["built", "real 2_v1.pt"])))
  max_bytes = 1 << 22  # mutated files: whatever they declare, at most 4 MB is read or built
  if kind in ("truncated", "bit-flipped", "bytes spliced in"):
    raw = _mutate(draw, base, kind)
  elif kind.startswith("pickle"):
    ent = _entries(base)
    pkl = next(n for n in ent if n.endswith("data.pkl"))
    ent[pkl] = _mutate(draw, ent[pkl], kind)
    raw = _zip(ent)  # valid CRCs: the damage reaches the unpickler
  elif kind == "compressed + bit-flipped":
    method = draw(st.sampled_from([zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
    raw = _mutate(draw, _zip(_entries(base), method), "bit-flipped")
  elif kind == "foreign or crafted pickle":
    what = draw(st.sampled_from(sorted(_HOSTILE_PICKLES)))
    kind = f"pickle: {what}"
    raw = _zip({"archive/data.pkl": _HOSTILE_PICKLES[what], "archive/data/0": bytes(16)})
    if "stride-0" not in what:  # the default limit too (stride-0 views may build up to it)
      max_bytes = draw(st.sampled_from([1 << 22, 2 ** 31]))
  elif kind == "huge declared entry size":
    raw = bytearray(BUILT)
    starts = [i for i in range(len(raw) - 3) if raw[i:i + 4] == b"PK\x01\x02"]
    cd = draw(st.sampled_from(starts))  # one entry of the central directory
    raw[cd + 24:cd + 28] = struct.pack("<I", draw(st.sampled_from([2 ** 32 - 2, 2 ** 31, 10 ** 8])))
    raw = bytes(raw)
    max_bytes = 2 ** 31
  elif kind == "junk":
    raw = draw(st.sampled_from([b"", b"PK\x05\x06" + bytes(18), pickle.dumps({"a": 1})]) |
               st.binary(min_size=1, max_size=200))
  else:
    bad = draw(st.sampled_from([None, 3, ["a.pt"], "missing.pt", "folder.pt"]))
    if bad == "missing.pt":
      return kind, str(tmp / "missing.pt"), max_bytes
    if bad == "folder.pt":
      (tmp / "folder.pt").mkdir(exist_ok=True)
      return kind, str(tmp / "folder.pt"), max_bytes
    return kind, bad, max_bytes
  path = tmp / f"fuzz_{kind.split(':')[0].replace(' ', '_')}.pt"
  path.write_bytes(raw)
  return kind, str(path), max_bytes


@settings(max_examples=250, **SETTINGS)
@given(data=st.data())
def test_load_pt_damaged_and_crafted_files(tmp_path_factory, data):
  tmp = tmp_path_factory.getbasetemp() / "pt"
  tmp.mkdir(exist_ok=True)
  kind, path, max_bytes = _pt_case(data.draw, tmp)
  names = [os.path.basename(path)] if isinstance(path, str) else ["`path`"]

  def call():
    tracemalloc.start()
    try:
      return load_pt(path, max_bytes=max_bytes)
    finally:
      peak = tracemalloc.get_traced_memory()[1]
      tracemalloc.stop()
      # Declared sizes are checked before anything is read or allocated: a few MB at most.
      assert peak < 64 << 20, f"{kind}: {peak} bytes allocated"

  def check(sd):
    assert isinstance(sd, dict) and all(isinstance(k, str) and isinstance(v, np.ndarray)
                                        for k, v in sd.items())
    return "loads (a state dict of arrays)"

  _answer("load_pt", kind, names, call, check)


def test_load_pt_errors_are_pt_file_errors(tmp_path):
  """A refusal is a PtFileError (a ValueError naming the file), so callers can catch it."""
  path = tmp_path / "memo.pt"
  path.write_bytes(_zip({"archive/data.pkl": _memo_bomb()}))
  with pytest.raises(PtFileError, match="memo.pt.*memo index 774909555"):
    load_pt(str(path))
  path.write_bytes(_zip({"archive/data.pkl": _HOSTILE_PICKLES["many stride-0 views"],
                         "archive/data/0": bytes(16)}))
  with pytest.raises(PtFileError, match="left of `max_bytes`"):
    load_pt(str(path), max_bytes=2 ** 22)  # 40 views of 1 MB: 4 MB in all is the limit
  TABLE[("load_pt", "pickle: memo index / summed stride-0 views (direct)", "PtFileError")] += 2
  # Every crafted pickle, at a small limit and at the default one (stride-0 views: small only).
  for what, pkl in _HOSTILE_PICKLES.items():
    path = tmp_path / "crafted.pt"
    path.write_bytes(_zip({"archive/data.pkl": pkl, "archive/data/0": bytes(16)}))
    for max_bytes in (1 << 22,) if "stride-0" in what else (1 << 22, 2 ** 31):
      with pytest.raises(PtFileError, match="crafted.pt"):
        load_pt(str(path), max_bytes=max_bytes)
      TABLE[("load_pt", f"pickle: {what}", "PtFileError")] += 1


# --- convert_folder ------------------------------------------------------------------------


def _folder(tmp, name, files):
  d = tmp / name
  d.mkdir(exist_ok=True)
  for fname, raw in files.items():
    if raw is None:
      (d / fname).mkdir(exist_ok=True)
    else:
      (d / fname).write_bytes(raw)
  return str(d)


def _nan_potential():
  ent = _potential_entries()
  ent["archive/data/0"] = np.full(len(ent["archive/data/0"]) // 4, np.nan, "<f4").tobytes()
  return _zip(ent)


_CONVERT_SOURCES = {
    "empty folder": {}, "junk 2_v1.pt": {"2_v1.pt": b"junk"},
    "2_v1.pt of dimension 2 named 4_v1.pt": {"4_v1.pt": BUILT},
    "NaN potential": {"2_v1.pt": _nan_potential()},
    "folder named x.pt": {"x.pt": None},
    "truncated 2_v2.pt": {"2_v1.pt": BUILT, "2_v2.pt": BUILT[:len(BUILT) // 2]},
    "memo bomb in 2_v1.pt": {"2_v1.pt": _zip({"archive/data.pkl": _memo_bomb()})},
}


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_convert_folder_hostile_folders_and_arguments(tmp_path_factory, data):
  tmp = tmp_path_factory.mktemp("convert")
  good = _folder(tmp, "good", {"2_v1.pt": BUILT, "2_v2.pt": _zip(_potential_entries(seed=1))})
  args = dict(src=good, dst=str(tmp / "out"), n_mc=16)
  kind = data.draw(st.sampled_from(["src folder", "src", "dst", "n_mc", "seed", "progress",
                                    "works"]))
  arg = kind
  if kind == "src folder":
    what = data.draw(st.sampled_from(sorted(_CONVERT_SOURCES)))
    args["src"], kind, arg = _folder(tmp, "src", _CONVERT_SOURCES[what]), f"src: {what}", "src"
  elif kind == "src":
    args["src"] = data.draw(st.sampled_from([None, 3, str(tmp / "missing"),
                                             os.path.join(good, "2_v1.pt")]))
  elif kind == "dst":
    args["dst"] = data.draw(st.sampled_from([None, 3, os.path.join(good, "2_v1.pt")]))
  elif kind == "n_mc":
    args["n_mc"] = data.draw(st.sampled_from([0, 1, -5, "a", 2.5, True]))
  elif kind == "seed":
    args["seed"] = data.draw(st.sampled_from([-1, "a", 1.5]))
  elif kind == "progress":
    args["progress"] = data.draw(st.sampled_from([3, "loud"]))
  else:
    args["n_mc"] = data.draw(st.sampled_from([2, 3, 64]))
  names = [f"`{arg}`"]
  if isinstance(args["src"], str):  # a bad folder or file is named by its path
    names.append(args["src"])
    if os.path.isdir(args["src"]):
      names += [os.path.join(args["src"], f) for f in os.listdir(args["src"])]

  def check(written):
    assert written[-1].endswith("manifest.json")
    for path in written[:-1]:
      with np.load(path) as f:
        for k in f.files:
          assert f[k].dtype.kind not in "fc" or _finite(f[k]), f"non-finite {k} in {path}"
    return "works (all finite)"

  _answer("convert_folder", kind, names, lambda: convert.convert_folder(**args), check)


# --- the command line ----------------------------------------------------------------------


def _run_cli(argv):
  """``(exit code, stderr)`` of ``cli.main(argv)`` in this process."""
  err, out = io.StringIO(), io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
    try:
      rc = cli.main(argv)
    except SystemExit as exc:  # argparse-style usage errors
      rc = exc.code
  return rc, err.getvalue()


def _one_line(entry, kind, rc, err, names):
  lines = [l for l in err.splitlines() if l.strip()]
  assert rc not in (0, None), f"{entry}/{kind}: exit code {rc}, stderr {err!r}"
  assert len(lines) == 1 and "Traceback" not in err, f"{entry}/{kind}: {err!r}"
  assert any(n in lines[0] for n in names), f"{entry}/{kind}: {lines[0]!r} names none of {names}"
  TABLE[(entry, kind, f"exit {rc}, one line")] += 1


_BAD_VALUES = {
    "fit": [("--steps", ["0", "-1", "abc", "1e3", "9" * 20, ""]),
            ("--batch-size", ["0", "x", str(2 ** 40)]),
            ("--lr", ["0", "-1", "nan", "inf", "1e300", "1e-300", "abc"]),
            ("--finetune-iters", ["-1", str(2 ** 40)]), ("--seed", ["-1", str(2 ** 32), "x"]),
            ("--minutes", ["0", "nan", "-2"]), ("--potential", ["foo"]),
            ("--amortization", ["foo"])],
    "sinkhorn": [("--n", ["1", "0", str(10 ** 7), "x"]),
                 ("--epsilon", ["0", "-0.1", "nan", "1e-300", "1e300", "x"]),
                 ("--tol", ["0", "inf", "1e300"]), ("--max-iters", ["0", str(2 ** 40)]),
                 ("--seed", ["-5", str(2 ** 70)]), ("--source", ["nope"])],
    "bench w2": [("--dim", ["0", "x"]), ("--steps", ["0"]), ("--eval-every", ["0"]),
                 ("--seconds", ["0", "nan"]), ("--method", ["foo"])],
    "bench convert": [("--n-mc", ["1", "255", str(2 ** 23), "x"]), ("--seed", ["-1"])],
    "demo": [("--n", ["1", str(10 ** 9)]), ("--source", ["nope"]), ("--steps", ["0"])],
}


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("cli")
  np.save(tmp / "ok.npy", RNG.normal(size=(40, 2)))
  (tmp / "afile").write_text("x")
  return tmp


def _argv(command, tmp, extra):
  ok = str(tmp / "ok.npy")
  out = ["--out", str(tmp / "out")]
  return {"fit": ["fit", ok, ok, *out, "--quiet"], "sinkhorn": ["sinkhorn", *out],
          "bench w2": ["bench", "w2", "--dim", "2", "--data-dir", str(tmp / "none"), *out],
          "bench convert": ["bench", "convert", str(tmp / "none"), str(tmp / "conv")],
          "demo": ["demo", *out]}[command] + extra


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_cli_bad_option_values(cli_files, data):
  command = data.draw(st.sampled_from(sorted(_BAD_VALUES)))
  option, values = data.draw(st.sampled_from(_BAD_VALUES[command]))
  value = data.draw(st.sampled_from(values))
  rc, err = _run_cli(_argv(command, cli_files, [option, value]))
  _one_line(f"cli {command}", f"bad {option}", rc, err, [option])


_BAD_ARGV = [
    ([], ["command"]), (["bogus"], ["bogus"]), (["--bogus"], ["command", "--bogus"]),
    (["fit"], ["source"]), (["fit", "{ok}"], ["target"]), (["fit", "{ok}", "{ok}"], ["--out"]),
    (["fit", "{ok}", "{ok}", "--out", "{tmp}/o", "--bogus"], ["--bogus"]),
    (["fit", "{tmp}/missing.npy", "{ok}", "--out", "{tmp}/o"], ["missing.npy"]),
    (["fit", "{tmp}", "{ok}", "--out", "{tmp}/o"], ["source"]),
    (["sinkhorn", "--epsilon"], ["--epsilon"]), (["sinkhorn", "{ok}", "--out", "{tmp}/o"],
                                                 ["SOURCE and TARGET"]),
    (["sinkhorn", "{tmp}/missing.csv", "{ok}"], ["missing.csv"]),
    (["sinkhorn", "--relative-epsilon", "--absolute-epsilon"], ["--absolute-epsilon"]),
    (["bench"], ["suite"]), (["bench", "w2"], ["--dim"]), (["bench", "convert", "x"], ["DST"]),
    (["bench", "convert", "{tmp}/missing", "{tmp}/c"], ["missing"]),
    (["bench", "convert", "{tmp}", "{tmp}/afile"], ["afile", "{tmp}"]),
    (["bench", "w2", "--dim", "2", "--data-dir", "{tmp}/afile"], ["afile"]),
    (["fit", "{ok}", "{ok}", "--out", "{tmp}/afile", "--quiet"], ["--out"]),
    (["fit", "{ok}", "{ok}", "--out", "{tmp}/afile/sub", "--quiet"], ["--out"]),
    (["fit", "{ok}", "{ok}", "--out", "", "--quiet"], ["--out"]),
    (["sinkhorn", "{ok}", "{ok}", "--out", "{tmp}/afile"], ["--out"]),
]


@settings(max_examples=30, **SETTINGS)
@given(case=st.sampled_from(_BAD_ARGV))
def test_cli_unknown_missing_and_unusable_arguments(cli_files, case):
  argv, names = case
  fill = lambda s: s.replace("{ok}", str(cli_files / "ok.npy")).replace("{tmp}", str(cli_files))
  rc, err = _run_cli([fill(a) for a in argv])
  _one_line("cli", "unknown, missing or unusable argument", rc, err, [fill(n) for n in names])


def _npy_header(shape, descr="<f8"):
  h = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
  h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
  return b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h


def _npy(arr):
  buf = io.BytesIO()
  np.save(buf, arr)
  return buf.getvalue()


_HOSTILE_FILES = {
    "npy declaring 10^12 rows": (".npy", _npy_header((10 ** 12, 2)) + bytes(64)),
    "npy declaring 10^8 rows": (".npy", _npy_header((10 ** 8, 2)) + bytes(64)),
    "npy declaring -5 rows": (".npy", _npy_header((-5, 2)) + bytes(64)),
    "npy of objects": (".npy", _npy_header((3, 2), "|O") + bytes(64)),
    "npy header that is code": (".npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': __import__('os')}\n"),
    "npy without header": (".npy", b"not an array"),
    "npy complex": (".npy", _npy(RNG.normal(size=(40, 2)) + 1j)),
    "npy strings": (".npy", _npy(np.full((40, 2), "a"))),
    "npy 3-D": (".npy", _npy(np.zeros((40, 2, 2)))),
    "npy with NaN": (".npy", _npy(np.r_[RNG.normal(size=(39, 2)), [[np.nan, 0.0]]])),
    "npy of 1 point": (".npy", _npy(np.ones((1, 2)))),
    "npy of dimension 3": (".npy", _npy(RNG.normal(size=(40, 3)))),
    "npy of dimension 0": (".npy", _npy(np.zeros((40, 0)))),
    "csv binary": (".csv", bytes(range(256)) * 4),
    "csv empty": (".csv", b""), "csv header only": (".csv", b"x,y\n"),
    "csv ragged": (".csv", b"1,2\n3\n" * 10), "csv inf": (".csv", b"1,2\n" * 10 + b"inf,1\n"),
    "csv 1e400": (".csv", b"1e400,2\n" * 12), "csv words": (".csv", b"hello,world\n" * 12),
    "unknown extension": (".dat", b"1,2\n" * 12),
}


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_cli_hostile_input_files(cli_files, data):
  command = data.draw(st.sampled_from(["fit", "sinkhorn"]))
  if data.draw(st.integers(0, 3)) == 0:  # random bytes as a point file
    ext = data.draw(st.sampled_from([".npy", ".csv", ".txt"]))
    what, raw = f"random bytes{ext}", data.draw(st.binary(max_size=300))
    if ext == ".npy" and data.draw(st.booleans()):
      raw = b"\x93NUMPY" + raw  # past the magic: the header parser meets the junk
  else:
    what = data.draw(st.sampled_from(sorted(_HOSTILE_FILES)))
    ext, raw = _HOSTILE_FILES[what]
  path = cli_files / f"hostile{ext}"
  path.write_bytes(raw)
  ok = str(cli_files / "ok.npy")
  argv = [command, str(path), ok, "--out", str(cli_files / "out")] + (
      ["--steps", "1", "--quiet"] if command == "fit" else ["--max-iters", "50"])
  rc, err = _run_cli(argv)
  if command == "sinkhorn" and (rc == 0 or (rc == 1 and "neural-ot sinkhorn: " in err)):
    # A readable file (a few rows of random csv): solved, or "not converged" / "diverged".
    TABLE[(f"cli {command}", f"file: {what.split('.')[0]}", f"works (exit {rc})")] += 1
    return
  _one_line(f"cli {command}", f"file: {what.split('.')[0]}", rc, err, [path.name])
