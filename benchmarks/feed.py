"""Steps per second of the epoch loop: device-resident feed vs host feed, same run, side by side.

Both feeds of :mod:`jaxbias.training.loop` run the same jitted step on the same
batches. The **host** feed gathers each batch on the host (``a[idx]``), sends
it and calls the step from Python once per step; the **device** feed keeps the
training set on the device and runs the epoch as one compiled ``lax.scan``.
Each is timed twice per configuration:

- *no bar*: ``progress=False`` (the device epoch is one scan, the host loop never waits);
- *bar*: what the CLI does by default, with a silent progress bar: the host
  loop reads the loss back every 5 steps, the device feed runs the epoch in
  10 chunks and reads one loss per chunk.

Every variant is compiled first (one untimed epoch), then the epochs are timed
round-robin (host, device, host, ...) so that all see the same machine load;
steps/s is the median over the timed epochs. The configurations are the
networks of the papers' small experiments:

- Adult MLP 64/32, batch 256 (``../shared/data/adult.data`` when present, else
  random rows of the same shape): the smallest step, so the host loop's per-step
  work weighs most;
- FMD's Colored-MNIST MLP 100/100/100 on 28×28×3 digits, batch 256;
- the demo's SimpleConvNet (4/8/16/32 channels, tanh) on 28×28×3, batch 64.

Two floors are timed beside them (same step, no engine): *bare scan*, one
jitted ``lax.scan`` of the step over the epoch's index rows with the data on
the device, and *bare host loop*, a Python loop of the jitted step over
host-gathered batches. Their ratio is the most any device-resident feed can
gain over a host loop on the machine; the engine's feeds are measured against it.
The host feed's per-step overhead is its steps/s ÷ the bare host loop's
(column ``÷ bare host loop``; ``÷ bare loop + order draw`` against the bare loop that also draws each
epoch's order as the engine does, i.e. the engine's own per-step work alone): it gathers, places and calls the step as the
bare loop does, and sums the metrics once per epoch.

Usage::

    python benchmarks/feed.py [--out benchmarks/results] [--tag cpu] [--epochs 5] [--configs adult,fmd,demo]
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

from _common import ADULT, md_table, write_results  # noqa: E402

from jaxbias import models  # noqa: E402
from jaxbias.training import loop as engine  # noqa: E402
from jaxbias.methods import vanilla  # noqa: E402
from jaxbias.training.parallel import Layout  # noqa: E402
from jaxbias.train import create_train_state, make_optimizer, make_train_step, method_loss  # noqa: E402
from jaxbias.types import Batch  # noqa: E402


class _SilentBar:
    """A progress bar that shows nothing but makes the loop do what a real bar makes it do."""

    def update(self, n=1):
        pass

    def set_postfix(self, **kw):
        pass


def _data(name: str, rng: np.random.Generator):
    if name == "adult":
        if ADULT.exists():
            from jaxbias.data.adult import load_adult

            d = load_adult(ADULT)
            return Batch(d.train_x, d.train_y, d.train_a), "UCI Adult (real, training split)"
        x = rng.normal(size=(26048, 108)).astype(np.float32)
        return Batch(x, rng.integers(0, 2, 26048).astype(np.int32)), "random rows shaped like Adult"
    n = 4000  # the demo's training set size
    x = rng.uniform(size=(n, 28, 28, 3)).astype(np.float32)
    return Batch(x, rng.integers(0, 10, n).astype(np.int32)), f"random 28×28×3 images, n={n}"


CONFIGS = {
    "adult": dict(model=("mlp", dict(hidden=(64, 32), num_classes=2)), batch=256, label="Adult MLP 64/32"),
    "fmd": dict(model=("mlp", dict(hidden=(100, 100, 100), num_classes=10)), batch=256,
                label="FMD Colored-MNIST MLP 100/100/100"),
    "demo": dict(model=("simple_conv", dict(channels=(4, 8, 16, 32), last_activation="tanh", num_classes=10)),
                 batch=64, label="demo SimpleConvNet 4/8/16/32"),
}


def bench(name: str, epochs: int, rng: np.random.Generator) -> list[dict]:
    cfg = CONFIGS[name]
    train, data_desc = _data(name, rng)
    n = train.x.shape[0]
    module = models.create(cfg["model"][0], **cfg["model"][1])
    params, model_state = models.init(module, jax.random.key(0), train.x[:1])
    tx = make_optimizer(lr=1e-3, steps_per_epoch=n // cfg["batch"])
    step = make_train_step(method_loss(vanilla, module, vanilla.Hparams()), tx)
    key = jax.random.key_data(jax.random.key(1))
    variants = {}
    for feed_cls, feed in ((engine._HostFeed, "host"), (engine._DeviceFeed, "device")):
        feeder = feed_cls(lambda st, b, _: step(st, b), train, Layout(), n=n, batch_size=cfg["batch"], drop_last=True)
        for bar in ("no bar", "bar"):
            variants[(feed, bar)] = {"feeder": feeder, "bar": None if bar == "no bar" else _SilentBar(),
                                     "state": create_train_state(*jax.tree.map(jax.numpy.array, (params, model_state)), tx,
                                                               key=jax.random.key(2)),  # copies: donated
                                     "times": [], "compile_s": None}
    epoch_id = jax.numpy.int32(0)
    # the floor: the same step with no engine around it, as bare as JAX allows (data on the device, one jitted
    # lax.scan over the epoch's index rows; and a plain Python loop of the jitted step over host-gathered batches)
    rows_idx = np.asarray(engine.epoch_order(jax.random.key(1), 0, n=n, batch_size=cfg["batch"], drop_last=True)[0])
    dev = jax.device_put(train)
    bare_scan = jax.jit(lambda st, order: jax.lax.scan(
        lambda c, idx: step(c, Batch(*(None if a is None else a[idx] for a in dev))), st, order), donate_argnums=0)
    bare_step = jax.jit(step, donate_argnums=0)
    host = Batch(*(None if a is None else np.asarray(a) for a in train))

    def bare_loop(st):
        for idx in rows_idx:
            st, m = bare_step(st, Batch(*(None if a is None else a[idx] for a in host)))
        return st, m

    draw = engine._order_fn(n=n, batch_size=cfg["batch"], drop_last=True)  # the feed's own per-epoch order draw
    key_data = jax.numpy.asarray(jax.random.key_data(key))

    def bare_loop_drawn(st):  # the bare loop plus the epoch's order drawn as the engine draws it
        full, _ = draw(key_data, epoch_id)
        for idx in list(np.asarray(full)):
            st, m = bare_step(st, Batch(*(None if a is None else a[idx] for a in host)))
        return st, m

    for feed, fn in (("bare scan", lambda st: bare_scan(st, rows_idx)), ("bare host loop", bare_loop),
                     ("bare host loop + order draw", bare_loop_drawn)):
        variants[(feed, "no bar")] = {"bare": fn, "state": create_train_state(
            *jax.tree.map(jax.numpy.array, (params, model_state)), tx, key=jax.random.key(2)), "times": [],
            "compile_s": None}
    for rnd in range(epochs + 1):  # round 0 compiles
        for v in variants.values():
            t0 = time.perf_counter()
            if "bare" in v:
                state, sums = v["bare"](v["state"])
                steps = len(rows_idx)
            else:
                state, sums, losses, steps = v["feeder"].run(engine.Lane(v["state"], (), key), epoch_id, v["bar"])
            jax.block_until_ready((state, sums))
            dt = time.perf_counter() - t0
            v["state"], v["steps"] = state, steps
            if rnd == 0:
                v["compile_s"] = dt
            else:
                v["times"].append(dt)
    rows = []
    for (feed, bar), v in variants.items():
        med = statistics.median(v["times"])
        rows.append({"config": name, "label": cfg["label"], "data": data_desc, "n": n, "batch_size": cfg["batch"],
                     "feed": feed, "bar": bar, "steps_per_epoch": v["steps"], "epoch_s": med,
                     "steps_per_s": v["steps"] / med, "first_epoch_s": v["compile_s"], "epochs_timed": epochs,
                     "times_s": v["times"]})
    for bar in ("no bar", "bar"):
        h = next(r for r in rows if r["feed"] == "host" and r["bar"] == bar)
        for r in rows:
            if r["bar"] == bar:
                r["speedup_vs_host"] = r["steps_per_s"] / h["steps_per_s"]
    bare = next(r for r in rows if r["feed"] == "bare host loop")
    drawn = next(r for r in rows if r["feed"] == "bare host loop + order draw")
    for r in rows:  # the engine's per-step overhead: its host feed against a bare loop of the same step
        r["vs_bare_host_loop"] = r["steps_per_s"] / bare["steps_per_s"]
        r["vs_bare_loop_drawn"] = r["steps_per_s"] / drawn["steps_per_s"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default=jax.default_backend())
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs per variant")
    ap.add_argument("--configs", default="adult,fmd,demo")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for name in a.configs.split(","):
        print(f"[feed] {name} ...", flush=True)
        rows.extend(bench(name.strip(), a.epochs, rng))
    table = md_table(
        ["network", "batch", "steps/epoch", "feed", "progress bar", "steps/s", "÷ host feed", "÷ bare host loop",
         "÷ bare loop + order draw", "first epoch s"],
        [[r["label"], r["batch_size"], r["steps_per_epoch"], r["feed"], r["bar"], r["steps_per_s"],
          r["speedup_vs_host"], r["vs_bare_host_loop"], r["vs_bare_loop_drawn"], r["first_epoch_s"]] for r in rows],
    )
    notes = ("Same step, same batches; medians of {e} epochs per variant, timed round-robin. "
             "`first epoch s` includes compilation. The bare host loop reuses one index order; *+ order draw* also "
             "draws each epoch's order as the engine does (the shuffle every feed pays, and the same for all of "
             "them: on the device, so that the host and device feeds and every sweep member draw the same "
             "batches), so `÷ bare loop + order draw` is the engine's per-step overhead alone. Data: {d}.").format(
        e=a.epochs, d="; ".join(sorted({f"{r['config']}: {r['data']}" for r in rows})))
    paths = write_results("feed", a.tag, rows, table, a.out, extra={"epochs": a.epochs}, notes=notes)
    print(table)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
