"""Shared helpers of the benchmarks: machine description, timing, result files.

Every benchmark writes ``results/<name>_<tag>.json`` (machine + rows, for
machines) and ``results/<name>_<tag>.md`` (a header describing the machine and
a table, for people). Speeds are only compared as ratios measured in one run.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import jax

#: UCI Adult beside the project (``../shared/data/adult.data``), used when present.
ADULT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "adult.data"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    """``platform.processor()`` is often empty on Linux; fall back to /proc/cpuinfo."""
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name or platform.machine()


def torch_available() -> bool:
    """Whether PyTorch and torchvision import (for benchmarks that also time PyTorch)."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except Exception:  # an ImportError, or a torchvision build that does not load with this torch
        return False
    return True


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, accelerator, library versions."""
    devices = jax.devices()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "optax": _version("optax"),
        "numpy": _version("numpy"),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def time_fn(
    fn: Callable[..., Any],
    *args: Any,
    repeats: int = 20,
    warmup: int = 2,
    budget_s: float | None = None,
    min_repeats: int = 3,
) -> dict[str, Any]:
    """Time ``fn(*args)``, waiting for the result with ``jax.block_until_ready``.

    A jitted ``fn`` (one with ``.lower``) is compiled ahead of time first:
    ``compile_s`` is the trace + lower + compile time, and the compiled
    executable is what gets timed, so no timed call compiles. For a plain
    Python ``fn`` (eager JAX) ``compile_s`` is ``None``; ``first_call_s`` is
    reported for both. ``fn`` must not donate its arguments: every repeat
    reuses ``args``.

    Args:
      fn: the function (jitted or not).
      *args: its positional arguments.
      repeats: number of timed calls (at most).
      warmup: untimed calls after the first call.
      budget_s: stop early once the timed calls add up to this many seconds
        (still at least ``min_repeats`` calls); ``None`` runs all ``repeats``.
      min_repeats: lower bound on timed calls when ``budget_s`` cuts in.

    Returns:
      ``dict(compile_s, first_call_s, median_s, mean_s, min_s, max_s, std_s,
      repeats, times_s)`` in seconds.
    """
    compile_s = None
    call = fn
    if hasattr(fn, "lower"):
        t0 = time.perf_counter()
        call = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(call(*args))
    first_call_s = time.perf_counter() - t0
    for _ in range(warmup):
        jax.block_until_ready(call(*args))
    times: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(call(*args))
        times.append(time.perf_counter() - t0)
        if budget_s is not None and sum(times) > budget_s and len(times) >= min_repeats:
            break
    return {
        "compile_s": compile_s,
        "first_call_s": first_call_s,
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "max_s": max(times),
        "std_s": statistics.pstdev(times) if len(times) > 1 else 0.0,
        "repeats": len(times),
        "times_s": times,
    }


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats keep 4 significant digits."""

    def fmt(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_header(info: dict[str, Any]) -> str:
    """Markdown lines describing the machine of :func:`machine_info`."""
    return "\n".join(
        [
            f"- device: {info['device_kind']} × {info['device_count']} (backend `{info['backend']}`)",
            f"- CPU: {info['cpu_model']} (`platform.processor()` = {info['processor']!r}), "
            f"{info['cpu_count']} logical CPUs",
            f"- platform: {info['platform']}, Python {info['python']}",
            f"- jax {info['jax']}, jaxlib {info['jaxlib']}, flax {info['flax']}, "
            f"optax {info['optax']}, numpy {info['numpy']}",
            f"- date: {info['date_utc']}",
        ]
    )


def write_results(
    name: str,
    tag: str,
    rows: list[dict[str, Any]],
    md_table: str,
    out_dir: str | os.PathLike,
    *,
    extra: dict[str, Any] | None = None,
    notes: str = "",
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>_<tag>.json`` and ``.md``; return both paths.

    Args:
      name: benchmark name (file stem).
      tag: run label, e.g. ``"cpu"`` or ``"h100"``.
      rows: one dict per measured configuration (JSON-serialisable).
      md_table: the markdown table(s) for the ``.md`` file.
      out_dir: folder, created if missing.
      extra: more JSON fields (e.g. the settings of the run).
      notes: markdown text placed between the machine header and the table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    payload = {"benchmark": name, "tag": tag, "machine": info, **(extra or {}), "rows": rows}
    json_path = out / f"{name}_{tag}.json"
    md_path = out / f"{name}_{tag}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    parts = [f"# {name} ({tag})", "", machine_header(info), ""]
    if notes:
        parts += [notes.strip(), ""]
    parts += [md_table.strip(), ""]
    md_path.write_text("\n".join(parts))
    return json_path, md_path
