"""Peak resident memory of ``jaxbias train`` then ``jaxbias correct --method rrclarc`` on a streamed image folder
with an artifact drawn in, at two folder sizes; TCAV_sens before and after the correction.

For each size a folder of ``N`` 64×64 JPEGs is generated as :mod:`stream_memory` generates it (three classes, a
stratified 20 % held out as ``test``), then, each in a child process of its own whose peak resident set size is
recorded (``ru_maxrss`` of that child, with :data:`stream_memory.FIXED_MALLOC`)::

    python -m jaxbias.cli train --dataset folder --root DIR --metadata DIR/meta.csv --image-size 64 --stream true \\
        --artifact stamp --artifact-class 0 --p 0.5 --model mlp --epochs 1 --batch-size 128 --workdir BASE
    python -m jaxbias.cli correct --from BASE --method rrclarc --layer features --epochs 1 --workdir FIXED --json

``correct`` fits the artifact CAV on the artifact class's training images (with vs without the stamp), fine-tunes,
and reports (clean / artifact accuracy, TCAV, TCAV_sens, R_bias) before and after. Streamed, neither peak should
grow with ``N`` (the must-show: the large folder within 10 % of the small one).

Usage::

    python benchmarks/stream_memory_correct.py [--small 2000] [--large 20000] [--out benchmarks/results] [--tag cpu]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def commands(folder: tuple[Path, Path], base: Path, fixed: Path) -> tuple[list[str], list[str]]:
    from stream_memory import SIZE

    root, table = folder
    train = [sys.executable, "-m", "jaxbias.cli", "train", "--dataset", "folder", "--root", str(root), "--metadata",
             str(table), "--image-size", str(SIZE), "--stream", "true", "--artifact", "stamp", "--artifact-class", "0",
             "--p", "0.5", "--model", "mlp", "--epochs", "1", "--batch-size", "128", "--no-progress", "--workdir",
             str(base)]
    correct = [sys.executable, "-m", "jaxbias.cli", "correct", "--from", str(base), "--method", "rrclarc", "--layer", "features", "--epochs",
               "1", "--no-progress", "--workdir", str(fixed), "--json"]
    return train, correct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--large", type=int, default=20000)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default="cpu")
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    from _common import md_table, write_results
    from stream_memory import FIXED_MALLOC, SIZE, child_peak, write

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (a.small, a.large):
            folder = write(Path(tmp) / f"f{n}", n)
            base, fixed = Path(tmp) / f"base{n}", Path(tmp) / f"fixed{n}"
            train, correct = commands(folder, base, fixed)
            train_rss, train_s = child_peak(train, malloc=FIXED_MALLOC)
            correct_rss, correct_s = child_peak(correct, malloc=FIXED_MALLOC, stdout=Path(tmp) / f"report{n}.json")
            report = json.loads((Path(tmp) / f"report{n}.json").read_text())
            before, after = report["base_report"], report["report"]
            rows.append({"images": n, "train_peak_rss_mib": round(train_rss / 2**20, 1),
                         "correct_peak_rss_mib": round(correct_rss / 2**20, 1), "train_s": round(train_s, 1),
                         "correct_s": round(correct_s, 1), "tcav_sens_before": before["tcav_sens"],
                         "tcav_sens_after": after["tcav_sens"], "artifact_before": before["artifact"],
                         "artifact_after": after["artifact"], "clean_before": before["clean"],
                         "clean_after": after["clean"],
                         "images_float32_mib": round(n * SIZE * SIZE * 3 * 4 / 2**20, 1)})
            print(rows[-1], flush=True)
    small, large = rows
    ratios = {k: round(large[k] / small[k], 4) for k in ("train_peak_rss_mib", "correct_peak_rss_mib")}
    table = md_table(["images", "train peak RSS MiB", "correct peak RSS MiB", "train s", "correct s",
                      "TCAV_sens before", "TCAV_sens after", "artifact acc before", "artifact acc after",
                      "clean acc before", "clean acc after", "the images as float32 MiB"],
                     [[r["images"], r["train_peak_rss_mib"], r["correct_peak_rss_mib"], r["train_s"], r["correct_s"],
                       r["tcav_sens_before"], r["tcav_sens_after"], r["artifact_before"], r["artifact_after"],
                       r["clean_before"], r["clean_after"], r["images_float32_mib"]] for r in rows])
    ok = all(v <= 1.10 for v in ratios.values())
    notes = (f"`jaxbias train` (1 epoch, mlp, stamp in half of class 0, streamed) then `jaxbias correct --method "
             f"rrclarc --epochs 1` on {a.small} and {a.large} generated {SIZE}×{SIZE} JPEGs, each a child process "
             f"(peak RSS = its `ru_maxrss`, malloc {' '.join(f'{k}={v}' for k, v in FIXED_MALLOC.items())}). "
             f"{a.large} images ÷ {a.small}: train {ratios['train_peak_rss_mib']}×, correct "
             f"{ratios['correct_peak_rss_mib']}× ({'both within' if ok else 'NOT both within'} 10 %). TCAV_sens and "
             "accuracies (clean test, artifact test = every test image stamped) are correct's own report before and "
             "after the correction. Regenerate: `python benchmarks/stream_memory_correct.py`.")
    paths = write_results("stream_memory_correct", a.tag, rows, table, a.out,
                          extra={"small": a.small, "large": a.large, "ratios": ratios, "fixed_malloc": FIXED_MALLOC},
                          notes=notes)
    print(table)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
