"""The step and evaluation, for any loss: nothing here knows a method.

A step differentiates ``loss_fn(params, model_state, method_state, batch, key) -> (loss, Aux)``
(:data:`LossFn`; :func:`jaxbias.train.method_loss` makes one from a method and a model);
sweeps stack ``K`` states along a leading axis (:func:`stack`) and vmap it.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbias import metrics
from jaxbias import models as models_lib
from jaxbias.batching import map_batches
from jaxbias.training.loop import check_eval_sets
from jaxbias.training.state import TrainState
from jaxbias.types import Aux, Batch, ModelState, Params

__all__ = ["AUGMENT_STREAM", "LossFn", "evaluate", "make_predict", "make_train_step", "predict_in_batches", "stack", "unstack"]

LossFn = Callable[[Params, ModelState, Any, Batch, jax.Array], tuple[jax.Array, Aux]]


#: folded into a step's key for its augmentation draw (the loss keeps the step's key itself)
AUGMENT_STREAM = 0x61756776


def make_train_step(
    loss_fn: LossFn, tx: optax.GradientTransformation, *, augment: Callable[[jax.Array, Batch], Batch] | None = None
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """One optimiser step, pure: ``step(state, batch) -> (state, metrics)``.

    The caller jits it once (``jax.jit(step, donate_argnums=0)``). Metrics are
    the loss and the method's own scalars. ``augment`` (e.g. a
    :class:`jaxbias.training.augment.Augment`) transforms the batch first, with
    the step's key folded with :data:`AUGMENT_STREAM`; without it the step is
    what it always was (the loss's key does not change).
    """

    def step(state: TrainState, batch: Batch):
        key = jax.random.fold_in(state.key, state.step)
        if augment is not None:
            batch = augment(jax.random.fold_in(key, AUGMENT_STREAM), batch)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.model_state, state.method_state, batch, key
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, model_state=aux.state, opt_state=opt_state)
        return new_state, {"loss": loss, **aux.metrics}

    return step


def make_predict(module: flax.linen.Module) -> Callable[[Params, ModelState, jax.Array], jax.Array]:
    """Jitted ``predict(params, model_state, x) -> logits`` in evaluation mode."""

    @jax.jit
    def predict(params, model_state, x):
        return models_lib.bind(module, model_state, train=False)(params, x).logits

    return predict


def predict_in_batches(predict, params, model_state, x: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Logits for a whole array (:func:`jaxbias.batching.map_batches`: one compilation for every batch)."""
    return map_batches(predict, x, args=(params, model_state), batch_size=batch_size)


def evaluate(
    predict, params, model_state, sets: Mapping[str, Batch], *, batch_size: int = 512, num_biases: int | None = None
) -> dict[str, dict[str, Any]]:
    """Accuracy views (:func:`jaxbias.metrics.bias_report`) on each named evaluation set."""
    report = {}
    for name, data in sets.items():
        logits = predict_in_batches(predict, params, model_state, data.x, batch_size=batch_size)
        check_eval_sets({name: data}, num_classes=int(logits.shape[-1]))  # before any accuracy is computed
        pred = logits.argmax(-1)
        if data.bias is not None:
            report[name] = metrics.bias_report(pred, np.asarray(data.y), np.asarray(data.bias), num_biases=num_biases)
        else:
            report[name] = {"accuracy": metrics.accuracy(pred, np.asarray(data.y)), "count": int(pred.shape[0])}
    return report


def stack(trees: Sequence[Any]) -> Any:
    """Stack pytrees of the same structure along a new leading axis (members)."""
    if len(trees) == 0:
        raise ValueError("stack needs at least one pytree")
    try:
        return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)
    except (ValueError, TypeError) as e:
        raise ValueError(f"the {len(trees)} pytrees to stack differ in structure or shapes: {e}") from e


def unstack(tree: Any, i: int) -> Any:
    """Member ``i`` of a stacked pytree."""
    return jax.tree.map(lambda a: a[i], tree)
