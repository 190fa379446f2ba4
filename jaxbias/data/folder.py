"""A folder of images described by a metadata table: a researcher's own data as a random-access source.

The table is a CSV file (read with the standard library's ``csv``, first line the
column names) or a parquet file (a name ending in ``.parquet``; read with pyarrow,
installed on its own). Its columns, named by the caller:

- path: the image, relative to the folder ``root`` or absolute;
- label: the class, an int index or a class name (names map to ``0 … K-1`` in
  sorted order, recorded in :attr:`FolderSource.classes`);
- bias (optional): a non-negative int per image (the bias / artifact label, e.g. 0/1);
- mask (optional): a grey image per image, ``> 0.5`` marking artifact pixels (an
  empty cell: no artifact pixel);
- split (optional): a name per image (``train``, ``test``, ``val``, ...).

:func:`open_folder` reads and checks the whole table before any image is decoded;
each refusal is one line naming the table file and the 1-based data row (the
header line not counted). :class:`FolderSource` then decodes one image per index
(Pillow), holding no open file, so that it pickles (what a grain ``MapDataset``
needs to wrap it).
"""
from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image

from jaxbias.data.artifacts import ARTIFACTS, named
from jaxbias.data.images import DECODES, MODES, open_uint8

_INT = re.compile(r"^\s*[+-]?\d+\s*$")


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _as_int(value: Any) -> int | None:
    """``value`` (a table cell: text, or a parquet int/float) as an int, or ``None`` when it is not one."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if np.isfinite(value) and float(value).is_integer() else None
    if isinstance(value, str) and _INT.match(value):
        return int(value)
    return None


def _text(value: Any) -> str:
    """A table cell as text (``None``, a missing parquet value, is empty)."""
    return "" if value is None else str(value).strip()


def read_table(path: str | os.PathLike) -> tuple[list[str], list[list[Any]]]:
    """``(column names, rows)`` of the metadata table ``path`` (CSV, or parquet for a name ending ``.parquet``).

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the table cannot be read, has no header, or has no data rows; a CSV row with more or fewer
        cells than the header. One line naming the file (and the row).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metadata table {path!r} does not exist")
    if path.lower().endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"metadata table {path!r} is parquet, which needs pyarrow: pip install pyarrow "
                             "(or give the table as CSV)") from None
        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow reports a damaged file in many ways
            raise ValueError(f"metadata table {path!r} is not a readable parquet file ({_one_line(e)})") from None
        columns = list(table.column_names)
        data = table.to_pydict()
        rows = [list(r) for r in zip(*(data[c] for c in columns))]
    else:
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                lines = list(csv.reader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise ValueError(f"metadata table {path!r} is not a readable CSV file ({_one_line(e)})") from None
        lines = [line for line in lines if any(cell.strip() for cell in line)]
        if not lines:
            raise ValueError(f"metadata table {path!r} is empty: expected a header line naming the columns, "
                             "then a row per image")
        columns, rows = [c.strip() for c in lines[0]], lines[1:]
        for i, row in enumerate(rows, 1):
            if len(row) != len(columns):
                raise ValueError(f"metadata table {path!r} row {i} has {len(row)} cells but the header names "
                                 f"{len(columns)} columns ({', '.join(columns)})")
    if not rows:
        raise ValueError(f"metadata table {path!r} has no rows: expected a row per image under its header "
                         f"({', '.join(columns)})")
    return columns, rows


@dataclasses.dataclass(frozen=True, eq=False)
class FolderSource:
    """Random access to the images of a checked metadata table (build it with :func:`open_folder`).

    ``source[i]`` decodes row ``i``: ``{"image": uint8 (S, S, C), "label": int, "bias": int, "mask": bool (S, S)}``
    (``S`` = ``image_size``, resized bilinearly; ``C`` 3 for rgb, 1 for grey; ``bias`` and ``mask`` only when
    the table has those columns). Holds paths and arrays only, no open file: it pickles.

    Attributes:
      table: the metadata table's path (named in errors).
      paths: each row's image, an absolute path.
      labels: ``(N,)`` int32 class indices.
      bias: ``(N,)`` int32 bias labels, or ``None`` (no bias column).
      masks: each row's mask image (absolute path, ``None`` for an empty cell), or ``None`` (no mask column).
      splits: ``(N,)`` split names, or ``None`` (no split column).
      classes: the class names by index when the labels were names, else ``None``.
      num_classes: the number of classes (``num_classes`` given, else ``max label + 1`` or the names).
      image_size: side of the square images returned.
      mode: ``rgb`` or ``grey``.
      decode: how the images (not the masks) are decoded to that size (:data:`jaxbias.data.images.DECODES`).
    """

    table: str
    paths: tuple[str, ...]
    labels: np.ndarray
    bias: np.ndarray | None
    masks: tuple[str | None, ...] | None
    splits: np.ndarray | None
    classes: tuple[str, ...] | None
    num_classes: int
    image_size: int
    mode: str
    decode: str = "full"

    def __len__(self) -> int:
        return len(self.paths)

    def _open(self, path: str, i: int, what: str, mode: str) -> np.ndarray:
        try:
            return open_uint8(path, mode, self.image_size, decode=self.decode if what == "image" else "full")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"metadata table {self.table!r} row {i + 1}: cannot decode the {what} {path!r} "
                             f"({_one_line(e)})") from None

    def _row(self, i: int) -> int:
        n = len(self.paths)
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool) or not -n <= i < n:
            raise IndexError(f"index {i!r} is outside the {n} rows of metadata table {self.table!r}")
        return int(i) % n

    def read(self, i: int, field: str) -> np.ndarray:
        """Row ``i``'s ``image`` (uint8 ``(S, S, C)``) or ``mask`` (bool ``(S, S)``) alone: one file decoded."""
        i = self._row(i)
        if field == "image":
            return self._open(self.paths[i], i, "image", self.mode)
        if field == "mask" and self.masks is not None:
            path = self.masks[i]
            return (np.zeros((self.image_size,) * 2, bool) if path is None
                    else self._open(path, i, "mask", "grey")[..., 0] > 127.5)  # > 0.5 of the grey range
        raise KeyError(f"metadata table {self.table!r} has no {field!r} per row")

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self._row(i)
        out: dict[str, Any] = {"image": self.read(i, "image"), "label": int(self.labels[i])}
        if self.bias is not None:
            out["bias"] = int(self.bias[i])
        if self.masks is not None:
            out["mask"] = self.read(i, "mask")
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class ArtifactSource:
    """``source`` (a :class:`FolderSource`) with ``artifact`` drawn into the rows ``carries`` marks, when decoded.

    ``read(i, "image")`` is the source's uint8 image, with the artifact drawn in (on the 0..255 pixels, before
    any division by 255) when ``carries[i]``; ``read(i, "mask")`` is the artifact's mask there (all ``False``
    elsewhere), OR the source's mask column when it has one. A row's artifact depends only on ``(seed, i)``
    (its generator is ``np.random.default_rng([seed, 1, i])``, as :func:`jaxbias.data.artifacts.insert_all`
    seeds sample ``i``): decoding the same row twice, or streamed and in memory, gives the same arrays. Holds
    the source, a name, an int and a bool array: it pickles.

    Attributes:
      source: the folder read.
      artifact: one of :data:`jaxbias.data.artifacts.ARTIFACTS`.
      seed: seeds the artifacts' randomness (e.g. a patch's position).
      carries: ``(N,)`` bool over the source's rows, ``True`` where the artifact is drawn.
    """

    source: FolderSource
    artifact: str
    seed: int
    carries: np.ndarray

    def __post_init__(self):
        if self.artifact not in ARTIFACTS:
            raise ValueError(f"artifact must be one of {ARTIFACTS}; got {self.artifact!r}")
        if np.shape(self.carries) != (len(self.source),):
            raise ValueError(f"carries must be ({len(self.source)},) bool, one per row of metadata table "
                             f"{self.source.table!r}; got shape {np.shape(self.carries)}")

    def __len__(self) -> int:
        return len(self.source)

    def _draw(self, image: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        return named(self.artifact)(image, np.random.default_rng([self.seed, 1, i]))

    def read(self, i: int, field: str) -> np.ndarray:
        """Row ``i``'s ``image`` (uint8 ``(S, S, C)``, artifact drawn in where carried) or ``mask`` (bool
        ``(S, S)``: the artifact's pixels, OR the mask column's)."""
        i = self.source._row(i)
        if field == "image":
            image = self.source.read(i, "image")
            return self._draw(image, i)[0] if self.carries[i] else image
        if field == "mask":
            s, c = self.source.image_size, 1 if self.source.mode == "grey" else 3
            # the artifacts' masks do not depend on the pixels: drawn on a blank image, no file decoded
            mask = self._draw(np.zeros((s, s, c), np.uint8), i)[1] if self.carries[i] else np.zeros((s, s), bool)
            return mask | self.source.read(i, "mask") if self.source.masks is not None else mask
        raise KeyError(f"metadata table {self.source.table!r} has no {field!r} per row")

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.source[i], "image": self.read(i, "image"), "mask": self.read(i, "mask")}


def _column(columns: Sequence[str], name: str, role: str, table: str) -> int:
    if name not in columns:
        raise ValueError(f"metadata table {table!r} has no column {name!r} ({role}); its columns: "
                         f"{', '.join(columns)}")
    return list(columns).index(name)


def _file(root: str, cell: Any, i: int, role: str, table: str) -> str:
    text = _text(cell)
    if not text:
        raise ValueError(f"metadata table {table!r} row {i}: the {role} is empty")
    path = text if os.path.isabs(text) else os.path.join(root, text)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metadata table {table!r} row {i}: the {role} {text!r} does not exist"
                                + ("" if os.path.isabs(text) else f" under root {root!r}"))
    return os.path.abspath(path)


def _ints(cells: Sequence[Any], column: str, table: str) -> np.ndarray:
    out = np.empty(len(cells), np.int32)
    for i, cell in enumerate(cells):
        v = _as_int(cell)
        if v is None:
            raise ValueError(f"metadata table {table!r} row {i + 1}: column {column!r} holds {_text(cell)!r}, "
                             "not an int")
        if v < 0:
            raise ValueError(f"metadata table {table!r} row {i + 1}: column {column!r} holds {v}; expected a "
                             "non-negative int")
        out[i] = v
    return out


def _labels(cells: Sequence[Any], column: str, table: str,
            num_classes: int | None) -> tuple[np.ndarray, tuple[str, ...] | None, int]:
    """(label indices, class names or ``None``, number of classes): ints as given; names in sorted order."""
    as_ints = [_as_int(c) for c in cells]
    if all(v is None for v in as_ints):
        for i, cell in enumerate(cells, 1):
            if not _text(cell):
                raise ValueError(f"metadata table {table!r} row {i}: the label (column {column!r}) is empty")
        classes = tuple(sorted({_text(c) for c in cells}))
        index = {name: k for k, name in enumerate(classes)}
        labels = np.array([index[_text(c)] for c in cells], np.int32)
        if num_classes is not None and len(classes) > num_classes:
            raise ValueError(f"metadata table {table!r} column {column!r} names {len(classes)} classes "
                             f"({', '.join(classes)}); expected at most num_classes={num_classes}")
        return labels, classes, num_classes or len(classes)
    if any(v is None for v in as_ints):  # mostly ints: a typo, not a class name
        i = next(i for i, v in enumerate(as_ints) if v is None)
        raise ValueError(f"metadata table {table!r} row {i + 1}: column {column!r} holds {_text(cells[i])!r}, "
                         "not an int (the other labels are ints; give every label as an int or every one as a name)")
    labels = _ints(cells, column, table)
    if num_classes is not None:
        bad = np.flatnonzero(labels >= num_classes)
        if bad.size:
            raise ValueError(f"metadata table {table!r} row {bad[0] + 1}: label {labels[bad[0]]} (column "
                             f"{column!r}) is outside the {num_classes} classes 0 to {num_classes - 1}")
    return labels, None, num_classes or int(labels.max()) + 1


def open_folder(root: str | os.PathLike, metadata: str | os.PathLike, *, path_column: str = "path",
                label_column: str = "label", bias_column: str | None = None, mask_column: str | None = None,
                split_column: str | None = None, num_classes: int | None = None, image_size: int = 64,
                mode: str = "rgb", decode: str = "full") -> FolderSource:
    """The image folder ``root`` described by the table ``metadata``, every row checked; nothing decoded.

    Args:
      root: the folder the table's relative paths start from.
      metadata: the table (CSV, or parquet for a name ending ``.parquet``).
      path_column, label_column: the columns of each image's path and class (int index or class name).
      bias_column, mask_column, split_column: the optional columns of the bias label (non-negative int), the
        artifact mask's path and the split name; ``None`` when the table has none.
      num_classes: labels must lie in ``[0, num_classes)``; ``None``: as many as the labels say.
      image_size: side of the square images :class:`FolderSource` returns (≥ 1).
      mode: ``rgb`` (3 channels) or ``grey`` (1).
      decode: ``full`` or ``reduced`` (:data:`jaxbias.data.images.DECODES`: JPEGs decoded at a reduced scale
        first, several times faster for photos a few times larger than ``image_size``).
    Raises:
      FileNotFoundError: no folder ``root``, no table, or a path in the table that does not exist.
      ValueError: a column missing (the columns present listed), an empty table, a label outside
        ``num_classes``, a cell that is not an int where one is needed. One line naming the table and the row.

    Example:
      >>> source = open_folder("photos", "photos/meta.csv", label_column="diagnosis", bias_column="ruler")  # doctest: +SKIP
      >>> source[0]["image"].shape  # doctest: +SKIP
      (64, 64, 3)
    """
    root, table = os.fspath(root), os.fspath(metadata)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES}; got {decode!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive int; got {image_size!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
                                    or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int or None; got {num_classes!r}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder root {root!r} is not a directory (expected the folder the paths "
                                f"of metadata table {table!r} start from)")
    columns, rows = read_table(table)
    roles = {"path": path_column, "label": label_column, "bias": bias_column, "mask": mask_column,
             "split": split_column}
    where = {role: _column(columns, name, f"the {role} column", table) for role, name in roles.items()
             if name is not None}
    cells = {role: [row[k] for row in rows] for role, k in where.items()}
    paths = tuple(_file(root, c, i, "image", table) for i, c in enumerate(cells["path"], 1))
    labels, classes, k = _labels(cells["label"], label_column, table, num_classes)
    bias = _ints(cells["bias"], bias_column, table) if "bias" in cells else None
    masks = None
    if "mask" in cells:
        masks = tuple(_file(root, c, i, "mask", table) if _text(c) else None for i, c in enumerate(cells["mask"], 1))
    splits = None
    if "split" in cells:
        for i, c in enumerate(cells["split"], 1):
            if not _text(c):
                raise ValueError(f"metadata table {table!r} row {i}: the split (column {split_column!r}) is empty")
        splits = np.array([_text(c) for c in cells["split"]])
    return FolderSource(table, paths, labels, bias, masks, splits, classes, int(k), int(image_size), mode, decode)


__all__ = ["MODES", "ArtifactSource", "FolderSource", "open_folder", "read_table"]
