"""Package structure: no private names imported across packages, light imports."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent


def _private_imports():
  """``(file, module, name)`` for each import of a private name across a package boundary.

  Packages are ``neural_ot.<sub>`` (and top-level modules ``neural_ot.<mod>``); the root's
  private modules (``neural_ot._validation``, ``neural_ot._plotting``) are library-internal
  helpers any library module may use. Tests, benchmarks and notebooks are outside every
  package: they use public names only.
  """
  found = []
  for path in [*ROOT.glob("neural_ot/**/*.py"), *ROOT.glob("benchmarks/*.py"),
               *ROOT.glob("tests/**/*.py"), *ROOT.glob("notebooks/*.py")]:
    rel = path.relative_to(ROOT).with_suffix("")
    inside = rel.parts[0] == "neural_ot"
    importer = ".".join(rel.parts[:2]) if inside else None
    for node in ast.walk(ast.parse(path.read_text())):
      if not (isinstance(node, ast.ImportFrom) and node.module
              and node.module.split(".")[0] == "neural_ot"):
        continue
      for alias in node.names:
        full = node.module.split(".") + [alias.name]
        private = [i for i, p in enumerate(full) if p.startswith("_") and p != "__init__"]
        if not private:
          continue
        owner = ".".join(full[:max(private[0], 2)])
        if inside and (owner == importer or len(full[:private[0]]) == 1):
          continue  # own package, or a root-level private helper module
        found.append((str(rel), node.module, alias.name))
  return found


def test_no_private_name_is_imported_across_packages():
  bad = _private_imports()
  assert not bad, f"private names imported across packages: {bad}"


def test_importing_meta_does_not_load_the_w2_trainer():
  code = ("import sys, neural_ot.meta; "
          "print(sorted(m for m in sys.modules if m.startswith('neural_ot.w2')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout


# -- the import graph ------------------------------------------------------------------------

def _module_sources(root=ROOT) -> dict:
  """``{module name: source}`` for every module of the package (``__init__`` as the package)."""
  out = {}
  for path in sorted(root.glob("neural_ot/**/*.py")):
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path.read_text()
  return out


def _import_graph(sources: dict) -> dict:
  """``{module: set of neural_ot modules it imports}``, every import statement counted, also
  those inside functions (a function-local import only hides a circle until it runs)."""
  graph = {}
  for name, src in sources.items():
    deps = set()
    for node in ast.walk(ast.parse(src)):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in sources
                   else node.module for a in node.names]
      else:
        continue
      deps |= {t for t in targets if t in sources and t != name}
    graph[name] = deps
  return graph


def _unit(module: str) -> str:
  """The layer a module belongs to: its subpackage (``neural_ot.w2``) or root module."""
  return ".".join(module.split(".")[:2])


def _cycles(graph: dict) -> list:
  """Strongly connected components with more than one node (Tarjan), each sorted."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _layer_graph(graph: dict) -> dict:
  """Edges between layers (subpackages and root modules); the root package itself, which
  re-exports from the layers below it, is left out."""
  layers: dict = {}
  for mod, deps in graph.items():
    if mod == "neural_ot":
      continue
    layers.setdefault(_unit(mod), set()).update(
        _unit(d) for d in deps if d != "neural_ot" and _unit(d) != _unit(mod))
  return layers


def _circles(sources: dict) -> list:
  graph = _import_graph(sources)
  return _cycles(graph) + [["layers:", *c] for c in _cycles(_layer_graph(graph))]


def test_the_import_graph_has_no_circle_and_no_upward_import():
  assert not _circles(_module_sources()), _circles(_module_sources())
  # The check finds a planted circle: the W2 maps importing the conditional maps (which import
  # them) closes one between modules and between layers.
  planted = dict(_module_sources())
  planted["neural_ot.w2.maps"] += "\nfrom neural_ot.conditional import maps as _cond\n"
  found = _circles(planted)
  assert any("neural_ot.w2.maps" in c and "neural_ot.conditional.maps" in c for c in found)
  assert any(c[0] == "layers:" and {"neural_ot.w2", "neural_ot.conditional"} <= set(c)
             for c in found)
  # ... also when hidden inside a function
  planted = dict(_module_sources())
  planted["neural_ot.sharding"] += "\ndef _f():\n  from neural_ot.sinkhorn import solver\n"
  assert _circles(planted)


def test_no_module_is_over_600_lines():
  long = {name: src.count("\n") for name, src in _module_sources().items()
          if src.count("\n") > 600}
  assert not long, long


# -- private attributes reached across modules -----------------------------------------------

def _private_attributes(files: dict) -> list:
  """``(file, dotted path)`` for each private attribute (``_name``, not dunder) reached through
  a neural_ot module bound by an import, from outside that module's layer (or from tests,
  benchmarks and notebooks, which are outside every layer)."""
  modules = set(_module_sources())
  found = []
  for rel, src in files.items():
    parts = pathlib.PurePath(rel).with_suffix("").parts
    importer = _unit(".".join(parts)) if parts[0] == "neural_ot" else None
    bound = {}
    tree = ast.parse(src)
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        for a in node.names:
          if a.name.split(".")[0] == "neural_ot":
            bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else "neural_ot"
      elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
          "neural_ot"):
        for a in node.names:
          full = f"{node.module}.{a.name}"
          if full in modules:
            bound[a.asname or a.name] = full
    for node in ast.walk(tree):
      if not isinstance(node, ast.Attribute):
        continue
      chain, inner = [], node
      while isinstance(inner, ast.Attribute):
        chain.append(inner.attr)
        inner = inner.value
      if not (isinstance(inner, ast.Name) and inner.id in bound):
        continue
      chain = chain[::-1]
      if not any(c.startswith("_") and not c.startswith("__") for c in chain):
        continue
      owner = bound[inner.id]
      if importer is not None and _unit(owner) == importer:
        continue
      found.append((rel, ".".join([owner, *chain])))
  return sorted(set(found))


def _all_python_files() -> dict:
  paths = [*ROOT.glob("neural_ot/**/*.py"), *ROOT.glob("benchmarks/*.py"),
           *ROOT.glob("tests/**/*.py"), *ROOT.glob("notebooks/*.py")]
  return {str(p.relative_to(ROOT)): p.read_text() for p in paths}


def test_no_private_attribute_is_reached_across_modules():
  found = _private_attributes(_all_python_files())
  assert not found, found
  # The check catches a planted one, as the tests once did (`cli._write_json`, a JAX-private
  # `_cache_size()` reached through a module), and lets a module use its own layer's names.
  planted = {"tests/test_x.py": "from neural_ot.sinkhorn import solver as s\n"
                                "s.solve_points._cache_size()\n",
             "benchmarks/b.py": "import neural_ot.train\nneural_ot.train._restore(1)\n",
             "neural_ot/w2/x.py": "from neural_ot.w2 import fit\nfit._prepare(1)\n"}
  assert _private_attributes(planted) == [
      ("benchmarks/b.py", "neural_ot.train._restore"),
      ("tests/test_x.py", "neural_ot.sinkhorn.solver.solve_points._cache_size")]
