"""Costs and point clouds."""

from neural_ot.geometry.costs import (Cosine, Cost, ElasticL1, FunctionCost, Mahalanobis, PNorm,
                                      SqEuclidean, TICost, TranslationInvariant, as_cost)
from neural_ot.geometry.pointcloud import PointCloud

__all__ = ["Cosine", "Cost", "ElasticL1", "FunctionCost", "Mahalanobis", "PNorm", "PointCloud",
           "SqEuclidean", "TICost", "TranslationInvariant", "as_cost"]
