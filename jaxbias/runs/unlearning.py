"""FMD end to end on a trained run: external counterfactual pairs, the edit, a fine-tuning baseline, reports.

``jaxbias unlearn`` and ``experiments/fmd`` call :func:`unlearn_workdir`. The
data side knows two datasets:

- Biased (Colored) MNIST: ``external`` test digits (drawn with ``seed``) each
  on its class colour and on one other colour are the pairs the edit may use;
  the other test digits measure the result: ``B`` over every other colour
  (9 pairs per digit), accuracy on the biased (ρ = 1) and unbiased (ρ = 0.1)
  colourings.
- Adult: ``external`` test records with the protected field flipped (every
  other value for race); the rest of the test split measures ``B``,
  accuracy, accuracy per group and the demographic-parity gap.
- A controlled artifact dataset (``artifact_mnist``, a ``folder`` with ``artifact``: clean and
  artifact test sets of the same images): ``external`` test images with the artifact drawn in
  and without it are the pairs; the other test images measure ``B`` (the same pairs) and the
  clean and artifact-test accuracy. Streamed sets stay on disk: only the pairs are read into
  memory, and the training set (``"training"`` mode) is read a batch at a time.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbias.batching import map_batches
from jaxbias import models as models_lib
from jaxbias.runs.run import Run, restore
from jaxbias.data import colourise, to_float
from jaxbias.data.sources import load_images
from jaxbias.data.adult import counterfactual_pairs
from jaxbias.data.biased_mnist import colour_pairs
from jaxbias.data.lazy import take
from jaxbias.influence import merge, select
from jaxbias.methods import fmd
from jaxbias.workdir import run_path, write_json

#: Full-batch Adam steps tried by the fine-tuning baseline (chosen by FMD's rule).
FINETUNE_STEPS = (1, 2, 5, 10, 20, 50, 100, 200)


class Split(NamedTuple):
    """The external pairs and the held-out evaluation data of one run."""

    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]
    eval_pairs: tuple[np.ndarray, np.ndarray, np.ndarray]
    eval_sets: dict[str, tuple[np.ndarray, np.ndarray]]
    groups: np.ndarray | None
    train_cf: np.ndarray | None


def _check_external(external: Any, n: int) -> int:
    if isinstance(external, bool) or not isinstance(external, (int, np.integer)) or not 1 <= external < n:
        raise ValueError(f"external must be an int in [1, {n - 1}] (test samples for the pairs); got {external!r}")
    return int(external)


def split_biased_mnist(data, *, external: int, seed: int = 0) -> Split:
    """External pairs and evaluation data from a :class:`jaxbias.data.BiasedMNIST`.

    The pairs are built from the grey images the run was trained on: ``data.images`` (MNIST or
    Fashion-MNIST) from ``data.source`` / ``data.data_dir``; their test labels must be the
    data's own (else a ``ValueError``: the images were not the run's).
    """
    digits = load_images(getattr(data, "images", "mnist"), data.source, data_dir=getattr(data, "data_dir", None))
    if digits.test_x.shape[0] != data.biased_y.shape[0] or not np.array_equal(digits.test_y, data.biased_y) \
            or digits.train_x.shape[0] != data.train_y.shape[0]:
        raise ValueError(f"the reloaded {getattr(data, 'images', 'mnist')!r} images ({data.source}) are not the "
                         "ones this Biased MNIST data was built from (test labels differ)")
    n = digits.test_x.shape[0]
    external = _check_external(external, n)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    ext, rest = np.sort(perm[:external]), np.sort(perm[external:])
    p = colour_pairs(digits.test_x[ext], digits.test_y[ext], others="random", seed=seed)
    e = colour_pairs(digits.test_x[rest], digits.test_y[rest], others="all")
    offset = rng.integers(1, 10, size=data.train_bias.shape[0])
    train_cf = to_float(colourise(digits.train_x, (data.train_bias + offset) % 10))
    return Split(
        pairs=(p.x, p.x_cf, p.y),
        eval_pairs=(e.x, e.x_cf, e.y),
        eval_sets={"biased": (data.biased_x[rest], data.biased_y[rest]),
                   "unbiased": (data.unbiased_x[rest], data.unbiased_y[rest])},
        groups=None,
        train_cf=train_cf,
    )


def split_adult(data, *, external: int, seed: int = 0) -> Split:
    """External pairs and evaluation data from a :class:`jaxbias.data.Adult` (its test split)."""
    n = data.test_x.shape[0]
    external = _check_external(external, n)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    ext, rest = np.sort(perm[:external]), np.sort(perm[external:])
    cols = data.protected_columns

    def pairs(idx):
        x_rep, x_cf, y_rep, _, _ = counterfactual_pairs(data.test_x[idx], data.test_y[idx], data.test_a[idx],
                                                        protected_columns=cols)
        return x_rep, x_cf, y_rep

    k = len(data.protected_values)
    _, all_cf, _, _, _ = counterfactual_pairs(data.train_x, data.train_y, data.train_a, protected_columns=cols)
    pick = rng.integers(0, k - 1, size=data.train_x.shape[0])  # one other value per record
    train_cf = all_cf.reshape(data.train_x.shape[0], k - 1, -1)[np.arange(data.train_x.shape[0]), pick]
    return Split(
        pairs=pairs(ext),
        eval_pairs=pairs(rest),
        eval_sets={"test": (data.test_x[rest], data.test_y[rest])},
        groups=data.test_a[rest],
        train_cf=train_cf,
    )


def split_artifact(dataset, *, external: int, seed: int = 0) -> Split:
    """External pairs and evaluation data of a controlled artifact dataset (a
    :class:`~jaxbias.datasets.Dataset` whose ``clean`` and ``artifact`` evaluation sets hold the same images,
    without and with the artifact, and whose ``target_class`` carried it in training).

    Each pair puts the bias-aligned version of an image first, as FMD's pairs do (Colored MNIST: the digit on
    its class's colour): the image with the artifact for the target class, the clean image for every other
    class; the counterfactual is the other version. ``B`` does not depend on the order; the edit replaces the
    aligned sample by the conflicting one, and the pairs' accuracy (``accuracy_on="factual"``) is that of the
    aligned images, the in-distribution view.
    """
    clean, marked = dataset.evals.get("clean"), dataset.evals.get("artifact")
    if clean is None or marked is None or dataset.target_class is None:
        raise ValueError(f"dataset {dataset.name!r} has no clean and artifact test sets to pair (evaluation sets: "
                         f"{sorted(dataset.evals)}, target class {dataset.target_class}); unlearn needs "
                         "biased_mnist, adult or a dataset with an inserted artifact")
    y = np.asarray(clean.y)
    if np.shape(clean.x) != np.shape(marked.x) or not np.array_equal(y, np.asarray(marked.y)):
        raise ValueError(f"dataset {dataset.name!r}: its clean and artifact test sets are not the same images "
                         f"(shapes {np.shape(clean.x)} and {np.shape(marked.x)})")
    n = y.shape[0]
    external = _check_external(external, n)
    perm = np.random.default_rng(seed).permutation(n)
    ext, rest = np.sort(perm[:external]), np.sort(perm[external:])
    own = (y[ext] == dataset.target_class)[:, None, None, None]
    with_it, without = np.asarray(marked.x[ext]), np.asarray(clean.x[ext])
    rest_marked, rest_clean = take(marked.x, rest), take(clean.x, rest)  # streamed: still on disk
    return Split(
        pairs=(np.where(own, with_it, without), np.where(own, without, with_it), y[ext]),
        eval_pairs=(rest_marked, rest_clean, y[rest]),  # B is symmetric in the two halves
        eval_sets={"clean": (rest_clean, y[rest]), "artifact": (rest_marked, y[rest])},
        groups=None,
        train_cf=None,
    )


def _logits_fn(module, model_state):
    bound = models_lib.bind(module, model_state, train=False)
    return jax.jit(lambda p, x: bound(p, x).logits)


def _predict(logits_fn, params, x, batch_size=1024):
    return map_batches(logits_fn, x, args=(params,), batch_size=batch_size)


def report(logits_fn, params, split: Split) -> dict[str, Any]:
    """``B`` on the evaluation pairs, accuracy per evaluation set and, with groups, fairness views."""
    x, x_cf, y = split.eval_pairs
    z, z_cf = _predict(logits_fn, params, x), _predict(logits_fn, params, x_cf)
    p = np.take_along_axis(jax.nn.softmax(z), y[:, None], 1)[:, 0]
    p_cf = np.take_along_axis(jax.nn.softmax(z_cf), y[:, None], 1)[:, 0]
    out: dict[str, Any] = {"bias": float(np.mean(np.abs(p - p_cf))), "accuracy": {}}
    for name, (ex, ey) in split.eval_sets.items():
        pred = _predict(logits_fn, params, ex).argmax(-1)
        out["accuracy"][name] = float(np.mean(pred == ey))
        if split.groups is not None:
            g = split.groups
            rates = [float(np.mean(pred[g == v] == 1)) for v in np.unique(g)]
            out["group_accuracy"] = [float(np.mean(pred[g == v] == ey[g == v])) for v in np.unique(g)]
            out["positive_rate"] = rates
            out["dp_gap"] = float(max(rates) - min(rates))
    return out


def finetune_on_pairs(logits_fn, params, pairs, *, subset, lr: float = 1e-3, steps=FINETUNE_STEPS,
                      max_acc_drop: float = 0.03, accuracy_on: str = "factual") -> dict[str, Any]:
    """Baseline: full-batch Adam on the cross-entropy of both halves of the pairs, the same block as FMD.

    The number of steps is chosen from ``steps`` by FMD's scale rule: the
    smallest ``B`` on the pairs whose accuracy falls by at most
    ``max_acc_drop``. ``seconds`` covers the whole search (all steps run). The
    step and the scores are compiled once per ``(logits_fn, lr, accuracy_on)``
    and data shapes, with the data and parameters as arguments (not constants
    folded into the program): a second call with the same ``logits_fn`` times
    the steps alone.
    """
    x, x_cf, y = (jnp.asarray(a) for a in pairs)
    xs, ys = jnp.concatenate([x, x_cf]), jnp.concatenate([y, y])

    def scores(block):
        return _finetune_scores(logits_fn, accuracy_on, params, block, (x, x_cf, y))

    t0 = time.perf_counter()
    block = select(params, subset)
    opt = optax.adam(lr).init(block)
    b0, a0 = (float(v) for v in scores(block))
    best = (np.inf, 0, block)
    done = 0
    for target in steps:
        while done < target:
            block, opt = _finetune_step(logits_fn, float(lr), params, block, opt, xs, ys)
            done += 1
        b, a = (float(v) for v in scores(block))
        if a >= a0 - max_acc_drop - 1e-6 and b < best[0]:
            best = (b, target, block)
    jax.block_until_ready(best[2])
    seconds = time.perf_counter() - t0
    return {"params": merge(params, best[2]), "steps": best[1], "seconds": seconds, "bias_pairs_before": b0}


@functools.partial(jax.jit, static_argnames=("logits_fn", "lr"))
def _finetune_step(logits_fn, lr, params, block, opt, xs, ys):
    """One full-batch Adam step of :func:`finetune_on_pairs` on ``block``."""
    def loss(b):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits_fn(merge(params, b), xs), ys))

    upd, opt = optax.adam(lr).update(jax.grad(loss)(block), opt, block)
    return optax.apply_updates(block, upd), opt


@functools.partial(jax.jit, static_argnames=("logits_fn", "accuracy_on"))
def _finetune_scores(logits_fn, accuracy_on, params, block, pairs):
    return fmd.pair_scores(logits_fn, merge(params, block), pairs, accuracy_on)


def unlearn_workdir(
    workdir: Any,
    *,
    external: int = 100,
    hp: fmd.Hparams | None = None,
    seed: int = 0,
    baseline: bool = True,
    data=None,
) -> dict[str, Any]:
    """Restore a ``jaxbias train`` run, debias it with FMD, and report before/after (and the baseline).

    Args:
      workdir: a Biased-MNIST, Adult or controlled-artifact training run (its workdir, or the
        :class:`jaxbias.runs.Run`).
      external: how many test samples give the external counterfactual pairs.
      hp: :class:`jaxbias.methods.fmd.Hparams` (default: the last layer,
        counterfactual mode).
      seed: which test samples are external.
      baseline: also fine-tune the same block on the same pairs.
      data: the loaded dataset (else loaded from the run's config).

    Returns:
      JSON-able dict: ``before``, ``fmd`` (report + seconds, scale, block),
      ``finetune`` (report + seconds, steps), and the edited ``params`` under
      ``"_params"`` (not JSON).
    """
    hp = hp or fmd.Hparams()
    run = workdir if isinstance(workdir, Run) else restore(workdir)
    workdir = run.workdir
    dataset = run.config.dataset
    loaded = run.config.load_data(data)
    if dataset in ("biased_mnist", "adult"):
        raw = loaded.raw
        split = (split_adult if dataset == "adult" else split_biased_mnist)(raw, external=external, seed=seed)
        train = (raw.train_x, raw.train_y)
    else:
        split = split_artifact(loaded, external=external, seed=seed)
        train = (loaded.train.x, loaded.train.y)
    state = run.state
    logits_fn = _logits_fn(run.module, state.model_state)
    params = state.params
    order = list(models_lib.init(run.module, jax.random.key(0),
                                 np.zeros((1, *np.shape(split.pairs[0])[1:]), np.float32))[0])
    before = report(logits_fn, params, split)
    train = train if hp.mode == "training" else None
    train_cf = split.train_cf if hp.mode == "training" else None
    # a streamed training set's influences are computed the run's batch size at a time
    kw = {"hp": hp, "train": train, "train_cf": train_cf, "order": order, "batch_size": run.config.batch_size}
    fmd.debias(logits_fn, params, split.pairs, **kw)  # compile
    res = fmd.debias(logits_fn, params, split.pairs, **kw)
    out: dict[str, Any] = {
        "workdir": workdir,
        "dataset": dataset,
        "external": external,
        "pairs": int(np.shape(split.pairs[0])[0]),
        "seed": seed,
        "hparams": dataclasses.asdict(hp),
        "before": before,
        "fmd": {**report(logits_fn, res.params, split), "seconds": res.seconds, "scale": res.scale,
                "step_scales": [float(v) for v in res.step_scales],
                "block": None if res.subset is None else list(res.subset),
                "bias_pairs": [res.bias_before, res.bias_after], "feasible": res.feasible},
    }
    if baseline:
        finetune_on_pairs(logits_fn, params, split.pairs, subset=res.subset, steps=(1,),
                          max_acc_drop=hp.max_acc_drop, accuracy_on=hp.accuracy_on)  # compile
        ft = finetune_on_pairs(logits_fn, params, split.pairs, subset=res.subset, max_acc_drop=hp.max_acc_drop,
                               accuracy_on=hp.accuracy_on)
        out["finetune"] = {**report(logits_fn, ft["params"], split), "seconds": ft["seconds"], "steps": ft["steps"]}
    out["_params"] = res.params
    return out


def summary_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows (``before``, ``fmd``, ``finetune``) of bias, accuracies and seconds for a table."""
    rows = []
    for name in ("before", "fmd", "finetune"):
        if name not in result:
            continue
        r = result[name]
        row = {"model": name, "B": r["bias"], **{f"acc_{k}": v for k, v in r["accuracy"].items()}}
        if "dp_gap" in r:
            row["dp_gap"] = r["dp_gap"]
        row["seconds"] = r.get("seconds", float("nan"))
        rows.append(row)
    return rows


def save_params(out_dir: str, params: dict, result: Mapping[str, Any]) -> list[str]:
    """Write the edited parameters (``params.npz``, keys = ``/``-joined paths) and ``report.json``."""
    os.makedirs(out_dir, exist_ok=True)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    npz = run_path(out_dir, "params")
    np.savez(npz, **flat)
    rep = run_path(out_dir, "report")
    write_json(rep, {k: v for k, v in result.items() if not k.startswith("_")})
    return [npz, rep]
