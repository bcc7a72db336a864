"""Execute every tutorial notebook with small sizes (NEURAL_OT_SMALL=1); the committed
notebooks are what their builders write, executed, with their figures."""

import importlib.util
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = pathlib.Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def _build_module():
  spec = importlib.util.spec_from_file_location("_notebooks_build", NOTEBOOK_DIR / "build.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_there_are_notebooks():
  assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch, tmp_path):
  monkeypatch.setenv("NEURAL_OT_SMALL", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError on any failing cell or assert
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors


def test_benchmark_notebook_falls_back_without_data(monkeypatch, tmp_path):
  """On a clone with nothing beside it, notebook 04 uses a pair built in code and says so."""
  monkeypatch.setenv("NEURAL_OT_SMALL", "1")
  monkeypatch.setenv("NEURAL_OT_W2BENCH", str(tmp_path / "missing"))
  monkeypatch.delenv("CI", raising=False)
  path = pathlib.Path(__file__).parent.parent / "notebooks" / "04_w2_benchmark.ipynb"
  nb = nbformat.read(path, as_version=4)
  first = [c for c in nb.cells if c.cell_type == "code"][:1]
  nb.cells = first
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  text = "".join(o.get("text", "") for o in nb.cells[0].outputs)
  assert "Falling back to a random known-map pair" in text
  assert "random D=2" in text


def test_committed_notebooks_match_their_builders():
  """The cells of every committed notebook are exactly what its builder writes (regenerate
  with `python notebooks/build.py`)."""
  build = _build_module()
  builders = build.builders()
  assert len(builders) == len(NOTEBOOKS)
  for builder in builders:
    cells, path = build.builder_cells(builder)
    assert path.exists(), f"{builder.name} writes {path.name}, which is not committed"
    nb = nbformat.read(path, as_version=4)
    got = [("md" if c.cell_type == "markdown" else c.cell_type, c.source) for c in nb.cells]
    assert got == cells, (f"{path.name} differs from what {builder.name} writes; run "
                          f"`python notebooks/build.py {path.name[:2]}`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_shows_its_outputs(path):
  """Committed executed: every code cell ran in order, no errors, the figures are embedded."""
  nb = nbformat.read(path, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), (
      f"{path.name} is not committed executed; run `python notebooks/build.py`")
  outputs = [o for c in code for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  if "plt." in "".join(c.source for c in code):
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name}: no figure"


def test_no_backend_switching():
  for f in sorted(NOTEBOOK_DIR.glob("*.py")) + NOTEBOOKS:
    assert "matplotlib.use(" not in f.read_text(), f.name
