"""griffe extension for the docs build: read an ``Example:`` docstring section as
``Examples:`` (the code style writes the singular; griffe's Google parser knows the plural),
so that ``>>>`` lines render as code rather than as Markdown."""

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)


class ExampleSections(griffe.Extension):
  """Rename ``Example:`` sections to ``Examples:`` before the docstrings are parsed."""

  def on_instance(self, *, obj, **kwargs):  # noqa: D102  (griffe hook)
    del kwargs
    if obj.docstring is not None:
      obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
