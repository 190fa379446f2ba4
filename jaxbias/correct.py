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

__all__ = ["correct", "artifact_report", "latent_gradient", "latent_sensitivity", "lrp_r_bias", "tcav_test"]


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
    base_report: bool | str = True,
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
    ``base_report``: ``True`` also reports the uncorrected model (``"base_report"``); ``False`` skips it
    (``None``: an experiment correcting one base with several methods measures it once); ``"only"``
    reports the uncorrected model and returns without training (``"report"`` and the rest ``None``).

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
    evals = dataset.evals
    bstate = base_run.state

    # one reference CAV on the uncorrected model, shared by every report
    cav = reference_cav(base_run, dataset, layer=cav_layer, cav=cav_method)
    report_kw = dict(cav=cav, layer=cav_layer, target_class=dataset.target_class, chosen=chosen)
    if base_report not in (True, False, "only"):
        raise ValueError(f"base_report must be True, False or 'only', not {base_report!r}")
    only_base = base_report == "only"
    if base_report:
        base_report = artifact_report(base_run.inference_model(), bstate.params, evals, **report_kw)
        base_report.update(_r_bias(base_run, evals, dataset.target_class))
    else:
        base_report = None
    if only_base:
        return {"config": None, "report": None, "base_report": base_report, "seconds": None,
                "seconds_per_epoch": None, "history": None, "state": None, "run": None}

    t0 = time.perf_counter()
    config = bcfg.replace(method=method, hparams=dict(hparams or {}), epochs=epochs, batch_size=batch_size, lr=lr,
                          weight_decay=weight_decay, decay_every=None, seed=seed, data_seed=bcfg.resolved_data_seed,
                          eval_every=max(epochs, 1), init_from=base_run,
                          trainable=None if trainable is None else tuple(trainable), devices=None, members=None)
    run = runs.train(config, data=dataset, workdir=workdir, resume=resume, progress=progress, log=log)
    seconds = time.perf_counter() - t0
    state = run.state
    report = artifact_report(run.inference_model(), state.params, evals, **report_kw)
    report.update(_r_bias(run, evals, dataset.target_class))
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


def _r_bias(run: Any, evals: Mapping[str, Any], target_class: int) -> dict[str, float | None]:
    """LRP's R_bias of a run's inference model (P-ClArC: through its projection), or ``None`` where LRP cannot
    explain it (a function model: no layers for its rules)."""
    if not supported(run.module):
        return {"r_bias": None, "r_bias_chosen": None, "r_bias_pull": None}
    state = run.state
    return lrp_r_bias(run.module, {"params": state.params, **state.model_state}, evals["artifact"],
                      target_class=target_class, edit=run.edits())
