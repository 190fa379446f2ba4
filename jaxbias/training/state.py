"""The training state and its optimisers: what a step changes, and how.

:class:`TrainState` is the whole pytree a run checkpoints. The optimisers are
Adam with (coupled or decoupled) weight decay and a step learning-rate
schedule; :func:`schedule_optimizer` builds the same transformation with the
rate as an argument, so a sweep keeps one rate per member in the optimiser
state (:func:`inject_lr`); :func:`freeze` trains only some parameter groups.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from jaxbias.types import ModelState, Params

__all__ = ["TrainState", "adam_with_decay", "create_train_state", "freeze", "inject_lr", "make_optimizer",
           "schedule_optimizer"]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; checkpointed whole).

    Attributes:
      step: number of optimiser steps taken, int32 scalar.
      params: trainable parameters.
      model_state: non-trainable collections (batch-norm statistics).
      opt_state: optax state.
      method_state: what the method fitted before training (a CAV, ...); fixed.
      rng: raw key data of the run's training key; step ``t`` uses
        ``fold_in(key, t)`` so that a resumed run draws the same keys.
    """

    step: jax.Array
    params: Params
    model_state: ModelState
    opt_state: optax.OptState
    method_state: Any
    rng: jax.Array

    @property
    def key(self) -> jax.Array:
        return jax.random.wrap_key_data(self.rng)


def create_train_state(
    params: Params, model_state: ModelState, tx: optax.GradientTransformation, *, key: jax.Array, method_state: Any = ()
) -> TrainState:
    """A fresh state at step 0."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        method_state=method_state,
        rng=jax.random.key_data(key),
    )


def make_optimizer(
    *,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    steps_per_epoch: int = 1,
    decay_every: int | None = 20,
    decay_factor: float = 0.1,
    decoupled: bool = False,
) -> optax.GradientTransformation:
    """Adam with weight decay and a step learning-rate schedule (EnD's setup).

    ``lr_t = lr · decay_factor^⌊epoch / decay_every⌋``. With ``decoupled=False``
    the decay is an L2 term added to the gradient before Adam's scaling (what
    PyTorch's ``Adam(weight_decay=…)`` does, and what EnD used); ``True`` gives AdamW.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be ≥ 1, got {steps_per_epoch}")
    return adam_with_decay(lr, weight_decay=weight_decay, steps_per_epoch=steps_per_epoch, decay_every=decay_every,
                           decay_factor=decay_factor, decoupled=decoupled)


def adam_with_decay(
    lr: Any, *, weight_decay: float, steps_per_epoch: int, decay_every: int | None, decay_factor: float, decoupled: bool
) -> optax.GradientTransformation:
    """:func:`make_optimizer`'s transformation without its checks, so ``lr`` may be a traced array (sweeps)."""
    if decay_every is not None and decay_every >= 1:
        schedule = optax.exponential_decay(
            lr, transition_steps=decay_every * steps_per_epoch, decay_rate=decay_factor, staircase=True
        )
    else:
        schedule = optax.constant_schedule(lr)
    if decoupled:
        return optax.adamw(schedule, weight_decay=weight_decay)
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_adam(),
        optax.scale_by_learning_rate(schedule),
    )


def freeze(tx: optax.GradientTransformation, params: Params, trainable: Sequence[str]) -> optax.GradientTransformation:
    """``tx`` on the top-level parameter groups named in ``trainable``, zero updates elsewhere.

    Example:
      >>> tx = freeze(make_optimizer(), params, trainable=("fc",))  # train the head only
    """
    unknown = sorted(set(trainable) - set(params))
    if unknown or not trainable:
        raise ValueError(f"trainable must name top-level parameter groups {sorted(params)}; got {list(trainable)}")
    labels = {k: jax.tree.map(lambda _, k=k: "train" if k in trainable else "frozen", v) for k, v in params.items()}
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def schedule_optimizer(
    *,
    weight_decay: float = 1e-4,
    steps_per_epoch: int = 1,
    decay_every: int | None = 20,
    decay_factor: float = 0.1,
    decoupled: bool = False,
) -> Callable[[Any], optax.GradientTransformation]:
    """``lr ↦`` :func:`make_optimizer` ``(lr=lr, ...)``, traceable in ``lr``.

    The same transformation (Adam, coupled or decoupled weight decay,
    ``lr_t = lr · decay_factor^⌊epoch / decay_every⌋``) built without
    ``make_optimizer``'s Python check ``lr > 0``, so that ``lr`` may be the
    array that :func:`optax.inject_hyperparams` keeps in the optimiser state.
    The other arguments are validated here by ``make_optimizer`` itself.
    """
    make_optimizer(lr=1.0, weight_decay=weight_decay, steps_per_epoch=steps_per_epoch, decay_every=decay_every,
                   decay_factor=decay_factor, decoupled=decoupled)

    def optimizer(lr):
        return adam_with_decay(lr, weight_decay=weight_decay, steps_per_epoch=steps_per_epoch,
                               decay_every=decay_every, decay_factor=decay_factor, decoupled=decoupled)

    return optimizer


def inject_lr(optimizer: Callable[[Any], optax.GradientTransformation], lr: float):
    """``optimizer(lr)`` with ``lr`` kept in its state (:func:`optax.inject_hyperparams`): one rate per member of
    a stacked sweep, checkpointed with it."""

    def factory(lr):
        return optimizer(lr)

    return optax.inject_hyperparams(factory)(lr=lr)
