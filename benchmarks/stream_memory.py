"""Peak resident memory of one training epoch from an image folder, streamed from disk (``--stream true``) or
loaded into memory, at two folder sizes.

A folder of ``N`` 64×64 JPEGs (three classes, each a random-ish colour around its own mean; a metadata CSV of path
and label; a stratified 20 % held out as ``test``) is generated for each size, then::

    python -m jaxbias.cli train --dataset folder --root DIR --metadata DIR/meta.csv --image-size 64 --model mlp \\
        --epochs 1 --batch-size 128 --no-progress --stream true --workdir RUN

runs in a child process of its own, whose peak resident set size (``ru_maxrss`` from ``os.wait4`` of that child:
its own, not the largest of every child so far) and wall seconds are recorded. Streamed, the peak should not grow
with ``N`` (the must-show: the large folder within 10 % of the small one); the in-memory run of the large folder
is the contrast (its float32 images alone take ``N · 64 · 64 · 3 · 4`` bytes).

glibc's malloc raises its mmap threshold as large blocks are freed (each step's decoded batch is one), after which
such blocks come from heaps that fragment and are not given back: run to run the streamed peak then wanders by tens
of MiB, more often the more steps. The streamed runs are therefore measured twice: with the default allocator and
with a fixed threshold (:data:`FIXED_MALLOC`: what the data itself costs, the must-show's number).

Usage::

    python benchmarks/stream_memory.py [--small 2000] [--large 20000] [--workers 0] [--out benchmarks/results] [--tag cpu]
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COLOURS = ((200, 40, 40), (40, 190, 60), (50, 60, 210))
SIZE = 64
#: glibc settings that keep large blocks mmapped (given back when freed) and trim the heap: a stable peak
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def write(root: str | os.PathLike, n: int, *, seed: int = 0) -> tuple[Path, Path]:
    """``n`` JPEGs of ``SIZE``×``SIZE`` (class ``i % 3``, its colour jittered per image, a little noise) under
    ``root/img`` and their table ``root/meta.csv``; returns ``(root, table)``."""
    from PIL import Image

    root = Path(root)
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 12, (16, SIZE, SIZE, 3))  # a few noise fields, reused: generation stays quick
    rows = []
    for i in range(n):
        c = i % len(COLOURS)
        colour = np.array(COLOURS[c]) + rng.normal(0, 30, 3)
        image = np.clip(colour + noise[i % len(noise)], 0, 255).astype(np.uint8)
        path = f"img/{i // 1000}/{i}.jpg"
        (root / path).parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(root / path, quality=90)
        rows.append((path, c))
    table = root / "meta.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("path", "label"))
        w.writerows(rows)
    return root, table


def child_peak(argv: list[str], *, malloc: dict[str, str] | None = None,
               stdout: str | os.PathLike | None = None) -> tuple[int, float]:
    """``(peak RSS in bytes, wall seconds)`` of ``argv`` run in a child process of its own (``malloc``: glibc
    settings for it, e.g. :data:`FIXED_MALLOC`; ``stdout``: a file for its output, else discarded); its
    ``ru_maxrss`` from ``os.wait4``, not the largest of every child so far."""
    env = {**os.environ, **(malloc or {}), "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.perf_counter()
    out = subprocess.DEVNULL if stdout is None else open(stdout, "w")
    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if stdout is not None:
        out.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return usage.ru_maxrss * 1024, seconds  # Linux reports KiB


def peak_rss(folder: tuple[Path, Path], workdir: str | os.PathLike, *, stream: bool,
             malloc: dict[str, str] | None = None, workers: int = 0) -> tuple[int, float]:
    """``(peak RSS in bytes, wall seconds)`` of one epoch of ``jaxbias train`` on ``folder`` in a child process
    (``malloc``: glibc settings for it, e.g. :data:`FIXED_MALLOC`; ``workers``: decode workers when streamed)."""
    root, table = folder
    argv = [sys.executable, "-m", "jaxbias.cli", "train", "--dataset", "folder", "--root", str(root), "--metadata",
            str(table), "--image-size", str(SIZE), "--model", "mlp", "--epochs", "1", "--batch-size", "128",
            "--no-progress", "--stream", "true" if stream else "false", "--workdir", str(workdir),
            *(["--workers", str(workers)] if workers else [])]
    return child_peak(argv, malloc=malloc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--large", type=int, default=20000)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--workers", type=int, default=0, help="also measure both streamed sizes with this many decode "
                    "workers (fixed malloc)")
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    from _common import md_table, write_results

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for n in (a.small, a.large):
            t0 = time.perf_counter()
            folders[n] = write(Path(tmp) / f"f{n}", n)
            print(f"[stream_memory] wrote {n} JPEGs in {time.perf_counter() - t0:.1f} s", flush=True)
        runs = [(a.small, True, "fixed", 0), (a.large, True, "fixed", 0), (a.small, True, "default", 0),
                (a.large, True, "default", 0), (a.large, False, "default", 0)]
        if a.workers:
            runs += [(a.small, True, "fixed", a.workers), (a.large, True, "fixed", a.workers)]
        for n, stream, malloc, workers in runs:
            rss, seconds = peak_rss(folders[n], Path(tmp) / f"run{n}{stream}{malloc}{workers}", stream=stream,
                                    malloc=FIXED_MALLOC if malloc == "fixed" else None, workers=workers)
            rows.append({"images": n, "train_images": n - round(0.2 * n), "stream": stream, "malloc": malloc,
                         "workers": workers,
                         "peak_rss_mib": round(rss / 2**20, 1), "seconds": round(seconds, 2),
                         "images_float32_mib": round(n * SIZE * SIZE * 3 * 4 / 2**20, 1)})
            print(f"[stream_memory] {n} images, stream={stream}, malloc {malloc}, workers {workers}: peak RSS {rss / 2**20:.0f} MiB, "
                  f"{seconds:.1f} s", flush=True)
    ratio = rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    ratio_default = rows[3]["peak_rss_mib"] / rows[2]["peak_rss_mib"]
    ratio_workers = rows[6]["peak_rss_mib"] / rows[5]["peak_rss_mib"] if a.workers else None
    for i, r in enumerate(rows):
        small = 5 if i >= 5 else 0 if r["malloc"] == "fixed" else 2
        r["rss_vs_small_streamed"] = round(r["peak_rss_mib"] / rows[small]["peak_rss_mib"], 4)
    table = md_table(["images", "stream", "malloc", "decode workers", "peak RSS MiB",
                      "÷ streamed small (same malloc, workers)", "seconds", "the images as float32 MiB"],
                     [[r["images"], r["stream"], r["malloc"], r["workers"], r["peak_rss_mib"],
                       r["rss_vs_small_streamed"], r["seconds"], r["images_float32_mib"]] for r in rows])
    notes = (f"One epoch of `jaxbias train --dataset folder --image-size {SIZE} --model mlp --batch-size 128` "
             f"(vanilla, evaluation of the held-out 20 % included) in a child process each; peak RSS = the child's "
             f"`ru_maxrss`. Streamed, {a.large} images take {ratio:.3f}× the peak memory of {a.small} with a fixed "
             f"malloc mmap threshold ({' '.join(f'{k}={v}' for k, v in FIXED_MALLOC.items())}; "
             f"{'within' if ratio <= 1.10 else 'NOT within'} 10 %), {ratio_default:.3f}× with glibc's default "
             "(its dynamic threshold lets freed batch buffers fragment the heap: that peak wanders by tens of MiB "
             "from run to run). The in-memory run auto-picks the device feed (a second copy of the images)."
             + (f" With {a.workers} decode workers (grain, fixed malloc): {ratio_workers:.3f}× "
                f"({'within' if ratio_workers <= 1.10 else 'NOT within'} 10 %)." if a.workers else ""))
    paths = write_results("stream_memory", a.tag, rows, table, a.out,
                          extra={"small": a.small, "large": a.large, "ratio_large_to_small_streamed": round(ratio, 4),
                                 "ratio_default_malloc": round(ratio_default, 4), "fixed_malloc": FIXED_MALLOC,
                                 "workers": a.workers,
                                 "ratio_with_workers": None if ratio_workers is None else round(ratio_workers, 4)},
                          notes=notes)
    print(table)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
