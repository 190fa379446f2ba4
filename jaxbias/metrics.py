"""Evaluation metrics: accuracy overall, per (target, bias) group, bias-aligned
and bias-conflicting accuracy, worst group and largest gap.

Metrics take predictions and labels (host-side NumPy; they are cheap) so that
the same functions serve every model and method. Empty groups are reported as
absent, never as NaN.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
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


def tcav(s: Any, *, zeros: str = "exclude") -> float:
    """TCAV score: the fraction of positive directional derivatives.

    ``s`` holds ``∇_a f_c(a(x)) · h`` per artifact sample (and per spatial
    position for conv layers), any shape. An unbiased model gives ≈ 0.5; a model
    that relies on the concept gives ≈ 1 (or ≈ 0 for a negative influence).

    ``zeros`` says what an ``s`` of exactly 0 (a dead unit, a masked position)
    counts as: ``"exclude"`` (the default, as the RR-ClArC release computes it:
    ``#(s > 0) / #(s ≠ 0)``, and 0 when every ``s`` is 0, its ``pos / (pos + neg + ε)``)
    or ``"count"`` (``#(s > 0) / #s``, as tf/tcav and captum do: a zero counts as
    not positive).

    Example:
      >>> tcav(np.array([0.3, -0.1, 0.2, 0.5]))
      0.75
      >>> tcav(np.array([0.3, 0.0, -0.2, 0.0]))  # the zeros left out
      0.5
      >>> tcav(np.array([0.3, 0.0, -0.2, 0.0]), zeros="count")
      0.25
    """
    if zeros not in ("exclude", "count"):
        raise ValueError(f"zeros must be 'exclude' or 'count'; got {zeros!r}")
    v = _finite_scores("s", s)
    pos = int(np.sum(v > 0))
    if zeros == "count":
        return pos / v.size
    nonzero = pos + int(np.sum(v < 0))
    return pos / nonzero if nonzero else 0.0


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
    from scipy import stats  # ~1 s, kept out of CLI start (metrics loads there)

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


# --- explanation metrics (SPEC §7): artifact relevance share and mask post-processing ---------------

def _real_dtype(name: str, dtype: Any, *, allow_bool: bool) -> None:
    kinds = "biuf" if allow_bool else "iuf"
    if np.dtype(dtype).kind not in kinds:
        expected = "a bool, integer or float array" if allow_bool else "an integer or float array"
        raise ValueError(f"{name} has dtype {np.dtype(dtype)}, expected {expected}")


def _explain_shapes(relevance_shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Check the shapes of ``relevance`` and ``mask``; returns ``(B, H, W)``."""
    if len(relevance_shape) not in (3, 4):
        raise ValueError(
            f"relevance has shape {relevance_shape} ({len(relevance_shape)}-D), expected (B, H, W) or (B, H, W, C)"
        )
    if 0 in relevance_shape:
        raise ValueError(f"relevance has shape {relevance_shape}, expected every axis to be non-empty")
    b, h, w = relevance_shape[:3]
    if len(mask_shape) == 2:
        if mask_shape != (h, w):
            raise ValueError(
                f"mask has shape {mask_shape}, expected (H, W) = {(h, w)} (shared mask) "
                f"or (B, H, W) = {(b, h, w)} to match relevance of shape {relevance_shape}"
            )
    elif len(mask_shape) == 3:
        if mask_shape != (b, h, w):
            raise ValueError(
                f"mask has shape {mask_shape}, expected (B, H, W) = {(b, h, w)} "
                f"or (H, W) = {(h, w)} to match relevance of shape {relevance_shape}"
            )
    else:
        raise ValueError(f"mask has shape {mask_shape} ({len(mask_shape)}-D), expected (H, W) or (B, H, W)")
    return b, h, w


def _check_mask_values(name: str, m: np.ndarray, *, upper: float | None = 1.0) -> None:
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains NaN or inf (shape {m.shape})")
    lo = float(m.min()) if m.size else 0.0
    hi = float(m.max()) if m.size else 0.0
    if lo < 0.0 or (upper is not None and hi > upper):
        expected = "values in [0, 1]" if upper is not None else "non-negative values"
        raise ValueError(f"{name} has values in [{lo:g}, {hi:g}], expected {expected}")


def _explain_inputs(relevance: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``relevance`` (float64, channel axis kept) and ``mask`` as float64 ``(B, H, W)``."""
    r = np.asarray(relevance)
    m = np.asarray(mask)
    _real_dtype("relevance", r.dtype, allow_bool=False)
    _real_dtype("mask", m.dtype, allow_bool=True)
    b, h, w = _explain_shapes(r.shape, m.shape)
    r = r.astype(np.float64)
    m = m.astype(np.float64)
    if not np.all(np.isfinite(r)):
        raise ValueError(f"relevance contains NaN or inf (shape {r.shape})")
    _check_mask_values("mask", m)
    if m.ndim == 2:  # the one documented broadcast: a shared (H, W) mask for every sample
        m = np.broadcast_to(m, (b, h, w))
    return r, m


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` clipped to [0, 1], and 0 where ``den == 0`` (never NaN)."""
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return np.clip(out, 0.0, 1.0)


def r_bias(relevance: Any, mask: Any) -> np.ndarray:
    """Share of absolute relevance on the artifact: ``R_bias = Σ_j |R_j M_j| / Σ_j |R_j|`` per sample.

    With a channel axis, ``|R|`` is taken per element and summed over the
    channels, so a pixel contributes ``Σ_c |R_{j,c}|``, weighted by its mask
    value ``M_j``. A soft mask (values in [0, 1]) weights each pixel by its
    value; since ``M_j ≥ 0`` the formula equals ``Σ_j M_j |R_j| / Σ_j |R_j|``.
    A sample whose total absolute relevance is 0 has ``R_bias = 0`` (no
    relevance at all, hence none on the artifact) — never NaN. Results are
    clipped to [0, 1] against rounding.

    Args:
      relevance: ``(B, H, W)`` or ``(B, H, W, C)`` real, finite relevance
        (NumPy or JAX array).
      mask: artifact mask, ``(B, H, W)`` (one per sample) or ``(H, W)`` (the
        same mask for every sample — the only broadcast performed), bool or
        real with values in [0, 1].

    Returns:
      ``(B,)`` float64 NumPy array with values in [0, 1].

    Raises:
      ValueError: wrong ndim, empty axes, mismatched shapes, non-real dtypes,
        NaN/inf, or mask values outside [0, 1].

    Example:
      >>> r_bias(np.array([[[1.0, -3.0]]]), np.array([[0, 1]]))
      array([0.75])
    """
    r, m = _explain_inputs(relevance, mask)
    a = np.abs(r)
    if a.ndim == 4:
        a = a.sum(axis=-1)
    num = (a * m).sum(axis=(1, 2))
    den = a.sum(axis=(1, 2))
    return _safe_ratio(num, den)


def _dtype_of(x: Any) -> np.dtype:
    """The dtype of an array or tracer (``.dtype``), else that of ``np.asarray(x)``."""
    dt = getattr(x, "dtype", None)
    return np.dtype(dt) if dt is not None else np.asarray(x).dtype


def r_bias_jax(relevance: Any, mask: Any) -> Any:
    """Jittable :func:`r_bias`: same formula, shapes and conventions, as a JAX array.

    Shapes and dtypes are checked when the function is traced (they are static
    under ``jax.jit``), so a wrong shape raises ``ValueError`` at trace time.
    Values (NaN/inf, mask outside [0, 1]) can only be checked on concrete
    arrays: they are checked when called outside ``jit`` and not inside it —
    use :func:`r_bias` on the host for checked evaluation. A sample with zero
    total relevance gives 0, never NaN (the division is guarded so that its
    gradient is finite too). The result has JAX's default float dtype
    (float32 unless x64 is enabled).

    Args:
      relevance: ``(B, H, W)`` or ``(B, H, W, C)`` relevance.
      mask: ``(B, H, W)`` or shared ``(H, W)`` mask, bool or real in [0, 1].

    Returns:
      ``(B,)`` JAX array with values in [0, 1].
    """
    r_shape, m_shape = tuple(jnp.shape(relevance)), tuple(jnp.shape(mask))
    _real_dtype("relevance", _dtype_of(relevance), allow_bool=False)
    _real_dtype("mask", _dtype_of(mask), allow_bool=True)
    b, h, w = _explain_shapes(r_shape, m_shape)
    if not isinstance(relevance, jax.core.Tracer) and not isinstance(mask, jax.core.Tracer):
        _explain_inputs(np.asarray(relevance), np.asarray(mask))  # value checks on concrete inputs
    ftype = jnp.result_type(float)
    a = jnp.abs(jnp.asarray(relevance).astype(ftype))
    if a.ndim == 4:
        a = a.sum(axis=-1)
    m = jnp.asarray(mask).astype(ftype)
    if m.ndim == 2:  # shared mask, the documented broadcast
        m = jnp.broadcast_to(m, (b, h, w))
    num = (a * m).sum(axis=(1, 2))
    den = a.sum(axis=(1, 2))
    pos = den > 0
    out = jnp.where(pos, num / jnp.where(pos, den, 1.0), 0.0)
    return jnp.clip(out, 0.0, 1.0)


def relevance_mass_accuracy(relevance: Any, mask: Any) -> np.ndarray:
    """Relevance-mass accuracy: the share of positive relevance that falls inside the mask.

    ``RMA = Σ_j M_j R_j⁺ / Σ_j R_j⁺`` with ``R⁺ = max(R, 0)`` taken per element;
    with a channel axis the positive parts are summed over channels (like
    :func:`r_bias` does with ``|R|``). Negative relevance is ignored. A sample
    without any positive relevance has RMA = 0 — never NaN.

    Args:
      relevance: ``(B, H, W)`` or ``(B, H, W, C)`` real, finite relevance.
      mask: ``(B, H, W)`` or shared ``(H, W)`` mask, bool or real in [0, 1]
        (soft masks weight pixels by their value).

    Returns:
      ``(B,)`` float64 NumPy array with values in [0, 1].

    Raises:
      ValueError: as :func:`r_bias`.
    """
    r, m = _explain_inputs(relevance, mask)
    p = np.maximum(r, 0.0)
    if p.ndim == 4:
        p = p.sum(axis=-1)
    return _safe_ratio((p * m).sum(axis=(1, 2)), p.sum(axis=(1, 2)))


def _positive_number(name: str, v: Any, *, upper: float | None = None) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} is {v!r}, expected a real number")
    v = float(v)
    if not np.isfinite(v) or v <= 0.0 or (upper is not None and v > upper):
        expected = f"in (0, {upper:g}]" if upper is not None else "a finite number > 0"
        raise ValueError(f"{name} is {v!r}, expected {expected}")
    return v


def _image_stack(name: str, value: Any) -> np.ndarray:
    """``value`` as float64 ``(H, W)`` or ``(B, H, W)`` with no empty axis, or a ValueError naming ``name``."""
    a = np.asarray(value)
    _real_dtype(name, a.dtype, allow_bool=True)
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} has shape {a.shape} ({a.ndim}-D), expected (H, W) or (B, H, W)")
    if 0 in a.shape:
        raise ValueError(f"{name} has shape {a.shape}, expected every axis to be non-empty")
    return a.astype(np.float64)


#: Padding of :func:`gaussian_blur`: torchvision's ``"reflect"`` (the edge pixel is not repeated:
#: scipy's ``"mirror"``) or ``"zeros"``.
BLUR_PADDINGS = {"reflect": "mirror", "zeros": "constant"}


def blur_kernel_size(sigma: float) -> int:
    """The default taps of :func:`gaussian_blur`: ``2·int(2.5σ + 0.5) + 1`` (41 at σ = 8, the RR-ClArC release's)."""
    return 2 * int(2.5 * float(sigma) + 0.5) + 1


def gaussian_blur(x: Any, sigma: float, *, kernel_size: int | None = None, padding: str = "reflect") -> np.ndarray:
    """Separable Gaussian blur over the last two (spatial) axes, as torchvision's ``GaussianBlur`` computes it.

    The kernel is ``exp(-t² / 2σ²)`` on the integer offsets ``|t| ≤ kernel_size // 2``,
    normalised to sum 1, correlated along H and then W; outside the image the
    values are mirrored about the edge pixels (``padding="reflect"``, torch's
    reflect padding) or zero (``"zeros"``). The RR-ClArC release blurs its
    masks with ``GaussianBlur(kernel_size=41, sigma=8)``: that is
    ``gaussian_blur(x, 8)`` (the default ``kernel_size`` truncates at 2.5σ,
    :func:`blur_kernel_size`). Unlike torch, an image smaller than the kernel's
    radius is reflected again (periodically) instead of refused. A leading batch
    axis is not blurred.

    Args:
      x: ``(H, W)`` or ``(B, H, W)`` real, finite array (bool allowed).
      sigma: standard deviation in pixels, a finite number > 0.
      kernel_size: odd number of taps (default :func:`blur_kernel_size`).
      padding: ``"reflect"`` or ``"zeros"``.

    Returns:
      float64 NumPy array of the shape of ``x``.

    Raises:
      ValueError: wrong ndim, empty axes, non-real dtype, NaN/inf, ``sigma <= 0``,
      an even or non-positive ``kernel_size``, an unknown ``padding``.
    """
    sigma = _positive_number("sigma", sigma)
    if padding not in BLUR_PADDINGS:
        raise ValueError(f"padding must be one of {tuple(BLUR_PADDINGS)}; got {padding!r}")
    if kernel_size is None:
        kernel_size = blur_kernel_size(sigma)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int; got {kernel_size!r}")
    a = _image_stack("x", x)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"x contains NaN or inf (shape {a.shape})")
    from scipy import ndimage  # ~0.2 s, kept out of CLI start (metrics loads there)

    return ndimage.gaussian_filter(a, sigma, mode=BLUR_PADDINGS[padding], cval=0.0, radius=int(kernel_size) // 2,
                                   axes=(-2, -1))


def postprocess_mask(mask: Any, *, low: float = 0.1, sigma: float = 8.0, high: float = 0.3,
                     kernel_size: int | None = None, padding: str = "reflect") -> np.ndarray:
    """RR-ClArC mask post-processing: threshold, Gaussian blur, threshold again — per sample.

    For each sample: ``m1 = mask >= low · max(mask)``; ``b = gaussian_blur(m1, sigma)``;
    ``m2 = b >= high · max(b)``. The defaults are the release's, made for
    224×224 images: σ = 8 with 41 taps and reflect padding (torchvision's
    ``GaussianBlur(41, 8)``); on smaller images scale ``sigma`` down. The thresholds are relative to each sample's
    maximum, so the scale of ``mask`` does not matter. A sample whose mask is
    all zero stays all False (no artifact found).

    Args:
      mask: ``(H, W)`` or ``(B, H, W)`` bool or real mask with finite,
        non-negative values (a soft mask or a non-negative heatmap; it need not
        be in [0, 1] since only ratios to the maximum are used).
      low: first threshold as a fraction of the maximum, in (0, 1].
      sigma: Gaussian standard deviation in pixels, > 0.
      high: second threshold as a fraction of the blurred maximum, in (0, 1].
      kernel_size, padding: of the blur (:func:`gaussian_blur`).

    Returns:
      bool NumPy array of the shape of ``mask``.

    Raises:
      ValueError: wrong ndim, empty axes, non-real dtype, NaN/inf, negative
        values, ``sigma <= 0``, or ``low``/``high`` outside (0, 1].
    """
    low = _positive_number("low", low, upper=1.0)
    high = _positive_number("high", high, upper=1.0)
    sigma = _positive_number("sigma", sigma)
    m = _image_stack("mask", mask)
    _check_mask_values("mask", m, upper=None)
    single = m.ndim == 2
    m3 = m[None] if single else m
    peak = m3.max(axis=(1, 2), keepdims=True)
    nonzero = peak > 0
    m1 = (m3 >= low * peak) & nonzero  # an all-zero sample stays empty
    blurred = gaussian_blur(m1, sigma, kernel_size=kernel_size, padding=padding)
    bpeak = blurred.max(axis=(1, 2), keepdims=True)
    m2 = (blurred >= high * bpeak) & nonzero
    return m2[0] if single else m2


# --- calibration (SPEC §6): expected calibration error and reliability bins -------------------------

def _probs_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"probs must be (N, K) class probabilities with N ≥ 1 and K ≥ 2, got shape {p.shape}")
    if p.dtype.kind not in "f":
        raise ValueError(f"probs must be a float array of probabilities, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError(f"probs contains NaN or inf (shape {p.shape})")
    if p.min() < 0 or p.max() > 1 or np.abs(p.sum(axis=1) - 1.0).max() > 1e-3:
        raise ValueError("probs must be probabilities (each in [0, 1], each row summing to 1: a softmax output); "
                         f"got range [{p.min():.3g}, {p.max():.3g}] and row sums up to "
                         f"{np.abs(p.sum(axis=1) - 1.0).max():.3g} away from 1")
    y = check_labels("labels", labels, n=p.shape[0], against="probs", num_classes=p.shape[1])
    return p, y


def _n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, (bool, np.bool_)) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an int ≥ 1, got {n_bins!r}")
    return int(n_bins)


def reliability_bins(probs: Any, labels: Any, *, n_bins: int = 15) -> dict[str, list]:
    """Accuracy and mean confidence per equal-width confidence bin (the reliability diagram's data).

    Confidence ``c_n = max_k p_nk``, prediction ``argmax_k p_nk``; bin ``i`` holds
    ``c ∈ (i/M, (i+1)/M]`` (``c = 0`` in the first bin).

    Args:
      probs: ``(N, K)`` softmax probabilities.
      labels: ``(N,)`` true classes.
      n_bins: ``M``.
    Returns:
      ``{"edges": M+1, "count": M, "accuracy": M, "confidence": M}`` lists; an
      empty bin has count 0 and accuracy = confidence = 0.

    Example:
      >>> reliability_bins(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 0]), n_bins=2)["accuracy"]
      [0.0, 0.5]
    """
    p, y = _probs_labels(probs, labels)
    m = _n_bins(n_bins)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, m + 1)
    b = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, m - 1)
    count = np.bincount(b, minlength=m)
    acc_sum = np.bincount(b, weights=correct, minlength=m)
    conf_sum = np.bincount(b, weights=conf, minlength=m)
    safe = np.maximum(count, 1)
    return {"edges": edges.tolist(), "count": count.astype(int).tolist(),
            "accuracy": (acc_sum / safe).tolist(), "confidence": (conf_sum / safe).tolist()}


def ece(probs: Any, labels: Any, *, n_bins: int = 15) -> float:
    """Expected calibration error over equal-width confidence bins.

    ``ECE = Σ_i b_i |p_i − c_i|`` with ``b_i`` the fraction of samples in bin
    ``i``, ``p_i`` their accuracy and ``c_i`` their mean top-softmax confidence
    (bins as in :func:`reliability_bins`).

    Args:
      probs: ``(N, K)`` softmax probabilities.
      labels: ``(N,)`` true classes.
      n_bins: number of bins (15 as in Guo et al. 2017).
    Returns:
      ECE in [0, 1].

    Example:
      >>> ece(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 0]), n_bins=2)
      0.25
    """
    bins = reliability_bins(probs, labels, n_bins=n_bins)
    count = np.asarray(bins["count"], np.float64)
    gap = np.abs(np.asarray(bins["accuracy"]) - np.asarray(bins["confidence"]))
    return float(np.sum(count / count.sum() * gap))


# --- subgroups of a test set balanced for target and confounder (SPEC §6) --------------------------

def subgroup_report(pred: Any, labels: Any, confounder: Any) -> dict[str, Any]:
    """Accuracy overall, per target class ("men" / "women"), per (target, confounder) group, and the gaps.

    ``gap = max_t acc(y = t) − min_t acc(y = t)`` (for a binary target ``|acc₁ − acc₀|``);
    ``group_gap`` and ``worst_group`` over the non-empty ``(y, a)`` groups.

    Args:
      pred, labels: ``(N,)`` predicted and true target classes.
      confounder: ``(N,)`` confounder labels ``a``.
    Returns:
      ``{"accuracy", "count", "by_target": {"t1": …}, "groups": {"t1_c0": {"accuracy", "count"}, …},
      "gap", "group_gap", "worst_group"}``.

    Example:
      >>> subgroup_report(np.array([1, 0, 0, 0]), np.array([1, 1, 0, 0]), np.array([0, 1, 0, 1]))["gap"]
      0.5
    """
    pred = _labels("pred", pred)
    labels = _labels("labels", labels, pred.shape[0])
    conf = _labels("confounder", confounder, pred.shape[0])
    out: dict[str, Any] = {"accuracy": accuracy(pred, labels), "count": int(pred.shape[0])}
    by_t = group_accuracy(pred, labels, labels)
    out["by_target"] = {f"t{t}": {"accuracy": a, "count": c} for t, (a, c) in by_t.items()}
    nc = int(conf.max()) + 1
    groups = group_accuracy(pred, labels, labels * nc + conf)
    out["groups"] = {f"t{g // nc}_c{g % nc}": {"accuracy": a, "count": c} for g, (a, c) in groups.items()}
    t_acc = [a for a, _ in by_t.values()]
    g_acc = [a for a, _ in groups.values()]
    out["gap"] = float(max(t_acc) - min(t_acc))
    out["group_gap"] = float(max(g_acc) - min(g_acc))
    out["worst_group"] = float(min(g_acc))
    return out
