"""A-ClArC: fine-tune with every sample moved to the artifact along the CAV.

Anders, Weber, Neumann, Samek, Müller, Lapuschkin. *Finding and removing
Clever Hans: using explanation methods to debug and improve deep models.*
Information Fusion 2022 (SPEC §2).

During fine-tuning the output of layer ``hp.layer`` is replaced by::

    a'(x) = a(x) + (⟨z⁺⟩ − h·ā(x)) / (h·h) · h

(``ā`` the pooled activation for a conv layer; the shift is added at every
position), so every sample carries the artifact to the same extent and the
layers above learn to ignore the direction ``h``. The loss is plain
cross-entropy on the edited model.

Symbols → arguments: ``h`` = ``state.cav``; ``⟨z⁺⟩`` = ``state.z_plus`` (mean
projection of the artifact samples, fitted by :func:`init`); ``a`` =
``acts[hp.layer]``.
"""
from __future__ import annotations

import jax

from jaxbias.methods import Kind
from jaxbias.methods._clarc import ShiftHparams, State, shifted_loss, shifted_model
from jaxbias.methods._clarc import init as fit_init
from jaxbias.types import Aux, Batch, BoundModel, Params

Array = jax.Array

#: Corrects a trained model: ``init`` fits the CAV on it.
KIND = Kind(fits_on_model=True)

__all__ = ["KIND", "Hparams", "State", "init", "loss", "augmented"]


#: Same hyperparameters for A- and P-ClArC: ``layer``, ``cav``, ``cav_reg``, ``pool``.
Hparams = ShiftHparams

#: Fit ``h``, ``⟨z⁺⟩``, ``⟨z⁻⟩`` (``init(eval_model, params, data, *, hp, concept=None)``).
init = fit_init


def augmented(model: BoundModel, state: State, hp: Hparams) -> BoundModel:
    """``model`` with the augmentative shift to ``⟨z⁺⟩`` applied at ``hp.layer`` (training only).

    A-ClArC corrects by fine-tuning; at inference the fine-tuned model runs
    unedited, so this module has no ``corrected``.
    """
    return shifted_model(model, cav=state.cav, target=state.z_plus, layer=hp.layer, pool=hp.pool)


def loss(params: Params, state: State, batch: Batch, key: jax.Array, *, model: BoundModel, hp: Hparams) -> tuple[Array, Aux]:
    """Cross-entropy of the shifted model.

    Example:
      >>> state = init(eval_model, params, Batch(x, y, bias=has_artifact), hp=hp)
      >>> value, aux = loss(params, state, batch, key, model=train_model, hp=hp)
    """
    del key
    return shifted_loss(params, state, batch, model=model, target=state.z_plus, layer=hp.layer, pool=hp.pool)
