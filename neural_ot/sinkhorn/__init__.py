"""Entropic optimal transport between point clouds."""

from neural_ot.sinkhorn.adjoint import ImplicitDiff, Unrolled
from neural_ot.sinkhorn.batch import sinkhorn_batch
from neural_ot.sinkhorn.divergence import sinkhorn_divergence
from neural_ot.sinkhorn.entropic import entropic_map
from neural_ot.sinkhorn.output import SinkhornOutput
from neural_ot.sinkhorn.solver import Sinkhorn, SinkhornState, dual_objective
from neural_ot.sinkhorn.api import sinkhorn
from neural_ot.sinkhorn.multiscale import multiscale_points_init

__all__ = ["ImplicitDiff", "Sinkhorn", "SinkhornOutput", "SinkhornState", "Unrolled",
           "dual_objective", "entropic_map", "multiscale_points_init", "sinkhorn", "sinkhorn_batch",
           "sinkhorn_divergence"]
