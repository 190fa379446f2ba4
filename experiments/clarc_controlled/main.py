"""Correcting a stamp shortcut: Vanilla fine-tuning, RRR, A-, P- and RR-ClArC (controlled setting).

    python experiments/clarc_controlled/main.py --config offline   # 2-core CPU, minutes
    python experiments/clarc_controlled/main.py --config full      # full MNIST via tfds

    nice -n 19 python experiments/clarc_controlled/main.py --config fashion --budget-minutes 25 --no-progress

Trains one base model per seed on MNIST (or Fashion-MNIST) with an artifact in one class, corrects
it with every method from the same checkpoint, and measures clean accuracy,
artifact-test accuracy, TCAV, TCAV_sens, chosen vs other classes, R_bias, seconds per
epoch. The work is split into cells (seed × model, the uncorrected base included): each finished cell is
appended as one JSON line to ``results_<config>.jsonl`` (next to this file or in ``--out``), and
``results_<config>.md`` / ``.json`` (mean ± std over the seeds present) are rewritten from it after every
cell. A call skips the cells already in the file and starts no new cell (or base training) once
``--budget-minutes`` have passed, so the same command, repeated, finishes the table in chunks; a killed call
loses at most the cell it was running. Base models are checkpointed per epoch under ``--workroot`` and resume.
Rows made under other settings (``--base-epochs``, ``--epochs``, ...) are refused: use another ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from jaxbias import runs as runs_lib
from jaxbias.runs.chunks import append_row, by_label, check_fingerprints, mean_std, read_rows, report_left
from jaxbias.runs.correction import correct, measured
from jaxbias.report import markdown_table
from jaxbias.runs import RunConfig
from jaxbias.runs.measure import reference_cav, report_layer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from configs import CONFIGS  # noqa: E402

COLUMNS = ["clean", "artifact", "tcav", "tcav_sens", "chosen_clean", "other_clean", "chosen_artifact",
           "other_artifact", "artifact_flip_to_target", "r_bias", "r_bias_chosen", "r_bias_pull"]


def _fingerprint(cfg: dict, label: str) -> str:
    """What a row's numbers depend on besides its seed: the data, the base schedule and the cell's method."""
    if label == "uncorrected":
        part = {k: cfg.get(k) for k in ("source", "images", "artifact", "artifact_class", "p", "base")}
    else:
        method, hp = cfg["methods"][label]
        part = {k: cfg.get(k) for k in ("source", "images", "artifact", "artifact_class", "p", "base", "correct")}
        part["method"] = [method, dict(hp)]
    return json.dumps(part, sort_keys=True, default=list)


def summarize(cfg: dict, rows: list[dict], *, out_dir: str, name: str, seconds: float | None = None) -> str:
    """Rewrite ``results_<name>.md`` and ``.json`` from the rows: mean ± std (sample std) over the seeds present."""
    only = cfg.get("_only")
    labels = ["uncorrected", *[m for m in cfg["methods"] if not only or m in only]]
    base_sens = {r["seed"]: r["tcav_sens"] for r in rows if r["model"] == "uncorrected"}
    table = []
    for label, rs in by_label(rows, labels):  # rows of methods left out by --only come last
        row = {"model": label, "n": str(len(rs))}
        for k in COLUMNS:
            vals = np.array([r[k] for r in rs if r.get(k) is not None], dtype=float)
            row[k] = mean_std(vals, 1.0, ".4g") if k == "tcav_sens" else mean_std(vals, 100.0, ".1f")
        rel = np.array([r["tcav_sens"] / base_sens[r["seed"]] - 1 for r in rs if r["seed"] in base_sens], dtype=float)
        row["TCAV_sens vs uncorrected"] = mean_std(rel, 100.0, "+.0f") + ("%" if rel.size else "")
        secs = np.array([r["seconds_per_epoch"] for r in rs if r.get("seconds_per_epoch") is not None], dtype=float)
        row["s / epoch"] = f"{secs.mean():.1f}" if secs.size else "–"
        table.append(row)
    seeds = sorted({r["seed"] for r in rows})
    images = cfg.get("images", "mnist")
    what = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}.get(images, images)
    total = sum(r.get("cell_seconds") or 0.0 for r in rows)
    md = (
        f"# Correcting a stamp shortcut — config `{name}`\n\n"
        f"Data: {cfg['source']} {what}, artifact `{cfg['artifact']}` in class {cfg['artifact_class']} with p = "
        f"{cfg['p']}; base: {cfg['base']}; corrections fine-tune {cfg['correct']['epochs']} epochs from the base "
        f"({cfg['correct']}; P-ClArC none). Accuracies and TCAV in %, TCAV_sens absolute (mean |∇_a f_c · h| per "
        f"position of `block4`), mean ± sample std over the seeds present ({seeds}; *n* = seeds per row; one seed: "
        f"no ±); *TCAV_sens vs uncorrected* is the per-seed change against that seed's base. *chosen* = the "
        f"artifact class, *other* = the rest; *artifact* test = every test image stamped; *r_bias* = share of LRP "
        f"|relevance| (true class, EpsilonPlusFlat) inside the stamp mask (post-processed as in the paper: "
        f"threshold, blur σ = 2, threshold) on the artifact test set, *r_bias_chosen* the same on its "
        f"class-{cfg['artifact_class']} images, *r_bias_pull* the class-{cfg['artifact_class']} logit explained on "
        f"the other classes' stamped images (P-ClArC: explained through its projection); *flip* = share of stamped "
        f"non-{cfg['artifact_class']} images predicted as {cfg['artifact_class']}. Cells: {len(rows)}, "
        f"{total:.0f} s of cell time in all"
        + (f" ({seconds:.0f} s in the last call)" if seconds is not None else "") + ".\n\n"
        + markdown_table(table, ["model", "n", *COLUMNS, "TCAV_sens vs uncorrected", "s / epoch"])
        + "\n\nHyperparameters: "
        + "; ".join(f"{k}: `{m}` {hp}" for k, (m, hp) in cfg["methods"].items())
        + f"\n\nRegenerate / continue (each call runs the missing cells for at most its budget, then stops): "
        f"`python experiments/clarc_controlled/main.py --config {name} --budget-minutes 25 --no-progress`\n"
    )
    os.makedirs(out_dir, exist_ok=True)
    public = {k: v for k, v in cfg.items() if not k.startswith("_")}
    with open(os.path.join(out_dir, f"results_{name}.json"), "w") as f:
        json.dump({"config": {**public, "methods": {k: [m, dict(hp)] for k, (m, hp) in cfg["methods"].items()}},
                   "runs": rows}, f, indent=2, default=list)
    with open(os.path.join(out_dir, f"results_{name}.md"), "w") as f:
        f.write(md)
    return md


def run(cfg: dict, *, out_dir: str, name: str, workroot: str, progress: bool, only: list[str] | None = None,
        budget_minutes: float | None = None) -> dict:
    """Run the (seed, model) cells missing from ``results_<name>.jsonl``, appending each as it finishes.

    Stops before starting a new cell (or a base training) once ``budget_minutes`` have passed; returns
    ``{"runs", "markdown", "left"}`` (``left``: the cells not yet run).
    """
    t0 = time.perf_counter()
    cfg = {**cfg, "_only": only}
    path = os.path.join(out_dir, f"results_{name}.jsonl")
    rows = read_rows(path)
    check_fingerprints(rows, lambda m: _fingerprint(cfg, m) if m in cfg["methods"] or m == "uncorrected" else None,
                       path)
    done = {(r["seed"], r["model"]) for r in rows}
    labels = ["uncorrected", *[m for m in cfg["methods"] if not only or m in only]]
    todo = [(seed, label) for seed in cfg["seeds"] for label in labels if (seed, label) not in done]
    if done:
        print(f"{len(done)} cells already in {path}; {len(todo)} to run", flush=True)

    def over() -> bool:
        return budget_minutes is not None and time.perf_counter() - t0 >= 60 * budget_minutes

    os.makedirs(out_dir, exist_ok=True)
    md = summarize(cfg, rows, out_dir=out_dir, name=name) if rows else ""
    stopped = False
    for seed in cfg["seeds"]:
        pending = [label for (s, label) in todo if s == seed]
        if not pending:
            continue
        if over():
            stopped = True
            break
        b = cfg["base"]
        data_settings = {k: cfg[k] for k in ("artifact", "artifact_class", "p", "source")}
        if cfg.get("images", "mnist") != "mnist":
            data_settings["images"] = cfg["images"]
        if cfg.get("data_dir") is not None:
            data_settings["data_dir"] = cfg["data_dir"]
        config = RunConfig(dataset="artifact_mnist", data=data_settings,
                           epochs=b["epochs"], batch_size=b["batch_size"], lr=b["lr"], weight_decay=b["weight_decay"], decay_every=b["decay_every"], seed=seed,
                           model_settings={"channels": tuple(b["channels"])}, eval_every=b["epochs"])
        data = config.load_data()  # the base and every correction of a seed see the same images
        base = runs_lib.train(config, data=data, workdir=os.path.join(workroot, f"base_s{seed}"), resume="auto",
                              progress=progress)
        base_secs = float(np.median([h["seconds"] for h in base.history])) if base.history else None
        for label in pending:
            if over():
                stopped = True
                break
            tc = time.perf_counter()
            c = cfg["correct"]
            common = dict(base=base, seed=seed, chosen=(cfg["artifact_class"],), progress=progress, data=data)
            if label == "uncorrected":
                layer = report_layer(base)  # the CAV correct() fits for its reports, on the same base
                report = measured(base, data, cav=reference_cav(base, data, layer=layer), layer=layer,
                                  chosen=common["chosen"])
                row = {"seed": seed, "model": "uncorrected", "method": "vanilla", "seconds_per_epoch": base_secs,
                       **report}
            else:
                method, hp = cfg["methods"][label]
                epochs = 0 if method == "pclarc" else c["epochs"]
                res = correct(method=method, hparams=hp, epochs=epochs, batch_size=c["batch_size"], lr=c["lr"],
                              trainable=c.get("trainable"), base_report=False, **common)
                row = {"seed": seed, "model": label, "method": method, "hparams": dict(hp),
                       "seconds_per_epoch": res["seconds_per_epoch"] if epochs else None, **res["report"]}
            row["cell_seconds"] = time.perf_counter() - tc
            row["fingerprint"] = _fingerprint(cfg, label)
            append_row(path, row)  # one line per finished cell: a killed chunk loses at most its own cell
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("per_class") and k != "fingerprint"}),
                  flush=True)
            md = summarize(cfg, rows, out_dir=out_dir, name=name, seconds=time.perf_counter() - t0)
        if stopped:
            break
    cells = [(seed, label) for seed in cfg["seeds"] for label in labels]
    left = report_left(rows, cells, path=path, markdown=md, stopped=stopped, budget_minutes=budget_minutes)
    return {"runs": rows, "markdown": md, "left": left}


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
    p.add_argument("--budget-minutes", type=float, default=25.0,
                   help="start no new cell (or base training) after this many minutes; the next call continues "
                        "from results_CONFIG.jsonl (default 25)")
    p.add_argument("--data-dir", default=None, help="the IDX folder of a source 'dir' config (default: the config's)")
    a = p.parse_args(argv)
    cfg = dict(CONFIGS[a.config])
    if a.seeds is not None:
        cfg["seeds"] = list(range(a.seeds))
    if a.base_epochs is not None:
        cfg["base"] = {**cfg["base"], "epochs": a.base_epochs}
    if a.epochs is not None:
        cfg["correct"] = {**cfg["correct"], "epochs": a.epochs}
    if a.data_dir is not None:
        cfg["data_dir"] = os.path.abspath(a.data_dir)
    only = [s.strip() for s in a.only.split(",")] if a.only else None
    run(cfg, out_dir=a.out, name=a.config, workroot=a.workroot or os.path.join("runs", "clarc_controlled", a.config),
        progress=not a.no_progress, only=only, budget_minutes=a.budget_minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
