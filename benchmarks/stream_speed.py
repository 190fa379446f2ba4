"""Images per second of a streamed training epoch (``--stream true``) with 0 and ``k`` decode workers.

A folder of ``N`` 64×64 JPEGs is generated as :mod:`stream_memory` does (three classes, a stratified 20 % held
out as ``test``), then for each ``workers`` value::

    python -m jaxbias.cli train --dataset folder --root DIR --metadata DIR/meta.csv --image-size 64 --model mlp \\
        --epochs 3 --batch-size 128 --no-progress --stream true --workers K --workdir RUN

runs in a child process of its own. Speed = training images × 2 / the training seconds of epochs 2 and 3 (the
``seconds`` of their ``metrics.jsonl`` rows: the epoch loop, decoding included, the evaluation and the first
epoch's compilation not). The final losses of every run are compared: prefetching changes when a batch is
decoded, not what it holds (they must be equal to the bit).

Usage::

    python benchmarks/stream_speed.py [--images 5000] [--workers 0,1,2] [--out benchmarks/results] [--tag cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EPOCHS = 3


def epoch_seconds(folder: tuple[Path, Path], workdir: Path, workers: int) -> tuple[list[float], list[float]]:
    """``(seconds, losses)`` of each epoch of a streamed ``jaxbias train`` run on ``folder`` with ``workers``."""
    from stream_memory import SIZE

    root, table = folder
    argv = [sys.executable, "-m", "jaxbias.cli", "train", "--dataset", "folder", "--root", str(root), "--metadata",
            str(table), "--image-size", str(SIZE), "--model", "mlp", "--epochs", str(EPOCHS), "--batch-size", "128",
            "--no-progress", "--stream", "true", "--workers", str(workers), "--workdir", str(workdir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in rows], [r["loss"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default="cpu")
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    from _common import md_table, write_results
    from stream_memory import write

    train = a.images - round(0.2 * a.images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folder = write(Path(tmp) / "f", a.images)
        print(f"[stream_speed] wrote {a.images} JPEGs in {time.perf_counter() - t0:.1f} s", flush=True)
        for k in (int(w) for w in a.workers.split(",")):
            seconds, losses = epoch_seconds(folder, Path(tmp) / f"run{k}", k)
            rate = train * (EPOCHS - 1) / sum(seconds[1:])
            rows.append({"workers": k, "train_images": train, "epoch_seconds": seconds, "images_per_s": round(rate, 1),
                         "losses": losses})
            print(f"[stream_speed] workers {k}: {rate:.0f} images/s (epoch seconds {seconds})", flush=True)
    for r in rows:
        r["speedup_vs_0"] = round(r["images_per_s"] / rows[0]["images_per_s"], 3)
    same = all(r["losses"] == rows[0]["losses"] for r in rows)
    table = md_table(["decode workers", "training images", "images/s (epochs 2–3)", "÷ first row",
                      "epoch seconds (1 compiles)", "losses equal to the first row's"],
                     [[r["workers"], r["train_images"], r["images_per_s"], r["speedup_vs_0"],
                       ", ".join(f"{s:.2f}" for s in r["epoch_seconds"]), r["losses"] == rows[0]["losses"]]
                      for r in rows])
    notes = (f"{EPOCHS} epochs of `jaxbias train --dataset folder --image-size 64 --model mlp --batch-size 128 "
             f"--stream true --workers K` on {a.images} generated 64×64 JPEGs ({train} training images), a child "
             "process each; images/s = training images × 2 / the loop seconds of epochs 2 and 3 (decoding included, "
             f"evaluation not). Per-epoch losses of all runs equal to the bit: {same}.")
    paths = write_results("stream_speed", a.tag, rows, table, a.out, extra={"images": a.images, "epochs": EPOCHS},
                          notes=notes)
    print(table)
    print("wrote", *paths)
    if not same:
        raise SystemExit("the runs' losses differ")


if __name__ == "__main__":
    main()
