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

from dataclasses import dataclass
from typing import Any

import jax

from jaxbias.methods._clarc import State, fit_state, shifted_loss, shifted_model
from jaxbias.types import Aux, Batch, BoundModel, Params

Array = jax.Array

__all__ = ["Hparams", "State", "init", "loss", "augmented"]


@dataclass(frozen=True)
class Hparams:
    """A-ClArC hyperparameters.

    Attributes:
      layer: layer of the CAV and of the shift.
      cav: CAV fitter (``jaxbias.concepts.fit_cav`` ``method``).
      cav_reg: its regularisation (``None``: the fitter's default).
      pool: spatial pooling of conv activations (``"max"``/``"mean"``).
    """

    layer: str = "block4"
    cav: str = "signal"
    cav_reg: float | None = None
    pool: str = "max"

    def __post_init__(self):
        if self.pool not in ("max", "mean"):
            raise ValueError(f"pool must be 'max' or 'mean'; got {self.pool!r}")


def init(model: BoundModel, params: Params, data: Batch, *, hp: Hparams, concept: Any = None, **kwargs) -> State:
    """Fit ``h``, ``⟨z⁺⟩``, ``⟨z⁻⟩`` on ``data`` (``data.bias`` or ``concept``: 1 = artifact)."""
    return fit_state(model, params, data, layer=hp.layer, cav=hp.cav, cav_reg=hp.cav_reg, pool=hp.pool,
                     concept=concept, **kwargs)


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
