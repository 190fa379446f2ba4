"""from_linen / from_nnx: an unmodified Linen or NNX network, tapped at named submodules, behaves in every method as
the same network written with the house's taps (same weights: same logits, activations, batch-norm statistics,
perturb gradients, losses and gradients)."""
import dataclasses
import json

import flax.linen as nn
import jax
from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import methods, models, runs
from jaxbias.evaluation import latent_sensitivity
from jaxbias.models.adapters import from_functions, from_linen, from_nnx
from jaxbias.models.layers import check_hooks, tap
from jaxbias.train import method_loss
from jaxbias.types import Batch


class Block(nn.Module):
    """Conv → BatchNorm → ReLU, written as in flax's examples (no taps)."""

    features: int

    @nn.compact
    def __call__(self, x, train):
        y = nn.Conv(self.features, (3, 3), name="conv")(x)
        y = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(y)
        return nn.relu(y)


class CNN(nn.Module):
    """A small ResNet-style network as a researcher has it: its own names, `train` keyword, no taps."""

    num_classes: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Block(6, name="stem")(x, train)
        x = x + Block(6, name="stage1")(x, train)  # a residual connection
        x = Block(8, name="stage2")(x, train)
        x = x.mean((1, 2))
        x = nn.relu(nn.Dense(16, name="dense")(x))
        return nn.Dense(self.num_classes, name="head")(x)


class TappedByHand(nn.Module):
    """The same network written with the house's taps at the same places (the reference)."""

    num_classes: int = 4

    @nn.compact
    def __call__(self, x, *, train, perturb=None, edit=None):
        acts = {}
        x = Block(6, name="stem")(x, train)
        x = x + tap("stage1", Block(6, name="stage1")(x, train), acts, perturb, edit)
        x = tap("stage2", Block(8, name="stage2")(x, train), acts, perturb, edit)
        x = x.mean((1, 2))
        x = nn.relu(tap("dense", nn.Dense(16, name="dense")(x), acts, perturb, edit))
        logits = tap("logits", nn.Dense(self.num_classes, name="head")(x), acts, perturb, edit)
        check_hooks(acts, perturb, edit)
        return logits, acts


LAYERS = ("stage1", "stage2", "dense")


class TutorialCNN(nnx.Module):
    """The CNN of flax's NNX MNIST tutorial, smaller, with a BatchNorm: as a researcher has it, no taps."""

    def __init__(self, num_classes: int = 4, size: int = 8, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 6, kernel_size=(3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(6, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(6, 8, kernel_size=(3, 3), rngs=rngs)
        self.linear1 = nnx.Linear(8 * (size // 4) ** 2, 16, rngs=rngs)
        self.linear2 = nnx.Linear(16, num_classes, rngs=rngs)
        self.num_classes = num_classes

    def __call__(self, x):
        x = nnx.avg_pool(nnx.relu(self.bn(self.conv1(x))), window_shape=(2, 2), strides=(2, 2))
        x = nnx.avg_pool(nnx.relu(self.conv2(x)), window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.linear1(x.reshape(x.shape[0], -1)))
        return self.linear2(x)


class TutorialByHand(nn.Module):
    """The tutorial CNN in Linen with the house's taps (same parameter names: the NNX weights load into it)."""

    num_classes: int = 4

    @nn.compact
    def __call__(self, x, *, train, perturb=None, edit=None):
        acts = {}
        x = nn.Conv(6, (3, 3), name="conv1")(x)
        x = tap("bn", nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x), acts, perturb, edit)
        x = nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = tap("conv2", nn.Conv(8, (3, 3), name="conv2")(x), acts, perturb, edit)
        x = nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = nn.relu(tap("linear1", nn.Dense(16, name="linear1")(x.reshape(x.shape[0], -1)), acts, perturb, edit))
        logits = tap("logits", nn.Dense(self.num_classes, name="linear2")(x), acts, perturb, edit)
        check_hooks(acts, perturb, edit)
        return logits, acts


def _conv(p, x):
    return jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]


def _batch_norm(p, s, x, train, momentum=0.9, eps=1e-5):
    """flax's BatchNorm in jnp: batch statistics while training (running averages updated), else the averages."""
    if train:
        mean, var = x.mean((0, 1, 2)), (x * x).mean((0, 1, 2)) - x.mean((0, 1, 2)) ** 2
        s = {"mean": momentum * s["mean"] + (1 - momentum) * mean, "var": momentum * s["var"] + (1 - momentum) * var}
    else:
        mean, var = s["mean"], s["var"]
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"], s


# a model written as plain functions of its parameters (as equinox/haiku users have it), with batch-norm state
def block1(p, s, x, train):
    h, bn = _batch_norm(p["bn"], s["bn"], _conv(p["conv1"], x), train)
    return jax.nn.relu(h), {**s, "bn": bn}


def block2(p, s, h, train):
    return _conv(p["conv2"], h), s


def features(p, s, h, train):
    return jax.nn.relu(h).mean((1, 2)) @ p["dense"]["kernel"] + p["dense"]["bias"], s


def head(p, s, h, train):
    return jax.nn.relu(h) @ p["head"]["kernel"] + p["head"]["bias"], s


class FunctionsByHand(nn.Module):
    """The function model in Linen with the house's taps (same parameter and statistics names)."""

    num_classes: int = 4

    @nn.compact
    def __call__(self, x, *, train, perturb=None, edit=None):
        acts = {}
        x = nn.Conv(6, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
        x = tap("block1", nn.relu(x), acts, perturb, edit)
        x = tap("block2", nn.Conv(8, (3, 3), name="conv2")(x), acts, perturb, edit)
        x = tap("features", nn.Dense(16, name="dense")(nn.relu(x).mean((1, 2))), acts, perturb, edit)
        logits = tap("logits", nn.Dense(self.num_classes, name="head")(nn.relu(x)), acts, perturb, edit)
        check_hooks(acts, perturb, edit)
        return logits, acts


def _function_model():
    variables = FunctionsByHand().init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)), train=False)
    return from_functions([("block1", block1), ("block2", block2), ("features", features)], head,
                          variables["params"], state=variables["batch_stats"], num_classes=4)


#: per network: the wrapped module, its hand-tapped twin, and its tapped layers as (first, conv, dense)
NETWORKS = {
    "linen": (lambda: from_linen(CNN(), layers=LAYERS), TappedByHand, LAYERS),
    "nnx": (lambda: from_nnx(TutorialCNN(rngs=nnx.Rngs(0)), layers=("bn", "conv2", "linear1")), TutorialByHand,
            ("bn", "conv2", "linear1")),
    "functions": (_function_model, FunctionsByHand, ("block1", "block2", "features")),
}


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def pair(request):
    make, Hand, layers = NETWORKS[request.param]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
    y = (np.arange(16) % 4).astype(np.int32)
    bias = (np.arange(16) // 4 % 2).astype(np.int32)
    mask = (rng.uniform(size=x.shape[:3]) < 0.3).astype(np.float32)
    wrapped, hand = make(), Hand()
    params, state = models.init(wrapped, jax.random.key(1), jnp.asarray(x[:1]))
    ref_params, ref_state = models.init(hand, jax.random.key(1), jnp.asarray(x[:1]))
    # the wrapper's parameters are the network's own tree, with the names it gave them
    assert jax.tree.structure((params, state)) == jax.tree.structure((ref_params, ref_state))
    if request.param == "linen":
        assert jax.tree.structure(params) == jax.tree.structure(CNN().init(jax.random.key(1), x[:1])["params"])
    elif request.param == "functions":  # the parameters the functions were given
        _close((params, state), (wrapped.params, {"batch_stats": wrapped.state}))
    else:  # the weights the NNX model held when it was wrapped
        held = nnx.to_pure_dict(nnx.state(TutorialCNN(rngs=nnx.Rngs(0)), nnx.Param))
        _close(params, held)
    # non-trivial batch-norm statistics, so that evaluation mode differs from training mode
    state = models.bind(wrapped, state, train=True)(params, jnp.asarray(x)).state
    assert float(sum(jnp.abs(v).sum() for v in jax.tree.leaves(state))) > 0
    batch = Batch(jnp.asarray(x), jnp.asarray(y), jnp.asarray(bias), jnp.asarray(mask))
    return wrapped, hand, params, state, batch, layers


def _close(a, b, rtol=1e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=rtol * max(1.0, float(np.abs(v).max())))


@pytest.mark.parametrize("train", [True, False])
def test_forward_acts_state_and_hooks_match_the_hand_tapped_network(pair, train):
    wrapped, hand, params, state, batch, layers = pair
    a, b = (models.bind(m, state, train=train) for m in (wrapped, hand))
    out, ref = a(params, batch.x), b(params, batch.x)
    assert sorted(out.acts) == sorted(ref.acts) == sorted([*layers, "logits"])
    _close((out.logits, out.acts, out.state), (ref.logits, ref.acts, ref.state))
    # perturb: the latent gradient at each tapped layer; edit: the rest of the pass sees the changed value
    for layer in layers:
        z = jnp.zeros_like(out.acts[layer])
        g = jax.grad(lambda p, m: m(params, batch.x, perturb={layer: p}).logits[:, 0].sum(), argnums=0)
        _close(g(z, a), g(z, b))
        assert float(jnp.abs(g(z, a)).sum()) > 0
    edit = {layers[1]: lambda h: 0.5 * h}
    _close(a(params, batch.x, edit=edit).logits, b(params, batch.x, edit=edit).logits)
    assert not np.allclose(a(params, batch.x, edit=edit).logits, out.logits)


@pytest.mark.parametrize("name,settings", [
    ("rrclarc", {"layer": 1, "lam": 10.0}),
    ("rrclarc", {"layer": 2, "lam": 10.0, "classes": (1, 2)}),
    ("aclarc", {"layer": 0}),
    ("rrr", {"lam": 10.0}),
    ("end", {"layer": 2, "num_classes": 4, "num_biases": 2}),
    ("targeted_noise", {}),
    ("vanilla", {}),
])
def test_every_training_method_gives_the_same_loss_and_gradient(pair, name, settings):
    wrapped, hand, params, state, batch, layers = pair
    method = methods.get(name)
    settings = {k: layers[v] if k == "layer" else v for k, v in settings.items()}  # (first, conv, dense)
    hp = methods.make_hparams(method, settings)
    key = jax.random.key(3)
    results = []
    for module in (wrapped, hand):
        model = models.bind(module, state, train=False)
        concept = batch._replace(y=batch.bias)  # the ClArC family's artifact samples: bias 1
        mstate = method.init(model, params, concept if methods.kind(method).fits_on_model else batch, hp=hp)
        fn = method_loss(method, module, hp, train=True)
        (loss, aux), grads = jax.value_and_grad(fn, has_aux=True)(params, state, mstate, batch, key)
        results.append((loss, aux.metrics, grads, aux.state, mstate))  # mstate: the CAV fitted on the model
    _close(results[0], results[1])
    assert float(results[0][0]) > 0 and float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(results[0][2]))) > 0


def test_tcav_sensitivities_match(pair):
    wrapped, hand, params, state, batch, layers = pair
    cav = jnp.ones((8,)) / jnp.sqrt(8.0)
    s = [latent_sensitivity(models.bind(m, state, train=False), params, batch.x, cav, layer=layers[1], target=1) for m in (wrapped, hand)]
    _close(s[0], s[1])
    assert float(jnp.abs(s[0]).sum()) > 0


@pytest.mark.parametrize("mode", ["counterfactual", "training"])
def test_fmd_edit_and_influence_match(pair, mode):
    """FMD on the wrapped network: the same Newton edit of its last layer (counterfactual pairs), the same
    harmful samples ranked by influence (training mode), as on the hand-tapped network."""
    from jaxbias.methods import fmd

    wrapped, hand, params, state, batch, layers = pair
    x_cf = jnp.where(batch.mask[..., None] > 0, -batch.x, batch.x)  # the "protected attribute" flipped
    pairs = (batch.x, x_cf, batch.y)
    hp = fmd.Hparams(mode=mode, params="last", scale=1.0, top_k=4, solver="exact")
    train = (batch.x, batch.y) if mode == "training" else None
    train_cf = x_cf if mode == "training" else None
    results = []
    for module in (wrapped, hand):
        model = models.bind(module, state, train=False)
        res = fmd.debias(lambda p, x, model=model: model(p, x).logits, params, pairs, hp=hp, order=list(params),
                         train=train, train_cf=train_cf)
        results.append(res)
    a, b = results
    assert a.subset == b.subset and len(a.subset) == 1  # the network's own last layer
    _close((a.params, a.bias_after), (b.params, b.bias_after))
    assert float(jnp.abs(a.params[a.subset[0]]["kernel"] - params[a.subset[0]]["kernel"]).max()) > 1e-3
    if mode == "training":
        np.testing.assert_array_equal(np.asarray(a.removed), np.asarray(b.removed))


def test_what_cannot_be_tapped_is_refused_in_one_line(pair):
    wrapped, _, params, state, batch, _ = pair
    if isinstance(wrapped, type(from_nnx(TutorialCNN(rngs=nnx.Rngs(0)), layers=()))):
        with pytest.raises(ValueError, match=r"\['pool'\] are not submodules called by TutorialCNN .*'conv2'"):
            models.bind(from_nnx(TutorialCNN(rngs=nnx.Rngs(0)), layers=("pool",)), state, train=False)(params, batch.x)
        with pytest.raises(ValueError, match="from_nnx needs a flax.nnx.Module"):
            from_nnx(CNN(), layers=())
        return

    def call(module, **kw):
        return models.bind(module, state, train=False)(params, batch.x, **kw)

    if isinstance(wrapped, models.FunctionTapped):
        with pytest.raises(ValueError, match=r"perturb names unknown layer\(s\) \['pool'\]"):
            call(wrapped, perturb={"pool": jnp.zeros((16, 16))})
        with pytest.raises(ValueError, match=r"stage 'block2' returns an array of shape \(16, 8, 8, 6\); a model with "
                                             r"state= returns \(output, new state\)"):
            call(from_functions([("block1", block1), ("block2", lambda p, s, h, t: h)], head, wrapped.params,
                                state=wrapped.state))
        with pytest.raises(ValueError, match=r"stage 'logits' returns an array of shape \(16, 8, 8, 8\); expected logits"):
            call(from_functions([("block1", block1)], block2, wrapped.params, state=wrapped.state))
        for bad, message in [(dict(features="f"), "features must be a function"),
                             (dict(features=[("logits", block1)]), "not 'logits'"),
                             (dict(head=None), "head must be a function"), (dict(params={}), "params holds no arrays")]:
            with pytest.raises(ValueError, match=message):
                from_functions(**{"features": block1, "head": head, "params": wrapped.params, **bad})
        return

    with pytest.raises(ValueError, match=r"\['pool'\] are not submodules called by CNN .*'stage2/conv'"):
        call(from_linen(CNN(), layers=("pool",)))
    with pytest.raises(ValueError, match=r"perturb names unknown layer\(s\) \['head'\]"):
        call(from_linen(CNN(), layers=("dense",)), perturb={"head": jnp.zeros((16, 4))})

    class Shared(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            d = nn.Dense(4, name="twice")
            return d(d(x.reshape(x.shape[0], -1))[:, :4].repeat(48, axis=1))

    p = Shared().init(jax.random.key(0), batch.x)["params"]
    with pytest.raises(ValueError, match="'twice' is called more than once"):
        models.bind(from_linen(Shared(), layers=("twice",)), {}, train=False)(p, batch.x)

    class Pair(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            h = nn.Dense(4, name="dense")(x.reshape(x.shape[0], -1))
            return h, {"aux": h}

    class Scanned(nn.Module):  # a stack of layers under nn.scan: its layers are not one array of the pass
        @nn.compact
        def __call__(self, x, train=False):
            class Layer(nn.Module):
                @nn.compact
                def __call__(self, h, _):
                    return nn.relu(nn.Dense(8, name="dense")(h)), None

            h = nn.Dense(8, name="inp")(x.reshape(x.shape[0], -1))
            h, _ = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)(name="stack")(h, None)
            return nn.Dense(4, name="head")(h)

    p = Scanned().init(jax.random.key(0), batch.x)["params"]
    with pytest.raises(ValueError, match="'stack/dense' is called more than once .* inside a lifted loop such as nn.scan"):
        models.bind(from_linen(Scanned(), layers=("stack/dense",)), {}, train=False)(p, batch.x)
    with pytest.raises(ValueError, match="layer 'stack' returns tuple, not one array"):
        models.bind(from_linen(Scanned(), layers=("stack",)), {}, train=False)(p, batch.x)

    p = Pair().init(jax.random.key(0), batch.x)["params"]
    with pytest.raises(ValueError, match=r"returns tuple; expected logits \(B, k\): pass output="):
        models.bind(from_linen(Pair(), layers=("dense",)), {}, train=False)(p, batch.x)
    out = models.bind(from_linen(Pair(), layers=("dense",), output=lambda o: o[0]), {}, train=False)(p, batch.x)
    assert out.logits.shape == (16, 4) and "dense" in out.acts
    for bad, message in [(dict(layers="dense"), "sequence of submodule paths"), (dict(layers=("logits",)), "not 'logits'"),
                         (dict(layers=("dense",), mode="eval"), "mode must be one of")]:
        with pytest.raises(ValueError, match=message):
            from_linen(CNN(), **bad)


def test_mode_keywords():
    """A network that hears the mode as `deterministic` (Dropout's flag) gets deterministic=not train."""
    seen = []

    class Det(nn.Module):
        @nn.compact
        def __call__(self, x, deterministic=True):
            seen.append(deterministic)
            return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))

    batch = Batch(jnp.ones((2, 8, 8, 3)), jnp.zeros((2,), jnp.int32))
    module = from_linen(Det(), layers=(), mode="deterministic", num_classes=3)
    params, state = models.init(module, jax.random.key(0), batch.x[:1])
    models.bind(module, state, train=True)(params, batch.x)
    assert seen[-2:] == [True, False] and module.num_classes == 3


@dataclasses.dataclass(frozen=True)
class CNNSettings:
    """Attributes:
      head_only: unused, a setting to show the flag.
    """

    head_only: bool = False


CLI_NETWORKS = {  # factory, the layer EnD works on, the network's own parameter names
    "linen": (lambda num_classes: from_linen(CNN(num_classes=num_classes), layers=LAYERS), "dense",
              {"stem", "stage1", "stage2", "dense", "head"}),
    "nnx": (lambda num_classes: from_nnx(TutorialCNN(num_classes, size=28, rngs=nnx.Rngs(0)),
                                         layers=("bn", "conv2", "linear1")), "linear1",
            {"conv1", "bn", "conv2", "linear1", "linear2"}),
}


@pytest.mark.parametrize("network", sorted(CLI_NETWORKS))
def test_a_wrapped_network_trains_and_sweeps_from_the_cli_with_a_method_on_its_own_layer(network, fewer_digits,
                                                                                         tmp_path, capsys):
    from jaxbias import cli

    make, layer, names = CLI_NETWORKS[network]

    def factory(*, num_classes, head_only):
        return make(num_classes)

    models.register("flax_cnn", factory, CNNSettings)
    try:
        wd = tmp_path / "run"
        argv = ["train", "--dataset", "biased_mnist", "--rho", "0.9", "--model", "flax_cnn", "--method", "end",
                "--layer", layer, "--epochs", "2", "--batch-size", "64", "--lr", "0.003", "--decay-every", "0",
                "--no-progress", "--json", "--workdir", str(wd)]
        assert cli.main(argv) == 0
        results = json.loads(capsys.readouterr().out)
        assert np.isfinite(results["history"][-1]["loss"]) and results["history"][-1]["end"] > 0
        run = runs.restore(wd)
        assert set(run.state.params) == names  # the network's own names
        assert results["eval"]["biased"]["accuracy"] > 0.2  # ten classes: it learnt (the colour shortcut at least)
        # a sweep of two learning rates in one program, on the same network
        sweep = ["sweep", *argv[1:-4], "--epochs", "1", "--lrs", "0.001,0.003", "--no-progress", "--json",
                 "--workdir", str(tmp_path / "sweep")]
        assert cli.main(sweep) == 0
        members = json.loads(capsys.readouterr().out)
        assert len(members["members"]) == 2 and members["traces"] == 1
    finally:
        models.unregister("flax_cnn")


USER_NETS = '''"""A researcher's own networks, in their own package: no jaxbias import, no taps."""
import flax.linen as nn
from flax import nnx


class Net(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv")(x))
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        x = nn.relu(nn.Dense(32, name="hidden")(x.mean((1, 2))))
        return nn.Dense(self.num_classes, name="head")(x)


def linen_net(num_classes):
    return Net(num_classes=num_classes)


class NNXNet(nnx.Module):
    def __init__(self, num_classes, *, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.hidden = nnx.Linear(8, 32, rngs=rngs)
        self.head = nnx.Linear(32, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.hidden(nnx.relu(self.conv(x)).mean((1, 2)))))


def nnx_net(num_classes):
    return NNXNet(num_classes, rngs=nnx.Rngs(0))


def function_net(num_classes):
    """A model written as two functions of its parameters (no Flax module)."""
    import jax
    import jax.numpy as jnp
    from jaxbias.models import from_functions

    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"hidden": {"w": jax.random.normal(k1, (3, 32)), "b": jnp.zeros(32)},
              "head": {"w": 0.2 * jax.random.normal(k2, (32, num_classes)), "b": jnp.zeros(num_classes)}}

    def features(p, x, train):
        return jax.nn.relu(x.mean((1, 2)) @ p["hidden"]["w"] + p["hidden"]["b"])

    def head(p, h, train):
        return h @ p["head"]["w"] + p["head"]["b"]

    return from_functions(features, head, params, num_classes=num_classes)


not_a_factory = 3
'''


def test_a_network_of_your_package_trains_by_name_from_the_cli(fewer_digits, tmp_path, monkeypatch, capsys):
    from jaxbias import cli

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "user_nets_cli.py").write_text(USER_NETS)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    common = ["--dataset", "biased_mnist", "--rho", "0.9", "--epochs", "1", "--batch-size", "64", "--no-progress",
              "--json"]
    # EnD on the network's own 'hidden' layer: the layer to tap comes from the method's setting
    wd = tmp_path / "linen"
    assert cli.main(["train", *common, "--model", "user_nets_cli:linen_net", "--method", "end", "--layer", "hidden",
                     "--workdir", str(wd)]) == 0
    assert capsys.readouterr().out
    record = json.loads((wd / "config.json").read_text())
    assert record["model"] == {"name": "user_nets_cli:linen_net", "layers": ["hidden"], "train_keyword": "train",
                               "num_classes": 10}
    run = runs.restore(wd)  # config.json names the factory: the module is rebuilt from it
    assert set(run.state.params) == {"conv", "bn", "hidden", "head"} and "batch_stats" in run.state.model_state
    assert cli.main(["train", *common, "--epochs", "2", "--model", "user_nets_cli:linen_net", "--method", "end",
                     "--layer", "hidden", "--resume", "--workdir", str(wd)]) == 0
    assert json.loads(capsys.readouterr().out)["resumed_from"] == 1
    # an NNX model, tapped at two layers given as a model setting
    wd = tmp_path / "nnx"
    assert cli.main(["train", *common, "--model", "user_nets_cli:nnx_net", "--layers", "conv,hidden",
                     "--workdir", str(wd)]) == 0
    capsys.readouterr()
    assert models.bind(runs.restore(wd).module, {}, train=False)(runs.restore(wd).state.params,
                                                                  jnp.zeros((2, 28, 28, 3))).acts.keys() == {
        "conv", "hidden", "logits"}
    # a model written as functions: EnD on its features
    wd = tmp_path / "functions"
    assert cli.main(["train", *common, "--lr", "0.01", "--model", "user_nets_cli:function_net", "--method", "end",
                     "--layer", "features", "--workdir", str(wd)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert np.isfinite(results["history"][-1]["loss"]) and results["eval"]["biased"]["accuracy"] > 0.2
    assert set(runs.restore(wd).state.params) == {"hidden", "head"}
    # ... sweeps two learning rates in one program, and FMD edits its last layer (jaxbias unlearn)
    assert cli.main(["sweep", *common, "--model", "user_nets_cli:function_net", "--lrs", "0.003,0.01",
                     "--workdir", str(tmp_path / "functions_sweep")]) == 0
    members = json.loads(capsys.readouterr().out)
    assert len(members["members"]) == 2 and members["traces"] == 1
    assert cli.main(["unlearn", "--from", str(wd), "--external", "50", "--json"]) == 0
    unlearned = json.loads(capsys.readouterr().out)
    assert unlearned["fmd"]["block"] == ["head"] and unlearned["fmd"]["bias_pairs"][1] <= unlearned["fmd"]["bias_pairs"][0]
    # what is not a network of a package, or not a layer of it: one line, exit 2, no workdir
    for model, more, message in [
        ("no_such_package_xyz:f", [], "cannot import no_such_package_xyz"),
        ("user_nets_cli:nope", [], "user_nets_cli has no nope"),
        ("user_nets_cli:not_a_factory", [], "not_a_factory is not callable"),
        ("user_nets_cli:linen_net", ["--method", "end", "--layer", "pool"],
         "layers ['pool'] are not submodules called by Net"),
        ("user_nets_cli:function_net", ["--method", "end", "--layer", "pool"], "'pool'"),
        ("mlp", ["--layers", "a"], "--layers is a setting of package.module:factory, not of model 'mlp'"),
    ]:
        bad = tmp_path / "bad"
        assert cli.main(["train", *common, "--model", model, *more, "--workdir", str(bad)]) == 2
        assert message in capsys.readouterr().err
        assert not bad.exists()


@pytest.mark.parametrize("factory,layer", [("linen_net", "hidden"), ("nnx_net", "hidden"), ("function_net", "features")])
def test_jaxbias_correct_on_a_network_of_your_package(factory, layer, fewer_digits, tmp_path, monkeypatch, capsys):
    """`jaxbias correct` on a wrapped network: a base trained with no taps at all, corrected with RR-ClArC at the
    network's own layer; the report's CAV is fitted there on the base (tapped for it), R_bias is LRP's for the Linen
    or NNX network (None for function models: they have no layers for LRP's rules), and the correction lowers the
    stamp's latent sensitivity."""
    from jaxbias import cli

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "user_nets_correct.py").write_text(USER_NETS)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    model = f"user_nets_correct:{factory}"
    base = tmp_path / "base"
    assert cli.main(["train", "--dataset", "artifact_mnist", "--model", model, "--epochs", "2", "--batch-size", "64",
                     "--lr", "0.01", "--no-progress", "--json", "--workdir", str(base)]) == 0
    capsys.readouterr()
    assert json.loads((base / "config.json").read_text())["model"]["layers"] == []
    wd = tmp_path / "rrclarc"
    assert cli.main(["correct", "--from", str(base), "--method", "rrclarc", "--layer", layer, "--lam", "100",
                     "--epochs", "1", "--lr", "0.001", "--no-progress", "--json", "--workdir", str(wd)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["config"]["model"]["layers"] == [layer]
    before, after = res["base_report"], res["report"]
    if factory in ("linen_net", "nnx_net"):
        assert 0 < before["r_bias"] < 1 and 0 < after["r_bias"] < 1
    else:
        assert before["r_bias"] is None and after["r_bias"] is None
    assert np.isfinite([before["tcav_sens"], after["tcav_sens"], after["clean"]]).all()
    assert abs(after["tcav_sens"]) < abs(before["tcav_sens"])
    # the corrected run evaluates with the same report (its base restored from the workdir, untapped)
    assert cli.main(["evaluate", "--workdir", str(wd), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["artifact_report"]["tcav_sens"] == pytest.approx(after["tcav_sens"],
                                                                                              rel=1e-5)


class DropoutNet(nn.Module):
    num_classes: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Dense(32, name="hidden")(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes, name="head")(nn.Dropout(0.5, deterministic=not train)(h))


class NNXDropoutNet(nnx.Module):
    def __init__(self, num_classes=4, *, rngs):
        self.hidden = nnx.Linear(8 * 8 * 3, 32, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(32, num_classes, rngs=rngs)
        self.num_classes = num_classes

    def __call__(self, x):
        return self.head(self.drop(nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))))


def _keyed_function_net():
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"hidden": {"w": 0.1 * jax.random.normal(k1, (192, 32))}, "head": {"w": jax.random.normal(k2, (32, 4))}}

    def features(p, x, train, key):
        h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["hidden"]["w"])
        if key is None:
            return h
        return jnp.where(jax.random.bernoulli(key, 0.5, h.shape), 2 * h, 0.0)

    return from_functions(features, lambda p, h, train, key: h @ p["head"]["w"], params, keyed=True, num_classes=4)


@pytest.mark.parametrize("make", [lambda: from_linen(DropoutNet(), layers=("hidden",)),
                                  lambda: from_nnx(NNXDropoutNet(rngs=nnx.Rngs(0)), layers=("hidden",)),
                                  _keyed_function_net], ids=["linen", "nnx", "functions"])
def test_dropout_draws_a_fresh_mask_each_step_from_the_step_key(make):
    """The training step's key reaches the network's dropout: another step, another mask; the same step, the same
    mask (resume repeats it); evaluation mode has no dropout."""
    module = make()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 8, 3)), jnp.float32)
    batch = Batch(x, jnp.arange(8, dtype=jnp.int32) % 4)
    params, state = models.init(module, jax.random.key(1), x[:1])
    fn = method_loss(methods.get("vanilla"), module, methods.make_hparams(methods.get("vanilla"), {}), train=True)
    loss = [float(fn(params, state, None, batch, jax.random.key(k))[0]) for k in (0, 1, 0)]
    assert loss[0] != loss[1] and loss[0] == loss[2]
    evaluation = models.bind(module, state, train=False)
    np.testing.assert_array_equal(evaluation(params, x).logits, evaluation(params, x).logits)
    train_logits = models.bind(module, state, train=True, key=jax.random.key(0))(params, x).logits
    assert not np.allclose(train_logits, evaluation(params, x).logits)
