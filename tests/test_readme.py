"""Every ```python block of README.md runs as written (each on its own, in a fresh process).

The blocks that train read ``NEURAL_OT_SMALL=1`` for small step counts. A block that needs the
W2 benchmark data falls back to a pair built in code when the data is missing.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).parent.parent / "README.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
  """``(line number, code)`` of every fenced ```python block."""
  blocks = []
  for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.S | re.M):
    blocks.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
  return blocks


BLOCKS = python_blocks(README.read_text())


def test_readme_has_python_blocks():
  assert len(BLOCKS) >= 4
  # The extraction sees every fence that opens a python block.
  assert len(BLOCKS) == README.read_text().count("```python")


@pytest.mark.slow
@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"line{n}" for n, _ in BLOCKS])
def test_readme_block_runs(line, code, tmp_path):
  env = dict(os.environ, NEURAL_OT_SMALL="1", MPLBACKEND="Agg")
  script = tmp_path / f"readme_line{line}.py"
  script.write_text(code)
  proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, (f"README.md block at line {line} failed:\n{code}\n"
                                f"--- stderr ---\n{proc.stderr[-4000:]}")
