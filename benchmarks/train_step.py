"""Training-step time of every method relative to Vanilla, measured side by side.

A *step* is what :func:`jaxbias.train.fit` runs per batch: forward pass, the
method's loss (cross-entropy plus its penalty), backward pass and the Adam
update, jitted once with the state donated. All steps are compiled first, then
timed round-robin (Vanilla, EnD, RR-ClArC, ..., Vanilla, EnD, ...) so that all
see the same machine load; each ratio is the method's median over Vanilla's
median, reported with the median of the per-round ratios.

Methods: ``end`` (α = 1, β = 0.5 on the pooled features), ``rrclarc`` (random
signs, l2, CAV at ``block4``), ``aclarc`` / ``pclarc`` (shift / projection at
``block4``), ``rrr`` (l2 input-gradient penalty, a 6×6 corner mask). The ClArC
states are fitted once on the timing batch.

Usage::

    python benchmarks/train_step.py [--out benchmarks/results] [--tag cpu]
        [--configs "16,32,64,128@256;4,8,16,32@64"] [--methods end,rrclarc,...] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

HERE = Path(__file__).resolve().parent
try:
    import jaxbias  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import md_table, write_results  # noqa: E402

from jaxbias import methods, models  # noqa: E402
from jaxbias.train import create_train_state, make_optimizer, make_train_step, method_loss  # noqa: E402
from jaxbias.types import Batch  # noqa: E402


def _batch(batch_size: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(batch_size, 28, 28, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=batch_size).astype(np.int32)
    bias = (np.arange(batch_size) % 2).astype(np.int32)  # a binary attribute: EnD bias / ClArC concept
    mask = np.zeros((batch_size, 28, 28), bool)
    mask[bias == 1, -6:, -6:] = True
    return Batch(*(jax.device_put(a) for a in (x, y, bias, mask)))


HPARAMS = {
    "vanilla": {},
    "end": {"alpha": 1.0, "beta": 0.5},
    "rrclarc": {"lam": 1.0},
    "aclarc": {},
    "pclarc": {},
    "rrr": {"lam": 1.0},
}


def _compiled_step(method: str, module, batch: Batch, tx):
    mod = methods.get(method)
    hp = mod.Hparams(**HPARAMS.get(method, {}))
    params, model_state = models.init(module, jax.random.key(0), batch.x[:1])
    mstate = mod.init(models.bind(module, model_state, train=False), params, batch, hp=hp)
    state = create_train_state(params, model_state, tx, key=jax.random.key(1), method_state=mstate)
    step = jax.jit(make_train_step(method_loss(mod, module, hp), tx), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    return compiled, state, compile_s


def measure(channels: tuple[int, ...], batch_size: int, names: list[str], *, repeats: int, warmup: int,
            last_activation: str) -> dict:
    module = models.create("simple_conv", channels=channels, last_activation=last_activation)
    batch = _batch(batch_size)
    tx = make_optimizer(lr=1e-3, weight_decay=1e-4, steps_per_epoch=100, decay_every=20)
    names = ["vanilla", *[n for n in names if n != "vanilla"]]
    steps, states, compile_s, times = {}, {}, {}, {n: [] for n in names}
    for n in names:
        steps[n], states[n], compile_s[n] = _compiled_step(n, module, batch, tx)

    def run(n):
        t0 = time.perf_counter()
        states[n], metrics = steps[n](states[n], batch)
        jax.block_until_ready((states[n], metrics))
        if not np.isfinite(float(metrics["loss"])):
            raise RuntimeError(f"{n} step produced a non-finite loss: {metrics}")
        return time.perf_counter() - t0

    for _ in range(warmup):
        for n in names:
            run(n)
    for _ in range(repeats):
        for n in names:
            times[n].append(run(n))
    van = statistics.median(times["vanilla"])
    rows = []
    for n in names:
        med = statistics.median(times[n])
        rows.append({
            "channels": list(channels), "batch_size": batch_size, "last_activation": last_activation, "method": n,
            "hparams": HPARAMS.get(n, {}), "median_s": med, "ratio_to_vanilla": med / van,
            "median_round_ratio": statistics.median(t / v for t, v in zip(times[n], times["vanilla"])),
            "compile_s": compile_s[n], "times_s": times[n],
        })
    return rows


def _parse_configs(text: str) -> list[tuple[tuple[int, ...], int]]:
    out = []
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        if "@" not in item:
            raise ValueError(f"--configs items must look like 'c1,c2,c3,c4@batch'; got {item!r}")
        ch, bs = item.split("@")
        out.append((tuple(int(c) for c in ch.split(",")), int(bs)))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results"), help="results folder")
    parser.add_argument("--tag", default="cpu", help="suffix of the result files")
    parser.add_argument(
        "--configs",
        default="16,32,64,128@256;4,8,16,32@64",
        help="';'-separated 'channels@batch' items (default: the paper's network at batch 256, "
        "the demo's network at batch 64)",
    )
    parser.add_argument("--methods", default="end,rrclarc,aclarc,pclarc,rrr", help="methods compared with vanilla")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per method and config")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    parser.add_argument("--last-activation", default="tanh", choices=("relu", "tanh"))
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]

    rows = []
    for channels, bs in _parse_configs(args.configs):
        print(f"[train_step] channels={list(channels)} batch={bs} ...", flush=True)
        got = measure(channels, bs, names, repeats=args.repeats, warmup=args.warmup,
                      last_activation=args.last_activation)
        for r in got:
            print(f"  {r['method']:8s} {r['median_s'] * 1e3:9.1f} ms  ratio {r['ratio_to_vanilla']:.3f}", flush=True)
        rows += got
    table = md_table(
        ["channels", "batch", "method", "step (ms)", "÷ Vanilla (medians)", "median of round ratios", "compile (s)"],
        [
            ["/".join(map(str, r["channels"])), r["batch_size"], r["method"], r["median_s"] * 1e3,
             r["ratio_to_vanilla"], r["median_round_ratio"], r["compile_s"]]
            for r in rows
        ],
    )
    notes = (
        f"One jitted training step (forward, loss, backward, Adam with coupled weight decay; state donated) of "
        f"the Biased-MNIST network (7×7 convs, batch-norm, {args.last_activation} last block) on 28×28×3 inputs, "
        f"all parameters trained. Hyperparameters: {HPARAMS}. After {args.warmup} warm-up step(s) each, "
        f"{args.repeats} rounds of one step per method were timed round-robin; medians shown. Targets: EnD ≤ 1.02, "
        f"RR-ClArC ≤ 1.05, A-/P-ClArC ≤ 1.02 (RRR: reported)."
    )
    settings = {"settings": {"repeats": args.repeats, "warmup": args.warmup, "configs": args.configs,
                             "methods": names}}
    paths = write_results("train_step", args.tag, rows, table, args.out, extra=settings, notes=notes)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
