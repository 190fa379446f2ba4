"""Tables and figures for people: markdown tables and PNG bar charts (matplotlib, Agg)."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence


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
