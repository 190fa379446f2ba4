"""Method-agnostic training: ``TrainState``, ``make_train_step``, optimisers, evaluation
and the epoch loop with checkpoints, resume, JSON-lines metrics and a progress bar.

The step knows nothing about any method: it differentiates a
``loss_fn(params, model_state, method_state, batch, key) -> (loss, Aux)``.
:func:`method_loss` builds that function from a method module
(``jaxbias.methods.<name>``) and a Flax model.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, is_dataclass
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbias import models as models_lib
from jaxbias import engine
from jaxbias import methods as methods_lib
from jaxbias import metrics
from jaxbias.batching import map_batches
from jaxbias.parallel import Layout, to_host
from jaxbias.types import Aux, Batch, ModelState, Params
from jaxbias.workdir import Store

LossFn = Callable[[Params, ModelState, Any, Batch, jax.Array], tuple[jax.Array, Aux]]


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


#: What the step's key is folded with to give the network's dropout stream (:func:`method_loss`).
DROPOUT_STREAM = 0x0D


def method_loss(method: ModuleType, module: flax.linen.Module, hp: Any, *, train: bool = True) -> LossFn:
    """Adapt ``method.loss(params, state, batch, key, *, model, hp)`` to the step's signature.

    ``train=False`` runs the model in evaluation mode (batch-norm uses and keeps
    its running statistics): fine-tuning on top of frozen feature layers.
    """

    def loss_fn(params, model_state, method_state, batch, key):
        # the network's dropout draws from its own stream of the step's key (the method keeps ``key``)
        model = models_lib.bind(module, model_state, train=train,
                                key=jax.random.fold_in(key, DROPOUT_STREAM) if train else None)
        return method.loss(params, method_state, batch, key, model=model, hp=hp)

    return loss_fn


def make_train_step(
    loss_fn: LossFn, tx: optax.GradientTransformation
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """One optimiser step, pure: ``step(state, batch) -> (state, metrics)``.

    The caller jits it once (``jax.jit(step, donate_argnums=0)``). Metrics are
    the loss and the method's own scalars.
    """

    def step(state: TrainState, batch: Batch):
        key = jax.random.fold_in(state.key, state.step)
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
        engine.check_eval_sets({name: data}, num_classes=int(logits.shape[-1]))  # before any accuracy is computed
        pred = logits.argmax(-1)
        if data.bias is not None:
            report[name] = metrics.bias_report(pred, np.asarray(data.y), np.asarray(data.bias), num_biases=num_biases)
        else:
            report[name] = {"accuracy": metrics.accuracy(pred, np.asarray(data.y)), "count": int(pred.shape[0])}
    return report


def initial_method_state(method: ModuleType, module: flax.linen.Module, hp: Any, variables: tuple[Params, ModelState],
                         train: Batch) -> Any:
    """``method.init`` on the starting model and the training data, for a method that trains from scratch.

    A method that fits its state on a trained model (``KIND.fits_on_model``,
    the ClArC family's CAV) needs that state passed in instead.
    """
    if methods_lib.kind(method).fits_on_model:
        raise ValueError(
            f"method {methods_lib.name_of(method)!r} fits its state (a CAV) on a trained model: pass method_state= "
            "(e.g. its init on the trained model), or use jaxbias.runs with init_from=<workdir>"
        )
    params, model_state = variables
    return method.init(models_lib.bind(module, model_state, train=False), params, train, hp=hp)


def hp_dict(hp: Any) -> dict[str, Any]:
    """A method's ``Hparams`` as a plain dict (``{}`` for ``None``)."""
    return asdict(hp) if is_dataclass(hp) else dict(hp or {})


@dataclass
class FitResult:
    state: TrainState
    history: list[dict[str, Any]]
    resumed_from: int | None


def fit(
    *,
    module: flax.linen.Module,
    method: ModuleType,
    hp: Any,
    train: Batch,
    epochs: int,
    batch_size: int,
    tx: optax.GradientTransformation,
    seed: int = 0,
    method_state: Any = None,
    eval_sets: Mapping[str, Batch] | None = None,
    eval_every: int = 1,
    workdir: str | os.PathLike | None = None,
    resume: bool = False,
    drop_last: bool = True,
    progress: bool = True,
    config: Mapping[str, Any] | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    init_params: tuple[Params, ModelState] | None = None,
    train_mode: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    feed: str = "auto",
) -> FitResult:
    """Train ``module`` with ``method`` for ``epochs`` epochs.

    Keys: ``key = jax.random.key(seed)`` splits into the init, data and step keys;
    epoch ``e`` shuffles with ``fold_in(data_key, e)`` and step ``t`` uses
    ``fold_in(step_key, t)``, so a run killed after epoch ``k`` and restarted with
    ``resume=True`` replays exactly the uninterrupted run. With ``workdir`` a
    checkpoint is written after every epoch and metrics are appended to
    ``workdir/metrics.jsonl`` (one JSON object per epoch). ``train_mode=False``
    runs the model in evaluation mode while training (frozen batch-norm
    statistics; pair it with :func:`freeze` to train only some layers).

    ``feed``: how batches reach the step (:mod:`jaxbias.engine`): ``"device"``
    keeps the training set on the device and runs each epoch as one compiled
    scan, ``"host"`` gathers and sends every batch, ``"auto"`` picks
    ``"device"`` when the data fit. Both give the same numbers.

    ``mesh`` (:func:`jaxbias.parallel.make_mesh`): data parallelism. The state
    is replicated on the mesh, every batch of ``batch_size`` rows is split over
    its devices (``batch_size`` must divide by the device count; checked before
    anything is compiled). The numbers match the single-device run up to
    summation order. With several processes ``batch_size`` is global and each
    process places only its own rows (see :mod:`jaxbias.parallel`).
    """
    if epochs < 0:
        raise ValueError(f"epochs must be ≥ 0, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    n = engine.check_train(train, getattr(module, "num_classes", None))
    if drop_last and n < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the training set ({n} samples) with drop_last")
    engine.choose_feed(feed, train)  # a bad name fails before anything is built
    layout = Layout() if mesh is None else Layout.data_parallel(mesh)
    layout.check(batch_size=batch_size)
    if not drop_last and n % batch_size:
        layout.check(batch_size=n % batch_size, name=f"the last batch of an epoch (drop_last=False, n={n})")
    init_key, data_key, step_key = jax.random.split(jax.random.key(seed), 3)
    if init_params is None:
        params, model_state = models_lib.init(module, init_key, jnp.asarray(train.x[:1]))
    else:
        # copies: the jitted step donates the state, which must not delete the caller's arrays
        params, model_state = jax.tree.map(jnp.array, init_params)
    if method_state is None:
        method_state = initial_method_state(method, module, hp, (params, model_state), train)
    else:  # a copy: the jitted step donates the state, which must not delete the caller's CAV etc.
        method_state = jax.tree.map(jnp.array, method_state)
    state = create_train_state(params, model_state, tx, key=step_key, method_state=method_state)
    train_step = make_train_step(method_loss(method, module, hp, train=train_mode), tx)
    predict = make_predict(module)

    def records(epoch, sums, steps, lanes, seconds):
        st = lanes[0].state
        record: dict[str, Any] = {"epoch": epoch + 1, "step": int(to_host(st.step))}
        record.update({k: float(v) / steps for k, v in sums[0].items()})
        if not all(np.isfinite(v) for v in record.values() if isinstance(v, float)):
            raise FloatingPointError(f"non-finite training metrics at epoch {epoch + 1}: {record}")
        record["seconds"] = seconds
        if eval_sets and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            record["eval"] = evaluate(predict, st.params, st.model_state, eval_sets)
        return [record]

    out = engine.run_epochs(
        step=lambda st, batch, _: train_step(st, batch), lanes=[engine.Lane(state, (), data_key)], train=train,
        epochs=epochs, batch_size=batch_size, drop_last=drop_last, feed=feed, layout=layout, records=records,
        store=None if workdir is None else Store(workdir), resume=resume, progress=progress,
        meta={"method": method.__name__.rsplit(".", 1)[-1], "hparams": hp_dict(hp), **dict(config or {})},
        log=None if log is None else (lambda rows: log(rows[0])),
    )
    return FitResult(state=out.lanes[0].state, history=out.rows, resumed_from=out.resumed_from)
