"""Datasets: one module per dataset, found by file like the methods (no table to edit).

A dataset module ``jaxbias.datasets.<name>`` declares

- ``Settings``: a frozen dataclass of what decides its samples, each field
  documented under ``Attributes:`` (they become ``jaxbias train``'s flags and
  the ``data`` table of a config file), its values checked in ``__post_init__``;
  an optional ``CHOICES`` class variable maps a field to its allowed values;
- ``load(settings, *, seed) -> Dataset``: the samples (``seed``: the data's seed);
- ``view(raw) -> Dataset`` (optional): a protocol object built in memory (e.g.
  :func:`jaxbias.data.biased_mnist`) as the :class:`Dataset`;
- ``IMAGES`` (optional, default ``False``): its samples are images ``(N, H, W, C)``
  (LRP heatmaps, the ClArC family's concept maps);
- ``ARGUMENT`` (optional): the setting that ``name:VALUE`` gives (:func:`split_name`), e.g.
  ``folder:PATH`` for the folder dataset's ``root``;
- ``shown(dataset, n) -> Batch`` (optional): the ``n`` images its heatmaps show (:func:`shown`; default: the
  first ``n`` of its first evaluation set).

A new file in this package (or in a folder added to its ``__path__``) is a new dataset.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from types import ModuleType
from typing import Any, Mapping

import numpy as np

from jaxbias import settings as settings_lib
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
    def artifact_missing(self) -> list[str]:
        """What the artifact report (``jaxbias correct``) needs and this dataset lacks: a ``target_class`` (the
        class that carries the artifact), ``clean`` and ``artifact`` evaluation sets; empty when it has them."""
        need = [] if self.target_class is not None else ["a target class (the class that carries the artifact)"]
        return need + [f"an evaluation set {k!r}" for k in ("clean", "artifact") if k not in self.evals]

    @property
    def artifact(self) -> bool:
        """Whether this is an artifact dataset: a target class, a ``clean`` and an ``artifact`` evaluation set
        (every image with the artifact), what the artifact report measures on (``artifact_mnist``, ``folder``
        with ``artifact``)."""
        return not self.artifact_missing

    @property
    def source(self) -> str | None:
        """What the loader read: the digits' source (``auto`` resolved) or a data file; ``None`` if unknown."""
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


def available() -> list[str]:
    """Names of the dataset modules in this package."""
    return sorted({m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")})


def get(name: str) -> ModuleType:
    """The dataset module ``jaxbias.datasets.<name>``, checked to declare ``Settings`` and ``load``."""
    names = available()
    if name not in names:
        raise ValueError(f"dataset {name!r} is unknown; expected one of {names}")
    mod = importlib.import_module(f"{__name__}.{name}")
    settings_cls = getattr(mod, "Settings", None)
    if not (dataclasses.is_dataclass(settings_cls) and callable(getattr(mod, "load", None))):
        raise ValueError(f"dataset module {mod.__name__} must declare a dataclass Settings and "
                         "load(settings, *, seed) -> Dataset")
    return mod


def split_name(text: str) -> tuple[str, dict[str, str]]:
    """``name`` or ``name:VALUE`` as ``(name, {its ARGUMENT setting: VALUE})``: ``folder:data/isic`` is the dataset
    ``folder`` with ``root="data/isic"``, ``tfds:celeb_a`` the dataset ``tfds`` with ``tfds_name="celeb_a"`` (split at
    the first colon only: the value may hold one, ``tfds:mnist:3.0.1``)."""
    if not isinstance(text, str):
        raise ValueError(f"dataset must be a name (one of {available()}); got {text!r}")
    name, colon, value = text.partition(":")
    if not colon:
        return text, {}
    field = getattr(get(name), "ARGUMENT", None)
    if field is None:
        takes = [n for n in available() if getattr(get(n), "ARGUMENT", None)]
        raise ValueError(f"dataset {name!r} takes no value after ':' (got {text!r}); its settings are data flags. "
                         f"name:VALUE works for {takes}")
    if not value.strip():
        raise ValueError(f"dataset {text!r}: give its {field} after the colon, e.g. {name}:VALUE")
    return name, {field: value}


def shown(dataset: Dataset, n: int) -> Batch:
    """The ``n`` images (with their labels) the heatmaps of a run on ``dataset`` show: its module's ``shown``, else
    the first ``n`` of its first evaluation set (rows only: a streamed set is decoded for these alone)."""
    pick = getattr(get(dataset.name), "shown", None)
    if pick is not None:
        return pick(dataset, n)
    first = next(iter(dataset.evals.values()))
    return Batch(first.x[:n], np.asarray(first.y)[:n])


def images(name: str) -> bool:
    """Whether the dataset's samples are images (its ``IMAGES``)."""
    return bool(getattr(get(name), "IMAGES", False))


def image_names() -> list[str]:
    """The image datasets."""
    return [n for n in available() if images(n)]


def settings(name: str, values: Any = None) -> Any:
    """Dataset ``name``'s ``Settings`` from ``values``: ``None`` (the defaults), a mapping (text or values,
    cast to each field's type; unknown keys refused) or already a ``Settings`` of it."""
    return settings_lib.resolve(get(name).Settings, values, owner=f"dataset {name!r}")


def load(name: str, values: Any = None, *, seed: int = 0) -> Dataset:
    """Dataset ``name`` with these settings (see :func:`settings`) and data seed."""
    mod = get(name)
    ds = mod.load(settings(name, values), seed=seed)
    if not isinstance(ds, Dataset) or ds.name != name:
        raise ValueError(f"{mod.__name__}.load must return the Dataset named {name!r}; got {type(ds).__name__}")
    return ds


def view(name: str, data: Any) -> Dataset:
    """``data`` (a protocol object built in memory, or already a :class:`Dataset`) as the dataset ``name``."""
    if isinstance(data, Dataset):
        if data.name != name:
            raise ValueError(f"data is the {data.name!r} dataset but the run is configured for {name!r}")
        return data
    mod = get(name)
    if not callable(getattr(mod, "view", None)):
        raise ValueError(f"dataset {name!r} takes data in memory only as a jaxbias.datasets.Dataset; "
                         f"got {type(data).__name__}")
    return mod.view(data)


__all__ = ["Dataset", "available", "get", "image_names", "images", "load", "settings", "shown", "split_name", "view"]
