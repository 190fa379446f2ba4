"""Region attribution and targeted noise: baseline vs general/specific × noise/mask (De Coninck et al., CVPRW 2024).

    python experiments/region_attribution/main.py --config offline   # 2-core CPU, ~10 minutes
    python experiments/region_attribution/main.py --config full      # CelebA (tfds), accelerator

For every seed: build the confounded training set and the balanced test set,
train the region classifier for the confounder, compute the specific maps of
all training images and the general map (its top-30 % region is compared with
the true confounder region when known: IoU), then train the target classifier
unmodified (baseline) and with targeted noise or masking from the general or
the specific maps, applied on the fly in every training batch. Writes
``results_<config>.json`` and ``results_<config>.md`` (accuracy overall, per
target class, per (target, confounder) group, the gap; mean ± std over
seeds), plus ``maps_<config>.png`` and ``reliability_<config>.png`` of the
first seed, next to this file or into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from jaxbias import metrics
from jaxbias.attribution import init_variables
from jaxbias.attribution.pipeline import AttributionData, attribute, build_module
from jaxbias.methods import targeted_noise, vanilla
from jaxbias.report import markdown_table, mean_std_rows
from jaxbias.train import fit, make_optimizer, make_predict, predict_in_batches
from jaxbias.types import Batch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from configs import CONFIGS, NOTES  # noqa: E402

GROUPS = ["t1_c0", "t1_c1", "t0_c0", "t0_c1"]


def load(cfg: dict, seed: int, limit: int | None):
    d = cfg["data"]
    if d["dataset"] == "controlled":
        from jaxbias.data.region_mnist import region_mnist

        data = region_mnist(image_size=d["image_size"], style=d["style"], seed=seed, source=d["source"])
        sets = dict(train_x=data.train_x, train_y=data.train_y, train_c=data.train_c, test_x=data.test_x,
                    test_y=data.test_y, test_c=data.test_c, attr_x=data.attr_x, attr_c=data.attr_c,
                    val_x=data.test_x, val_c=data.test_c, region=data.region, counts=data.counts)
    else:
        from jaxbias.data.celeba import load_celeba

        data = load_celeba(d["confounder"], image_size=d["image_size"], seed=seed, data_dir=d.get("data_dir"))
        sets = dict(train_x=data.train_x, train_y=data.train_y, train_c=data.train_c, test_x=data.test_x,
                    test_y=data.test_y, test_c=data.test_c, attr_x=data.attr_x, attr_c=data.attr_c,
                    val_x=data.val_x, val_c=data.val_c, region=None, counts=data.counts)
    if limit is not None:  # smoke runs: a strided subset keeps every group
        for k in ("train", "test", "attr", "val"):
            n = sets[f"{k}_x"].shape[0]
            idx = np.linspace(0, n - 1, min(limit, n)).astype(int)
            for s in ("x", "y", "c"):
                if f"{k}_{s}" in sets:
                    sets[f"{k}_{s}"] = sets[f"{k}_{s}"][idx]
    return sets


def treated(x: np.ndarray, maps: np.ndarray, hp, seed: int, batch: int = 250) -> np.ndarray:
    """``x`` with the variant's noise/mask applied (a fixed key): the test set as the model saw its training set."""
    out = []
    for i in range(0, x.shape[0], batch):
        m = maps if maps.ndim == 2 else maps[i : i + batch]
        key = jax.random.fold_in(jax.random.key(seed), i)
        out.append(np.asarray(targeted_noise.apply(jax.numpy.asarray(x[i : i + batch]), jax.numpy.asarray(m), key,
                                                   q=hp.q, sigma=hp.sigma, mode=hp.mode, fill=hp.fill)))
    return np.concatenate(out)


def target_module(cfg: dict):
    t = cfg["target"]
    return build_module(t["arch"], num_positions=0, widths=t["widths"], blocks=t["blocks"], stem=t["stem"])


def train_target(cfg: dict, sets: dict, variant: dict | None, *, specific: np.ndarray, general: np.ndarray,
                 seed: int, progress: bool, init: tuple, test_specific: np.ndarray | None = None) -> dict:
    t = cfg["target"]
    module = target_module(cfg)
    n = sets["train_x"].shape[0]
    bs = min(t["batch_size"], n)
    tx = make_optimizer(lr=t["lr"], weight_decay=t["weight_decay"], steps_per_epoch=max(n // bs, 1),
                        decay_every=None)
    if variant is None:
        method, hp, state, mask = vanilla, vanilla.Hparams(), None, None
    else:
        # a variant may override the config's q / sigma / fill (the sigma sweep does)
        hp = targeted_noise.Hparams(**{"q": cfg["q"], "sigma": cfg["sigma"], "fill": cfg["fill"], **variant})
        method = targeted_noise
        state = targeted_noise.init(hp=hp, general_map=general)
        mask = specific if hp.map == "specific" else None
    train = Batch(sets["train_x"], sets["train_y"], sets["train_c"], mask)
    t0 = time.perf_counter()
    res = fit(module=module, method=method, hp=hp, train=train, epochs=t["epochs"], batch_size=bs, tx=tx,
              seed=seed, method_state=state, progress=progress, init_params=init)
    seconds = time.perf_counter() - t0
    predict = make_predict(module)
    pred = predict_in_batches(predict, res.state.params, res.state.model_state, sets["test_x"],
                              batch_size=250).argmax(-1)
    rep = metrics.subgroup_report(pred, sets["test_y"], sets["test_c"])
    out = {"report": rep, "seconds": seconds, "final_loss": res.history[-1]["loss"] if res.history else None}
    if variant is not None:  # diagnostic: the test images treated like the training images
        maps = general if hp.map == "general" else test_specific
        xt = treated(sets["test_x"], maps, hp, seed)
        pred_t = predict_in_batches(predict, res.state.params, res.state.model_state, xt, batch_size=250).argmax(-1)
        out["treated_report"] = metrics.subgroup_report(pred_t, sets["test_y"], sets["test_c"])
    return out


def run(cfg: dict, *, out_dir: str, name: str, progress: bool, limit: int | None = None) -> dict:
    t0 = time.perf_counter()
    runs, attributions = [], []
    os.makedirs(out_dir, exist_ok=True)
    for i, seed in enumerate(cfg["seeds"]):
        sets = load(cfg, seed, limit)
        r = cfg["region"]
        data = AttributionData(sets["attr_x"], sets["attr_c"], sets["val_x"], sets["val_c"], sets["train_x"],
                               sets["region"], cfg["data"]["dataset"])
        res = attribute(data, patch=r["patch"], stride=r["stride"], arch=r["arch"], widths=r["widths"],
                        blocks=r["blocks"], stem=r["stem"], epochs=r["epochs"], batch_size=r["batch_size"],
                        lr=r["lr"], label_smoothing=r["label_smoothing"], seed=seed, measure=r["measure"],
                        q=cfg["q"], progress=progress)
        if i == 0:
            from jaxbias import report

            k = 6
            report.attribution_maps(os.path.join(out_dir, f"maps_{name}.png"), np.clip(sets["train_x"][:k], 0, 1),
                                    res["specific"][:k], general=res["general"], region=sets["region"],
                                    titles=[f"y={sets['train_y'][j]} c={sets['train_c'][j]}" for j in range(k)])
            report.reliability_diagram(os.path.join(out_dir, f"reliability_{name}.png"), res["reliability"],
                                       ece=res["ece"],
                                       title=f"region classifier, seed {seed}, {res['val_patches']} patches")
        test_specific = None
        if any(v is not None and v.get("map") == "specific" for v in cfg["variants"].values()):
            from jaxbias.attribution import specific_maps

            test_specific = specific_maps(res["classifier"], sets["test_x"], measure=r["measure"], batch_size=32)
        att = {"seed": seed, "iou": res.get("iou"), "region_coverage": res.get("region_coverage"),
               "ece": res["ece"], "patch_accuracy": res["patch_accuracy"],
               "mean_confidence": res["mean_confidence"], "top_region_fraction": res["top_region_fraction"],
               "true_region_fraction": res.get("true_region_fraction"), "seconds": res["seconds"],
               "patches_per_second": res["patches_per_second"], "counts": sets["counts"]}
        attributions.append(att)
        print(json.dumps(att), flush=True)
        # every variant of a seed starts from the same weights (initialised in one compiled call)
        v = init_variables(target_module(cfg), jax.random.fold_in(jax.random.key(seed), 1),
                           patch=sets["train_x"].shape[1], channels=sets["train_x"].shape[-1])
        init = (v.pop("params"), v)
        for label, variant in cfg["variants"].items():
            out = train_target(cfg, sets, variant, specific=res["specific"], general=res["general"], seed=seed,
                               progress=progress, init=init, test_specific=test_specific)
            rep = out["report"]
            row = {"seed": seed, "model": label, "variant": variant, "accuracy": rep["accuracy"],
                   "acc_t1": rep["by_target"]["t1"]["accuracy"], "acc_t0": rep["by_target"]["t0"]["accuracy"],
                   "gap": rep["gap"], "worst_group": rep["worst_group"], "group_gap": rep["group_gap"],
                   **{g: rep["groups"][g]["accuracy"] for g in GROUPS if g in rep["groups"]},
                   "seconds": out["seconds"], "report": rep}
            if "treated_report" in out:
                tr = out["treated_report"]
                row.update({"treated_accuracy": tr["accuracy"], "treated_gap": tr["gap"],
                            "treated_t1_c1": tr["groups"].get("t1_c1", {}).get("accuracy"),
                            "treated_worst_group": tr["worst_group"], "treated_report": tr})
            runs.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("report")}), flush=True)
    base = {r["seed"]: r["gap"] for r in runs if r["model"] == "baseline"}
    for r in runs:
        if r["seed"] in base:
            r["gap_change"] = r["gap"] - base[r["seed"]]
    cols = ["accuracy", "acc_t1", "acc_t0", "gap", "gap_change", *GROUPS, "worst_group", "seconds"]
    scale = {c: 100.0 for c in cols if c != "seconds"}
    digits = {**{c: 1 for c in cols}, "seconds": 0}
    rows = mean_std_rows(runs, by="model", columns=cols, scale=scale, digits=digits)
    t_cols = ["treated_accuracy", "treated_gap", "treated_t1_c1", "treated_worst_group"]
    t_rows = mean_std_rows([r for r in runs if r["model"] != "baseline"], by="model", columns=t_cols,
                           scale={c: 100.0 for c in t_cols}, digits=1)
    att_cols = ["iou", "region_coverage", "ece", "patch_accuracy", "mean_confidence", "top_region_fraction",
                "true_region_fraction"]
    att_rows = mean_std_rows([{**a, "what": "region classifier"} for a in attributions], by="what",
                             columns=att_cols, digits=3)
    md = (
        f"# Region attribution and targeted noise — config `{name}`\n\n"
        f"Mean ± std over seeds {cfg['seeds']}. Dataset: {json.dumps(cfg['data'])}; training groups "
        f"{attributions[0]['counts']} (t = target, c = confounder). Accuracies in % on the test set balanced for "
        "target and confounder; `acc_t1`/`acc_t0`: per target class (the protocol's men/women); "
        "`gap` = |acc_t1 − acc_t0|; `gap_change`: points against the baseline of the same seed; "
        "`t1_c1` is the group absent from training. Targeted noise: the pixels above the "
        f"q = {cfg['q']} quantile of the map get N(0, {cfg['sigma']}²) noise (σ as named where a variant sets its "
        f"own) or the value {cfg['fill']} (mask), "
        f"in every training batch; test images are unmodified. Total {time.perf_counter() - t0:.0f} s.\n\n"
        "## Target classifier\n\n" + markdown_table(rows, ["model", *cols]) +
        "\nDiagnostic: the same models on the test images treated like their training images (the general map's "
        "region, or each test image's own specific map; noise with a fixed key), i.e. with the confounder's region "
        "hidden at test time too.\n\n" + markdown_table(t_rows, ["model", *t_cols]) +
        "\n## Region classifier and maps\n\n"
        f"Region classifier: {json.dumps(cfg['region'])}. `iou`: the general map's top-{100 * (1 - cfg['q']):.0f} % "
        "region against the true confounder region (at most |true| / |top| when the true region is smaller); "
        "`region_coverage`: the share of the true region inside the top region; "
        "`ece`/`patch_accuracy`/`mean_confidence`: over all patches of the calibration set (15 bins, top "
        "softmax).\n\n" + markdown_table(att_rows, ["what", *att_cols]) + "\n" + NOTES
    )
    with open(os.path.join(out_dir, f"results_{name}.json"), "w") as f:
        json.dump({"config": cfg, "attribution": attributions, "runs": runs}, f, indent=2, default=float)
    with open(os.path.join(out_dir, f"results_{name}.md"), "w") as f:
        f.write(md)
    print(md)
    return {"runs": runs, "attribution": attributions, "markdown": md}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="offline")
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    p.add_argument("--epochs", type=int, default=None, help="override the target classifier's epochs")
    p.add_argument("--region-epochs", type=int, default=None, help="override the region classifier's epochs")
    p.add_argument("--variants", default=None, help="comma-separated subset of the variants (baseline always runs)")
    p.add_argument("--limit", type=int, default=None, help="use at most N images per set (smoke runs)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = json.loads(json.dumps(CONFIGS[a.config]))
    if a.seeds is not None:
        cfg["seeds"] = list(range(a.seeds))
    if a.epochs is not None:
        cfg["target"]["epochs"] = a.epochs
    if a.region_epochs is not None:
        cfg["region"]["epochs"] = a.region_epochs
    if a.variants:
        keep = {"baseline", *(s.strip() for s in a.variants.split(","))}
        unknown = sorted(keep - set(cfg["variants"]))
        if unknown:
            p.error(f"--variants: unknown {unknown}; expected some of {sorted(cfg['variants'])}")
        cfg["variants"] = {k: v for k, v in cfg["variants"].items() if k in keep}
    run(cfg, out_dir=a.out, name=a.config, progress=not a.no_progress, limit=a.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
