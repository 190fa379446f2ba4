"""UCI Adult: income above 50K from census features, the protected attribute (sex or race) as the bias
(SPEC: FMD's tabular setting). Read from a local ``adult.data`` file."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from jaxbias import settings as settings_lib
from jaxbias.data.adult import PROTECTED, load_adult
from jaxbias.datasets import Dataset
from jaxbias.types import Batch


@dataclasses.dataclass(frozen=True)
class Settings:
    """Adult's data settings.

    Attributes:
      data_path: the adult.data file (none: $JAXBIAS_ADULT).
      protected: the protected attribute (the bias).
    """

    CHOICES: ClassVar[dict] = {"protected": PROTECTED}
    data_path: str | None = None
    protected: str = "sex"

    def __post_init__(self):
        settings_lib.check(self)


def view(data) -> Dataset:
    # the test set carries no bias during training (its fairness views come from jaxbias.runs.unlearning)
    train = Batch(data.train_x, data.train_y, data.train_a)
    return Dataset("adult", train, {"test": Batch(data.test_x, data.test_y)}, int(np.max(train.y)) + 1, train, data)


def load(settings: Settings, *, seed: int) -> Dataset:
    return view(load_adult(settings.data_path, protected=settings.protected, seed=seed))
