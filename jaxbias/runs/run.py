"""Runs: one preparation for single runs and sweeps, a :class:`Run` value passed in memory, workdirs.

:func:`train` and :func:`sweep` share :func:`prepare` (the configuration
checked, the devices, the starting model, the data, the model, the
hyperparameters and the method's state) and write the same ``config.json``;
they differ only in the loop they hand the prepared run to
(:func:`jaxbias.train.fit` or :func:`jaxbias.sweep.fit_sweep`, both on
:func:`jaxbias.training.loop.run_epochs`). :func:`restore` reads a workdir once into
a :class:`Run`; a run started from another (``init_from``) takes either a
workdir or that :class:`Run` itself, so experiments compose in memory.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from types import ModuleType
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxbias import methods as methods_lib
from jaxbias import models as models_lib
from jaxbias.models.normalize import normalized
from jaxbias.training import parallel
from jaxbias import settings as settings_lib
from jaxbias.data.sources import SOURCES
from jaxbias.runs import attribution
from jaxbias.runs.config import DERIVED, RunConfig
from jaxbias.datasets import Dataset
from jaxbias.training.checkpoint import Checkpointer, latest_epoch
from jaxbias.training.loop import check_eval_sets
from jaxbias.sweep import check_members, fit_sweep
from jaxbias.train import (Program, TrainState, build, create_train_state, evaluate, freeze, hp_dict, make_optimizer,
                           make_predict)
from jaxbias.train import run as run_program
from jaxbias.types import Batch, BoundModel
from jaxbias.workdir import lock as workdir_lock
from jaxbias.workdir import Store, holds_run, read_history, run_path, write_json

#: Settings a resumed run may change (how long, on what, fed how); everything else must match config.json.
RESUMABLE_CHANGES = ("epochs", "devices", "data_devices", "feed", "eval_every")
#: Settings that may name a file or folder: compared by the path they resolve to.
PATH_SETTINGS = ("data_path", "data_dir", "maps", "init_from", "data_file", "weights")


@dataclasses.dataclass
class Run:
    """A trained (or restored) run, passed in memory between train / correct / unlearn / evaluate.

    Attributes:
      config: the :class:`RunConfig`.
      record: ``config.json`` as written (the configuration plus the data's
        facts: the model's ``num_classes``, ``input_shape``).
      module: the Flax module; ``state``: its :class:`~jaxbias.train.TrainState`.
      method, hp: the method module and its ``Hparams``.
      history: per-epoch rows (``metrics.jsonl``); ``epoch``: epochs trained.
      workdir: where it lives (``None``: in memory only).
    """

    config: RunConfig
    record: dict[str, Any]
    module: Any
    state: TrainState
    method: ModuleType
    hp: Any
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    epoch: int | None = None
    workdir: str | None = None
    seconds: float | None = None
    resumed_from: int | None = None
    results: dict[str, Any] | None = None  # what train() wrote as results.json

    @property
    def variables(self) -> tuple[Any, Any]:
        return self.state.params, self.state.model_state

    def inference_model(self) -> BoundModel:
        """The model in evaluation mode as the method uses it at inference (P-ClArC: its projection)."""
        model = models_lib.bind(self.module, self.state.model_state, train=False)
        if methods_lib.kind(self.method).corrects_inference:
            model = self.method.corrected(model, self.state.method_state, self.hp)
        return model

    def edits(self) -> dict[str, Any] | None:
        """What the method changes in the forward pass at inference, ``{layer: function}`` (P-ClArC's
        projection), or ``None``: the network as trained. LRP explains the inference model with it."""
        if methods_lib.kind(self.method).corrects_inference:
            return dict(self.method.edits(self.state.method_state, self.hp))
        return None

    def evaluate(self, dataset: Dataset) -> dict[str, Any]:
        """Accuracy views on the dataset's evaluation sets (:func:`jaxbias.train.evaluate`)."""
        model = self.inference_model()
        return evaluate(lambda p, ms, x: model(p, x).logits, self.state.params, self.state.model_state,
                        dataset.evals)


    def tapped(self, layers: Any) -> "Run":
        """This run with its network tapped at ``layers`` too (a network of yours; see :func:`tap_layers`): same
        parameters and state, a module that also records these layers (a report's CAV layer). Else ``self``."""
        config = tap_layers(self.config, layers)
        if config is self.config:
            return self
        model = {**self.record["model"], "layers": list(config.model_settings.layers)}
        return dataclasses.replace(self, config=config, record={**self.record, "model": model},
                                   module=make_module(model, self.record.get("normalize")))


def tap_layers(config: RunConfig, layers: Any) -> RunConfig:
    """``config`` with its network tapped at ``layers`` too, when it is a network of yours (``--model
    package.module:factory``, whose ``layers`` setting lists the submodules it is tapped at): a tap changes no
    parameter, so the method's layer and a report's CAV layer join what ``--layers`` names. Other models (whose
    layers are their own), names already tapped and ``None`` leave ``config`` as it is."""
    if not models_lib.is_import(config.model):
        return config
    have = tuple(config.model_settings.layers)
    extra = tuple(dict.fromkeys(n for n in layers if isinstance(n, str) and n not in have))
    if not extra:
        return config
    return config.replace(model_settings={**settings_lib.as_dict(config.model_settings), "layers": have + extra})


@dataclasses.dataclass
class Prepared:
    """What :func:`train` and :func:`sweep` both start from."""

    config: RunConfig
    record: dict[str, Any]
    dataset: Dataset
    module: Any
    method: ModuleType
    hp: Any
    base: Run | None
    method_state: Any
    mesh: Any
    program: Program  # the single run's state and step (a sweep's check)
    weights: tuple[Any, Any] | None = None  # (params, model_state) read from config.weights

    @property
    def init_params(self) -> tuple[Any, Any] | None:
        """The starting run's variables, or the weights file's (``None``: initialise from the seed)."""
        return self.base.variables if self.base is not None else self.weights


def make_module(model: Mapping[str, Any], normalize: str | None = None, *, channels: int | None = None):
    """The Flax module of ``config.json``'s ``model`` entry (``{"name": ..., **settings, "num_classes": ...}``), behind
    its ``normalize`` entry's input normalisation (:mod:`jaxbias.models.normalize`; ``channels``: the inputs',
    checked against it) when there is one."""
    model = dict(model)
    name, num_classes = model.pop("name"), int(model.pop("num_classes", 10))
    return normalized(models_lib.build(name, model, num_classes=num_classes), normalize, channels=channels)


def input_shape(record: Mapping[str, Any]) -> tuple[int, ...]:
    """One sample's shape as stored in config.json (runs before it was stored: 28×28×3 digits)."""
    return tuple(record.get("input_shape") or (28, 28, 3))


def fit_method_state(method: ModuleType, hp: Any, run: Run, dataset: Dataset) -> Any:
    """The method's state fitted on ``run``'s model and the dataset's concept samples (a CAV for ClArC)."""
    model = models_lib.bind(run.module, run.state.model_state, train=False)
    return method.init(model, run.state.params, dataset.concept, hp=hp)


def prepare(config: RunConfig, *, data: Any = None, sweep: bool = False, read_weights: bool = True) -> Prepared:
    """Check ``config``, make the mesh, restore the starting run, load the data, build model and method state.

    ``data``: an already loaded dataset (a :class:`Dataset` or the loader's
    object, e.g. shared by the seeds of an experiment); ``None`` loads it.
    ``read_weights=False``: leave ``config.weights`` unread (a resumed run starts from its checkpoint).
    """
    if sweep and config.members is None:
        raise ValueError("a sweep needs members (e.g. jaxbias.sweep.grid(lam=[0.1, 1], seed=[0, 1]))")
    mesh = None
    if config.devices is not None:  # before the data: a bad count fails fast
        if sweep:
            mesh = parallel.make_sweep_mesh(config.devices, data=config.data_devices)
        else:
            mesh = parallel.make_mesh(config.devices)
            parallel.check_batch_size(config.batch_size, mesh)
    base = None
    if config.init_from is not None:
        base = config.init_from if isinstance(config.init_from, Run) else restore(config.init_from)
    if base is not None:  # the model is the starting run's, its input normalisation too: the configuration says so
        bc = base.config
        config = config.replace(model=bc.model, model_settings=bc.model_settings, normalize=bc.normalize)
    method = methods_lib.get(config.method)
    hp = methods_lib.make_hparams(method, config.hparams)
    config = tap_layers(config, [getattr(hp, "layer", None)])  # a network of yours: tapped where the method works
    if sweep:  # the members' settings (equal members, a NaN lr) before the data, and before any workdir is written
        check_members(method, hp, config.members, lr=config.lr, seed=config.seed)
    dataset = config.load_data(data)
    if config.maps is not None:  # attribution maps as the training masks (what targeted noise hides)
        dataset = attribution.resolve(config.maps).onto(config, dataset)
    labels = np.unique(np.asarray(dataset.train.y))
    if labels.size < 2:
        raise ValueError(f"every training sample of {config.dataset!r} has the label {labels.tolist()}: a classifier "
                         "needs at least two classes (check the data file or its label column)")
    origin = dataset.source  # what the loader read: the digits' source ("auto" resolved) or a data file
    read_file = origin is not None and origin not in SOURCES
    n_train = int(np.shape(dataset.train.x)[0])
    if n_train < config.batch_size:
        where = f" (from {origin})" if read_file else ""
        raise ValueError(f"batch_size {config.batch_size} is larger than the {n_train} training samples of "
                         f"{config.dataset!r}{where}: an epoch would have no full batch; lower batch_size "
                         "(--batch-size) or use more data")
    record = config.to_dict()
    if origin in SOURCES and "source" in record["data"]:
        record["data"]["source"] = origin
    if read_file:
        record["data_file"] = origin
    num_classes = dataset.num_classes if base is None else base.record["model"].get("num_classes", 10)
    record["model"]["num_classes"] = num_classes
    check_eval_sets(dataset.evals, num_classes)
    for field, what, labels in (("num_classes", "class", dataset.train.y), ("num_biases", "bias", dataset.train.bias)):
        count = getattr(hp, field, None)  # a method's label-range setting (EnD's one-hot codes) against the data
        if isinstance(count, int) and labels is not None and np.size(labels) and int(np.max(labels)) >= count:
            raise ValueError(f"{field}={count} (--{field.replace('_', '-')}) but the training data of "
                             f"{config.dataset!r} have {what} labels up to {int(np.max(labels))}: set it to at least "
                             f"{int(np.max(labels)) + 1}")
    record["input_shape"] = [int(d) for d in np.shape(dataset.train.x)[1:]]
    augment = config.augmentation
    if augment is not None:
        augment.check(np.shape(dataset.train.x))
    module = make_module(record["model"], config.normalize, channels=record["input_shape"][-1])
    weights = None
    if config.weights is not None and read_weights:  # checked against the model the run builds, before any workdir
        sample = jax.ShapeDtypeStruct((1, *np.shape(dataset.train.x)[1:]), np.asarray(dataset.train.x[:1]).dtype)
        weights = models_lib.load_weights(config.weights, module, sample)
    method_state = None if base is None else fit_method_state(method, hp, base, dataset)
    init_params = base.variables if base is not None else weights
    tx = _tx(config, n_train // config.batch_size, None if init_params is None else init_params[0])
    # the run's state and step, built once; a sweep's members are this program with other values
    program = build(module=module, method=method, hp=hp, tx=tx, seed=config.seed, method_state=method_state,
                    init_params=init_params, train_mode=config.trainable is None, augment=augment)
    program.check(dataset.train, config.batch_size)  # before any workdir is written
    return Prepared(config, record, dataset, module, method, hp, base, method_state, mesh, program, weights)


def resolve_resume(workdir: str | os.PathLike | None, resume: bool | str) -> bool:
    """``resume`` as a bool: ``"auto"`` resumes a workdir that holds a run and starts an empty one.

    ``True`` is strict: the workdir must hold a run (a typo in ``--workdir`` would otherwise start a
    new run silently). A run whose ``config.json`` exists but which was stopped before its first
    checkpoint resumes from epoch 0, which loses nothing (its settings are still checked).
    """
    if not (isinstance(resume, bool) or resume == "auto"):
        raise ValueError(f"resume must be True, False or 'auto'; got {resume!r}")
    if resume == "auto":
        return workdir is not None and holds_run(workdir)
    if resume and (workdir is None or not holds_run(workdir)):
        raise FileNotFoundError(f"resume: {'no workdir was given' if workdir is None else f'workdir {workdir} holds no run'}"
                                " (no config.json, no checkpoints/); drop --resume to start a new run, or pass "
                                "--auto-resume (resume='auto') to resume when there is a run and start otherwise")
    return bool(resume)


def _has_checkpoint(workdir: str | os.PathLike | None) -> bool:
    """Whether ``workdir`` holds a complete checkpoint: a run resumed from one starts from it, not from ``weights``."""
    return workdir is not None and latest_epoch(run_path(workdir, "checkpoint_dir")) is not None


def _same(key: str, saved: Any, now: Any) -> bool:
    """Whether a setting is unchanged; a path is the same file however it is spelled (relative, a symlink)."""
    if key in PATH_SETTINGS and isinstance(saved, str) and isinstance(now, str):
        return os.path.realpath(saved) == os.path.realpath(now)
    return saved == now


def _flat(record: Mapping[str, Any]) -> dict[str, Any]:
    """A ``config.json`` with the data settings beside the other keys (as runs wrote them before datasets had
    their own ``Settings``; such a file is read through :meth:`RunConfig.from_dict` to find them)."""
    record = dict(record)
    model = record.get("model")
    if isinstance(model, Mapping):
        # settings a model gained since the run was written compare as their defaults (kernel_size: 7); a model
        # no longer known compares as written
        fields = {k: v for k, v in model.items() if k not in ("name", "num_classes")}
        with contextlib.suppress(KeyError, ValueError, TypeError):
            record["model"] = {**model, **settings_lib.as_dict(models_lib.settings(model["name"], fields))}
    if "data" not in record:
        try:
            record["data"] = RunConfig.from_dict(record).to_dict()["data"]
        except (ValueError, TypeError):
            return record
        for k in record["data"]:
            record.pop(k, None)
    return {**record.pop("data"), **record}


def _own_workdir(workdir: str | None, record: Mapping[str, Any], resume: bool) -> None:
    """Write ``config.json`` (atomically) once the run may use ``workdir``.

    A workdir that already holds a run is refused unless ``resume``, before
    anything in it is touched; a resumed run must have been configured the
    same way (only :data:`RESUMABLE_CHANGES` may differ).
    """
    if workdir is None:
        return
    path = run_path(workdir, "config")
    if not resume and holds_run(workdir):
        raise FileExistsError(f"workdir {workdir} already holds a run; pass resume=True (--resume) to continue it "
                              "or choose an empty workdir")
    os.makedirs(workdir, exist_ok=True)
    if resume and os.path.exists(path):
        with open(path) as f:
            saved = _flat(json.load(f))
        now = _flat(record)
        keys = (set(saved) | set(now)) - set(RESUMABLE_CHANGES)
        # runs written before these settings existed lack them: compare only what both record
        differ = sorted(k for k in keys if k in saved and k in now and not _same(k, saved[k], now[k]))
        if differ:
            raise ValueError(f"{workdir!r} was configured differently ({', '.join(differ)}: saved "
                             f"{[saved[k] for k in differ]}, now {[now[k] for k in differ]}); resume it with "
                             "its own settings or use a new workdir")
    write_json(path, record)


def _tx(config: RunConfig, steps_per_epoch: int, params: Any):
    tx = make_optimizer(lr=config.lr, weight_decay=config.weight_decay, steps_per_epoch=steps_per_epoch,
                        decay_every=config.decay_every)
    return freeze(tx, params, config.trainable) if config.trainable is not None else tx


def train(config: RunConfig, *, data: Any = None, workdir: str | None = None, resume: bool | str = False,
          progress: bool = True, log: Callable[[dict[str, Any]], None] | None = None) -> Run:
    """Train one model as ``config`` says (:func:`jaxbias.train.fit`) and return the :class:`Run`.

    With ``workdir``: ``config.json`` (once), a checkpoint per epoch, ``metrics.jsonl``,
    ``results.json``. ``resume=True`` continues the run in ``workdir`` from its newest checkpoint (and
    refuses a workdir that holds no run); ``resume="auto"`` does so when it holds one and starts the run
    otherwise (:func:`resolve_resume`).
    """
    resume = resolve_resume(workdir, resume)  # before the data are loaded: a wrong workdir fails fast
    prep = prepare(config, data=data, read_weights=not (resume and _has_checkpoint(workdir)))
    with workdir_lock(workdir, enabled=jax.process_index() == 0):  # held until results.json is written
        return _train(prep, workdir, resume, progress, log)


def _train(prep: Prepared, workdir: str | None, resume: bool, progress: bool, log) -> Run:
    config = prep.config
    _own_workdir(workdir, prep.record, resume)
    t0 = time.perf_counter()
    result = run_program(prep.program, train=prep.dataset.train, epochs=config.epochs, batch_size=config.batch_size,
                         eval_sets=prep.dataset.evals, eval_every=config.eval_every,
                         store=None if workdir is None else Store(workdir), resume=resume, progress=progress,
                         config=prep.record, log=log, mesh=prep.mesh, feed=config.feed)
    run = Run(config=prep.config, record=prep.record, module=prep.module, state=result.state, method=prep.method,
              hp=prep.hp, history=result.history, epoch=config.epochs, workdir=workdir,
              seconds=time.perf_counter() - t0, resumed_from=result.resumed_from)
    run.results = {"config": prep.record, "hparams": hp_dict(prep.hp), "eval": final_eval(run, prep.dataset),
                   "history": run.history, "seconds": run.seconds, "resumed_from": run.resumed_from}
    _write_results(workdir, run.results)
    return run


def _write_results(workdir: str | None, results: Mapping[str, Any]) -> None:
    if workdir is not None and jax.process_index() == 0:
        write_json(run_path(workdir, "results"), results)


def final_eval(run: Run, dataset: Dataset) -> dict[str, Any]:
    """The last epoch's evaluation, or a fresh one when the last epoch was not evaluated."""
    last = run.history[-1] if run.history else {}
    return last["eval"] if "eval" in last else run.evaluate(dataset)


@dataclasses.dataclass
class Sweep:
    """A trained sweep: ``K`` members of one configuration, trained as one program.

    Attributes:
      config: the sweep's :class:`RunConfig` (``members`` set); ``record``: its ``config.json``.
      module, method: shared by every member.
      result: the :class:`~jaxbias.sweep.SweepResult` (stacked states, per-member settings,
        hparams and history, per-step losses).
      results: the JSON-able summary written as ``results.json`` (``config``, ``members``: per member
        ``settings``, ``final`` training metrics, ``eval``, ``history``; ``seconds``, ``resumed_from``,
        ``traces``).
      workdir: where it lives (``None``: in memory only).
    """

    config: RunConfig
    record: dict[str, Any]
    module: Any
    method: ModuleType
    result: Any
    results: dict[str, Any]
    workdir: str | None = None
    seconds: float | None = None

    def __len__(self) -> int:
        return len(self.result)

    def member(self, i: int) -> Run:
        """Member ``i`` as a single :class:`Run` (its own ``lr``, ``seed`` and hyperparameters in its config).

        The run is in memory (``workdir=None``): pass it on as ``init_from`` or to
        :func:`jaxbias.runs.correct`, evaluate or measure it like any other run.
        """
        state = self.result.member_state(i)  # checks the index
        settings = dict(self.result.members[i])
        lr, seed = settings.pop("lr", self.config.lr), settings.pop("seed", self.config.seed)
        config = self.config.replace(members=None, lr=lr, seed=seed, hparams={**self.config.hparams, **settings})
        record = {**self.record, **config.to_dict(), "model": self.record["model"],
                  **{k: self.record[k] for k in (*DERIVED, "data") if k in self.record}}
        return Run(config=config, record=record, module=self.module, state=state, method=self.method,
                   hp=self.result.hparams[i], history=self.result.history[i], epoch=self.config.epochs,
                   results=self.results["members"][i])


def sweep(config: RunConfig, *, data: Any = None, workdir: str | None = None, resume: bool | str = False,
          progress: bool = True, log: Callable[[list[dict[str, Any]]], None] | None = None) -> Sweep:
    """Train ``config.members`` as one program (:func:`jaxbias.sweep.fit_sweep`); same preparation as :func:`train`.

    Returns the :class:`Sweep`; its ``results`` are also written as ``results.json``.
    """
    resume = resolve_resume(workdir, resume)  # before the data are loaded: a wrong workdir fails fast
    prep = prepare(config, data=data, sweep=True, read_weights=not (resume and _has_checkpoint(workdir)))
    with workdir_lock(workdir, enabled=jax.process_index() == 0):  # held until results.json is written
        return _sweep(prep, workdir, resume, progress, log)


def _sweep(prep: Prepared, workdir: str | None, resume: bool, progress: bool, log) -> Sweep:
    config = prep.config
    _own_workdir(workdir, prep.record, resume)
    t0 = time.perf_counter()
    result = fit_sweep(
        module=prep.module, method=prep.method, hp=prep.hp, members=config.members, train=prep.dataset.train,
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
        decay_every=config.decay_every, trainable=config.trainable, seed=config.seed,
        method_state=prep.method_state, eval_sets=prep.dataset.evals, eval_every=config.eval_every,
        workdir=workdir, resume=resume, progress=progress,
        config={"dataset": config.dataset, "model": prep.record["model"]}, log=log, init_params=prep.init_params,
        train_mode=config.trainable is None, vectorize=config.vectorize, mesh=prep.mesh, feed=config.feed,
        augment=config.augmentation,
    )
    seconds = time.perf_counter() - t0
    rows, predict = [], make_predict(prep.module)  # one program for every member's final evaluation
    for i, settings in enumerate(result.members):
        hist = result.history[i]
        last = hist[-1] if hist else {}
        final_ev = last.get("eval")
        if final_ev is None:
            final_ev = evaluate(predict, result.member_params(i), result.member_model_state(i), prep.dataset.evals)
        final = {k: v for k, v in last.items() if k not in ("epoch", "member", "settings", "seconds", "eval")}
        rows.append({"member": i, "settings": settings, "final": final, "eval": final_ev, "history": hist})
    results = {"config": prep.record, "hparams": hp_dict(prep.hp), "members": rows, "seconds": seconds,
               "resumed_from": result.resumed_from, "traces": result.traces}
    _write_results(workdir, results)
    return Sweep(config=prep.config, record=prep.record, module=prep.module, method=prep.method, result=result,
                 results=results, workdir=workdir, seconds=seconds)


def _template_batch(record: Mapping[str, Any], n: int = 2) -> Batch:
    """A stand-in batch of this run's data shapes, made inside ``jax.eval_shape`` (so never materialised)."""
    shape = input_shape(record)
    mask = jnp.zeros((n, *shape[:2]), jnp.bool_) if len(shape) == 3 else None
    return Batch(jnp.zeros((n, *shape)), jnp.zeros((n,), jnp.int32), jnp.zeros((n,), jnp.int32), mask)


def restore(workdir: str) -> Run:
    """The newest checkpoint of a :func:`train` workdir as a :class:`Run`.

    The state is restored into the structure ``jax.eval_shape`` gives for a
    fresh state of the run (the method state from its ``init``): nothing is
    initialised or fitted to find it.
    """
    path = run_path(workdir, "config")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of `jaxbias train`?")
    with open(path) as f:
        record = json.load(f)
    if record.get("members"):
        raise ValueError(f"{workdir!r} is the workdir of a sweep ({len(record['members'])} members), not of one run: "
                         "evaluate, unlearn --from and correct --from take a `jaxbias train` workdir; a sweep's "
                         "members are scored in its results.json (in Python: runs.sweep(...).member(i))")
    config = RunConfig.from_dict(record)
    module = make_module(record["model"], record.get("normalize"))
    method = methods_lib.get(config.method)
    hp = methods_lib.make_hparams(method, config.hparams)
    config = tap_layers(config, [getattr(hp, "layer", None)])

    def fresh_state():  # traced by eval_shape: nothing below is computed
        params, model_state = models_lib.init(module, jax.random.key(0), jnp.zeros((1, *input_shape(record))))
        tx = _tx(config, 1, params)  # the schedule's length does not change the state's structure
        eval_model = models_lib.bind(module, model_state, train=False)
        method_state = method.init(eval_model, params, _template_batch(record), hp=hp)
        return create_train_state(params, model_state, tx, key=jax.random.key(0), method_state=method_state)

    template = jax.eval_shape(fresh_state)
    ckpt = Checkpointer(run_path(workdir, "checkpoint_dir"))
    try:
        if ckpt.latest_epoch() is None:
            raise FileNotFoundError(f"{workdir!r} holds no checkpoint yet")
        state, meta = ckpt.restore(template, set_aside=False)  # the newest that reads back whole; a reader moves nothing
        epoch = int(meta["epoch"])
    finally:
        ckpt.close()
    return Run(config=config, record=record, module=module, state=state, method=method, hp=hp,
               history=read_history(run_path(workdir, "metrics"), upto=epoch, strict=False), epoch=epoch,
               workdir=workdir)
