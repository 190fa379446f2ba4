"""Region attribution on the run layer: a dataset in, an :class:`Attribution` value out.

:func:`attribute` trains the region classifier on a run dataset's concept
set (its images and confounder labels), calibrates it on the dataset's
validation set (``val``, else ``test``) and maps every training image. The
:class:`Attribution` it returns carries the per-image maps, in the order of
the dataset's training set, and the data settings they were made on; a
training run takes it (or its workdir) as ``RunConfig(maps=...)`` and finds
the maps in its training batch's ``mask``, which is what targeted noise
hides::

    data = RunConfig(dataset="region_mnist", seed=0)
    att = attribute(data, RegionConfig(patch=16, stride=4), workdir="attr")
    run = train(data.replace(method="targeted_noise", hparams={"map": "specific"}, maps=att))

The computation itself is :func:`jaxbias.attribution.pipeline.attribute`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import os
import typing
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxbias import report
from jaxbias.attribution.maps import MEASURES
from jaxbias.attribution.pipeline import ARCHS, AttributionData
from jaxbias.attribution.pipeline import attribute as run_attribution
from jaxbias.data.lazy import is_lazy, take
from jaxbias.runs.config import RunConfig
from jaxbias.datasets import Dataset
from jaxbias.workdir import run_path, write_json

@dataclasses.dataclass(frozen=True)
class RegionConfig:
    """The region classifier and its maps (``jaxbias attribute``'s flags).

    Attributes:
      patch: patch side k of the grid (the paper: 32 on 128×128).
      stride: grid stride s (the paper: 2); it must tile the image.
      arch: the region classifier: ``small`` (the widths, blocks and stem below) or ``resnet18``.
      widths: ``small``: channels per stage.
      blocks: ``small``: basic blocks per stage.
      stem: ``small`` (3×3, stride 1) or ``imagenet`` (7×7/2 and a max-pool); ``None``: small for
        ``small``, imagenet for ``resnet18``.
      epochs: training epochs of the region classifier (Adam, constant rate).
      batch_size: its batch size.
      map_batch_size: images per batch of the calibration and the maps (a streamed set decodes that many at a time).
      lr: its learning rate.
      label_smoothing: its label smoothing.
      seed: initialisation, shuffling and patch sampling (``None``: the data configuration's seed).
      measure: the patch confidence behind a map (``top``, ``margin``, ``entropy``).
      q: quantile of a map's top region (its IoU with the true region, when known).
      n_bins: reliability bins of the calibration.
    """

    patch: int = 16
    stride: int = 4
    arch: str = "small"
    widths: tuple[int, ...] = (8, 16, 32)
    blocks: tuple[int, ...] = (1, 1, 1)
    stem: str | None = None
    epochs: int = 5
    batch_size: int = 64
    map_batch_size: int = 32
    lr: float = 2e-3
    label_smoothing: float = 0.1
    seed: int | None = None
    measure: str = "top"
    q: float = 0.7
    n_bins: int = 15

    #: The fields that take one of a few values (``jaxbias attribute`` offers them as choices).
    CHOICES: typing.ClassVar[dict[str, tuple]] = {"arch": ARCHS, "stem": (None, "small", "imagenet"),
                                                  "measure": MEASURES}

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "blocks", tuple(self.blocks))
        for name in ("widths", "blocks"):
            v = getattr(self, name)
            if not v or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in v):
                raise ValueError(f"{name} must be positive ints, one per stage; got {v!r}")
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {getattr(self, name)!r}")
        for name, ok, what in (("lr", lambda v: v > 0, "a positive number"),
                               ("label_smoothing", lambda v: 0 <= v < 1, "a number in [0, 1)"),
                               ("q", lambda v: 0 <= v <= 1, "a quantile in [0, 1]")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or not ok(v):
                raise ValueError(f"{name} must be {what}; got {v!r}")
        for name in ("patch", "stride", "epochs", "batch_size", "map_batch_size", "n_bins"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'epochs' else 'positive'} int; "
                                 f"got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RegionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown region settings {unknown}; expected some of {sorted(known)}")
        return cls(**d)


@dataclasses.dataclass(eq=False)  # a value passed on, compared by identity (it holds arrays)
class Attribution:
    """A trained region classifier's maps of one dataset's training images.

    Attributes:
      data: the data the maps were made on (:func:`data_settings` of the :class:`RunConfig`).
      region: the :class:`RegionConfig`.
      specific: ``(N, H, W)`` per-image maps, min-max normalised, in the training set's order: float32 in
        memory, or for a streamed dataset ``specific_maps.npy`` itself (float16, mapped read-only).
      general: ``(H, W)`` their mean map.
      summary: ``attribution.json`` (calibration, IoU with the true region when known, seconds, files).
      classifier: the :class:`~jaxbias.attribution.classifier.RegionClassifier` (``None`` when restored).
      workdir: where it lives (``None``: in memory only).
    """

    data: dict[str, Any]
    region: RegionConfig
    specific: np.ndarray
    general: np.ndarray
    summary: dict[str, Any]
    classifier: Any = None
    workdir: str | None = None

    def onto(self, config: RunConfig, dataset: Dataset) -> Dataset:
        """``dataset`` with these maps as its training masks; refuses other data than the maps were made on."""
        mine = data_settings(config)
        differ = [k for k in mine if self.data.get(k) != mine[k]]
        if differ:
            where = self.workdir or "the attribution"
            raise ValueError(f"maps from {where} were made on other data ({', '.join(differ)}: "
                             f"{[self.data.get(k) for k in differ]}, this run {[mine.get(k) for k in differ]})")
        return dataset.with_train_mask(self.specific)


def data_settings(config: RunConfig) -> dict[str, Any]:
    """What decides a run's training images: its dataset, that dataset's settings and the data seed."""
    d = config.to_dict()
    return {"dataset": d["dataset"], **d["data"], "data_seed": d["data_seed"]}


def attribute(config: RunConfig, region: RegionConfig | None = None, *, data: Any = None, workdir: str | None = None,
              limit: int | None = None, n_figure: int = 8, progress: bool = False,
              log: Callable[[dict], None] | None = None) -> Attribution:
    """Train the region classifier of ``config``'s dataset and map its training images.

    Args:
      config: the data settings (``dataset`` must have a concept set with confounder labels:
        ``region_mnist``, ``celeba``, or any other whose concept set is labelled).
      region: the classifier and map settings (default :class:`RegionConfig`).
      data: the dataset already loaded (``None``: loaded from ``config``).
      workdir: writes ``attribution.json`` (with ``data`` and ``region`` beside the summary),
        ``specific_maps.npy`` (float16), ``general_map.npy``, ``maps.png``, ``reliability.png``; a
        workdir that already holds an attribution is refused. A streamed dataset needs one: its
        images are read a batch at a time and its maps written into ``specific_maps.npy`` as they
        are made (memory does not grow with the number of images).
      limit: keep the first ``limit`` images of every set (quick runs; the maps then cover only
        those training images, and a training run on the full set refuses them).
    """
    region = region or RegionConfig()
    if workdir is not None and os.path.exists(run_path(workdir, "attribution")):
        raise FileExistsError(f"workdir {workdir} already holds an attribution; choose an empty workdir")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 2):
        raise ValueError(f"limit must be an int >= 2 images, got {limit!r}")
    dataset = config.load_data(data)
    if dataset.concept.bias is None:
        raise ValueError(f"dataset {dataset.name!r} has no confounder labels in its concept set to train a region "
                         "classifier on")
    calib = dataset.evals.get("val", dataset.evals.get("test"))
    if calib is None or calib.bias is None:
        raise ValueError(f"dataset {dataset.name!r} needs a 'val' or 'test' set with confounder labels (calibration)")

    def cut(a):  # a streamed set stays on disk (take decodes nothing)
        return take(a, slice(None, limit)) if is_lazy(a) or limit is not None else np.asarray(a)

    inputs = AttributionData(cut(dataset.concept.x), cut(dataset.concept.bias), cut(calib.x), cut(calib.bias),
                             cut(dataset.train.x), dataset.region, dataset.name)
    streamed = any(is_lazy(a) for a in (inputs.attr_x, inputs.val_x, inputs.map_x))
    if streamed and workdir is None:
        raise ValueError(f"dataset {dataset.name!r} is streamed: its maps are written to disk as they are made, so "
                         "attribute needs a workdir (workdir=..., or load it with stream false)")
    settings = region.to_dict()
    settings["seed"] = config.seed if region.seed is None else region.seed
    made_on = {**data_settings(config), **({} if limit is None else {"limit": limit})}
    maps_out = partial = made_dir = None
    if streamed:  # the maps go into specific_maps.npy.partial a batch at a time, renamed when all are made
        made_dir = not os.path.isdir(workdir)
        os.makedirs(workdir, exist_ok=True)
        partial = run_path(workdir, "specific_maps") + ".partial"
        maps_out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16,
                                             shape=(inputs.map_x.shape[0], *inputs.map_x.shape[1:3]))
    # attribution.json says what the maps were made on, so that a training run can check its data
    try:
        res = run_attribution(inputs, **settings, maps_out=maps_out, progress=progress, log=log,
                              extra={"data": made_on, "region": settings, "streamed": streamed})
    except BaseException:  # a failed or interrupted run leaves nothing behind (no half-written maps)
        if streamed:
            del maps_out
            _remove_partial(workdir, partial, made_dir)
        raise
    summary = {k: v for k, v in res.items() if k not in ("classifier", "specific", "general")}
    if streamed:
        maps_out.flush()
        del maps_out, res["specific"]
        os.replace(partial, run_path(workdir, "specific_maps"))
    if workdir is not None:
        summary["files"] = _save(workdir, summary, inputs, None if streamed else res["specific"], res["general"],
                                 n_figure)
    # the maps a run uses are those the workdir keeps (float16): in memory and through the disk alike; streamed,
    # they stay in that file
    specific = (np.load(summary["files"]["specific_maps"], mmap_mode="r") if streamed
                else np.asarray(res["specific"]).astype(np.float16).astype(np.float32))
    att = Attribution(data=made_on, region=RegionConfig.from_dict(settings), specific=specific,
                      general=res["general"], summary=summary, classifier=res["classifier"], workdir=workdir)
    return att


def _remove_partial(workdir: str, partial: str, made_dir: bool) -> None:
    """Delete a failed streamed run's half-written maps, and ``workdir`` when this run created it and it is empty."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(partial)
    if made_dir:
        with contextlib.suppress(OSError):  # not empty: something else is there, keep it
            os.rmdir(workdir)


def _save(workdir: str, summary: dict[str, Any], inputs, specific, general, n_figure: int) -> dict[str, str]:
    """Write an attribution's maps (specific as float16), figures and ``attribution.json`` into ``workdir``.

    ``specific=None``: ``specific_maps.npy`` is already written (a streamed set's maps, made into that file); the
    figure reads its first maps from there."""
    os.makedirs(workdir, exist_ok=True)
    files = {role: run_path(workdir, role) for role in ("general_map", "specific_maps", "maps_png", "reliability_png")}
    files["summary"] = run_path(workdir, "attribution")
    np.save(files["general_map"], np.asarray(general, np.float32))
    if specific is None:
        specific = np.load(files["specific_maps"], mmap_mode="r")
    else:
        np.save(files["specific_maps"], np.asarray(specific).astype(np.float16))
    k = min(n_figure, inputs.map_x.shape[0])
    report.attribution_maps(files["maps_png"], np.clip(inputs.map_x[:k], 0, 1), np.asarray(specific[:k], np.float32),
                            general=general, region=inputs.region, titles=[f"image {i}" for i in range(k)])
    report.reliability_diagram(files["reliability_png"], summary["reliability"], ece=summary["ece"],
                               title=f"region classifier, {summary['val_patches']} patches")
    write_json(files["summary"], {**summary, "files": files})
    return files


def load(workdir: str) -> Attribution:
    """The :class:`Attribution` of a ``jaxbias attribute`` workdir (maps and settings; no classifier)."""
    path = run_path(workdir, "attribution")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir!r} holds no attribution (no attribution.json): run `jaxbias attribute "
                                f"--out {workdir}` first")
    with open(path) as f:
        summary = json.load(f)
    if "data" not in summary:
        raise ValueError(f"{path} does not say which data its maps were made on (written by an older jaxbias): "
                         "run `jaxbias attribute` again")
    # maps of a streamed dataset stay on disk (read-only, mapped); others are read into memory as float32
    specific = np.load(run_path(workdir, "specific_maps"), mmap_mode="r")
    if not summary.get("streamed", False):
        specific = specific.astype(np.float32)
    general = np.load(run_path(workdir, "general_map"))
    return Attribution(data=summary["data"], region=RegionConfig.from_dict(summary["region"]), specific=specific,
                       general=general, summary=summary, workdir=workdir)


def resolve(maps: Any) -> Attribution:
    """``RunConfig.maps`` (a workdir or an :class:`Attribution`) as an :class:`Attribution`."""
    return maps if isinstance(maps, Attribution) else load(os.fspath(maps))


__all__: Sequence[str] = ("Attribution", "RegionConfig", "attribute", "data_settings", "load",
                          "resolve")
