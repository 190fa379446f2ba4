"""Tables and figures for people: markdown tables and PNG bar charts (matplotlib, Agg)."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np


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
) -> None:
    """Grouped bar chart: one group per category, one bar per series, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    for name, vals in series.items():
        if len(vals) != len(categories):
            raise ValueError(f"series {name!r} has {len(vals)} values, expected {len(categories)} (one per category)")
    x = np.arange(len(categories))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(categories), 3.6))
    for i, (name, vals) in enumerate(series.items()):
        err = None if errors is None else errors.get(name)
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, yerr=err, capsize=3, label=name)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=8, padding=2)
    ax.set_xticks(x, categories)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        # headroom above the top so the value labels and the legend never cover a bar
        ax.set_ylim(ylim[0], ylim[1] + 0.25 * (ylim[1] - ylim[0]))
        ax.set_yticks([t for t in ax.get_yticks() if ylim[0] <= t <= ylim[1]])
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8, ncols=max(len(series), 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
