"""What the commands of ``neural-ot`` share: errors, argument types, reading points, writing
JSON and printing the summary."""

from __future__ import annotations

import argparse
import json
import math
import os
import warnings

import numpy as np

from neural_ot import data

_MIN_POINTS = 10  # below this a map cannot be fitted (nor held-out samples scored)


class UsageError(SystemExit):
  """An error in the command line itself (exit code 2, like argparse's); ``str`` is the line
  printed on stderr."""

  def __init__(self, message: str):
    super().__init__(2)
    self.message = message

  def __str__(self):
    return self.message


class UserError(Exception):
  """A mistake found while running a command: one line on stderr, exit code 2."""


def one_line(text) -> str:
  return " ".join(str(text).split())


# --- argument types ----------------------------------------------------------------------


def int_at_least(lo: int, hi: int = 2 ** 31 - 1):
  # The upper bound keeps values inside what a jitted int32 (or an allocation) can take.
  def parse(text):
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < lo:
      raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
    if value > hi:
      raise argparse.ArgumentTypeError(f"must be <= {hi}, got {value}")
    return value
  parse.__name__ = f"int >= {lo}"
  return parse


seed = int_at_least(0, 2 ** 32 - 1)  # PRNGKey(2**32) is PRNGKey(0)


def positive_float(text):
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if not (math.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
  return value


def positive_float32(text):
  """A number > 0 that float32 holds (epsilon, tolerance, learning rate are float32 on the
  device: 1e-300 would become 0 and 1e300 inf)."""
  value = positive_float(text)
  lo, hi = 1.1754943508222875e-38, 3.4028234663852886e38  # float32 tiny and max
  if not lo <= value <= hi:
    raise argparse.ArgumentTypeError(f"must be between {lo:.3g} and {hi:.3g} (float32), got "
                                     f"{text}")
  return value


def input_file(text):
  if not os.path.isfile(text):
    raise argparse.ArgumentTypeError(f"no such file: {text!r}")
  return text


def file_or_measure(text):
  if text in data.SAMPLERS or os.path.isfile(text):
    return text
  raise argparse.ArgumentTypeError(
      f"no such file: {text!r} (nor a built-in measure: {', '.join(sorted(data.SAMPLERS))})")


# --- input and output --------------------------------------------------------------------


def make_out(path: str, flag: str = "--out") -> None:
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as exc:
    raise UserError(f"{flag} {path!r}: cannot create the output folder "
                    f"({exc.strerror or exc})") from None


def load_points(path: str, min_points: int = _MIN_POINTS):
  """``(n, d)`` float32 points from a ``.npy`` or ``.csv``/``.txt`` file, checked."""
  name = os.path.basename(path)
  if path.endswith(".npy"):
    with open(path, "rb") as fh:
      if fh.read(6) != b"\x93NUMPY":
        raise UserError(f"{path}: not a .npy file (no NPY header)")
    try:
      arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # pylint: disable=broad-except
      # A hostile header escapes np.load as ValueError, but also as TokenError, MemoryError
      # (a declared shape of terabytes), ...: all of them mean the file is unusable.
      raise UserError(f"{path}: not a readable .npy array ({type(exc).__name__}: "
                      f"{one_line(exc)})") from None
  elif path.endswith((".csv", ".txt")):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # "input contained no data": reported below
      try:
        arr = np.loadtxt(path, delimiter=",", ndmin=2)
      except ValueError:
        try:  # a header line
          arr = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1)
        except ValueError as exc:
          raise UserError(f"{path}: not comma-separated numbers ({one_line(exc)})") from None
  else:
    raise UserError(f"{path}: expected a .npy, .csv or .txt file")
  if arr.dtype.kind not in "biuf":
    raise UserError(f"{path}: expected numbers, the array holds {arr.dtype}")
  if arr.ndim == 1:
    arr = arr[:, None]
  if arr.ndim != 2:
    raise UserError(f"{path}: expected rows of points (n, d), got an array of shape {arr.shape}")
  if len(arr) < min_points or arr.shape[1] == 0:
    raise UserError(f"{name} has {len(arr)} points of dimension {arr.shape[1]}; at least "
                    f"{min_points} points are needed")
  bad = ~np.isfinite(arr).all(axis=1)
  if bad.any():
    raise UserError(f"{path}: row {int(np.argmax(bad))} (of {len(arr)}) holds NaN or inf; "
                    f"{int(bad.sum())} rows do")
  return arr.astype("float32")


def _json_safe(obj):
  """Plain JSON values: NaN and inf become ``null``, arrays lists, numpy scalars numbers."""
  if isinstance(obj, dict):
    return {str(k): _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_safe(v) for v in obj]
  if isinstance(obj, (str, bool)) or obj is None:
    return obj
  if isinstance(obj, int):
    return obj
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if hasattr(obj, "__array__"):
    arr = np.asarray(obj)
    return _json_safe(arr.item() if arr.ndim == 0 else arr.tolist())
  if hasattr(obj, "item"):
    return _json_safe(obj.item())
  return str(obj)


def write_json(path: str, obj) -> None:
  """Write ``obj`` as strict JSON (NaN and inf as ``null``, arrays as lists)."""
  with open(path, "w") as fh:
    json.dump(_json_safe(obj), fh, indent=2, allow_nan=False)


def _fmt(v) -> str:
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def report(summary: dict, files: list, meanings: dict | None = None) -> None:
  """Print the summary as ``name: value  - what it is and what good looks like``, then every
  file written as ``path (what it is)``."""
  meanings = meanings or {}
  width = max((len(k) for k in summary), default=5)
  for k, v in summary.items():
    line = f"{k:>{width}}: {_fmt(v)}"
    print(f"{line:<{width + 12}}  - {meanings[k]}" if k in meanings else line)
  for i, (path, what) in enumerate(files):
    print(f"{'wrote' if i == 0 else '':>{width}}: {path}  ({what})")
