"""Training-step time of a network wrapped by ``from_linen`` vs the same network written with ``tap``, side by side.

:func:`jaxbias.models.from_linen` taps named submodules of an unmodified Linen
network through :func:`flax.linen.intercept_methods`. Target (issue 35): the
adapter's step time ÷ the bundled model's (same network, same weights, same
method, same batch, same run) ≤ 1.02.

Networks, each written twice:

- **SimpleConvNet** (the Biased-MNIST net, ``models.create("simple_conv",
  channels=...)``, hand-tapped at ``block1`` … ``block4``, ``features``,
  ``logits``) against an untapped copy below (:class:`PlainConvNet`): the same
  layers under the same names (``conv1``, ``bn1``, …, ``fc``: the same parameter
  tree, the same :class:`jaxbias.models.conv.Conv`), with the block activations
  and the global pool written as parameter-free submodules named ``block1`` …
  ``block4`` and ``features`` (a plain ``nn.relu`` call is no submodule and
  cannot be tapped), wrapped by ``from_linen(..., layers=(block1..4, features))``;
- **MLP** (FMD's 100/100/100, ``models.create("mlp")``, hand-tapped at
  ``dense1`` … ``dense3``, ``features``, ``logits``) against
  :class:`PlainMLP`, the same way.

Before timing, each pair is checked on the same parameters and batch-norm
statistics: the same parameter tree, the same activation names, logits and
activations equal to 1e-5 in training and evaluation mode, and the first
step's loss equal for every method. The compiled steps' optimised HLO is compared too
(source locations stripped): identical text means XLA runs the same program, and any
time difference is noise.

Methods: ``vanilla``, ``rrclarc`` (l2, random signs, CAV at ``block4`` /
``dense3``, fitted once on the timing batch with its bias as the concept) and
``rrr`` (l2 input-gradient penalty, a 6×6 corner mask). A step is
:func:`jaxbias.train.make_train_step` of :func:`jaxbias.train.method_loss`
with Adam, jitted once with the state donated. All steps are compiled first,
then timed round-robin (per round and method: hand-tapped, adapter; the order
flips every round) so that both see the same machine load; the ratio is the
adapter's median over the hand-tapped median, shown with the median of the
per-round ratios.

Usage::

    python benchmarks/adapter.py [--out benchmarks/results] [--tag cpu] [--channels 16,32,64,128]
        [--conv-batch 32] [--mlp-batch 256] [--methods vanilla,rrclarc,rrr] [--repeats 9] [--mlp-repeats 50]
        [--warmup 2] [--networks conv,mlp]
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
try:
    import jaxbias  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import md_table, write_results  # noqa: E402

from jaxbias import methods, models  # noqa: E402
from jaxbias.models.adapters import from_linen  # noqa: E402
from jaxbias.models.conv import Conv  # noqa: E402
from jaxbias.train import create_train_state, make_optimizer, make_train_step, method_loss  # noqa: E402
from jaxbias.types import Batch  # noqa: E402

# the bundled SimpleConvNet's initialiser (He-normal, fan-out): init only, the timed weights are the hand net's
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Activation(nn.Module):
    """``relu`` / ``tanh`` as a (parameter-free) submodule, as ``torch.nn.ReLU`` is one: a tappable layer."""

    fn: str = "relu"

    def __call__(self, x):
        return {"relu": nn.relu, "tanh": jnp.tanh}[self.fn](x)


class GlobalAvgPool(nn.Module):
    """Mean over the spatial axes, as a submodule (``torch.nn.AdaptiveAvgPool2d(1)`` + flatten)."""

    def __call__(self, x):
        return jnp.mean(x, axis=(1, 2))


class Identity(nn.Module):
    """``torch.nn.Identity``: names an array (the MLP's ``features``, the same array as its last hidden layer)."""

    def __call__(self, x):
        return x


class PlainConvNet(nn.Module):
    """The bundled SimpleConvNet as a researcher would write it elsewhere: no taps, no perturb/edit, ``train``
    keyword; same layers, same names, same parameter tree."""

    num_classes: int = 10
    channels: Sequence[int] = (16, 32, 64, 128)
    kernel_size: int = 7
    last_activation: str = "relu"
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x, train: bool = False):
        h, k, pad = x, self.kernel_size, self.kernel_size // 2
        for i, c in enumerate(self.channels):
            h = Conv(c, (k, k), padding=pad, kernel_init=_KAIMING_FAN_OUT, name=f"conv{i + 1}")(h)
            h = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                             name=f"bn{i + 1}")(h)
            last = i == len(self.channels) - 1
            h = Activation(self.last_activation if last else "relu", name=f"block{i + 1}")(h)
        h = GlobalAvgPool(name="features")(h)
        return nn.Dense(self.num_classes, name="fc")(h)


class PlainMLP(nn.Module):
    """The bundled MLP written without taps: flatten → [Dense → ReLU] × 3 → Dense, same parameter names."""

    num_classes: int = 10
    hidden: Sequence[int] = (100, 100, 100)

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = jnp.reshape(x, (x.shape[0], -1))
        for i, width in enumerate(self.hidden):
            h = Activation("relu", name=f"dense{i + 1}")(nn.Dense(width, name=f"fc{i + 1}")(h))
        h = Identity(name="features")(h)
        return nn.Dense(self.num_classes, name="out")(h)


def _batch(batch_size: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(batch_size, 28, 28, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=batch_size).astype(np.int32)
    bias = (np.arange(batch_size) % 2).astype(np.int32)  # a binary attribute: the ClArC concept
    mask = np.zeros((batch_size, 28, 28), bool)
    mask[bias == 1, -6:, -6:] = True
    return Batch(*(jax.device_put(a) for a in (x, y, bias, mask)))


def _networks(channels: tuple[int, ...], last_activation: str, conv_batch: int, mlp_batch: int) -> dict:
    """name -> (hand-tapped module, adapter module, batch, CAV layer, description)."""
    blocks = tuple(f"block{i + 1}" for i in range(len(channels)))
    hidden = (100, 100, 100)
    conv = "SimpleConvNet " + "/".join(map(str, channels))
    return {
        conv: (models.create("simple_conv", channels=channels, last_activation=last_activation),
               from_linen(PlainConvNet(channels=channels, last_activation=last_activation),
                          layers=(*blocks, "features")),
               conv_batch, blocks[-1]),
        "MLP 2352-100-100-100-10": (models.create("mlp", hidden=hidden),
                                    from_linen(PlainMLP(hidden=hidden), layers=("dense1", "dense2", "dense3", "features")),
                                    mlp_batch, "dense3"),
    }


def _check_equivalent(name: str, hand, adapter, batch: Batch):
    """Same parameter tree, same acts, logits/acts/state equal to 1e-5 on the hand net's weights; returns
    ``(params, model_state, max |Δ logits|)`` with non-trivial batch-norm statistics."""
    params, state = models.init(hand, jax.random.key(0), batch.x[:1])
    a_params, a_state = models.init(adapter, jax.random.key(0), batch.x[:1])
    if jax.tree.structure((params, state)) != jax.tree.structure((a_params, a_state)):
        raise AssertionError(f"{name}: the adapter's parameter tree differs from the bundled net's:\n"
                             f"{jax.tree.structure(a_params)}\nvs\n{jax.tree.structure(params)}")
    # one training-mode pass, so that evaluation mode reads non-trivial running statistics
    state = models.bind(hand, state, train=True)(params, batch.x).state
    worst = 0.0
    for train in (True, False):
        ref = models.bind(hand, state, train=train)(params, batch.x)
        out = models.bind(adapter, state, train=train)(params, batch.x)
        if sorted(out.acts) != sorted(ref.acts):
            raise AssertionError(f"{name}: acts {sorted(out.acts)} vs the bundled net's {sorted(ref.acts)}")
        for u, v in zip(jax.tree.leaves((out.logits, out.acts, out.state)),
                        jax.tree.leaves((ref.logits, ref.acts, ref.state)), strict=True):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{name} (train={train}): adapter and bundled net disagree")
        worst = max(worst, float(jnp.max(jnp.abs(out.logits - ref.logits))))
    return params, state, worst


def _hlo(compiled) -> str:
    """The optimised HLO text without metadata (source lines, op names) and the module's name."""
    text = compiled.as_text()
    # the tables of Python source locations (FileNames, FunctionNames, FileLocations, StackFrames) and references
    text = "\n".join(line for line in text.splitlines()
                     if not re.match(r"^(\d+ .*|FileNames|FunctionNames|FileLocations|StackFrames)$", line))
    text = re.sub(r",?\s*(metadata=\{[^}]*\}|stack_frame_id=\d+)", "", text)
    return re.sub(r"^HloModule \S+", "HloModule", text, count=1)


HPARAMS = {"vanilla": {}, "rrclarc": {"lam": 1.0}, "rrr": {"lam": 1.0}}


def measure(name: str, hand, adapter, batch: Batch, cav_layer: str, names: list[str], *, repeats: int,
            warmup: int) -> list[dict]:
    params, model_state, logit_diff = _check_equivalent(name, hand, adapter, batch)
    print(f"  equivalent: max |Δ logits| = {logit_diff:.2e}", flush=True)
    tx = make_optimizer(lr=1e-3, weight_decay=1e-4, steps_per_epoch=100, decay_every=20)
    variants = ("hand", "adapter")
    steps, states, compile_s, same_hlo, first_loss = {}, {}, {}, {}, {}
    for n in names:
        mod = methods.get(n)
        hp = methods.make_hparams(mod, {**HPARAMS.get(n, {}), **({"layer": cav_layer} if n == "rrclarc" else {})})
        concept = batch._replace(y=batch.bias)  # the ClArC family's artifact samples: bias 1
        # one method state for both: fitted on the bundled net (the adapter's would be the same, checked above)
        mstate = mod.init(models.bind(hand, model_state, train=False), params,
                          concept if methods.kind(mod).fits_on_model else batch, hp=hp)
        hlos = {}
        for v, module in zip(variants, (hand, adapter)):
            # a copy per step: the step donates its state, and the two must not share buffers
            state = jax.tree.map(jnp.copy, create_train_state(params, model_state, tx, key=jax.random.key(1),
                                                              method_state=mstate))
            step = jax.jit(make_train_step(method_loss(mod, module, hp), tx), donate_argnums=0)
            t0 = time.perf_counter()
            compiled = step.lower(state, batch).compile()
            compile_s[n, v] = time.perf_counter() - t0
            hlos[v] = _hlo(compiled)
            states[n, v], metrics = compiled(state, batch)
            first_loss[n, v] = float(metrics["loss"])
            steps[n, v] = compiled
        same_hlo[n] = hlos["hand"] == hlos["adapter"]
        np.testing.assert_allclose(first_loss[n, "adapter"], first_loss[n, "hand"], rtol=1e-5,
                                   err_msg=f"{name} {n}: first-step losses differ")

    def run(key):
        t0 = time.perf_counter()
        states[key], metrics = steps[key](states[key], batch)
        jax.block_until_ready((states[key], metrics))
        elapsed = time.perf_counter() - t0
        if not np.isfinite(float(metrics["loss"])):
            raise RuntimeError(f"{key} step produced a non-finite loss: {metrics}")
        return elapsed

    times = {k: [] for k in steps}
    for _ in range(warmup):
        for k in steps:
            run(k)
    for r in range(repeats):
        for n in names:
            for v in (variants if r % 2 == 0 else variants[::-1]):
                times[n, v].append(run((n, v)))
    rows = []
    for n in names:
        hand_s, adapter_s = statistics.median(times[n, "hand"]), statistics.median(times[n, "adapter"])
        rows.append({
            "network": name, "batch_size": int(batch.x.shape[0]), "method": n, "repeats": repeats,
            "hparams": {**HPARAMS.get(n, {}), **({"layer": cav_layer} if n == "rrclarc" else {})},
            "hand_median_s": hand_s, "adapter_median_s": adapter_s, "ratio": adapter_s / hand_s,
            "median_round_ratio": statistics.median(a / h for a, h in zip(times[n, "adapter"], times[n, "hand"])),
            "same_hlo": same_hlo[n], "max_abs_logit_diff": logit_diff,
            "first_loss": {"hand": first_loss[n, "hand"], "adapter": first_loss[n, "adapter"]},
            "compile_s": {"hand": compile_s[n, "hand"], "adapter": compile_s[n, "adapter"]},
            "times_s": {"hand": times[n, "hand"], "adapter": times[n, "adapter"]},
        })
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results"), help="results folder")
    parser.add_argument("--tag", default="cpu", help="suffix of the result files")
    parser.add_argument("--channels", default="16,32,64,128", help="SimpleConvNet channels (the paper's by default)")
    parser.add_argument("--last-activation", default="relu", choices=("relu", "tanh"))
    parser.add_argument("--conv-batch", type=int, default=32, help="SimpleConvNet batch size")
    parser.add_argument("--mlp-batch", type=int, default=256, help="MLP batch size")
    parser.add_argument("--networks", default="conv,mlp", help="which pairs to time: conv, mlp")
    parser.add_argument("--methods", default="vanilla,rrclarc,rrr", help="methods timed on each pair")
    parser.add_argument("--repeats", type=int, default=9,
                        help="timed rounds on SimpleConvNet (one step per method and variant)")
    parser.add_argument("--mlp-repeats", type=int, default=50, help="timed rounds on the MLP (its steps take ms)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    channels = tuple(int(c) for c in args.channels.split(","))
    wanted = {n.strip() for n in args.networks.split(",") if n.strip()}

    rows = []
    for name, (hand, adapter, bs, cav_layer) in _networks(channels, args.last_activation, args.conv_batch,
                                                           args.mlp_batch).items():
        if ("conv" if name.startswith("SimpleConvNet") else "mlp") not in wanted:
            continue
        print(f"[adapter] {name} batch={bs} ...", flush=True)
        repeats = args.repeats if name.startswith("SimpleConvNet") else args.mlp_repeats
        got = measure(name, hand, adapter, _batch(bs), cav_layer, names, repeats=repeats, warmup=args.warmup)
        for r in got:
            print(f"  {r['method']:8s} hand {r['hand_median_s'] * 1e3:9.2f} ms  adapter "
                  f"{r['adapter_median_s'] * 1e3:9.2f} ms  ratio {r['ratio']:.3f}  (rounds {r['median_round_ratio']:.3f})"
                  f"  same HLO: {r['same_hlo']}", flush=True)
        rows += got
    table = md_table(
        ["network", "batch", "method", "hand-tapped step (ms)", "from_linen step (ms)", "adapter ÷ hand (medians)",
         "median of round ratios", "same compiled HLO", "compile hand / adapter (s)"],
        [
            [r["network"], r["batch_size"], r["method"], r["hand_median_s"] * 1e3, r["adapter_median_s"] * 1e3,
             r["ratio"], r["median_round_ratio"], "yes" if r["same_hlo"] else "no",
             f"{r['compile_s']['hand']:.2f} / {r['compile_s']['adapter']:.2f}"]
            for r in rows
        ],
    )
    notes = (
        "One jitted training step (forward, the method's loss, backward, Adam with coupled weight decay; state "
        "donated) of each network on 28×28×3 inputs, written twice: the bundled model with its `tap` calls "
        "(*hand*), and an untapped Linen copy (same layers, names, parameter tree and weights) wrapped by "
        "`jaxbias.models.from_linen` at the same layers (*adapter*). Before timing, logits, activations and "
        "batch-norm statistics were checked equal to 1e-5 (train and eval mode) and each method's first-step loss "
        f"equal; *same compiled HLO*: the optimised XLA programs are identical text (source locations stripped). "
        f"Hyperparameters: {HPARAMS}, RR-ClArC's CAV at the last block / hidden layer. After {args.warmup} "
        f"warm-up round(s), {args.repeats} (SimpleConvNet) / {args.mlp_repeats} (MLP) rounds of one step per method "
        "and variant were timed round-robin (the "
        "two variants' order flipping every round); medians shown. Target (issue 35): adapter ÷ hand ≤ 1.02."
    )
    settings = {"settings": {"channels": list(channels), "last_activation": args.last_activation,
                             "conv_batch": args.conv_batch, "mlp_batch": args.mlp_batch, "methods": names,
                             "networks": sorted(wanted), "repeats": args.repeats, "mlp_repeats": args.mlp_repeats,
                             "warmup": args.warmup}}
    paths = write_results("adapter", args.tag, rows, table, args.out, extra=settings, notes=notes)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
