import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import models

SMALL = dict(channels=(4, 6, 8, 8))


@pytest.fixture(scope="module")
def conv():
    m = models.create("simple_conv", **SMALL)
    x = jax.random.uniform(jax.random.key(1), (5, 28, 28, 3))
    params, state = models.init(m, jax.random.key(0), x)
    return m, params, state, x


def test_conv_named_layers_and_shapes(conv):
    m, params, state, x = conv
    logits, acts = m.apply({"params": params, **state}, x, train=False)
    assert logits.shape == (5, 10)
    assert [acts[f"block{i}"].shape for i in range(1, 5)] == [(5, 28, 28, c) for c in SMALL["channels"]]
    assert acts["features"].shape == (5, 8)
    np.testing.assert_allclose(acts["features"], acts["block4"].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(acts["logits"], logits)


def test_full_size_parameter_count():
    m = models.create("simple_conv")
    params, state = models.init(m, jax.random.key(0), jnp.zeros((1, 28, 28, 3)))
    n = sum(p.size for p in jax.tree.leaves(params))
    # convs (7·7·cin·cout + cout) + BN (2·c) + fc (128·10 + 10)
    chans = [3, 16, 32, 64, 128]
    expected = sum(49 * a * b + b + 2 * b for a, b in zip(chans[:-1], chans[1:])) + 1290
    assert n == expected
    assert set(state) == {"batch_stats"}


def test_perturb_is_additive_and_its_gradient_is_the_latent_gradient():
    # tanh keeps the head smooth, so central differences are exact to O(eps²)
    m = models.create("simple_conv", last_activation="tanh", **SMALL)
    with jax.enable_x64(True):
        x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 3), dtype=jnp.float64)
        params, state = models.init(m, jax.random.key(0), x)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        state = jax.tree.map(lambda a: a.astype(jnp.float64), state)
        bound = models.bind(m, state, train=False)
        model = jax.jit(lambda params, x, perturb=None: bound(params, x, perturb=perturb))  # one program, not op by op
        base = model(params, x)
        d = jax.random.normal(jax.random.key(2), base.acts["block3"].shape, dtype=jnp.float64)

        def head(p):
            return model(params, x, perturb={"block3": p}).logits

        zero = jnp.zeros_like(d)
        _, jvp = jax.jvp(head, (zero,), (d,))
        eps = 1e-6
        fd = (head(eps * d) - head(-eps * d)) / (2 * eps)
        np.testing.assert_allclose(jvp, fd, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(head(zero), base.logits, rtol=1e-12)
        out = model(params, x, perturb={"block3": d})
        np.testing.assert_allclose(out.acts["block3"], base.acts["block3"] + d, rtol=1e-12)


def test_edit_replaces_layer(conv):
    m, params, state, x = conv
    model = models.bind(m, state, train=False)
    out = model(params, x, edit={"features": jnp.zeros_like})
    np.testing.assert_allclose(out.logits, jnp.broadcast_to(params["fc"]["bias"], (5, 10)), atol=1e-7)


def test_unknown_layer_and_bad_shapes_raise(conv):
    m, params, state, x = conv
    model = models.bind(m, state, train=False)
    with pytest.raises(ValueError, match="unknown layer"):
        model(params, x, perturb={"conv9": jnp.zeros(1)})
    with pytest.raises(ValueError, match="unknown layer"):
        model(params, x, edit={"nope": lambda h: h})
    with pytest.raises(ValueError, match=r"perturb\['features'\]"):
        model(params, x, perturb={"features": jnp.zeros((8,))})
    with pytest.raises(ValueError, match="x must be"):
        model(params, x[0])
    with pytest.raises(ValueError, match="model 'resnet999' is unknown"):
        models.create("resnet999")


def test_batch_stats_update_only_in_training(conv):
    m, params, state, x = conv
    out_train = models.bind(m, state, train=True)(params, x)
    out_eval = models.bind(m, state, train=False)(params, x)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), out_train.state, state)
    assert all(jax.tree.leaves(changed))
    assert out_eval.state is state
    # train mode normalises with batch statistics: block1 pre-activation has ~zero mean
    h = jax.tree.leaves(out_train.state)  # not NaN
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in h)


def test_tanh_last_activation():
    m = models.create("simple_conv", channels=(2, 2, 2, 3), last_activation="tanh")
    x = jax.random.uniform(jax.random.key(3), (2, 28, 28, 3))
    params, state = models.init(m, jax.random.key(0), x)
    out = models.bind(m, state, train=False)(params, x)
    assert float(jnp.abs(out.acts["block4"]).max()) <= 1.0
    assert float(out.acts["block4"].min()) < 0.0  # ReLU could not produce this
    with pytest.raises(ValueError, match="last_activation"):
        bad = models.create("simple_conv", channels=(2, 2, 2, 3), last_activation="gelu")
        models.init(bad, jax.random.key(0), x)


def test_mlp():
    m = models.create("mlp", hidden=(7, 5))
    x = jax.random.uniform(jax.random.key(3), (4, 28, 28, 3))
    params, state = models.init(m, jax.random.key(0), x)
    assert state == {}
    out = models.bind(m, state, train=True)(params, x)
    assert out.logits.shape == (4, 10)
    assert out.acts["dense1"].shape == (4, 7)
    np.testing.assert_array_equal(out.acts["features"], out.acts["dense2"])
    w1, b1 = params["fc1"]["kernel"], params["fc1"]["bias"]
    np.testing.assert_allclose(out.acts["dense1"], np.maximum(x.reshape(4, -1) @ w1 + b1, 0), rtol=1e-5, atol=1e-6)
