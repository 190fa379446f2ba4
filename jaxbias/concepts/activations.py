"""A model's activations at one of its layers, for a whole array: what a CAV is fitted on."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxbias.batching import map_batches
from jaxbias.concepts.cav import pool_acts
from jaxbias.types import BoundModel, Params

Array = jax.Array

__all__ = ["check_layer", "layer_acts"]


def check_layer(acts: dict[str, Array], layer: str) -> Array:
    """``acts[layer]``, checked to be there and a ``(B, C)`` or ``(B, H, W, C)`` activation."""
    if layer not in acts:
        raise ValueError(f"hp.layer={layer!r} is not an activation of the model; available layers are {sorted(acts)}")
    a = acts[layer]
    if a.ndim not in (2, 4):
        raise ValueError(f"acts[{layer!r}] has shape {a.shape}; expected (B, C) or (B, H, W, C)")
    return a


def layer_acts(model: BoundModel, params: Params, x: Any, layer: str, *, batch_size: int = 256,
               pool: str | None = None) -> Any:
    """``acts[layer]`` for all of ``x`` in batches (:func:`jaxbias.batching.map_batches`).

    ``pool``: pool a convolutional layer's maps per sample (``"max"``/``"mean"``)
    inside each batch, so the full maps are never held. The model should be
    bound in evaluation mode.
    """
    if np.shape(x)[0] == 0:
        raise ValueError("data.x is empty; a CAV needs samples of both concept classes")

    def acts(p, xb):
        a = check_layer(model(p, xb).acts, layer)
        return pool_acts(a, pool) if pool is not None and a.ndim == 4 else a

    return map_batches(acts, x, args=(params,), batch_size=batch_size)
