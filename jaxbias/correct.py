"""Correct a trained model with a ClArC-family method or RRR, and measure the artifact's grip.

:func:`correct` fine-tunes (or, for P-ClArC, only edits) the newest checkpoint
of a ``jaxbias train`` run on the artifact dataset and reports
:func:`jaxbias.evaluation.artifact_report` and R_bias
(:func:`jaxbias.evaluation.lrp_r_bias`) before and after. The measurements
live in :mod:`jaxbias.evaluation` and are re-exported here.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from jaxbias import methods as methods_lib
from jaxbias import runs
from jaxbias.explain import supported
from jaxbias.runs.measure import reference_cav, report_layer
from jaxbias.evaluation import artifact_report, latent_gradient, latent_sensitivity, lrp_r_bias, tcav_test

__all__ = ["correct", "measured", "artifact_report", "latent_gradient", "latent_sensitivity", "lrp_r_bias", "tcav_test"]


def correct(
    *,
    base: Any,
    method: str,
    hparams: Mapping[str, Any] | None = None,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    seed: int = 0,
    chosen: Sequence[int] | None = None,
    workdir: str | None = None,
    resume: bool | str = False,
    progress: bool = True,
    log=None,
    data=None,
    cav_layer: str | None = None,
    cav_method: str = "signal",
    trainable: Sequence[str] | None = None,
    base_report: bool = True,
) -> dict[str, Any]:
    """Correct the newest checkpoint of the artifact-dataset run in ``base`` with ``method``.

    Fine-tunes for ``epochs`` epochs (``0`` is allowed: P-ClArC needs no
    training) with Adam at ``lr``, then reports :func:`artifact_report` for the
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

    base_run = base if isinstance(base, runs.Run) else runs.restore(base)  # restored once, then passed on
    if base_run.config.dataset != "artifact_mnist":
        raise ValueError(f"correct needs a base run on the artifact dataset; {base!r} was trained on "
                         f"{base_run.config.dataset!r}")
    cav_layer = cav_layer or report_layer(base_run) or getattr(methods_lib.make_hparams(
        methods_lib.get(method), dict(hparams or {})), "layer", None)
    if cav_layer is None:
        raise ValueError(f"the report's CAV needs a layer and the model of {base!r} taps none: pass cav_layer "
                         "(--cav-layer) naming one of its submodules")
    base_run = base_run.tapped([cav_layer])  # a network of yours: tapped there, and so is the corrected run
    bcfg = base_run.config
    dataset = bcfg.load_data(data)

    # one reference CAV on the uncorrected model, shared by every report
    cav = reference_cav(base_run, dataset, layer=cav_layer, cav=cav_method)
    base_report = measured(base_run, dataset, cav=cav, layer=cav_layer, chosen=chosen) if base_report else None

    t0 = time.perf_counter()
    config = bcfg.replace(method=method, hparams=dict(hparams or {}), epochs=epochs, batch_size=batch_size, lr=lr,
                          weight_decay=weight_decay, decay_every=None, seed=seed, data_seed=bcfg.resolved_data_seed,
                          eval_every=max(epochs, 1), init_from=base_run,
                          trainable=None if trainable is None else tuple(trainable), devices=None, members=None)
    run = runs.train(config, data=dataset, workdir=workdir, resume=resume, progress=progress, log=log)
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
