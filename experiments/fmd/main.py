"""FMD on Colored MNIST and Adult: a biased model, the Newton-step edit, and fine-tuning on the same pairs.

    python experiments/fmd/main.py --config offline   # 2-core CPU, a few minutes
    python experiments/fmd/main.py --config full      # Colored MNIST on the full MNIST (tfds)

For every dataset and seed: train a Vanilla MLP (resumable checkpoints under
``--workroot``), then debias it with each FMD variant from 100 external
counterfactual pairs, and fine-tune the same block on the same pairs as the
baseline. Writes ``results_<config>.json`` and ``results_<config>.md`` (bias
B, accuracies, demographic-parity gap, seconds of the edit; mean ± std over
seeds) next to this file or into ``--out``. Adult is skipped when its file is
absent.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


from jaxbias import runs as runs_lib
from jaxbias.methods import fmd
from jaxbias.report import markdown_table, mean_std_rows
from jaxbias.runs import RunConfig
from jaxbias.runs.unlearning import unlearn_workdir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from configs import CONFIGS, NOTES  # noqa: E402


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
    a = p.parse_args(argv)
    cfg = json.loads(json.dumps(CONFIGS[a.config]))
    if a.seeds is not None:
        cfg["seeds"] = list(range(a.seeds))
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
