"""Your own images: a folder of image files and a metadata table naming each image's path, class and, optionally,
its bias label, artifact mask and split (:func:`jaxbias.data.folder.open_folder` reads and checks the table).

The split column's value ``train_split`` is the training set; every other value is an evaluation set of that
name. Without a split column a stratified 20 % of each class, drawn with the data seed, is held out as ``test``.
The concept samples are the training set (``bias`` = the bias column: 1 where the concept is present).

Every image is read into memory (float32 in [0, 1], ``(N, S, S, C)``) when the decoded folder takes at most
:data:`MEMORY_SHARE` of this machine's memory (``stream`` none, the default), else streamed; with ``stream`` true the images
(and masks) stay on disk: ``train.x`` and each evaluation set's ``x`` are :class:`jaxbias.data.lazy.LazyImages`,
decoded a batch at a time by the host feed and the batched evaluation, the same numbers in memory that does not
grow with the folder (labels and bias labels, read from the table, stay in memory).

With ``artifact`` (one of :data:`jaxbias.data.artifacts.ARTIFACTS`) the folder becomes the ClArC family's
controlled setting, as :mod:`jaxbias.datasets.artifact_mnist` builds it on digits: each training image of class
``artifact_class`` carries the artifact with probability ``p`` (which ones drawn once from the data seed); the
artifact is drawn into each image as it is decoded (:class:`jaxbias.data.folder.ArtifactSource`), the same
pixels streamed or in memory. ``train.bias`` is 1 where the artifact is, ``train.mask`` its pixels (OR the mask
column's). The evaluation sets are ``clean`` (the ``test`` split, or the only evaluation split, as it is) and
``artifact`` (the same images, each with the artifact), the other splits as they are; the concept samples are
the artifact class's training images. ``jaxbias correct`` then corrects a model trained on it.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import numpy as np

from jaxbias import settings as settings_lib
from jaxbias.data.artifacts import ARTIFACTS
from jaxbias.data.images import DECODES
from jaxbias.data.folder import MODES, ArtifactSource, FolderSource, open_folder
from jaxbias.data.lazy import WORKER_KINDS, LazyImages, stream_by_size, take
from jaxbias.datasets import Dataset
from jaxbias.types import Batch

IMAGES = True
#: ``--dataset folder:PATH`` is ``--dataset folder --root PATH`` (:func:`jaxbias.datasets.split_name`)
ARGUMENT = "root"
#: the share of each class held out as ``test`` when the table has no split column
HELD_OUT = 0.2
#: the smallest image_size the stamp artifact (the text 12:05, 1 pixel from the edges) fits
STAMP_SIZE = 20


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
      decode: full = every JPEG decoded at its own size, then resized; reduced = JPEGs decoded at 1/2, 1/4 or 1/8
        scale first (the smallest still >= image_size; libjpeg's DCT scaling), then resized: several times faster
        for photos a few times larger than image_size, slightly different pixels.
      limit: use only the first N training images (quick runs); none = all. The evaluation sets stay whole.
      stream: read the images from disk at each step instead of loading them into memory (folders larger than
        memory; same numbers, the host feed); methods that need every training image at once refuse it. none =
        streamed when the decoded images (float32) would take more than a quarter of this machine's memory.
      workers: when streamed, threads that decode and place the next training batches while the current step runs
        (a grain pipeline, at most 2 batches ahead per worker; same numbers); 0 = decode each batch when its
        step comes.
      worker_kind: with workers, what they are: thread = threads of the training process (default); process =
        processes of their own (spawned once per run; they decode to uint8, the training process converts and
        places each batch; same numbers), for decode work that holds Python's GIL (drawing an artifact).
      artifact: an artifact drawn into the images as they are decoded (stamp needs image_size >= 20): each
        training image of artifact_class carries it with probability p, and the evaluation sets are clean (the
        test split) and artifact (the same images, each with it); none = the images as they are. Not with a
        bias column (the bias label is whether the artifact is drawn).
      artifact_class: with artifact, the class whose training images carry it.
      p: with artifact, its insertion probability in that class, in [0, 1].
    """

    CHOICES: ClassVar[dict] = {"image_mode": MODES, "decode": DECODES, "artifact": ARTIFACTS,
                               "worker_kind": WORKER_KINDS}
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
    decode: str = "full"
    limit: int | None = None
    stream: bool | None = None
    workers: int = 0
    worker_kind: str = "thread"
    artifact: str | None = None
    artifact_class: int = 0
    p: float = 0.5

    def __post_init__(self):
        settings_lib.check(self)
        settings_lib.need(self.root is not None, self, "root", "the folder of your images (--root DIR)")
        settings_lib.need(self.metadata is not None, self, "metadata",
                          "the metadata table of your images, a .csv or .parquet file (--metadata FILE)")
        settings_lib.need(self.image_size >= 8, self, "image_size", "an int >= 8")
        settings_lib.need(self.limit is None or self.limit >= 1, self, "limit", "a positive int or none")
        settings_lib.need(self.workers >= 0, self, "workers", "a non-negative int")
        settings_lib.need(self.workers == 0 or self.stream is not False, self, "workers",
                          "0 with stream false (decode workers read streamed images)")
        settings_lib.need(self.worker_kind == "thread" or self.workers >= 1, self, "worker_kind",
                          "thread with workers 0 (process starts decode processes: set workers >= 1)")
        settings_lib.need(0 <= self.p <= 1, self, "p", "in [0, 1]")
        settings_lib.need(self.artifact_class >= 0, self, "artifact_class", "a non-negative int (a class index)")
        settings_lib.need(self.artifact != "stamp" or self.image_size >= STAMP_SIZE, self, "image_size",
                          f"an int >= {STAMP_SIZE} with artifact stamp (its text is {STAMP_SIZE - 1} pixels wide "
                          "and sits 1 pixel from the edge)")
        settings_lib.need(self.artifact is None or self.bias_column is None, self, "bias_column",
                          "none with artifact (the bias label is whether the artifact is drawn)")


class Folder(NamedTuple):
    """What :func:`load` read: the checked table, which rows went where, and the table's path; with an artifact,
    which it is, its class (``target_class``), the ``(N,)`` bool over the table's rows of those that carry it in
    training (``inserted``) and the data seed."""

    table: FolderSource
    train_rows: np.ndarray
    eval_rows: dict[str, np.ndarray]
    classes: tuple[str, ...] | None
    source: str
    stream: bool = False
    workers: int = 0
    artifact: str | None = None
    target_class: int | None = None
    inserted: np.ndarray | None = None
    seed: int = 0
    worker_kind: str = "thread"


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


def _batch(source: FolderSource | ArtifactSource, rows: np.ndarray, stream: bool, workers: int = 0,
           bias: np.ndarray | None = None, worker_kind: str = "thread") -> Batch:
    """Rows ``rows``: x float32 ``(n, S, S, C)`` in [0, 1], y int32, bias int32, mask bool ``(n, S, S)``; x and mask
    decoded now, or (``stream``) :class:`LazyImages` decoding them when indexed (by ``workers`` threads ahead in
    training; ``worker_kind``: threads or processes), the same values either way. An :class:`ArtifactSource` draws its artifact in and always has masks;
    ``bias`` (over the table's rows) replaces the table's bias column."""
    table = source.source if isinstance(source, ArtifactSource) else source
    s = table.image_size
    x = LazyImages(source, rows, item_shape=(s, s, 1 if table.mode == "grey" else 3), workers=workers,
                   worker_kind=worker_kind)
    masked = isinstance(source, ArtifactSource) or table.masks is not None
    mask = (LazyImages(source, rows, item_shape=(s, s), field="mask", workers=workers, worker_kind=worker_kind)
            if masked else None)
    if not stream:
        x, mask = x.materialise(), None if mask is None else mask.materialise()
    bias = table.bias if bias is None else bias
    return Batch(x, table.labels[rows], None if bias is None else bias[rows], mask)


def view(data: Folder) -> Dataset:
    if data.artifact is None:
        train = _batch(data.table, data.train_rows, data.stream, data.workers, worker_kind=data.worker_kind)
        evals = {name: _batch(data.table, rows, data.stream) for name, rows in data.eval_rows.items()}
        return Dataset("folder", train, evals, data.table.num_classes, train, data)
    # training and clean images read through one source: it draws the artifact only into inserted training rows
    plain = ArtifactSource(data.table, data.artifact, data.seed, data.inserted)
    marked = ArtifactSource(data.table, data.artifact, data.seed + 1, np.ones(len(data.table), bool))
    bias = data.inserted.astype(np.int32)
    train = _batch(plain, data.train_rows, data.stream, data.workers, bias=bias, worker_kind=data.worker_kind)
    clean = _clean_split(data)
    evals = {("clean" if name == clean else name): _batch(plain, rows, data.stream)
             for name, rows in data.eval_rows.items()}
    evals["artifact"] = _batch(marked, data.eval_rows[clean], data.stream)
    # as artifact_mnist: the CAV is fitted on the artifact class alone (with vs without the artifact), so that it
    # does not also encode "this is the artifact class"; streamed, its rows stay on disk (take decodes nothing)
    keep = np.asarray(train.y) == data.target_class
    concept = Batch(*(take(a, keep) for a in train))
    return Dataset("folder", train, evals, data.table.num_classes, concept, data)


def shown(dataset: Dataset, n: int) -> Batch:
    """Heatmaps show, with artifact, the artifact class's test images with the artifact drawn in (as artifact_mnist's
    do), else the first ``n`` of the first evaluation set; only these rows are decoded."""
    first = dataset.evals["artifact"] if dataset.artifact else next(iter(dataset.evals.values()))
    y = np.asarray(first.y)
    keep = np.flatnonzero(y == dataset.target_class)[:n] if dataset.artifact else np.arange(min(n, y.size))
    return Batch(first.x[keep], y[keep])


def _clean_split(data: Folder) -> str:
    """The evaluation split that is ``clean`` (and, artifact drawn in, ``artifact``): ``test``, else the only one."""
    names = sorted(data.eval_rows)
    if "test" in names or len(names) == 1:
        clean = "test" if "test" in names else names[0]
        taken = [n for n in names if n in ("clean", "artifact") and n != clean]
        if taken:
            raise ValueError(f"metadata table {data.source!r} has an evaluation split named {taken[0]!r}; with "
                             "artifact that name is the test split's (rename the split)")
        return clean
    raise ValueError(f"metadata table {data.source!r} has the evaluation splits {', '.join(names)}; with artifact, "
                     "one named test is the clean set (and, with the artifact drawn in, the artifact set)")


def streamed(settings: Settings, table: FolderSource) -> bool:
    """Whether the folder is streamed: ``settings.stream``, or (none) whether its decoded images — float32, every
    row of the table, masks included — would take more than :data:`MEMORY_SHARE` of the memory."""
    if settings.stream is not None:
        return settings.stream
    s, c = table.image_size, 1 if table.mode == "grey" else 3
    need = len(table) * s * s * (4 * c + (1 if table.masks is not None or settings.artifact else 0))
    return stream_by_size(need, f"folder {table.table}: {len(table)} images of {s}x{s}x{c}")


def load(settings: Settings, *, seed: int) -> Dataset:
    table = open_folder(settings.root, settings.metadata, path_column=settings.path_column,
                        label_column=settings.label_column, bias_column=settings.bias_column,
                        mask_column=settings.mask_column, split_column=settings.split_column,
                        image_size=settings.image_size, mode=settings.image_mode, decode=settings.decode)
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
    stream = streamed(settings, table)
    if settings.limit is not None:
        if settings.limit > train.size:
            raise ValueError(f"limit must be at most the {train.size} training images of metadata table "
                             f"{table.table!r}; got {settings.limit}")
        train = train[:settings.limit]
    if settings.artifact is None:
        return view(Folder(table, train, evals, table.classes, table.table, stream, settings.workers,
                           worker_kind=settings.worker_kind))
    if settings.artifact_class >= table.num_classes:
        raise ValueError(f"artifact_class must be one of the {table.num_classes} classes 0 to "
                         f"{table.num_classes - 1} of metadata table {table.table!r}; got {settings.artifact_class}")
    # drawn over every row of the table (as insert_into_class draws over its images), kept for the training rows
    # of the class: which rows carry the artifact does not depend on the split or the limit
    u = np.random.default_rng([seed, 0]).random(len(table))
    inserted = np.zeros(len(table), bool)
    inserted[train] = True
    inserted &= (table.labels == settings.artifact_class) & (u < settings.p)
    return view(Folder(table, train, evals, table.classes, table.table, stream, settings.workers,
                       settings.artifact, settings.artifact_class, inserted, seed, settings.worker_kind))
