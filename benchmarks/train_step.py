"""EnD vs Vanilla: time of one full training step, measured side by side.

A *step* is what :func:`jaxbias.train.fit` runs per batch: forward pass,
loss (cross-entropy, plus the EnD regularizer on the pooled features for EnD),
backward pass and the Adam update, jitted once with the state donated. The two
steps are compiled first, then timed in alternation (Vanilla, EnD, Vanilla,
EnD, ...) so that both see the same machine load; the ratio is EnD median /
Vanilla median, together with the median of the per-pair ratios.

Usage::

    python benchmarks/train_step.py [--out benchmarks/results] [--tag cpu]
        [--configs "16,32,64,128@256;4,8,16,32@64"] [--repeats 7]
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
    bias = np.where(rng.uniform(size=batch_size) < 0.9, y, rng.integers(0, 10, size=batch_size)).astype(np.int32)
    return Batch(jax.device_put(x), jax.device_put(y), jax.device_put(bias))


def _compiled_step(method: str, hp, module, batch: Batch, tx):
    mod = methods.get(method)
    params, model_state = models.init(module, jax.random.key(0), batch.x[:1])
    state = create_train_state(params, model_state, tx, key=jax.random.key(1), method_state=mod.init())
    step = jax.jit(make_train_step(method_loss(mod, module, hp), tx), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    return compiled, state, compile_s


def measure(channels: tuple[int, ...], batch_size: int, *, repeats: int, warmup: int, last_activation: str) -> dict:
    module = models.create("simple_conv", channels=channels, last_activation=last_activation)
    batch = _batch(batch_size)
    tx = make_optimizer(lr=1e-3, weight_decay=1e-4, steps_per_epoch=100, decay_every=20)
    end_hp = methods.get("end").Hparams(alpha=1.0, beta=0.5)
    van_step, van_state, van_compile = _compiled_step("vanilla", methods.get("vanilla").Hparams(), module, batch, tx)
    end_step, end_state, end_compile = _compiled_step("end", end_hp, module, batch, tx)

    def run(step, state):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        return state, time.perf_counter() - t0, metrics

    for _ in range(warmup):
        van_state, _, _ = run(van_step, van_state)
        end_state, _, _ = run(end_step, end_state)
    van_t, end_t = [], []
    for _ in range(repeats):
        van_state, dt, _ = run(van_step, van_state)
        van_t.append(dt)
        end_state, dt, metrics = run(end_step, end_state)
        end_t.append(dt)
    if not np.isfinite(float(metrics["loss"])):
        raise RuntimeError(f"EnD step produced a non-finite loss: {metrics}")
    van_med, end_med = statistics.median(van_t), statistics.median(end_t)
    return {
        "channels": list(channels),
        "batch_size": batch_size,
        "last_activation": last_activation,
        "vanilla_median_s": van_med,
        "end_median_s": end_med,
        "ratio_of_medians": end_med / van_med,
        "median_pair_ratio": statistics.median(e / v for e, v in zip(end_t, van_t)),
        "vanilla_compile_s": van_compile,
        "end_compile_s": end_compile,
        "vanilla_times_s": van_t,
        "end_times_s": end_t,
    }


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
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per method and config")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    parser.add_argument("--last-activation", default="tanh", choices=("relu", "tanh"))
    args = parser.parse_args(argv)

    rows = []
    for channels, bs in _parse_configs(args.configs):
        print(f"[train_step] channels={list(channels)} batch={bs} ...", flush=True)
        row = measure(channels, bs, repeats=args.repeats, warmup=args.warmup, last_activation=args.last_activation)
        print(
            f"  vanilla {row['vanilla_median_s'] * 1e3:.1f} ms, EnD {row['end_median_s'] * 1e3:.1f} ms, "
            f"ratio {row['ratio_of_medians']:.4f}",
            flush=True,
        )
        rows.append(row)
    table = md_table(
        ["channels", "batch", "Vanilla step (ms)", "EnD step (ms)", "EnD / Vanilla (medians)",
         "median of paired ratios", "compile Vanilla (s)", "compile EnD (s)"],
        [
            [
                "/".join(map(str, r["channels"])),
                r["batch_size"],
                r["vanilla_median_s"] * 1e3,
                r["end_median_s"] * 1e3,
                r["ratio_of_medians"],
                r["median_pair_ratio"],
                r["vanilla_compile_s"],
                r["end_compile_s"],
            ]
            for r in rows
        ],
    )
    notes = (
        f"One jitted training step (forward, loss, backward, Adam with coupled weight decay; "
        f"state donated) of the Biased-MNIST network (7×7 convs, batch-norm, "
        f"{args.last_activation} last activation) on 28×28×3 inputs. EnD adds "
        f"α R⊥ + β R∥ (reference variant, α = 1, β = 0.5) on the pooled features. "
        f"After {args.warmup} warm-up steps each, {args.repeats} steps of each method were "
        f"timed in alternation; medians shown. Target: EnD / Vanilla ≤ 1.02."
    )
    settings = {"settings": {"repeats": args.repeats, "warmup": args.warmup, "configs": args.configs}}
    paths = write_results("train_step", args.tag, rows, table, args.out, extra=settings, notes=notes)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
