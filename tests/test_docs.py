"""The documentation site builds with warnings as errors, and documents every public name."""

import importlib
import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent

# API page (docs/api/NAME.md) -> the module it documents.
PAGES = {
    "sinkhorn": "neural_ot.sinkhorn", "geometry": "neural_ot.geometry", "w2": "neural_ot.w2",
    "train": "neural_ot.train", "meta": "neural_ot.meta", "w2bench": "neural_ot.w2bench",
    "sharding": "neural_ot.sharding", "gaussian": "neural_ot.gaussian", "io": "neural_ot.io",
    "potentials": "neural_ot.potentials", "conjugate": "neural_ot.conjugate",
    "data": "neural_ot.data", "conditional": "neural_ot.conditional",
    "diagnostics": "neural_ot.w2.diagnostics", "mapfile": "neural_ot.mapfile",
    "families": "neural_ot.w2bench.families", "tracing": "neural_ot.tracing",
    "cost_families": "neural_ot.w2bench.cost_families",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  out = tmp_path_factory.mktemp("site")
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                         str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
  return out


def test_docs_build_strict(site):
  assert (site / "index.html").is_file()
  assert (site / "api" / "w2" / "index.html").is_file()


@pytest.mark.parametrize("page, module", sorted(PAGES.items()))
def test_every_public_name_is_on_its_page(site, page, module):
  html = (site / "api" / page / "index.html").read_text()
  shown = {i.rsplit(".", 1)[-1]
           for i in re.findall(r'id="(%s\.[A-Za-z_0-9]+)"' % re.escape(module), html)}
  mod = importlib.import_module(module)
  missing = sorted(set(mod.__all__) - shown)
  assert not missing, f"docs/api/{page}.md does not show {missing}"


def test_every_top_level_name_is_documented(site):
  """`neural_ot`'s own names are re-exports: each is shown on a subpackage page and has a
  docstring."""
  import neural_ot
  shown = set()
  for page in PAGES:
    html = (site / "api" / page / "index.html").read_text()
    shown |= {i.rsplit(".", 1)[-1] for i in re.findall(r'id="(neural_ot\.[A-Za-z_0-9.]+)"', html)}
  assert not sorted(set(neural_ot.__all__) - shown)
  for module in ["neural_ot", *PAGES.values()]:
    mod = importlib.import_module(module)
    for name in mod.__all__:
      obj = getattr(mod, name)
      if inspect.isclass(obj) or inspect.isfunction(obj):
        assert (obj.__doc__ or "").strip(), f"{module}.{name} has no docstring"


def test_the_api_pages_cover_the_subpackages():
  nav = (ROOT / "mkdocs.yml").read_text()
  for page, module in PAGES.items():
    assert f"api/{page}.md" in nav
    assert (ROOT / "docs" / "api" / f"{page}.md").read_text().strip() == f"::: {module}"
