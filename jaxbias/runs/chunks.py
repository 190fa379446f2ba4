"""Chunked, resumable experiment tables: one JSON line per finished cell (experiments/*/main.py).

An experiment is split into cells (e.g. seed × model). Each finished cell is appended as one line to
``results_<config>.jsonl``; a call reads the file, skips the cells already there, and starts no new cell once
its budget has passed, so the same command, repeated, finishes the table in chunks and a killed call loses at
most the cell it was running. Every row carries a *fingerprint* of the settings its numbers depend on; rows
made under other settings are refused rather than mixed into one mean.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Iterable

import numpy as np


def read_rows(path: str) -> list[dict]:
    """The finished cells of a ``.jsonl`` results file (a torn last line, from a killed write, is dropped)."""
    rows = []
    try:
        f = open(path)
    except FileNotFoundError:
        return rows
    with f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"skipping an unreadable line of {path}", file=sys.stderr)
    return rows


def append_row(path: str, row: dict, *, default: Callable[[Any], Any] | None = list) -> None:
    """Append one finished cell as one JSON line (written and closed at once)."""
    with open(path, "a") as f:
        f.write(json.dumps(row, default=default) + "\n")


def check_fingerprints(rows: Iterable[dict], fingerprint: Callable[[str], str | None], path: str,
                       *, key: str = "model") -> None:
    """Refuse (``SystemExit``) rows whose ``fingerprint`` differs from ``fingerprint(row[key])``.

    ``fingerprint`` returns ``None`` for a cell label the current settings do not define (such rows are kept:
    e.g. a method left out by a filter)."""
    for r in rows:
        want = fingerprint(r[key])
        if want is not None and r.get("fingerprint") != want:
            raise SystemExit(f"{path} holds a {r[key]!r} row (seed {r.get('seed')}) run under other settings "
                             f"than these: use another --out, or move the file away to start over")


def mean_std(vals: np.ndarray, scale: float, fmt: str) -> str:
    """``"mean ± sample std"`` of ``scale · vals`` (one value: no ±; none: ``–``)."""
    vals = np.asarray(vals, dtype=float)
    if vals.size == 0:
        return "–"
    m = format(scale * vals.mean(), fmt)
    return m if vals.size == 1 else f"{m} ± {format(scale * vals.std(ddof=1), fmt.lstrip('+'))}"


class Budget:
    """Wall-clock budget of one call: :meth:`over` once ``minutes`` have passed since it was made (``None``: never)."""

    def __init__(self, minutes: float | None):
        self.minutes = minutes
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over(self) -> bool:
        return self.minutes is not None and self.elapsed() >= 60 * self.minutes


def report_left(rows: list[dict], cells: Iterable[tuple[int, str]], *, path: str, markdown: str, stopped: bool,
                budget_minutes: float | None) -> list[tuple[int, str]]:
    """Print the table and which ``(seed, label)`` cells are still missing from ``rows`` (and how to go on);
    returns them."""
    done = {(r["seed"], r["model"]) for r in rows}
    left = [c for c in cells if c not in done]
    if markdown:
        print(markdown)
    if left:
        why = f"budget of {budget_minutes} min reached" if stopped else "not run"
        print(f"{why}: {len(left)} cells left: " + ", ".join(f"seed {s} {m}" for s, m in left)
              + "; run the same command again to continue", flush=True)
    else:
        print(f"all {len(rows)} cells of {path} done", flush=True)
    return left


def by_label(rows: list[dict], labels: Iterable[str]):
    """``(label, its rows sorted by seed)`` for ``labels`` in order, then any other label the rows hold (e.g. a
    method left out by a filter); labels without rows are skipped."""
    order = dict.fromkeys([*labels, *(r["model"] for r in rows)])
    for label in order:
        rs = sorted((r for r in rows if r["model"] == label), key=lambda r: r["seed"])
        if rs:
            yield label, rs
