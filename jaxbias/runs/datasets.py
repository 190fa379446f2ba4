"""Datasets of the run layer: a name -> loader registry and one dataset value.

A loader reads a :class:`~jaxbias.runs.config.RunConfig`'s data settings and
returns the protocol's object (e.g. :class:`jaxbias.data.BiasedMNIST`);
:func:`view` turns that object into a :class:`Dataset`, the one shape every
run uses: the training batch, the named evaluation sets, the number of
classes, and the samples a concept's CAV is fitted on. A new dataset is one
entry in :data:`LOADERS` and :data:`VIEWS`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from jaxbias.types import Batch


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A loaded dataset as a run sees it.

    Attributes:
      name: the registry name.
      train: the training batch (``bias``: the bias attribute or concept label; ``mask``: artifact pixels).
      evals: named evaluation sets.
      num_classes: number of target classes.
      concept: the samples a concept direction (CAV) is fitted on, ``bias`` = 1 where the concept is present.
      raw: the protocol's own object (its extra fields, e.g. ``target_class``).
    """

    name: str
    train: Batch
    evals: Mapping[str, Batch]
    num_classes: int
    concept: Batch
    raw: Any

    @property
    def target_class(self) -> int | None:
        """The class that carries the artifact (artifact datasets), else ``None``."""
        return getattr(self.raw, "target_class", None)

    @property
    def source(self) -> str | None:
        return getattr(self.raw, "source", None)

    @property
    def region(self) -> np.ndarray | None:
        """``(H, W)`` bool: where the confounder is drawn, when the protocol knows it (``region_mnist``)."""
        region = getattr(self.raw, "region", None)
        return None if region is None else np.asarray(region, bool)

    def with_train_mask(self, mask: Any) -> "Dataset":
        """This dataset with ``train.mask`` replaced (e.g. attribution maps ``(N, H, W)``, one per training image)."""
        mask = np.asarray(mask)
        want = tuple(np.shape(self.train.x)[:3])
        if mask.shape != want:
            raise ValueError(f"the training masks must be (N, H, W) = {want}, one per training image of "
                             f"{self.name!r}; got {mask.shape}")
        train = self.train._replace(mask=mask)
        concept = train if self.concept is self.train else self.concept
        return dataclasses.replace(self, train=train, concept=concept)


def _biased_mnist(data) -> Dataset:
    train = Batch(data.train_x, data.train_y, data.train_bias)
    evals = {
        "biased": Batch(data.biased_x, data.biased_y, data.biased_bias),
        "unbiased": Batch(data.unbiased_x, data.unbiased_y, data.unbiased_bias),
    }
    return Dataset("biased_mnist", train, evals, 10, train, data)


def _artifact_mnist(data) -> Dataset:
    # the test sets carry no bias: their accuracy views are per class (jaxbias.evaluation.artifact_report)
    train = Batch(data.train_x, data.train_y, data.train_concept, data.train_mask)
    evals = {
        "clean": Batch(data.test_x, data.test_y, None, np.zeros(data.artifact_mask.shape, bool)),
        "artifact": Batch(data.artifact_x, data.test_y, None, data.artifact_mask),
    }
    # the CAV is fitted on the artifact class alone (with vs without the artifact), so that it does
    # not also encode "this is the artifact class"
    keep = np.asarray(train.y) == data.target_class
    concept = Batch(*(None if a is None else np.asarray(a)[keep] for a in train))
    return Dataset("artifact_mnist", train, evals, 10, concept, data)


def _adult(data) -> Dataset:
    # the test set carries no bias during training (its fairness views come from jaxbias.unlearn)
    train = Batch(data.train_x, data.train_y, data.train_a)
    return Dataset("adult", train, {"test": Batch(data.test_x, data.test_y)}, int(np.max(train.y)) + 1, train, data)


def _region_mnist(data) -> Dataset:
    # target = digit < 5, bias = the confounder (mark present); the region classifier's own set is the concept set
    train = Batch(data.train_x, data.train_y, data.train_c)
    evals = {"test": Batch(data.test_x, data.test_y, data.test_c)}
    concept = Batch(data.attr_x, data.attr_y, data.attr_c, data.attr_mark)
    return Dataset("region_mnist", train, evals, 2, concept, data)


def _celeba(data) -> Dataset:
    # target = Male, bias = the confounder; the concept set is the region classifier's (its label: the confounder)
    train = Batch(data.train_x, data.train_y, data.train_c)
    evals = {"test": Batch(data.test_x, data.test_y, data.test_c), "val": Batch(data.val_x, data.val_y, data.val_c)}
    concept = Batch(data.attr_x, data.attr_c, data.attr_c)
    return Dataset("celeba", train, evals, 2, concept, data)


def _load_biased_mnist(cfg) -> Any:
    from jaxbias.data import biased_mnist

    return biased_mnist(rho=cfg.rho, seed=cfg.resolved_data_seed, source=cfg.source, data_dir=cfg.data_dir)


def _load_artifact_mnist(cfg) -> Any:
    from jaxbias.data.artifact_mnist import artifact_mnist

    return artifact_mnist(artifact=cfg.artifact, target_class=cfg.artifact_class, p=cfg.p, seed=cfg.resolved_data_seed,
                          source=cfg.source, data_dir=cfg.data_dir)


def _load_adult(cfg) -> Any:
    from jaxbias.data.adult import load_adult

    return load_adult(cfg.data_path, protected=cfg.protected, seed=cfg.resolved_data_seed)


def _load_region_mnist(cfg) -> Any:
    from jaxbias.data.region_mnist import region_mnist

    return region_mnist(image_size=cfg.image_size or 64, style=cfg.style, seed=cfg.resolved_data_seed,
                        source=cfg.source, data_dir=cfg.data_dir)


def _load_celeba(cfg) -> Any:
    from jaxbias.data.celeba import load_celeba

    return load_celeba(cfg.confounder, data_dir=cfg.data_dir, image_size=cfg.image_size or 128,
                       seed=cfg.resolved_data_seed)


#: name -> loader(config) -> the protocol's object.
LOADERS: dict[str, Callable[[Any], Any]] = {
    "biased_mnist": _load_biased_mnist,
    "artifact_mnist": _load_artifact_mnist,
    "adult": _load_adult,
    "region_mnist": _load_region_mnist,
    "celeba": _load_celeba,
}
#: name -> the protocol's object -> :class:`Dataset`.
VIEWS: dict[str, Callable[[Any], Dataset]] = {
    "biased_mnist": _biased_mnist,
    "artifact_mnist": _artifact_mnist,
    "adult": _adult,
    "region_mnist": _region_mnist,
    "celeba": _celeba,
}
#: Datasets with images (LRP heatmaps, the ClArC family).
IMAGE_DATASETS = ("biased_mnist", "artifact_mnist", "region_mnist", "celeba")


def names() -> list[str]:
    return list(LOADERS)


def view(name: str, data: Any) -> Dataset:
    """``data`` (a loader's object, or already a :class:`Dataset`) as the :class:`Dataset` named ``name``."""
    if isinstance(data, Dataset):
        if data.name != name:
            raise ValueError(f"data is the {data.name!r} dataset but the run is configured for {name!r}")
        return data
    if name not in VIEWS:
        raise ValueError(f"dataset must be one of {names()}; got {name!r}")
    return VIEWS[name](data)


def get(cfg, data: Any = None) -> Dataset:
    """``data`` (already loaded) as the dataset of ``cfg``, or, for ``None``, the dataset :func:`load` reads."""
    return load(cfg) if data is None else view(cfg.dataset, data)


def load(cfg) -> Dataset:
    """The dataset of a run configuration (its ``dataset`` and data settings)."""
    if cfg.dataset not in LOADERS:
        raise ValueError(f"dataset must be one of {names()}; got {cfg.dataset!r}")
    return view(cfg.dataset, LOADERS[cfg.dataset](cfg))
