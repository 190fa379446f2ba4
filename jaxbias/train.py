"""A method trained from scratch or from a model: :func:`fit`, one model; the training itself is
:mod:`jaxbias.training`'s, which knows no method.

:func:`method_loss` makes the step's ``loss_fn(params, model_state, method_state, batch, key) -> (loss, Aux)``
from a method module (``jaxbias.methods.<name>``) and a Flax model, :func:`initial_method_state` the method's
state; :func:`fit` builds the state and the step once from them and runs :func:`jaxbias.training.run_epochs`.
The names of :mod:`jaxbias.training` a script trains with (``TrainState``, ``make_optimizer``, ...) are
importable from here too.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, is_dataclass
from types import ModuleType
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbias import methods as methods_lib
from jaxbias import models as models_lib
from jaxbias.training import loop
from jaxbias.training.parallel import Layout, to_host
from jaxbias.training.state import (TrainState, adam_with_decay, create_train_state, freeze, make_optimizer,
                                    schedule_optimizer)
from jaxbias.training.step import LossFn, evaluate, make_predict, make_train_step, predict_in_batches
from jaxbias.types import Batch, ModelState, Params
from jaxbias.workdir import Store

__all__ = ["DROPOUT_STREAM", "FitResult", "LossFn", "Program", "TrainState", "adam_with_decay", "create_train_state", "evaluate",
           "build", "fit", "freeze", "hp_dict", "initial_method_state", "make_optimizer", "make_predict", "make_train_step",
           "method_loss", "predict_in_batches", "run", "schedule_optimizer"]


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


def initial_method_state(method: ModuleType, module: flax.linen.Module, hp: Any, variables: tuple[Params, ModelState],
                         train: Batch) -> Any:
    """``method.init`` on the starting model and the training data, for a method that trains from scratch.

    A method that fits its state on a trained model (``KIND.fits_on_model``,
    the ClArC family's CAV) needs that state passed in instead.
    """
    if methods_lib.kind(method).fits_on_model:
        raise _needs_fitted_state(method)
    params, model_state = variables
    return method.init(models_lib.bind(module, model_state, train=False), params, train, hp=hp)


def _needs_fitted_state(method: ModuleType) -> ValueError:
    return ValueError(f"method {methods_lib.name_of(method)!r} fits its state (a CAV) on a trained model: pass "
                      "method_state= (e.g. its init on the trained model), or use jaxbias.runs with init_from=<workdir>")


def hp_dict(hp: Any) -> dict[str, Any]:
    """A method's ``Hparams`` as a plain dict (``{}`` for ``None``)."""
    return asdict(hp) if is_dataclass(hp) else dict(hp or {})


@dataclass
class FitResult:
    state: TrainState
    history: list[dict[str, Any]]
    resumed_from: int | None


@dataclass(frozen=True)
class Program:
    """A method on a model with an optimiser, made into what the loop runs (:func:`build`): built once, checked
    abstractly before anything is written (:meth:`check`), then run (:func:`run`).

    Attributes:
      init: ``init(train) -> TrainState``, the state at step 0: the model's variables (from the seed's init key
        or the starting weights, copied), the method's state (its own, or fitted on ``train``), the optimiser's.
      step: ``step(state, batch) -> (state, metrics)``, pure (:func:`jaxbias.training.make_train_step`).
      predict: ``predict(params, model_state, x) -> logits`` in evaluation mode, jitted.
      data_key: the key the epochs' shuffles fold in.
      meta: the method's name and hyperparameters, for the checkpoints' record.
      num_classes: the model's classes (``None``: not declared), which the training labels must fall in.
    """

    init: Callable[[Batch], TrainState]
    step: Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]
    predict: Callable[[Params, ModelState, jax.Array], jax.Array]
    data_key: jax.Array
    meta: Mapping[str, Any]
    num_classes: int | None = None

    def check(self, train: Batch, batch_size: int) -> None:
        """Trace :attr:`init` on the training arrays' shapes and one :attr:`step` on a batch of ``batch_size`` rows
        (``jax.eval_shape``: nothing is computed), so that a layer the model lacks, a model that cannot take the
        data or a method state of the wrong shape fails here, in the method's or the model's own words."""
        whole = Batch(*(None if a is None else jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in train))
        batch = Batch(*(None if a is None else jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype)
                        for a in whole))
        jax.eval_shape(lambda t, b: self.step(self.init(t), b), whole, batch)


def build(
    *,
    module: flax.linen.Module,
    method: ModuleType,
    hp: Any,
    tx: optax.GradientTransformation,
    seed: int = 0,
    method_state: Any = None,
    init_params: tuple[Params, ModelState] | None = None,
    train_mode: bool = True,
    augment: Callable[[jax.Array, Batch], Batch] | None = None,
) -> Program:
    """:class:`Program` of ``method`` (with ``hp``) on ``module`` trained by ``tx``, keys from ``seed``:
    ``init_key, data_key, step_key = split(key(seed), 3)``. ``method_state``: the method's fitted state (the
    ClArC family's CAV), else ``method.init`` on the starting model and the training data. ``train_mode=False``
    runs the model in evaluation mode while training (frozen batch-norm statistics). ``augment``: transforms
    each training batch inside the step (:class:`jaxbias.training.augment.Augment`)."""
    init_key, data_key, step_key = jax.random.split(jax.random.key(seed), 3)
    if method_state is None and methods_lib.kind(method).fits_on_model:
        raise _needs_fitted_state(method)  # before anything is traced

    def init(train: Batch) -> TrainState:
        if init_params is None:
            params, model_state = models_lib.init(module, init_key, jnp.asarray(train.x[:1]))
        else:  # copies: the jitted step donates the state, which must not delete the caller's arrays
            params, model_state = jax.tree.map(jnp.array, init_params)
        if method_state is None:
            state = initial_method_state(method, module, hp, (params, model_state), train)
        else:  # a copy, for the same reason (the caller's CAV etc.)
            state = jax.tree.map(jnp.array, method_state)
        return create_train_state(params, model_state, tx, key=step_key, method_state=state)

    return Program(init=init, step=make_train_step(method_loss(method, module, hp, train=train_mode), tx,
                                                   augment=augment),
                   predict=make_predict(module), data_key=data_key,
                   meta={"method": method.__name__.rsplit(".", 1)[-1], "hparams": hp_dict(hp)},
                   num_classes=getattr(module, "num_classes", None))


def run(
    program: Program,
    *,
    train: Batch,
    epochs: int,
    batch_size: int,
    eval_sets: Mapping[str, Batch] | None = None,
    eval_every: int = 1,
    store: Store | None = None,
    resume: bool = False,
    drop_last: bool = True,
    progress: bool = True,
    config: Mapping[str, Any] | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    feed: str = "auto",
) -> FitResult:
    """Train ``program`` for ``epochs`` epochs (:func:`jaxbias.training.run_epochs`), kept in ``store``; the
    arguments are :func:`fit`'s."""
    if epochs < 0:
        raise ValueError(f"epochs must be ≥ 0, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    n = loop.check_train(train, program.num_classes)
    if drop_last and n < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the training set ({n} samples) with drop_last")
    loop.choose_feed(feed, train)  # a bad name fails before anything is built
    layout = Layout() if mesh is None else Layout.data_parallel(mesh)
    layout.check(batch_size=batch_size)
    if not drop_last and n % batch_size:
        layout.check(batch_size=n % batch_size, name=f"the last batch of an epoch (drop_last=False, n={n})")
    state = program.init(train)
    train_step, predict = program.step, program.predict

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

    out = loop.run_epochs(
        step=lambda st, batch, _: train_step(st, batch), lanes=[loop.Lane(state, (), program.data_key)], train=train,
        epochs=epochs, batch_size=batch_size, drop_last=drop_last, feed=feed, layout=layout, records=records,
        store=store, resume=resume, progress=progress, meta={**program.meta, **dict(config or {})},
        log=None if log is None else (lambda rows: log(rows[0])),
    )
    return FitResult(state=out.lanes[0].state, history=out.rows, resumed_from=out.resumed_from)


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
    augment: Callable[[jax.Array, Batch], Batch] | None = None,
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

    ``augment`` (:class:`jaxbias.training.augment.Augment`): random flips / crops of each training batch inside
    the step, masks moved with their images, drawn from the step's key (a resumed run repeats them).

    ``feed``: how batches reach the step (:mod:`jaxbias.training.loop`): ``"device"``
    keeps the training set on the device and runs each epoch as one compiled
    scan, ``"host"`` gathers and sends every batch, ``"auto"`` picks
    ``"device"`` when the data fit. Both give the same numbers.

    ``mesh`` (:func:`jaxbias.training.parallel.make_mesh`): data parallelism. The state
    is replicated on the mesh, every batch of ``batch_size`` rows is split over
    its devices (``batch_size`` must divide by the device count; checked before
    anything is compiled). The numbers match the single-device run up to
    summation order. With several processes ``batch_size`` is global and each
    process places only its own rows (see :mod:`jaxbias.training.parallel`).
    """
    program = build(module=module, method=method, hp=hp, tx=tx, seed=seed, method_state=method_state,
                    init_params=init_params, train_mode=train_mode, augment=augment)
    return run(program, train=train, epochs=epochs, batch_size=batch_size, eval_sets=eval_sets,
               eval_every=eval_every, store=None if workdir is None else Store(workdir), resume=resume,
               drop_last=drop_last, progress=progress, config=config, log=log, mesh=mesh, feed=feed)
