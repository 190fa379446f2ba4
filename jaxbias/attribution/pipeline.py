"""End to end: train a region classifier, calibrate it, write maps and figures.

Library functions with typed keyword arguments on arrays; the run layer
(:func:`jaxbias.runs.attribute`, the ``attribute`` command) and the
``region_attribution`` experiment call them.
"""
from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from jaxbias.attribution import maps as maps_lib
from jaxbias.attribution.classifier import RegionClassifier, calibration, map_set, train_region_classifier
from jaxbias.attribution.network import RegionResNet, resnet18, small

ARCHS = ("small", "resnet18")


class AttributionData(NamedTuple):
    """What an attribution run needs.

    ``attr_x``/``attr_c``: the region classifier's training images and
    confounder labels; ``val_x``/``val_c``: calibration images; ``map_x``: the
    images whose maps are wanted (the target task's training set); ``region``:
    the true confounder region ``(H, W)`` when known, else ``None``. The image
    sets may be streamed :class:`~jaxbias.data.lazy.LazyImages`: they are read
    a batch at a time.
    """

    attr_x: np.ndarray
    attr_c: np.ndarray
    val_x: np.ndarray
    val_c: np.ndarray
    map_x: np.ndarray
    region: np.ndarray | None
    name: str


def build_module(arch: str, *, num_positions: int, num_classes: int = 2, widths: Sequence[int] = (16, 32, 64),
                 blocks: Sequence[int] = (1, 1, 1), stem: str | None = None) -> RegionResNet:
    """``"small"`` (configurable widths/blocks/stem) or ``"resnet18"`` (64/128/256/512 × 2 blocks).

    Example:
      >>> net = build_module("resnet18", num_positions=2401)
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if arch == "resnet18":
        return resnet18(num_classes=num_classes, num_positions=num_positions, stem=stem or "imagenet")
    return small(num_classes=num_classes, num_positions=num_positions, widths=widths, blocks=blocks,
                 stem=stem or "small")


def attribute(
    data: AttributionData,
    *,
    patch: int,
    stride: int,
    arch: str = "small",
    widths: Sequence[int] = (16, 32, 64),
    blocks: Sequence[int] = (1, 1, 1),
    stem: str | None = None,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 2e-3,
    label_smoothing: float = 0.1,
    seed: int = 0,
    measure: str = "top",
    q: float = 0.7,
    n_bins: int = 15,
    map_batch_size: int = 32,
    maps_out: np.ndarray | None = None,
    progress: bool = False,
    log: Callable[[dict], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the region classifier on ``data.attr_*``, calibrate on ``data.val_*``, map ``data.map_x``.

    Computes only, writes nothing (:func:`jaxbias.runs.attribute` keeps the
    maps, figures and summary in a run directory). ``extra`` entries join the
    summary (e.g. the run layer's data settings). Calibration and the maps go
    ``map_batch_size`` images at a time; the specific maps are written into
    ``maps_out`` (an ``(N, H, W)`` array, e.g. a float16 memmap: memory then does
    not grow with ``N``), or a new float32 array when ``None``.

    Returns:
      the summary (``ece``, patch ``accuracy``, ``iou`` of the top-``(1−q)``
      region of the general map with the true region and ``region_coverage``, the
      share of the true region inside it, when known; history, seconds)
      plus ``"classifier"``, ``"specific"`` and ``"general"`` (not in the JSON).

    Example:
      >>> res = attribute(AttributionData(ax, ac, vx, vc, x, region, "mine"), patch=16, stride=4)
      >>> res["iou"], res["ece"]
    """
    maps_lib.check_q(q)
    if measure not in maps_lib.MEASURES:
        raise ValueError(f"measure must be one of {maps_lib.MEASURES}, got {measure!r}")
    hw = tuple(data.attr_x.shape[1:3])
    p = maps_lib.grid_locations(hw, patch=patch, stride=stride).shape[0]
    module = build_module(arch, num_positions=p, widths=widths, blocks=blocks, stem=stem,
                          num_classes=max(int(np.max(data.attr_c)) + 1, 2))
    t0 = time.perf_counter()
    clf: RegionClassifier = train_region_classifier(
        data.attr_x, data.attr_c, patch=patch, stride=stride, module=module, epochs=epochs,
        batch_size=min(batch_size, data.attr_x.shape[0]), lr=lr, label_smoothing=label_smoothing, seed=seed,
        progress=progress, log=log)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    cal = calibration(clf, data.val_x, data.val_c, n_bins=n_bins, batch_size=map_batch_size)
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    specific, general = map_set(clf, data.map_x, measure=measure, batch_size=map_batch_size, out=maps_out)
    t_maps = time.perf_counter() - t0
    top = np.asarray(maps_lib.top_region(general, q))
    summary: dict[str, Any] = {
        "dataset": data.name, "image_size": list(hw), "patch": patch, "stride": stride, "positions": p,
        "arch": arch, "widths": list(module.widths), "blocks": list(module.blocks), "stem": module.stem,
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "label_smoothing": label_smoothing, "seed": seed,
        "measure": measure, "q": q,
        "attr_images": int(data.attr_x.shape[0]), "val_images": int(data.val_x.shape[0]),
        "map_images": int(data.map_x.shape[0]),
        "ece": cal["ece"], "patch_accuracy": cal["accuracy"], "mean_confidence": cal["mean_confidence"],
        "val_patches": cal["patches"], "reliability": cal["bins"],
        "top_region_fraction": float(top.mean()),
        "history": clf.history,
        "seconds": {"train": t_train, "calibration": t_cal, "maps": t_maps},
        "maps_per_second": data.map_x.shape[0] / t_maps, "patches_per_second": data.map_x.shape[0] * p / t_maps,
    }
    if data.region is not None:
        summary["iou"] = maps_lib.iou(top, data.region)
        summary["region_coverage"] = float(np.logical_and(top, data.region).sum() / max(int(data.region.sum()), 1))
        summary["true_region_fraction"] = float(np.mean(data.region))
    summary.update(extra or {})
    return {**summary, "classifier": clf, "specific": specific, "general": general}
