"""Data parallelism (jaxbias.training.parallel and ``fit(mesh=...)``) on 8 simulated CPU devices.

``--xla_force_host_platform_device_count`` only takes effect before JAX starts,
so every 8-device check runs in ONE subprocess (this file run as a script,
``python tests/test_parallel.py``) that prints its measurements as JSON; the
tests below assert on them. The reference for each sharded run is the same
``fit`` call without a mesh, in the same subprocess (device 0 alone).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxbias.models.conv import use_fast_cpu_conv
from jaxbias.types import Batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 8
MARK = "@@PARALLEL_JSON@@"


# --------------------------------------------------------------------------- worker (8 devices)


def _probe_method(base):
    """A method module that behaves like ``base`` and records, while compiling, how ``batch.x`` is sharded."""
    import types

    import jax

    mod = types.ModuleType("probe_" + base.__name__.rsplit(".", 1)[-1])
    mod.KIND, mod.Hparams, mod.State, mod.init = base.KIND, base.Hparams, base.State, base.init
    mod.traces, mod.shardings = [], []

    def loss(params, state, batch, key, *, model, hp):
        mod.traces.append(1)  # runs only while tracing: one entry per compilation
        jax.debug.inspect_array_sharding(batch.x, callback=lambda s: mod.shardings.append(s))
        return base.loss(params, state, batch, key, model=model, hp=hp)

    mod.loss = loss
    return mod


def _worker() -> dict:
    import shutil
    import tempfile

    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxbias import models
    from jaxbias.training import parallel
    from jaxbias.methods import rrr, vanilla
    from jaxbias.train import create_train_state, fit, make_optimizer, make_train_step, method_loss
    from jaxbias.types import Batch

    out: dict = {"device_count": jax.device_count()}
    rng = np.random.default_rng(0)
    n, hw, bs = 256, 12, 64
    x = rng.uniform(size=(n, hw, hw, 3)).astype(np.float32)
    # labels from the input, so that the loss really moves
    y = (x[..., 0].mean(axis=(1, 2)) > np.median(x[..., 0].mean(axis=(1, 2)))).astype(np.int32)
    mask = np.zeros((n, hw, hw), bool)
    mask[:, :3, :3] = True
    train = Batch(x, y, None, mask)
    mesh = parallel.make_mesh(DEVICES)

    # -- shard_batch: the placement itself
    b = parallel.shard_batch(Batch(x[:bs], y[:bs], None, mask[:bs]), mesh)
    out["shard_batch"] = {
        "named": isinstance(b.x.sharding, NamedSharding) and isinstance(b.mask.sharding, NamedSharding),
        "spec_is_P_data": b.x.sharding.spec == P("data") and b.y.sharding.spec == P("data"),
        "spec": str(b.x.sharding.spec),
        "bias_is_none": b.bias is None,
        "rows_per_shard": sorted({int(s.data.shape[0]) for s in b.x.addressable_shards}),
        "num_shards": len(b.x.addressable_shards),
        "shard_devices": len({s.device for s in b.x.addressable_shards}),
        "shards_concat_equal": bool(
            np.array_equal(np.concatenate([np.asarray(s.data) for s in sorted(b.x.addressable_shards,
                                                                              key=lambda s: s.index[0].start)]), x[:bs])
        ),
    }

    # -- the compiled step's shardings
    module = models.create("simple_conv", channels=(4, 8, 8, 8), kernel_size=3, num_classes=2)
    params, ms = models.init(module, jax.random.key(0), x[:1])
    tx = make_optimizer(lr=1e-2, weight_decay=1e-4, steps_per_epoch=n // bs, decay_every=2)
    state = parallel.replicate(
        create_train_state(params, ms, tx, key=jax.random.key(1), method_state=vanilla.State()), mesh
    )
    step = parallel.jit_step(make_train_step(method_loss(vanilla, module, vanilla.Hparams()), tx), mesh)
    compiled = step.lower(state, b).compile()
    state_in, batch_in = compiled.input_shardings[0]
    traced = str(step.trace(state, b).jaxpr)
    out["mesh_step_traces_xla_conv"] = "jaxbias_conv" not in traced and "conv_general_dilated" in traced

    # the CPU convolution itself stays correct on a sharded batch (plain jit; first and second order)
    def first(p, xb):
        return jax.grad(lambda p: jnp.sum(jax.nn.log_softmax(module.apply({"params": p, **ms}, xb, train=False)[0])[:, 0]))(p)

    def second(p, xb):
        return jax.grad(lambda p: jnp.sum(jax.grad(lambda z: jnp.sum(jnp.tanh(
            module.apply({"params": p, **ms}, z, train=False)[0])))(xb) ** 2))(p)

    xs = jax.device_put(x[:bs], parallel.batch_sharding(mesh))
    rels = []
    with use_fast_cpu_conv(True):
        for fn in (first, second):
            traced_fast = "jaxbias_conv" in str(jax.make_jaxpr(fn)(params, x[:bs]))
            one, eight = jax.jit(fn)(params, x[:bs]), jax.jit(fn)(params, xs)
            rels += [float(np.max(np.abs(np.asarray(u) - np.asarray(v))) / max(np.max(np.abs(np.asarray(v))), 1e-30))
                     for u, v in zip(jax.tree.leaves(eight), jax.tree.leaves(one))]
    out["fast_conv_sharded"] = {"max_rel": max(rels), "traced_fast": traced_fast}
    state_out = compiled.output_shardings[0]
    out["compiled"] = {
        "batch_x_spec_is_P_data": isinstance(batch_in.x, NamedSharding) and batch_in.x.spec == P("data"),
        "batch_x_devices": len(batch_in.x.device_set),
        "state_in_replicated": all(s.is_fully_replicated and len(s.device_set) == DEVICES
                                   for s in jax.tree.leaves(state_in)),
        "state_out_replicated": all(s.is_fully_replicated and len(s.device_set) == DEVICES
                                    for s in jax.tree.leaves(state_out)),
    }

    def leaf_diffs(a, b):
        """``{path: max |a - b|}`` over two pytrees of the same structure."""
        return {jax.tree_util.keystr(path): float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
                for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True)}

    # -- the first step on 1 device vs 8 devices: loss and gradients, with nothing yet amplified
    def first_step(module, method, hp, data, mesh):
        params, ms = models.init(module, jax.random.key(3), x[:1])
        tx = make_optimizer(lr=1e-2, weight_decay=1e-4)
        state = create_train_state(params, ms, tx, key=jax.random.key(4), method_state=method.State())
        loss_fn = method_loss(method, module, hp)

        def step(state, batch):  # the train step's differentiation, returning what it differentiates
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, state.model_state, state.method_state, batch, jax.random.key(5))
            return state, {"loss": loss, "grads": grads}

        batch = Batch(*(None if a is None else a[:bs] for a in data))
        with use_fast_cpu_conv(False):  # what a mesh of several devices traces (parallel.jit_step)
            if mesh is None:
                return jax.jit(step)(state, batch)[1]
            return parallel.jit_step(step, mesh, donate=False)(parallel.replicate(state, mesh),
                                                               parallel.shard_batch(batch, mesh))[1]

    def compare_first_step(module, method, hp, data):
        one, eight = first_step(module, method, hp, data, None), first_step(module, method, hp, data, mesh)
        diffs = leaf_diffs(one["grads"], eight["grads"])
        sizes = {jax.tree_util.keystr(k): float(np.max(np.abs(np.asarray(g))))
                 for k, g in jax.tree_util.tree_leaves_with_path(one["grads"])}
        return {
            "loss_rel": abs(float(one["loss"]) - float(eight["loss"])) / abs(float(one["loss"])),
            # per leaf: max |Δg| relative to the leaf's own largest entry, and to the largest gradient entry of all
            "grad_rel_leaf": {k: d / max(sizes[k], 1e-30) for k, d in diffs.items()},
            "grad_rel_global": max(diffs.values()) / max(sizes.values()),
        }

    # -- fit on 1 device vs 8 devices. Plain SGD: its update is linear in the gradient, so the float32
    # rounding by which the two summation orders differ stays at rounding size over the run. Adam's g/√v is
    # not: on a coordinate whose gradient is ~0 it turns that rounding into steps of about the learning rate,
    # and by how much depends on the processor's kernels. The gradients Adam is fed are compared in
    # first_step; Adam on the mesh runs, 8 devices against 8 devices, in the resume check below.
    def run(name, module, method, hp, data, mesh, epochs=3, evaluate=False, adam=False, **kw):
        tx = (make_optimizer(lr=1e-2, weight_decay=1e-4, steps_per_epoch=n // bs, decay_every=2) if adam
              else optax.sgd(0.05))
        t0 = time.perf_counter()
        # A mesh of several devices traces XLA's own convolution (parallel.jit_step); the one-device
        # reference must too, so that the two runs differ only in the order of their sums.
        with use_fast_cpu_conv(mesh is not None):
            res = fit(module=module, method=method, hp=hp, train=data, epochs=epochs, batch_size=bs, tx=tx,
                      seed=3, progress=False, mesh=mesh, eval_sets={"train": data} if evaluate else None, **kw)
        return res, time.perf_counter() - t0

    def compare(module, single, sharded):
        init_params, _ = models.init(module, jax.random.split(jax.random.key(3), 3)[0], x[:1])  # fit's seed=3
        keys = [k for k in single.history[0] if isinstance(single.history[0][k], float) and k != "seconds"]
        rel = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12)
                  for a, b in zip(single.history, sharded.history) for k in keys)

        def train_mode_logits(res):  # batch statistics: blind to a constant shift before batch-norm
            return np.asarray(models.bind(module, res.state.model_state, train=True)(res.state.params, x[:bs]).logits)

        p1 = jax.tree.leaves(single.state.params)
        return {
            "epochs": len(sharded.history),
            "metric_keys": keys,
            "loss_curve_1": [h["loss"] for h in single.history],
            "loss_curve_8": [h["loss"] for h in sharded.history],
            "max_rel_loss_diff": rel,
            "param_diffs": leaf_diffs(single.state.params, sharded.state.params),
            "model_state_diffs": leaf_diffs(single.state.model_state, sharded.state.model_state),
            "max_param_scale": max(float(np.max(np.abs(np.asarray(a)))) for a in p1),
            "train_logits_diff": float(np.max(np.abs(train_mode_logits(single) - train_mode_logits(sharded)))),
            "params_moved": max(float(np.max(np.abs(np.asarray(a) - np.asarray(c))))
                                for a, c in zip(p1, jax.tree.leaves(init_params))),
            "eval_acc_1": single.history[-1].get("eval", {}).get("train", {}).get("accuracy"),
            "eval_acc_8": sharded.history[-1].get("eval", {}).get("train", {}).get("accuracy"),
            "state_replicated_on_8": all(
                isinstance(a.sharding, NamedSharding) and a.sharding.is_fully_replicated
                and len(a.sharding.device_set) == DEVICES
                for a in jax.tree.leaves((sharded.state.params, sharded.state.opt_state))),
            "step": int(sharded.state.step),
        }

    tmp_root = tempfile.mkdtemp(prefix="jaxbias_parallel_")
    runs = {}
    timings = {}
    conv = models.create("simple_conv", channels=(4, 8, 8, 8), kernel_size=3, num_classes=2)
    mlp = models.create("mlp", hidden=(32, 32), num_classes=2)
    for name, module, method, hp, data in [
        ("conv_vanilla", conv, vanilla, vanilla.Hparams(), Batch(x, y)),
        ("mlp_vanilla", mlp, vanilla, vanilla.Hparams(), Batch(x, y)),
        ("conv_rrr", conv, rrr, rrr.Hparams(lam=10.0), train),
    ]:
        probe = _probe_method(method)
        evaluate = name == "conv_vanilla"  # evaluation of a replicated state, once (each costs a compilation)
        single, t1 = run(name, module, method, hp, data, None, evaluate=evaluate)
        sharded, t8 = run(name, module, probe, hp, data, mesh, evaluate=evaluate)
        runs[name] = compare(module, single, sharded)
        runs[name]["first_step"] = compare_first_step(module, method, hp, data)
        runs[name]["traces"] = len(probe.traces)
        runs[name]["inner_shardings"] = [
            {"spec_is_P_data": isinstance(s, NamedSharding) and s.spec == P("data"),
             "devices": len(s.device_set), "repr": repr(s)}
            for s in probe.shardings
        ]
        timings[name] = {"single_s": t1, "sharded_s": t8}
    out["runs"], out["timings"] = runs, timings

    # -- resume from a checkpoint with a mesh (Adam: its moments are restored too): killed after epoch 2,
    # resumed to 3 == uninterrupted 3 epochs, all on the same 8 devices (same summation order: bit-identical)
    t0 = time.perf_counter()
    full, _ = run("full", conv, vanilla, vanilla.Hparams(), Batch(x, y), mesh, epochs=3, adam=True)
    run("part", conv, vanilla, vanilla.Hparams(), Batch(x, y), mesh, epochs=2, adam=True,
        workdir=os.path.join(tmp_root, "part"))
    resumed, _ = run("part", conv, vanilla, vanilla.Hparams(), Batch(x, y), mesh, epochs=3, adam=True,
                     workdir=os.path.join(tmp_root, "part"), resume=True)
    with open(os.path.join(tmp_root, "part", "metrics.jsonl")) as f:
        epochs_logged = [json.loads(line)["epoch"] for line in f]
    out["resume"] = {
        "resumed_from": resumed.resumed_from,
        "epochs_logged": epochs_logged,
        "max_param_diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(c))))
                              for a, c in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state))),
        "loss_full": [h["loss"] for h in full.history],
        "loss_resumed": [h["loss"] for h in resumed.history],
        "state_replicated_on_8": all(
            a.sharding.is_fully_replicated and len(a.sharding.device_set) == DEVICES
            for a in jax.tree.leaves(resumed.state)),
    }
    timings["resume_s"] = time.perf_counter() - t0

    # -- a sweep of 16 members on a mesh: members split over 8 devices, and 4 member groups × 2-way batch split
    t0 = time.perf_counter()
    out["sweep"] = {}
    ref = _mesh_sweep(None, epochs=3)
    runs = {}
    for label, sweep_mesh in (("members8", parallel.make_sweep_mesh(8)), ("members4_data2",
                                                                        parallel.make_sweep_mesh(8, data=2))):
        res = runs[label] = _mesh_sweep(sweep_mesh, epochs=3)
        leaves = jax.tree.leaves(res.state.params)
        out["sweep"][label] = {
            "max_rel_loss": float(np.max(np.abs(res.losses - ref.losses) / np.abs(ref.losses))),
            "max_param_diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(c))))
                                  for a, c in zip(leaves, jax.tree.leaves(ref.state.params))),
            "specs_are_members": all(a.sharding.spec == P("members") for a in leaves),
            "devices": len({d for a in leaves for d in a.sharding.device_set}),
            "member_shards": sorted({int(sh.data.shape[0]) for sh in leaves[0].addressable_shards}),
            "traces": res.traces,
            "acc_ref": [h[-1]["eval"]["train"]["accuracy"] for h in ref.history],
            "acc": [h[-1]["eval"]["train"]["accuracy"] for h in res.history],
        }
    full = runs["members8"]  # 3 uninterrupted epochs on the 8-device mesh
    wd = os.path.join(tmp_root, "sweep")
    _mesh_sweep(parallel.make_sweep_mesh(8), epochs=2, workdir=wd)
    resumed = _mesh_sweep(parallel.make_sweep_mesh(8), epochs=3, workdir=wd, resume=True)
    out["sweep"]["resume"] = {
        "resumed_from": resumed.resumed_from,
        "max_param_diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(c))))
                              for a, c in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state))),
        "losses_equal": bool(np.array_equal(full.losses[:, -4:], resumed.losses)),
    }
    try:
        _mesh_sweep(parallel.make_sweep_mesh(8), members=12)
        out["sweep"]["indivisible"] = None
    except ValueError as e:
        out["sweep"]["indivisible"] = str(e)
    timings["sweep_s"] = time.perf_counter() - t0
    shutil.rmtree(tmp_root, ignore_errors=True)

    # -- bad input
    errors = {}

    def catch(name, fn):
        try:
            fn()
            errors[name] = None
        except ValueError as e:
            errors[name] = str(e)

    probe = _probe_method(vanilla)
    catch("fit_indivisible", lambda: fit(module=conv, method=probe, hp=vanilla.Hparams(), train=Batch(x, y),
                                         epochs=1, batch_size=60, tx=make_optimizer(), progress=False, mesh=mesh))
    errors["fit_indivisible_traces"] = len(probe.traces)
    catch("fit_ragged_last_batch", lambda: fit(module=conv, method=probe, hp=vanilla.Hparams(),
                                               train=Batch(x[:100], y[:100]), epochs=1, batch_size=64,
                                               tx=make_optimizer(), progress=False, mesh=mesh, drop_last=False))
    errors["fit_ragged_traces"] = len(probe.traces)
    catch("shard_indivisible", lambda: parallel.shard_batch(Batch(x[:60], y[:60]), mesh))
    catch("shard_mismatched_rows", lambda: parallel.shard_batch(Batch(x[:64], y[:32]), mesh))
    catch("mesh_too_many", lambda: parallel.make_mesh(DEVICES + 1))
    catch("mesh_zero", lambda: parallel.make_mesh(0))
    out["errors"] = errors

    # -- the CLI: `jaxbias train --devices 8` (offline digits, a small MLP, one epoch)
    import contextlib
    import io

    from jaxbias import cli

    with tempfile.TemporaryDirectory() as tmp:
        buf, err = io.StringIO(), io.StringIO()
        common = ["train", "--model", "mlp", "--hidden", "16", "--epochs", "1", "--no-progress", "--json"]
        with contextlib.redirect_stdout(buf):
            rc = cli.main(common + ["--batch-size", "512", "--devices", "8", "--workdir", os.path.join(tmp, "ok")])
        res = json.loads(buf.getvalue()) if rc == 0 else {}
        with contextlib.redirect_stderr(err):
            rc_bad = cli.main(common + ["--batch-size", "500", "--devices", "8", "--workdir", os.path.join(tmp, "bad")])
        buf2 = io.StringIO()
        with contextlib.redirect_stdout(buf2):
            rc_sweep = cli.main(["sweep", "--model", "mlp", "--hidden", "16", "--epochs", "1", "--no-progress",
                                 "--json", "--batch-size", "256", "--seeds", "0,1,2,3,4,5,6,7", "--devices", "8"])
        sweep_res = json.loads(buf2.getvalue()) if rc_sweep == 0 else {}
        out["cli_sweep"] = {"rc": rc_sweep, "seeds": [m["settings"]["seed"] for m in sweep_res.get("members", [])],
                            "accs": [m["eval"]["unbiased"]["accuracy"] for m in sweep_res.get("members", [])]}
        out["cli"] = {"rc": rc, "epochs": len(res.get("history", [])), "eval_sets": sorted(res.get("eval", {})),
                      "rc_bad": rc_bad, "err_bad": err.getvalue(),
                      "bad_workdir_created": os.path.exists(os.path.join(tmp, "bad"))}
    small = parallel.make_mesh(2)
    out["mesh2"] = {"size": parallel.num_shards(small), "ids": [d.id for d in small.devices.flat],
                    "axis_names": list(small.axis_names)}
    return out


def _process_worker(process_id: int, num_processes: int, port: int, workdir: str) -> dict:
    """One of several CPU processes (4 devices each): fit for 2 epochs, then resume to 3, on all devices."""
    os.environ.update(JAXBIAS_COORDINATOR=f"127.0.0.1:{port}", JAXBIAS_NUM_PROCESSES=str(num_processes),
                      JAXBIAS_PROCESS_ID=str(process_id))
    import jax

    from jaxbias.training import parallel

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
    started = [parallel.initialize_distributed(), parallel.initialize_distributed()]
    from jaxbias.methods import vanilla
    from jaxbias.train import fit

    mesh = parallel.make_mesh()
    module, x, y, tx = _mp_problem()
    common = dict(module=module, method=vanilla, hp=vanilla.Hparams(), train=Batch(x, y), batch_size=64, tx=tx,
                  seed=3, progress=False, mesh=mesh, workdir=workdir, eval_sets={"train": Batch(x, y)})
    fit(epochs=2, **common)
    res = fit(epochs=3, resume=True, **common)
    sweep = _mesh_sweep(parallel.make_sweep_mesh())  # 16 members over the 8 devices of both processes
    return {
        "sweep_losses": sweep.losses.tolist(),
        "sweep_acc": [h[-1]["eval"]["train"]["accuracy"] for h in sweep.history],
        "sweep_local_members": sorted({int(sh.data.shape[0]) for sh in jax.tree.leaves(sweep.state.params)[0]
                                       .addressable_shards}),
        "started": started,
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "rows": parallel.process_rows(mesh, 64).tolist(),
        "resumed_from": res.resumed_from,
        "loss": [h["loss"] for h in res.history],
        "accuracy": res.history[-1]["eval"]["train"]["accuracy"],
        "params": [np.asarray(a).ravel()[:16].tolist() for a in jax.tree.leaves(res.state.params)],
    }


def _mesh_sweep(mesh, *, epochs=2, members=16, **kw):
    """16 RRR members (4 penalty weights × 4 seeds) of a small MLP, SGD (see RTOL), on ``mesh`` or one device."""
    import optax

    from jaxbias import models
    from jaxbias.methods import rrr
    from jaxbias.sweep import fit_sweep, grid

    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 10)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int32)
    mask = np.zeros((256, 10), bool)
    mask[:, 1] = True
    seeds = list(range(members // 4))
    return fit_sweep(module=models.create("mlp", hidden=(16,), num_classes=2), method=rrr, hp=rrr.Hparams(),
                     members=grid(lam=[0.0, 0.1, 0.3, 1.0], seed=seeds), train=Batch(x, y, None, mask),
                     epochs=epochs, batch_size=64, optimizer=lambda lr: optax.sgd(lr), lr=0.05, progress=False,
                     eval_sets={"train": Batch(x, y)}, mesh=mesh, **kw)


def _mp_problem():
    import optax

    from jaxbias import models

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(256, 12, 12, 3)).astype(np.float32)
    y = (x[..., 0].mean(axis=(1, 2)) > np.median(x[..., 0].mean(axis=(1, 2)))).astype(np.int32)
    # SGD with momentum: a state to restore on resume, and updates linear in the gradients, so that the
    # reference on one device differs by rounding only (see RTOL)
    tx = optax.sgd(0.05, momentum=0.9)
    return models.create("mlp", hidden=(32, 32), num_classes=2), x, y, tx


def _run_worker() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("JAXBIAS_COORDINATOR", "JAXBIAS_NUM_PROCESSES", "JAXBIAS_PROCESS_ID", "JAXBIAS_DISTRIBUTED"):
        env.pop(k, None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"8-device worker failed (rc={proc.returncode}):\n{proc.stderr[-6000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    assert line, f"no JSON from the worker:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    res = json.loads(line[-1][len(MARK):])
    res["wall_s"] = time.perf_counter() - t0
    return res


@pytest.fixture(scope="module")
def eight():
    return _run_worker()


# --------------------------------------------------------------------------- tests


def test_worker_sees_eight_devices(eight):
    assert eight["device_count"] == DEVICES
    assert eight["mesh2"] == {"size": 2, "ids": [0, 1], "axis_names": ["data"]}


def test_shard_batch_splits_rows_over_devices(eight):
    s = eight["shard_batch"]
    assert s["named"] and s["spec_is_P_data"], s["spec"]
    assert s["num_shards"] == DEVICES and s["shard_devices"] == DEVICES
    assert s["rows_per_shard"] == [64 // DEVICES]
    assert s["bias_is_none"]
    assert s["shards_concat_equal"]


def test_compiled_step_shardings(eight):
    c = eight["compiled"]
    assert c["batch_x_spec_is_P_data"] and c["batch_x_devices"] == DEVICES
    assert c["state_in_replicated"] and c["state_out_replicated"]
    # several devices: XLA's convolution, which the partitioner splits along the batch (jaxbias.models.conv)
    assert eight["mesh_step_traces_xla_conv"]
    # ... while the CPU convolution, used directly on a sharded batch, matches one device
    assert eight["fast_conv_sharded"]["traced_fast"] and eight["fast_conv_sharded"]["max_rel"] < 1e-5


# Tolerances. The 8-device step sums each gradient as 8 partial sums of 8 samples and an all-reduce, the
# 1-device step as one sum of 64: the same float32 arithmetic in another order, so the results differ by
# rounding, a few ulps (float32 eps 1.2e-7) times the cancellation in the sum; measured on a 2-core AMD EPYC:
# ≤ 2.5e-7 in the losses, ≤ 6e-7 in any gradient leaf relative to its largest entry, ≤ 6e-8 in the parameters.
# RTOL = 1e-5 leaves ~20-40x room for other kernels. Over the 3-epoch runs the difference stays at that size
# because the runs use plain SGD (an update linear in the gradient); the exception is named below.
RTOL = 1e-5


def _gauge(name: str, keys) -> set:
    """Biases of the convolutions followed by batch-norm: their gradient is exactly 0 in exact arithmetic.

    In float32 it is rounding noise of either summation order, so only its size relative to the other
    gradients (the global scale) is comparable, not its value.
    """
    return {k for k in keys if name.startswith("conv") and k.startswith("['conv") and k.endswith("['bias']")}


@pytest.mark.parametrize("name", ["conv_vanilla", "mlp_vanilla", "conv_rrr"])
def test_first_step_on_eight_devices_matches_one_device(eight, name):
    """Loss and gradients of one step (RRR: the double backward through batch-norm) agree to rounding."""
    f = eight["runs"][name]["first_step"]
    assert f["loss_rel"] < RTOL
    assert f["grad_rel_global"] < RTOL
    gauge = _gauge(name, f["grad_rel_leaf"])
    assert (name.startswith("conv")) == bool(gauge)
    compared = {k: v for k, v in f["grad_rel_leaf"].items() if k not in gauge}
    assert len(compared) >= 4
    # per leaf, relative to the leaf's own largest entry: 10x RTOL for sums with more cancellation
    assert max(compared.values()) < 10 * RTOL, compared


@pytest.mark.parametrize("name", ["conv_vanilla", "mlp_vanilla", "conv_rrr"])
def test_eight_devices_match_one_device(eight, name):
    """3 epochs of ``fit`` with a mesh of 8 devices and without one: the same run, leaf by leaf.

    With Adam (make_optimizer) this comparison would be unsound: g/√v turns the rounding noise on the gauge
    biases into steps of about the learning rate, and those feed back into the loss at a size that depends on
    the processor (1.5e-4 relative on an AMD EPYC, < 1e-5 on an Intel Xeon). The gradients Adam is fed are
    compared in the first-step test above; Adam on a mesh runs 8 devices against 8 devices (bit-identical)
    in the resume test.
    """
    r = eight["runs"][name]
    assert r["epochs"] == 3 and r["step"] == 3 * (256 // 64)
    # the run actually trained: a test of equality between two frozen runs could not fail
    assert r["params_moved"] > 1e-3
    assert r["loss_curve_1"][-1] < r["loss_curve_1"][0]
    assert r["max_rel_loss_diff"] < RTOL, (r["loss_curve_1"], r["loss_curve_8"])
    diffs = {**r["param_diffs"], **r["model_state_diffs"]}
    assert len(diffs) >= 4 and (name.startswith("conv")) == bool(r["model_state_diffs"])
    assert max(diffs.values()) < RTOL * max(1.0, r["max_param_scale"]), diffs
    assert r["train_logits_diff"] < 10 * RTOL
    if name == "conv_vanilla":  # evaluation with the replicated state gives the same accuracy
        assert r["eval_acc_8"] is not None
        assert r["eval_acc_1"] == pytest.approx(r["eval_acc_8"], abs=1 / 256 + 1e-9)
    assert r["state_replicated_on_8"]
    # compiled once for all 12 steps, and inside the step the batch is split over the 8 devices
    assert r["traces"] == 1
    assert r["inner_shardings"], "inspect_array_sharding never reported"
    assert all(s["spec_is_P_data"] and s["devices"] == DEVICES for s in r["inner_shardings"]), r["inner_shardings"]
    if name == "conv_rrr":
        assert "rrr" in r["metric_keys"]


def test_resume_from_checkpoint_with_mesh(eight):
    r = eight["resume"]
    assert r["resumed_from"] == 2
    assert r["epochs_logged"] == [1, 2, 3]
    assert r["loss_full"][-1] < r["loss_full"][0]
    # same devices, same order of every sum, Adam's moments restored: nothing may differ
    assert r["max_param_diff"] == 0.0
    assert r["loss_resumed"] == r["loss_full"]
    assert r["state_replicated_on_8"]


@pytest.mark.parametrize("label", ["members8", "members4_data2"])
def test_sweep_of_16_members_on_8_devices_matches_one_device(eight, label):
    r = eight["sweep"][label]
    # every leaf split along the members axis over all 8 devices: 2 members per device, or 4 per group of 2
    assert r["specs_are_members"] and r["devices"] == DEVICES
    assert r["member_shards"] == ([2] if label == "members8" else [4])
    assert r["traces"] == 1
    # sweep.py: members match unsharded runs up to float reduction order (SGD keeps it at rounding size)
    assert r["max_rel_loss"] < RTOL and r["max_param_diff"] < RTOL
    assert r["acc"] == r["acc_ref"] and len(r["acc"]) == 16
    assert len(set(r["acc"])) > 1  # the members really differ


def test_sweep_on_a_mesh_resumes_bit_identically_and_checks_member_count(eight):
    r = eight["sweep"]["resume"]
    assert r["resumed_from"] == 2 and r["max_param_diff"] == 0.0 and r["losses_equal"]
    assert "members=12 does not divide evenly over the 8 devices" in eight["sweep"]["indivisible"]


def test_bad_input_is_rejected_before_training(eight):
    e = eight["errors"]
    assert e["fit_indivisible"] and "batch_size=60" in e["fit_indivisible"] and "8 devices" in e["fit_indivisible"]
    assert e["fit_indivisible_traces"] == 0  # nothing was compiled
    assert e["fit_ragged_last_batch"] and "36" in e["fit_ragged_last_batch"]
    assert e["fit_ragged_traces"] == 0
    assert e["shard_indivisible"] and "60" in e["shard_indivisible"] and "8 devices" in e["shard_indivisible"]
    assert e["shard_mismatched_rows"] and "32 rows" in e["shard_mismatched_rows"]
    assert e["mesh_too_many"] and "num_devices=9" in e["mesh_too_many"] and "8" in e["mesh_too_many"]
    assert e["mesh_zero"] and "num_devices" in e["mesh_zero"]


def test_cli_train_devices(eight):
    c = eight["cli"]
    assert c["rc"] == 0 and c["epochs"] == 1 and c["eval_sets"] == ["biased", "unbiased"]
    assert c["rc_bad"] == 2 and "batch_size=500" in c["err_bad"] and "8 devices" in c["err_bad"]
    assert not c["bad_workdir_created"]  # rejected before loading data or writing anything


# --------------------------------------------------------------------------- in-process (1 device)


def test_cli_sweep_devices(eight):
    # the numbers of members split over devices are checked against one device above (_mesh_sweep); here the
    # command line reaches that path: 8 seeds, 8 different models
    r = eight["cli_sweep"]
    assert r["rc"] == 0 and r["seeds"] == list(range(8))
    assert len(set(r["accs"])) > 1


def test_initialize_distributed_single_process_is_noop(monkeypatch):
    import jax

    from jaxbias.training import parallel

    for k in ("JAXBIAS_COORDINATOR", "JAXBIAS_NUM_PROCESSES", "JAXBIAS_PROCESS_ID", "JAXBIAS_DISTRIBUTED"):
        monkeypatch.delenv(k, raising=False)
    assert parallel.initialize_distributed() is False
    assert parallel.initialize_distributed() is False  # idempotent
    assert parallel.initialize_distributed(num_processes=1) is False
    monkeypatch.setenv("JAXBIAS_NUM_PROCESSES", "1")
    assert parallel.initialize_distributed() is False
    assert not jax.distributed.is_initialized()
    assert jax.process_count() == 1


def test_initialize_distributed_rejects_bad_settings(monkeypatch):
    from jaxbias.training import parallel

    for k in ("JAXBIAS_COORDINATOR", "JAXBIAS_NUM_PROCESSES", "JAXBIAS_PROCESS_ID", "JAXBIAS_DISTRIBUTED"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match="num_processes must be >= 1"):
        parallel.initialize_distributed(num_processes=0)
    with pytest.raises(ValueError, match="process_id"):
        parallel.initialize_distributed("localhost:1234", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="JAXBIAS_PROCESS_ID"):
        parallel.initialize_distributed("localhost:1234", num_processes=2)
    monkeypatch.setenv("JAXBIAS_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAXBIAS_NUM_PROCESSES must be an integer"):
        parallel.initialize_distributed()


def test_cli_rejects_more_devices_than_available(capsys, tmp_path):
    import jax

    from jaxbias import cli

    n = jax.device_count()
    code = cli.main(["train", "--devices", str(n + 1), "--epochs", "1", "--workdir", str(tmp_path / "w"),
                     "--no-progress"])
    assert code == 2
    assert f"num_devices={n + 1} but only {n}" in capsys.readouterr().err


def test_make_mesh_checks_device_count():
    import jax

    from jaxbias.training import parallel

    n = jax.device_count()
    mesh = parallel.make_mesh()
    assert parallel.num_shards(mesh) == n and mesh.axis_names == ("data",)
    with pytest.raises(ValueError, match=f"num_devices={n + 1} but only {n}"):
        parallel.make_mesh(n + 1)
    with pytest.raises(ValueError, match="num_devices must be >= 1"):
        parallel.make_mesh(-1)
    with pytest.raises(ValueError, match="num_devices must be an int"):
        parallel.make_mesh(2.0)


@pytest.mark.slow
def test_two_processes_match_one_device(tmp_path):
    """2 processes × 4 CPU devices (jax.distributed over localhost, gloo): same run as one device, resumable;
    a 16-member sweep split over all 8 devices of both processes equals the one-device sweep."""
    import socket

    import jax

    from jaxbias.methods import vanilla
    from jaxbias.train import fit

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    procs = [
        subprocess.Popen([sys.executable, os.path.abspath(__file__), "--process", str(i), "--port", str(port),
                          "--workdir", str(tmp_path / "run")], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-4000:]
        results.append(json.loads([ln for ln in stdout.splitlines() if ln.startswith(MARK)][-1][len(MARK):]))

    module, x, y, tx = _mp_problem()
    with use_fast_cpu_conv(False):  # what the 8-device mesh traces (see the worker's run())
        ref = fit(module=module, method=vanilla, hp=vanilla.Hparams(), train=Batch(x, y), epochs=3, batch_size=64,
                  tx=tx, seed=3, progress=False, eval_sets={"train": Batch(x, y)})
    assert jax.process_count() == 1  # the reference really is one process
    sweep_ref = _mesh_sweep(None)
    for i, r in enumerate(results):
        assert r["started"] == [True, True] and r["process_count"] == 2 and r["device_count"] == 8
        assert r["rows"] == list(range(32 * i, 32 * (i + 1)))  # each process feeds its own half of the batch
        assert r["resumed_from"] == 2
        np.testing.assert_allclose(r["loss"], [h["loss"] for h in ref.history], rtol=RTOL)
        assert r["loss"][-1] < r["loss"][0]
        assert r["accuracy"] == ref.history[-1]["eval"]["train"]["accuracy"]
        for a, b in zip(r["params"], jax.tree.leaves(ref.state.params)):
            np.testing.assert_allclose(a, np.asarray(b).ravel()[:16], rtol=0, atol=RTOL)
        # the sweep: 16 members split over both processes' devices, 2 per device, as the one-device sweep
        assert r["sweep_local_members"] == [2]
        np.testing.assert_allclose(r["sweep_losses"], sweep_ref.losses, rtol=RTOL)
        assert r["sweep_acc"] == [h[-1]["eval"]["train"]["accuracy"] for h in sweep_ref.history]


if __name__ == "__main__":
    if "--process" in sys.argv:
        arg = dict(zip(sys.argv[1::2], sys.argv[2::2]))
        result = _process_worker(int(arg["--process"]), 2, int(arg["--port"]), arg["--workdir"])
    else:
        result = _worker()
    print(MARK + json.dumps(result), flush=True)
