"""Known-map W2 benchmark pairs (Korotin et al. 2021 Mix3toMix10, Gaussians, custom) and metrics."""

from neural_ot.w2bench.metrics import baselines, cos_similarity, evaluate, l2_uvp
from neural_ot.w2bench.pairs import (KnownMapPair, default_data_dir, dense_icnn, gaussian_pair,
                                     load_pair, potential_pair, random_pair)
from neural_ot.w2bench.convert import convert_folder
from neural_ot.w2bench.torch_pt import load_pt

__all__ = ["KnownMapPair", "baselines", "convert_folder", "cos_similarity", "default_data_dir",
           "dense_icnn", "evaluate", "gaussian_pair", "l2_uvp", "load_pair", "load_pt",
           "potential_pair", "random_pair"]
