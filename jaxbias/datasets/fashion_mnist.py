"""Fashion-MNIST: 10-class classification of 28×28 grey images of clothing (60,000 train / 10,000 test), read
from the four IDX files of the original distribution in a local folder, or through tfds ``fashion_mnist``.
No bias attribute: a plain classification set (at the papers' scale) for training and input-pipeline runs; the
bundled protocols apply to its images through their ``images`` setting (``artifact_mnist``, ``biased_mnist``)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import numpy as np

from jaxbias import settings as settings_lib
from jaxbias.data.sources import FASHION_SOURCES, load_fashion_mnist
from jaxbias.datasets import Dataset
from jaxbias.types import Batch

IMAGES = True
#: the class names, by label
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Fashion-MNIST's data settings.

    Attributes:
      source: where the images come from: dir = the IDX files (train-images-idx3-ubyte[.gz], ...) in data_dir,
        no network; tfds = tensorflow-datasets' fashion_mnist (downloaded when missing).
      data_dir: the folder of the IDX files (source dir, required) or the tensorflow-datasets data_dir (source tfds).
      limit: use only the first N training images (quick runs); none = all 60,000. The test set stays whole.
    """

    CHOICES: ClassVar[dict] = {"source": FASHION_SOURCES}
    source: str = "dir"
    data_dir: str | None = None
    limit: int | None = None

    def __post_init__(self):
        settings_lib.check(self)
        settings_lib.need(self.limit is None or self.limit >= 1, self, "limit", "a positive int or none")


class FashionMNIST(NamedTuple):
    """The arrays of :func:`load`: ``*_x`` ``(N, 28, 28, 1)`` float32 in [0, 1], ``*_y`` ``(N,)`` int32."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str


def _to_float(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` → float32 ``(N, 28, 28, 1)`` ``x / 255`` in one allocation."""
    out = np.empty((*images.shape, 1), np.float32)
    np.divide(images[..., None], np.float32(255.0), out=out, dtype=np.float32)
    return out


def view(data) -> Dataset:
    train = Batch(data.train_x, data.train_y)
    return Dataset("fashion_mnist", train, {"test": Batch(data.test_x, data.test_y)}, 10, train, data)


def load(settings: Settings, *, seed: int) -> Dataset:
    del seed  # the split is the distribution's; nothing is drawn
    images = load_fashion_mnist(settings.source, data_dir=settings.data_dir)
    n = images.train_x.shape[0]
    if settings.limit is not None and settings.limit > n:
        raise ValueError(f"limit must be at most the {n} training images of Fashion-MNIST ({settings.source}); "
                         f"got {settings.limit}")
    keep = slice(None if settings.limit is None else settings.limit)
    return view(FashionMNIST(_to_float(images.train_x[keep]), images.train_y[keep].astype(np.int32),
                             _to_float(images.test_x), images.test_y.astype(np.int32), images.source))
