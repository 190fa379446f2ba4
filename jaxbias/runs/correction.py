"""Correct a trained model with a ClArC-family method or RRR, and measure the artifact's grip.

:func:`correct` fine-tunes (or, for P-ClArC, only edits) the newest checkpoint
of a ``jaxbias train`` run on the artifact dataset and reports
:func:`jaxbias.evaluation.artifact_report` and R_bias
(:func:`jaxbias.evaluation.lrp_r_bias`) before and after. The measurements
live in :mod:`jaxbias.evaluation` and are re-exported here.
"""
from __future__ import annotations

import dataclasses
import time
import typing
from typing import Any, Mapping, Sequence

import numpy as np

from jaxbias import methods as methods_lib
from jaxbias import settings as settings_lib
from jaxbias.concepts import METHODS as CAV_METHODS
from jaxbias.evaluation import artifact_report, latent_gradient, latent_sensitivity, lrp_r_bias, tcav_test
from jaxbias.explain import supported
from jaxbias.runs.config import RunConfig
from jaxbias.runs.measure import reference_cav, report_layer
from jaxbias.runs.run import Run, restore, train

__all__ = ["CorrectionConfig", "correct", "measured", "artifact_report", "latent_gradient", "latent_sensitivity",
           "lrp_r_bias", "tcav_test"]


@dataclasses.dataclass(frozen=True)
class CorrectionConfig:
    """How a trained model is corrected (``jaxbias correct``'s flags): the fine-tuning schedule and the report's CAV.

    The correction is a training run whose configuration is the base run's with these fields, the method and its
    hyperparameters replaced (:meth:`run_config`); the data and the model stay the base's.

    Attributes:
      epochs: fine-tuning epochs (0: P-ClArC, which corrects at inference, needs none).
      batch_size: the fine-tuning batch size.
      lr: Adam's learning rate (constant).
      weight_decay: decoupled weight decay of the fine-tuning.
      seed: shuffling (and the method's own randomness) of the fine-tuning.
      trainable: parameter groups that are fine-tuned (e.g. fc: the head only, the network in evaluation mode with
        its batch-norm statistics frozen); none = every parameter.
      cav_layer: where the reports' artifact CAV is fitted on the uncorrected model (none: block4 of the bundled
        conv net, else the model's last tapped feature map, else the method's layer).
      cav_method: the reports' CAV fitter.
    """

    CHOICES: typing.ClassVar[dict] = {"cav_method": CAV_METHODS}
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    seed: int = 0
    trainable: tuple[str, ...] | None = None
    cav_layer: str | None = None
    cav_method: str = "signal"

    def __post_init__(self):
        if self.trainable is not None and not isinstance(self.trainable, tuple):
            object.__setattr__(self, "trainable", tuple(self.trainable))  # a list from a caller or a JSON file
        settings_lib.check(self)
        settings_lib.need(self.epochs >= 0, self, "epochs", "a non-negative int")
        settings_lib.need(self.batch_size >= 1, self, "batch_size", "a positive int")
        settings_lib.need(self.lr > 0, self, "lr", "a positive float")
        settings_lib.need(self.weight_decay >= 0, self, "weight_decay", "a non-negative float")
        settings_lib.need(self.trainable != (), self, "trainable", "one or more parameter groups or none")

    def run_config(self, base: Run, method: str, hparams: Mapping[str, Any] | None = None) -> RunConfig:
        """The correction's training configuration: the uncorrected run ``base``'s, fine-tuned from its weights
        (``init_from``) with ``method`` under this schedule, on the same data draw, on one device."""
        cfg = base.config
        return cfg.replace(method=method, hparams=dict(hparams or {}), epochs=self.epochs, batch_size=self.batch_size,
                           lr=self.lr, weight_decay=self.weight_decay, decay_every=None, seed=self.seed,
                           data_seed=cfg.resolved_data_seed, eval_every=max(self.epochs, 1), init_from=base,
                           trainable=self.trainable, devices=None, members=None)


def correct(
    *,
    base: Any,
    method: str,
    hparams: Mapping[str, Any] | None = None,
    config: CorrectionConfig | None = None,
    chosen: Sequence[int] | None = None,
    workdir: str | None = None,
    resume: bool | str = False,
    progress: bool = True,
    log=None,
    data=None,
    base_report: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Correct the newest checkpoint of the artifact-dataset run in ``base`` with ``method`` (a dataset with a
    target class, ``clean`` and ``artifact`` evaluation sets: :attr:`jaxbias.datasets.Dataset.artifact`).

    ``config`` (:class:`CorrectionConfig`, default its defaults) with ``settings`` (any of its fields, e.g.
    ``epochs=1, lr=2e-3, trainable=("fc",)``) replaced is the schedule: fine-tunes for ``epochs`` epochs (``0``
    is allowed: P-ClArC needs no training) with Adam at ``lr``, then reports :func:`artifact_report` for the
    corrected model (P-ClArC evaluated through its projection). TCAV scores use
    one artifact CAV fitted on the *uncorrected* model (``cav_layer``, default
    :func:`jaxbias.runs.measure.report_layer`: ``block4`` of the bundled conv
    net, else the model's last tapped feature map, else the method's layer;
    ``cav_method``) so that
    every correction is measured along the same direction; a network of yours
    (``--model package.module:factory``) is tapped there too.
    ``trainable=("fc",)`` fine-tunes only the head, with the network in
    evaluation mode (frozen batch-norm statistics). R_bias needs LRP of the
    model (:func:`jaxbias.explain.supported`: any Linen network, a Linen or
    NNX network wrapped by the adapters; P-ClArC explained through its
    projection); for a function model it is ``None``.
    ``base_report=False`` skips the uncorrected model's report (``None``): an experiment correcting one base
    with several methods measures it once (:func:`measured`).

    Returns:
      ``{"config", "report", "base_report", "seconds", "seconds_per_epoch", "history"}``.
    """
    config = config or CorrectionConfig()
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(CorrectionConfig)})
    if unknown:
        raise TypeError(f"correct() got {', '.join(map(repr, unknown))}: not a field of CorrectionConfig "
                        f"({', '.join(f.name for f in dataclasses.fields(CorrectionConfig))})")
    config = dataclasses.replace(config, **settings)
    base_run = base if isinstance(base, Run) else restore(base)  # restored once, then passed on
    dataset = base_run.config.load_data(data)
    if not dataset.artifact:
        raise ValueError(f"correct needs a base run on an artifact dataset (artifact_mnist, or folder with "
                         f"--artifact); {base!r} was trained on {base_run.config.dataset!r}, which lacks "
                         f"{', '.join(dataset.artifact_missing)}")
    cav_layer = config.cav_layer or report_layer(base_run) or getattr(methods_lib.make_hparams(
        methods_lib.get(method), dict(hparams or {})), "layer", None)
    if cav_layer is None:
        raise ValueError(f"the report's CAV needs a layer and the model of {base!r} taps none: pass cav_layer "
                         "(--cav-layer) naming one of its submodules")
    base_run = base_run.tapped([cav_layer])  # a network of yours: tapped there, and so is the corrected run

    # one reference CAV on the uncorrected model, shared by every report
    cav = reference_cav(base_run, dataset, layer=cav_layer, cav=config.cav_method)
    base_report = measured(base_run, dataset, cav=cav, layer=cav_layer, chosen=chosen) if base_report else None

    t0 = time.perf_counter()
    run = train(config.run_config(base_run, method, hparams), data=dataset, workdir=workdir, resume=resume,
                progress=progress, log=log)
    seconds = time.perf_counter() - t0
    state = run.state
    report = measured(run, dataset, cav=cav, layer=cav_layer, chosen=chosen)
    epoch_secs = [h["seconds"] for h in run.history]
    return {
        "config": {**run.record, "base": base_run.workdir,
                   "chosen": list(chosen) if chosen else [dataset.target_class]},
        "report": report,
        "base_report": base_report,
        "seconds": seconds,
        "seconds_per_epoch": float(np.median(epoch_secs)) if epoch_secs else 0.0,
        "history": run.history,
        "state": state,
        "run": run,
    }


def measured(run: Any, dataset: Any, *, cav: Any, layer: str, chosen: Sequence[int] | None = None) -> dict[str, Any]:
    """The artifact report of ``run``'s inference model (:func:`jaxbias.evaluation.artifact_report`, TCAV along
    ``cav`` at ``layer``) with LRP's R_bias (P-ClArC through its projection), or R_bias ``None`` where LRP
    cannot explain the model (a function model: no layers for its rules)."""
    evals, target_class = dataset.evals, dataset.target_class
    report = artifact_report(run.inference_model(), run.state.params, evals, cav=cav, layer=layer,
                             target_class=target_class, chosen=chosen)
    if not supported(run.module):
        return {**report, "r_bias": None, "r_bias_chosen": None, "r_bias_pull": None}
    state = run.state
    return {**report, **lrp_r_bias(run.module, {"params": state.params, **state.model_state}, evals["artifact"],
                                   target_class=target_class, edit=run.edits())}
