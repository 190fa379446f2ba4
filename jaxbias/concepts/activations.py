"""A model's activations at one of its layers, for a whole array: what a CAV is fitted on."""
from __future__ import annotations

from typing import Any, Iterator

import jax
import numpy as np

from jaxbias.batching import each_batch, map_batches
from jaxbias.concepts.cav import pool_acts
from jaxbias.types import BoundModel, Params

Array = jax.Array

__all__ = ["check_layer", "layer_acts", "layer_acts_batches"]


def check_layer(acts: dict[str, Array], layer: str) -> Array:
    """``acts[layer]``, checked to be there and a ``(B, C)`` or ``(B, H, W, C)`` activation."""
    if layer not in acts:
        raise ValueError(f"hp.layer={layer!r} is not an activation of the model; available layers are {sorted(acts)}")
    a = acts[layer]
    if a.ndim not in (2, 4):
        raise ValueError(f"acts[{layer!r}] has shape {a.shape}; expected (B, C) or (B, H, W, C)")
    return a


def _acts_fn(model: BoundModel, layer: str, pool: str | None):
    def acts(p, xb):
        a = check_layer(model(p, xb).acts, layer)
        return pool_acts(a, pool) if pool is not None and a.ndim == 4 else a

    return acts


def layer_acts(model: BoundModel, params: Params, x: Any, layer: str, *, batch_size: int = 256,
               pool: str | None = None) -> Any:
    """``acts[layer]`` for all of ``x`` in batches (:func:`jaxbias.batching.map_batches`).

    ``pool``: pool a convolutional layer's maps per sample (``"max"``/``"mean"``)
    inside each batch, so the full maps are never held. The model should be
    bound in evaluation mode. The result holds a row per sample of ``x``: for a
    streamed ``x`` whose rows must not all be held, use :func:`layer_acts_batches`.
    """
    if np.shape(x)[0] == 0:
        raise ValueError("data.x is empty; a CAV needs samples of both concept classes")
    return map_batches(_acts_fn(model, layer, pool), x, args=(params,), batch_size=batch_size)


def layer_acts_batches(model: BoundModel, params: Params, x: Any, layer: str, *, batch_size: int = 256,
                       pool: str | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """``(rows, acts[layer] of x[rows])`` one batch at a time (:func:`jaxbias.batching.each_batch`): what
    :func:`layer_acts` computes, never more than ``batch_size`` rows of ``x`` decoded or of activations held.

    Example:
      >>> for rows, a in layer_acts_batches(model, params, train.x, "block4", pool="max"):  # doctest: +SKIP
      ...     sums.add(a, labels[rows])
    """
    if np.shape(x)[0] == 0:
        raise ValueError("data.x is empty; a CAV needs samples of both concept classes")
    return each_batch(_acts_fn(model, layer, pool), x, args=(params,), batch_size=batch_size)
