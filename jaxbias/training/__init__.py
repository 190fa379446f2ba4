"""Training, for any model and any loss: the state, the optimisers, the step, the epoch loop and its feeds,
stacked members, device layouts and checkpoints. Nothing here knows a method or writes a file on its own.

- :mod:`.state`: :class:`TrainState` (the whole pytree a run checkpoints) and the optimisers;
- :mod:`.step`: ``step(state, batch)`` from a ``loss_fn`` (:data:`LossFn`), prediction, evaluation,
  stacking ``K`` states for a sweep;
- :mod:`.loop`: the one epoch loop (:func:`run_epochs`) with its host and device feeds; it keeps the run in
  the :class:`Store` it is handed (:class:`jaxbias.workdir.Store`: a run directory);
- :mod:`.parallel`: device meshes and shardings (data parallelism, members over devices, several hosts);
- :mod:`.checkpoint`: atomic, verified Orbax checkpoints.

:func:`jaxbias.train.fit` and :func:`jaxbias.sweep.fit_sweep` make a method's loss and state and run them
here.
"""
from jaxbias.training.loop import FEEDS, Lane, LoopResult, Store, run_epochs
from jaxbias.training.parallel import Layout
from jaxbias.training.state import (TrainState, adam_with_decay, create_train_state, freeze, inject_lr, make_optimizer,
                                    schedule_optimizer)
from jaxbias.training.step import LossFn, evaluate, make_predict, make_train_step, predict_in_batches, stack, unstack

__all__ = ["FEEDS", "Lane", "Layout", "LoopResult", "LossFn", "Store", "TrainState", "adam_with_decay",
           "create_train_state", "evaluate", "freeze", "inject_lr", "make_optimizer", "make_predict",
           "make_train_step", "predict_in_batches", "run_epochs", "schedule_optimizer", "stack", "unstack"]
