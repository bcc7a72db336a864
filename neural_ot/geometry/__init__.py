"""Costs and point clouds."""

from neural_ot.geometry.costs import Cosine, Cost, FunctionCost, PNorm, SqEuclidean, as_cost
from neural_ot.geometry.pointcloud import PointCloud

__all__ = ["Cosine", "Cost", "FunctionCost", "PNorm", "PointCloud", "SqEuclidean", "as_cost"]
