import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbias import models
from jaxbias.methods import vanilla
from jaxbias.train import (
    create_train_state,
    fit,
    make_optimizer,
    make_train_step,
    method_loss,
)
from jaxbias.types import Batch

TINY = dict(channels=(2, 3, 4, 4), kernel_size=3)


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 12, 12, 3)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    b = rng.integers(0, 10, n).astype(np.int32)
    return Batch(x, y, b)


def test_step_decay_schedule_matches_formula():
    tx = make_optimizer(lr=1e-3, weight_decay=0.0, steps_per_epoch=3, decay_every=2)
    params = {"w": jnp.ones(())}
    state = tx.init(params)
    lrs = []
    for _ in range(12):
        # with Adam, a constant unit gradient moves a parameter by exactly lr (bias-corrected)
        upd, state = tx.update({"w": jnp.ones(())}, state, params)
        lrs.append(-float(upd["w"]))
    expected = [1e-3 * 0.1 ** (t // 6) for t in range(12)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-4)


def test_coupled_weight_decay_is_l2_in_the_gradient():
    # PyTorch Adam(weight_decay=wd) == Adam on grad + wd·θ
    wd = 0.5
    params = {"w": jnp.array([2.0, -1.0])}
    g = {"w": jnp.array([0.1, 0.3])}
    ours = make_optimizer(lr=0.1, weight_decay=wd, decay_every=None)
    ref = optax.adam(0.1)
    u1, _ = ours.update(g, ours.init(params), params)
    u2, _ = ref.update({"w": g["w"] + wd * params["w"]}, ref.init(params), params)
    np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)


def test_bad_optimizer_arguments():
    with pytest.raises(ValueError, match="lr"):
        make_optimizer(lr=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        make_optimizer(weight_decay=-1.0)


def test_train_step_lowers_loss_and_compiles_once():
    module = models.create("simple_conv", **TINY)
    data = _data()
    params, ms = models.init(module, jax.random.key(0), data.x[:1])
    tx = optax.adam(3e-2)
    inner = make_train_step(method_loss(vanilla, module, vanilla.Hparams()), tx)
    traces = []

    def counted(state, batch):
        traces.append(1)  # runs only while tracing: a retrace means a recompilation
        return inner(state, batch)

    step = jax.jit(counted, donate_argnums=0)
    state = create_train_state(params, ms, tx, key=jax.random.key(1), method_state=vanilla.State())
    # labels a simple function of the input, so that a tiny network can fit them
    x = jnp.asarray(data.x[:16])
    y = (x[..., 0].mean(axis=(1, 2)) > jnp.median(x[..., 0].mean(axis=(1, 2)))).astype(jnp.int32)
    batch = Batch(x, y)
    losses = []
    for _ in range(30):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert len(traces) == 1
    assert int(state.step) == 30
    # batch-norm statistics were carried through the step
    assert not np.allclose(state.model_state["batch_stats"]["bn1"]["mean"], 0.0)


def _fit(workdir, epochs, resume=False):
    module = models.create("simple_conv", **TINY)
    tx = make_optimizer(lr=1e-2, weight_decay=1e-4, steps_per_epoch=3, decay_every=2)
    return fit(
        module=module, method=vanilla, hp=vanilla.Hparams(), train=_data(), epochs=epochs,
        batch_size=16, tx=tx, seed=3, workdir=workdir, resume=resume, progress=False,
        eval_sets={"train": _data()},
    )


def test_resume_after_kill_is_identical(tmp_path):
    full = _fit(str(tmp_path / "full"), epochs=4)
    part = tmp_path / "part"
    _fit(str(part), epochs=2)  # "killed" after epoch 2
    with pytest.raises(FileExistsError, match="resume"):
        _fit(str(part), epochs=4)
    resumed = _fit(str(part), epochs=4, resume=True)
    assert resumed.resumed_from == 2
    leaves_a = jax.tree.leaves((full.state.params, full.state.model_state, full.state.opt_state))
    leaves_b = jax.tree.leaves((resumed.state.params, resumed.state.model_state, resumed.state.opt_state))
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    with open(part / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose(rows[-1]["loss"], full.history[-1]["loss"], rtol=1e-6)
    assert "eval" in rows[-1] and 0.0 <= rows[-1]["eval"]["train"]["accuracy"] <= 1.0


def test_resume_of_finished_run_trains_nothing(tmp_path):
    first = _fit(str(tmp_path), epochs=2)
    again = _fit(str(tmp_path), epochs=2, resume=True)
    assert again.resumed_from == 2
    for a, b in zip(jax.tree.leaves(first.state.params), jax.tree.leaves(again.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fit_rejects_mismatched_arrays():
    module = models.create("simple_conv", **TINY)
    d = _data()
    bad = Batch(d.x, d.y[:-1], d.bias)
    with pytest.raises(ValueError, match="train.y"):
        fit(module=module, method=vanilla, hp=vanilla.Hparams(), train=bad, epochs=1, batch_size=8,
            tx=optax.sgd(0.1), progress=False)


def test_freeze_trains_only_the_named_groups_with_frozen_batchnorm():
    import optax

    from jaxbias import methods, models
    from jaxbias.train import fit, freeze, make_optimizer
    from jaxbias.types import Batch

    module = models.create("simple_conv", channels=(2, 2, 2, 3), kernel_size=3)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(32, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int32)
    params, ms = models.init(module, jax.random.key(0), x[:1])
    tx = freeze(make_optimizer(lr=1e-2, decay_every=None), params, ("fc",))
    res = fit(module=module, method=methods.get("vanilla"), hp=methods.get("vanilla").Hparams(), train=Batch(x, y),
              epochs=2, batch_size=8, tx=tx, init_params=(params, ms), train_mode=False, progress=False)
    new = res.state.params
    assert not np.allclose(new["fc"]["kernel"], params["fc"]["kernel"])
    for name in params:
        if name != "fc":
            for a, b in zip(jax.tree.leaves(new[name]), jax.tree.leaves(params[name])):
                np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(res.state.model_state), jax.tree.leaves(ms)):
        np.testing.assert_array_equal(a, b)  # evaluation mode: running statistics untouched
    with pytest.raises(ValueError, match="trainable"):
        freeze(optax.sgd(1.0), params, ("nope",))


def test_checkpoint_keeps_zero_size_arrays(tmp_path):
    # orbax cannot write a zero-size array (targeted noise's unused general map with map='specific'):
    # the checkpoint leaves it out and restore puts it back with its shape and dtype
    from jaxbias.training.checkpoint import Checkpointer

    state = {"w": jnp.arange(6.0).reshape(2, 3), "empty": jnp.zeros((0, 0), jnp.float32),
             "nested": (jnp.zeros((0,), jnp.int32), jnp.ones(2, jnp.int32))}
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(1, state, {"epoch": 1})
    back, meta = ckpt.restore(jax.tree.map(jnp.zeros_like, state))
    assert meta["epoch"] == 1
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ckpt.close()
