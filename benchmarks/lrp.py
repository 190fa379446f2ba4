"""LRP maps vs a forward+backward pass of the same batch.

Two LRP implementations (both EpsilonPlusFlat, batch-norm folded, relevance of
the true class, jitted):

- ``graph LRP``: :func:`jaxbias.explain.make_lrp` of the network's layer graph
  (:func:`jaxbias.explain.to_graph`), for the bundled SimpleConvNet and MLP;
- ``intercept LRP``: :func:`jaxbias.explain.intercept.make_lrp_model`, which
  intercepts the Linen network's Conv/Dense/BatchNorm layers (any network).

Networks: the bundled SimpleConvNet (demo width 4/8/16/32 and paper width
16/32/64/128, 7×7 convolutions) and FMD's MLP on 28×28×3 inputs (``--batch``),
with both LRPs (checked equal to 1e-5 relative before timing); torchvision's
VGG-16, ResNet-18 and EfficientNet-B0 (``jaxbias.models``, 10 classes, random
init weights) on ``--size``×``--size``×3 inputs (``--tv-batch``), with the
intercept LRP only (checked finite). Beside them, each jitted, in one run:

- ``input gradient``: forward + backward to the input
  (:func:`jaxbias.explain.gradient`), the cost of a gradient heatmap;
- ``param gradient``: forward + backward to the parameters of the mean
  cross-entropy (the work of a training step without the optimiser;
  SimpleConvNet and MLP only).

Target (issue 4): an LRP map costs at most about 3× a forward+backward pass.
Issue 36: LRP ÷ one input-gradient pass for the three torchvision architectures.

Usage::

    python benchmarks/lrp.py [--out benchmarks/results] [--tag cpu] [--batch 64]
        [--tv-batch 8] [--size 64] [--nets demo,paper,mlp,vgg16,resnet18,efficientnet_b0]
        [--note "text for the .md"]
"""
from __future__ import annotations

import argparse
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

from _common import md_table, time_fn, write_results  # noqa: E402

from jaxbias import explain, models  # noqa: E402
from jaxbias.explain.intercept import lrp_model, make_lrp_model  # noqa: E402

#: key: (row name, model kind, settings, graph LRP too)
MODELS = {
    "demo": ("SimpleConvNet 4/8/16/32 (demo)", "simple_conv", dict(channels=(4, 8, 16, 32), last_activation="tanh"),
             True),
    "paper": ("SimpleConvNet 16/32/64/128 (paper)", "simple_conv", dict(channels=(16, 32, 64, 128)), True),
    "mlp": ("MLP 2352-100-100-100-10 (FMD)", "mlp", dict(hidden=(100, 100, 100)), True),
    "vgg16": ("VGG-16", "vgg16", dict(num_classes=10), False),
    "resnet18": ("ResNet-18", "resnet18", dict(num_classes=10), False),
    "efficientnet_b0": ("EfficientNet-B0", "efficientnet_b0", dict(num_classes=10), False),
}


def check_equal(module, variables, x, y, n=8):
    """Intercept LRP = graph LRP to 1e-5 relative on ``n`` samples (ε = 1e-9 as the tests: with tanh before the
    mean the graph stabilises the mean's denominator by ε, autodiff does not). Returns the max relative error."""
    xs, ys = x[:n], y[:n]
    ref = explain.lrp(explain.to_graph(module, variables), xs, target=ys, epsilon=1e-9)
    got = lrp_model(module, variables, xs, target=ys, epsilon=1e-9)
    scale = float(jnp.abs(ref).max())
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5 * scale)
    return float(jnp.abs(got - ref).max()) / scale


def bench(key, batch, size, repeats, budget_s):
    name, kind, kw, graph = MODELS[key]
    module = models.create(kind, **kw)
    rng = np.random.default_rng(0)
    side = 28 if graph else size
    x = jnp.asarray(rng.uniform(size=(batch, side, side, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    params, state = models.init(module, jax.random.key(0), x[:1])
    variables = {"params": params, **state}

    def logits(xx):
        return module.apply(variables, xx, train=False)[0]

    input_grad = jax.jit(lambda xx, yy: explain.gradient(logits, xx, target=yy))
    intercept_fn = make_lrp_model(module, variables)

    row = {"model": name, "input": f"{side}×{side}×3", "batch": batch}
    # compiled here (and timed: its compile time) so that the finiteness check runs the executable that is timed
    t0 = time.perf_counter()
    intercept_exe = intercept_fn.lower(x, y).compile()
    intercept_compile_s = time.perf_counter() - t0
    if graph:
        row["check_max_rel_err"] = check_equal(module, variables, x, y)
    r = intercept_exe(x, y)
    row["check_finite"] = bool(jnp.isfinite(r).all())
    if not row["check_finite"]:
        raise AssertionError(f"{name}: intercept LRP not finite")

    warmup = 2 if graph else 1  # the torchvision nets: seconds per call on a CPU
    t_int = time_fn(intercept_exe, x, y, repeats=repeats, budget_s=budget_s, warmup=warmup)
    t_in = time_fn(input_grad, x, y, repeats=repeats, budget_s=budget_s, warmup=warmup)
    row.update(intercept_s=t_int["median_s"], input_grad_s=t_in["median_s"],
               intercept_over_input_grad=t_int["median_s"] / t_in["median_s"],
               intercept_compile_s=intercept_compile_s, input_grad_compile_s=t_in["compile_s"],
               intercept_repeats=t_int["repeats"], input_grad_repeats=t_in["repeats"])
    if graph:
        lrp_fn = explain.make_lrp(explain.to_graph(module, variables))

        @jax.jit
        def param_grad(p, xx, yy):
            def loss(q):
                z = module.apply({**variables, "params": q}, xx, train=False)[0]
                return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, yy))

            return jax.grad(loss)(p)

        t_lrp = time_fn(lrp_fn, x, y, repeats=repeats, budget_s=budget_s)
        t_par = time_fn(param_grad, params, x, y, repeats=repeats, budget_s=budget_s)
        row.update(lrp_s=t_lrp["median_s"], param_grad_s=t_par["median_s"],
                   lrp_over_input_grad=t_lrp["median_s"] / t_in["median_s"],
                   lrp_over_param_grad=t_lrp["median_s"] / t_par["median_s"],
                   intercept_over_lrp=t_int["median_s"] / t_lrp["median_s"],
                   intercept_over_param_grad=t_int["median_s"] / t_par["median_s"],
                   lrp_compile_s=t_lrp["compile_s"])
    print(f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                                  if k not in ("model",)), flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--tag", default="cpu")
    p.add_argument("--batch", type=int, default=64, help="batch of SimpleConvNet and MLP (28×28×3)")
    p.add_argument("--tv-batch", type=int, default=8, help="batch of VGG-16, ResNet-18, EfficientNet-B0")
    p.add_argument("--size", type=int, default=64, help="image side of VGG-16, ResNet-18, EfficientNet-B0 (≥ 32)")
    p.add_argument("--nets", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=10.0, help="stop timing one function after this many seconds "
                   "(at least 3 calls)")
    p.add_argument("--note", default="", help="text added to the .md (e.g. how loaded the machine was)")
    a = p.parse_args(argv)
    keys = [k.strip() for k in a.nets.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        p.error(f"unknown nets {unknown}; choose from {list(MODELS)}")
    rows = [bench(k, a.batch if MODELS[k][3] else a.tv_batch, a.size, a.repeats, a.budget_s) for k in keys]
    table = md_table(
        ["model", "input", "batch", "graph LRP s", "intercept LRP s", "input grad s", "param grad s",
         "graph LRP ÷ input grad", "intercept LRP ÷ input grad", "intercept ÷ graph LRP", "graph LRP ÷ param grad",
         "intercept LRP ÷ param grad", "compile s graph / intercept"],
        [[r["model"], r["input"], r["batch"], r.get("lrp_s"), r["intercept_s"], r["input_grad_s"],
          r.get("param_grad_s"), r.get("lrp_over_input_grad"), r["intercept_over_input_grad"],
          r.get("intercept_over_lrp"), r.get("lrp_over_param_grad"), r.get("intercept_over_param_grad"),
          (f"{r['lrp_compile_s']:.3g} / " if "lrp_compile_s" in r else "– / ") + f"{r['intercept_compile_s']:.3g}"]
         for r in rows])
    checks = "; ".join(f"{r['model']}: " + (f"intercept = graph LRP, max rel. err {r['check_max_rel_err']:.2g}"
                                            if "check_max_rel_err" in r else "intercept LRP finite")
                       for r in rows)
    notes = __doc__.split("Usage::")[0].strip() + f"\n\nChecks before timing: {checks}."
    if a.note:
        notes += "\n\n" + a.note
    write_results("lrp", a.tag, rows, table, a.out, notes=notes,
                  extra={"settings": {"batch": a.batch, "tv_batch": a.tv_batch, "size": a.size, "nets": keys,
                                      "repeats": a.repeats, "budget_s": a.budget_s, "note": a.note}})
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
