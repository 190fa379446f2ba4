"""VGG-16, ResNet-18, EfficientNet-B0: sizes, named layers, hooks, pooling, padding.

Random variables are drawn with NumPy into the shapes from ``jax.eval_shape``:
on CPU, compiling ``module.init`` for EfficientNet (≈300 random initialisers)
takes tens of seconds. VGG-16 (138M parameters) is checked through
``eval_shape`` only; its numerics are checked against torchvision in
test_torchvision_weights.py when torch is installed.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import models
from jaxbias.models import _imagenet
from jaxbias.models.efficientnet import stochastic_depth
from jaxbias.models.layers import adaptive_avg_pool

COUNTS = {"vgg16": 138_357_544, "resnet18": 11_689_512, "efficientnet_b0": 5_288_548}
STAGES = {
    "vgg16": ["block1", "block2", "block3", "block4"],
    "resnet18": ["stem", "layer1", "layer2", "layer3", "layer4"],
    "efficientnet_b0": ["stem"] + [f"stage{i}" for i in range(1, 8)],
}
LAST = {"vgg16": 512, "resnet18": 512, "efficientnet_b0": 1280}
B = 2


def _abstract(module, shape=(1, 64, 64, 3)):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda k, x: module.init(k, x, train=False), jax.random.key(0), x)


def _random_variables(module, seed=0, shape=(1, 32, 32, 3)):
    """He-scaled kernels, small biases, non-trivial batch-norm statistics."""
    rng = np.random.default_rng(seed)
    abstract = _abstract(module, shape)

    def draw(path, a):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(a.shape[:-1]))
            return rng.normal(0, np.sqrt(2.0 / fan_in), a.shape).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        return rng.normal(0, 0.1, a.shape).astype(np.float32)

    variables = jax.tree_util.tree_map_with_path(draw, abstract)
    params = variables.pop("params")
    return params, variables


@pytest.fixture(scope="module", params=["resnet18", "efficientnet_b0"])
def small(request):
    name = request.param
    m = models.create(name, num_classes=10)
    params, state = _random_variables(m)
    x = jax.random.normal(jax.random.key(1), (B, 32, 32, 3))
    bound = models.bind(m, state, train=False)
    hooks = STAGES[name] + ["last_conv", "features"]
    shapes = jax.eval_shape(lambda p, x: bound(p, x).acts, params, x)
    zeros = {k: jnp.zeros(shapes[k].shape) for k in hooks}
    # one compiled forward, always with a perturbation at every hook (zeros = none)
    fwd = jax.jit(lambda params, x, perturb: bound(params, x, perturb=perturb))

    def model(params, x, perturb=None):
        return fwd(params, x, {**zeros, **(perturb or {})})

    return name, m, params, state, x, model


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_counts_and_state(name):
    m = models.create(name)
    v = _abstract(m)
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v["params"])) == COUNTS[name]
    assert set(v) == ({"params"} if name == "vgg16" else {"params", "batch_stats"})
    assert m.num_classes == 1000 and m.latent_layer == "last_conv"


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_linear_groups_are_the_top_level_dense_layers(name):
    m = models.create(name)
    params = _abstract(m)["params"]
    dense = {k for k, g in params.items() if set(g) == {"kernel", "bias"} and g["kernel"].ndim == 2}
    assert dense == set(m.linear_groups)


@pytest.mark.parametrize("name", sorted(COUNTS))
@pytest.mark.parametrize("hw", [(32, 32), (75, 61)])
def test_named_layers_and_shapes(name, hw):
    m = models.create(name, num_classes=7)
    variables = _abstract(m)
    x = jax.ShapeDtypeStruct((B, *hw, 3), jnp.float32)
    logits, acts = jax.eval_shape(lambda v, x: m.apply(v, x, train=False), variables, x)
    assert logits.shape == (B, 7)
    assert set(STAGES[name]) | {"last_conv", "features", "logits"} <= set(acts)
    if name == "vgg16":  # last_conv comes before the fifth 2×2 pool (floor mode): four halvings
        assert acts["last_conv"].shape == (B, hw[0] // 16, hw[1] // 16, 512)
        assert acts["features"].shape == (B, 7 * 7 * 512)
        assert acts["fc1"].shape == acts["fc2"].shape == (B, 4096)
    else:  # five stride-2 convs/pools with torch's padding: n -> ⌈n/2⌉
        h, w = hw
        for _ in range(5):
            h, w = -(-h // 2), -(-w // 2)
        assert acts["last_conv"].shape == (B, h, w, LAST[name])
        assert acts["features"].shape == (B, LAST[name])


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_bad_inputs_raise(name):
    m = models.create(name)
    variables = _abstract(m)
    for shape, match in (((B, 16, 40, 3), "at least 32"), ((32, 32, 3), r"\(B, H, W, C\)")):
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(lambda v, x: m.apply(v, x, train=False), variables, x)
    x = jax.ShapeDtypeStruct((B, 32, 32, 3), jnp.float32)
    with pytest.raises(ValueError, match="unknown layer"):
        jax.eval_shape(lambda v, x: m.apply(v, x, train=False, edit={"layer9": lambda h: h}), variables, x)


def test_vgg_hooks_by_shape():
    m = models.create("vgg16")
    variables = _abstract(m)
    x = jax.ShapeDtypeStruct((B, 32, 32, 3), jnp.float32)
    p = jax.ShapeDtypeStruct((B, 2, 2, 512), jnp.float32)
    out = jax.eval_shape(lambda v, x, p: m.apply(v, x, train=False, perturb={"last_conv": p}), variables, x, p)
    assert out[0].shape == (B, 1000)
    with pytest.raises(ValueError, match=r"perturb\['last_conv'\]"):
        bad = jax.ShapeDtypeStruct((B, 1, 1, 512), jnp.float32)
        jax.eval_shape(lambda v, x, p: m.apply(v, x, train=False, perturb={"last_conv": p}), variables, x, bad)


def test_forward_layers_are_consistent(small):
    name, m, params, state, x, model = small
    out = model(params, x)
    assert out.logits.shape == (B, 10) and np.all(np.isfinite(out.logits))
    np.testing.assert_allclose(out.acts["features"], out.acts["last_conv"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.acts["logits"], out.logits)
    head = params[m.linear_groups[0]]
    np.testing.assert_allclose(out.logits, out.acts["features"] @ head["kernel"] + head["bias"], rtol=1e-4, atol=1e-4)
    if name == "resnet18":
        np.testing.assert_array_equal(out.acts["layer4"], out.acts["last_conv"])
    assert np.all(np.asarray(out.acts["last_conv"]) >= (0 if name == "resnet18" else -0.2785))  # ReLU / SiLU floor


def test_perturb_and_edit_at_last_conv(small):
    name, m, params, state, x, model = small
    base = model(params, x)
    d = jnp.ones_like(base.acts["last_conv"])
    pert = model(params, x, {"last_conv": d})
    np.testing.assert_allclose(pert.acts["last_conv"], base.acts["last_conv"] + 1, rtol=1e-6)
    assert np.abs(np.asarray(pert.logits - base.logits)).max() > 1e-3
    bound = models.bind(m, state, train=False)
    edited = jax.jit(lambda p, x: bound(p, x, edit={"last_conv": jnp.zeros_like}))(params, x)
    bias = params[m.linear_groups[0]]["bias"]
    np.testing.assert_array_equal(edited.acts["features"], 0)
    np.testing.assert_allclose(edited.logits, jnp.broadcast_to(bias, (B, 10)), atol=1e-6)
    with pytest.raises(ValueError, match="unknown layer"):
        jax.eval_shape(lambda p, x: bound(p, x, perturb={"conv99": d}), params, x)


def test_every_stage_is_a_hook_on_the_path_to_the_logits(small):
    name, m, params, state, x, model = small
    base = model(params, x)
    hooks = STAGES[name] + ["last_conv", "features"]
    # row i perturbs hook i only; one vmapped call checks them all
    stacked = {
        k: jnp.stack([jnp.full_like(base.acts[k], 0.5 * (i == j)) for j in range(len(hooks))])
        for i, k in enumerate(hooks)
    }
    logits = jax.vmap(lambda p: model(params, x, p).logits)(stacked)
    for k, out in zip(hooks, logits):
        assert np.abs(np.asarray(out - base.logits)).max() > 1e-4, k


def test_resnet_batch_norm_momentum_and_stem_padding():
    # bn1's new running mean = 0.9·old + 0.1·batch mean of conv1(x); conv1 is a
    # 7×7/2 conv padded 3 on every side, written here as a NumPy loop.
    m = models.create("resnet18", num_classes=10)
    params, state = _random_variables(m, seed=3)
    x = np.asarray(jax.random.normal(jax.random.key(2), (B, 34, 34, 3)))
    out = jax.jit(models.bind(m, state, train=True))(params, jnp.asarray(x))
    k = np.asarray(params["conv1"]["kernel"], np.float64)
    xp = np.pad(x.astype(np.float64), ((0, 0), (3, 3), (3, 3), (0, 0)))
    n = (34 + 6 - 7) // 2 + 1
    y = np.zeros((B, n, n, 64))
    for i in range(n):
        for j in range(n):
            y[:, i, j] = np.einsum("bhwc,hwco->bo", xp[:, 2 * i : 2 * i + 7, 2 * j : 2 * j + 7], k)
    old = np.asarray(state["batch_stats"]["bn1"]["mean"])
    np.testing.assert_allclose(
        out.state["batch_stats"]["bn1"]["mean"], 0.9 * old + 0.1 * y.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5
    )


def test_torch_style_padding_for_strided_conv_on_even_input():
    # Flax's "SAME" would pad (0, 1) here; PyTorch pads (1, 1).
    conv = _imagenet.conv(2, 3, stride=2, name="c")
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 8, 8, 1)))
    v = conv.init(jax.random.key(1), jnp.asarray(x))
    y = np.asarray(conv.apply(v, jnp.asarray(x)))
    k = np.asarray(v["params"]["kernel"])
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = np.array([[np.einsum("hwc,hwco->o", xp[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3], k) for j in range(4)]
                    for i in range(4)])
    np.testing.assert_allclose(y[0], ref, rtol=1e-5, atol=1e-6)


def _torch_adaptive_pool(x, out_hw):
    """PyTorch's formula: start = ⌊i·H/o⌋, end = ⌈(i+1)·H/o⌉, written as a loop."""
    b, h, w, c = x.shape
    oh, ow = out_hw
    y = np.zeros((b, oh, ow, c))
    for i in range(oh):
        h0, h1 = (i * h) // oh, int(np.ceil((i + 1) * h / oh))
        for j in range(ow):
            w0, w1 = (j * w) // ow, int(np.ceil((j + 1) * w / ow))
            y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return y


@pytest.mark.parametrize(
    "hw,out", [((10, 13), (7, 7)), ((14, 14), (7, 7)), ((7, 7), (7, 7)), ((2, 3), (7, 7)), ((1, 1), (7, 7)),
               ((5, 11), (3, 4)), ((9, 8), (1, 1))]
)
def test_adaptive_avg_pool_matches_torch_formula(hw, out):
    x = np.random.default_rng(0).normal(size=(2, *hw, 3)).astype(np.float32)
    ours = adaptive_avg_pool(jnp.asarray(x), out)
    np.testing.assert_allclose(ours, _torch_adaptive_pool(x, out), rtol=1e-5, atol=1e-6)


def test_adaptive_avg_pool_rejects_bad_input():
    with pytest.raises(ValueError, match="output_size"):
        adaptive_avg_pool(jnp.zeros((1, 4, 4, 1)), (0, 2))
    with pytest.raises(ValueError, match="x must be"):
        adaptive_avg_pool(jnp.zeros((4, 4, 1)), (2, 2))


def test_dropout_and_stochastic_depth():
    m = models.create("efficientnet_b0", num_classes=10, dropout_rate=0.2, stochastic_depth_rate=0.2)
    params, state = _random_variables(m, seed=1)
    x = jax.random.normal(jax.random.key(1), (B, 32, 32, 3))
    v = {"params": params, **state}
    # evaluation draws no random numbers: no "dropout" rng needed
    jax.eval_shape(lambda v, x: m.apply(v, x, train=False), v, x)
    run = jax.jit(lambda key: m.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})[0][0])
    a, b = run(jax.random.key(0)), run(jax.random.key(1))
    assert np.abs(np.asarray(a - b)).max() > 1e-4
    with pytest.raises(ValueError, match="stochastic_depth_rate"):
        models.create("efficientnet_b0", stochastic_depth_rate=1.0).apply(v, x, train=False)
    with pytest.raises(ValueError, match="dropout_rate"):
        jax.eval_shape(lambda x: models.create("vgg16", dropout_rate=-0.1).init(jax.random.key(0), x, train=False),
                       jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))


def test_stochastic_depth_drops_whole_examples():
    class Probe(nn.Module):
        @nn.compact
        def __call__(self, h):
            return stochastic_depth(self, h, 0.25, True)

    h = jnp.ones((4000, 2, 2, 3))
    y = np.asarray(Probe().apply({}, h, rngs={"dropout": jax.random.key(0)}))
    per_example = y.reshape(4000, -1)
    assert np.all(per_example.min(axis=1) == per_example.max(axis=1))  # "row" mode
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs((per_example[:, 0] == 0).mean() - 0.25) < 0.03
    np.testing.assert_array_equal(stochastic_depth(None, h, 0.25, False), h)
