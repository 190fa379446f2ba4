"""End-to-end runs with keyword arguments: the run layer (:mod:`jaxbias.runs`) called without a config value.

Each function takes the fields of :class:`jaxbias.runs.RunConfig` as keyword
arguments plus where and how to run (``workdir``, ``resume``, ``progress``,
``log``, ``data``), builds the configuration and calls the run layer; the
demo, the experiments and users' scripts call these.
"""
from __future__ import annotations

from typing import Any, Mapping

from jaxbias import datasets as datasets_lib
from jaxbias.runs.config import DEMO_CHANNELS, FULL_CHANNELS, RunConfig
from jaxbias.runs.run import Run, restore, sweep, train
from jaxbias.runs.measure import evaluate as _evaluate
from jaxbias.runs.measure import heatmaps as _heatmaps

__all__ = ["DATASETS", "DEMO_CHANNELS", "FULL_CHANNELS", "evaluate_workdir", "heatmaps_workdir",
           "load_biased_mnist", "load_dataset", "restore_workdir", "sweep_model", "train_model",
           "train_biased_mnist"]

#: Datasets of ``train``/``evaluate``.
DATASETS = tuple(datasets_lib.available())


def _config(settings: Mapping[str, Any]) -> RunConfig:
    settings = dict(settings)
    if settings.get("hparams") is None:
        settings.pop("hparams", None)
    return RunConfig.from_dict(settings)


def load_dataset(dataset: str, *, seed: int = 0, **data_settings: Any):
    """Load ``dataset`` and return ``(data, train Batch, {name: eval Batch})``.

    ``data_settings``: fields of the dataset's ``Settings`` (:mod:`jaxbias.datasets`,
    e.g. ``rho``, ``source``); ``seed`` is the data's seed.
    """
    ds = datasets_lib.load(dataset, data_settings, seed=seed)
    return ds.raw, ds.train, dict(ds.evals)


def load_biased_mnist(*, rho: float, seed: int = 0, source: str = "offline", data_dir: str | None = None):
    """The Biased MNIST protocol object (:func:`jaxbias.data.biased_mnist`)."""
    return load_dataset("biased_mnist", rho=rho, seed=seed, source=source, data_dir=data_dir)[0]


def train_model(*, workdir: str | None = None, resume: bool = False, progress: bool = True, log=None, data=None,
                **settings: Any) -> dict[str, Any]:
    """Train one model (:func:`jaxbias.runs.train`); ``settings`` are :class:`RunConfig` fields.

    Returns a JSON-able dict: ``config`` (``config.json``), ``hparams``, final
    ``eval`` (per evaluation set: :func:`jaxbias.metrics.bias_report` on Biased
    MNIST, accuracy on the artifact sets), the per-epoch ``history``,
    ``seconds`` and ``resumed_from``; plus ``state`` (the
    :class:`~jaxbias.train.TrainState`) and ``run`` (the :class:`~jaxbias.runs.Run`).
    ``data`` may pass an already loaded dataset (the seeds of a sweep share it).
    """
    run = train(_config(settings), data=data, workdir=workdir, resume=resume, progress=progress, log=log)
    return {**run.results, "state": run.state, "run": run}


def train_biased_mnist(**kwargs) -> dict[str, Any]:
    """:func:`train_model` on Biased MNIST (``dataset="biased_mnist"``)."""
    return train_model(dataset="biased_mnist", **kwargs)


def sweep_model(*, members, workdir: str | None = None, resume: bool = False, progress: bool = True, log=None,
                data=None, **settings: Any) -> dict[str, Any]:
    """:func:`train_model` for several members at once (:func:`jaxbias.runs.sweep`).

    ``members``: one mapping per member with ``lr``, ``seed`` and numeric
    method hyperparameters (e.g. ``jaxbias.sweep.grid(lam=[0.1, 1, 10],
    seed=[0, 1])``); the other settings are shared. With ``init_from`` the
    method state (a CAV) is fitted once on the starting model and shared by
    every member. ``devices``/``data_devices``: the members over that many
    devices, each member's batch over ``data_devices`` of them.

    Returns the JSON-able results (``config``, ``members``, ``seconds``,
    ``resumed_from``, ``traces``) plus ``result`` (the :class:`~jaxbias.sweep.SweepResult`) and ``sweep``
    (the :class:`~jaxbias.runs.Sweep`: ``sweep.member(i)`` is member ``i`` as a :class:`~jaxbias.runs.Run`).
    """
    sw = sweep(_config({**settings, "members": tuple(members)}), data=data, workdir=workdir, resume=resume,
                    progress=progress, log=log)
    return {**sw.results, "result": sw.result, "sweep": sw}


def restore_workdir(workdir: str) -> Run:
    """The newest checkpoint of a :func:`train_model` run (:func:`jaxbias.runs.restore`)."""
    return restore(workdir)


def evaluate_workdir(workdir: str, *, data=None) -> dict[str, Any]:
    """Restore the newest checkpoint of a run and evaluate it (:func:`jaxbias.runs.measure.evaluate`)."""
    return _evaluate(restore(workdir), data)


def heatmaps_workdir(workdir: str, *, out_dir: str | None = None, n: int = 8, data=None) -> list[str]:
    """LRP heatmaps of a run's newest checkpoint (:func:`jaxbias.runs.measure.heatmaps`)."""
    return _heatmaps(restore(workdir), data, out_dir=out_dir, n=n)
