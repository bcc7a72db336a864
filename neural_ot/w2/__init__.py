"""Wasserstein-2 maps from samples: ICNN dual training with amortized conjugates."""

from neural_ot.w2.fit import TrainingDivergedError, fit_w2
from neural_ot.w2.gaussian import gaussian_map, gaussian_w2
from neural_ot.w2.maps import W2Map, load_map
from neural_ot.w2.trainer import TrainState, W2Trainer

__all__ = ["TrainState", "TrainingDivergedError", "W2Map", "W2Trainer", "fit_w2",
           "gaussian_map", "gaussian_w2", "load_map"]
