"""LRP maps vs a forward+backward pass of the same batch.

For the bundled SimpleConvNet (demo width 4/8/16/32 and paper width
16/32/64/128, 7×7 convolutions, 28×28×3 inputs) and FMD's MLP, times, each
jitted and in one run:

- ``lrp``: :func:`jaxbias.explain.make_lrp` (EpsilonPlusFlat, batch-norm
  folded), relevance of the true class;
- ``input gradient``: forward + backward to the input
  (:func:`jaxbias.explain.gradient`), the cost of a gradient heatmap;
- ``param gradient``: forward + backward to the parameters of the mean
  cross-entropy (the work of a training step without the optimiser).

Target (issue 4): an LRP map costs at most about 3× a forward+backward pass.

Usage::

    python benchmarks/lrp.py [--out benchmarks/results] [--tag cpu] [--batch 64]
"""
from __future__ import annotations

import argparse
import sys
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

MODELS = {
    "SimpleConvNet 4/8/16/32 (demo)": ("simple_conv", dict(channels=(4, 8, 16, 32), last_activation="tanh")),
    "SimpleConvNet 16/32/64/128 (paper)": ("simple_conv", dict(channels=(16, 32, 64, 128))),
    "MLP 2352-100-100-100-10 (FMD)": ("mlp", dict(hidden=(100, 100, 100))),
}


def bench(name, kind, kw, batch, repeats):
    module = models.create(kind, **kw)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(batch, 28, 28, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    params, state = models.init(module, jax.random.key(0), x)
    variables = {"params": params, **state}
    lrp_fn = explain.make_lrp(explain.to_graph(module, variables))

    def logits(xx):
        return module.apply(variables, xx, train=False)[0]

    input_grad = jax.jit(lambda xx, yy: explain.gradient(logits, xx, target=yy))

    @jax.jit
    def param_grad(p, xx, yy):
        def loss(q):
            z = module.apply({**variables, "params": q}, xx, train=False)[0]
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, yy))

        return jax.grad(loss)(p)

    t_lrp = time_fn(lrp_fn, x, y, repeats=repeats, budget_s=20)
    t_in = time_fn(input_grad, x, y, repeats=repeats, budget_s=20)
    t_par = time_fn(param_grad, params, x, y, repeats=repeats, budget_s=20)
    return {
        "model": name, "batch": batch,
        "lrp_s": t_lrp["median_s"], "input_grad_s": t_in["median_s"], "param_grad_s": t_par["median_s"],
        "lrp_over_input_grad": t_lrp["median_s"] / t_in["median_s"],
        "lrp_over_param_grad": t_lrp["median_s"] / t_par["median_s"],
        "lrp_compile_s": t_lrp["compile_s"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--tag", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args(argv)
    rows = [bench(name, kind, kw, a.batch, a.repeats) for name, (kind, kw) in MODELS.items()]
    table = md_table(
        ["model", "batch", "LRP s", "input grad s", "param grad s", "LRP ÷ input grad", "LRP ÷ param grad",
         "LRP compile s"],
        [[r["model"], r["batch"], r["lrp_s"], r["input_grad_s"], r["param_grad_s"], r["lrp_over_input_grad"],
          r["lrp_over_param_grad"], r["lrp_compile_s"]] for r in rows])
    write_results("lrp", a.tag, rows, table, a.out, notes=__doc__.split("Usage::")[0].strip())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
