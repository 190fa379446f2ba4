"""Concept activation vectors (CAVs) and their alignment scores (SPEC §1).

- :func:`fit_cav` — one unit CAV (signal, ridge, lasso, logistic, svm);
- :func:`fit_cavs` — many concepts × a ``λ`` grid in one jitted, vmapped call;
- :func:`select_reg` — ``λ`` by stratified k-fold cross-validation;
- :func:`alignment` — individual and overall cosine with artifact-induced changes;
- :func:`pool_acts` — max/mean spatial pooling of conv activations;
- :func:`layer_acts` — a model's activations at a layer for a whole array (pooled per batch);
  :func:`layer_acts_batches` one batch at a time, and :class:`SignalSums` the signal CAV from them.
"""
from jaxbias.concepts.activations import check_layer, layer_acts, layer_acts_batches
from jaxbias.concepts.alignment import alignment
from jaxbias.concepts.cav import (
    DEFAULT_REGS,
    METHODS,
    SCORINGS,
    STREAM_CAV_SAMPLES,
    CVResult,
    SignalSums,
    fit_cav,
    fit_cavs,
    pool_acts,
    select_reg,
    stratified_folds,
    stratified_subsample,
)

__all__ = [
    "DEFAULT_REGS",
    "METHODS",
    "SCORINGS",
    "STREAM_CAV_SAMPLES",
    "CVResult",
    "SignalSums",
    "alignment",
    "check_layer",
    "layer_acts",
    "layer_acts_batches",
    "fit_cav",
    "fit_cavs",
    "pool_acts",
    "select_reg",
    "stratified_folds",
    "stratified_subsample",
]
