"""Evaluation metrics: accuracy overall, per (target, bias) group, bias-aligned
and bias-conflicting accuracy, worst group and largest gap.

Metrics take predictions and labels (host-side NumPy; they are cheap) so that
the same functions serve every model and method. Empty groups are reported as
absent, never as NaN.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxbias.validation import check_labels


def _labels(name: str, a: Any, n: int | None = None) -> np.ndarray:
    return check_labels(name, a, n=n, against="pred")


def accuracy(pred: Any, labels: Any) -> float:
    """Fraction of ``pred == labels``; raises for an empty set."""
    pred = _labels("pred", pred)
    labels = _labels("labels", labels, pred.shape[0])
    if pred.size == 0:
        raise ValueError("accuracy of an empty set is undefined (pred has 0 entries)")
    return float(np.mean(pred == labels))


def group_accuracy(pred: Any, labels: Any, groups: Any) -> dict[int, tuple[float, int]]:
    """Accuracy per value of ``groups``: ``{group: (accuracy, count)}`` (non-empty groups only)."""
    pred = _labels("pred", pred)
    labels = _labels("labels", labels, pred.shape[0])
    groups = _labels("groups", groups, pred.shape[0])
    correct = (pred == labels).astype(np.float64)
    counts = np.bincount(groups)
    sums = np.bincount(groups, weights=correct, minlength=counts.shape[0])
    return {int(g): (float(sums[g] / counts[g]), int(counts[g])) for g in np.nonzero(counts)[0]}


def by_group(pred: Any, labels: Any, groups: Any) -> dict[str, Any]:
    """Per-group accuracy with the worst group and the largest gap (fairlearn's ``by_group`` view)."""
    per = group_accuracy(pred, labels, groups)
    accs = [a for a, _ in per.values()]
    return {
        "by_group": {str(g): {"accuracy": a, "count": c} for g, (a, c) in per.items()},
        "worst_group": float(min(accs)),
        "gap": float(max(accs) - min(accs)),
    }


def bias_report(pred: Any, labels: Any, bias: Any, *, num_biases: int | None = None) -> dict[str, Any]:
    """Accuracy views of a biased dataset.

    Returns:
      ``accuracy`` (overall), ``aligned`` (samples whose bias label equals the
      target), ``conflicting`` (bias label ≠ target; absent if none),
      ``group_mean`` (mean over the non-empty (target, bias) groups — the
      "unbiased" metric of ReBias/EnD), ``worst_group``, ``gap`` and the
      per-group table keyed ``"t{target}_b{bias}"``.
    """
    pred = _labels("pred", pred)
    labels = _labels("labels", labels, pred.shape[0])
    bias = _labels("bias", bias, pred.shape[0])
    nb = int(num_biases if num_biases is not None else (bias.max() + 1 if bias.size else 1))
    if bias.size and bias.max() >= nb:
        raise ValueError(f"bias has label {bias.max()} but num_biases={nb}")
    out: dict[str, Any] = {"accuracy": accuracy(pred, labels), "count": int(pred.shape[0])}
    aligned = labels == bias
    if aligned.any():
        out["aligned"] = accuracy(pred[aligned], labels[aligned])
    if (~aligned).any():
        out["conflicting"] = accuracy(pred[~aligned], labels[~aligned])
    per = group_accuracy(pred, labels, labels * nb + bias)
    accs = np.array([a for a, _ in per.values()])
    out["group_mean"] = float(accs.mean())
    out["worst_group"] = float(accs.min())
    out["gap"] = float(accs.max() - accs.min())
    out["groups"] = {f"t{g // nb}_b{g % nb}": {"accuracy": a, "count": c} for g, (a, c) in per.items()}
    return out
