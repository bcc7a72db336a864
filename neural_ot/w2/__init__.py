"""Wasserstein-2 maps from samples: ICNN dual training with amortized conjugates."""

from neural_ot.gaussian import gaussian_map, gaussian_w2
from neural_ot.train import TrainState, TrainingDivergedError
from neural_ot.w2.fit import PairSampler, default_options, dual_w2, fit_w2, training_rows
from neural_ot.w2.maps import Frame, W2Map, load_map
from neural_ot.w2.trainer import W2Trainer

__all__ = ["Frame", "PairSampler", "TrainState", "TrainingDivergedError", "W2Map", "W2Trainer",
           "default_options", "dual_w2", "fit_w2", "gaussian_map", "gaussian_w2", "load_map",
           "training_rows"]
