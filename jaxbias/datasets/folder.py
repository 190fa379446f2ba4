"""Your own images: a folder of image files and a metadata table naming each image's path, class and, optionally,
its bias label, artifact mask and split (:func:`jaxbias.data.folder.open_folder` reads and checks the table).

The split column's value ``train_split`` is the training set; every other value is an evaluation set of that
name. Without a split column a stratified 20 % of each class, drawn with the data seed, is held out as ``test``.
The concept samples are the training set (``bias`` = the bias column: 1 where the concept is present).

By default every image is read into memory (float32 in [0, 1], ``(N, S, S, C)``). With ``stream`` the images
(and masks) stay on disk: ``train.x`` and each evaluation set's ``x`` are :class:`jaxbias.data.lazy.LazyImages`,
decoded a batch at a time by the host feed and the batched evaluation, the same numbers in memory that does not
grow with the folder (labels and bias labels, read from the table, stay in memory).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import numpy as np

from jaxbias import settings as settings_lib
from jaxbias.data.folder import MODES, FolderSource, open_folder
from jaxbias.data.lazy import LazyImages
from jaxbias.datasets import Dataset
from jaxbias.types import Batch

IMAGES = True
#: ``--dataset folder:PATH`` is ``--dataset folder --root PATH`` (:func:`jaxbias.datasets.split_name`)
ARGUMENT = "root"
#: the share of each class held out as ``test`` when the table has no split column
HELD_OUT = 0.2


@dataclasses.dataclass(frozen=True)
class Settings:
    """An image folder's data settings.

    Attributes:
      root: the folder of the images (required); the table's relative paths start there.
      metadata: the metadata table (required): a CSV file with a header line, or a .parquet file (needs pyarrow).
      path_column: the table's column of image paths (relative to root, or absolute).
      label_column: the table's column of classes: int indices, or class names (numbered in sorted order).
      bias_column: the table's column of bias labels (non-negative ints, e.g. 1 = artifact present); none = no
        bias labels.
      mask_column: the table's column of artifact masks: grey images, > 0.5 = artifact pixel (an empty cell:
        none); none = no masks.
      split_column: the table's column of split names (train, test, val, ...); none = a stratified 20 % of each
        class, drawn with the data seed, held out as test.
      train_split: the split column's value of the training images; the other values are evaluation sets.
      image_size: side of the square images the folder's images are resized to (bilinear).
      image_mode: rgb = 3 channels, grey = 1.
      limit: use only the first N training images (quick runs); none = all. The evaluation sets stay whole.
      stream: read the images from disk at each step instead of loading them into memory (folders larger than
        memory; same numbers, the host feed); methods that need every training image at once refuse it.
      workers: with stream, threads that decode and place the next training batches while the current step runs
        (a grain pipeline, at most 2 batches ahead per worker; same numbers); 0 = decode each batch when its
        step comes.
    """

    CHOICES: ClassVar[dict] = {"image_mode": MODES}
    root: str | None = None
    metadata: str | None = None
    path_column: str = "path"
    label_column: str = "label"
    bias_column: str | None = None
    mask_column: str | None = None
    split_column: str | None = None
    train_split: str = "train"
    image_size: int = 64
    image_mode: str = "rgb"
    limit: int | None = None
    stream: bool = False
    workers: int = 0

    def __post_init__(self):
        settings_lib.check(self)
        settings_lib.need(self.root is not None, self, "root", "the folder of your images (--root DIR)")
        settings_lib.need(self.metadata is not None, self, "metadata",
                          "the metadata table of your images, a .csv or .parquet file (--metadata FILE)")
        settings_lib.need(self.image_size >= 8, self, "image_size", "an int >= 8")
        settings_lib.need(self.limit is None or self.limit >= 1, self, "limit", "a positive int or none")
        settings_lib.need(self.workers >= 0, self, "workers", "a non-negative int")
        settings_lib.need(self.workers == 0 or self.stream, self, "workers",
                          "0 without stream (decode workers read streamed images; --stream true)")


class Folder(NamedTuple):
    """What :func:`load` read: the checked table, which rows went where, and the table's path."""

    table: FolderSource
    train_rows: np.ndarray
    eval_rows: dict[str, np.ndarray]
    classes: tuple[str, ...] | None
    source: str
    stream: bool = False
    workers: int = 0


def held_out(labels: np.ndarray, *, share: float = HELD_OUT, seed: int) -> np.ndarray:
    """Bool ``(N,)``: a stratified ``share`` of each class (rounded, at least one image of each class kept for
    training), drawn with ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    out = np.zeros(labels.shape[0], bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = min(int(round(share * rows.size)), rows.size - 1)
        out[rng.permutation(rows)[:k]] = True
    return out


def _batch(source: FolderSource, rows: np.ndarray, stream: bool, workers: int = 0) -> Batch:
    """Rows ``rows``: x float32 ``(n, S, S, C)`` in [0, 1], y int32, bias int32, mask bool ``(n, S, S)``; x and mask
    decoded now, or (``stream``) :class:`LazyImages` decoding them when indexed (by ``workers`` threads ahead in
    training), the same values either way."""
    s = source.image_size
    x = LazyImages(source, rows, item_shape=(s, s, 1 if source.mode == "grey" else 3), workers=workers)
    mask = None if source.masks is None else LazyImages(source, rows, item_shape=(s, s), field="mask",
                                                        workers=workers)
    if not stream:
        x, mask = x.materialise(), None if mask is None else mask.materialise()
    bias = None if source.bias is None else source.bias[rows]
    return Batch(x, source.labels[rows], bias, mask)


def view(data: Folder) -> Dataset:
    train = _batch(data.table, data.train_rows, data.stream, data.workers)
    evals = {name: _batch(data.table, rows, data.stream) for name, rows in data.eval_rows.items()}
    return Dataset("folder", train, evals, data.table.num_classes, train, data)


def load(settings: Settings, *, seed: int) -> Dataset:
    table = open_folder(settings.root, settings.metadata, path_column=settings.path_column,
                        label_column=settings.label_column, bias_column=settings.bias_column,
                        mask_column=settings.mask_column, split_column=settings.split_column,
                        image_size=settings.image_size, mode=settings.image_mode)
    if table.splits is None:
        test = held_out(table.labels, seed=seed)
        if not test.any():
            raise ValueError(f"metadata table {table.table!r} has too few images per class to hold out "
                             f"{HELD_OUT:.0%} as a test set; add a split column (--split-column)")
        train, evals = np.flatnonzero(~test), {"test": np.flatnonzero(test)}
    else:
        names = sorted(set(table.splits.tolist()))
        if settings.train_split not in names:
            raise ValueError(f"metadata table {table.table!r} has no row of split {settings.train_split!r} "
                             f"(train_split) in column {settings.split_column!r}; its splits: {', '.join(names)}")
        train = np.flatnonzero(table.splits == settings.train_split)
        evals = {n: np.flatnonzero(table.splits == n) for n in names if n != settings.train_split}
    if settings.limit is not None:
        if settings.limit > train.size:
            raise ValueError(f"limit must be at most the {train.size} training images of metadata table "
                             f"{table.table!r}; got {settings.limit}")
        train = train[:settings.limit]
    return view(Folder(table, train, evals, table.classes, table.table, settings.stream, settings.workers))
