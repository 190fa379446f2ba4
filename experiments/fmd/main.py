"""FMD on Colored MNIST and Adult: a biased model, the Newton-step edit, and fine-tuning on the same pairs.

    python experiments/fmd/main.py --config offline   # 2-core CPU, a few minutes
    python experiments/fmd/main.py --config full      # Colored MNIST on the full MNIST (tfds)
    nice -n 10 python experiments/fmd/main.py --config fashion --budget-minutes 18 --no-progress \
        --workroot ../main/runs/fmd_fashion        # Colored Fashion-MNIST, 60,000 images, in chunks

For every dataset and seed: train a Vanilla MLP (resumable checkpoints under
``--workroot``), then debias it with each FMD variant from 100 external
counterfactual pairs, and fine-tune the same block on the same pairs as the
baseline. Writes ``results_<config>.json`` and ``results_<config>.md`` (bias
B, accuracies, demographic-parity gap, seconds of the edit; mean ± std over
seeds) next to this file or into ``--out``. Adult is skipped when its file is
absent.

Chunked configs (``fashion``): the work is split into (seed, model) cells, the biased model included; each
finished cell is one JSON line of ``results_<config>.jsonl`` and ``results_<config>.md`` / ``.json`` (mean ±
sample std over the seeds present) are rewritten after every cell. A call skips the cells already in the file
and starts no new cell once ``--budget-minutes`` have passed, so the same command, repeated, finishes the table;
a killed call loses at most its own cell. Rows made under other settings are refused (use another ``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from jaxbias import runs as runs_lib
from jaxbias.methods import fmd
from jaxbias.report import markdown_table, mean_std_rows
from jaxbias.runs import RunConfig
from jaxbias.runs.chunks import Budget, append_row, by_label, check_fingerprints, mean_std, read_rows, report_left
from jaxbias.runs.unlearning import _logits_fn, report, split_biased_mnist, unlearn_workdir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from configs import CONFIGS, NOTES, NOTES_FASHION  # noqa: E402


def _row(seed, dataset, model, rep, *, seconds=None, base_bias=None, base_acc=None):
    row = {"seed": seed, "dataset": dataset, "model": model, "B": rep["bias"], "seconds": seconds}
    for k, v in rep["accuracy"].items():
        row[f"acc_{k}"] = v
    if "dp_gap" in rep:
        row["dp_gap"] = rep["dp_gap"]
    if base_bias is not None:
        row["B_change_%"] = 100.0 * (rep["bias"] / base_bias - 1.0)
        row["acc_change_pt"] = {k: 100.0 * (v - base_acc[k]) for k, v in rep["accuracy"].items()}
    return row


def run(cfg: dict, *, out_dir: str, name: str, workroot: str, progress: bool) -> dict:
    t0 = time.perf_counter()
    runs, skipped = [], {}
    for dname, d in cfg["datasets"].items():
        if d["dataset"] == "adult" and not os.path.exists(d["data_path"]):
            skipped[dname] = f"{d['data_path']} not found"
            continue
        for seed in cfg["seeds"]:
            b = d["base"]
            config = RunConfig.from_dict({k: d[k] for k in ("dataset", "rho", "source", "data_path", "protected") if k in d},
                               model="mlp",
                               hidden=tuple(b["hidden"]), epochs=b["epochs"], batch_size=b["batch_size"], lr=b["lr"],
                               weight_decay=b["weight_decay"], decay_every=None, seed=seed, eval_every=b["epochs"])
            data = config.load_data()  # the base model and every edit of a seed see the same data
            model = runs_lib.train(config, data=data, workdir=os.path.join(workroot, f"{dname}_s{seed}"),
                                   resume="auto", progress=progress)
            base_row = None
            tuned = set()  # (block, accuracy rule): the baseline runs once per distinct pair
            for label, over in cfg["variants"].items():
                hp = fmd.Hparams(**over)
                key = (hp.params, hp.accuracy_on, hp.max_acc_drop)
                res = unlearn_workdir(model, external=cfg["external"], hp=hp, seed=seed, data=data,
                                      baseline=key not in tuned)
                before = res["before"]
                if base_row is None:
                    base_row = _row(seed, dname, "biased model", before)
                    runs.append(base_row)
                kw = dict(base_bias=before["bias"], base_acc=before["accuracy"])
                runs.append({**_row(seed, dname, label, res["fmd"], seconds=res["fmd"]["seconds"], **kw),
                             "scale": res["fmd"]["scale"], "feasible": res["fmd"]["feasible"],
                             "block": res["fmd"]["block"], "pairs": res["pairs"]})
                print(json.dumps(runs[-1], default=float), flush=True)
                if key not in tuned:
                    tuned.add(key)
                    block = "all layers" if res["fmd"]["block"] is None else "+".join(res["fmd"]["block"])
                    rule = "" if hp.accuracy_on == "factual" else ", balanced accuracy kept"
                    runs.append({**_row(seed, dname, f"fine-tune baseline ({block}{rule})", res["finetune"],
                                        seconds=res["finetune"]["seconds"], **kw), "steps": res["finetune"]["steps"]})
    sections = []
    for dname in cfg["datasets"]:
        rs = [dict(r, **{f"acc_{k}_change": v for k, v in r.get("acc_change_pt", {}).items()}) for r in runs
              if r["dataset"] == dname]
        if not rs:
            continue
        accs = sorted({k for r in rs for k in r if k.startswith("acc_") and k != "acc_change_pt"
                       and not k.endswith("_change")})
        cols = ["B", "B_change_%", *accs, *[f"{a}_change" for a in accs], *(["dp_gap"] if "dp_gap" in rs[0] else []),
                "seconds"]
        scale = {a: 100.0 for a in accs}
        digits = {**{c: 1 for c in cols if c.startswith("acc_") or c == "B_change_%"}, "seconds": 3, "B": 3,
                  "dp_gap": 3}
        rows = mean_std_rows(rs, by="model", columns=cols, scale=scale, digits=digits)
        sections.append(f"## {dname}\n\n" + markdown_table(rows, ["model", *cols]))
    md = (
        f"# FMD: debiasing with 100 external counterfactual pairs — config `{name}`\n\n"
        f"Mean ± std over seeds {cfg['seeds']}. B = mean |p(y|x) − p(y|x̄)| on held-out pairs; accuracies in %; "
        "`*_change` columns: points against the biased model of the same seed; `B_change_%`: relative change of B; "
        "`seconds`: wall-clock of the edit (compiled; FMD) or of the whole fine-tuning search (baseline). "
        f"Variants: {json.dumps(cfg['variants'])}. Total {time.perf_counter() - t0:.0f} s."
        + (f" Skipped: {skipped}." if skipped else "") + "\n\n" + "\n".join(sections) + "\n" + NOTES
    )
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"results_{name}.json"), "w") as f:
        json.dump({"config": cfg, "runs": runs, "skipped": skipped}, f, indent=2, default=float)
    with open(os.path.join(out_dir, f"results_{name}.md"), "w") as f:
        f.write(md)
    print(md)
    return {"runs": runs, "markdown": md, "skipped": skipped}


# ----------------------------------------------------------------------------------------------------------
# Chunked configs: (seed, model) cells appended to results_<config>.jsonl.

BASE = "biased model"
#: The FMD criterion (issue 39): B cut by at least this much (relative) ...
CRITERION_CUT = -50.0
#: ... with at most this loss of biased-test accuracy (points) ...
CRITERION_DROP = 3.0
#: ... from at most this many external pairs.
CRITERION_PAIRS = 100
_DATA_KEYS = ("dataset", "rho", "source", "images")  # data_dir is where the files lie, not what they are


def _labels(cfg: dict) -> list[str]:
    return [BASE, *cfg["variants"], *cfg["finetune"]]


def _fingerprint(cfg: dict, label: str) -> str | None:
    """What a cell's numbers depend on besides its seed; ``None`` for a label these settings lack."""
    part = {"data": {k: cfg["data"].get(k) for k in _DATA_KEYS}, "base": cfg["base"], "external": cfg["external"]}
    if label in cfg["variants"]:
        part["fmd"] = cfg["variants"][label]
    elif label in cfg["finetune"]:
        part["finetune"] = cfg["finetune"][label]
    elif label != BASE:
        return None
    return json.dumps(part, sort_keys=True)


def _cell_row(seed: int, label: str, rep: dict, before: dict) -> dict:
    row = {"seed": seed, "model": label, "B": rep["bias"], **{f"acc_{k}": v for k, v in rep["accuracy"].items()},
           "B_base": before["bias"], "B_change_%": 100.0 * (rep["bias"] / before["bias"] - 1.0)}
    for k, v in rep["accuracy"].items():
        row[f"acc_{k}_change"] = 100.0 * (v - before["accuracy"][k])
    row["criterion"] = bool(row["B_change_%"] <= CRITERION_CUT and row["acc_biased_change"] >= -CRITERION_DROP)
    return row


def _cell(cfg: dict, label: str, *, seed: int, model, data) -> dict:
    if label == BASE:
        raw = model.config.load_data(data).raw
        split = split_biased_mnist(raw, external=cfg["external"], seed=seed)
        logits_fn = _logits_fn(model.module, model.state.model_state)
        before = report(logits_fn, model.state.params, split)
        row = _cell_row(seed, label, before, before)
        row["criterion"] = None
        return {**row, "pairs": int(split.pairs[0].shape[0]), "eval_pairs": int(split.eval_pairs[0].shape[0])}
    tuned = label in cfg["finetune"]
    hp = fmd.Hparams(**(cfg["finetune"] if tuned else cfg["variants"])[label])
    res = unlearn_workdir(model, external=cfg["external"], hp=hp, seed=seed, data=data, baseline=tuned)
    out = res["finetune"] if tuned else res["fmd"]
    row = {**_cell_row(seed, label, out, res["before"]), "seconds": out["seconds"], "pairs": res["pairs"],
           "block": res["fmd"]["block"]}
    if tuned:
        row["steps"] = out["steps"]
    else:
        row.update(scale=out["scale"], step_scales=out["step_scales"], feasible=out["feasible"],
                   bias_pairs=out["bias_pairs"])
    row["criterion"] = bool(row["criterion"] and row["pairs"] <= CRITERION_PAIRS)
    return row


def summarize_chunked(cfg: dict, rows: list[dict], *, out_dir: str, name: str, command: str,
                      seconds: float | None = None) -> str:
    """Rewrite ``results_<name>.md`` / ``.json`` from the rows: mean ± sample std over the seeds present."""
    cols = ["B", "B_change_%", "acc_biased", "acc_unbiased", "acc_biased_change", "acc_unbiased_change", "seconds"]
    fmts = {"B": (1.0, ".3f"), "B_change_%": (1.0, "+.1f"), "acc_biased": (100.0, ".1f"),
            "acc_unbiased": (100.0, ".1f"), "acc_biased_change": (1.0, "+.1f"), "acc_unbiased_change": (1.0, "+.1f"),
            "seconds": (1.0, ".3g")}
    table = []
    for label, rs in by_label(rows, _labels(cfg)):
        row = {"model": label, "n": str(len(rs))}
        for c in cols:
            vals = np.array([r[c] for r in rs if r.get(c) is not None], dtype=float)
            row[c] = mean_std(vals, *fmts[c])
        met = [r["criterion"] for r in rs if r.get("criterion") is not None]
        row["criterion met"] = f"{sum(met)}/{len(met)}" if met else "–"
        extra = [r.get("steps") for r in rs] if label in cfg["finetune"] else [r.get("step_scales") for r in rs]
        row["steps / scales"] = "; ".join(
            str(e) if not isinstance(e, list) else "[" + ", ".join(f"{v:.2g}" for v in e) + "]" for e in extra
        ) if label != BASE else "–"
        table.append(row)
    seeds = sorted({r["seed"] for r in rows})
    total = sum(r.get("cell_seconds") or 0.0 for r in rows)
    left = [(s, m) for s in cfg["seeds"] for m in _labels(cfg) if (s, m) not in {(r["seed"], r["model"]) for r in rows}]
    conflicting = sorted({r["conflicting_train"] for r in rows if r.get("conflicting_train") is not None})
    d, b = cfg["data"], cfg["base"]
    md = (
        f"# FMD on Colored Fashion-MNIST — config `{name}`\n\n"
        f"Data: {d['images']} ({d['source']}), ρ = {d['rho']}: the 60,000 training images, 6,000 per class; "
        f"int(6000·ρ) = 5,940 of each class on its own colour and 60 on the 9 others, i.e. **600 bias-conflicting "
        f"training images** (counted in the loaded data: {conflicting or 'n/a'}). {cfg['external']} external pairs "
        f"(test images on their class colour and on one random other colour, drawn per seed); the other 9,900 test "
        f"images measure B = mean |p(y|x) − p(y|x̄)| over every other colour (89,100 pairs) and the accuracy on the "
        f"biased (ρ = 1) and unbiased (ρ = 0.1) colourings. Base: FMD's MLP 3·28·28→"
        f"{'→'.join(str(h) for h in b['hidden'])}→10, {b['epochs']} epochs of Adam {b['lr']}, batch "
        f"{b['batch_size']}, weight decay {b['weight_decay']}.\n\n"
        f"Mean ± sample std over the seeds present ({seeds}; *n* = seeds per row). Accuracies in %; `*_change`: "
        f"points against the biased model of the same seed; `B_change_%`: relative change of B. `seconds`: "
        f"wall-clock of the edit (compiled; FMD) or of the whole fine-tuning search (baseline, 200 full-batch Adam "
        f"steps, the step count chosen by FMD's rule). *FMD criterion*: B cut by ≥ {-CRITERION_CUT:.0f} % with ≤ "
        f"{CRITERION_DROP:.0f} points of biased-test accuracy lost, from ≤ {CRITERION_PAIRS} external pairs "
        f"(count of seeds meeting it). *steps / scales*: per seed, the Newton steps' chosen scales (0 = step "
        f"rejected) or the fine-tuning steps chosen. Cells: {len(rows)}, {total:.0f} s of cell time in all"
        + (f" ({seconds:.0f} s in the last call)" if seconds is not None else "") + "; "
        + (f"{len(left)} cells not yet run." if left else "all cells done.") + "\n\n"
        + markdown_table(table, ["model", "n", *cols, "criterion met", "steps / scales"])
        + "\n\nVariants: " + json.dumps(cfg["variants"]) + "; baselines: " + json.dumps(cfg["finetune"])
        + f"\n\nRegenerate / continue (each call runs the missing cells for at most its budget, then stops): "
        f"`{command}`\n" + ("\n" + NOTES_FASHION if name == "fashion" and not left else "")
    )
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"results_{name}.json"), "w") as f:
        json.dump({"config": cfg, "runs": rows, "left": left}, f, indent=2, default=float)
    with open(os.path.join(out_dir, f"results_{name}.md"), "w") as f:
        f.write(md)
    return md


def run_chunked(cfg: dict, *, out_dir: str, name: str, workroot: str, progress: bool,
                budget_minutes: float | None, command: str) -> dict:
    """Run the (seed, model) cells missing from ``results_<name>.jsonl``, appending each as it finishes."""
    budget = Budget(budget_minutes)
    path = os.path.join(out_dir, f"results_{name}.jsonl")
    rows = read_rows(path)
    check_fingerprints(rows, lambda m: _fingerprint(cfg, m), path)
    done = {(r["seed"], r["model"]) for r in rows}
    todo = [(s, m) for s in cfg["seeds"] for m in _labels(cfg) if (s, m) not in done]
    if done:
        print(f"{len(done)} cells already in {path}; {len(todo)} to run", flush=True)
    os.makedirs(out_dir, exist_ok=True)
    md = summarize_chunked(cfg, rows, out_dir=out_dir, name=name, command=command) if rows else ""
    stopped = False
    for seed in cfg["seeds"]:
        pending = [m for (s, m) in todo if s == seed]
        if not pending:
            continue
        if budget.over():
            stopped = True
            break
        d, b = cfg["data"], cfg["base"]
        config = RunConfig.from_dict({"dataset": d["dataset"],
                                      "data": {k: d[k] for k in ("rho", "source", "images", "data_dir")}},
                                     model="mlp", hidden=tuple(b["hidden"]), epochs=b["epochs"],
                                     batch_size=b["batch_size"], lr=b["lr"], weight_decay=b["weight_decay"],
                                     decay_every=None, seed=seed, eval_every=b["epochs"])
        data = config.load_data()  # the base model and every cell of a seed see the same data
        model = runs_lib.train(config, data=data, workdir=os.path.join(workroot, f"{name}_s{seed}"), resume="auto",
                               progress=progress)
        raw = data.raw
        conflicting = int(np.sum(raw.train_bias != raw.train_y))
        epoch_s = [h["seconds"] for h in model.history if "seconds" in h]
        for label in pending:
            if budget.over():
                stopped = True
                break
            tc = time.perf_counter()
            row = _cell(cfg, label, seed=seed, model=model, data=data)
            row.update(conflicting_train=conflicting, cell_seconds=time.perf_counter() - tc,
                       fingerprint=_fingerprint(cfg, label))
            if label == BASE:
                row["base_epoch_seconds"] = epoch_s
            append_row(path, row, default=float)  # one line per finished cell: a killed chunk loses only its cell
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("fingerprint", "base_epoch_seconds")},
                             default=float), flush=True)
            md = summarize_chunked(cfg, rows, out_dir=out_dir, name=name, command=command,
                                   seconds=budget.elapsed())
        if stopped:
            break
    cells = [(s, m) for s in cfg["seeds"] for m in _labels(cfg)]
    left = report_left(rows, cells, path=path, markdown=md, stopped=stopped, budget_minutes=budget_minutes)
    return {"runs": rows, "markdown": md, "left": left}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="offline")
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--workroot", default="runs/fmd", help="base-model checkpoints (resumable)")
    p.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    p.add_argument("--base-epochs", type=int, default=None, help="override the base models' epochs")
    p.add_argument("--datasets", default=None, help="comma-separated subset of the config's datasets")
    p.add_argument("--variants", nargs="+", default=None, metavar="LABEL",
                   help="a subset of the FMD variants, by label (labels hold commas: quote each one)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--budget-minutes", type=float, default=18.0,
                   help="chunked configs: start no new cell after this many minutes; the next call continues from "
                        "results_CONFIG.jsonl (default 18)")
    p.add_argument("--data-dir", default=None, help="chunked configs: the IDX folder (default: the config's)")
    a = p.parse_args(argv)
    cfg = json.loads(json.dumps(CONFIGS[a.config]))
    if a.seeds is not None:
        cfg["seeds"] = list(range(a.seeds))
    if cfg.get("chunked"):
        if a.datasets:
            p.error(f"--datasets: config {a.config!r} has one dataset")
        if a.variants:
            unknown = sorted(set(a.variants) - set(cfg["variants"]) - set(cfg["finetune"]))
            if unknown:
                p.error(f"--variants: unknown {unknown}; expected some of {[*cfg['variants'], *cfg['finetune']]}")
            cfg["variants"] = {k: v for k, v in cfg["variants"].items() if k in a.variants}
            cfg["finetune"] = {k: v for k, v in cfg["finetune"].items() if k in a.variants}
        if a.base_epochs is not None:
            cfg["base"]["epochs"] = a.base_epochs
        if a.data_dir is not None:
            cfg["data"]["data_dir"] = os.path.abspath(a.data_dir)
        given = {"--out": a.out if a.out != p.get_default("out") else None, "--seeds": a.seeds,
                 "--base-epochs": a.base_epochs, "--data-dir": a.data_dir}
        command = ("nice -n 10 python experiments/fmd/main.py --config " + a.config
                   + f" --budget-minutes {a.budget_minutes or 18:g} --no-progress --workroot {a.workroot}"
                   + "".join(f" {k} {v}" for k, v in given.items() if v is not None)
                   + ("" if not a.variants else " --variants " + " ".join(repr(v) for v in a.variants)))
        run_chunked(cfg, out_dir=a.out, name=a.config, workroot=a.workroot, progress=not a.no_progress,
                    budget_minutes=a.budget_minutes, command=command)
        return 0
    if a.datasets:
        keep = [s.strip() for s in a.datasets.split(",")]
        unknown = sorted(set(keep) - set(cfg["datasets"]))
        if unknown:
            p.error(f"--datasets: unknown {unknown}; expected some of {sorted(cfg['datasets'])}")
        cfg["datasets"] = {k: v for k, v in cfg["datasets"].items() if k in keep}
    if a.variants:
        keep = a.variants
        unknown = sorted(set(keep) - set(cfg["variants"]))
        if unknown:
            p.error(f"--variants: unknown {unknown}; expected some of {sorted(cfg['variants'])}")
        cfg["variants"] = {k: v for k, v in cfg["variants"].items() if k in keep}
    if a.base_epochs is not None:
        for d in cfg["datasets"].values():
            d["base"]["epochs"] = a.base_epochs
    run(cfg, out_dir=a.out, name=a.config, workroot=a.workroot, progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
