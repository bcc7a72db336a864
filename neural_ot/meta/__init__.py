"""Meta OT: amortized Sinkhorn initialisation across problems, on a fixed support
(:func:`fit_meta`) or for point clouds of any size (:func:`fit_meta_points`)."""

import warnings

from neural_ot.meta.histograms import digits_histograms, gaussian_mixture_histograms, grid
from neural_ot.meta.model import (MetaOT, c_transform, dual_value, fit_meta, gaussian_init,
                                  load_meta, support_geometry)
from neural_ot.meta.starts import coarsen, multiscale_init
from neural_ot.meta.points import (MetaPointsOT, fit_meta_points, gaussian_potential,
                                   load_meta_points)
from neural_ot.sinkhorn.multiscale import grid_cells, multiscale_points_init

__all__ = ["MetaOT", "c_transform", "digits_histograms", "dual_value", "fit_meta",
           "gaussian_init", "gaussian_mixture_histograms", "gaussian_potential", "grid",
           "load_meta", "load_meta_points", "MetaPointsOT", "fit_meta_points",
           "coarsen", "multiscale_init", "support_geometry", "grid_cells",
           "multiscale_points_init"]


def __getattr__(name):
  # Deprecated alias: ``neural_ot.meta.geometry`` clashed with the ``neural_ot.geometry``
  # package; the function is now ``support_geometry``.
  if name == "geometry":
    warnings.warn("neural_ot.meta.geometry is deprecated; use neural_ot.meta.support_geometry.",
                  DeprecationWarning, stacklevel=2)
    return support_geometry
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
