"""Every method module runs through the same checks (optax-style contract test).

A new file in ``jaxbias/methods/`` is picked up here without registration.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import methods, models
from jaxbias.sweep import with_values
from jaxbias.types import Aux, Batch

TRAINING_METHODS = methods.training()


@pytest.fixture(scope="module")
def setup():
    module = models.create("simple_conv", channels=(3, 4, 5, 6), kernel_size=3, last_activation="tanh")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(12, 10, 10, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 12), jnp.int32)
    # binary bias labels: a concept for the ClArC family, a bias attribute for EnD
    b = jnp.asarray(np.arange(12) % 2, jnp.int32)
    mask = jnp.asarray(np.zeros((12, 10, 10), bool)).at[::2, :3, :3].set(True)
    params, state = models.init(module, jax.random.key(0), x)
    return module, params, state, Batch(x, y, b, mask)


def test_there_are_methods():
    assert {"vanilla", "end", "rrr", "rrclarc", "aclarc", "pclarc"} <= set(TRAINING_METHODS)


def _other_value(v):
    """A second value of a numeric hyperparameter, still in range for every method here."""
    if isinstance(v, int):
        return v + 1
    return 0.5 if v == 0 else v * 0.5


def check_training_method(mod, setup):
    """The contract every training method meets (also run on a throwaway method in test_cli)."""
    module, params, ms, batch = setup
    kind = methods.kind(mod)
    assert not kind.post_hoc and callable(mod.loss)
    assert mod.__doc__ and len(mod.__doc__) > 40, "module docstring with the paper and symbol map"
    assert dataclasses.is_dataclass(mod.Hparams) and mod.Hparams.__dataclass_params__.frozen
    hp = mod.Hparams()
    eval_model = models.bind(module, ms, train=False)
    # one signature for every method: fit the state from an evaluation-mode model and data
    mstate = mod.init(eval_model, params, batch, hp=hp)
    assert isinstance(mstate, tuple) and hasattr(mstate, "_fields")  # a NamedTuple of arrays
    # the state's template is eval_shape of init, from shapes alone (nothing fitted)
    shapes = lambda t: jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), t)
    template = methods.state_template(mod, eval_model, shapes(params), shapes(batch), hp=hp)
    assert jax.tree.structure(template) == jax.tree.structure(mstate) and type(template) is type(mstate)
    assert [(t.shape, t.dtype) for t in jax.tree.leaves(template)] == \
        [(jnp.shape(a), jnp.result_type(a)) for a in jax.tree.leaves(mstate)]
    if kind.corrects_inference:
        fixed = mod.corrected(eval_model, mstate, hp)
        assert fixed(params, batch.x).logits.shape == (12, 10)

    def f(p, key, hp=hp):
        model = models.bind(module, ms, train=True)
        return mod.loss(p, mstate, batch, key, model=model, hp=hp)

    key = jax.random.key(1)
    value, aux = f(params, key)
    assert isinstance(aux, Aux) and jnp.shape(value) == ()
    assert np.isfinite(float(value))
    assert all(np.isfinite(float(v)) for v in aux.metrics.values())
    assert jax.tree.structure(aux.state) == jax.tree.structure(ms)
    if hasattr(mod, "penalty"):  # per-example values; the caller reduces
        per = mod.penalty(params, mstate, batch, key, model=models.bind(module, ms, train=True), hp=hp)
        assert jnp.shape(per) == (12,) and bool(jnp.all(jnp.isfinite(per)))

    traces = []

    def counted(p, k):
        traces.append(1)  # runs only while tracing
        return f(p, k)

    jf = jax.jit(counted)
    jvalue, _ = jf(params, key)
    np.testing.assert_allclose(float(jvalue), float(value), rtol=1e-5)
    jf(params, jax.random.key(2))
    assert len(traces) == 1, "a new key must not trigger a recompilation"

    grads = jax.jit(jax.grad(lambda p: f(p, key)[0]))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))

    # every numeric hyperparameter not marked static can be swept under vmap: all of them vmapped together
    # over two members equal, member by member, the loss of that member's own concrete Hparams
    names = methods.sweepable(mod)
    if names:
        assert all(getattr(hp, n) is not None for n in names), "a sweepable field needs a numeric default"
        members = [{n: getattr(hp, n) for n in names}, {n: _other_value(getattr(hp, n)) for n in names}]
        stacked = {n: jnp.asarray([m[n] for m in members]) for n in names}
        swept = jax.jit(jax.vmap(lambda v: f(params, key, hp=with_values(hp, v))[0]))(stacked)
        each = [float(value), float(jax.jit(lambda p, k: f(p, k, hp=dataclasses.replace(hp, **members[1]))[0])(
            params, key))]
        np.testing.assert_allclose(np.asarray(swept), each, rtol=2e-5, atol=1e-6, err_msg=str(names))
        assert each[0] != each[1], f"the swept values {names} must change the loss"


@pytest.mark.parametrize("name", TRAINING_METHODS)
def test_method_contract(name, setup):
    check_training_method(methods.get(name), setup)


def test_kinds_are_declared_not_guessed():
    """Every module declares KIND; the functions it defines agree with it."""
    for name in methods.available():
        mod, kind = methods.get(name), methods.kind(name)
        assert hasattr(mod, "edit") == kind.post_hoc and hasattr(mod, "loss") == (not kind.post_hoc), name
        assert hasattr(mod, "corrected") == kind.corrects_inference, name
    assert methods.kind("rrclarc").fits_on_model and not methods.kind("end").fits_on_model
    assert methods.sweepable(methods.get("end")) == ["alpha", "beta"]  # num_biases/num_classes are shapes


POST_HOC_METHODS = methods.post_hoc()


def test_there_are_post_hoc_methods():
    assert "fmd" in POST_HOC_METHODS


@pytest.mark.parametrize("name", POST_HOC_METHODS)
def test_post_hoc_contract(name):
    """A post-hoc method edits trained parameters: ``edit(logits_fn, params, data, *, hp) -> params``."""
    import inspect

    mod = methods.get(name)
    assert mod.__doc__ and len(mod.__doc__) > 40
    assert dataclasses.is_dataclass(mod.Hparams) and mod.Hparams.__dataclass_params__.frozen
    hp = mod.Hparams()
    assert hash(hp) == hash(mod.Hparams())  # hashable: a static argument of the compiled edit
    sig = inspect.signature(mod.edit)
    assert "hp" in sig.parameters and sig.parameters["hp"].kind is inspect.Parameter.KEYWORD_ONLY
    # the edit runs on a tiny model and returns parameters of the same structure
    rng = np.random.default_rng(0)
    params = {"out": {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.zeros(2)}}
    x = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
    x_cf = x.at[:, 0].set(-x[:, 0])
    y = jnp.asarray(np.arange(8) % 2, jnp.int32)
    new = mod.edit(lambda p, xx: xx @ p["out"]["w"] + p["out"]["b"], params, (x, x_cf, y), hp=hp)
    assert jax.tree.structure(new) == jax.tree.structure(params)


TEMPERED = '''"""Tempered cross-entropy: a throwaway method written by a test, to show that a method is one file.

Symbols -> arguments: L = (1/B) sum_n CE(f(x_n) / T, y_n); T = hp.temperature.
"""
from dataclasses import dataclass
from typing import NamedTuple

import jax.numpy as jnp
import optax

from jaxbias.methods import Kind
from jaxbias.types import Aux

KIND = Kind()


@dataclass(frozen=True)
class Hparams:
    """Tempered-CE hyperparameters.

    Attributes:
      temperature: the logits are divided by it before the softmax.
    """

    temperature: float = 2.0


class State(NamedTuple):
    """Nothing is fitted."""


def init(model=None, params=None, data=None, *, hp=None):
    return State()


def penalty(params, state, batch, key, *, model, hp):
    out = model(params, batch.x)
    return optax.softmax_cross_entropy_with_integer_labels(out.logits / hp.temperature, batch.y)


def loss(params, state, batch, key, *, model, hp):
    out = model(params, batch.x)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out.logits / hp.temperature, batch.y))
    return ce, Aux(metrics={"ce": ce}, state=out.state)
'''


@pytest.fixture
def tempered(tmp_path, monkeypatch):
    """A method module in a folder of its own, added to the methods package's search path (no registration)."""
    folder = tmp_path / "more_methods"
    folder.mkdir()
    (folder / "tempered.py").write_text(TEMPERED)
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(folder)])
    yield methods.get("tempered")
    import sys

    sys.modules.pop("jaxbias.methods.tempered", None)


def test_a_new_method_is_one_file(tempered, setup, capsys):
    from jaxbias import cli

    assert "tempered" in methods.training() and methods.sweepable(tempered) == ["temperature"]
    check_training_method(tempered, setup)  # the same contract as the bundled methods
    for command in ("train", "sweep", "correct"):  # its hyperparameters are flags, with their docs
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "tempered" in out and "--temperature V tempered: the logits are divided by it" in out, command
    # and the flag reaches the run configuration, typed
    args = cli.build_parser().parse_args(["train", "--method", "tempered", "--temperature", "3", "--workdir", "w"])
    config = cli.run_config(args)
    assert config.hparams == {"temperature": 3.0}
    assert methods.make_hparams("tempered", config.hparams) == tempered.Hparams(temperature=3.0)
