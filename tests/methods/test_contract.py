"""Every method module runs through the same checks (optax-style contract test).

A new file in ``jaxbias/methods/`` is picked up here without registration.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import methods, models
from jaxbias.types import Aux, Batch

TRAINING_METHODS = [n for n in methods.available() if hasattr(methods.get(n), "loss")]


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


@pytest.mark.parametrize("name", TRAINING_METHODS)
def test_method_contract(name, setup):
    module, params, ms, batch = setup
    mod = methods.get(name)
    assert mod.__doc__ and len(mod.__doc__) > 40, "module docstring with the paper and symbol map"
    assert dataclasses.is_dataclass(mod.Hparams) and mod.Hparams.__dataclass_params__.frozen
    hp = mod.Hparams()
    # one signature for every method: fit the state from an evaluation-mode model and data
    mstate = mod.init(models.bind(module, ms, train=False), params, batch, hp=hp)
    assert isinstance(mstate, tuple) and hasattr(mstate, "_fields")  # a NamedTuple of arrays

    def f(p, key):
        model = models.bind(module, ms, train=True)
        return mod.loss(p, mstate, batch, key, model=model, hp=hp)

    key = jax.random.key(1)
    value, aux = f(params, key)
    assert isinstance(aux, Aux) and jnp.shape(value) == ()
    assert np.isfinite(float(value))
    assert all(np.isfinite(float(v)) for v in aux.metrics.values())
    assert jax.tree.structure(aux.state) == jax.tree.structure(ms)

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


POST_HOC_METHODS = [n for n in methods.available() if not hasattr(methods.get(n), "loss")]


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
