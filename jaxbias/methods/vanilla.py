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

from jaxbias.types import Aux, Batch, BoundModel, Params


@dataclass(frozen=True)
class Hparams:
    """Vanilla has no hyperparameters of its own."""


class State(NamedTuple):
    """Nothing is fitted for vanilla training."""


def init(*args, **kwargs) -> State:
    """Return the empty state (signature shared with methods that fit something)."""
    del args, kwargs
    return State()


def penalty(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy ``CE(logits_n, y_n)``, shape ``(B,)``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def loss(
    params: Params, state: State, batch: Batch, key: jax.Array, *, model: BoundModel, hp: Hparams
) -> tuple[jax.Array, Aux]:
    """Mean cross-entropy over the batch.

    Example:
      >>> value, aux = loss(params, State(), batch, key, model=model, hp=Hparams())
    """
    del state, key, hp
    out = model(params, batch.x)
    ce = jnp.mean(penalty(out.logits, batch.y))
    return ce, Aux(metrics={"ce": ce}, state=out.state)
