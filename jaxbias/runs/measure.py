"""Measurements of a :class:`~jaxbias.runs.Run` on its dataset: evaluation, the artifact report, LRP heatmaps."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbias import methods as methods_lib
from jaxbias import models as models_lib
from jaxbias import datasets as datasets_lib
from jaxbias import evaluation
from jaxbias.datasets import Dataset
from jaxbias.explain import make_lrp_model, supported
from jaxbias.report import heatmap_overlay, heatmaps_before_after
from jaxbias.runs.run import Run, fit_method_state, input_shape, restore
from jaxbias.workdir import run_path

#: The layer and fitter of the reference CAV every artifact report measures along.
REPORT_CAV = {"layer": "block4", "cav": "signal"}


def base_of(run: Run) -> Run:
    """The run a corrected run started from (``init_from``), else the run itself."""
    src = run.config.init_from
    if src is None:
        return run
    return src if isinstance(src, Run) else restore(src)


def with_base(run: Run) -> Run:
    """``run`` with its base (``init_from``) restored once and held in memory, so that
    several measurements of a corrected run (evaluate, heatmaps) share one restore."""
    src = run.config.init_from
    if src is None or isinstance(src, Run):
        return run
    return dataclasses.replace(run, config=dataclasses.replace(run.config, init_from=restore(src)))


def report_layer(run: Run) -> str | None:
    """The layer of the artifact report's CAV on ``run``'s model: ``REPORT_CAV``'s (``block4``, the bundled conv
    net's last block) where the model has it, else its last tapped feature map (``(B, H, W, C)``), else its last
    tapped layer before the logits; ``None`` when it taps none (a network of yours trained without ``--layers``
    by a method without a layer)."""
    order: dict[str, int] = {}
    model = models_lib.bind(run.module, run.state.model_state, train=False)

    def acts(x):  # traced once, nothing computed: the tapped layers in forward order, and their ranks
        out = model(run.state.params, x)
        order.update((k, v.ndim) for k, v in out.acts.items() if k != "logits")
        return out.logits

    jax.eval_shape(acts, jax.ShapeDtypeStruct((1, *input_shape(run.record)), jnp.float32))
    if REPORT_CAV["layer"] in order:
        return REPORT_CAV["layer"]
    maps = [k for k, ndim in order.items() if ndim == 4]
    return (maps or list(order) or [None])[-1]


def reference_cav(run: Run, dataset: Dataset, *, layer: str = REPORT_CAV["layer"], cav: str = REPORT_CAV["cav"]):
    """The artifact CAV (signal, max-pooled) fitted on ``run``'s model at ``layer``."""
    rrc = methods_lib.get("rrclarc")
    return fit_method_state(rrc, rrc.Hparams(layer=layer, cav=cav), run.tapped([layer]), dataset).cav


def artifact_report(run: Run, dataset: Dataset, *, cav=None, chosen=None) -> dict[str, Any]:
    """:func:`jaxbias.evaluation.artifact_report` of a run, TCAV along ``cav`` (default: fitted on its base at
    :func:`report_layer`)."""
    base = base_of(run)
    layer = report_layer(base) or report_layer(run)  # a base that taps nothing: the layer its correction tapped
    if layer is None:
        raise ValueError(f"the artifact report fits its CAV at a layer of the model, and {run.config.model!r} taps "
                         "none: train it with --layers naming one")
    if cav is None:
        cav = reference_cav(base, dataset, layer=layer)
    run = run.tapped([layer])
    return evaluation.artifact_report(run.inference_model(), run.state.params, dataset.evals, cav=cav, layer=layer,
                                      target_class=dataset.target_class, chosen=chosen)


def evaluate(run: Run, data: Any = None) -> dict[str, Any]:
    """``{"workdir", "epoch", "config", "eval"}`` and, on an artifact dataset (:attr:`Dataset.artifact`),
    ``artifact_report``.

    ``data``: the run's dataset already loaded (``None``: read from its configuration).
    """
    dataset = run.config.load_data(data)
    out = {"workdir": run.workdir, "epoch": run.epoch, "config": run.record, "eval": run.evaluate(dataset)}
    if dataset.artifact:
        out["artifact_report"] = artifact_report(run, dataset)
    return out


def heatmaps(run: Run, data: Any = None, *, out_dir: str | None = None, n: int = 8) -> list[str]:
    """LRP heatmaps (EpsilonPlusFlat, true class) of a run, written as ``<out_dir>/heatmaps.png``.

    The images are the dataset's choice (:func:`jaxbias.datasets.shown`: artifact runs the stamped test images
    of the artifact class, Biased-MNIST runs unbiased test images, others the first of their first evaluation
    set); a corrected run (``init_from``) shows its base model's maps above its own. ``data`` as for
    :func:`evaluate` (checked after the arguments: a bad ``n`` reads no data).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (images to show); got {n!r}")
    if not datasets_lib.images(run.config.dataset):
        raise ValueError(f"heatmaps need an image dataset {datasets_lib.image_names()}; {run.workdir!r} is "
                         f"{run.config.dataset!r}")
    if not supported(run.module):
        raise ValueError(f"{run.workdir!r}: LRP applies its rules to a network's layers, and {run.config.model!r} "
                         "is written as functions (no layers to intercept)")
    dataset = run.config.load_data(data)
    picked = datasets_lib.shown(dataset, n)
    x, y = np.asarray(picked.x), np.asarray(picked.y)

    def relevance(r: Run):
        fn = make_lrp_model(r.module, {"params": r.state.params, **r.state.model_state}, edit=r.edits())
        return np.asarray(fn(jnp.asarray(x), jnp.asarray(y)))

    out_dir = out_dir or run.workdir
    if out_dir is None:
        raise ValueError("out_dir is needed for a run that has no workdir")
    os.makedirs(out_dir, exist_ok=True)
    path = run_path(out_dir, "heatmaps")
    titles = [f"label {int(v)}" for v in y]
    if run.config.init_from is not None:
        return [heatmaps_before_after(x, relevance(base_of(run)), relevance(run), path, titles=titles,
                                      labels=("base", run.config.method))]
    return [heatmap_overlay(x, relevance(run), path, titles=titles)]
