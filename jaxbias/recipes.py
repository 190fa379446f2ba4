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
import numpy as np

from jaxbias import methods as methods_lib
from jaxbias import models as models_lib
from jaxbias.train import FitResult, evaluate, fit, make_optimizer, make_predict
from jaxbias.types import Batch

#: Channels of the ReBias/EnD network; the offline demo uses a narrower one
#: because XLA:CPU trains 7×7 convolutions at 28×28 slowly (issue "CPU training speed").
FULL_CHANNELS = (16, 32, 64, 128)
DEMO_CHANNELS = (4, 8, 16, 32)


def make_hparams(method: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The method's ``Hparams`` with ``overrides`` applied, values cast to each field's type."""
    mod = methods_lib.get(method)
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


def train_biased_mnist(
    *,
    rho: float,
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
) -> dict[str, Any]:
    """Train one model on Biased MNIST with a method and evaluate it.

    Returns a JSON-able dict: the configuration, final ``eval`` (biased and
    unbiased test reports from :func:`jaxbias.metrics.bias_report`), the
    per-epoch history and the wall-clock seconds. ``data`` may pass an already
    loaded :class:`jaxbias.data.BiasedMNIST` (the seeds of a sweep share it).
    """
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    config = {
        "dataset": "biased_mnist",
        "rho": rho,
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
        "model": {"name": "simple_conv", "channels": list(channels), "last_activation": last_activation},
    }
    hp = make_hparams(method, hparams)
    if data is None:
        data = load_biased_mnist(rho=rho, seed=config["data_seed"], source=source, data_dir=data_dir)
    config["source"] = getattr(data, "source", source)
    train, evals = biased_mnist_sets(data)
    module = models_lib.create("simple_conv", channels=tuple(channels), last_activation=last_activation)
    steps_per_epoch = train.x.shape[0] // batch_size
    tx = make_optimizer(lr=lr, weight_decay=weight_decay, steps_per_epoch=steps_per_epoch, decay_every=decay_every)
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    t0 = time.perf_counter()
    result: FitResult = fit(
        module=module,
        method=methods_lib.get(method),
        hp=hp,
        train=train,
        epochs=epochs,
        batch_size=batch_size,
        tx=tx,
        seed=seed,
        eval_sets=evals,
        eval_every=eval_every,
        workdir=workdir,
        resume=resume,
        progress=progress,
        config=config,
        log=log,
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


def evaluate_workdir(workdir: str, *, data=None) -> dict[str, Any]:
    """Restore the newest checkpoint of a ``train_biased_mnist`` run and evaluate it."""
    from jaxbias.checkpoint import Checkpointer
    from jaxbias.train import create_train_state

    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: is {workdir!r} the workdir of `jaxbias train`?")
    with open(cfg_path) as f:
        config = json.load(f)
    if data is None:
        data = load_biased_mnist(rho=config["rho"], seed=config["data_seed"], source=config["source"], data_dir=config["data_dir"])
    _, evals = biased_mnist_sets(data)
    m = config["model"]
    module = models_lib.create(m["name"], channels=tuple(m["channels"]), last_activation=m["last_activation"])
    params, model_state = models_lib.init(module, jax.random.key(0), np.asarray(evals["biased"].x[:1]))
    tx = make_optimizer(lr=config["lr"], weight_decay=config["weight_decay"], decay_every=config["decay_every"])
    mod = methods_lib.get(config["method"])
    target = create_train_state(params, model_state, tx, key=jax.random.key(0), method_state=mod.init())
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        epoch = ckpt.latest_epoch()
        state, meta = ckpt.restore(target)
    finally:
        ckpt.close()
    report = evaluate(make_predict(module), state.params, state.model_state, evals)
    return {"workdir": workdir, "epoch": epoch, "config": config, "eval": report}
