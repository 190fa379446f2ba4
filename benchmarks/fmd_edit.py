"""FMD: wall-clock of the Newton-step edit, and influences by one JVP vs per-sample gradients.

Models: FMD's Colored-MNIST MLP (3·28·28→100→100→100→10, 256,510 parameters)
trained 3 epochs on offline Biased MNIST (ρ = 0.99), and, when
``../shared/data/adult.data`` exists, an Adult MLP (108→64→32→2) trained 5
epochs. The edit uses 100 external counterfactual pairs and is timed through
the public entry point :func:`jaxbias.methods.fmd.debias` (gradients, the
inverse-curvature solve, the 31-point scale search, host-side checks):
``cold`` is the first call (tracing + compilation included), ``warm`` the
median of later calls (the compiled program reused). The fine-tuning baseline
(full-batch Adam on the same pairs, 200 steps, all of them run) is timed the
same way for comparison.

Second table: the influence of every training sample on the bias,
``I(z_k) = −sᵀ∇L(z_k)``, from one JVP of the per-sample losses along ``s``
against the explicit form (vmapped per-sample gradients, then dot products),
both jitted, same ``s``.

Usage::

    python benchmarks/fmd_edit.py [--out benchmarks/results] [--tag cpu]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = Path(__file__).resolve().parent
try:
    import jaxbias  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import ADULT, md_table, time_fn, write_results  # noqa: E402

from jaxbias import models  # noqa: E402
from jaxbias.runs import unlearning as unlearn  # noqa: E402
from jaxbias.influence import merge, select  # noqa: E402
from jaxbias.methods import fmd, vanilla  # noqa: E402
from jaxbias.runs.recipes import load_dataset  # noqa: E402
from jaxbias.train import fit, make_optimizer  # noqa: E402
from jaxbias.types import Batch  # noqa: E402


def _train(module, data, train, *, epochs, batch_size):
    tx = make_optimizer(lr=1e-3, weight_decay=1e-4, steps_per_epoch=train.x.shape[0] // batch_size, decay_every=None)
    res = fit(module=module, method=vanilla, hp=vanilla.Hparams(), train=train, epochs=epochs,
              batch_size=batch_size, tx=tx, seed=0, progress=False)
    return res.state.params


def _time_calls(call, repeats):
    t0 = time.perf_counter()
    call()
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        warm.append(time.perf_counter() - t0)
    return cold, statistics.median(warm)


def _edit_rows(name, logits_fn, params, split, train, repeats):
    order = list(params)
    variants = [
        ("last", dict(params="last")),
        ("last, true Hessian", dict(params="last", curvature="hessian")),
        ("last, exact solve", dict(params="last", solver="exact")),
        ("last2", dict(params="last2", damping=0.1)),
        ("all", dict(params="all", damping=1.0)),
        ("all, 5 Newton steps", dict(params="all", damping=1.0, steps=5)),
        ("last, 5 Newton steps", dict(params="last", steps=5)),
        ("training mode, top-100, last", dict(mode="training", params="last", top_k=100)),
    ]
    rows = []
    for label, over in variants:
        hp = fmd.Hparams(**over)
        kw = dict(hp=hp, order=order)
        if hp.mode == "training":
            kw.update(train=train, train_cf=split.train_cf)
        res = [None]

        def call():
            res[0] = fmd.debias(logits_fn, params, split.pairs, **kw)

        cold, warm = _time_calls(call, repeats)
        n_block = sum(int(np.size(a)) for a in jax.tree.leaves(select(params, res[0].subset)))
        rows.append({"model": name, "edit": label, "block_params": n_block, "cold_s": cold, "warm_s": warm,
                     "bias_pairs_before": res[0].bias_before, "bias_pairs_after": res[0].bias_after})
        subset = res[0].subset
        if label in ("last", "all"):
            ft = {}

            def ft_call():
                ft.update(unlearn.finetune_on_pairs(logits_fn, params, split.pairs, subset=subset))

            cold, warm = _time_calls(ft_call, max(1, repeats // 3))
            rows.append({"model": name, "edit": f"fine-tune baseline ({label}, 200 Adam steps)",
                         "block_params": n_block, "cold_s": cold, "warm_s": warm, "bias_pairs_before": None,
                         "bias_pairs_after": None})
    return rows


def _influence_rows(name, logits_fn, params, train_x, train_y, repeats):
    subset = ("out",)
    block = select(params, subset)
    s = jax.tree.map(lambda a: jnp.ones_like(a) * 1e-3, block)  # any direction: the cost does not depend on it

    @jax.jit
    def by_jvp(block, s):
        def losses(b):
            return optax.softmax_cross_entropy_with_integer_labels(logits_fn(merge(params, b), train_x), train_y)

        return -jax.jvp(losses, (block,), (s,))[1]

    @jax.jit
    def by_grads(block, s):
        def one(b, x, y):
            return optax.softmax_cross_entropy_with_integer_labels(logits_fn(merge(params, b), x[None]), y[None])[0]

        g = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(block, train_x, train_y)
        return -sum(jnp.tensordot(a, v, axes=v.ndim) for a, v in zip(jax.tree.leaves(g), jax.tree.leaves(s)))

    a, b = by_jvp(block, s), by_grads(block, s)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-6)
    tj = time_fn(by_jvp, block, s, repeats=repeats)
    tg = time_fn(by_grads, block, s, repeats=repeats)
    return [{"model": name, "samples": int(train_x.shape[0]), "jvp_s": tj["median_s"],
             "per_sample_grads_s": tg["median_s"], "speedup": tg["median_s"] / tj["median_s"]}]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--tag", default="cpu")
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)

    edit_rows, infl_rows = [], []
    data, train, _ = load_dataset("biased_mnist", seed=0, rho=0.99)
    module = models.create("mlp", hidden=(100, 100, 100))
    params = _train(module, data, train, epochs=3, batch_size=64)
    logits_fn = unlearn._logits_fn(module, {})
    split = unlearn.split_biased_mnist(data, external=100, seed=0)
    tx, ty = jnp.asarray(data.train_x), jnp.asarray(data.train_y)
    edit_rows += _edit_rows("Colored MNIST MLP", logits_fn, params, split, (tx, ty), a.repeats)
    infl_rows += _influence_rows("Colored MNIST MLP", logits_fn, params, tx, ty, a.repeats)
    if ADULT.exists():
        adata, atrain, _ = load_dataset("adult", seed=0, data_path=str(ADULT))
        amodule = models.create("mlp", hidden=(64, 32), num_classes=2)
        aparams = _train(amodule, adata, Batch(atrain.x, atrain.y), epochs=5, batch_size=256)
        alogits = unlearn._logits_fn(amodule, {})
        asplit = unlearn.split_adult(adata, external=100, seed=0)
        ax, ay = jnp.asarray(adata.train_x), jnp.asarray(adata.train_y)
        edit_rows += _edit_rows("Adult MLP (sex)", alogits, aparams, asplit, (ax, ay), a.repeats)
        infl_rows += _influence_rows("Adult MLP (sex)", alogits, aparams, ax, ay, a.repeats)

    t1 = md_table(["model", "edit", "block params", "cold s", "warm s", "B pairs before", "B pairs after"],
                  [[r["model"], r["edit"], r["block_params"], r["cold_s"], r["warm_s"], r["bias_pairs_before"],
                    r["bias_pairs_after"]] for r in edit_rows])
    t2 = md_table(["model", "training samples", "one JVP s", "per-sample grads s", "speed-up"],
                  [[r["model"], r["samples"], r["jvp_s"], r["per_sample_grads_s"], r["speedup"]] for r in infl_rows])
    notes = (__doc__.split("Usage::")[0].strip() + "\n\nTarget (issue 5): the edit with ≤ 100 external pairs takes "
             "≤ 2 s on the 2-core CPU.")
    write_results("fmd_edit", a.tag, edit_rows + infl_rows, t1 + "\n\n## Influences of all training samples\n\n" + t2,
                  a.out, notes=notes)
    print(t1)
    print(t2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
