"""Explanations: LRP (EpsilonPlusFlat composite, batch-norm canonization), gradients, gradient × input.

See :mod:`jaxbias.explain.lrp` for the rules and :mod:`jaxbias.explain.graph`
for the layer graph LRP walks.
"""
from jaxbias.explain.graph import (
    Activation,
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    MaxPool,
    Residual,
    check_graph,
    fold_batchnorm,
    forward,
    to_graph,
)
from jaxbias.explain.intercept import concept_masks, concept_relevance, lrp_model, make_lrp_model, supported
from jaxbias.explain.lrp import RULES, composite_rules, first_linear, grad_times_input, gradient, lrp, make_lrp

__all__ = [
    "Activation", "AvgPool", "BatchNorm", "Conv", "Dense", "Flatten", "GlobalAvgPool", "MaxPool", "Residual",
    "RULES", "check_graph", "composite_rules", "concept_masks", "concept_relevance", "first_linear", "fold_batchnorm", "forward", "grad_times_input",
    "gradient", "lrp", "lrp_model", "make_lrp", "make_lrp_model", "supported", "to_graph",
]
