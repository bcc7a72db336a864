"""Execute every tutorial notebook with small sizes (NEURAL_OT_SMALL=1)."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
  assert NOTEBOOKS, "no notebooks found in notebooks/"


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
