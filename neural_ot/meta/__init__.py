"""Meta OT: amortized Sinkhorn initialisation across problems on a fixed support."""

from neural_ot.meta.data import digits_histograms, gaussian_mixture_histograms, grid
from neural_ot.meta.model import (MetaOT, c_transform, dual_value, fit_meta, gaussian_init,
                                  geometry, load_meta)

__all__ = ["MetaOT", "c_transform", "digits_histograms", "dual_value", "fit_meta",
           "gaussian_init", "gaussian_mixture_histograms", "geometry", "grid", "load_meta"]
