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


def _finite_scores(name: str, s: Any) -> np.ndarray:
    arr = np.asarray(s, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{name} is empty; expected directional derivatives of at least one sample")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf (shape {arr.shape})")
    return arr


def tcav(s: Any) -> float:
    """TCAV score: the fraction of positive directional derivatives, ``mean[s > 0]``.

    ``s`` holds ``∇_a f_c(a(x)) · h`` per artifact sample (and per spatial
    position for conv layers), any shape. An unbiased model gives ≈ 0.5; a model
    that relies on the concept gives ≈ 1 (or ≈ 0 for a negative influence).

    Example:
      >>> tcav(np.array([0.3, -0.1, 0.2, 0.5]))
      0.75
    """
    return float(np.mean(_finite_scores("s", s) > 0))


def tcav_sens(s: Any) -> float:
    """TCAV sensitivity: ``mean |s|`` of the directional derivatives (lower is less sensitive).

    Example:
      >>> tcav_sens(np.array([0.3, -0.1]))
      0.2
    """
    return float(np.mean(np.abs(_finite_scores("s", s))))


def tcav_significance(concept_scores: Any, random_scores: Any) -> dict[str, float]:
    """Two-sided t-test of TCAV scores of the concept CAV(s) against CAVs of random splits.

    With several concept scores (CAVs fitted on resampled data) Welch's
    two-sample test compares the two lists; with one concept score, a
    one-sample test asks whether the random scores' mean equals it.

    Returns:
      ``{"p_value", "t", "concept_mean", "random_mean", "random_std"}``.
    """
    from scipy import stats

    c = _finite_scores("concept_scores", concept_scores).ravel()
    r = _finite_scores("random_scores", random_scores).ravel()
    if r.size < 2:
        raise ValueError(f"random_scores needs at least 2 values for a t-test; got {r.size}")
    if c.size == 1:
        res = stats.ttest_1samp(r, c[0])
        t = -float(res.statistic)  # positive when the concept scores above the random ones
    else:
        res = stats.ttest_ind(c, r, equal_var=False)
        t = float(res.statistic)
    p = float(res.pvalue)
    if not np.isfinite(p):  # zero variance on both sides: equal means ↔ p = 1, else 0
        p = 1.0 if np.isclose(c.mean(), r.mean()) else 0.0
    return {"p_value": p, "t": t, "concept_mean": float(c.mean()), "random_mean": float(r.mean()),
            "random_std": float(r.std(ddof=1))}
