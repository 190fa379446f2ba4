"""The epoch loop and its feeds (jaxbias.training.loop): same batches, same numbers, resume, no host work per step."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import models
from jaxbias.training import loop as engine
from jaxbias.data import iterators
from jaxbias.data.iterators import batch_indices
from jaxbias.methods import rrr, vanilla
from jaxbias.training.parallel import Layout
from jaxbias.sweep import fit_sweep, grid
from jaxbias.train import fit, make_optimizer
from jaxbias.types import Batch


def _tabular(n=300, d=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
    bias = (x[:, 2] > 0).astype(np.int32)
    mask = np.zeros((n, d), bool)
    mask[:, 2] = True  # RRR: the input gradient on feature 2 is penalised
    return Batch(x, y, bias, mask)


MLP = models.create("mlp", hidden=(16, 16), num_classes=2)


def _fit(feed, **kw):
    args = dict(module=MLP, method=rrr, hp=rrr.Hparams(lam=1.0), train=_tabular(), epochs=3, batch_size=32,
                tx=make_optimizer(lr=1e-2, steps_per_epoch=9, decay_every=2), seed=1, progress=False)
    args.update(kw)
    return fit(feed=feed, **args)


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("keys", [1, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_epoch_order_is_batch_indices(keys, drop_last):
    n, b = 103, 10
    ks = [jax.random.key(s) for s in (4, 9, 4)][:keys]
    for epoch in (0, 5):
        full, last = jax.jit(lambda k, e: engine.epoch_order(k, e, n=n, batch_size=b, drop_last=drop_last))(
            ks[0] if keys == 1 else jnp.stack(ks), jnp.int32(epoch))
        for j, k in enumerate(ks):
            ref = batch_indices(n, b, key=jax.random.fold_in(k, epoch), drop_last=drop_last)
            got_full = np.asarray(full if keys == 1 else full[:, j])
            np.testing.assert_array_equal(got_full, np.stack(ref[: n // b]))
            if drop_last:
                assert last is None
            else:
                np.testing.assert_array_equal(np.asarray(last if keys == 1 else last[j]), ref[-1])


def test_device_feed_equals_host_feed():
    host, device = (_fit(feed, eval_sets={"train": _tabular()}) for feed in ("host", "device"))
    # the same step on the same batches, summed in the same order: measured equal to the bit on XLA:CPU
    assert _max_diff(host.state.params, device.state.params) <= 1e-6
    for h, d in zip(host.history, device.history):
        assert h["step"] == d["step"]
        assert abs(h["loss"] - d["loss"]) <= 1e-6 * abs(h["loss"])
        assert h["eval"]["train"]["accuracy"] == d["eval"]["train"]["accuracy"]
    assert device.history[-1]["loss"] < 0.8 * device.history[0]["loss"]  # it trains


def test_device_feed_short_last_batch_and_progress_chunks():
    # drop_last=False: 300 = 9·32 + 12, the short batch is its own step after the scan
    host = _fit("host", drop_last=False, epochs=2)
    device = _fit("device", drop_last=False, epochs=2, progress=True)  # 9 chunks of 1 step, then the short one
    assert host.history[-1]["step"] == device.history[-1]["step"] == 20
    assert _max_diff(host.state.params, device.state.params) <= 1e-6


class _Killed(Exception):
    pass


@pytest.mark.parametrize("feed", ["host", "device"])
def test_resume_after_kill_is_bit_identical(tmp_path, feed):
    full = _fit(feed, epochs=4)

    def kill_after_2(rec):
        if rec["epoch"] == 2:
            raise _Killed

    with pytest.raises(_Killed):
        _fit(feed, epochs=4, workdir=tmp_path, log=kill_after_2)
    resumed = _fit(feed, epochs=4, workdir=tmp_path, resume=True)
    assert resumed.resumed_from == 2
    assert _max_diff(full.state.params, resumed.state.params) == 0.0
    assert _max_diff(full.state.opt_state, resumed.state.opt_state) == 0.0
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_checkpoint_of_one_feed_resumes_with_the_other(tmp_path):
    _fit("host", epochs=2, workdir=tmp_path)
    resumed = _fit("device", epochs=4, workdir=tmp_path, resume=True)
    assert resumed.resumed_from == 2
    assert _max_diff(_fit("host", epochs=4).state.params, resumed.state.params) <= 1e-6


def test_device_feed_epoch_sends_nothing_from_the_host():
    train = _tabular()
    step_loss = jax.jit(lambda st, b: (st + jnp.mean(b.x), {"loss": jnp.mean(b.x)}))
    key = jax.random.key_data(jax.random.key(0))
    epoch = jnp.int32(0)
    for feeder_cls, allowed in ((engine._DeviceFeed, True), (engine._HostFeed, False)):
        feeder = feeder_cls(lambda st, b, _: step_loss(st, b), train, Layout(), n=300, batch_size=32, drop_last=True)
        lanes = [engine.Lane(jnp.zeros((), jnp.float32), (), key) for _ in range(2)]  # each donated once
        feeder.run(lanes[0], epoch, None)  # compile outside the guard
        with jax.transfer_guard_host_to_device("disallow"):
            if allowed:
                state, sums, losses, steps = feeder.run(lanes[1], epoch, None)
                assert steps == 9 and losses.shape == (9,)
            else:  # the host feed gathers and sends every batch: the guard catches it
                with pytest.raises(Exception, match="host-to-device"):
                    feeder.run(lanes[1], epoch, None)


def test_auto_feed_falls_back_to_host_when_the_data_do_not_fit(monkeypatch):
    train = _tabular()
    assert engine.choose_feed("auto", train) == "device"
    monkeypatch.setattr(engine, "_CPU_DEVICE_FEED_BYTES", 1000)
    assert engine.choose_feed("auto", train) == "host"
    with pytest.raises(ValueError, match="feed must be one of"):
        engine.choose_feed("gpu", train)
    with pytest.raises(ValueError, match="feed must be one of"):
        _fit("stream")


@pytest.mark.parametrize("vectorize", [True, False])
def test_sweep_device_feed_equals_host_feed(vectorize):
    common = dict(module=MLP, method=rrr, hp=rrr.Hparams(), members=grid(lam=[0.0, 10.0], seed=[0, 1]),
                  train=_tabular(), epochs=2, batch_size=32, lr=3e-3, progress=False, vectorize=vectorize)
    host, device = fit_sweep(feed="host", **common), fit_sweep(feed="device", **common)
    assert host.traces == device.traces == 1
    assert _max_diff(host.state.params, device.state.params) <= 1e-6
    np.testing.assert_allclose(host.losses, device.losses, rtol=1e-6)
    assert device.losses.shape == (4, 2 * 9)
    # members with different seeds saw different batches, the same seed the same ones
    assert not np.allclose(device.losses[0], device.losses[1])


def test_sweep_member_equals_fit_with_device_feed():
    res = fit_sweep(module=MLP, method=vanilla, members=grid(seed=[5, 6]), train=_tabular(), epochs=2,
                    batch_size=32, lr=3e-3, decay_every=None, progress=False, feed="device", vectorize=False)
    one = fit(module=MLP, method=vanilla, hp=vanilla.Hparams(), train=_tabular(), epochs=2, batch_size=32,
              tx=make_optimizer(lr=3e-3, decay_every=None), seed=6, progress=False, feed="device")
    assert _max_diff(res.member_params(1), one.state.params) == 0.0


@pytest.mark.parametrize("n", [1, 7, 1625, 1626, 26048])
def test_permutation_is_jax_random_permutation(n):
    for seed in (0, 3):
        key = jax.random.key(seed)
        ref = np.asarray(jax.random.permutation(key, n))
        np.testing.assert_array_equal(np.asarray(jax.jit(iterators.permutation, static_argnums=1)(key, n)), ref)
    keys = jax.random.split(jax.random.key(5), 3)  # vmapped over members' keys
    got = jax.jit(jax.vmap(lambda k: iterators.permutation(k, n)))(keys)
    np.testing.assert_array_equal(np.asarray(got), np.stack([np.asarray(jax.random.permutation(k, n)) for k in keys]))


def test_bar_chunks_divide_the_epoch():
    # one chunk length per epoch (one compilation); at most BAR_CHUNKS chunks
    for s, size in ((9, 1), (100, 10), (101, 101), (187, 187), (120, 12), (1, 1), (25, 5)):
        assert engine._bar_chunk(s) == size
        assert s % size == 0 and s // size <= engine.BAR_CHUNKS
    ran = []
    feeder = engine._DeviceFeed(lambda st, b, _: (st + 1, {"loss": jnp.mean(b.x)}), _tabular(n=320), Layout(),
                                n=320, batch_size=32, drop_last=True)

    class Bar:
        def update(self, k):
            ran.append(k)

        def set_postfix(self, **kw):
            pass

    state, sums, losses, steps = feeder.run(engine.Lane(jnp.int32(0), (), jax.random.key_data(jax.random.key(0))),
                                            jnp.int32(0), Bar())
    assert int(state) == 10 and ran == [1] * 10
    # one chunk program compiled (1 step); the whole-epoch one (10 steps) never was
    assert feeder._chunk[1]._cache_size() == 1 and feeder._chunk[10]._cache_size() == 0


class _MemoryStore:
    """A store of the loop's protocol that keeps the run in memory (a user's could keep it in a database)."""

    def __init__(self):
        self.kept, self.rows, self.held = {}, [], 0

    def __enter__(self):
        self.held += 1
        return self

    def __exit__(self, *exc):
        self.held -= 1

    def resume(self, template, *, epochs, resume, must_match=None):
        if not self.kept:
            return None
        epoch = max(self.kept)
        return jax.tree.map(jnp.asarray, self.kept[epoch]), epoch, [r for r in self.rows if r["epoch"] <= epoch]

    def record(self, epoch, rows, state, meta):
        assert self.held == 1  # only inside the loop's hold
        self.rows += rows
        self.kept[epoch] = jax.tree.map(np.asarray, state)


@pytest.mark.parametrize("feed", ["host", "device"])
def test_the_loop_keeps_a_run_only_through_the_store_it_is_handed(tmp_path, monkeypatch, feed):
    """The epoch loop writes no file of its own: with no store nothing appears in the working directory, and a
    store of the same protocol kept in memory resumes the run bit-identically."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    train = Batch(rng.normal(size=(40, 3)).astype(np.float32), (np.arange(40) % 2).astype(np.int32))

    def step(w, batch, args):
        loss = lambda w: jnp.mean((batch.x @ w - batch.y) ** 2)  # noqa: E731
        value, grad = jax.value_and_grad(loss)(w)
        return w - 0.1 * grad, {"loss": value}

    def run(epochs, store, resume=False):
        return engine.run_epochs(
            step=step, lanes=[engine.Lane(jnp.zeros(3), (), jax.random.key(1))], train=train, epochs=epochs,
            batch_size=8, feed=feed, records=lambda e, sums, steps, lanes, s: [{"epoch": e + 1,
                                                                                "loss": float(sums[0]["loss"])}],
            store=store, resume=resume, progress=False)

    whole = run(3, None)
    assert list(tmp_path.iterdir()) == []
    import inspect
    source = inspect.getsource(engine)
    assert not any(w in source for w in ("open(", "write_text", "write_json", "os.remove", "Checkpointer"))
    store = _MemoryStore()
    run(2, store)
    resumed = run(3, store, resume=True)
    assert resumed.resumed_from == 2 and sorted(store.kept) == [1, 2, 3] and store.held == 0
    np.testing.assert_array_equal(np.asarray(resumed.lanes[0].state), np.asarray(whole.lanes[0].state))
    assert resumed.rows == whole.rows == store.rows
