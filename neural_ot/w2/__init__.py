"""OT maps from samples: dual training of a potential (non-convex MLP or ICNN) with amortized,
fine-tuned conjugates, for ``|x - y|^2`` (``fit_w2``) and any translation-invariant cost
``h(x - y)`` (``fit_map``: the same training path, the conjugate with the cost's c-transform)."""

import importlib
import warnings

from neural_ot.gaussian import gaussian_map, gaussian_w2
from neural_ot.train import TrainState, TrainingDivergedError
from neural_ot.w2.defaults import default_options
from neural_ot.w2.fit import PairSampler, dual_w2, fit_map, fit_w2, training_rows, transport_cost
from neural_ot.w2.maps import Frame, W2Map, load_w2_map
from neural_ot.w2.trainer import W2Trainer

__all__ = ["Frame", "PairSampler", "TrainState", "TrainingDivergedError", "W2Map", "W2Trainer",
           "default_options", "dual_w2", "fit_map", "fit_w2", "transport_cost", "gaussian_map", "gaussian_w2", "load_w2_map",
           "training_rows"]


def __getattr__(name):
  # Deprecated alias: ``neural_ot.w2.load_map`` read any map file; it now lives above both map
  # packages (neural_ot.mapfile), so it is looked up there on first use instead of imported here
  # (an import would close the circle w2 -> mapfile -> conditional -> w2).
  if name == "load_map":
    warnings.warn("neural_ot.w2.load_map is deprecated: use neural_ot.load_map.",
                  DeprecationWarning, stacklevel=2)
    return importlib.import_module("neural_ot.mapfile").load_map
  raise AttributeError(f"module 'neural_ot.w2' has no attribute {name!r}")
