"""Correcting a stamp shortcut: Vanilla fine-tuning, RRR, A-, P- and RR-ClArC (controlled setting).

    python experiments/clarc_controlled/main.py --config offline   # 2-core CPU, minutes
    python experiments/clarc_controlled/main.py --config full      # full MNIST via tfds

Trains one base model per seed on MNIST with an artifact in one class, corrects
it with every method from the same checkpoint, and writes
``results_<config>.json`` and ``results_<config>.md`` (clean accuracy,
artifact-test accuracy, TCAV, TCAV_sens, chosen vs other classes, seconds per
epoch) next to this file or into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from jaxbias import runs as runs_lib
from jaxbias.correct import correct
from jaxbias.report import markdown_table
from jaxbias.runs import RunConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from configs import CONFIGS  # noqa: E402

COLUMNS = ["clean", "artifact", "tcav", "tcav_sens", "chosen_clean", "other_clean", "chosen_artifact",
           "other_artifact", "artifact_flip_to_target", "r_bias", "r_bias_chosen", "r_bias_pull"]


def run(cfg: dict, *, out_dir: str, name: str, workroot: str, progress: bool, only: list[str] | None = None) -> dict:
    t0 = time.perf_counter()
    runs = []
    for seed in cfg["seeds"]:
        b = cfg["base"]
        config = RunConfig(dataset="artifact_mnist", data={k: cfg[k] for k in ("artifact", "artifact_class", "p", "source")},
                           epochs=b["epochs"], batch_size=b["batch_size"], lr=b["lr"], weight_decay=b["weight_decay"], decay_every=b["decay_every"], seed=seed,
                           model_settings={"channels": tuple(b["channels"])}, eval_every=b["epochs"])
        data = config.load_data()  # the base and every correction of a seed see the same images
        base = runs_lib.train(config, data=data, workdir=os.path.join(workroot, f"base_s{seed}"), resume="auto",
                              progress=progress)
        base_secs = float(np.median([h["seconds"] for h in base.history])) if base.history else None
        base_added = False
        for label, (method, hp) in cfg["methods"].items():
            if only and label not in only:
                continue
            c = cfg["correct"]
            epochs = 0 if method == "pclarc" else c["epochs"]
            res = correct(base=base, method=method, hparams=hp, epochs=epochs, batch_size=c["batch_size"],
                          lr=c["lr"], seed=seed, chosen=(cfg["artifact_class"],), progress=progress, data=data,
                          trainable=c.get("trainable"))
            if not base_added:  # the uncorrected model's report, once per seed
                base_added = True
                runs.append({"seed": seed, "model": "uncorrected", "method": "vanilla",
                             "seconds_per_epoch": base_secs, **res["base_report"]})
            runs.append({"seed": seed, "model": label, "method": method, "hparams": hp,
                         "seconds_per_epoch": res["seconds_per_epoch"] if epochs else None, **res["report"]})
            print(json.dumps({k: v for k, v in runs[-1].items() if not k.endswith("per_class")}), flush=True)
    rows = []
    labels = ["uncorrected", *[m for m in cfg["methods"] if not only or m in only]]
    base_sens = np.mean([r["tcav_sens"] for r in runs if r["model"] == "uncorrected"])
    for label in labels:
        rs = [r for r in runs if r["model"] == label]
        row = {"model": label}
        for k in COLUMNS:
            vals = np.array([r[k] for r in rs if r.get(k) is not None], dtype=float)
            if vals.size == 0:
                row[k] = "–"
                continue
            row[k] = f"{vals.mean():.4g}" if k in ("tcav_sens",) else f"{100 * vals.mean():.1f}"
        row["TCAV_sens vs uncorrected"] = f"{100 * (np.mean([r['tcav_sens'] for r in rs]) / base_sens - 1):+.0f}%"
        secs = [r["seconds_per_epoch"] for r in rs if r["seconds_per_epoch"] is not None]
        row["s / epoch"] = f"{np.mean(secs):.1f}" if secs else "–"
        rows.append(row)
    md = (
        f"# Correcting a stamp shortcut — config `{name}`\n\n"
        f"Data: {cfg['source']} MNIST, artifact `{cfg['artifact']}` in class {cfg['artifact_class']} with p = "
        f"{cfg['p']}; base: {cfg['base']}; corrections fine-tune {cfg['correct']['epochs']} epochs from the base "
        f"({cfg['correct']}; P-ClArC none). Accuracies and TCAV in %, TCAV_sens absolute (mean |∇_a f_c · h| per position of `block4`), mean "
        f"over seeds {cfg['seeds']}. *chosen* = the artifact class, *other* = the rest; *artifact* test = every "
        f"test image stamped; *r_bias* = share of LRP |relevance| (true class, EpsilonPlusFlat) inside the stamp mask (post-processed as in the paper: threshold, blur σ = 2, threshold) on the artifact test set, *r_bias_chosen* the same on its class-{cfg['artifact_class']} images, *r_bias_pull* the class-{cfg['artifact_class']} logit explained on the other classes' stamped images (P-ClArC: no layer graph for its projected forward pass); *flip* = share of stamped non-{cfg['artifact_class']} digits predicted as "
        f"{cfg['artifact_class']}. Total {time.perf_counter() - t0:.0f} s.\n\n"
        + markdown_table(rows, ["model", *COLUMNS, "TCAV_sens vs uncorrected", "s / epoch"])
        + "\n\nHyperparameters: "
        + "; ".join(f"{k}: `{m}` {hp}" for k, (m, hp) in cfg["methods"].items())
        + "\n"
    )
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"results_{name}.json"), "w") as f:
        json.dump({"config": {**cfg, "methods": {k: [m, dict(hp)] for k, (m, hp) in cfg["methods"].items()}},
                   "runs": runs}, f, indent=2, default=list)
    with open(os.path.join(out_dir, f"results_{name}.md"), "w") as f:
        f.write(md)
    print(md)
    return {"runs": runs, "markdown": md}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="offline")
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--workroot", default=None,
                   help="base-model checkpoints, resumable (default runs/clarc_controlled/CONFIG)")
    p.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    p.add_argument("--base-epochs", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs of the corrections")
    p.add_argument("--only", default=None, help="comma-separated method labels to run")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = dict(CONFIGS[a.config])
    if a.seeds is not None:
        cfg["seeds"] = list(range(a.seeds))
    if a.base_epochs is not None:
        cfg["base"] = {**cfg["base"], "epochs": a.base_epochs}
    if a.epochs is not None:
        cfg["correct"] = {**cfg["correct"], "epochs": a.epochs}
    only = [s.strip() for s in a.only.split(",")] if a.only else None
    run(cfg, out_dir=a.out, name=a.config, workroot=a.workroot or os.path.join("runs", "clarc_controlled", a.config), progress=not a.no_progress, only=only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
