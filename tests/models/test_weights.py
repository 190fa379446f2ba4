"""load_weights / save_weights and RunConfig.weights (issue 35): weights a researcher already has (.npz,
.safetensors, an orbax checkpoint) load into exactly the model's variables, a wrong file is refused in one line
naming it, and a run started from them begins where the saved model ended."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from jaxbias import cli, models, runs
from jaxbias.models import from_linen, from_nnx, load_weights, save_weights
from jaxbias.runs import RunConfig


class Net(nn.Module):
    """A Linen network as a researcher has it (no taps), with a BatchNorm."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(x))
        return nn.Dense(3, name="head")(x.mean((1, 2)))


class NNXNet(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(4, 4, rngs=rngs), nnx.Linear(4, 3, rngs=rngs)])  # list indices: keys "0", "1"

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x))).mean((1, 2))
        return self.blocks[1](nnx.relu(self.blocks[0](x)))


X = jnp.zeros((1, 6, 6, 3))
NETWORKS = {
    "simple_conv": lambda: models.build("simple_conv", {"channels": (2, 2, 2, 2)}, num_classes=10),
    "linen": lambda: from_linen(Net(), layers=("conv",)),
    "nnx": lambda: from_nnx(NNXNet(rngs=nnx.Rngs(0)), layers=("conv",)),
}


def _sample(name):
    return jnp.zeros((1, 28, 28, 3)) if name == "simple_conv" else X


def _trained_like(module, x):
    """Variables unlike any initialisation (random params, non-trivial batch statistics)."""
    params, state = models.init(module, jax.random.key(3), x)
    leaves, treedef = jax.tree.flatten((params, state))
    keys = jax.random.split(jax.random.key(7), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])


def _equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def _orbax(path, tree):
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(path, tree)
    ckpt.wait_until_finished()


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("fmt", ["npz", "safetensors", "orbax"])
def test_saved_weights_load_back_exactly(tmp_path, name, fmt):
    module, x = NETWORKS[name](), _sample(name)
    params, state = _trained_like(module, x)
    assert "batch_stats" in state
    path = str(tmp_path / ("w" if fmt == "orbax" else f"w.{fmt}"))
    if fmt == "orbax":
        _orbax(path, {"params": params, **state})
    else:
        save_weights(path, params, state)
    got_params, got_state = load_weights(path, module, x)
    _equal((got_params, got_state), (params, state))  # same nesting and key types as the init, to 0 tolerance
    init_params, init_state = models.init(module, jax.random.key(0), x)
    assert jax.tree.structure((got_params, got_state)) == jax.tree.structure((init_params, init_state))
    # the loaded model computes what the saved one does
    out = models.bind(module, got_state, train=False)(got_params, x + 1.0).logits
    np.testing.assert_array_equal(out, models.bind(module, state, train=False)(params, x + 1.0).logits)


def test_keys_without_a_collection_are_params_and_dots_separate_safetensors_keys(tmp_path):
    from safetensors.numpy import save_file

    module = models.build("mlp", {"hidden": (8,)}, num_classes=3)
    x = jnp.zeros((1, 5))
    params, state = _trained_like(module, x)
    assert not state  # no batch norm: the params tree alone is the whole model
    flat = {k.removeprefix("params/"): np.asarray(v) for k, v in _flat_of(params).items()}
    np.savez(tmp_path / "bare.npz", **flat)
    save_file({k.replace("/", "."): v for k, v in flat.items()}, str(tmp_path / "dots.safetensors"))
    _orbax(str(tmp_path / "alone"), params)  # an orbax checkpoint of the params tree alone
    for f in ("bare.npz", "dots.safetensors", "alone"):
        _equal(load_weights(tmp_path / f, module, x)[0], params)


def _flat_of(params):
    from jaxbias.models.weights import _flat

    return {f"params/{k}": v for k, v in _flat(params).items()}


@pytest.fixture
def saved(tmp_path):
    """The Linen network and its variables as save_weights lays them out (a dict of arrays to spoil)."""
    module = NETWORKS["linen"]()
    save_weights(tmp_path / "good.npz", *_trained_like(module, X))
    with np.load(tmp_path / "good.npz") as f:
        return module, {k: f[k] for k in f.files}


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("params/head/bias"), r"1 model variable\(s\) the file lacks: params/head/bias"),
    (lambda a: a.update({"params/extra/kernel": np.ones(2, np.float32)}),
     r"1 key\(s\) the model lacks: params/extra/kernel"),
    (lambda a: a.update({"params/head/kernel": np.ones((5, 3), np.float32)}),
     r"params/head/kernel has shape \(5, 3\) in the file but \(4, 3\) in the model"),
    (lambda a: a.update({"params/head/bias": np.ones((1, 3), np.float32)}),  # broadcastable, still refused
     r"params/head/bias has shape \(1, 3\) in the file but \(3,\) in the model"),
    (lambda a: a.update({"params/head/bias": np.ones(3, np.int32)}), r"params/head/bias is int32 in the file"),
])
def test_a_wrong_file_is_refused_in_one_line_naming_it(tmp_path, saved, change, message):
    module, arrays = saved
    change(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message) as e:
        load_weights(path, module, X)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_many_unknown_keys_are_listed_up_to_five(tmp_path, saved):
    module, arrays = saved
    np.savez(tmp_path / "more.npz", **arrays, **{f"params/x{i}": np.zeros(1) for i in range(8)})
    with pytest.raises(ValueError, match=r"8 key\(s\) the model lacks: params/x0, .*params/x4 \(and 3 more\)"):
        load_weights(tmp_path / "more.npz", module, X)


def test_missing_file_and_unknown_format(tmp_path, saved):
    module, arrays = saved
    for path, message in ((tmp_path / "nope.npz", "not found"), (tmp_path / "w.pt", "unknown format")):
        if path.suffix == ".pt":
            path.write_bytes(b"x")
        with pytest.raises(ValueError, match=message) as e:
            load_weights(path, module, X)
        assert "\n" not in str(e.value) and str(path) in str(e.value)
    with pytest.raises(ValueError, match="w.pt.*unknown format"):
        save_weights(tmp_path / "w.pt", {"a": np.zeros(1)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*not a readable orbax checkpoint") as e:
        load_weights(tmp_path / "empty", module, X)
    assert "\n" not in str(e.value)


def test_weights_and_init_from_are_refused_together(tmp_path):
    with pytest.raises(ValueError, match="weights .* and init_from both give the starting model"):
        RunConfig(weights="w.npz", init_from="base")
    code = cli.main(["sweep", "--weights", str(tmp_path / "w.npz"), "--from", str(tmp_path / "base"), "--seeds", "0,1",
                     "--workdir", str(tmp_path / "s"), "--no-progress"])
    assert code == cli.USAGE_ERROR and not (tmp_path / "s").exists()


SMALL = dict(model_settings={"channels": (2, 2, 2, 2)}, batch_size=500)


@pytest.mark.usefixtures("fewer_digits")
def test_a_run_starts_from_the_weights_of_another(tmp_path, capsys):
    """Run A trains one epoch; its weights saved, run B (--weights, 0 epochs) holds and scores exactly A's model,
    a sweep's members all start from them, and resuming does not re-read the file."""
    a = runs.train(RunConfig(epochs=1, **SMALL), progress=False)
    path = tmp_path / "a.safetensors"
    save_weights(path, a.state.params, a.state.model_state)
    b_dir = tmp_path / "b"
    assert cli.main(["train", "--weights", str(path), "--epochs", "0", "--channels", "2,2,2,2", "--batch-size", "500",
                     "--seed", "5", "--workdir", str(b_dir), "--no-progress", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert b["config"]["weights"] == str(path) and json.loads((b_dir / "config.json").read_text())["weights"] == str(path)
    back = runs.train(RunConfig(weights=str(path), epochs=0, seed=5, **SMALL), progress=False)
    _equal(back.variables, a.variables)  # ignored weights would leave seed 5's random initialisation
    assert b["eval"] == a.evaluate(a.config.load_data())
    # a sweep: every member (two seeds) starts from the weights
    swept = runs.sweep(RunConfig(weights=str(path), epochs=0, members=({"seed": 0}, {"seed": 1}), **SMALL),
                       progress=False)
    for i in range(2):
        _equal(swept.member(i).variables, a.variables)
    # training goes on from them; a resumed run starts from its checkpoint and does not read the file again
    c_dir = str(tmp_path / "c")
    one = runs.train(RunConfig(weights=str(path), epochs=1, **SMALL), workdir=c_dir, progress=False)
    path.unlink()
    two = runs.train(RunConfig(weights=str(path), epochs=2, **SMALL), workdir=c_dir, resume=True, progress=False)
    assert two.resumed_from == 1 and [h["epoch"] for h in two.history] == [1, 2]
    assert two.history[0]["loss"] == one.history[0]["loss"]
    with pytest.raises(ValueError, match=r"configured differently \(weights"):
        runs.train(RunConfig(weights=str(tmp_path / "other.npz"), epochs=3, **SMALL), workdir=c_dir, resume=True,
                   progress=False)


@pytest.mark.usefixtures("fewer_digits")
def test_cli_refuses_bad_weights_in_one_line_and_writes_no_workdir(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", **{"params/conv1/kernel": np.zeros((3, 3), np.float32)})
    wd = tmp_path / "run"
    code = cli.main(["train", "--weights", str(tmp_path / "bad.npz"), "--epochs", "1", "--channels", "2,2,2,2",
                     "--batch-size", "500", "--workdir", str(wd), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.USAGE_ERROR and len(err) == 1 and "bad.npz" in err[0], err
    assert not wd.exists()
