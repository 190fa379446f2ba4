"""EnD vs Vanilla on Biased MNIST (Tartaglione et al., CVPR 2021, Table 1 protocol).

    python experiments/end_biased_mnist/main.py --config offline   # 2-core CPU, minutes
    python experiments/end_biased_mnist/main.py --config full      # full MNIST via tfds
    nice -n 19 python experiments/end_biased_mnist/main.py --config fashion --budget-minutes 18 --no-progress
    python experiments/end_biased_mnist/main.py --config fashion_full --no-budget   # an accelerator, one call

Chunked configs (``fashion``, ``fashion_full``): the α/β search runs (seed 0, on the validation set) and then
the (seed, ρ, method) runs are cells; each finished cell is one JSON line of ``results_<config>.jsonl`` and the
``.md`` / ``.json`` (mean ± sample std over the seeds present) are rewritten after every cell. A call skips the
cells already there and starts none once ``--budget-minutes`` have passed (``--no-budget``: none); runs checkpoint every
epoch under ``--workroot`` and resume, so a killed call loses at most part of one run.

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
from jaxbias.runs.chunks import Budget, append_row, by_label, check_fingerprints, mean_std, read_rows, report_left

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


# --------------------------------------------------------------------------- chunked (fashion, fashion_full)

_DATA = ("source", "images", "data_dir", "foreground", "validation")
_SCHEDULE = ("epochs", "batch_size", "lr", "weight_decay", "decay_every", "channels", "last_activation")


def _search_label(rho: float, ab) -> str:
    return f"search rho={rho} alpha={ab[0]} beta={ab[1]}"


def _label(rho: float, method: str) -> str:
    return f"rho={rho} {'EnD' if method == 'end' else 'Vanilla'}"


def _cells(cfg: dict) -> list[tuple[int, str, float, str, dict | None]]:
    """``(seed, label, rho, method, hparams)`` in the order they run: the searches first (EnD's hparams of the
    main cells are ``None`` until the search has chosen them)."""
    search = cfg["search"]
    cells = [(search["seed"], _search_label(rho, ab), rho, "end", {"alpha": ab[0], "beta": ab[1]})
             for rho in search["rhos"] for ab in search["grid"]]
    return cells + [(seed, _label(rho, m), rho, m, {} if m == "vanilla" else None)
                    for seed in cfg["seeds"] for rho in cfg["rhos"] for m in cfg["methods"]]


def _searched_rho(cfg: dict, rho: float) -> float:
    """The ρ whose search chooses α and β for ``rho``: itself when searched, else the nearest searched one."""
    return min(cfg["search"]["rhos"], key=lambda r: (abs(r - rho), r))


def _chosen(cfg: dict, rows: list[dict], rho: float) -> dict | None:
    """EnD's (α, β) for ``rho``: the search row of its searched ρ with the best validation accuracy (``None``
    while that search is incomplete)."""
    r0 = _searched_rho(cfg, rho)
    want = {_search_label(r0, ab) for ab in cfg["search"]["grid"]}
    found = [r for r in rows if r["model"] in want and r["seed"] == cfg["search"]["seed"]]
    if {r["model"] for r in found} != want:
        return None
    best = max(found, key=lambda r: (r["val"], -cfg["search"]["grid"].index([r["hparams"]["alpha"],
                                                                             r["hparams"]["beta"]])))
    return dict(best["hparams"])


def _fingerprint(cfg: dict, label: str, hparams: dict | None) -> str:
    part = {k: cfg.get(k) for k in (*_DATA, *_SCHEDULE) if k != "data_dir"}
    part["cell"] = [label, hparams]
    return json.dumps(part, sort_keys=True, default=list)


def summarize_chunked(cfg: dict, rows: list[dict], *, out_dir: str, name: str, seconds: float | None = None) -> str:
    main_rows = [r for r in rows if not r["model"].startswith("search")]
    table = []
    for label, rs in by_label(main_rows, [_label(rho, m) for rho in cfg["rhos"] for m in cfg["methods"]]):
        row = {"ρ": str(rs[0]["rho"]), "method": label.split(" ", 1)[1], "n": str(len(rs)),
               "α, β": "–" if rs[0]["method"] == "vanilla" else f"{rs[0]['hparams']['alpha']}, "
                                                                f"{rs[0]['hparams']['beta']}"}
        for k, col in (("val", "validation (ρ 0.1)"), ("biased", "biased test"), ("unbiased", "unbiased test"),
                       ("conflicting", "bias-conflicting")):
            row[col] = mean_std(np.array([r[k] for r in rs]), 100.0, ".1f")
        row["s / run"] = f"{np.mean([r['seconds'] for r in rs]):.0f}"
        table.append(row)
    paired = _paired(cfg, main_rows)
    search = [{"ρ": str(r["rho"]), "α": str(r["hparams"]["alpha"]), "β": str(r["hparams"]["beta"]),
               "validation (ρ 0.1)": f"{100 * r['val']:.1f}", "s / run": f"{r['seconds']:.0f}"}
              for r in rows if r["model"].startswith("search")]
    chosen = {rho: _chosen(cfg, rows, rho) for rho in cfg["rhos"]}
    total = sum(r.get("seconds") or 0.0 for r in rows)
    cols = ["ρ", "method", "n", "α, β", "validation (ρ 0.1)", "biased test", "unbiased test", "bias-conflicting",
            "s / run"]
    md = (
        f"# EnD vs Vanilla on Biased Fashion-MNIST — config `{name}`\n\n"
        f"Data: {cfg['source']} {cfg['images']}, the ReBias colouring with foreground `{cfg['foreground']}` (every "
        "pixel of value 0 takes the class-correlated colour; every other pixel keeps its grey level in the three "
        f"channels); validation = the first {cfg['validation']} training images recoloured at ρ = 0.1; biased test "
        "= the 10,000 test images at ρ = 1, unbiased test at ρ = 0.1; *bias-conflicting* = unbiased-test images "
        f"whose colour is not their class's. Schedule: {cfg['epochs']} epochs, batch {cfg['batch_size']}, Adam lr "
        f"{cfg['lr']}, weight decay {cfg['weight_decay']}, "
        + (f"lr × 0.1 every {cfg['decay_every']} epochs" if cfg["decay_every"] else "constant lr") + ", channels "
        f"{cfg['channels']}, last activation {cfg['last_activation']}. EnD's α, β: chosen by validation accuracy "
        f"at seed {cfg['search']['seed']} among {cfg['search']['grid']} at ρ {cfg['search']['rhos']} (each ρ uses "
        f"the nearest searched ρ's choice): {chosen}. Accuracy in %, mean ± sample std over the seeds present "
        f"(*n*); {len(rows)} cells, {total:.0f} s of run time"
        + (f" ({seconds:.0f} s in the last call)" if seconds is not None else "") + ".\n\n"
        + markdown_table(table, cols)
        + ("\n\n## EnD − Vanilla, seed by seed\n\nPoints of accuracy EnD gains over the Vanilla run of the same ρ "
           "and seed (mean ± sample std of the per-seed differences), against the seed spread (the larger sample std "
           "of the two methods' own accuracies): *beyond the spread* when the mean gain exceeds it.\n\n"
           + markdown_table(paired, ["ρ", "seeds", "test", "EnD − Vanilla", "per seed", "seed spread",
                                     "beyond the spread"]) if paired else "")
        + "\n\n## α, β search (validation set only)\n\n"
        + markdown_table(search, ["ρ", "α", "β", "validation (ρ 0.1)", "s / run"])
        + f"\n\nRegenerate / continue: `python experiments/end_biased_mnist/main.py --config {name} "
        f"--budget-minutes 18 --no-progress` (repeat until no cell is left)\n"
    )
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"results_{name}.json"), "w") as f:
        json.dump({"config": cfg, "chosen": {str(k): v for k, v in chosen.items()}, "runs": rows}, f, indent=2,
                  default=list)
    with open(os.path.join(out_dir, f"results_{name}.md"), "w") as f:
        f.write(md)
    return md


def _paired(cfg: dict, rows: list[dict]) -> list[dict[str, str]]:
    """Per ρ and test set: EnD's accuracy minus Vanilla's over the seeds that have both, against the seed spread."""
    out = []
    for rho in cfg["rhos"]:
        by_method = {m: {r["seed"]: r for r in rows if r["rho"] == rho and r["method"] == m} for m in ("vanilla", "end")}
        seeds = sorted(set(by_method["vanilla"]) & set(by_method["end"]))
        if not seeds:
            continue
        for key, name in (("unbiased", "unbiased"), ("conflicting", "bias-conflicting")):
            van = np.array([by_method["vanilla"][s][key] for s in seeds]) * 100.0
            end = np.array([by_method["end"][s][key] for s in seeds]) * 100.0
            diff = end - van
            spread = max(float(np.std(van, ddof=1)), float(np.std(end, ddof=1))) if len(seeds) > 1 else float("nan")
            out.append({"ρ": str(rho), "seeds": str(len(seeds)), "test": name,
                        "EnD − Vanilla": mean_std(diff, 1.0, "+.1f"), "per seed": " / ".join(f"{d:+.1f}" for d in diff),
                        "seed spread": "–" if len(seeds) < 2 else f"{spread:.1f}",
                        "beyond the spread": "–" if len(seeds) < 2 else ("yes" if diff.mean() > spread else "no")})
    return out


def run_chunked(cfg: dict, *, out_dir: str, name: str, workroot: str, progress: bool,
                budget_minutes: float | None) -> dict:
    budget = Budget(budget_minutes)
    path = os.path.join(out_dir, f"results_{name}.jsonl")
    rows = read_rows(path)
    known = {label: hp for _, label, _, _, hp in _cells(cfg)}
    check_fingerprints(rows, lambda m: _fingerprint(cfg, m, _chosen(cfg, rows, float(m.split()[0][4:]))
                                                    if m.endswith("EnD") else known[m]) if m in known else None, path)
    done = {(r["seed"], r["model"]) for r in rows}
    md = summarize_chunked(cfg, rows, out_dir=out_dir, name=name) if rows else ""
    os.makedirs(out_dir, exist_ok=True)
    data_cache: dict = {}
    stopped = False
    for seed, label, rho, method, hp in _cells(cfg):
        if (seed, label) in done:
            continue
        if budget.over():
            stopped = True
            break
        if hp is None:
            hp = _chosen(cfg, rows, rho)
            if hp is None:
                raise SystemExit(f"{label} (seed {seed}) needs the search at rho {_searched_rho(cfg, rho)} first")
        config = RunConfig(dataset="biased_mnist", data={"rho": rho, **{k: cfg[k] for k in _DATA}},
                           epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                           weight_decay=cfg["weight_decay"], decay_every=cfg["decay_every"], seed=seed,
                           model_settings={"channels": tuple(cfg["channels"]),
                                           "last_activation": cfg["last_activation"]}, eval_every=cfg["epochs"])
        if (rho, seed) not in data_cache:
            data_cache.clear()  # one coloured set in memory at a time
            data_cache[(rho, seed)] = config.load_data()  # both methods of a (ρ, seed) see the same images
        tag = label.replace(" ", "_").replace("=", "")
        run = runs.train(config.replace(method=method, hparams=hp), data=data_cache[(rho, seed)], progress=progress,
                         workdir=os.path.join(workroot, f"{tag}_s{seed}"), resume="auto")
        ev = run.results["eval"]
        row = {"seed": seed, "model": label, "rho": rho, "method": method, "hparams": hp,
               "val": ev["val"]["accuracy"], "biased": ev["biased"]["accuracy"],
               "unbiased": ev["unbiased"]["accuracy"], "conflicting": ev["unbiased"]["conflicting"],
               "seconds": run.seconds, "fingerprint": _fingerprint(cfg, label, hp)}
        append_row(path, row)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "fingerprint"}), flush=True)
        md = summarize_chunked(cfg, rows, out_dir=out_dir, name=name, seconds=budget.elapsed())
    left = report_left(rows, [(s, label) for s, label, *_ in _cells(cfg)], path=path, markdown=md, stopped=stopped,
                       budget_minutes=budget_minutes)
    return {"runs": rows, "markdown": md, "left": left}


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
    p.add_argument("--budget-minutes", type=float, default=18.0,
                   help="chunked configs: start no new cell after this many minutes (default 18)")
    p.add_argument("--no-budget", action="store_true", help="chunked configs: run every cell left in this call")
    p.add_argument("--data-dir", default=None, help="the IDX folder of a source 'dir' config (default: the config's)")
    a = p.parse_args(argv)
    cfg = dict(CONFIGS[a.config])
    if a.seeds is not None:
        cfg["seeds"] = list(range(a.seeds))
    if a.epochs is not None:
        cfg["epochs"] = a.epochs
    if a.rhos is not None:
        cfg["rhos"] = [float(r) for r in a.rhos.split(",")]
    if cfg.get("chunked") and (a.alpha is not None or a.beta is not None):
        p.error(f"--alpha/--beta: config {a.config} chooses them by its search on the validation set")
    if a.alpha is not None or a.beta is not None:
        end_hp = dict(cfg["methods"]["end"])
        end_hp.update({k: v for k, v in (("alpha", a.alpha), ("beta", a.beta)) if v is not None})
        cfg["methods"] = {**cfg["methods"], "end": end_hp}
    if a.data_dir is not None:
        cfg["data_dir"] = os.path.abspath(a.data_dir)
    if cfg.get("chunked"):
        run_chunked(cfg, out_dir=a.out, name=a.config, progress=not a.no_progress,
                    workroot=a.workroot or os.path.join("runs", "end_biased_mnist", a.config),
                    budget_minutes=None if a.no_budget else a.budget_minutes)
        return 0
    run(cfg, out_dir=a.out, name=a.config, progress=not a.no_progress, workroot=a.workroot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
