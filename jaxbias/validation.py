"""Input checks shared across the package: clear ``ValueError``s naming the argument."""
from __future__ import annotations

from typing import Any

import numpy as np


def check_labels(
    name: str, labels: Any, *, n: int | None = None, against: str = "the inputs", num_classes: int | None = None
) -> np.ndarray:
    """``labels`` as a 1-D integer NumPy array of class indices, or a ``ValueError``.

    Args:
      name: the argument's name, used in the messages.
      labels: array-like of class indices.
      n: required length (one label per row of ``against``), or ``None``.
      against: what ``n`` counts, for the message (e.g. ``"images"``).
      num_classes: when given, labels must lie in ``[0, num_classes)``;
        otherwise they must be non-negative.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer class labels, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but {against} has {n}; expected one label each")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if num_classes is not None and (lo < 0 or hi >= num_classes):
            raise ValueError(f"{name} must be class indices in [0, {num_classes - 1}], got range [{lo}, {hi}]")
        if lo < 0:
            raise ValueError(f"{name} must be non-negative class indices, got minimum {lo}")
    return arr
