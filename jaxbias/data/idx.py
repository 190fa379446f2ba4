"""IDX files, the format of MNIST and Fashion-MNIST, read from a local directory.

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>`` (``<type>``
``0x08`` for unsigned bytes: ``0x00000803`` for images ``(N, H, W)``,
``0x00000801`` for labels ``(N,)``), ``ndim`` big-endian uint32 sizes, then the
values in C order (big-endian for the wider types). Files may be gzipped
(recognised by their first bytes, whatever their name).

A directory of a 28×28 10-class set holds the four files of the original
distribution (``.gz`` or not): ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

#: IDX type byte -> big-endian NumPy dtype
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
#: the four files of a directory (without ``.gz``): (train images, train labels, test images, test labels)
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_GZIP_MAGIC = b"\x1f\x8b"


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    return data if data is not None else b""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzipped or raw), in native byte order.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: not an IDX file (bad magic number, bad gzip data), or its data are shorter or longer
        than its sizes say. Each message is one line naming the file.

    Example:
      >>> images = read_idx("fashion-mnist/train-images-idx3-ubyte.gz")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file {path!r} does not exist")
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == _GZIP_MAGIC
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            head = _read_exact(f, 4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_TYPES or head[3] == 0:
                raise ValueError(f"{path!r} is not an IDX file: its magic number is 0x{head.hex():0>8} (expected "
                                 "0x00000803 for images, 0x00000801 for labels, 0x0000TTDD in general)")
            dtype, ndim = np.dtype(IDX_TYPES[head[2]]), head[3]
            sizes = _read_exact(f, 4 * ndim)
            if len(sizes) < 4 * ndim:
                raise ValueError(f"{path!r} is truncated: its header names {ndim} dimensions but ends after "
                                 f"{len(sizes) // 4}")
            dims = struct.unpack(f">{ndim}I", sizes)
            out = np.empty(dims, dtype=dtype)
            want = out.nbytes
            got = f.readinto(memoryview(out.reshape(-1).view(np.uint8))) if want else 0
            if got < want:
                raise ValueError(f"{path!r} is truncated: dims {dims} need {want} bytes of {dtype.name} data, "
                                 f"the file has {got}")
            if _read_exact(f, 1):
                raise ValueError(f"{path!r} has more data than its dims {dims} say ({want} bytes): not an IDX "
                                 "file of that shape")
    except (OSError, EOFError, zlib.error) as e:
        if not gzipped:
            raise
        raise ValueError(f"{path!r} is not a valid gzip file ({type(e).__name__}: {e})") from None
    return out.astype(dtype.newbyteorder("="), copy=False)


def find_idx(data_dir: str | os.PathLike, name: str) -> str:
    """The path of IDX file ``name`` in ``data_dir``: ``name`` or ``name.gz`` (``FileNotFoundError`` if neither)."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"data_dir {os.fspath(data_dir)!r} holds no {name} or {name}.gz (expected the four IDX "
                            f"files {', '.join(IDX_FILES)}, gzipped or not)")


def read_idx_pair(images_path: str, labels_path: str, *, size: int = 28,
                  num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, size, size) uint8, labels (N,) int32)`` from an images and a labels IDX file, checked to agree."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (size, size):
        raise ValueError(f"{images_path!r} holds {images.dtype} {images.shape}; expected uint8 images "
                         f"(N, {size}, {size})")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_path!r} holds {labels.dtype} {labels.shape}; expected uint8 labels (N,)")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path!r} holds {images.shape[0]} images but {labels_path!r} holds "
                         f"{labels.shape[0]} labels; expected as many of each")
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"{labels_path!r} has labels up to {int(labels.max())}; expected classes 0 to "
                         f"{num_classes - 1}")
    return images, labels.astype(np.int32)


def read_idx_dir(data_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_x, train_y, test_x, test_y)`` of the four 28×28 IDX files (:data:`IDX_FILES`) in ``data_dir``."""
    if data_dir is None:
        raise ValueError("data_dir is needed to read IDX files: pass the folder holding "
                         f"{', '.join(IDX_FILES)} (.gz or not)")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir {os.fspath(data_dir)!r} is not a directory (expected the folder of the "
                                f"IDX files {', '.join(IDX_FILES)})")
    paths = [find_idx(data_dir, name) for name in IDX_FILES]
    train_x, train_y = read_idx_pair(paths[0], paths[1])
    test_x, test_y = read_idx_pair(paths[2], paths[3])
    return train_x, train_y, test_x, test_y
