"""Any TensorFlow Datasets (TFDS) image dataset by name, its image, class and bias features named
(:func:`jaxbias.data.tfds_source.open_tfds` opens and checks each split).

The split ``train_split`` is the training set; ``eval_splits`` (default: every other split the dataset has) are
the evaluation sets, each named after its split. Split expressions work too: ``--train-split 'train[:80%]'
--eval-splits 'train[80%:]'``. The dataset must be prepared in the array_record format
(``tfds build NAME --file_format=array_record``); nothing is downloaded unless ``download`` is true. The number
of classes is the label feature's (a ClassLabel's ``num_classes``), else the largest label + 1. The concept
samples are the training set (``bias`` = the bias feature: 1 where the concept is present).

The records are read into memory (float32 in [0, 1], ``(N, H, W, C)``) when they fit: with ``stream`` none,
while the decoded images would take at most :data:`~jaxbias.data.lazy.MEMORY_SHARE` of this machine's memory;
else (or with ``stream`` true) every set's images (and masks) are :class:`~jaxbias.data.lazy.LazyImages` over
the split, read a batch at a time by training, evaluation and the rest of the tool, the same numbers. The labels
(and bias labels) are read once at load, one pass over the records that keeps only them.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from jaxbias import settings as settings_lib
from jaxbias.data.lazy import LazyImages, stream_by_size
from jaxbias.data.tfds_source import TfdsSource, open_tfds
from jaxbias.datasets import Dataset
from jaxbias.types import Batch

IMAGES = True
#: ``--dataset tfds:NAME`` is ``--dataset tfds --tfds-name NAME`` (:func:`jaxbias.datasets.split_name`)
ARGUMENT = "tfds_name"


@dataclasses.dataclass(frozen=True)
class Settings:
    """A TFDS dataset's data settings.

    Attributes:
      tfds_name: the TFDS dataset (required), e.g. mnist, celeb_a, or name/config:version.
      data_dir: the TFDS data directory; none = TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets).
      image_feature: the feature of the images (nested features as outer/inner).
      label_feature: the feature of the classes: a ClassLabel or an int scalar.
      bias_feature: the feature of the bias labels (a ClassLabel or an int/bool scalar, e.g. attributes/Male);
        none = no bias labels.
      mask_feature: the feature of the artifact masks, a picture whose non-zero pixels are the artifact; none =
        no masks.
      train_split: the split trained on (a TFDS split expression such as train[:80%] works too).
      eval_splits: the evaluation splits, comma-separated; none = every other split of the dataset.
      image_size: side of the square images the dataset's images are resized to (bilinear); none = their own
        size (when the dataset fixes it).
      limit: use only the first N training images (quick runs); none = all. The evaluation sets stay whole.
      download: download and prepare the dataset when it is missing (needs network); false = never.
      stream: read the images from the split at each step instead of holding them in memory (true), hold them
        (false), or none = streamed when the decoded images (float32, every split) would take more than a
        quarter of this machine's memory.
      workers: when streamed, threads that decode and place the next training batches while the current step runs
        (at most 2 batches ahead per worker; same numbers); 0 = decode each batch when its step comes.
    """

    tfds_name: str | None = None
    data_dir: str | None = None
    image_feature: str = "image"
    label_feature: str = "label"
    bias_feature: str | None = None
    mask_feature: str | None = None
    train_split: str = "train"
    eval_splits: tuple[str, ...] | None = None
    image_size: int | None = None
    limit: int | None = None
    download: bool = False
    stream: bool | None = None
    workers: int = 0

    def __post_init__(self):
        settings_lib.check(self)
        settings_lib.need(self.tfds_name is not None and bool(self.tfds_name.strip()), self, "tfds_name",
                          "the TFDS dataset to read, e.g. mnist (--tfds-name NAME)")
        settings_lib.need(self.image_size is None or self.image_size >= 8, self, "image_size", "an int >= 8 or none")
        settings_lib.need(self.limit is None or self.limit >= 1, self, "limit", "a positive int or none")
        settings_lib.need(self.eval_splits is None or (len(self.eval_splits) > 0 and all(
            s.strip() for s in self.eval_splits)), self, "eval_splits", "comma-separated split names or none")
        settings_lib.need(self.eval_splits is None or self.train_split not in self.eval_splits, self, "eval_splits",
                          f"splits other than the train split {self.train_split!r}")
        settings_lib.need(self.workers >= 0, self, "workers", "a non-negative int")
        settings_lib.need(self.workers == 0 or self.stream is not False, self, "workers",
                          "0 with stream false (decode workers read streamed images)")


class Tfds(NamedTuple):
    """What :func:`load` read: the opened splits and the dataset's name."""

    train: TfdsSource
    evals: dict[str, TfdsSource]
    source: str
    stream: bool = False
    workers: int = 0


def _read(source: TfdsSource, n: int) -> Batch:
    """The first ``n`` records: x float32 ``(n, H, W, C)`` in [0, 1], y int32, bias int32, mask bool ``(n, H, W)``."""
    first = source[0]
    x = np.empty((n, *first["image"].shape), np.float32)
    y = np.empty(n, np.int32)
    bias = None if source.bias_feature is None else np.empty(n, np.int32)
    mask = None if source.mask_feature is None else np.empty((n, *first["image"].shape[:2]), bool)
    for i in range(n):
        item = first if i == 0 else source[i]
        np.divide(item["image"], np.float32(255.0), out=x[i], dtype=np.float32)
        y[i] = item["label"]
        if bias is not None:
            bias[i] = item["bias"]
        if mask is not None:
            mask[i] = item["mask"]
    return Batch(x, y, bias, mask)


def _check_labels(batch: Batch, source: TfdsSource, num_classes: int | None) -> None:
    where = f"TFDS dataset {source.name!r} split {source.split!r}"
    for what, values, feature in (("label", batch.y, source.label_feature), ("bias", batch.bias, source.bias_feature)):
        if values is not None and values.size and values.min() < 0:
            i = int(np.argmin(values))
            raise ValueError(f"{where} record {i}: {what} {values[i]} (feature {feature!r}) is negative")
    if num_classes is not None and batch.y.size and batch.y.max() >= num_classes:
        i = int(np.argmax(batch.y))
        raise ValueError(f"{where} record {i}: label {batch.y[i]} (feature {source.label_feature!r}) is outside "
                         f"the {num_classes} classes 0 to {num_classes - 1}")


def _streamed(source: TfdsSource, n: int, workers: int = 0) -> Batch:
    """The first ``n`` records with their images (and masks) left in the split: :class:`LazyImages` read when
    indexed (the same values as :func:`_read`); the labels (and bias labels) read now, one record at a time."""
    first = source[0]
    y = np.empty(n, np.int32)
    bias = None if source.bias_feature is None else np.empty(n, np.int32)
    for i in range(n):
        item = first if i == 0 else source[i]
        y[i] = item["label"]
        if bias is not None:
            bias[i] = item["bias"]
    x = LazyImages(source, np.arange(n), item_shape=first["image"].shape, workers=workers)
    mask = (None if source.mask_feature is None else
            LazyImages(source, np.arange(n), item_shape=first["image"].shape[:2], field="mask", workers=workers))
    return Batch(x, y, bias, mask)


def streamed(stream: bool | None, sources: list[TfdsSource], name: str) -> bool:
    """Whether to stream: ``stream``, or (none) whether the decoded images of every split — float32, masks
    included — would take more than :data:`MEMORY_SHARE` of the memory (the first record gives the size)."""
    if stream is not None:
        return stream
    first = sources[0][0]
    per = 4 * first["image"].size + (first["image"].shape[0] * first["image"].shape[1] if "mask" in first else 0)
    n = sum(len(s) for s in sources)
    return stream_by_size(per * n, f"TFDS dataset {name}: {n} records")


def view(data: Tfds) -> Dataset:
    if data.stream:
        train = _streamed(data.train, len(data.train), data.workers)
        evals = {name: _streamed(source, len(source)) for name, source in data.evals.items()}
    else:
        train = _read(data.train, len(data.train))
        evals = {name: _read(source, len(source)) for name, source in data.evals.items()}
    k = data.train.num_classes
    for batch, source in ((train, data.train), *((evals[n], s) for n, s in data.evals.items())):
        _check_labels(batch, source, k)
    if k is None:
        k = int(max(b.y.max() for b in (train, *evals.values()) if b.y.size)) + 1
    return Dataset("tfds", train, evals, k, train, data)


def load(settings: Settings, *, seed: int) -> Dataset:
    del seed  # the splits are the dataset's own
    kwargs = dict(data_dir=settings.data_dir, image_feature=settings.image_feature,
                  label_feature=settings.label_feature, bias_feature=settings.bias_feature,
                  mask_feature=settings.mask_feature, image_size=settings.image_size)
    name = settings.tfds_name.strip()
    train = open_tfds(name, settings.train_split, download=settings.download, **kwargs)
    eval_splits = settings.eval_splits
    if eval_splits is None:
        trained = settings.train_split.split("[")[0].strip()
        eval_splits = tuple(s for s in train.splits if s != trained)
        if not eval_splits:
            raise ValueError(f"TFDS dataset {name!r} lists no split besides {settings.train_split!r} (its splits: "
                             f"{', '.join(train.splits) or 'unknown'}); name the evaluation splits, e.g. "
                             "--train-split 'train[:80%]' --eval-splits 'train[80%:]'")
    evals = {s.strip(): open_tfds(name, s.strip(), **kwargs) for s in eval_splits}
    for source in (train, *evals.values()):
        if len(source) == 0:
            raise ValueError(f"TFDS dataset {name!r} split {source.split!r} has no records")
    if settings.limit is not None:
        if settings.limit > len(train):
            raise ValueError(f"limit must be at most the {len(train)} training records of TFDS dataset {name!r} "
                             f"split {train.split!r}; got {settings.limit}")
        limited = dataclasses.replace(train, length=settings.limit)
        object.__setattr__(limited, "_records", train.__dict__.get("_records"))  # the split stays open
        train = limited
    stream = streamed(settings.stream, [train, *evals.values()], name)
    return view(Tfds(train, evals, f"tfds:{name}", stream, settings.workers if stream else 0))
