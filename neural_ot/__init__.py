"""neural_ot: neural and entropic optimal transport in JAX."""

from neural_ot.geometry import Cosine, Cost, FunctionCost, PNorm, PointCloud, SqEuclidean
from neural_ot.sinkhorn import (Sinkhorn, SinkhornOutput, SinkhornState, dual_objective,
                                sinkhorn, sinkhorn_divergence)

__version__ = "0.1.0"

__all__ = [
    "Cosine", "Cost", "FunctionCost", "PNorm", "PointCloud", "SqEuclidean",
    "Sinkhorn", "SinkhornOutput", "SinkhornState", "dual_objective", "sinkhorn",
    "sinkhorn_divergence",
]
