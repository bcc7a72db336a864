"""Shared writer for the notebook builders (cells kept as code so diffs stay readable)."""
import nbformat as nbf


def write(cells, path):
  nb = nbf.v4.new_notebook()
  nb.cells = [nbf.v4.new_markdown_cell(s) if k == "md" else nbf.v4.new_code_cell(s) for k, s in cells]
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nbf.write(nb, path)
