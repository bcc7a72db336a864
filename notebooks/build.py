"""Regenerate the tutorials: write every notebook from its builder, then execute it.

    python notebooks/build.py            # all notebooks, small sizes (NEURAL_OT_SMALL=1)
    python notebooks/build.py 02 04      # only the notebooks whose names start with these
    python notebooks/build.py --full     # the full sizes (minutes per notebook)
    python notebooks/build.py --no-run   # only write the code and text cells

Each ``_build_NN.py`` holds the cells of one notebook as Python strings (readable diffs);
this script runs it, then executes the notebook with nbclient in a temporary folder and writes
it back with its outputs (printed lines and the figures, as PNG), so that a reader on a code
host sees the pictures without running anything. ``tests/test_notebooks.py`` checks that the
committed notebooks' cells equal what the builders produce.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import runpy
import sys
import tempfile
import time
import types

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def builders() -> list[pathlib.Path]:
  """The builder scripts, in notebook order."""
  return sorted(HERE.glob("_build_*.py"))


def builder_cells(builder: pathlib.Path) -> tuple[list[tuple[str, str]], pathlib.Path]:
  """Run one builder without writing anything; return its ``(kind, source)`` cells and the
  notebook path it writes."""
  captured = {}

  def write(cells, path):
    captured["cells"] = [(kind, src) for kind, src in cells]
    captured["path"] = ROOT / path

  fake = types.ModuleType("_nbwrite")
  fake.write = write
  saved = sys.modules.get("_nbwrite")
  sys.modules["_nbwrite"] = fake
  try:
    runpy.run_path(str(builder), run_name="__builder__")
  finally:
    if saved is None:
      sys.modules.pop("_nbwrite", None)
    else:
      sys.modules["_nbwrite"] = saved
  if "cells" not in captured:
    raise RuntimeError(f"{builder.name} did not call write(cells, path)")
  return captured["cells"], captured["path"]


def write_notebook(cells, path: pathlib.Path) -> None:
  sys.path.insert(0, str(HERE))
  try:
    from _nbwrite import write  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(str(HERE))
  write(cells, str(path))


def execute(path: pathlib.Path, small: bool, timeout: int = 1800) -> float:
  """Execute a notebook in a temporary folder and write it back with its outputs."""
  import nbformat  # pylint: disable=import-outside-toplevel
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel

  nb = nbformat.read(path, as_version=4)
  env = dict(os.environ)
  env.pop("MPLBACKEND", None)  # the kernel's inline backend embeds the figures
  env["NEURAL_OT_SMALL"] = "1" if small else "0"
  saved = dict(os.environ)
  os.environ.clear()
  os.environ.update(env)  # the kernel inherits this process's environment
  t0 = time.perf_counter()
  try:
    with tempfile.TemporaryDirectory() as tmp:
      NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                     resources={"metadata": {"path": tmp}}).execute()
  finally:
    os.environ.clear()
    os.environ.update(saved)
  nb.metadata.pop("widgets", None)
  nbformat.write(nb, path)
  return time.perf_counter() - t0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("only", nargs="*", help="notebook name prefixes, e.g. 02 (default: all)")
  p.add_argument("--full", action="store_true", help="full sizes instead of NEURAL_OT_SMALL=1")
  p.add_argument("--no-run", action="store_true", help="write the cells without executing")
  args = p.parse_args(argv)
  for builder in builders():
    cells, path = builder_cells(builder)
    if args.only and not any(path.name.startswith(o) for o in args.only):
      continue
    write_notebook(cells, path)
    if args.no_run:
      print(f"wrote {path.relative_to(ROOT)}")
      continue
    seconds = execute(path, small=not args.full)
    print(f"wrote {path.relative_to(ROOT)} (executed in {seconds:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
