"""EnD vs Vanilla on Biased MNIST (Tartaglione et al., CVPR 2021, Table 1 protocol).

    python experiments/end_biased_mnist/main.py --config offline   # 2-core CPU, minutes
    python experiments/end_biased_mnist/main.py --config full      # full MNIST via tfds

Writes ``results_<config>.json`` and ``results_<config>.md`` (mean ± std over
seeds of the biased-test, unbiased-test and bias-conflicting accuracy) next to
this file, or into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from jaxbias import runs
from jaxbias.report import markdown_table
from jaxbias.runs import RunConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from configs import CONFIGS  # noqa: E402


def run(cfg: dict, *, out_dir: str, name: str, progress: bool, workroot: str | None) -> dict:
    results = []
    t0 = time.perf_counter()
    for rho in cfg["rhos"]:
        for seed in cfg["seeds"]:
            config = RunConfig(dataset="biased_mnist", data={"rho": rho, "source": cfg["source"]}, epochs=cfg["epochs"],
                               batch_size=cfg["batch_size"], lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                               decay_every=cfg["decay_every"], seed=seed,
                               model_settings={"channels": tuple(cfg["channels"]),
                                               "last_activation": cfg["last_activation"]}, eval_every=cfg["epochs"])
            data = config.load_data()  # every method of a seed trains on the same coloured digits
            for method, hp in cfg["methods"].items():
                workdir = None if workroot is None else os.path.join(workroot, f"rho{rho}_{method}_s{seed}")
                run = runs.train(config.replace(method=method, hparams=hp), data=data, progress=progress,
                                 workdir=workdir, resume="auto")
                ev = run.results["eval"]
                row = {
                    "rho": rho, "method": method, "seed": seed, "source": run.record["data"]["source"],
                    "biased": ev["biased"]["accuracy"], "unbiased": ev["unbiased"]["accuracy"],
                    "unbiased_group_mean": ev["unbiased"]["group_mean"],
                    "conflicting": ev["unbiased"]["conflicting"], "seconds": run.seconds,
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    table_rows = []
    for rho in cfg["rhos"]:
        for method in cfg["methods"]:
            rs = [r for r in results if r["rho"] == rho and r["method"] == method]
            cell = {k: np.array([r[k] for r in rs]) for k in ("biased", "unbiased", "conflicting", "seconds")}
            table_rows.append({
                "ρ": rho, "method": {"vanilla": "Vanilla", "end": "EnD"}.get(method, method),
                "biased test": f"{100 * cell['biased'].mean():.1f} ± {100 * cell['biased'].std():.1f}",
                "unbiased test": f"{100 * cell['unbiased'].mean():.1f} ± {100 * cell['unbiased'].std():.1f}",
                "bias-conflicting": f"{100 * cell['conflicting'].mean():.1f} ± {100 * cell['conflicting'].std():.1f}",
                "s / run": f"{cell['seconds'].mean():.0f}",
            })
    md = (
        f"# EnD vs Vanilla on Biased MNIST — config `{name}`\n\n"
        f"Data source: {results[0]['source']}; epochs {cfg['epochs']}, batch {cfg['batch_size']}, "
        f"Adam lr {cfg['lr']}, wd {cfg['weight_decay']}, lr ×0.1 every {cfg['decay_every']} epochs, "
        f"channels {cfg['channels']}, last activation {cfg['last_activation']}, seeds {cfg['seeds']}; EnD {cfg['methods']['end']}. "
        f"Accuracy in %, mean ± std over seeds. Total {time.perf_counter() - t0:.0f} s.\n"
        "\n"
        + markdown_table(table_rows, ["ρ", "method", "biased test", "unbiased test", "bias-conflicting", "s / run"])
    )
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"results_{name}.json"), "w") as f:
        json.dump({"config": cfg, "runs": results}, f, indent=2)
    with open(os.path.join(out_dir, f"results_{name}.md"), "w") as f:
        f.write(md)
    print(md)
    return {"runs": results, "markdown": md}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="offline")
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--workroot", default=None, help="keep checkpoints per run here (resumable)")
    p.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs")
    p.add_argument("--rhos", default=None, help="override ρ values, comma-separated")
    p.add_argument("--alpha", type=float, default=None, help="override EnD's alpha")
    p.add_argument("--beta", type=float, default=None, help="override EnD's beta")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = dict(CONFIGS[a.config])
    if a.seeds is not None:
        cfg["seeds"] = list(range(a.seeds))
    if a.epochs is not None:
        cfg["epochs"] = a.epochs
    if a.rhos is not None:
        cfg["rhos"] = [float(r) for r in a.rhos.split(",")]
    if a.alpha is not None or a.beta is not None:
        end_hp = dict(cfg["methods"]["end"])
        end_hp.update({k: v for k, v in (("alpha", a.alpha), ("beta", a.beta)) if v is not None})
        cfg["methods"] = {**cfg["methods"], "end": end_hp}
    run(cfg, out_dir=a.out, name=a.config, progress=not a.no_progress, workroot=a.workroot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
