"""Concept activation vectors (CAVs) and their alignment scores (SPEC §1).

- :func:`fit_cav` — one unit CAV (signal, ridge, lasso, logistic, svm);
- :func:`fit_cavs` — many concepts × a ``λ`` grid in one jitted, vmapped call;
- :func:`select_reg` — ``λ`` by stratified k-fold cross-validation;
- :func:`alignment` — individual and overall cosine with artifact-induced changes;
- :func:`pool_acts` — max/mean spatial pooling of conv activations.
"""
from jaxbias.concepts.alignment import alignment
from jaxbias.concepts.cav import (
    DEFAULT_REGS,
    METHODS,
    SCORINGS,
    CVResult,
    fit_cav,
    fit_cavs,
    pool_acts,
    select_reg,
    stratified_folds,
)

__all__ = [
    "DEFAULT_REGS",
    "METHODS",
    "SCORINGS",
    "CVResult",
    "alignment",
    "fit_cav",
    "fit_cavs",
    "pool_acts",
    "select_reg",
    "stratified_folds",
]
