"""Tables and figures for people: markdown tables and PNG bar charts (matplotlib, Agg)."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed).

    Imported on first use, not at the module's head: report is loaded at CLI
    start and matplotlib costs ~0.6 s there, while most commands draw nothing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: Any, digits: int) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, digits: int = 3) -> str:
    """Rows of dicts as a GitHub markdown table (missing cells shown as ``—``)."""
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r[c], digits) if c in r else "—" for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


def bar_chart(
    path: str | os.PathLike,
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    errors: Mapping[str, Sequence[float]] | None = None,
    ylabel: str = "",
    title: str = "",
    ylim: tuple[float, float] | None = (0.0, 1.0),
) -> list[tuple[float, float]]:
    """Grouped bar chart: one group per category, one bar per series, written as PNG.

    Returns each drawn bar's horizontal extent (left, right), series by series.
    """
    plt = _pyplot()

    for name, vals in series.items():
        if len(vals) != len(categories):
            raise ValueError(f"series {name!r} has {len(vals)} values, expected {len(categories)} (one per category)")
    x = np.arange(len(categories))
    width = 0.8 / max(len(series), 1)
    ncols = min(max(len(series), 1), 3)  # legend columns; its rows get headroom below
    legend_rows = -(-max(len(series), 1) // ncols)
    fig_width = max(1.8 + 1.6 * len(categories), 1.4 + 0.42 * len(categories) * len(series), 1.6 * ncols + 1.2)
    fig, ax = plt.subplots(figsize=(fig_width, 3.4 + 0.2 * legend_rows))
    extents = []
    for i, (name, vals) in enumerate(series.items()):
        err = None if errors is None else errors.get(name)
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, yerr=err, capsize=3, label=name)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=8, padding=2)
        extents += [(b.get_x(), b.get_x() + b.get_width()) for b in bars]
    ax.set_xticks(x, categories)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        # headroom above the top so the value labels and the legend never cover a bar
        ax.set_ylim(ylim[0], ylim[1] + (0.15 + 0.1 * legend_rows) * (ylim[1] - ylim[0]))
        ax.set_yticks([t for t in ax.get_yticks() if ylim[0] <= t <= ylim[1]])
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8, ncols=ncols)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return extents


def mean_std_rows(
    runs: Sequence[Mapping[str, Any]],
    *,
    by: str,
    columns: Sequence[str],
    scale: Mapping[str, float] | None = None,
    digits: int | Mapping[str, int] = 3,
) -> list[dict[str, str]]:
    """One row per value of ``runs[i][by]`` (first-seen order): ``"mean ± std"`` of each column over the runs.

    ``scale`` multiplies a column before formatting (e.g. ``{"acc": 100}`` for
    percent); runs without a column (or with ``None``) are left out of its
    statistics, and a column no run has becomes ``"–"``. ``std`` is the
    population standard deviation; with one run only the mean is shown.
    ``digits``: decimals, for all columns or per column (default 3).
    """
    order: list[Any] = []
    for r in runs:
        if r[by] not in order:
            order.append(r[by])
    rows = []
    for key in order:
        group = [r for r in runs if r[by] == key]
        row = {by: str(key)}
        for c in columns:
            vals = np.array([r[c] for r in group if r.get(c) is not None], dtype=float) * (scale or {}).get(c, 1.0)
            d = digits if isinstance(digits, int) else digits.get(c, 3)
            if vals.size == 0:
                row[c] = "–"
            elif vals.size == 1:
                row[c] = _fmt(float(vals[0]), d)
            else:
                row[c] = f"{_fmt(float(vals.mean()), d)} ± {_fmt(float(vals.std()), d)}"
        rows.append(row)
    return rows


# --- relevance heatmaps -----------------------------------------------------------------------------

def _images(images: Any) -> np.ndarray:
    """``images`` as float64 ``(N, H, W)`` or ``(N, H, W, 3)`` with values in [0, 1] (grey ``(N, H, W, 1)`` as
    ``(N, H, W)``), or a ``ValueError``."""
    a = np.asarray(images)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype.kind not in "buif":
        raise ValueError(f"images has dtype {a.dtype}, expected a real array with values in [0, 1]")
    if not (a.ndim == 3 or (a.ndim == 4 and a.shape[-1] == 3)):
        raise ValueError(f"images has shape {a.shape}, expected (N, H, W) or (N, H, W, 3)")
    if 0 in a.shape:
        raise ValueError(f"images has shape {a.shape}, expected every axis to be non-empty")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)) or a.min() < 0.0 or a.max() > 1.0:
        raise ValueError(f"images has values in [{a.min():g}, {a.max():g}], expected finite values in [0, 1]")
    return a


def _relevance_maps(name: str, rel: Any, n: int, hw: tuple[int, int]) -> np.ndarray:
    """``rel`` summed over channels as float64 ``(N, H, W)``; shapes must match the images."""
    r = np.asarray(rel)
    if r.dtype.kind not in "iuf":
        raise ValueError(f"{name} has dtype {r.dtype}, expected an integer or float array")
    if r.ndim not in (3, 4):
        raise ValueError(f"{name} has shape {r.shape}, expected (N, H, W) or (N, H, W, C)")
    if r.shape[0] != n:
        raise ValueError(f"{name} has {r.shape[0]} samples (shape {r.shape}), expected N = {n} like images")
    if tuple(r.shape[1:3]) != hw:
        raise ValueError(f"{name} has H, W = {tuple(r.shape[1:3])} (shape {r.shape}), expected {hw} like images")
    if r.ndim == 4 and r.shape[-1] == 0:
        raise ValueError(f"{name} has shape {r.shape}, expected at least one channel")
    r = r.astype(np.float64)
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{name} contains NaN or inf (shape {r.shape})")
    return r.sum(axis=-1) if r.ndim == 4 else r


def _grey(img: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601 weights) of an ``(H, W, 3)`` image; an ``(H, W)`` image is returned as is."""
    return img @ np.array([0.299, 0.587, 0.114]) if img.ndim == 3 else img


def _titles(titles: Sequence[str] | None, n: int) -> list[str]:
    if titles is None:
        return [""] * n
    if isinstance(titles, str) or not hasattr(titles, "__len__") or len(titles) != n:
        raise ValueError(f"titles must be a sequence of {n} strings (one per sample), got {titles!r}")
    return [str(t) for t in titles]


def _alpha(alpha: Any) -> float:
    number = isinstance(alpha, (int, float, np.integer, np.floating)) and not isinstance(alpha, bool)
    if not number or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha is {alpha!r}, expected a number in [0, 1]")
    return float(alpha)


def _limit(*maps: np.ndarray) -> float:
    """Symmetric colour limit ``max |R|`` over ``maps``; 1.0 for all-zero maps (a valid, blank scale)."""
    m = max(float(np.abs(r).max()) for r in maps)
    return m if m > 0 else 1.0


def _heatmap_grid(
    path: str | os.PathLike,
    images: np.ndarray,
    rows: Sequence[tuple[str, np.ndarray]],
    limits: np.ndarray,
    titles: list[str],
    cols: int,
    alpha: float,
) -> str:
    """Blocks of ``cols`` samples; each block has one image row then one overlay row per ``rows`` entry."""
    plt = _pyplot()

    n = images.shape[0]
    blocks = -(-n // cols)
    per = 1 + len(rows)
    fig, axes = plt.subplots(blocks * per, cols, figsize=(2.2 * cols, 2.2 * blocks * per), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i in range(n):
        top, c = (i // cols) * per, i % cols
        ax = axes[top, c]
        ax.set_axis_on()
        ax.imshow(images[i], cmap=None if images.ndim == 4 else "gray", vmin=0.0, vmax=1.0)
        if titles[i]:
            ax.set_title(titles[i], fontsize=9)
        if c == 0:
            ax.set_ylabel("image", fontsize=9)
        grey = _grey(images[i])
        for k, (label, maps) in enumerate(rows, start=1):
            ax = axes[top + k, c]
            ax.set_axis_on()
            ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0)
            ax.imshow(maps[i], cmap="bwr", vmin=-limits[i], vmax=limits[i], alpha=alpha)
            ax.set_xlabel(f"±{limits[i]:.3g}", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
        for k in range(per):
            axes[top + k, c].set_xticks([])
            axes[top + k, c].set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return str(path)


def heatmap_overlay(
    images: Any,
    relevances: Any,
    path: str | os.PathLike,
    *,
    titles: Sequence[str] | None = None,
    cols: int | None = None,
    alpha: float = 0.6,
) -> str:
    """Grid of samples with their relevance heatmaps, written as PNG.

    One column per sample: the image on top, below it the relevance (summed
    over channels) in the diverging ``"bwr"`` colormap (red positive, blue
    negative) with symmetric limits ``±max|R|`` of that sample, drawn with
    ``alpha`` over the greyscale image. The limit is printed under each
    heatmap; an all-zero map gets limits ±1. With ``cols`` < N the samples
    wrap into several blocks of two rows.

    Args:
      images: ``(N, H, W, 3)`` RGB or ``(N, H, W)`` greyscale, float in [0, 1].
      relevances: ``(N, H, W)`` or ``(N, H, W, C)`` finite relevance (same N, H, W).
      path: output file (PNG).
      titles: one title per sample, or None.
      cols: samples per block row, 1 ≤ cols; None puts all N in one row.
      alpha: opacity of the heatmap over the greyscale image, in [0, 1].

    Returns:
      ``str(path)``.

    Raises:
      ValueError: bad shapes or values of ``images``/``relevances``, mismatched
        N, H or W, wrong number of ``titles``, ``cols`` < 1, ``alpha`` outside [0, 1].
    """
    img = _images(images)
    n = img.shape[0]
    rel = _relevance_maps("relevances", relevances, n, tuple(img.shape[1:3]))
    names = _titles(titles, n)
    a = _alpha(alpha)
    if cols is None:
        cols = n
    if isinstance(cols, bool) or not isinstance(cols, (int, np.integer)) or cols < 1:
        raise ValueError(f"cols is {cols!r}, expected an integer >= 1 or None")
    cols = min(int(cols), n)
    limits = np.array([_limit(r) for r in rel])
    return _heatmap_grid(path, img, [("relevance", rel)], limits, names, cols, a)


def heatmaps_before_after(
    images: Any,
    before: Any,
    after: Any,
    path: str | os.PathLike,
    *,
    labels: Sequence[str] = ("before", "after"),
    titles: Sequence[str] | None = None,
    alpha: float = 0.6,
) -> str:
    """Relevance of each sample before and after a correction, on one colour scale per sample; PNG.

    Three rows — image, ``before`` heatmap, ``after`` heatmap — one column per
    sample. Both heatmaps of a sample share the symmetric limits
    ``±max(max|before|, max|after|)`` so that their colours compare directly
    (a fading artifact shows as a paler "after" map). Heatmaps are summed over
    channels and drawn in ``"bwr"`` with ``alpha`` over the greyscale image.

    Args:
      images: ``(N, H, W, 3)`` or ``(N, H, W)``, float in [0, 1].
      before: ``(N, H, W)`` or ``(N, H, W, C)`` relevance before.
      after: ``(N, H, W)`` or ``(N, H, W, C)`` relevance after.
      path: output file (PNG).
      labels: the two row labels, for ``before`` and ``after``.
      titles: one title per sample, or None.
      alpha: opacity of the heatmaps, in [0, 1].

    Returns:
      ``str(path)``.

    Raises:
      ValueError: bad shapes or values, mismatched N, H or W, ``labels`` not two
        strings, wrong number of ``titles``, ``alpha`` outside [0, 1].
    """
    if (
        isinstance(labels, str)
        or not hasattr(labels, "__len__")
        or len(labels) != 2
        or not all(isinstance(s, str) for s in labels)
        or labels[0] == labels[1]
    ):
        raise ValueError(f"labels is {labels!r}, expected two different strings (for before and after)")
    return heatmap_rows(images, {labels[0]: before, labels[1]: after}, path, titles=titles, alpha=alpha)


def heatmap_rows(
    images: Any,
    rows: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    titles: Sequence[str] | None = None,
    alpha: float = 0.6,
) -> str:
    """Several models' relevance of the same samples, one row per model, one colour scale per sample; PNG.

    The image row, then one heatmap row per entry of ``rows`` (label → ``(N, H, W)``
    or ``(N, H, W, C)`` relevance), one column per sample. Every row of a sample
    shares the symmetric limits ``±max_rows max|R|``, so the colours compare
    across models (see :func:`heatmaps_before_after`, the two-row case).

    Raises:
      ValueError: bad shapes or values, mismatched N, H or W, no rows, a label
        that is not a string, wrong number of ``titles``, ``alpha`` outside [0, 1].
    """
    img = _images(images)
    n = img.shape[0]
    hw = tuple(img.shape[1:3])
    if not isinstance(rows, Mapping) or not rows or not all(isinstance(k, str) for k in rows):
        raise ValueError(f"rows must map at least one label (str) to relevance maps; got {type(rows).__name__} "
                         f"with keys {list(rows) if isinstance(rows, Mapping) else None}")
    maps = [(label, _relevance_maps(label, rel, n, hw)) for label, rel in rows.items()]
    names = _titles(titles, n)
    a = _alpha(alpha)
    limits = np.array([_limit(*(m[i] for _, m in maps)) for i in range(n)])
    return _heatmap_grid(path, img, maps, limits, names, n, a)


# --- region attribution (SPEC §6): reliability diagrams and attribution maps -------------------------

def reliability_diagram(path: str | os.PathLike, bins: Mapping[str, Sequence[float]], *, title: str = "",
                        ece: float | None = None) -> str:
    """Reliability diagram (accuracy against confidence per bin, with the diagonal and bin counts) as PNG.

    Args:
      path: output file.
      bins: :func:`jaxbias.metrics.reliability_bins` output (``edges``, ``count``, ``accuracy``, ``confidence``).
      title: figure title.
      ece: printed in the title when given.
    Returns:
      ``str(path)``.

    Example:
      >>> reliability_diagram("rel.png", metrics.reliability_bins(probs, labels), ece=metrics.ece(probs, labels))
    """
    plt = _pyplot()

    for k in ("edges", "count", "accuracy", "confidence"):
        if k not in bins:
            raise ValueError(f"bins must hold {k!r} (from jaxbias.metrics.reliability_bins); got keys {sorted(bins)}")
    edges = np.asarray(bins["edges"], float)
    count = np.asarray(bins["count"], float)
    acc = np.asarray(bins["accuracy"], float)
    conf = np.asarray(bins["confidence"], float)
    if not (edges.shape[0] == count.shape[0] + 1 == acc.shape[0] + 1 == conf.shape[0] + 1):
        raise ValueError(f"bins has {edges.shape[0]} edges but {count.shape[0]}/{acc.shape[0]}/{conf.shape[0]} "
                         "counts/accuracies/confidences; expected one more edge than bins")
    used = count > 0
    widths = np.diff(edges)
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(4.2, 5.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(edges[:-1][used], acc[used], widths[used], align="edge", edgecolor="k", alpha=0.8, label="accuracy")
    ax.bar(edges[:-1][used], (conf - acc)[used], widths[used], bottom=acc[used], align="edge", color="tab:red",
           alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    head = title + (f"  (ECE {ece:.3f})" if ece is not None else "")
    if head:
        ax.set_title(head, fontsize=10)
    axc.bar(edges[:-1], count / max(count.sum(), 1), widths, align="edge", color="grey")
    axc.set_xlim(0, 1)
    axc.set_xlabel("confidence (top softmax)")
    axc.set_ylabel("share")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return str(path)


def attribution_maps(path: str | os.PathLike, images: Any, maps: Any, *, general: Any = None,
                     region: Any = None, titles: Sequence[str] | None = None, alpha: float = 0.6) -> str:
    """Images above their attribution maps (``viridis`` over the greyscale image), optionally the general map; PNG.

    Args:
      path: output file.
      images: ``(N, H, W, 3)`` or ``(N, H, W)`` in [0, 1].
      maps: ``(N, H, W)`` specific maps in [0, 1].
      general: ``(H, W)`` general map, drawn in an extra column, or ``None``.
      region: ``(H, W)`` bool outline (e.g. the true confounder region or the top-q region), or ``None``.
      titles: one per image.
      alpha: opacity of the maps.
    Returns:
      ``str(path)``.

    Example:
      >>> attribution_maps("maps.png", images[:6], specific[:6], general=general, region=true_region)
    """
    plt = _pyplot()

    img = _images(images)
    n = img.shape[0]
    hw = tuple(img.shape[1:3])
    m = _relevance_maps("maps", maps, n, hw)
    names = _titles(titles, n)
    a = _alpha(alpha)
    g = None if general is None else np.asarray(general, float)
    if g is not None and g.shape != hw:
        raise ValueError(f"general has shape {g.shape}, expected {hw} like the images")
    r = None if region is None else np.asarray(region, bool)
    if r is not None and r.shape != hw:
        raise ValueError(f"region has shape {r.shape}, expected {hw} like the images")
    cols = n + (g is not None)
    fig, axes = plt.subplots(2, cols, figsize=(2.0 * cols, 4.2), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(img[i], cmap=None if img.ndim == 4 else "gray", vmin=0, vmax=1)
        axes[0, i].set_title(names[i], fontsize=8)
        axes[1, i].imshow(_grey(img[i]), cmap="gray", vmin=0, vmax=1)
        axes[1, i].imshow(m[i], cmap="viridis", vmin=0, vmax=max(float(m[i].max()), 1e-12), alpha=a)
        if r is not None:
            axes[1, i].contour(r, levels=[0.5], colors="r", linewidths=0.8)
    if g is not None:
        axes[0, -1].imshow(img.mean(axis=0), cmap=None if img.ndim == 4 else "gray", vmin=0, vmax=1)
        axes[0, -1].set_title("mean image", fontsize=8)
        axes[1, -1].imshow(g, cmap="viridis", vmin=0, vmax=max(float(g.max()), 1e-12))
        axes[1, -1].set_title("general map", fontsize=8)
        if r is not None:
            axes[1, -1].contour(r, levels=[0.5], colors="r", linewidths=0.8)
    axes[0, 0].set_ylabel("image", fontsize=9)
    axes[1, 0].set_ylabel("specific map", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return str(path)
