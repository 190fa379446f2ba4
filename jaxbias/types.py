"""Containers shared by every module (no logic beyond validation helpers).

Shapes are written in the docstrings: ``B`` batch, ``H×W×C`` images (NHWC),
``k`` classes.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

Array = jax.Array
Params = Any  # a pytree of trainable arrays (Flax ``params`` collection)
ModelState = Any  # non-trainable collections, e.g. ``{"batch_stats": ...}``; ``{}`` if none


class Batch(NamedTuple):
    """One minibatch.

    Attributes:
      x: inputs, ``(B, H, W, C)`` float32 (or ``(B, d)`` for tabular data).
      y: target labels, ``(B,)`` int32.
      bias: bias / protected-attribute labels, ``(B,)`` int32, or ``None``.
      mask: artifact masks (same spatial shape as ``x``), or ``None``.
    """

    x: Array
    y: Array
    bias: Array | None = None
    mask: Array | None = None


class ModelOutput(NamedTuple):
    """What a bound model returns.

    Attributes:
      logits: ``(B, k)``.
      acts: layer name -> activation (each block, ``"features"``, ``"logits"``).
      state: the updated non-trainable collections (batch-norm statistics) when
        called in training mode; the unchanged state otherwise.
    """

    logits: Array
    acts: dict[str, Array]
    state: ModelState


class Aux(NamedTuple):
    """Second output of a method's ``loss``.

    Attributes:
      metrics: scalar diagnostics (``"ce"``, the penalty, ...), logged by the loop.
      state: updated model state (batch-norm statistics) to carry to the next step.
    """

    metrics: dict[str, Array]
    state: ModelState


# ``model(params, x, *, perturb=None, edit=None) -> ModelOutput``; built by
# :func:`jaxbias.models.bind`, so methods never see Flax or batch-norm plumbing.
BoundModel = Callable[..., ModelOutput]
