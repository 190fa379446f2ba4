"""LRP by interception (jaxbias.explain.intercept): the same relevance as the layer-graph LRP on the bundled nets,
conservation on the papers' architectures and on a network of yours, refusals in one line."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from jaxbias import methods, models
from jaxbias.explain import lrp, to_graph
from jaxbias.explain.intercept import lrp_model, make_lrp_model, supported
from jaxbias.models.layers import tap


def _perturbed(module, x, seed=0):
    """Variables with non-trivial biases and batch-norm statistics (so that folding and the bias conventions matter)."""
    rng = np.random.default_rng(seed)
    params, state = models.init(module, jax.random.key(seed), x[:1])
    params = jax.tree.map(lambda v: v + 0.1 * jnp.asarray(rng.normal(size=v.shape), v.dtype), params)
    state = jax.tree.map(lambda v: v + 0.3 * jnp.asarray(rng.uniform(size=v.shape), v.dtype), state)
    return {"params": params, **state}


@pytest.mark.parametrize("name,settings,shape,epsilon", [
    ("simple_conv", {"channels": (4, 6, 8, 10), "kernel_size": 3, "last_activation": "relu"}, (6, 12, 12, 3), 1e-6),
    # tanh before the mean: the graph stabilises the mean's denominator by ε, autodiff does not: compared at ε = 1e-9
    ("simple_conv", {"channels": (4, 6, 8, 10), "kernel_size": 3, "last_activation": "tanh"}, (6, 12, 12, 3), 1e-9),
    ("mlp", {"hidden": (20, 10)}, (6, 8, 8, 3), 1e-6),
])
@pytest.mark.parametrize("zplus_bias", [True, False])
def test_equals_the_layer_graph_lrp_on_the_bundled_networks(name, settings, shape, epsilon, zplus_bias):
    module = models.create(name, **settings)
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    variables = _perturbed(module, x)
    target = jnp.arange(shape[0]) % 3
    ref = lrp(to_graph(module, variables), x, target=target, epsilon=epsilon, zplus_bias=zplus_bias)
    got = lrp_model(module, variables, x, target=target, epsilon=epsilon, zplus_bias=zplus_bias)
    scale = float(jnp.abs(ref).max())
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5 * scale)
    # not the input gradient: the rules changed the backward pass
    grad = jax.grad(lambda t: jnp.sum(module.apply(variables, t, train=False)[0] * jax.nn.one_hot(target, 10)))(x)
    assert float(jnp.abs(x * grad - ref).max()) > 1e-3 * scale
    # compiled once per shape; the same numbers
    np.testing.assert_allclose(np.asarray(make_lrp_model(module, variables, epsilon=epsilon, zplus_bias=zplus_bias)(
        x, target)), np.asarray(got), rtol=1e-5, atol=1e-6 * scale)


def _zero_biases(variables):
    """Biases (and batch-norm shifts and means) at zero: no relevance is absorbed, it is conserved."""
    def zero(path, v):
        return jnp.zeros_like(v) if path[-1].key in ("bias", "mean") else v
    return jax.tree_util.tree_map_with_path(zero, variables)


@pytest.mark.parametrize("name,gain,conv", [("resnet18", 1.0, "zplus"),
                                            pytest.param("vgg16", 1.0, "zplus", marks=pytest.mark.slow),
                                            pytest.param("efficientnet_b0", 2.0, "epsilon", marks=pytest.mark.slow)])
def test_relevance_is_conserved_on_the_papers_architectures(name, gain, conv):
    """EfficientNet-B0: through its SiLU and squeeze-excitation gate modules too (relevance passes them on). Its
    convolutions are explained with the ε rule here: z⁺ drops the relevance of an output none of whose inputs
    contributes positively, which its depthwise convolutions (9 or 25 inputs of one channel, after SiLU) often
    meet — 74 % of the logit lost on these random weights (docs/lrp.md)."""
    module = models.create(name, num_classes=5)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)), jnp.float32)
    variables = _zero_biases(_perturbed(module, x))  # (batch-norm scales away from their init: not all zero)
    # batch-norm scales × gain: without biases EfficientNet's 16 gated blocks shrink the signal to ~1e-8 at gain 1
    variables = jax.tree_util.tree_map_with_path(lambda p, v: v * gain if p[-1].key == "scale" else v, variables)
    relevance = lrp_model(module, variables, x, target=2, zplus_bias=False, epsilon=1e-9, conv=conv)
    logit = module.apply(variables, x, train=False)[0][:, 2]
    np.testing.assert_allclose(np.asarray(relevance.sum((1, 2, 3))), np.asarray(logit), rtol=1e-4)
    assert float((jnp.abs(relevance) > 0).mean()) > 0.5  # spread over the pixels


class Block(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train):
        y = nn.Conv(self.features, (3, 3), name="conv")(x)
        return nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(y))


class YourNet(nn.Module):
    """A residual network as a researcher writes it: no taps, its own names."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Block(6, name="stem")(x, train)
        x = x + Block(6, name="stage1")(x, train)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(16, name="dense")(x.mean((1, 2))))
        return nn.Dense(4, name="head")(x)


def test_a_network_of_yours_wrapped_by_from_linen_conserves_relevance():
    module = models.from_linen(YourNet(), layers=("stage1",))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 10, 10, 3)), jnp.float32)
    variables = _zero_biases(_perturbed(module, x))
    relevance = lrp_model(module, variables, x, target=1, zplus_bias=False, epsilon=1e-9)
    logit = module.apply(variables, x, train=False)[0][:, 1]
    np.testing.assert_allclose(np.asarray(relevance.sum((1, 2, 3))), np.asarray(logit), rtol=1e-4)
    # with its biases, ε and zplus' b⁺ absorb some: not conserved, but close to the same map's scale
    full = lrp_model(module, _perturbed(module, x), x, target=1)
    assert full.shape == x.shape and np.isfinite(np.asarray(full)).all()


def test_what_lrp_cannot_explain_is_refused_in_one_line():
    class NoLayers(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return x.reshape(x.shape[0], -1)[:, :3]

    class Shared(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            d = nn.Dense(12, name="twice")
            return d(d(x.reshape(x.shape[0], -1)))[:, :3]

    x = jnp.ones((2, 2, 2, 3))
    with pytest.raises(ValueError, match="NoLayers calls no nn.Conv or nn.Dense"):
        lrp_model(NoLayers(), {}, x)
    p = Shared().init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="'twice' is called more than once"):
        lrp_model(Shared(), p, x)
    module = models.create("mlp", hidden=(5,))
    variables = {"params": models.init(module, jax.random.key(0), x[:1])[0]}
    with pytest.raises(ValueError, match="conv must be one of"):
        lrp_model(module, variables, x, conv="flat")


def test_lrp_from_a_layer_conserves_the_relevance_it_starts_with():
    """Concept-conditioned LRP: started at a layer with a ⊙ cav (or any relevance), the input relevance sums to what
    it started with (zero biases, ε rules), per sample."""
    from jaxbias.explain import concept_relevance

    module = models.create("simple_conv", channels=(4, 6, 8, 10), kernel_size=3, last_activation="relu")
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 12, 12, 3)), jnp.float32)
    variables = _zero_biases(_perturbed(module, x))
    cav = jnp.asarray(np.random.default_rng(2).normal(size=8), jnp.float32)
    rel = concept_relevance(module, variables, x, layer="block3", cav=cav, zplus_bias=False, epsilon=1e-9,
                            conv="epsilon")
    a = module.apply(variables, x, train=False)[1]["block3"]
    np.testing.assert_allclose(np.asarray(rel.sum((1, 2, 3))), np.asarray((a * cav).sum((1, 2, 3))), rtol=1e-4)
    # any starting relevance: one position gives relevance only inside its receptive field
    start = jnp.zeros_like(a).at[:, 0, 0, :].set(a[:, 0, 0, :])
    rel = lrp_model(module, variables, x, layer="block3", start=start, zplus_bias=False, epsilon=1e-9)
    assert float(jnp.abs(rel[:, 4:]).max()) == 0 and float(jnp.abs(rel[:, :4, :4]).sum()) > 0  # 3 layers of 3×3
    for bad, message in [(dict(cav=cav), "name it with layer="), (dict(layer="block3"), "give the relevance"),
                         (dict(layer="nope", cav=cav), r"layer='nope' is not an activation .*'block3'"),
                         (dict(layer="block3", cav=cav[:3]), r"cav has shape \(3,\)")]:
        with pytest.raises(ValueError, match=message):
            lrp_model(module, variables, x, **bad)


@pytest.mark.slow
def test_concept_relevance_finds_the_stamp_on_a_trained_model(fewer_digits):
    """On a model trained with the stamp shortcut, LRP started at the stamp's CAV puts more of its positive relevance
    inside the stamp than the stamp's share of the image, and its masks cover the stamp."""
    from jaxbias import metrics, runs
    from jaxbias.explain import concept_masks, concept_relevance
    from jaxbias.runs.measure import reference_cav

    run = runs.train(runs.RunConfig(dataset="artifact_mnist", model_settings={"channels": (4, 8, 16, 32)}, epochs=4,
                                    batch_size=32), progress=False)
    data = run.config.load_data()
    art = data.evals["artifact"]
    x, stamp = jnp.asarray(art.x[:64]), np.asarray(art.mask[:64]) > 0
    variables = {"params": run.state.params, **run.state.model_state}
    rel = np.asarray(concept_relevance(run.module, variables, x, layer="block2",
                                       cav=reference_cav(run, data, layer="block2")))
    positive = np.maximum(rel.sum(-1), 0)
    assert (positive * stamp).sum() / positive.sum() > 2 * stamp.mean()
    masks = concept_masks(rel, low=0.3, high=0.5, sigma=1.0)
    assert (masks & stamp).sum() / stamp.sum() > 0.5 and (masks & stamp).sum() / masks.sum() > 2 * stamp.mean()
    assert metrics.r_bias(rel, stamp).mean() > 0


class _NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(6, 8, (3, 3), rngs=rngs)

    def __call__(self, h):
        return nnx.relu(self.conv(h))


class _NNXNet(nnx.Module):
    """An NNX network as its author wrote it: a conv with batch-norm, a nested block, a linear head."""

    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 6, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(6, rngs=rngs)
        self.block = _NNXBlock(rngs)
        self.head = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        h = nnx.avg_pool(nnx.relu(self.bn(self.conv1(x))), (2, 2), strides=(2, 2))
        return self.head(nnx.max_pool(self.block(h), (2, 2), strides=(2, 2)).mean((1, 2)))


class _LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, h):
        return nn.relu(nn.Conv(8, (3, 3), name="conv")(h))


class _LinenTwin(nn.Module):
    """The same network in Linen, parameter names and all: the NNX weights load into it as they are."""

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.BatchNorm(use_running_average=not train, name="bn")(nn.Conv(6, (3, 3), name="conv1")(x))
        h = nn.avg_pool(nn.relu(h), (2, 2), strides=(2, 2))
        h = nn.max_pool(_LinenBlock(name="block")(h), (2, 2), strides=(2, 2))
        return nn.Dense(4, name="head")(h.mean((1, 2)))


@pytest.mark.parametrize("zplus_bias", [True, False])
def test_an_nnx_network_gets_the_same_lrp_as_its_linen_twin(zplus_bias):
    """from_nnx: the rules reach nnx.Conv / nnx.Linear / nnx.BatchNorm (nested ones too) in the model each call
    merges; relevance equals the Linen twin's with the same weights, and is conserved with zero biases."""
    module = models.from_nnx(_NNXNet(nnx.Rngs(0)), layers=("block",))
    assert supported(module)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 8, 8, 3)), jnp.float32)
    variables = _perturbed(module, x)
    twin = _LinenTwin()
    assert jax.tree.structure(twin.init(jax.random.key(0), x[:1])) == jax.tree.structure(variables)
    np.testing.assert_allclose(np.asarray(module.apply(variables, x, train=False)[0]),
                               np.asarray(twin.apply(variables, x)), rtol=1e-5, atol=1e-6)
    target = jnp.array([0, 1, 2, 3])
    got = lrp_model(module, variables, x, target=target, zplus_bias=zplus_bias)
    ref = lrp_model(twin, variables, x, target=target, zplus_bias=zplus_bias)
    scale = float(jnp.abs(ref).max())
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5 * scale)
    grad = jax.grad(lambda t: jnp.sum(twin.apply(variables, t) * jax.nn.one_hot(target, 4)))(x)
    assert float(jnp.abs(x * grad - ref).max()) > 1e-3 * scale  # the rules were applied, not the gradient
    zero = _zero_biases(variables)
    relevance = lrp_model(module, zero, x, target=target, zplus_bias=False, epsilon=1e-9)
    logit = module.apply(zero, x, train=False)[0][jnp.arange(4), target]
    np.testing.assert_allclose(np.asarray(relevance.sum((1, 2, 3))), np.asarray(logit), rtol=1e-4)
    # concept-conditioned LRP from the tapped NNX block: its start relevance reaches the input
    start = lrp_model(module, zero, x, layer="block", start=lambda a: a, zplus_bias=False, epsilon=1e-9)
    block = module.apply(zero, x, train=False)[1]["block"]
    np.testing.assert_allclose(np.asarray(start.sum((1, 2, 3))), np.asarray(block.sum((1, 2, 3))), rtol=1e-4)


def test_a_function_model_is_not_supported():
    module = models.from_functions(lambda p, x, train: x.mean((1, 2)) @ p["w"], lambda p, h, train: h,
                                   {"w": jnp.ones((3, 2))})
    assert not supported(module)


class _Tapped(nn.Module):
    """A small net of the house contract, a dense layer tapped as "hidden" (where P-ClArC projects)."""

    @nn.compact
    def __call__(self, x, *, train=False, perturb=None, edit=None):
        acts = {}
        h = tap("hidden", nn.Dense(6, name="hidden")(x.reshape(x.shape[0], -1)), acts, perturb, edit)
        return nn.Dense(3, name="head")(nn.relu(h)), acts


class _Projected(nn.Module):
    """The same net with P-ClArC's projection written as a dense layer (kernel I − hhᵀ/hᵀh, bias ⟨z⁻⟩h/hᵀh)."""

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Dense(6, name="projection")(nn.Dense(6, name="hidden")(x.reshape(x.shape[0], -1)))
        return nn.Dense(3, name="head")(nn.relu(h))


def test_a_p_clarc_corrected_model_is_explained_through_its_projection():
    """LRP with P-ClArC's edits (pclarc.edits) equals LRP of the twin whose projection is a dense layer under the ε
    rule — the affine projection passes relevance as a linear layer does — and differs from the uncorrected map."""
    pclarc = methods.get("pclarc")
    x = jnp.asarray(np.random.default_rng(3).normal(size=(5, 4, 4, 2)), jnp.float32)
    variables = _perturbed(_Tapped(), x)
    h = jnp.asarray(np.random.default_rng(4).normal(size=6), jnp.float32)
    h = h / jnp.linalg.norm(h)
    state = pclarc.State(cav=h, z_plus=jnp.float32(2.0), z_minus=jnp.float32(-0.5))
    edits = pclarc.edits(state, pclarc.Hparams(layer="hidden"))
    got = lrp_model(_Tapped(), variables, x, target=1, edit=edits, epsilon=1e-9)
    twin = {"params": {**variables["params"], "projection": {
        "kernel": jnp.eye(6) - jnp.outer(h, h) / jnp.dot(h, h), "bias": state.z_minus * h / jnp.dot(h, h)}}}
    # the corrected model's logits are the twin's, and so is its relevance
    model = pclarc.corrected(models.bind(_Tapped(), {}, train=False), state, pclarc.Hparams(layer="hidden"))
    np.testing.assert_allclose(np.asarray(model(variables["params"], x).logits),
                               np.asarray(_Projected().apply(twin, x)), rtol=1e-5, atol=1e-6)
    ref = lrp_model(_Projected(), twin, x, target=1, epsilon=1e-9)
    scale = float(jnp.abs(ref).max())
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-5 * scale)
    plain = lrp_model(_Tapped(), variables, x, target=1, epsilon=1e-9)
    assert float(jnp.abs(plain - got).max()) > 1e-2 * scale
    with pytest.raises(ValueError, match="edit must map layer names to functions"):
        lrp_model(_Tapped(), variables, x, edit={"hidden": 1.0})
