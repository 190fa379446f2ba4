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

Each network is also written twice more, as the other adapters take it (``--variants``, all three by default):

- ``from_nnx``: :class:`NNXConvNet` / :class:`NNXMLP`, ``flax.nnx`` modules with ``nnx.Conv`` (the house's
  convolution passed as its ``conv_general_dilated``), ``nnx.BatchNorm``, ``nnx.Linear`` and parameter-free
  activation / pool / identity submodules under the bundled net's names, loaded with its weights and statistics
  (``nnx.update``) and wrapped by ``from_nnx(model, layers=...)`` at the same layers;
- ``from_functions``: :func:`function_conv_net` / :func:`function_mlp`, plain ``jnp`` functions of a params dict
  of the bundled net's structure (batch-norm statistics through ``state=``), stages ``block1`` … / ``dense1`` …
  and ``features``, head ``fc`` / ``out``.

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
then timed round-robin (per round and method: hand-tapped, then each adapter; the order
reverses every round) so that all see the same machine load; the ratio is the
adapter's median over the hand-tapped median, shown with the median of the
per-round ratios. Besides identical HLO text, the table says whether two programs differ only in
XLA's instruction/computation names and order ("up to names"), and each program's instruction count.

Usage::

    python benchmarks/adapter.py [--out benchmarks/results] [--tag cpu] [--channels 16,32,64,128]
        [--conv-batch 32] [--mlp-batch 256] [--methods vanilla,rrclarc,rrr] [--repeats 9] [--mlp-repeats 50]
        [--warmup 2] [--networks conv,mlp] [--variants linen,nnx,functions]
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
from flax import nnx
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
from jaxbias.models.adapters import from_functions, from_linen, from_nnx  # noqa: E402
from jaxbias.models.conv import Conv, conv_general_dilated  # noqa: E402
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


# --- the same networks as flax.nnx modules (from_nnx) --------------------------------------------------------------

class NNXActivation(nnx.Module):
    """``relu`` / ``tanh`` as a parameter-free NNX submodule (a tappable layer)."""

    def __init__(self, fn: str = "relu"):
        self.fn = fn

    def __call__(self, x):
        return {"relu": jax.nn.relu, "tanh": jnp.tanh}[self.fn](x)


class NNXGlobalAvgPool(nnx.Module):
    def __call__(self, x):
        return jnp.mean(x, axis=(1, 2))


class NNXIdentity(nnx.Module):
    def __call__(self, x):
        return x


def _nnx_conv_general_dilated(*args, out_sharding=None, **kwargs):
    """The house's convolution for ``nnx.Conv`` (which also passes ``out_sharding``; unsharded here)."""
    if out_sharding is not None:
        raise ValueError("out_sharding is not supported by the house's convolution")
    return conv_general_dilated(*args, **kwargs)


class NNXConvNet(nnx.Module):
    """SimpleConvNet in NNX: ``nnx.Conv`` (with the house's fast CPU convolution, as the bundled ``Conv``) /
    ``nnx.BatchNorm`` / activation submodules under the bundled net's names (same ``params`` and ``batch_stats``)."""

    def __init__(self, num_classes: int = 10, channels: Sequence[int] = (16, 32, 64, 128), kernel_size: int = 7,
                 last_activation: str = "relu", bn_momentum: float = 0.9, *, rngs: nnx.Rngs):
        k, cin = kernel_size, 3
        self.depth, self.num_classes = len(channels), num_classes
        for i, c in enumerate(channels):
            setattr(self, f"conv{i + 1}", nnx.Conv(cin, c, (k, k), padding=k // 2,
                                                   conv_general_dilated=_nnx_conv_general_dilated, rngs=rngs))
            setattr(self, f"bn{i + 1}", nnx.BatchNorm(c, momentum=bn_momentum, epsilon=1e-5, rngs=rngs))
            last = i == len(channels) - 1
            setattr(self, f"block{i + 1}", NNXActivation(last_activation if last else "relu"))
            cin = c
        self.features = NNXGlobalAvgPool()
        self.fc = nnx.Linear(cin, num_classes, rngs=rngs)

    def __call__(self, x):
        h = x
        for i in range(self.depth):
            n = i + 1
            h = getattr(self, f"block{n}")(getattr(self, f"bn{n}")(getattr(self, f"conv{n}")(h)))
        return self.fc(self.features(h))


class NNXMLP(nnx.Module):
    """The bundled MLP in NNX: flatten → [``nnx.Linear`` → ReLU submodule] × 3 → ``nnx.Linear``, same names."""

    def __init__(self, num_classes: int = 10, hidden: Sequence[int] = (100, 100, 100), in_features: int = 2352, *,
                 rngs: nnx.Rngs):
        self.depth, self.num_classes = len(hidden), num_classes
        fan_in = in_features
        for i, width in enumerate(hidden):
            setattr(self, f"fc{i + 1}", nnx.Linear(fan_in, width, rngs=rngs))
            setattr(self, f"dense{i + 1}", NNXActivation("relu"))
            fan_in = width
        self.features = NNXIdentity()
        self.out = nnx.Linear(fan_in, num_classes, rngs=rngs)

    def __call__(self, x):
        h = jnp.reshape(x, (x.shape[0], -1))
        for i in range(self.depth):
            h = getattr(self, f"dense{i + 1}")(getattr(self, f"fc{i + 1}")(h))
        return self.out(self.features(h))


def _nnx_with(model, params: dict, batch_stats: dict | None = None):
    """``model`` holding the hand-tapped net's weights (and statistics): what ``from_nnx`` takes as its initial ones."""
    for kind, values in ((nnx.Param, params), (nnx.BatchStat, batch_stats)):
        if values:
            state = nnx.state(model, kind)
            nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, dict(values)))
            nnx.update(model, state)
    return model


# --- the same networks as plain jnp functions of a params dict (from_functions) ------------------------------------

def _f_dense(p, h):
    return h @ p["kernel"] + p["bias"]


def _f_batch_norm(p, s, x, train, momentum=0.9, eps=1e-5):
    """flax's BatchNorm (fast variance) in jnp: batch statistics while training (running averages updated)."""
    if train:
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.maximum(0.0, jnp.mean(x * x, axis=(0, 1, 2)) - mean * mean)
        s = {"mean": momentum * s["mean"] + (1 - momentum) * mean, "var": momentum * s["var"] + (1 - momentum) * var}
    else:
        mean, var = s["mean"], s["var"]
    return (x - mean) * (jax.lax.rsqrt(var + eps) * p["scale"]) + p["bias"], s


def function_conv_net(params, batch_stats, *, kernel_size: int = 7, last_activation: str = "relu",
                      bn_momentum: float = 0.9):
    """SimpleConvNet as functions of ``params`` (``conv1``…, ``bn1``…, ``fc``) and ``batch_stats`` (``bn1``…),
    the house's convolution; stages ``block1`` … ``blockN``, ``features``; head ``fc``."""
    depth, pad = sum(k.startswith("conv") for k in params), kernel_size // 2

    def block(n, act):
        def stage(p, s, h, train):
            c = p[f"conv{n}"]
            y = conv_general_dilated(h, c["kernel"], (1, 1), [(pad, pad), (pad, pad)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + c["bias"]
            y, bn = _f_batch_norm(p[f"bn{n}"], s[f"bn{n}"], y, train, bn_momentum)
            return act(y), {**s, f"bn{n}": bn}
        return stage

    stages = [(f"block{i + 1}", block(i + 1, jnp.tanh if (i == depth - 1 and last_activation == "tanh")
                                      else jax.nn.relu)) for i in range(depth)]
    stages.append(("features", lambda p, s, h, train: (jnp.mean(h, axis=(1, 2)), s)))
    return from_functions(stages, lambda p, s, h, train: (_f_dense(p["fc"], h), s), params, state=batch_stats,
                          num_classes=params["fc"]["bias"].shape[0])


def function_mlp(params):
    """The MLP as functions of ``params`` (``fc1``…, ``out``): stages ``dense1`` … ``denseN`` (after ReLU),
    ``features`` (the same array); head ``out``."""
    depth = sum(k.startswith("fc") for k in params)

    def dense(n):
        return lambda p, h, train: jax.nn.relu(_f_dense(p[f"fc{n}"], h.reshape(h.shape[0], -1)))

    stages = [(f"dense{i + 1}", dense(i + 1)) for i in range(depth)]
    stages.append(("features", lambda p, h, train: h))
    return from_functions(stages, lambda p, h, train: _f_dense(p["out"], h), params,
                          num_classes=params["out"]["bias"].shape[0])


def _batch(batch_size: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(batch_size, 28, 28, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=batch_size).astype(np.int32)
    bias = (np.arange(batch_size) % 2).astype(np.int32)  # a binary attribute: the ClArC concept
    mask = np.zeros((batch_size, 28, 28), bool)
    mask[bias == 1, -6:, -6:] = True
    return Batch(*(jax.device_put(a) for a in (x, y, bias, mask)))


VARIANTS = ("linen", "nnx", "functions")
VARIANT_LABEL = {"linen": "from_linen", "nnx": "from_nnx", "functions": "from_functions"}


def _networks(channels: tuple[int, ...], last_activation: str, conv_batch: int, mlp_batch: int,
              variants: Sequence[str] = VARIANTS, wanted: Sequence[str] = ("conv", "mlp")) -> dict:
    """name -> (hand-tapped module, {variant: adapter module}, batch, CAV layer). The NNX model and the function
    model are built holding the hand-tapped net's initial weights (the timed weights are the hand net's anyway)."""
    blocks = tuple(f"block{i + 1}" for i in range(len(channels)))
    hidden = (100, 100, 100)
    x0 = jnp.zeros((1, 28, 28, 3), jnp.float32)
    out = {}
    if "conv" in wanted:
        hand = models.create("simple_conv", channels=channels, last_activation=last_activation)
        params, state = models.init(hand, jax.random.key(0), x0)
        stats = state.get("batch_stats", {})
        make = {
            "linen": lambda: from_linen(PlainConvNet(channels=channels, last_activation=last_activation),
                                        layers=(*blocks, "features")),
            "nnx": lambda: from_nnx(_nnx_with(NNXConvNet(channels=channels, last_activation=last_activation,
                                                         rngs=nnx.Rngs(0)), params, stats),
                                    layers=(*blocks, "features")),
            "functions": lambda: function_conv_net(params, stats, last_activation=last_activation),
        }
        out["SimpleConvNet " + "/".join(map(str, channels))] = (hand, {v: make[v]() for v in variants}, conv_batch,
                                                                blocks[-1])
    if "mlp" in wanted:
        hand = models.create("mlp", hidden=hidden)
        params, _ = models.init(hand, jax.random.key(0), x0)
        make = {
            "linen": lambda: from_linen(PlainMLP(hidden=hidden), layers=("dense1", "dense2", "dense3", "features")),
            "nnx": lambda: from_nnx(_nnx_with(NNXMLP(hidden=hidden, rngs=nnx.Rngs(0)), params),
                                    layers=("dense1", "dense2", "dense3", "features")),
            "functions": lambda: function_mlp(params),
        }
        out["MLP 2352-100-100-100-10"] = (hand, {v: make[v]() for v in variants}, mlp_batch, "dense3")
    return out


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


def _hlo_renamed(text: str) -> list[str]:
    """The HLO's lines with every instruction/computation name replaced by one placeholder, sorted: equal for two
    programs that differ only in how XLA named and ordered their instructions and computations."""
    text = re.sub(r"\b(region|reduce_sum|fused_computation|wrapped_\w+)[\w.]*", "N", text)
    return sorted(re.sub(r"%[\w.-]+", "%x", text).splitlines())


def _hlo_instructions(text: str) -> int:
    """Instructions in an HLO module's text (lines ``name = type op(...)``, all computations)."""
    return sum(1 for line in text.splitlines() if re.match(r"^\s+(ROOT\s+)?[\w.%-]+\s*=\s*\S", line))


def measure(name: str, hand, adapters: dict, batch: Batch, cav_layer: str, names: list[str], *, repeats: int,
            warmup: int) -> list[dict]:
    params, model_state, logit_diff = None, None, {}
    for v, adapter in adapters.items():
        p, st, logit_diff[v] = _check_equivalent(f"{name} [{VARIANT_LABEL[v]}]", hand, adapter, batch)
        if params is None:
            params, model_state = p, st  # the hand net's (the same for every variant)
        print(f"  {VARIANT_LABEL[v]} equivalent: max |Δ logits| = {logit_diff[v]:.2e}", flush=True)
    tx = make_optimizer(lr=1e-3, weight_decay=1e-4, steps_per_epoch=100, decay_every=20)
    variants = ("hand", *adapters)
    modules = {"hand": hand, **adapters}
    steps, states, compile_s, same_hlo, n_instr, first_loss = {}, {}, {}, {}, {}, {}
    for n in names:
        mod = methods.get(n)
        hp = methods.make_hparams(mod, {**HPARAMS.get(n, {}), **({"layer": cav_layer} if n == "rrclarc" else {})})
        concept = batch._replace(y=batch.bias)  # the ClArC family's artifact samples: bias 1
        # one method state for all: fitted on the bundled net (the adapters' would be the same, checked above)
        mstate = mod.init(models.bind(hand, model_state, train=False), params,
                          concept if methods.kind(mod).fits_on_model else batch, hp=hp)
        hlos = {}
        for v in variants:
            # a copy per step: the step donates its state, and the steps must not share buffers
            state = jax.tree.map(jnp.copy, create_train_state(params, model_state, tx, key=jax.random.key(1),
                                                              method_state=mstate))
            step = jax.jit(make_train_step(method_loss(mod, modules[v], hp), tx), donate_argnums=0)
            t0 = time.perf_counter()
            compiled = step.lower(state, batch).compile()
            compile_s[n, v] = time.perf_counter() - t0
            hlos[v] = _hlo(compiled)
            n_instr[n, v] = _hlo_instructions(hlos[v])
            states[n, v], metrics = compiled(state, batch)
            first_loss[n, v] = float(metrics["loss"])
            steps[n, v] = compiled
        for v in adapters:
            same_hlo[n, v] = ("yes" if hlos["hand"] == hlos[v] else
                              "up to names" if _hlo_renamed(hlos["hand"]) == _hlo_renamed(hlos[v]) else "no")
            np.testing.assert_allclose(first_loss[n, v], first_loss[n, "hand"], rtol=1e-5,
                                       err_msg=f"{name} {n} [{VARIANT_LABEL[v]}]: first-step losses differ")

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
        hand_s = statistics.median(times[n, "hand"])
        for v in adapters:
            adapter_s = statistics.median(times[n, v])
            rows.append({
                "network": name, "batch_size": int(batch.x.shape[0]), "method": n, "variant": VARIANT_LABEL[v],
                "repeats": repeats,
                "hparams": {**HPARAMS.get(n, {}), **({"layer": cav_layer} if n == "rrclarc" else {})},
                "hand_median_s": hand_s, "adapter_median_s": adapter_s, "ratio": adapter_s / hand_s,
                "median_round_ratio": statistics.median(a / h for a, h in zip(times[n, v], times[n, "hand"])),
                "same_hlo": same_hlo[n, v], "hlo_instructions": {"hand": n_instr[n, "hand"], "adapter": n_instr[n, v]},
                "max_abs_logit_diff": logit_diff[v],
                "first_loss": {"hand": first_loss[n, "hand"], "adapter": first_loss[n, v]},
                "compile_s": {"hand": compile_s[n, "hand"], "adapter": compile_s[n, v]},
                "times_s": {"hand": times[n, "hand"], "adapter": times[n, v]},
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
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="adapters timed against the hand-tapped net: linen (from_linen), nnx (from_nnx), "
                             "functions (from_functions)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    channels = tuple(int(c) for c in args.channels.split(","))
    wanted = {n.strip() for n in args.networks.split(",") if n.strip()}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        parser.error(f"--variants: unknown {unknown}; choose among {list(VARIANTS)}")

    rows = []
    for name, (hand, adapters, bs, cav_layer) in _networks(channels, args.last_activation, args.conv_batch,
                                                            args.mlp_batch, variants, wanted).items():
        print(f"[adapter] {name} batch={bs} ...", flush=True)
        repeats = args.repeats if name.startswith("SimpleConvNet") else args.mlp_repeats
        got = measure(name, hand, adapters, _batch(bs), cav_layer, names, repeats=repeats, warmup=args.warmup)
        for r in got:
            print(f"  {r['method']:8s} {r['variant']:15s} hand {r['hand_median_s'] * 1e3:9.2f} ms  adapter "
                  f"{r['adapter_median_s'] * 1e3:9.2f} ms  ratio {r['ratio']:.3f}  (rounds {r['median_round_ratio']:.3f})"
                  f"  same HLO: {r['same_hlo']} ({r['hlo_instructions']['hand']} / "
                  f"{r['hlo_instructions']['adapter']} instructions)", flush=True)
        rows += got
    table = md_table(
        ["network", "batch", "method", "adapter", "hand-tapped step (ms)", "adapter step (ms)",
         "adapter ÷ hand (medians)", "median of round ratios", "same compiled HLO", "HLO instructions hand / adapter",
         "compile hand / adapter (s)"],
        [
            [r["network"], r["batch_size"], r["method"], f"`{r['variant']}`", r["hand_median_s"] * 1e3,
             r["adapter_median_s"] * 1e3, r["ratio"], r["median_round_ratio"], r["same_hlo"],
             f"{r['hlo_instructions']['hand']} / {r['hlo_instructions']['adapter']}",
             f"{r['compile_s']['hand']:.2f} / {r['compile_s']['adapter']:.2f}"]
            for r in rows
        ],
    )
    notes = (
        "One jitted training step (forward, the method's loss, backward, Adam with coupled weight decay; state "
        "donated) of each network on 28×28×3 inputs: the bundled model with its `tap` calls (*hand*) against the "
        "same network written without taps and wrapped by an adapter at the same layers (*adapter*): "
        "`from_linen`, an untapped Linen copy (same layers, names, parameter tree); `from_nnx`, the network as a "
        "`flax.nnx.Module` (`nnx.Linear`/`nnx.Conv` with the house's convolution/`nnx.BatchNorm`, the activations "
        "and the pool as parameter-free submodules, under the same names), holding the hand net's weights and "
        "statistics; `from_functions`, the network as plain `jnp` functions of a params dict of the hand net's "
        "structure (stages `block1`…/`dense1`… and `features`, head `fc`/`out`; batch-norm statistics through "
        "`state=`). Every step runs on the hand net's weights. Before timing, logits, activations and "
        "batch-norm statistics were checked equal to 1e-5 (train and eval mode) and each method's first-step loss "
        "equal; *same compiled HLO*: the optimised XLA programs are identical text (source locations stripped); "
        "*up to names*: the same lines once instruction and computation names are replaced by one placeholder and the "
        "lines sorted (XLA numbered and ordered them differently; same instruction count); *HLO instructions*: lines `name = op(...)` of the optimised module, all computations. "
        f"Hyperparameters: {HPARAMS}, RR-ClArC's CAV at the last block / hidden layer. After {args.warmup} "
        f"warm-up round(s), {args.repeats} (SimpleConvNet) / {args.mlp_repeats} (MLP) rounds of one step per method "
        "and variant were timed round-robin (hand-tapped and every adapter, the order reversing every round); "
        "medians shown, the hand-tapped median being the same for each adapter of one method. "
        "Target (issue 35): adapter ÷ hand ≤ 1.02."
    )
    settings = {"settings": {"channels": list(channels), "last_activation": args.last_activation,
                             "conv_batch": args.conv_batch, "mlp_batch": args.mlp_batch, "methods": names,
                             "networks": sorted(wanted), "variants": variants, "repeats": args.repeats,
                             "mlp_repeats": args.mlp_repeats, "warmup": args.warmup}}
    paths = write_results("adapter", args.tag, rows, table, args.out, extra=settings, notes=notes)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
