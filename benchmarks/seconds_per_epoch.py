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
that JAX ÷ PyTorch is a ratio from one run. Without torchvision, ResNet-18 runs on the hand-written
``benchmarks/_torch_resnet.py`` (torchvision's layout and parameter count); the other models then run in JAX only.

**Data read from disk** (``--data folder:PATH``; generated there first when PATH has no ``meta.csv``): the
paper's epochs are bound by the input pipeline, not the network. Each timed epoch then takes its ``--batches``
batches of 64 from the folder (a shuffled order per epoch; epochs may reuse images) through the whole 224-px
pipeline of ``benchmarks/input_pipeline.py`` (decode, resize, a timestamp drawn into class-0 images with
p = 0.5, ImageNet normalisation), with ``--workers`` decode workers: JAX reads the ``folder`` dataset's
``LazyImages`` through :func:`jaxbias.data.lazy.prefetched` (threads) and normalises on the device; PyTorch
reads a ``DataLoader`` over the released code's PIL ``__getitem__`` (processes). Reported per framework and
method: the median epoch, the share of it spent waiting for data (time blocked fetching the next batch,
starting the workers included, over the epoch; the JAX side waits for the fetched batch to be on the device
and for each step's outputs before the next fetch, so no step's work hides in asynchronous dispatch), and the
compute-only epoch on the same number of in-memory synthetic batches beside it. Results go to
``seconds_per_epoch_disk_<tag>``.

Usage::

    python benchmarks/seconds_per_epoch.py [--resolution 64] [--batches 4] [--repeats 3]
        [--models vgg16,resnet18,efficientnet_b0] [--methods rrr,rrclarc,pclarc,aclarc,end]
        [--torch auto|on|off] [--tag cpu] [--data synthetic|folder:PATH] [--workers 2]

On a GPU use the paper's resolution: ``--resolution 224 --batches 20 --tag <gpu>``. From disk (224 px)::

    python benchmarks/seconds_per_epoch.py --data folder:/tmp/photos --models resnet18 --methods rrclarc \
        --batches 3 --repeats 2 --warmup 1
"""
from __future__ import annotations

import argparse
import contextlib
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
from input_pipeline import BATCH, SIZE, _normalise, _torch_dataset, carriers, epoch_rows, jaxbias_train, \
    write_folder  # noqa: E402

from jaxbias import methods, models  # noqa: E402
from jaxbias.train import create_train_state, freeze, make_train_step, method_loss  # noqa: E402
from jaxbias.types import Batch  # noqa: E402

MODELS = ("vgg16", "resnet18", "efficientnet_b0")
METHODS = ("vanilla", "rrr", "rrclarc", "pclarc", "aclarc", "end")
LR = 1e-4
#: Models with a hand-written PyTorch version here, used when torchvision does not import.
TORCH_FALLBACK = ("resnet18",)

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


def corner_mask(bias: np.ndarray, resolution: int) -> np.ndarray:
    """The RRR mask of :func:`make_batches`: a corner where ``bias`` is 1."""
    mask = np.zeros((len(bias), resolution, resolution), np.float32)
    mask[bias == 1, :max(resolution // 8, 2), :max(resolution // 8, 2)] = 1.0
    return mask


def parse_data(value: str) -> Path | None:
    """``synthetic`` → ``None``; ``folder:PATH`` → PATH."""
    if value == "synthetic":
        return None
    if value.startswith("folder:") and value[len("folder:"):]:
        return Path(value[len("folder:"):]).expanduser()
    raise SystemExit(f"--data: expected 'synthetic' or 'folder:PATH'; got {value!r}")


class Disk:
    """A folder of JPEGs read by both frameworks' input pipelines; ``rows(e)`` = epoch ``e``'s batches of indices."""

    def __init__(self, root: Path, *, batches: int, workers: int, images: int, width: int, height: int):
        meta = root / "meta.csv"
        if not meta.exists():
            if root.exists() and any(root.iterdir()):
                raise SystemExit(f"--data folder:{root}: the folder has no meta.csv (and is not empty: not "
                                 "writing a generated one into it)")
            t0 = time.perf_counter()
            write_folder(root, images, width, height)
            print(f"  wrote {images} JPEGs of {width}×{height} to {root} in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        from jaxbias.data.folder import open_folder

        try:
            table = open_folder(root, meta, image_size=SIZE)
        except ValueError as e:
            raise SystemExit(f"--data folder:{root}: {e}") from None
        self.paths, self.labels = list(table.paths), np.asarray(table.labels, np.int32)
        self.carry = carriers(self.labels)
        if len(self.paths) < batches * BATCH:
            raise SystemExit(f"--data folder:{root}: {len(self.paths)} images, fewer than --batches {batches} × "
                             f"{BATCH}")
        self.root, self.batches, self.workers = root, batches, workers
        self.jax_x = jaxbias_train(meta, workers, "full", self.carry).x  # LazyImages: float32 in [0, 1]
        self.torch_ds = _torch_dataset(self.paths, self.labels, self.carry)

    def rows(self, epoch: int) -> list[np.ndarray]:
        return epoch_rows(len(self.paths), epoch)[:self.batches]

    def extras(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels, the artifact attribute (whether the pipeline drew the timestamp) and the RRR corner mask."""
        bias = self.carry[idx].astype(np.int32)
        return self.labels[idx], bias, corner_mask(bias, SIZE)


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

    def disk_epoch(self, m: str, disk: Disk, epoch: int) -> tuple[float, float]:
        """Seconds of one epoch read from ``disk``, and the seconds of it spent waiting for data."""
        from jaxbias.data.lazy import prefetched

        def read(idx):
            y, bias, mask = disk.extras(idx)
            return Batch(_normalise(jax.device_put(disk.jax_x[idx])), *(jax.device_put(a) for a in (y, bias, mask)))

        step, state = self.steps[m], self.state.replace(method_state=jax.tree.map(jnp.array, self.method_states[m]))
        jax.block_until_ready(state)
        t0, wait = time.perf_counter(), 0.0
        with contextlib.closing(prefetched(read, disk.rows(epoch), workers=disk.workers)) as batches:
            while True:
                tw = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                jax.block_until_ready(batch)  # decoded, placed and normalised: the data is ready
                wait += time.perf_counter() - tw
                state, metrics = step(state, batch)
                jax.block_until_ready((state, metrics))  # the step's work is inside the step's time
        wait += time.perf_counter() - tw  # the end of the iterator, its threads stopped
        dt = time.perf_counter() - t0
        if not np.isfinite(float(metrics["loss"])):
            raise RuntimeError(f"JAX {m} produced a non-finite loss on disk data: {metrics}")
        self.state = state.replace(method_state=())
        return dt, wait


# ----------------------------------------------------------------------------- PyTorch


class TorchRunner:
    """The same protocol on torchvision's model (or the hand-written ResNet-18), as the released PyTorch code does it."""

    def __init__(self, name: str, *, resolution: int, num_classes: int, batches: list[dict[str, np.ndarray]],
                 method_names: list[str]):
        import torch

        torch.manual_seed(0)
        self.torch = torch
        self.model_source, build = torch_model(name)
        self.model = build(weights=None, num_classes=num_classes).eval()
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

    def disk_epoch(self, m: str, disk: Disk, epoch: int) -> tuple[float, float]:
        """Seconds of one epoch through the DataLoader over ``disk``, and the seconds spent waiting in it."""
        torch = self.torch
        rows = disk.rows(epoch)
        loader = torch.utils.data.DataLoader(disk.torch_ds, batch_size=BATCH, sampler=[int(i) for r in rows for i in r],
                                             num_workers=disk.workers)
        opt = self.opt
        t0 = time.perf_counter()
        it = iter(loader)  # starts the worker processes: counted as waiting
        wait = time.perf_counter() - t0
        for idx in rows:
            tw = time.perf_counter()
            x, y = next(it)
            wait += time.perf_counter() - tw
            _, bias, mask = disk.extras(idx)
            b = {"x": x, "y": y, "bias": torch.from_numpy(bias), "mask": torch.from_numpy(mask)}
            opt.zero_grad(set_to_none=True)
            loss = self._loss(m, b)
            loss.backward()
            opt.step()
        tw = time.perf_counter()
        del it  # the workers shut down, as at the end of a DataLoader epoch
        wait += time.perf_counter() - tw
        dt = time.perf_counter() - t0
        if not np.isfinite(float(loss.detach())):
            raise RuntimeError(f"PyTorch {m} produced a non-finite loss on disk data")
        return dt, wait


def torch_model(name: str) -> tuple[str, Callable]:
    """(where it comes from, the constructor) of ``name`` in PyTorch: torchvision's, else the hand-written one."""
    try:
        import torchvision

        return "torchvision", getattr(torchvision.models, name)
    except Exception:  # not installed, or a build that does not load with this torch
        if name not in TORCH_FALLBACK:
            raise
    from _torch_resnet import resnet18

    return "hand-written (benchmarks/_torch_resnet.py)", resnet18


def torch_importable() -> bool:
    import importlib

    try:
        importlib.import_module("torch")
    except Exception:
        return False
    return True


# ----------------------------------------------------------------------------- driver


def make_runners(name: str, args, method_names: list[str], use_torch: bool) -> dict[str, Any]:
    """The JAX runner (its steps compiled) and, with ``use_torch``, the PyTorch one, on the same synthetic batches."""
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
        print(f"  torch: {runners['torch'].model_source} model", flush=True)
    return runners


def measure(name: str, args, method_names: list[str], use_torch: bool, disk: Disk | None = None
            ) -> list[dict[str, Any]]:
    if disk is not None:
        return measure_disk(name, args, method_names, use_torch, disk)
    runners = make_runners(name, args, method_names, use_torch)
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


def measure_disk(name: str, args, method_names: list[str], use_torch: bool, disk: Disk) -> list[dict[str, Any]]:
    """Per framework and method: epochs read from ``disk`` and compute-only epochs, timed round-robin."""
    runners = make_runners(name, args, method_names, use_torch)
    keys = [(fw, m) for fw in runners for m in method_names]
    disk_s = {k: [] for k in keys}
    wait_s = {k: [] for k in keys}
    memory_s = {k: [] for k in keys}
    epoch = {fw: 0 for fw in runners}  # both frameworks read the same sequence of epochs' rows

    def one_round(record: bool) -> None:
        for fw, r in runners.items():
            time.sleep(args.pause)
            for m in method_names:
                dt, wait = r.disk_epoch(m, disk, epoch[fw])
                epoch[fw] += 1
                mem = r.epoch(m)
                if record:
                    disk_s[fw, m].append(dt)
                    wait_s[fw, m].append(wait)
                    memory_s[fw, m].append(mem)

    for _ in range(args.warmup):
        one_round(False)
    for rep in range(args.repeats):
        one_round(True)
        print(f"  round {rep + 1}/{args.repeats}: " + ", ".join(
            f"{fw}:{m} disk {disk_s[fw, m][-1]:.2f}s (waiting {wait_s[fw, m][-1]:.2f}s), memory "
            f"{memory_s[fw, m][-1]:.2f}s" for fw, m in keys), flush=True)
    rows = []
    jr = runners["jax"]
    for fw in runners:
        van = statistics.median(disk_s[fw, "vanilla"])
        for m in method_names:
            med = statistics.median(disk_s[fw, m])
            row = {
                "model": name, "framework": fw, "method": m, "data": f"folder:{disk.root}", "workers": disk.workers,
                "resolution": args.resolution, "batch_size": args.batch_size, "batches_per_epoch": args.batches,
                "num_classes": args.num_classes,
                "epoch_s": med, "wait_s": statistics.median(wait_s[fw, m]),
                "wait_share": statistics.median(w / t for w, t in zip(wait_s[fw, m], disk_s[fw, m])),
                "compute_epoch_s": statistics.median(memory_s[fw, m]),
                "ratio_to_vanilla": med / van,
                "times_s": disk_s[fw, m], "wait_times_s": wait_s[fw, m], "compute_times_s": memory_s[fw, m],
                "compile_s": jr.compile_s[m] if fw == "jax" else None,
                "torch_model": runners[fw].model_source if fw == "torch" else None,
                "params": jr.n_params, "trained_params": jr.n_trained,
            }
            if fw == "jax" and "torch" in runners:
                row["jax_over_torch"] = med / statistics.median(disk_s["torch", m])
            rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--tag", default="cpu", help="suffix of the result files")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default=",".join(METHODS[1:]), help="compared with vanilla (always run)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="image side (the paper: 224; default 64, and 224 with --data folder:PATH)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4, help="optimiser steps per timed epoch")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs per method first")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds of idle time at each framework switch")
    parser.add_argument("--torch", default="auto", choices=("auto", "on", "off"),
                        help="also run the protocol in PyTorch/torchvision (auto: when importable)")
    parser.add_argument("--data", default="synthetic",
                        help="synthetic (in-memory batches) or folder:PATH (a folder of JPEGs with meta.csv, read "
                             "through the input pipeline; generated there when PATH has no meta.csv)")
    parser.add_argument("--workers", type=int, default=2, help="decode workers of each framework (--data folder)")
    parser.add_argument("--images", type=int, default=1000, help="images of a generated folder (--data folder)")
    parser.add_argument("--width", type=int, default=600, help="width of a generated folder's images")
    parser.add_argument("--height", type=int, default=450, help="height of a generated folder's images")
    args = parser.parse_args(argv)
    folder = parse_data(args.data)
    if args.resolution is None:
        args.resolution = 64 if folder is None else SIZE
    if folder is not None and (args.resolution != SIZE or args.batch_size != BATCH):
        raise SystemExit(f"--data folder:PATH: the input pipeline gives {SIZE}-px images in batches of {BATCH}; "
                         f"got --resolution {args.resolution} --batch-size {args.batch_size}")
    if folder is not None and args.workers < 1:
        raise SystemExit(f"--workers: at least 1 decode worker; got {args.workers}")
    names = ["vanilla", *[m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "vanilla"]]
    for m in names:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown method {m!r}; expected some of {METHODS}")
    model_names = [m.strip() for m in args.models.split(",") if m.strip()]
    # PyTorch runs with torchvision, or without it when every model has a hand-written version here
    torch_ok = torch_available() or (torch_importable() and all(m in TORCH_FALLBACK for m in model_names))
    use_torch = args.torch == "on" or (args.torch == "auto" and torch_ok)
    if args.torch == "on" and not torch_ok:
        raise SystemExit("--torch on: PyTorch and torchvision are not importable (without torchvision only "
                         f"{', '.join(TORCH_FALLBACK)} has a PyTorch version here)")
    disk = None
    if folder is not None:
        disk = Disk(folder, batches=args.batches, workers=args.workers, images=args.images, width=args.width,
                    height=args.height)

    rows = []
    for name in model_names:
        print(f"[seconds_per_epoch] {name} @ {args.resolution}px, batch {args.batch_size}, {args.batches} batches"
              + (f", from {args.data} with {args.workers} workers" if disk else ""), flush=True)
        rows += measure(name, args, names, use_torch, disk)
    if disk is not None:
        write_disk(args, rows, use_torch)
        return
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
        + (f"PyTorch: {', '.join(sorted({torch_model(n)[0] for n in model_names}))} models, same protocol, same "
           f"process, torch.set_num_threads({os.cpu_count()})." if use_torch else "PyTorch was not importable: JAX only.")
    )
    settings = {"settings": {k: v for k, v in vars(args).items()}, "torch": use_torch}
    if use_torch:
        import torch

        settings["torch_version"] = torch.__version__
    paths = write_results("seconds_per_epoch", args.tag, rows, md_table(headers, table_rows), args.out,
                          extra=settings, notes=notes)
    print("wrote", *paths)


def write_disk(args, rows: list[dict[str, Any]], use_torch: bool) -> None:
    headers = ["model", "framework", "method", "s/epoch from disk", "waiting for data", "share waiting",
               "s/epoch in memory", "disk − memory (s)", "÷ Vanilla (disk)", "JAX ÷ PyTorch (disk)"]
    table_rows = [[r["model"], {"jax": "JAX", "torch": "PyTorch"}[r["framework"]], r["method"], r["epoch_s"],
                   r["wait_s"], f"{r['wait_share']:.0%}", r["compute_epoch_s"], r["epoch_s"] - r["compute_epoch_s"],
                   r["ratio_to_vanilla"], r.get("jax_over_torch")] for r in rows]
    torch_source = next((r["torch_model"] for r in rows if r["torch_model"]), None)
    command = "python benchmarks/seconds_per_epoch.py " + " ".join(sys.argv[1:])
    notes = (
        f"Command: `{command}`\n\n"
        f"Table A.6 protocol with data read from disk: conv and batch-norm frozen (evaluation mode), linear layers "
        f"trained with Adam (lr {LR}), batch {args.batch_size}, {args.resolution}×{args.resolution}×3, "
        f"{args.num_classes} classes, random weights. An epoch = {args.batches} batches read from `{args.data}` "
        f"through the input pipeline of `benchmarks/input_pipeline.py` (JPEG decode, resize to 224, timestamp into "
        f"class 0 with p = 0.5, ImageNet normalisation; a shuffled order per epoch, epochs reuse images; the files "
        f"are in the page cache after the warm-up) with {args.workers} decode workers per framework: JAX = the "
        f"`folder` dataset's LazyImages through `jaxbias.data.lazy.prefetched` (threads), normalised on the "
        f"device; PyTorch = a DataLoader (processes) over a PIL `__getitem__`. *Waiting for data* = time blocked "
        f"fetching the next batch (worker start and shutdown included); the JAX side blocks on each fetched batch "
        f"and on each step's outputs, so no work hides in asynchronous dispatch (this costs JAX the overlap of a "
        f"step with the dispatch of the next). *In memory* = the same number of steps on synthetic host batches "
        f"already in memory (put on the device per step), the compute-only epoch. After {args.warmup} warm-up "
        f"round(s), {args.repeats} rounds, each: per framework, per method, one disk epoch then one in-memory "
        f"epoch; medians (the share is the median of per-epoch shares). "
        + (f"PyTorch model: {torch_source}; torch.set_num_threads({os.cpu_count()}), same process."
           if use_torch else "PyTorch was not importable: JAX only.")
    )
    settings = {"settings": {k: v for k, v in vars(args).items()}, "torch": use_torch, "command": command}
    if use_torch:
        import torch

        settings["torch_version"] = torch.__version__
    paths = write_results("seconds_per_epoch_disk", args.tag, rows, md_table(headers, table_rows), args.out,
                          extra=settings, notes=notes)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
