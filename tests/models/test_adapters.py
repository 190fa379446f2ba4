"""from_linen: an unmodified Linen network, tapped at named submodules, behaves in every method as the same network
written with the house's taps (same weights: same logits, activations, perturb gradients, losses and gradients)."""
import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import methods, models, runs
from jaxbias.evaluation import latent_sensitivity
from jaxbias.models.adapters import from_linen
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


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
    y = (np.arange(16) % 4).astype(np.int32)
    bias = (np.arange(16) // 4 % 2).astype(np.int32)
    mask = (rng.uniform(size=x.shape[:3]) < 0.3).astype(np.float32)
    wrapped, hand = from_linen(CNN(), layers=LAYERS), TappedByHand()
    params, state = models.init(wrapped, jax.random.key(1), jnp.asarray(x[:1]))
    ref_params, ref_state = models.init(hand, jax.random.key(1), jnp.asarray(x[:1]))
    # the wrapper's parameters are the network's own: same tree, same names, same initial values
    assert jax.tree.structure(params) == jax.tree.structure(CNN().init(jax.random.key(1), x[:1])["params"])
    assert jax.tree.structure((params, state)) == jax.tree.structure((ref_params, ref_state))
    # non-trivial batch-norm statistics, so that evaluation mode differs from training mode
    state = models.bind(wrapped, state, train=True)(params, jnp.asarray(x)).state
    return wrapped, hand, params, state, Batch(jnp.asarray(x), jnp.asarray(y), jnp.asarray(bias), jnp.asarray(mask))


def _close(a, b, rtol=1e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=rtol * max(1.0, float(np.abs(v).max())))


@pytest.mark.parametrize("train", [True, False])
def test_forward_acts_state_and_hooks_match_the_hand_tapped_network(pair, train):
    wrapped, hand, params, state, batch = pair
    a, b = (models.bind(m, state, train=train) for m in (wrapped, hand))
    out, ref = a(params, batch.x), b(params, batch.x)
    assert sorted(out.acts) == sorted(ref.acts) == sorted([*LAYERS, "logits"])
    _close((out.logits, out.acts, out.state), (ref.logits, ref.acts, ref.state))
    # perturb: the latent gradient at each tapped layer; edit: the rest of the pass sees the changed value
    for layer in LAYERS:
        z = jnp.zeros_like(out.acts[layer])
        g = jax.grad(lambda p, m: m(params, batch.x, perturb={layer: p}).logits[:, 0].sum(), argnums=0)
        _close(g(z, a), g(z, b))
        assert float(jnp.abs(g(z, a)).sum()) > 0
    edit = {"stage2": lambda h: 0.5 * h}
    _close(a(params, batch.x, edit=edit).logits, b(params, batch.x, edit=edit).logits)
    assert not np.allclose(a(params, batch.x, edit=edit).logits, out.logits)


@pytest.mark.parametrize("name,settings", [
    ("rrclarc", {"layer": "stage2", "lam": 10.0}),
    ("rrclarc", {"layer": "dense", "lam": 10.0, "classes": (1, 2)}),
    ("aclarc", {"layer": "stage1"}),
    ("rrr", {"lam": 10.0}),
    ("end", {"layer": "dense", "num_classes": 4, "num_biases": 2}),
    ("targeted_noise", {}),
    ("vanilla", {}),
])
def test_every_training_method_gives_the_same_loss_and_gradient(pair, name, settings):
    wrapped, hand, params, state, batch = pair
    method = methods.get(name)
    hp = methods.make_hparams(method, settings)
    key = jax.random.key(3)
    results = []
    for module in (wrapped, hand):
        model = models.bind(module, state, train=False)
        concept = batch._replace(y=batch.bias)  # the ClArC family's artifact samples: bias 1
        mstate = method.init(model, params, concept if methods.kind(method).fits_on_model else batch, hp=hp)
        fn = method_loss(method, module, hp, train=True)
        (loss, aux), grads = jax.value_and_grad(fn, has_aux=True)(params, state, mstate, batch, key)
        results.append((loss, aux.metrics, grads, aux.state))
    _close(results[0], results[1])
    assert float(results[0][0]) > 0 and float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(results[0][2]))) > 0


def test_tcav_sensitivities_match(pair):
    wrapped, hand, params, state, batch = pair
    cav = jnp.ones((8,)) / jnp.sqrt(8.0)
    s = [latent_sensitivity(models.bind(m, state, train=False), params, batch.x, cav, layer="stage2", target=1) for m in (wrapped, hand)]
    _close(s[0], s[1])
    assert float(jnp.abs(s[0]).sum()) > 0


def test_what_cannot_be_tapped_is_refused_in_one_line(pair):
    _, _, params, state, batch = pair

    def call(module, **kw):
        return models.bind(module, state, train=False)(params, batch.x, **kw)

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

    p = Pair().init(jax.random.key(0), batch.x)["params"]
    with pytest.raises(ValueError, match=r"returns tuple; expected logits \(B, k\): pass output="):
        models.bind(from_linen(Pair(), layers=("dense",)), {}, train=False)(p, batch.x)
    out = models.bind(from_linen(Pair(), layers=("dense",), output=lambda o: o[0]), {}, train=False)(p, batch.x)
    assert out.logits.shape == (16, 4) and "dense" in out.acts
    for bad, message in [(dict(layers="dense"), "sequence of submodule paths"), (dict(layers=("logits",)), "not 'logits'"),
                         (dict(layers=("dense",), mode="eval"), "mode must be one of")]:
        with pytest.raises(ValueError, match=message):
            from_linen(CNN(), **bad)


def test_mode_keywords(pair):
    """A network that hears the mode as `deterministic` (Dropout's flag) gets deterministic=not train."""
    seen = []

    class Det(nn.Module):
        @nn.compact
        def __call__(self, x, deterministic=True):
            seen.append(deterministic)
            return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))

    _, _, _, _, batch = pair
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


def test_a_wrapped_network_trains_from_the_cli_with_a_method_on_its_own_layer(fewer_digits, tmp_path, capsys):
    from jaxbias import cli

    def factory(*, num_classes, head_only):
        return from_linen(CNN(num_classes=num_classes), layers=LAYERS)

    models.register("flax_cnn", factory, CNNSettings)
    try:
        wd = tmp_path / "run"
        argv = ["train", "--dataset", "biased_mnist", "--rho", "0.9", "--model", "flax_cnn", "--method", "end",
                "--layer", "dense", "--epochs", "2", "--batch-size", "64", "--lr", "0.003", "--decay-every", "0",
                "--no-progress", "--json", "--workdir", str(wd)]
        assert cli.main(argv) == 0
        results = json.loads(capsys.readouterr().out)
        assert np.isfinite(results["history"][-1]["loss"]) and results["history"][-1]["end"] > 0
        run = runs.restore(wd)
        assert set(run.state.params) == {"stem", "stage1", "stage2", "dense", "head"}  # the network's own names
        assert results["eval"]["biased"]["accuracy"] > 0.2  # ten classes: it learnt (the colour shortcut at least)
        # a sweep of two learning rates in one program, on the same network
        sweep = [*argv[:-3], "--lrs", "0.001,0.003", "--json", "--workdir", str(tmp_path / "sweep")]
        sweep[0] = "sweep"
        assert cli.main(sweep) == 0
        members = json.loads(capsys.readouterr().out)
        assert len(members["members"]) == 2
    finally:
        models.unregister("flax_cnn")
