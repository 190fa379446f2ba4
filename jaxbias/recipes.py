"""End-to-end runs shared by the CLI, the demo and the experiments.

Library functions with typed keyword arguments (no flags, no config files):
build the data, the model, the optimiser, train with a method, evaluate.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbias import methods as methods_lib
from jaxbias import models as models_lib
from jaxbias.train import FitResult, evaluate, fit, freeze, make_optimizer, make_predict
from jaxbias.types import Batch

#: Channels of the ReBias/EnD network; the offline demo uses a narrower one
#: because XLA:CPU trains 7×7 convolutions at 28×28 slowly (issue "CPU training speed").
FULL_CHANNELS = (16, 32, 64, 128)
DEMO_CHANNELS = (4, 8, 16, 32)


def make_hparams(method: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The method's ``Hparams`` with ``overrides`` applied, values cast to each field's type."""
    mod = methods_lib.get(method)
    if not hasattr(mod, "loss") or not hasattr(mod, "Hparams"):
        raise ValueError(f"method {method!r} is post-hoc (it edits a trained model) and has no training loss")
    hp_cls = mod.Hparams
    fields = {f.name: f for f in dataclasses.fields(hp_cls)}
    kwargs = {}
    for k, v in (overrides or {}).items():
        if k not in fields:
            raise ValueError(f"hyperparameter {k!r} is not one of method {method!r}'s: {sorted(fields)}")
        default = fields[k].default
        if isinstance(v, str) and default is not dataclasses.MISSING and default is not None:
            if isinstance(default, bool):
                v = v.lower() in ("1", "true", "yes")
            elif isinstance(default, (int, float)):
                v = type(default)(v)
            elif isinstance(default, tuple):
                v = tuple(int(s) for s in v.split(",") if s)
        kwargs[k] = v
    return hp_cls(**kwargs)


def biased_mnist_sets(data) -> tuple[Batch, dict[str, Batch]]:
    """Training batch and the two named test sets of a :class:`jaxbias.data.BiasedMNIST`."""
    train = Batch(data.train_x, data.train_y, data.train_bias)
    evals = {
        "biased": Batch(data.biased_x, data.biased_y, data.biased_bias),
        "unbiased": Batch(data.unbiased_x, data.unbiased_y, data.unbiased_bias),
    }
    return train, evals


def load_biased_mnist(*, rho: float, seed: int = 0, source: str = "offline", data_dir: str | None = None):
    from jaxbias.data import biased_mnist

    return biased_mnist(rho=rho, seed=seed, source=source, data_dir=data_dir)


def artifact_mnist_sets(data) -> tuple[Batch, dict[str, Batch]]:
    """Training batch (``bias`` = artifact indicator, ``mask`` = artifact pixels) and the clean/artifact test sets.

    In the ``artifact`` test set every image carries the artifact. The test sets
    have no ``bias`` (their accuracy views are per class, see
    :func:`jaxbias.correct.artifact_report`).
    """
    train = Batch(data.train_x, data.train_y, data.train_concept, data.train_mask)
    evals = {
        "clean": Batch(data.test_x, data.test_y, None, np.zeros(data.artifact_mask.shape, bool)),
        "artifact": Batch(data.artifact_x, data.test_y, None, data.artifact_mask),
    }
    return train, evals


def adult_sets(data) -> tuple[Batch, dict[str, Batch]]:
    """Adult: training batch (``bias`` = protected attribute index) and the ``test`` set.

    The test set carries no ``bias`` during training (its fairness views come
    from :func:`jaxbias.recipes.unlearn_workdir`).
    """
    train = Batch(data.train_x, data.train_y, data.train_a)
    return train, {"test": Batch(data.test_x, data.test_y)}


#: Datasets of ``train``/``evaluate``.
DATASETS = ("biased_mnist", "artifact_mnist", "adult")
#: Models of ``train``.
MODELS = ("simple_conv", "mlp")


def load_dataset(
    dataset: str,
    *,
    seed: int = 0,
    source: str = "offline",
    data_dir: str | None = None,
    rho: float = 0.99,
    artifact: str = "stamp",
    artifact_class: int = 0,
    p: float = 0.5,
    data_path: str | None = None,
    protected: str = "sex",
):
    """Load ``dataset`` and return ``(data, train Batch, {name: eval Batch})``.

    ``data_path``/``protected``: Adult only (the ``adult.data`` file; ``None``
    reads ``$JAXBIAS_ADULT``), split with ``seed``.
    """
    if dataset == "biased_mnist":
        data = load_biased_mnist(rho=rho, seed=seed, source=source, data_dir=data_dir)
        return (data, *biased_mnist_sets(data))
    if dataset == "artifact_mnist":
        from jaxbias.data.artifact_mnist import artifact_mnist

        data = artifact_mnist(artifact=artifact, target_class=artifact_class, p=p, seed=seed, source=source,
                              data_dir=data_dir)
        return (data, *artifact_mnist_sets(data))
    if dataset == "adult":
        from jaxbias.data.adult import load_adult

        data = load_adult(data_path, protected=protected, seed=seed)
        return (data, *adult_sets(data))
    raise ValueError(f"dataset must be one of {DATASETS}; got {dataset!r}")


def train_model(
    *,
    dataset: str = "biased_mnist",
    rho: float = 0.99,
    artifact: str = "stamp",
    artifact_class: int = 0,
    p: float = 0.5,
    method: str = "vanilla",
    hparams: Mapping[str, Any] | None = None,
    epochs: int = 80,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    decay_every: int | None = 20,
    seed: int = 0,
    data_seed: int | None = None,
    source: str = "offline",
    data_dir: str | None = None,
    channels: Sequence[int] = FULL_CHANNELS,
    last_activation: str = "tanh",
    workdir: str | None = None,
    resume: bool = False,
    progress: bool = True,
    eval_every: int = 1,
    data=None,
    log=None,
    init_from: str | None = None,
    trainable: Sequence[str] | None = None,
    model: str = "simple_conv",
    hidden: Sequence[int] = (100, 100, 100),
    data_path: str | None = None,
    protected: str = "sex",
    devices: int | None = None,
    feed: str = "auto",
) -> dict[str, Any]:
    """Train one model on a dataset with a method and evaluate it.

    ``model``: ``"simple_conv"`` (``channels``, ``last_activation``) or
    ``"mlp"`` (``hidden`` widths; FMD's Colored-MNIST MLP is the default).
    ``data_path``/``protected``: the Adult file and protected attribute.

    Returns a JSON-able dict: the configuration, final ``eval`` (per evaluation
    set: :func:`jaxbias.metrics.bias_report` for Biased MNIST, accuracy for the
    artifact sets), the per-epoch history and the wall-clock seconds. ``data``
    may pass an already loaded dataset (the seeds of a sweep share it).

    ``init_from``: the workdir of an earlier run to start from (fine-tuning, as
    the ClArC methods do): its newest parameters and model settings are used,
    and the method's state (e.g. a CAV) is fitted on them by
    :func:`fit_method_state` before training. ``trainable`` (with
    ``init_from``): train only these top-level parameter groups (e.g.
    ``("fc",)``, the head) with the model in evaluation mode, so frozen
    batch-norm statistics stay as they were.

    ``devices``: data parallelism over the first ``devices`` devices
    (:func:`jaxbias.parallel.make_mesh`; ``batch_size`` must divide by it);
    ``None`` trains on the default device alone. ``feed``: how batches reach
    the step (:mod:`jaxbias.engine`; ``"auto"``, ``"device"``, ``"host"``).
    """
    mesh = None
    if devices is not None:
        from jaxbias import parallel

        mesh = parallel.make_mesh(devices)  # before loading data: a bad count fails fast
        parallel.check_batch_size(batch_size, mesh)
    if trainable is not None and init_from is None:
        raise ValueError("trainable= freezes layers of a trained model: pass init_from=<workdir> too")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}; got {model!r}")
    if model == "simple_conv":
        model_cfg = {"name": "simple_conv", "channels": list(channels), "last_activation": last_activation}
    else:
        model_cfg = {"name": "mlp", "hidden": [int(h) for h in hidden]}
    base = None
    if init_from is not None:
        base = restore_workdir(init_from)
        model_cfg = base["config"]["model"]
    config = {
        "dataset": dataset,
        "rho": rho,
        "artifact": artifact,
        "artifact_class": artifact_class,
        "p": p,
        "method": method,
        "hparams": dict(hparams or {}),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "decay_every": decay_every,
        "seed": seed,
        "data_seed": seed if data_seed is None else data_seed,
        "source": source,
        "data_dir": data_dir,
        "model": model_cfg,
        "init_from": init_from,
        "trainable": None if trainable is None else list(trainable),
        "data_path": data_path,
        "protected": protected,
    }
    hp = make_hparams(method, hparams)
    mod = methods_lib.get(method)
    if init_from is None and _needs_fitted_state(mod):
        raise ValueError(
            f"method {method!r} corrects a trained model (it fits a CAV on it): train a base model first and pass "
            "init_from=<its workdir> (CLI: jaxbias correct --from <workdir>)"
        )
    if data is None:
        data, train, evals = load_dataset(
            dataset, seed=config["data_seed"], source=source, data_dir=data_dir, rho=rho, artifact=artifact,
            artifact_class=artifact_class, p=p, data_path=data_path, protected=protected,
        )
    else:
        train, evals = dataset_sets(data)
    config["source"] = getattr(data, "source", source)
    num_classes = int(np.max(train.y)) + 1 if dataset == "adult" else 10
    if init_from is None:
        model_cfg["num_classes"] = num_classes
    config["input_shape"] = [int(d) for d in np.shape(train.x)[1:]]
    module = _module(model_cfg)
    steps_per_epoch = train.x.shape[0] // batch_size
    tx = make_optimizer(lr=lr, weight_decay=weight_decay, steps_per_epoch=steps_per_epoch, decay_every=decay_every)
    init_params = method_state = None
    if base is not None:
        init_params = (base["state"].params, base["state"].model_state)
        method_state = fit_method_state(mod, hp, module, init_params, data, train)
        if trainable is not None:
            tx = freeze(tx, init_params[0], trainable)
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    t0 = time.perf_counter()
    result: FitResult = fit(
        module=module,
        method=mod,
        hp=hp,
        train=train,
        epochs=epochs,
        batch_size=batch_size,
        tx=tx,
        seed=seed,
        method_state=method_state,
        eval_sets=evals,
        eval_every=eval_every,
        workdir=workdir,
        resume=resume,
        progress=progress,
        config=config,
        log=log,
        init_params=init_params,
        train_mode=trainable is None,
        mesh=mesh,
        feed=feed,
    )
    seconds = time.perf_counter() - t0
    final = result.history[-1]["eval"] if result.history and "eval" in result.history[-1] else None
    if final is None:
        final = evaluate(make_predict(module), result.state.params, result.state.model_state, evals)
    out = {
        "config": config,
        "hparams": dataclasses.asdict(hp),
        "eval": final,
        "history": result.history,
        "seconds": seconds,
        "resumed_from": result.resumed_from,
    }
    if workdir is not None:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(out, f, indent=2)
    out["state"] = result.state
    return out


def train_biased_mnist(**kwargs) -> dict[str, Any]:
    """:func:`train_model` on Biased MNIST (``dataset="biased_mnist"``)."""
    return train_model(dataset="biased_mnist", **kwargs)


def dataset_sets(data) -> tuple[Batch, dict[str, Batch]]:
    """Training batch and named evaluation sets of a loaded dataset."""
    if hasattr(data, "train_concept"):
        return artifact_mnist_sets(data)
    if hasattr(data, "protected_columns"):
        return adult_sets(data)
    return biased_mnist_sets(data)


def _module(model_cfg: Mapping[str, Any]):
    kwargs = {"num_classes": int(model_cfg.get("num_classes", 10))}
    if model_cfg["name"] == "mlp":
        return models_lib.create("mlp", hidden=tuple(model_cfg["hidden"]), **kwargs)
    return models_lib.create(
        model_cfg["name"], channels=tuple(model_cfg["channels"]), last_activation=model_cfg["last_activation"],
        **kwargs,
    )


def _input_shape(config: Mapping[str, Any]) -> tuple[int, ...]:
    """One sample's shape as stored in config.json (runs before it was stored: 28×28×3 digits)."""
    return tuple(config.get("input_shape") or (28, 28, 3))


def fit_method_state(mod, hp, module, init_params, data, train: Batch):
    """The method's state fitted on the starting model (a CAV for the ClArC family).

    For the artifact dataset the CAV is fitted on the training images of the
    artifact class only (with vs without the artifact), so that it does not
    also encode "this is the artifact class".
    """
    params, model_state = init_params
    fit_on = train
    if hasattr(data, "train_concept"):
        keep = np.asarray(train.y) == data.target_class
        fit_on = Batch(*(None if a is None else np.asarray(a)[keep] for a in train))
    eval_model = models_lib.bind(module, model_state, train=False)
    return mod.init(eval_model, params, fit_on, hp=hp)


def restore_workdir(workdir: str) -> dict[str, Any]:
    """``{"config", "epoch", "state", "module"}`` of the newest checkpoint of a :func:`train_model` run."""
    from jaxbias.checkpoint import Checkpointer
    from jaxbias.train import create_train_state

    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: is {workdir!r} the workdir of `jaxbias train`?")
    with open(cfg_path) as f:
        config = json.load(f)
    module = _module(config["model"])
    params, model_state = models_lib.init(module, jax.random.key(0), np.zeros((1, *_input_shape(config)), np.float32))
    tx = make_optimizer(lr=config["lr"], weight_decay=config["weight_decay"], decay_every=config["decay_every"])
    if config.get("trainable"):
        tx = freeze(tx, params, config["trainable"])
    mod = methods_lib.get(config["method"])
    hp = make_hparams(config["method"], config.get("hparams"))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        epoch = ckpt.latest_epoch()
        if epoch is None:
            raise FileNotFoundError(f"{workdir!r} holds no checkpoint yet")
        if config.get("init_from"):  # a fine-tuned run carries a fitted state of the same structure
            method_state = _state_like(mod, hp, module, (params, model_state), config)
        else:
            method_state = mod.init()
        target = create_train_state(params, model_state, tx, key=jax.random.key(0), method_state=method_state)
        state, _ = ckpt.restore(target)
    finally:
        ckpt.close()
    return {"config": config, "epoch": epoch, "state": state, "module": module, "hp": hp, "method": mod}


def _needs_fitted_state(mod) -> bool:
    """Whether ``mod.init`` needs a model and data (the ClArC family) rather than nothing."""
    import inspect

    params = inspect.signature(mod.init).parameters.values()
    return any(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in params)


def _state_like(mod, hp, module, init_params, config):
    """A placeholder method state of the right structure to restore a checkpoint into.

    Only the ClArC family fits a state here (``State(cav, z_plus, z_minus)``);
    the others' state is empty.
    """
    layer = getattr(hp, "layer", None)
    if layer is None or "cav" not in getattr(mod.State, "_fields", ()):
        return mod.init()
    params, model_state = init_params
    bound = models_lib.bind(module, model_state, train=False)
    shapes = jax.eval_shape(lambda p: bound(p, np.zeros((1, *_input_shape(config)), np.float32)), params)
    c = shapes.acts[layer].shape[-1]
    return mod.State(jnp.zeros(c, jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))


def load_run_dataset(config: Mapping[str, Any]):
    """:func:`load_dataset` with the data settings a run stored in its config.json."""
    return load_dataset(
        config.get("dataset", "biased_mnist"), seed=config["data_seed"], source=config["source"],
        data_dir=config["data_dir"], rho=config["rho"], artifact=config.get("artifact", "stamp"),
        artifact_class=config.get("artifact_class", 0), p=config.get("p", 0.5),
        data_path=config.get("data_path"), protected=config.get("protected", "sex"),
    )


def evaluate_workdir(workdir: str, *, data=None) -> dict[str, Any]:
    """Restore the newest checkpoint of a :func:`train_model` run and evaluate it."""
    base = restore_workdir(workdir)
    config = base["config"]
    if data is None:
        data, _, evals = load_run_dataset(config)
    else:
        _, evals = dataset_sets(data)
    state = base["state"]
    report = evaluate(make_predict(base["module"]), state.params, state.model_state, evals)
    out = {"workdir": workdir, "epoch": base["epoch"], "config": config, "eval": report}
    if config.get("dataset") == "artifact_mnist":
        out["artifact_report"] = _artifact_report_of(base, data)
    return out


def _artifact_report_of(run: Mapping[str, Any], data) -> dict[str, Any]:
    """The controlled-artifact report of a restored run, TCAV along the artifact CAV.

    The CAV (signal, ``block4``, max-pooled) is fitted on the run's starting
    model: the base model for a corrected run (``init_from``), the model itself
    otherwise — the same direction :func:`jaxbias.correct.correct` reports on.
    """
    from jaxbias.evaluation import artifact_report

    config = run["config"]
    ref = restore_workdir(config["init_from"]) if config.get("init_from") else run
    train, evals = dataset_sets(data)
    rrc = methods_lib.get("rrclarc")
    ref_hp = rrc.Hparams(layer="block4")
    cav = fit_method_state(rrc, ref_hp, ref["module"], (ref["state"].params, ref["state"].model_state), data, train).cav
    state = run["state"]
    model = models_lib.bind(run["module"], state.model_state, train=False)
    if hasattr(run["method"], "corrected"):
        model = run["method"].corrected(model, state.method_state, run["hp"])
    return artifact_report(model, state.params, evals, cav=cav, layer="block4", target_class=data.target_class)


def heatmaps_workdir(workdir: str, *, out_dir: str | None = None, n: int = 8, data=None) -> list[str]:
    """LRP heatmaps (EpsilonPlusFlat, true class) of a run's newest checkpoint, written as PNG.

    Artifact runs: ``n`` stamped test images of the artifact class; a
    corrected run (``init_from``) shows its base model's maps above its own.
    Biased-MNIST runs: the first ``n`` images of the unbiased test set.
    Returns the written paths (``<out_dir>/heatmaps.png``, default the workdir).
    """
    from jaxbias.explain import make_lrp, to_graph
    from jaxbias.report import heatmap_overlay, heatmaps_before_after

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (images to show); got {n!r}")
    run = restore_workdir(workdir)
    config = run["config"]
    dataset = config.get("dataset", "biased_mnist")
    if dataset not in ("biased_mnist", "artifact_mnist"):
        raise ValueError(f"heatmaps need an image dataset (biased_mnist, artifact_mnist); {workdir!r} is {dataset!r}")
    if hasattr(run["method"], "corrected"):
        raise ValueError(f"{workdir!r} is a {config['method']} run: its projected forward pass has no layer graph "
                         "for LRP")
    if data is None:
        data, _, _ = load_run_dataset(config)
    _, evals = dataset_sets(data)
    if dataset == "artifact_mnist":
        keep = np.flatnonzero(np.asarray(evals["artifact"].y) == data.target_class)[:n]
        x, y = np.asarray(evals["artifact"].x)[keep], np.asarray(evals["artifact"].y)[keep]
    else:
        x, y = np.asarray(evals["unbiased"].x)[:n], np.asarray(evals["unbiased"].y)[:n]

    def relevance(r):
        st = r["state"]
        fn = make_lrp(to_graph(r["module"], {"params": st.params, **st.model_state}))
        return np.asarray(fn(jnp.asarray(x), jnp.asarray(y)))

    out_dir = out_dir or workdir
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "heatmaps.png")
    titles = [f"label {int(v)}" for v in y]
    if config.get("init_from"):
        base = restore_workdir(config["init_from"])
        return [heatmaps_before_after(x, relevance(base), relevance(run), path, titles=titles,
                                      labels=("base", config["method"]))]
    return [heatmap_overlay(x, relevance(run), path, titles=titles)]


def sweep_model(
    *,
    members: Sequence[Mapping[str, Any]],
    dataset: str = "biased_mnist",
    rho: float = 0.99,
    artifact: str = "stamp",
    artifact_class: int = 0,
    p: float = 0.5,
    method: str = "vanilla",
    hparams: Mapping[str, Any] | None = None,
    epochs: int = 80,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    decay_every: int | None = 20,
    seed: int = 0,
    data_seed: int | None = None,
    source: str = "offline",
    data_dir: str | None = None,
    channels: Sequence[int] = FULL_CHANNELS,
    last_activation: str = "tanh",
    model: str = "simple_conv",
    hidden: Sequence[int] = (100, 100, 100),
    data_path: str | None = None,
    protected: str = "sex",
    init_from: str | None = None,
    trainable: Sequence[str] | None = None,
    workdir: str | None = None,
    resume: bool = False,
    progress: bool = True,
    eval_every: int = 1,
    vectorize: bool = True,
    data=None,
    log=None,
    devices: int | None = None,
    data_devices: int = 1,
    feed: str = "auto",
) -> dict[str, Any]:
    """:func:`train_model` for several members at once (:func:`jaxbias.sweep.fit_sweep`).

    ``members``: one mapping per member with ``lr``, ``seed`` and numeric
    method hyperparameters (e.g. ``jaxbias.sweep.grid(lam=[0.1, 1, 10],
    seed=[0, 1])``); the other arguments are those of :func:`train_model` and
    are shared. ``hparams`` fixes the non-swept hyperparameters. With
    ``init_from`` the method state (a CAV) is fitted once on the starting
    model and shared by every member.

    Returns a JSON-able dict: ``config``, ``members`` (per member: its
    ``settings``, ``final`` training metrics of the last epoch, ``eval`` and
    ``history``), ``seconds``, ``resumed_from`` and ``traces`` (compilations
    of the step).

    ``devices``: split the members over the first ``devices`` devices
    (:func:`jaxbias.parallel.make_sweep_mesh`), each member's batch over
    ``data_devices`` of them; ``feed`` as for :func:`train_model`.
    """
    from jaxbias.sweep import fit_sweep

    mesh = None
    if devices is not None:
        from jaxbias import parallel

        mesh = parallel.make_sweep_mesh(devices, data=data_devices)  # before loading data: fails fast

    if trainable is not None and init_from is None:
        raise ValueError("trainable= freezes layers of a trained model: pass init_from=<workdir> too")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}; got {model!r}")
    if model == "simple_conv":
        model_cfg = {"name": "simple_conv", "channels": list(channels), "last_activation": last_activation}
    else:
        model_cfg = {"name": "mlp", "hidden": [int(h) for h in hidden]}
    base = None
    if init_from is not None:
        base = restore_workdir(init_from)
        model_cfg = base["config"]["model"]
    hp = make_hparams(method, hparams)
    mod = methods_lib.get(method)
    if init_from is None and _needs_fitted_state(mod):
        raise ValueError(
            f"method {method!r} corrects a trained model (it fits a CAV on it): train a base model first and pass "
            "init_from=<its workdir>"
        )
    config = {
        "dataset": dataset, "rho": rho, "artifact": artifact, "artifact_class": artifact_class, "p": p,
        "method": method, "hparams": dict(hparams or {}), "members": [dict(m) for m in members], "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "decay_every": decay_every, "seed": seed,
        "data_seed": seed if data_seed is None else data_seed, "source": source, "data_dir": data_dir,
        "model": model_cfg, "init_from": init_from, "trainable": None if trainable is None else list(trainable),
        "data_path": data_path, "protected": protected, "vectorize": vectorize,
    }
    if data is None:
        data, train, evals = load_dataset(
            dataset, seed=config["data_seed"], source=source, data_dir=data_dir, rho=rho, artifact=artifact,
            artifact_class=artifact_class, p=p, data_path=data_path, protected=protected,
        )
    else:
        train, evals = dataset_sets(data)
    config["source"] = getattr(data, "source", source)
    if init_from is None:
        model_cfg["num_classes"] = int(np.max(train.y)) + 1 if dataset == "adult" else 10
    config["input_shape"] = [int(d) for d in np.shape(train.x)[1:]]
    module = _module(model_cfg)
    init_params = method_state = None
    if base is not None:
        init_params = (base["state"].params, base["state"].model_state)
        method_state = fit_method_state(mod, hp, module, init_params, data, train)
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    t0 = time.perf_counter()
    result = fit_sweep(
        module=module, method=mod, hp=hp, members=members, train=train, epochs=epochs, batch_size=batch_size,
        lr=lr, weight_decay=weight_decay, decay_every=decay_every, trainable=trainable, seed=seed,
        method_state=method_state, eval_sets=evals, eval_every=eval_every, workdir=workdir, resume=resume,
        progress=progress, config={"dataset": dataset, "model": model_cfg}, log=log, init_params=init_params,
        train_mode=trainable is None, vectorize=vectorize, mesh=mesh, feed=feed,
    )
    seconds = time.perf_counter() - t0
    rows = []
    for i, settings in enumerate(result.members):
        hist = result.history[i]
        last = hist[-1] if hist else {}
        final_eval = last.get("eval")
        if final_eval is None:
            final_eval = evaluate(make_predict(module), result.member_params(i), result.member_model_state(i), evals)
        final = {k: v for k, v in last.items() if k not in ("epoch", "member", "settings", "seconds", "eval")}
        rows.append({"member": i, "settings": settings, "final": final, "eval": final_eval, "history": hist})
    out = {"config": config, "hparams": dataclasses.asdict(hp), "members": rows, "seconds": seconds,
           "resumed_from": result.resumed_from, "traces": result.traces}
    if workdir is not None:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(out, f, indent=2)
    out["result"] = result
    return out
