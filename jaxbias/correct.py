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

from jaxbias import models as models_lib
from jaxbias.evaluation import artifact_report, latent_gradient, latent_sensitivity, lrp_r_bias, tcav_test

__all__ = ["correct", "artifact_report", "latent_gradient", "latent_sensitivity", "lrp_r_bias", "tcav_test"]


def correct(
    *,
    base: str,
    method: str,
    hparams: Mapping[str, Any] | None = None,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    seed: int = 0,
    chosen: Sequence[int] | None = None,
    workdir: str | None = None,
    resume: bool = False,
    progress: bool = True,
    log=None,
    data=None,
    cav_layer: str = "block4",
    cav_method: str = "signal",
    trainable: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Correct the newest checkpoint of the artifact-dataset run in ``base`` with ``method``.

    Fine-tunes for ``epochs`` epochs (``0`` is allowed: P-ClArC needs no
    training) with Adam at ``lr``, then reports :func:`artifact_report` for the
    corrected model (P-ClArC evaluated through its projection). TCAV scores use
    one artifact CAV fitted on the *uncorrected* model (``cav_layer``,
    ``cav_method``) so that every correction is measured along the same
    direction. ``trainable=("fc",)`` fine-tunes only the head, with the
    network in evaluation mode (frozen batch-norm statistics).

    Returns:
      ``{"config", "report", "base_report", "seconds", "seconds_per_epoch", "history"}``.
    """
    from jaxbias import methods as methods_lib
    from jaxbias.recipes import (dataset_sets, fit_method_state, load_run_dataset, make_hparams, restore_workdir,
                                 train_model)

    base_run = restore_workdir(base)
    bcfg = base_run["config"]
    if bcfg.get("dataset") != "artifact_mnist":
        raise ValueError(f"correct needs a base run on the artifact dataset; {base!r} was trained on {bcfg.get('dataset')!r}")
    if data is None:
        data, _, _ = load_run_dataset(bcfg)
    train, evals = dataset_sets(data)
    module = base_run["module"]
    bstate = base_run["state"]
    eval_model = models_lib.bind(module, bstate.model_state, train=False)

    # one reference CAV on the uncorrected model, shared by every report
    rrc = methods_lib.get("rrclarc")
    ref_hp = rrc.Hparams(layer=cav_layer, cav=cav_method)
    ref_state = fit_method_state(rrc, ref_hp, module, (bstate.params, bstate.model_state), data, train)
    report_kw = dict(cav=ref_state.cav, layer=cav_layer, target_class=data.target_class, chosen=chosen)
    base_report = artifact_report(eval_model, bstate.params, evals, **report_kw)
    base_report.update(lrp_r_bias(module, {"params": bstate.params, **bstate.model_state}, evals["artifact"],
                                  target_class=data.target_class))

    t0 = time.perf_counter()
    res = train_model(
        dataset="artifact_mnist", artifact=bcfg["artifact"], artifact_class=bcfg["artifact_class"], p=bcfg["p"],
        method=method, hparams=hparams, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        decay_every=None, seed=seed, data_seed=bcfg["data_seed"], source=bcfg["source"], data_dir=bcfg["data_dir"],
        workdir=workdir, resume=resume, progress=progress, eval_every=max(epochs, 1), data=data, log=log,
        init_from=base, trainable=trainable,
    )
    seconds = time.perf_counter() - t0
    state = res["state"]
    mod = methods_lib.get(method)
    hp = make_hparams(method, hparams)
    model = models_lib.bind(module, state.model_state, train=False)
    if hasattr(mod, "corrected"):
        model = mod.corrected(model, state.method_state, hp)
    report = artifact_report(model, state.params, evals, **report_kw)
    if hasattr(mod, "corrected"):  # an edited forward pass (P-ClArC's projection) has no layer graph for LRP
        report.update({"r_bias": None, "r_bias_chosen": None, "r_bias_pull": None})
    else:
        report.update(lrp_r_bias(module, {"params": state.params, **state.model_state}, evals["artifact"],
                                 target_class=data.target_class))
    epoch_secs = [h["seconds"] for h in res["history"]]
    return {
        "config": {**res["config"], "base": base, "chosen": list(chosen) if chosen else [data.target_class]},
        "report": report,
        "base_report": base_report,
        "seconds": seconds,
        "seconds_per_epoch": float(np.median(epoch_secs)) if epoch_secs else 0.0,
        "history": res["history"],
        "state": state,
    }
