"""Seconds per epoch of every correction method on VGG-16, ResNet-18 and EfficientNet-B0.

The protocol of the RR-ClArC paper's Table A.6 (SPEC §9): every convolution
and batch-norm layer frozen (batch-norm in evaluation mode), only the linear
layers trained (Adam), batch 64, the latent layer of RR-ClArC / A-ClArC /
P-ClArC = the last convolutional layer (``acts["last_conv"]``). An *epoch*
here is ``--batches`` optimiser steps over distinct host batches that are put
on the device one at a time, as :func:`jaxbias.train.fit` does; every step is
one jitted call with the state donated, compiled ahead of time (compile time
reported separately, never inside an epoch).

Methods: Vanilla (cross-entropy), RRR (l2 form, λ = 1, a corner mask on half
of the images), RR-ClArC (random signs, l2, λ = 1), P-ClArC / A-ClArC (the
pooled projection / shift at the latent layer), EnD (α = 1, β = 0.5 on the
pooled features). The ClArC CAVs are fitted once on the first batch. Epochs
are timed round-robin (Vanilla, RRR, ..., Vanilla, RRR, ...) so that every
method sees the same machine load; each ratio is the method's median epoch
over Vanilla's median epoch *on the same model in the same run*.

With PyTorch and torchvision importable (optional, ``--torch auto``), the
same protocol runs in PyTorch in the same process on torchvision's models
(requires_grad only on the linear layers, ``model.eval()``; RR-ClArC as the
released code computes it: the latent gradient by ``autograd.grad(...,
create_graph=True)`` dotted with the CAV; RRR with a double backward), so
that JAX ÷ PyTorch is a ratio from one run.

Usage::

    python benchmarks/seconds_per_epoch.py [--resolution 64] [--batches 4] [--repeats 3]
        [--models vgg16,resnet18,efficientnet_b0] [--methods rrr,rrclarc,pclarc,aclarc,end]
        [--torch auto|on|off] [--tag cpu]

On a GPU use the paper's resolution: ``--resolution 224 --batches 20 --tag <gpu>``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

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

from _common import md_table, torch_available, write_results  # noqa: E402

from jaxbias import methods, models  # noqa: E402
from jaxbias.train import create_train_state, freeze, make_train_step, method_loss  # noqa: E402
from jaxbias.types import Batch  # noqa: E402

MODELS = ("vgg16", "resnet18", "efficientnet_b0")
METHODS = ("vanilla", "rrr", "rrclarc", "pclarc", "aclarc", "end")
LR = 1e-4

#: The paper's PyTorch overheads relative to Vanilla (Table A.6, one GPU, 224×224).
PAPER = {
    "vgg16": {"rrr": "1.49–1.99", "rrclarc": "1.02–1.67", "pclarc": "≈1.00", "aclarc": "1.00–1.07"},
    "resnet18": {"rrr": "1.06–1.54", "rrclarc": "1.00–1.29", "pclarc": "≈1.00", "aclarc": "≈1.00"},
    "efficientnet_b0": {"rrr": "4.2–13.2", "rrclarc": "1.01–1.54", "pclarc": "≈1.00", "aclarc": "≈1.00"},
}
#: Targets of the issue (ratio to Vanilla on the same model, same run).
TARGETS = {"rrclarc": 1.05, "pclarc": 1.02, "aclarc": 1.02, "rrr": 2.5}


def hparams(method: str, module) -> Any:
    mod = methods.get(method)
    layer = type(module).latent_layer
    if method == "vanilla":
        return mod.Hparams()
    if method == "rrr":
        return mod.Hparams(lam=1.0)
    if method == "rrclarc":
        return mod.Hparams(lam=1.0, layer=layer)
    if method in ("pclarc", "aclarc"):
        return mod.Hparams(layer=layer)
    if method == "end":
        return mod.Hparams(alpha=1.0, beta=0.5, layer="features", num_biases=2, num_classes=module.num_classes)
    raise ValueError(f"method {method!r} is not part of this benchmark; expected one of {METHODS}")


def make_batches(n: int, batch: int, resolution: int, num_classes: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` host batches: uniform images, labels, a binary attribute, and a corner mask where it is 1."""
    rng = np.random.default_rng(seed)
    out = []
    side = max(resolution // 8, 2)
    for _ in range(n):
        bias = (rng.permutation(batch) % 2).astype(np.int32)
        mask = np.zeros((batch, resolution, resolution), np.float32)
        mask[bias == 1, :side, :side] = 1.0
        x = rng.uniform(0.0, 1.0, size=(batch, resolution, resolution, 3)).astype(np.float32)
        # a visible artifact where the mask is, so the CAVs have a concept to find
        x[bias == 1, :side, :side, :] = 1.0
        out.append({"x": x, "y": rng.integers(0, num_classes, size=batch).astype(np.int32), "bias": bias, "mask": mask})
    return out


# ----------------------------------------------------------------------------- JAX


class JaxRunner:
    """One model, every method compiled once; ``epoch(method)`` runs ``len(batches)`` steps."""

    def __init__(self, name: str, *, resolution: int, num_classes: int, batches: list[dict[str, np.ndarray]],
                 method_names: list[str]):
        self.module = models.create(name, num_classes=num_classes)
        cls = type(self.module)
        x0 = jnp.asarray(batches[0]["x"])
        params, model_state = models.init(self.module, jax.random.key(0), x0[:1])
        self.n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
        self.n_trained = sum(int(np.prod(p.shape)) for g in cls.linear_groups for p in jax.tree.leaves(params[g]))
        self.tx = freeze(optax.adam(LR), params, trainable=cls.linear_groups)
        self.batches = batches
        eval_model = models.bind(self.module, model_state, train=False)
        first = Batch(*(jnp.asarray(batches[0][k]) for k in ("x", "y", "bias", "mask")))
        self.steps: dict[str, Callable] = {}
        self.method_states: dict[str, Any] = {}
        self.compile_s: dict[str, float] = {}
        # One parameter/optimiser state shared by all methods (each epoch continues from the last one):
        # six copies of VGG-16 with Adam moments would not fit a 24 GB machine.
        self.state = create_train_state(params, model_state, self.tx, key=jax.random.key(1), method_state=())
        for m in method_names:
            mod = methods.get(m)
            hp = hparams(m, self.module)
            self.method_states[m] = mod.init(eval_model, params, first, hp=hp)
            step = jax.jit(make_train_step(method_loss(mod, self.module, hp, train=False), self.tx), donate_argnums=0)
            t0 = time.perf_counter()
            self.steps[m] = step.lower(self.state.replace(method_state=self.method_states[m]), first).compile()
            self.compile_s[m] = time.perf_counter() - t0

    def epoch(self, m: str) -> float:
        # a copy of the method's state (CAV, ...): the step donates its whole input state
        step, state = self.steps[m], self.state.replace(method_state=jax.tree.map(jnp.array, self.method_states[m]))
        t0 = time.perf_counter()
        for b in self.batches:
            batch = Batch(*(jnp.asarray(b[k]) for k in ("x", "y", "bias", "mask")))
            state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        dt = time.perf_counter() - t0
        if not np.isfinite(float(metrics["loss"])):
            raise RuntimeError(f"JAX {m} produced a non-finite loss: {metrics}")
        self.state = state.replace(method_state=())
        return dt


# ----------------------------------------------------------------------------- PyTorch


class TorchRunner:
    """The same protocol on torchvision's model, written as the released PyTorch code does it."""

    def __init__(self, name: str, *, resolution: int, num_classes: int, batches: list[dict[str, np.ndarray]],
                 method_names: list[str]):
        import torch
        import torchvision

        torch.manual_seed(0)
        self.torch = torch
        self.model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes).eval()
        for mod in self.model.modules():
            for p in mod.parameters(recurse=False):
                p.requires_grad_(isinstance(mod, torch.nn.Linear))
        self.latent = {"vgg16": lambda m: m.features[29], "resnet18": lambda m: m.layer4,
                       "efficientnet_b0": lambda m: m.features[8]}[name](self.model)
        self.head = {"vgg16": lambda m: m.classifier, "resnet18": lambda m: m.fc,
                     "efficientnet_b0": lambda m: m.classifier}[name](self.model)
        self.batches = [{k: torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2) if k == "x" else v))
                         for k, v in b.items()} for b in batches]
        self.method_names = method_names
        # one optimiser for all methods (as in the JAX runner: one set of Adam moments)
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=LR)
        self._hook_fn = None
        self._feats = None
        self.latent.register_forward_hook(lambda mod, inp, out: self._hook_fn(out) if self._hook_fn else None)
        self.head.register_forward_pre_hook(self._grab_features)
        self.cav, self.z_plus, self.z_minus = self._fit_cav(self.batches[0])

    def _grab_features(self, mod, inp):
        self._feats = inp[0]

    def _fit_cav(self, b):
        torch = self.torch
        acts = {}

        def keep(out):
            acts["a"] = out.detach()
            return None

        self._hook_fn = keep
        with torch.no_grad():
            self.model(b["x"])
        self._hook_fn = None
        pooled = acts["a"].amax(dim=(2, 3))
        c = b["bias"].float()
        # the signal CAV: the covariance of activations with the concept label, normalised
        h = ((pooled - pooled.mean(0)) * (c - c.mean())[:, None]).mean(0)
        h = h / h.norm().clamp_min(1e-12)
        proj = pooled @ h
        return h, proj[c == 1].mean(), proj[c == 0].mean()

    def _shift(self, target):
        h = self.cav

        def edit(a):
            pooled = a.amax(dim=(2, 3))
            shift = ((target - pooled @ h) / (h @ h))[:, None] * h
            return a + shift[:, :, None, None]

        return edit

    def _loss(self, m: str, b) -> Any:
        torch = self.torch
        F = torch.nn.functional
        x, y = b["x"], b["y"].long()
        if m == "vanilla":
            return F.cross_entropy(self.model(x), y)
        if m in ("pclarc", "aclarc"):
            self._hook_fn = self._shift(self.z_minus if m == "pclarc" else self.z_plus)
            try:
                return F.cross_entropy(self.model(x), y)
            finally:
                self._hook_fn = None
        if m == "rrr":
            x = x.clone().requires_grad_(True)
            logits = self.model(x)
            g, = torch.autograd.grad(F.log_softmax(logits, -1).sum(), x, create_graph=True)
            pen = ((b["mask"][:, None] * g) ** 2).flatten(1).sum(1).mean()
            return F.cross_entropy(logits, y) + 1.0 * pen
        if m == "rrclarc":
            held = {}

            def leaf(out):
                out = out.detach().requires_grad_(True)
                held["a"] = out
                return out

            self._hook_fn = leaf
            try:
                logits = self.model(x)
            finally:
                self._hook_fn = None
            signs = torch.randint(0, 2, logits.shape).float() * 2 - 1
            g, = torch.autograd.grad((signs * logits).sum(), held["a"], create_graph=True)
            s = g.mean(dim=(2, 3)) @ self.cav
            return F.cross_entropy(logits, y) + 1.0 * (s**2).mean()
        if m == "end":
            logits = self.model(x)
            f = F.normalize(self._feats.flatten(1), dim=1)
            gram = f @ f.T
            bias, t = b["bias"], b["y"]
            n = gram.shape[0]
            lower = torch.tril(torch.ones(n, n, dtype=torch.bool), diagonal=-1)
            same_b = bias[:, None] == bias[None, :]
            pair_perp = lower & same_b
            r = torch.where(pair_perp, gram, torch.zeros(())).sum(1)
            s = same_b.float() @ r
            r_perp = (s.abs() / same_b.sum(1).float()).sum() / pair_perp.sum().clamp_min(1)
            pair_par = lower & (t[:, None] == t[None, :]) & (bias[:, None] < bias[None, :])
            r_par = 1 - torch.where(pair_par, (1 + gram) / 2, torch.zeros(())).sum() / pair_par.sum().clamp_min(1)
            return F.cross_entropy(logits, y) + 1.0 * r_perp + 0.5 * r_par
        raise ValueError(f"method {m!r} has no PyTorch version here")

    def epoch(self, m: str) -> float:
        opt = self.opt
        t0 = time.perf_counter()
        for b in self.batches:
            opt.zero_grad(set_to_none=True)
            loss = self._loss(m, b)
            loss.backward()
            opt.step()
        dt = time.perf_counter() - t0
        if not np.isfinite(float(loss.detach())):
            raise RuntimeError(f"PyTorch {m} produced a non-finite loss")
        return dt


# ----------------------------------------------------------------------------- driver


def measure(name: str, args, method_names: list[str], use_torch: bool) -> list[dict[str, Any]]:
    batches = make_batches(args.batches, args.batch_size, args.resolution, args.num_classes)
    runners: dict[str, Any] = {}
    t0 = time.perf_counter()
    runners["jax"] = JaxRunner(name, resolution=args.resolution, num_classes=args.num_classes, batches=batches,
                               method_names=method_names)
    print(f"  jax: compiled {len(method_names)} steps in {time.perf_counter() - t0:.1f} s", flush=True)
    if use_torch:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        runners["torch"] = TorchRunner(name, resolution=args.resolution, num_classes=args.num_classes,
                                       batches=batches, method_names=method_names)
    times = {(fw, m): [] for fw in runners for m in method_names}
    for _ in range(args.warmup):
        for fw, r in runners.items():
            for m in method_names:
                r.epoch(m)
    for rep in range(args.repeats):
        for fw, r in runners.items():
            # XLA's and PyTorch's thread pools keep spinning for a moment after their last op; a pause
            # at each framework switch keeps one from slowing the other's first method down.
            time.sleep(args.pause)
            for m in method_names:
                times[fw, m].append(r.epoch(m))
        print(f"  round {rep + 1}/{args.repeats}: " + ", ".join(
            f"{fw}:{m} {times[fw, m][-1]:.2f}s" for fw in runners for m in method_names), flush=True)
    rows = []
    jr = runners["jax"]
    for fw in runners:
        van = statistics.median(times[fw, "vanilla"])
        for m in method_names:
            med = statistics.median(times[fw, m])
            row = {
                "model": name, "framework": fw, "method": m, "resolution": args.resolution,
                "batch_size": args.batch_size, "batches_per_epoch": args.batches, "num_classes": args.num_classes,
                "epoch_s": med, "step_s": med / args.batches, "ratio_to_vanilla": med / van,
                "median_round_ratio": statistics.median(t / v for t, v in zip(times[fw, m], times[fw, "vanilla"])),
                "times_s": times[fw, m],
                "compile_s": jr.compile_s[m] if fw == "jax" else None,
                "params": jr.n_params, "trained_params": jr.n_trained,
                "target": TARGETS.get(m), "paper": PAPER[name].get(m),
            }
            if fw == "jax" and "torch" in runners:
                row["jax_over_torch"] = med / statistics.median(times["torch", m])
            rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--tag", default="cpu", help="suffix of the result files")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default=",".join(METHODS[1:]), help="compared with vanilla (always run)")
    parser.add_argument("--resolution", type=int, default=64, help="image side (the paper: 224; CPU default 64)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4, help="optimiser steps per timed epoch")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs per method first")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds of idle time at each framework switch")
    parser.add_argument("--torch", default="auto", choices=("auto", "on", "off"),
                        help="also run the protocol in PyTorch/torchvision (auto: when importable)")
    args = parser.parse_args(argv)
    names = ["vanilla", *[m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "vanilla"]]
    for m in names:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown method {m!r}; expected some of {METHODS}")
    model_names = [m.strip() for m in args.models.split(",") if m.strip()]
    use_torch = args.torch == "on" or (args.torch == "auto" and torch_available())
    if args.torch == "on" and not torch_available():
        raise SystemExit("--torch on: PyTorch and torchvision are not importable")

    rows = []
    for name in model_names:
        print(f"[seconds_per_epoch] {name} @ {args.resolution}px, batch {args.batch_size}, {args.batches} batches",
              flush=True)
        rows += measure(name, args, names, use_torch)
    headers = ["model", "method", "JAX s/epoch", "JAX ÷ Vanilla", "target", "paper (PyTorch, GPU)", "compile (s)"]
    if use_torch:
        headers[4:4] = ["PyTorch s/epoch", "PyTorch ÷ Vanilla", "JAX ÷ PyTorch"]
    table_rows = []
    for r in rows:
        if r["framework"] != "jax":
            continue
        line = [r["model"], r["method"], r["epoch_s"], r["ratio_to_vanilla"]]
        if use_torch:
            t = next(q for q in rows if q["framework"] == "torch" and q["model"] == r["model"]
                     and q["method"] == r["method"])
            line += [t["epoch_s"], t["ratio_to_vanilla"], r["jax_over_torch"]]
        line += [f"≤ {r['target']}" if r["target"] else "–", r["paper"] or "–", r["compile_s"]]
        table_rows.append(line)
    notes = (
        f"Table A.6 protocol: conv and batch-norm frozen (evaluation mode), linear layers trained with Adam "
        f"(lr {LR}), batch {args.batch_size}, {args.resolution}×{args.resolution}×3 inputs, {args.num_classes} "
        f"classes, random weights, latent layer = the last conv layer. An epoch = {args.batches} steps over distinct "
        f"host batches; after {args.warmup} warm-up epoch(s), {args.repeats} epochs per method timed round-robin; "
        f"medians. Ratios are to Vanilla on the same model and framework in this run. "
        + ("PyTorch: torchvision models, same protocol, same process, "
           f"torch.set_num_threads({os.cpu_count()})." if use_torch else "PyTorch was not importable: JAX only.")
    )
    settings = {"settings": {k: v for k, v in vars(args).items()}, "torch": use_torch}
    if use_torch:
        import torch

        settings["torch_version"] = torch.__version__
    paths = write_results("seconds_per_epoch", args.tag, rows, md_table(headers, table_rows), args.out,
                          extra=settings, notes=notes)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
