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
