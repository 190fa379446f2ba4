"""Vmapped sweeps (jaxbias.sweep): each member equals its own `fit` run."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbias import cli, models
from jaxbias.methods import end, rrclarc, rrr
from jaxbias.methods._clarc import State as ClarcState
from jaxbias.sweep import fit_sweep, grid, zipped
from jaxbias.training import schedule_optimizer
from jaxbias.train import fit, make_optimizer
from jaxbias.types import Batch

# Tolerances of vmapped vs separate runs, measured on XLA:CPU: per-epoch losses
# differ by at most 1.8e-7 (relative); final parameters by at most 1.3e-6 (the
# K = 8 RRR test) and 3.7e-6 (the RR-ClArC test: one Adam coordinate whose
# gradient is mostly cancellation). The bounds leave ~3-5x room for other CPUs.
LOSS_RTOL = 1e-6
PARAM_ATOL = 1e-5


def _data(n=192, side=28, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, side, side, 3)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    b = rng.integers(0, 10, n).astype(np.int32)
    mask = np.zeros((n, side, side), bool)
    mask[:, :6, :6] = True  # a corner the gradients must ignore
    return Batch(x, y, b, mask)


MLP = models.create("mlp", hidden=(32, 32))
OPT = dict(weight_decay=1e-4, decay_every=1)  # decays at the epoch boundary: the schedule is exercised


def _fit(module, method, hp, train, member, *, epochs, batch_size, **kw):
    tx = make_optimizer(lr=member["lr"], steps_per_epoch=train.x.shape[0] // batch_size, **OPT)
    return fit(module=module, method=method, hp=hp, train=train, epochs=epochs, batch_size=batch_size, tx=tx,
               seed=member["seed"], progress=False, **kw)


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_vmapped_sweep_of_8_equals_8_fit_runs():
    """K = 8 (λ of RRR × seeds × learning rates) as one vmapped program vs 8 `fit` runs.

    vmap batches the kernels (a dot over (K, B, ·) instead of (B, ·)), which
    can reorder float sums by an ulp; Adam turns such differences into at most
    1.3e-6 in the parameters here, so the tolerances are LOSS_RTOL/PARAM_ATOL.
    (Over hundreds of steps such differences keep growing, as in any chaotic
    training run; vectorize=False is bit-for-bit, see the next test.)
    """
    train, evals = _data(), {"held": _data(64, seed=1)}
    members = zipped(lam=[0.0, 1.0, 10.0, 100.0, 1.0, 10.0, 3.0, 30.0], seed=[0, 0, 1, 1, 2, 2, 3, 3],
                     lr=[1e-3, 3e-3, 1e-3, 3e-3, 1e-3, 3e-3, 2e-3, 2e-3])
    res = fit_sweep(module=MLP, method=rrr, hp=rrr.Hparams(), members=members, train=train, epochs=2,
                    batch_size=32, eval_sets=evals, progress=False, **OPT)
    assert res.traces == 1  # one compilation for all members and steps
    assert res.losses.shape == (8, 12)
    for i, m in enumerate(members):
        assert res.members[i] == {"lr": m["lr"], "seed": m["seed"], "lam": m["lam"]}
        ref = _fit(MLP, rrr, rrr.Hparams(lam=m["lam"]), train, m, epochs=2, batch_size=32, eval_sets=evals)
        for h_ref, h in zip(ref.history, res.history[i], strict=True):
            for key in ("loss", "ce", "rrr"):
                np.testing.assert_allclose(h[key], h_ref[key], rtol=LOSS_RTOL, atol=0)
            assert h["step"] == h_ref["step"] and h["eval"]["held"]["count"] == 64
            assert abs(h["eval"]["held"]["accuracy"] - h_ref["eval"]["held"]["accuracy"]) <= 1 / 64
        np.testing.assert_allclose(res.losses[i].reshape(2, 6).mean(1), [h["loss"] for h in ref.history],
                                   rtol=LOSS_RTOL)
        assert _max_diff(res.member_params(i), ref.state.params) <= PARAM_ATOL
    # the members really differ (λ, seeds and learning rates all reached the step)
    finals = [h[-1]["loss"] for h in res.history]
    assert len(set(np.round(finals, 4))) == 8


def test_turn_taking_sweep_equals_fit_exactly_on_a_conv_net():
    """vectorize=False: one compiled single-model step shared by the members, bit-for-bit `fit`."""
    module = models.create("simple_conv", channels=(4, 8, 8, 8), kernel_size=3, last_activation="tanh")
    train = _data(96, side=16)
    members = zipped(alpha=[0.0, 2.0], beta=[0.5, 0.0], seed=[0, 1], lr=[3e-3, 2e-3])
    res = fit_sweep(module=module, method=end, members=members, train=train, epochs=2, batch_size=32,
                    progress=False, vectorize=False, **OPT)
    assert res.traces == 1
    for i, m in enumerate(members):
        ref = _fit(module, end, end.Hparams(alpha=m["alpha"], beta=m["beta"]), train, m, epochs=2, batch_size=32)
        assert [h["loss"] for h in res.history[i]] == [h["loss"] for h in ref.history]
        assert _max_diff((res.member_params(i), res.member_model_state(i)),
                         (ref.state.params, ref.state.model_state)) == 0.0


def test_shared_and_per_member_method_states():
    """A fitted state (RR-ClArC's CAV) shared by all members, or one per member; random criterion uses step keys."""
    train = _data(128)
    hp = rrclarc.Hparams(layer="dense1", criterion="random")
    rng = np.random.default_rng(3)

    def cav_state():
        h = rng.normal(size=32).astype(np.float32)
        return ClarcState(jnp.asarray(h / np.linalg.norm(h)), jnp.zeros(()), jnp.zeros(()))

    members = zipped(lam=[0.0, 10.0], seed=[0, 1])
    shared = cav_state()
    own = [cav_state() for _ in members]
    for kwargs, states in (({"method_state": shared}, [shared] * 2), ({"method_states": own}, own)):
        res = fit_sweep(module=MLP, method=rrclarc, hp=hp, members=members, train=train, epochs=1, batch_size=32,
                        progress=False, lr=3e-3, **OPT, **kwargs)
        for i, m in enumerate(members):
            ref = _fit(MLP, rrclarc, rrclarc.Hparams(layer="dense1", lam=m["lam"]), train, {**m, "lr": 3e-3},
                       epochs=1, batch_size=32, method_state=jax.tree.map(jnp.array, states[i]))  # fit donates it
            np.testing.assert_allclose(res.history[i][0]["rr"], ref.history[0]["rr"], rtol=LOSS_RTOL)
            np.testing.assert_allclose(res.history[i][0]["loss"], ref.history[0]["loss"], rtol=LOSS_RTOL)
            assert _max_diff(res.member_params(i), ref.state.params) <= PARAM_ATOL
            np.testing.assert_array_equal(res.member_state(i).method_state.cav, states[i].cav)


def test_schedule_optimizer_with_injected_lr_is_make_optimizer():
    params = {"w": jnp.array([0.5, -2.0, 3.0])}
    ref = make_optimizer(lr=3e-3, weight_decay=1e-2, steps_per_epoch=2, decay_every=1)
    ours = optax.inject_hyperparams(schedule_optimizer(weight_decay=1e-2, steps_per_epoch=2, decay_every=1))(lr=3e-3)
    s_ref, s_ours = ref.init(params), ours.init(params)
    update = jax.jit(lambda tx_state, g, p: ours.update(g, tx_state, p))
    for t in range(5):  # crosses two decay boundaries
        g = {"w": jnp.array([0.1, -0.3, 1e-3]) * (t + 1)}
        u_ref, s_ref = ref.update(g, s_ref, params)
        u, s_ours = update(s_ours, g, params)
        np.testing.assert_array_equal(u["w"], u_ref["w"])
    with pytest.raises(ValueError, match="weight_decay"):
        schedule_optimizer(weight_decay=-1.0)


def test_bad_members_are_rejected():
    train = _data(64)
    common = dict(module=MLP, train=train, epochs=1, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="members is empty"):
        fit_sweep(method=rrr, members=[], **common)
    with pytest.raises(ValueError, match=r"names 'lamb'.*rrr.Hparams"):
        fit_sweep(method=rrr, members=[{"lamb": 1.0}], **common)
    with pytest.raises(ValueError, match=r"members\[1\]\['variant'\] = 'cosine'.*not a number"):
        fit_sweep(method=rrr, members=[{"lam": 1.0}, {"variant": "cosine"}], **common)
    with pytest.raises(ValueError, match=r"members\[1\].*lam must be a non-negative"):
        fit_sweep(method=rrr, members=[{"lam": 1.0}, {"lam": -1.0}], **common)
    with pytest.raises(ValueError, match=r"members\[0\]\['lr'\] must be a positive"):
        fit_sweep(method=rrr, members=[{"lr": 0.0}], **common)
    # a field declared static (a shape: the one-hot width of the bias labels) is refused before any tracing
    with pytest.raises(ValueError, match=r"hp.num_biases is static"):
        fit_sweep(method=end, members=[{"num_biases": 10}, {"num_biases": 12}], **common)
    # a number the loss never reads (only the CAV fit does) would train identical models: declared static
    state = ClarcState(jnp.ones(32) / np.sqrt(32), jnp.zeros(()), jnp.zeros(()))
    with pytest.raises(ValueError, match=r"hp.cav_reg is static"):
        fit_sweep(method=rrclarc, hp=rrclarc.Hparams(layer="dense1"), members=[{"cav_reg": 0.1}, {"cav_reg": 1.0}],
                  method_state=state, **common)
    with pytest.raises(ValueError, match="method_states has 1 entries but there are 2 members"):
        fit_sweep(method=rrclarc, hp=rrclarc.Hparams(layer="dense1"), members=[{"lam": 1.0}, {"lam": 2.0}],
                  method_states=[state], **common)
    with pytest.raises(ValueError, match="fits its state .a CAV. on a trained model"):
        fit_sweep(method=rrclarc, hp=rrclarc.Hparams(layer="dense1"), members=[{"lam": 1.0}], **common)
    with pytest.raises(ValueError, match=r"same length.*'lam': 3, 'seed': 2"):
        zipped(lam=[0.1, 1.0, 10.0], seed=[0, 1])
    assert grid(lam=[1, 2], seed=[0, 1]) == [{"lam": 1, "seed": 0}, {"lam": 1, "seed": 1}, {"lam": 2, "seed": 0},
                                            {"lam": 2, "seed": 1}]


class _Killed(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    train = _data(96)
    members = zipped(alpha=[0.0, 1.0, 0.5], seed=[0, 1, 1], lr=[1e-3, 2e-3, 3e-3])
    kw = dict(module=MLP, method=end, members=members, train=train, epochs=3, batch_size=32, progress=False,
              eval_sets={"held": _data(32, seed=5)}, **OPT)
    full = fit_sweep(workdir=str(tmp_path / "full"), **kw)

    def kill_after_epoch_2(records):
        if records[0]["epoch"] == 2:
            raise _Killed  # after the epoch-2 checkpoint and metrics rows were written

    part = tmp_path / "part"
    with pytest.raises(_Killed):
        fit_sweep(workdir=str(part), log=kill_after_epoch_2, **kw)
    with open(part / "metrics.jsonl", "a") as f:  # a row of epoch 3 that was cut off mid-way
        f.write(json.dumps({"epoch": 3, "member": 0, "loss": 123.0}) + "\n")
    with pytest.raises(FileExistsError, match="resume"):
        fit_sweep(workdir=str(part), **kw)
    with pytest.raises(ValueError, match="members differ"):
        fit_sweep(workdir=str(part), resume=True, **{**kw, "members": members[:2]})
    resumed = fit_sweep(workdir=str(part), resume=True, **kw)
    assert resumed.resumed_from == 2 and resumed.losses.shape == (3, 3)
    assert _max_diff(resumed.state, full.state) == 0.0  # the same program replays the same keys and batches
    def timeless(history):
        return [[{k: v for k, v in h.items() if k != "seconds"} for h in member] for member in history]

    assert timeless(resumed.history) == timeless(full.history)  # epochs 1-2 read back from metrics.jsonl
    rows = [json.loads(line) for line in open(part / "metrics.jsonl")]
    assert [(r["epoch"], r["member"]) for r in rows] == [(e, i) for e in (1, 2, 3) for i in range(3)]
    assert all(r["loss"] != 123.0 for r in rows)


def test_cli_sweep_end_to_end(tmp_path, capsys):
    wd = str(tmp_path / "sweep")
    args = ["sweep", "--dataset", "artifact_mnist", "--model", "mlp", "--hidden", "8", "--method", "rrr",
            "--sweep", "lam=0,10", "--seeds", "0,1", "--batch-size", "1000", "--workdir", wd, "--no-progress",
            "--json"]
    assert cli.main([*args, "--epochs", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["traces"] == 1 and len(out["members"]) == 4
    assert [m["settings"] for m in out["members"]] == [
        {"lr": 1e-3, "seed": s, "lam": lam} for lam in (0, 10) for s in (0, 1)]
    for m in out["members"]:
        assert np.isfinite(m["final"]["loss"])
        assert set(m["eval"]) == {"clean", "artifact"}
        assert all(0.0 <= rep["accuracy"] <= 1.0 for rep in m["eval"].values())
    assert cli.main([*args, "--epochs", "2"]) == 2  # the workdir holds a checkpoint: --resume needed
    assert "resume" in capsys.readouterr().err
    assert cli.main([*args, "--epochs", "2", "--resume"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["resumed_from"] == 1 and [len(m["history"]) for m in again["members"]] == [2] * 4
    assert again["members"][0]["history"][0]["loss"] == out["members"][0]["final"]["loss"]
    assert len((tmp_path / "sweep" / "metrics.jsonl").read_text().splitlines()) == 8
    assert json.loads((tmp_path / "sweep" / "results.json").read_text())["resumed_from"] == 1
    # a string field is not sweepable; the error names it
    assert cli.main(["sweep", "--model", "mlp", "--method", "rrr", "--sweep", "variant=l2,cosine",
                     "--epochs", "1", "--no-progress"]) == 2
    assert "not a number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", "--help"])
    assert e.value.code == 0 and "--sweep KEY=V1,V2" in capsys.readouterr().out


def test_end_vmapped_sweep_differs_from_turn_taking_only_by_summation_order():
    """Issue 34, defect 6: EnD's vmapped members drift from the turn-taking ones under Adam. The cause is the order
    of float sums in the batched kernels, not a different computation: after one epoch both agree to float32
    rounding, and with plain SGD (no per-coordinate rescaling of rounding-level gradients) they still do after
    five; Adam turns the same ulps into a relative drift that grows epoch by epoch (the documented tolerance)."""
    rng = np.random.default_rng(0)
    n, d = 1024, 20
    x = rng.normal(size=(n, d)).astype(np.float32)
    b = rng.integers(0, 2, n).astype(np.int32)
    y = ((x[:, 0] + 1.5 * b + 0.3 * rng.normal(size=n)) > 0.7).astype(np.int32)
    module = models.create("mlp", hidden=(16, 8), num_classes=2)

    def drift(epochs, optimizer):
        params = []
        for vectorize in (True, False):
            res = fit_sweep(module=module, method=end, hp=end.Hparams(num_biases=2, num_classes=2),
                            members=grid(alpha=[0.5, 2.0], seed=[0, 1]), train=Batch(x, y, b), epochs=epochs,
                            batch_size=64, decay_every=None, vectorize=vectorize, progress=False, optimizer=optimizer)
            params.append(res.state.params)
        return max(float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v)))
                   for u, v in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])))

    assert drift(1, None) < 1e-6  # Adam, one epoch: rounding only
    assert drift(5, optax.sgd) < 1e-6  # SGD, five epochs: still rounding only
    adam5 = drift(5, None)
    assert adam5 < 1e-3  # the tolerance sweep.py documents for Adam
