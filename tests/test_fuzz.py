"""Property-based fuzzing of the public entry points with malformed input.

Every call must end in a ``ValueError``/``TypeError`` whose message names the argument that
was broken, or work: finite results, or (where only the device can see the problem, under
``jit``) NaN results flagged by ``diverged``. Never a hang (iteration caps are small), a
crash with another exception, or a NaN nobody flagged.

How each kind of input was answered is counted in ``TABLE``; set ``NEURAL_OT_FUZZ_TABLE``
to a file name to have the table written there at the end of the module.
"""

import collections
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import neural_ot

TABLE = collections.Counter()
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

RNG = np.random.default_rng(0)
X = RNG.normal(size=(5, 2)).astype(np.float32)
Y = (RNG.normal(size=(4, 2)) + 1.0).astype(np.float32)
OPTS = dict(max_iters=200)  # a loop that does not stop is still bounded


@pytest.fixture(scope="module", autouse=True)
def _write_table():
  yield
  path = os.environ.get("NEURAL_OT_FUZZ_TABLE")
  if path:
    with open(path, "w") as fh:
      for (entry, kind, answer), count in sorted(TABLE.items()):
        fh.write(f"{entry}\t{kind}\t{answer}\t{count}\n")


def _answer(entry, kind, names, call, check):
  """Run ``call``; an error must be a ValueError/TypeError naming one of ``names``; a result
  goes to ``check``, which returns how it was answered (and asserts it is not a silent NaN)."""
  try:
    out = call()
  except (ValueError, TypeError) as exc:
    msg = str(exc)
    assert any(n in msg for n in names), f"{entry}/{kind}: error does not name {names}: {msg}"
    TABLE[(entry, kind, type(exc).__name__)] += 1
    return
  TABLE[(entry, kind, check(out))] += 1


def _finite(*arrays):
  return all(bool(jnp.all(jnp.isfinite(jnp.asarray(v)))) for v in arrays)


def _check_solve(out):
  diverged = np.asarray(out.diverged)
  cost = np.asarray(out.reg_ot_cost)
  assert np.all(np.isfinite(cost) | diverged), "silent NaN: non-finite cost without diverged"
  assert np.all(np.isnan(cost[diverged])), "diverged must come with a NaN cost"
  assert _finite(out.f[~diverged] if diverged.ndim else (out.f if not diverged else 0.0))
  return "works" if not diverged.any() else ("diverged flag" if diverged.all() else
                                             "works + diverged flag per problem")


# --- malformed values ----------------------------------------------------------------------


def _corrupt(draw, v, kind):
  """``v`` with one entry replaced by NaN / inf / -inf (kind 'nonfinite')."""
  v = np.array(v, np.float32, copy=True)
  i = draw(st.integers(0, v.size - 1))
  v.flat[i] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
  return v


def _weights(draw, n):
  """A weight vector with a defect: zeros, all zero, negative, a mass gap, or fine."""
  w = np.full(n, 1.0 / n)
  defect = draw(st.sampled_from(["some zeros", "all zero", "negative", "small gap", "large gap"]))
  if defect == "some zeros":
    k = draw(st.integers(1, n - 1))
    w[:k] = 0.0
    w = w / w.sum()
  elif defect == "all zero":
    w[:] = 0.0
  elif defect == "negative":
    i = draw(st.integers(0, n - 1))
    w[i] = -draw(st.floats(1e-6, 1.0))
  elif defect == "small gap":  # within the 1e-4 the solver normalises
    w[0] += draw(st.floats(-9e-5, 9e-5))
  else:
    w[0] += draw(st.sampled_from([-1, 1])) * draw(st.floats(2e-4, 10.0))
  return w, defect


_BAD_DTYPES = {
    "strings": lambda v: np.full(np.shape(v), "a"),
    "objects": lambda v: np.array([{"k": 1}] * len(v), dtype=object),
    "complex": lambda v: np.asarray(v) + 1j,
    "bool": lambda v: np.asarray(v) > 0,
    "int": lambda v: np.round(np.asarray(v) * 3).astype(np.int32),
    "float64": lambda v: np.asarray(v, np.float64),
    "nested list": lambda v: np.asarray(v).tolist(),
}

_BAD_EPS = [0.0, -0.1, np.nan, np.inf, 1e-30, 1e30, np.array([0.1, 0.2]), "0.1", True, None,
            0.1 + 1j, [0.1]]


@st.composite
def _sinkhorn_case(draw):
  """``(kind, broken argument, kwargs)`` for sinkhorn / sinkhorn_divergence."""
  args = dict(x=X, y=Y, a=None, b=None, epsilon=0.1)
  kind = draw(st.sampled_from(["shape", "dtype", "nonfinite", "weights", "epsilon", "init"]))
  if kind == "shape":
    arg = draw(st.sampled_from(["x", "y", "a", "b"]))
    base = {"x": X, "y": Y, "a": np.full(5, 0.2), "b": np.full(4, 0.25)}[arg]
    args[arg] = draw(st.sampled_from([
        base[0], base[None], np.float32(3.0), base[:0], base[..., :1] if base.ndim == 2 else
        base[:-1], [list(base[0]), [1.0]] if base.ndim == 2 else [[0.5], [0.5, 0.0]]]))
    if arg in ("x", "y") and draw(st.booleans()):
      args[arg] = np.zeros((np.shape(base)[0], 0), np.float32)  # d = 0
  elif kind == "dtype":
    arg = draw(st.sampled_from(["x", "y", "a", "b"]))
    base = {"x": X, "y": Y, "a": np.full(5, 0.2), "b": np.full(4, 0.25)}[arg]
    args[arg] = _BAD_DTYPES[draw(st.sampled_from(sorted(_BAD_DTYPES)))](base)
  elif kind == "nonfinite":
    arg = draw(st.sampled_from(["x", "y", "a", "b"]))
    base = {"x": X, "y": Y, "a": np.full(5, 0.2), "b": np.full(4, 0.25)}[arg]
    args[arg] = _corrupt(draw, base, kind)
  elif kind == "weights":
    arg = draw(st.sampled_from(["a", "b"]))
    args[arg], kind = _weights(draw, 5 if arg == "a" else 4)
    kind = f"weights: {kind}"
  elif kind == "epsilon":
    arg = "epsilon"
    args["epsilon"] = draw(st.sampled_from(_BAD_EPS))
  else:
    arg = "init"
    args["init"] = draw(st.sampled_from([
        (np.zeros(3), None), (None, np.zeros(7)), (np.full(5, np.nan), None),
        (None, np.array([0, np.inf, 0, 0])), "zeros", (None, None, None), (None, None),
        (np.zeros(5), np.zeros(4))]))
  return kind, arg, args


@settings(max_examples=120, **SETTINGS)
@given(case=_sinkhorn_case())
def test_sinkhorn_malformed_input(case):
  kind, arg, args = case
  names = [f"`{arg}`"] + (["`init"] if arg == "init" else [])
  _answer("sinkhorn", kind, names,
          lambda: neural_ot.sinkhorn(args.pop("x"), args.pop("y"), args.pop("a"), args.pop("b"),
                                     **args, **OPTS), _check_solve)


@settings(max_examples=50, **SETTINGS)
@given(case=_sinkhorn_case())
def test_sinkhorn_divergence_malformed_input(case):
  kind, arg, args = case
  if arg == "init":
    kind, arg, args["init"] = "options", "epsilson", None  # not an option here
    args["epsilson"] = args.pop("init")

  def check(res):
    div, outs = res
    flagged = any(bool(o.diverged) for o in outs)
    assert bool(jnp.isfinite(div)) or flagged, "silent NaN divergence"
    return "works" if not flagged else "diverged flag"

  _answer("sinkhorn_divergence", kind, [f"`{arg}`", f"'{arg}'"],
          lambda: neural_ot.sinkhorn_divergence(args.pop("x"), args.pop("y"), args.pop("a"),
                                                args.pop("b"), return_outputs=True, **args,
                                                **OPTS), check)


_TRACED = jax.jit(lambda x, y, a, b, eps: neural_ot.sinkhorn(x, y, a, b, epsilon=eps, **OPTS))


@settings(max_examples=30, **SETTINGS)
@given(data=st.data())
def test_sinkhorn_under_jit_flags_what_only_the_device_sees(data):
  """Traced inputs skip the host checks: the device must stop and flag them."""
  x, y, a, b, eps = X.copy(), Y.copy(), np.full(5, 0.2, np.float32), np.full(4, 0.25,
                                                                               np.float32), 0.1
  what = data.draw(st.sampled_from(["NaN/inf point", "negative weight", "NaN weight",
                                    "zero mass", "epsilon <= 0", "mass gap 5e-5", "zero weights"]))
  if what == "NaN/inf point":
    x = _corrupt(data.draw, x, what)
  elif what == "negative weight":
    a[data.draw(st.integers(0, 4))] = -0.1
  elif what == "NaN weight":
    b[data.draw(st.integers(0, 3))] = np.nan
  elif what == "zero mass":
    a[:] = 0.0
  elif what == "epsilon <= 0":
    eps = data.draw(st.sampled_from([0.0, -0.1]))
  elif what == "mass gap 5e-5":
    a[0] += 5e-5
  else:
    a[:2] = 0.0
    a /= a.sum()
  out = _TRACED(x, y, a, b, eps)
  answer = _check_solve(out)
  if what in ("mass gap 5e-5", "zero weights"):
    assert answer == "works" and bool(out.converged)
  else:
    assert answer == "diverged flag" and int(out.n_iters) == 0
  TABLE[("sinkhorn under jit", what, answer)] += 1


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_sinkhorn_batch_malformed_input(data):
  xs, ys = np.stack([X, X + 1.0, X]), np.stack([Y, Y, Y - 1.0])
  args = dict(x=xs, y=ys, a=None, b=None, epsilon=0.1)
  kind = data.draw(st.sampled_from(["shape", "dtype", "nonfinite", "weights", "epsilon",
                                    "traced"]))
  arg = data.draw(st.sampled_from(["x", "y", "a", "b"]))
  full = {"x": xs, "y": ys, "a": np.full((3, 5), 0.2), "b": np.full((3, 4), 0.25)}
  if kind == "shape":
    args[arg] = data.draw(st.sampled_from([full[arg][0], full[arg][:2], full[arg][:0],
                                           full[arg][None], full[arg][..., :-1]]))
  elif kind == "dtype":
    args[arg] = _BAD_DTYPES[data.draw(st.sampled_from(["strings", "complex", "int"]))](full[arg])
  elif kind == "nonfinite":
    args[arg] = _corrupt(data.draw, full[arg], kind)
  elif kind == "weights":
    arg = "a"
    w, defect = _weights(data.draw, 5)
    args["a"] = np.stack([np.full(5, 0.2), w, np.full(5, 0.2)])
    kind = f"weights: {defect}"
  elif kind == "epsilon":
    arg = "epsilon"
    args["epsilon"] = data.draw(st.sampled_from(
        [np.array([0.1, 0.0, 0.1]), np.array([0.1, 0.2]), np.array([0.1, np.nan, 0.1]), -1.0,
         "a", None]))
  else:  # one bad problem, traced: flagged per problem
    x = xs.copy()
    x[1, 0, 0] = np.nan
    out = jax.jit(lambda x: neural_ot.sinkhorn_batch(x, ys, epsilon=0.1, **OPTS))(x)
    answer = _check_solve(out)
    assert list(np.asarray(out.diverged)) == [False, True, False]
    TABLE[("sinkhorn_batch", "traced: NaN in one problem", answer)] += 1
    return
  _answer("sinkhorn_batch", kind, [f"`{arg}`"],
          lambda: neural_ot.sinkhorn_batch(args.pop("x"), args.pop("y"), args.pop("a"),
                                           args.pop("b"), **args, **OPTS), _check_solve)


# --- maps, files, Meta OT ----------------------------------------------------------------


@pytest.fixture(scope="module")
def w2map():
  from neural_ot.w2 import W2Map
  from neural_ot.w2.trainer import W2Trainer
  trainer = W2Trainer(hidden=(8, 8), predictor_hidden=(8, 8))
  state = trainer.init_state(jax.random.PRNGKey(0), 2, 10)
  return W2Map(trainer, state.params, 2)


_MAP_INPUTS = {
    "shape": [np.zeros((3, 3)), np.zeros((1, 3, 2)), np.float32(1.0), [[1.0, 2.0], [1.0]],
              np.zeros((3, 0)), None],
    "dtype": ["strings", "objects", "complex", "bool", "int", "float64", "nested list"],
    "nonfinite": [np.nan, np.inf, -np.inf],
    "edge": [np.zeros((0, 2)), np.zeros(2), np.full((4, 2), 1e30), np.full((4, 2), -1e-30)],
}


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_w2map_transport_and_inverse_malformed_input(w2map, data):
  method = data.draw(st.sampled_from(["transport", "inverse"]))
  arg = "x" if method == "transport" else "y"
  kind = data.draw(st.sampled_from(sorted(_MAP_INPUTS)))
  base = np.asarray(RNG.normal(size=(4, 2)), np.float32)
  choice = data.draw(st.sampled_from(_MAP_INPUTS[kind]))
  if kind == "dtype":
    value = _BAD_DTYPES[choice](base)
  elif kind == "nonfinite":
    value = base.copy()
    value.flat[data.draw(st.integers(0, value.size - 1))] = choice
  else:
    value = choice

  def check(out):
    assert _finite(out), "silent NaN from a map"
    return "works"

  _answer(f"W2Map.{method}", kind, [f"`{arg}`"], lambda: getattr(w2map, method)(value), check)


@pytest.fixture(scope="module")
def map_file(w2map, tmp_path_factory):
  path = tmp_path_factory.mktemp("map") / "map.msgpack"
  w2map.save(str(path))
  return path.read_bytes()


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_load_map_damaged_files(map_file, tmp_path_factory, data):
  raw = bytearray(map_file)
  kind = data.draw(st.sampled_from(["truncated", "bit-flipped", "empty", "junk bytes",
                                    "appended junk"]))
  if kind == "truncated":
    raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
  elif kind == "bit-flipped":
    for _ in range(data.draw(st.integers(1, 4))):
      raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
  elif kind == "empty":
    raw = bytearray()
  elif kind == "junk bytes":
    raw = bytearray(data.draw(st.binary(min_size=1, max_size=300)))
  else:
    raw += data.draw(st.binary(min_size=1, max_size=50))
  path = tmp_path_factory.mktemp("bad") / "map.msgpack"
  path.write_bytes(bytes(raw))
  probe = np.asarray(RNG.normal(size=(3, 2)), np.float32)

  def check(mp):
    assert _finite(mp.transport(probe)), "a damaged file loaded into a map that returns NaN"
    return "loads, finite map"

  _answer("load_map", kind, [repr(str(path))], lambda: neural_ot.load_map(str(path)), check)


@pytest.fixture(scope="module")
def meta_model():
  from neural_ot.meta import MetaOT, grid
  support = grid(3)
  net = MetaOT(support, 0.05, (8,), None).net
  params = net.init(jax.random.PRNGKey(0), jnp.ones(9) / 9, jnp.ones(9) / 9)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  return MetaOT(support, 0.05, (8,), params)


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_meta_predict_malformed_input(meta_model, data):
  u = np.full(9, 1.0 / 9)
  arg = data.draw(st.sampled_from(["a", "b"]))
  kind = data.draw(st.sampled_from(["shape", "dtype", "nonfinite", "weights", "batch"]))
  if kind == "shape":
    value = data.draw(st.sampled_from([u[:4], u[None, None], np.zeros((0, 9)), 0.5, None,
                                       [[0.5, 0.5], [1.0]]]))
  elif kind == "dtype":
    value = _BAD_DTYPES[data.draw(st.sampled_from(sorted(_BAD_DTYPES)))](u)
  elif kind == "nonfinite":
    value = _corrupt(data.draw, u, kind)
  elif kind == "weights":
    value, defect = _weights(data.draw, 9)
    kind = f"weights: {defect}"
  else:
    value = np.stack([u, u])  # a batch of 2 against a single histogram
  pair = {"a": value, "b": u} if arg == "a" else {"a": u, "b": value}

  def check(out):
    assert _finite(*out), "silent NaN prediction"
    return "works"

  _answer("MetaOT.predict", kind, [f"`{arg}`", "`a` and `b`"],
          lambda: meta_model.predict(pair["a"], pair["b"]), check)
