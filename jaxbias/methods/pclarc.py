"""P-ClArC: project the artifact direction out at inference, to the clean mean.

Anders, Weber, Neumann, Samek, Müller, Lapuschkin. *Finding and removing
Clever Hans: using explanation methods to debug and improve deep models.*
Information Fusion 2022 (SPEC §2).

At inference the output of layer ``hp.layer`` is replaced by::

    a'(x) = a(x) + (⟨z⁻⟩ − h·ā(x)) / (h·h) · h

(``ā`` the pooled activation for a conv layer; the shift is added at every
position): every sample's component along ``h`` is set to the clean mean, so
the artifact can no longer move the prediction through that direction. No
training is needed: :func:`corrected` returns the corrected model function.
:func:`loss` (cross-entropy of the projected model) is there for fine-tuning
with the projection in place and for the cost benchmark.

Symbols → arguments: ``h`` = ``state.cav``; ``⟨z⁻⟩`` = ``state.z_minus`` (mean
projection of the clean samples, fitted by :func:`init`); ``a`` =
``acts[hp.layer]``.
"""
from __future__ import annotations

from typing import Callable

import jax

from jaxbias.methods import Kind
from jaxbias.methods._clarc import ShiftHparams, State, projection, shifted_loss, shifted_model
from jaxbias.methods._clarc import init as fit_init
from jaxbias.types import Aux, Batch, BoundModel, Params

Array = jax.Array

#: Corrects a trained model (``init`` fits the CAV on it); :func:`corrected` is the model at inference.
KIND = Kind(fits_on_model=True, corrects_inference=True)

__all__ = ["KIND", "Hparams", "State", "init", "loss", "corrected", "edits"]


#: Same hyperparameters for A- and P-ClArC: ``layer``, ``cav``, ``cav_reg``, ``pool``.
Hparams = ShiftHparams

#: Fit ``h``, ``⟨z⁺⟩``, ``⟨z⁻⟩`` (``init(eval_model, params, data, *, hp, concept=None)``).
init = fit_init


def edits(state: State, hp: Hparams) -> dict[str, Callable[[Array], Array]]:
    """What the correction changes at inference: ``{hp.layer: a ↦ a'}`` (an ``edit=`` of the house's models;
    LRP explains the corrected model with it, :func:`jaxbias.explain.lrp_model`)."""
    return {hp.layer: projection(state.cav, state.z_minus, hp.pool)}


def corrected(model: BoundModel, state: State, hp: Hparams) -> BoundModel:
    """``model`` with the projection to ``⟨z⁻⟩`` applied at ``hp.layer``.

    Example:
      >>> fixed = corrected(models.bind(module, ms, train=False), state, hp)
      >>> logits = fixed(params, x).logits
    """
    return shifted_model(model, cav=state.cav, target=state.z_minus, layer=hp.layer, pool=hp.pool)


def loss(params: Params, state: State, batch: Batch, key: jax.Array, *, model: BoundModel, hp: Hparams) -> tuple[Array, Aux]:
    """Cross-entropy of the projected model.

    Example:
      >>> state = init(eval_model, params, Batch(x, y, bias=has_artifact), hp=hp)
      >>> value, aux = loss(params, state, batch, key, model=train_model, hp=hp)
    """
    del key
    return shifted_loss(params, state, batch, model=model, target=state.z_minus, layer=hp.layer, pool=hp.pool)
