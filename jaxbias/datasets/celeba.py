"""CelebA: target Male, one confounding attribute, the published subset's group counts (SPEC: region
attribution on CelebA). Read from a prepared tensorflow-datasets ``celeb_a``."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxbias import settings as settings_lib
from jaxbias.data.celeba import CONFOUNDERS, load_celeba
from jaxbias.datasets import Dataset
from jaxbias.types import Batch

IMAGES = True


@dataclasses.dataclass(frozen=True)
class Settings:
    """CelebA's data settings.

    Attributes:
      confounder: the confounding attribute (the target is Male).
      image_size: the image side (at least 48).
      data_dir: the tensorflow-datasets data_dir holding the prepared celeb_a.
    """

    CHOICES: ClassVar[dict] = {"confounder": CONFOUNDERS}
    confounder: str = "Blond_Hair"
    image_size: int = 128
    data_dir: str | None = None

    def __post_init__(self):
        settings_lib.check(self)
        settings_lib.need(self.image_size >= 48, self, "image_size", "an int >= 48")


def view(data) -> Dataset:
    # target = Male, bias = the confounder; the concept set is the region classifier's (its label: the confounder)
    train = Batch(data.train_x, data.train_y, data.train_c)
    evals = {"test": Batch(data.test_x, data.test_y, data.test_c), "val": Batch(data.val_x, data.val_y, data.val_c)}
    concept = Batch(data.attr_x, data.attr_c, data.attr_c)
    return Dataset("celeba", train, evals, 2, concept, data)


def load(settings: Settings, *, seed: int) -> Dataset:
    return view(load_celeba(settings.confounder, data_dir=settings.data_dir, image_size=settings.image_size, seed=seed))
