"""Vanilla training: plain softmax cross-entropy, the baseline of every paper.

Symbols → arguments: ``L = (1/B) Σ_n CE(f(x_n), y_n)``; ``x_n`` = ``batch.x``,
``y_n`` = ``batch.y``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxbias.methods import Kind
from jaxbias.types import Aux, Batch, BoundModel, Params

#: A training method; nothing is fitted.
KIND = Kind()



@dataclass(frozen=True)
class Hparams:
    """Vanilla has no hyperparameters of its own."""


class State(NamedTuple):
    """Nothing is fitted for vanilla training."""


def init(model: BoundModel | None = None, params: Params | None = None, data: Batch | None = None, *,
         hp: Hparams | None = None) -> State:
    """The empty state (the signature every method's ``init`` shares)."""
    del model, params, data, hp
    return State()


def penalty(params: Params, state: State, batch: Batch, key: jax.Array, *, model: BoundModel, hp: Hparams) -> jax.Array:
    """Per-example cross-entropy ``CE(f(x_n), y_n)``, shape ``(B,)``."""
    del state, key, hp
    return optax.softmax_cross_entropy_with_integer_labels(model(params, batch.x).logits, batch.y)


def loss(
    params: Params, state: State, batch: Batch, key: jax.Array, *, model: BoundModel, hp: Hparams
) -> tuple[jax.Array, Aux]:
    """Mean cross-entropy over the batch.

    Example:
      >>> value, aux = loss(params, State(), batch, key, model=model, hp=Hparams())
    """
    del state, key, hp
    out = model(params, batch.x)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out.logits, batch.y))
    return ce, Aux(metrics={"ce": ce}, state=out.state)
