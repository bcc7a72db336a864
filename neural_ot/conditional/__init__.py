"""Conditional W2 maps: one model of OT maps under many conditions (labels, doses, features),
predicted for new conditions and fine-tuned from the prediction."""

from neural_ot.conditional.fit import ConditionSampler, fit_conditional_w2
from neural_ot.conditional.maps import ConditionalW2Map, Contexts, load_conditional_map, pair_features

__all__ = ["ConditionSampler", "ConditionalW2Map", "Contexts", "fit_conditional_w2",
           "load_conditional_map", "pair_features"]
