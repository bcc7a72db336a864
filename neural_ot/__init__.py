"""neural_ot: neural and entropic optimal transport in JAX."""

from neural_ot.geometry import (Cosine, Cost, ElasticL1, FunctionCost, Mahalanobis, PNorm,
                                PointCloud, SqEuclidean, TICost, TranslationInvariant)
from neural_ot.sinkhorn import (ImplicitDiff, Sinkhorn, SinkhornOutput, SinkhornState, Unrolled,
                                dual_objective, entropic_map, sinkhorn, sinkhorn_batch,
                                sinkhorn_divergence)

__version__ = "0.1.0"

# Neural maps pull in flax/optax: imported on first use so `import neural_ot` stays light.
_LAZY = {"fit_w2": "neural_ot.w2", "fit_map": "neural_ot.w2", "load_map": "neural_ot.mapfile", "W2Map": "neural_ot.w2",
         "W2Trainer": "neural_ot.w2", "TrainingDivergedError": "neural_ot.w2",
         "gaussian_map": "neural_ot.w2", "gaussian_w2": "neural_ot.w2",
         "fit_conditional_w2": "neural_ot.conditional",
         "ConditionalW2Map": "neural_ot.conditional"}


def __getattr__(name):
  if name in _LAZY:
    import importlib
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'neural_ot' has no attribute {name!r}")

__all__ = [
    "Cosine", "Cost", "ElasticL1", "FunctionCost", "Mahalanobis", "PNorm", "PointCloud",
    "SqEuclidean", "TICost", "TranslationInvariant",
    "ImplicitDiff", "Sinkhorn", "SinkhornOutput", "SinkhornState", "Unrolled", "dual_objective", "entropic_map",
    "sinkhorn",
    "sinkhorn_batch", "sinkhorn_divergence", *_LAZY,
]
