"""Reading any map file the library writes: the format tag says which loader reads it.

The map classes write their own files (``W2Map.save``, ``ConditionalW2Map.save``) with a
format tag from :mod:`neural_ot.io`; this module sits above both and dispatches on the tag,
so neither map module needs to know the other.
"""

from __future__ import annotations

from neural_ot import io
from neural_ot.conditional.maps import ConditionalW2Map, load_conditional_map
from neural_ot.w2.maps import W2Map, load_w2_map

__all__ = ["load_map"]


def load_map(path: str) -> W2Map | ConditionalW2Map:
  """Load a map written by :meth:`W2Map.save` (a :class:`W2Map`) or by
  :meth:`ConditionalW2Map.save` (a :class:`ConditionalW2Map`).

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not a neural_ot map file, or a damaged one (named).
  """
  raw, meta = io.read_map_file(path)
  if meta["format"] == io.CONDITIONAL_MAP_FORMAT:
    return load_conditional_map(path, raw)
  return load_w2_map(path, raw)
