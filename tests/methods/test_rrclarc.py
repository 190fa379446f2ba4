"""RR-ClArC, A-ClArC and P-ClArC against explicit references."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import models
from jaxbias.concepts import pool_acts
from jaxbias.methods import aclarc, pclarc, rrclarc
from jaxbias.methods._clarc import State, projection
from jaxbias.types import Batch

B = 8


@pytest.fixture(scope="module")
def net():
    module = models.create("simple_conv", channels=(3, 4, 5, 6), kernel_size=3, last_activation="tanh", num_classes=5)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(B, 8, 8, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 5, B), jnp.int32)
    params, ms = models.init(module, jax.random.key(0), x)
    # move the batch-norm statistics away from (0, 1) so evaluation mode is not trivial
    ms = jax.tree.map(lambda v: v + 0.1 * jnp.abs(jnp.asarray(rng.normal(size=v.shape), v.dtype)), ms)
    return module, params, ms, Batch(x, y, jnp.asarray(np.arange(B) % 2, jnp.int32))


def _unit(v):
    v = jnp.asarray(v, jnp.float32)
    return v / jnp.linalg.norm(v)


def _state(c, seed=1):
    h = _unit(np.random.default_rng(seed).normal(size=c))
    return State(h, jnp.float32(0.7), jnp.float32(-0.2))


def _reference_s(model, params, batch, h, layer, m, *, logprobs=None):
    """Explicit latent gradient of Σ_n m_n·f̃_n w.r.t. the layer, spatial mean, dot h.

    ``logprobs="mean"``: the released RR-ClArC criterion, ``Σ_n mean_k log(softmax_k + 1e-5)``
    (``m`` unused); ``"sum"``: ``Σ_n Σ_k log softmax_k``.
    """
    shape = model(params, batch.x).acts[layer].shape

    def f(p):
        logits = model(params, batch.x, perturb={layer: p}).logits
        if logprobs == "mean":
            return jnp.sum(jnp.mean(jnp.log(jax.nn.softmax(logits) + 1e-5), axis=-1))
        if logprobs == "sum":
            return jnp.sum(jax.nn.log_softmax(logits))
        return jnp.sum(m * logits)

    g = jax.grad(f)(jnp.zeros(shape))
    g = jnp.mean(g, axis=(1, 2)) if g.ndim == 4 else g
    return g @ h, g


def _m(criterion, logits, y, key, classes=()):
    hp = rrclarc.Hparams(criterion=criterion, classes=classes)
    return rrclarc._weights(logits, y, key, hp)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("layer", ["block4", "features"])
@pytest.mark.parametrize("criterion", ["random", "all", "target", "max", "logprobs", "logprobs_sum", "class"])
def test_penalty_equals_explicit_latent_gradient(net, train, layer, criterion):
    module, params, ms, batch = net
    model = models.bind(module, ms, train=train)
    c = model(params, batch.x).acts[layer].shape[-1]
    state = _state(c)
    classes = (1, 3) if criterion == "class" else ()
    hp = rrclarc.Hparams(layer=layer, criterion=criterion, classes=classes, lam=2.0)
    key = jax.random.key(5)
    got = rrclarc.penalty(params, state, batch, key, model=model, hp=hp)
    logits = model(params, batch.x).logits
    m = _m(criterion, logits, batch.y, key, classes)
    s_ref, _ = _reference_s(model, params, batch, state.cav, layer, m,
                            logprobs={"logprobs": "mean", "logprobs_sum": "sum"}.get(criterion))
    assert float(jnp.max(jnp.abs(s_ref))) > 1e-4  # the reference is not trivially zero
    if classes:
        s_ref = jnp.where(jnp.isin(batch.y, jnp.asarray(classes)), s_ref, 0.0)
    np.testing.assert_allclose(got, s_ref**2, rtol=1e-5, atol=1e-10)


def test_logprobs_is_the_released_mean_and_the_sum_is_k_squared_larger(net):
    """``"logprobs"`` protects ``mean_k log(softmax_k + 1e-5)`` (the release); the sum reading is ≈ k² larger."""
    module, params, ms, batch = net
    model = models.bind(module, ms, train=True)
    state = _state(6)
    mean = rrclarc.penalty(params, state, batch, None, model=model, hp=rrclarc.Hparams(criterion="logprobs"))
    total = rrclarc.penalty(params, state, batch, None, model=model, hp=rrclarc.Hparams(criterion="logprobs_sum"))
    k = 5
    # softmax ≫ 1e-5 here, so the ε barely matters: s differs by the factor k, the penalty by k²
    assert float(jnp.min(jax.nn.softmax(model(params, batch.x).logits))) > 1e-3
    np.testing.assert_allclose(np.asarray(total), k**2 * np.asarray(mean), rtol=1e-2)


def test_below_batchnorm_in_evaluation_mode(net):
    """Layers under a batch-norm: exact in evaluation mode (samples do not interact)."""
    module, params, ms, batch = net
    model = models.bind(module, ms, train=False)
    state = _state(4)
    hp = rrclarc.Hparams(layer="block2", criterion="all")
    got = rrclarc.penalty(params, state, batch, jax.random.key(0), model=model, hp=hp)
    s_ref, _ = _reference_s(model, params, batch, state.cav, "block2", jnp.ones((B, 5)))
    np.testing.assert_allclose(got, s_ref**2, rtol=1e-5, atol=1e-10)


def test_l1_and_cosine_forms(net):
    module, params, ms, batch = net
    model = models.bind(module, ms, train=True)
    state = _state(6)
    m = jnp.ones((B, 5))
    s_ref, g = _reference_s(model, params, batch, state.cav, "block4", m)
    l1 = rrclarc.penalty(params, state, batch, jax.random.key(0), model=model,
                         hp=rrclarc.Hparams(criterion="all", form="l1"))
    np.testing.assert_allclose(l1, jnp.abs(s_ref), rtol=1e-5, atol=1e-10)
    cos = rrclarc.penalty(params, state, batch, jax.random.key(0), model=model,
                          hp=rrclarc.Hparams(criterion="all", form="cosine"))
    g = np.asarray(g, np.float64)
    h = np.asarray(state.cav, np.float64)
    ref = [(gi @ h / np.linalg.norm(gi)) ** 2 for gi in g]
    np.testing.assert_allclose(cos, ref, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("layer", ["block4", "features"])
def test_zero_for_a_head_blind_to_the_cav(net, layer):
    """A last layer whose weights are orthogonal to h cannot see the direction: s = 0."""
    module, params, ms, batch = net
    model = models.bind(module, ms, train=True)
    h = _state(6).cav
    kernel = params["fc"]["kernel"]  # (6, k)
    blind = jax.tree.map(lambda v: v, params)
    blind["fc"]["kernel"] = kernel - jnp.outer(h, h @ kernel)
    state = State(h, jnp.float32(0), jnp.float32(0))
    for criterion in ("all", "random", "logprobs"):
        hp = rrclarc.Hparams(layer=layer, criterion=criterion)
        before = rrclarc.penalty(params, state, batch, jax.random.key(0), model=model, hp=hp)
        after = rrclarc.penalty(blind, state, batch, jax.random.key(0), model=model, hp=hp)
        assert float(jnp.min(before)) > 0
        assert float(jnp.max(after)) <= 1e-6 * float(jnp.min(before))


def test_loss_is_ce_plus_weighted_mean_over_selected(net):
    module, params, ms, batch = net
    model = models.bind(module, ms, train=True)
    state = _state(6)
    hp = rrclarc.Hparams(criterion="target", classes=(0, 2), lam=3.0)
    key = jax.random.key(0)
    value, aux = rrclarc.loss(params, state, batch, key, model=model, hp=hp)
    per = rrclarc.penalty(params, state, batch, key, model=model, hp=hp)
    sel = np.isin(np.asarray(batch.y), (0, 2))
    assert sel.any() and (~sel).any()
    assert np.all(np.asarray(per)[~sel] == 0)
    np.testing.assert_allclose(aux.metrics["rr"], np.asarray(per)[sel].mean(), rtol=1e-6)
    np.testing.assert_allclose(value, aux.metrics["ce"] + 3.0 * aux.metrics["rr"], rtol=1e-6)


def test_random_signs_change_with_the_key(net):
    module, params, ms, batch = net
    model = models.bind(module, ms, train=True)
    state = _state(6)
    hp = rrclarc.Hparams()
    a = rrclarc.penalty(params, state, batch, jax.random.key(0), model=model, hp=hp)
    b = rrclarc.penalty(params, state, batch, jax.random.key(1), model=model, hp=hp)
    assert not np.allclose(a, b)


def test_bad_input(net):
    module, params, ms, batch = net
    model = models.bind(module, ms, train=True)
    with pytest.raises(ValueError, match="hp.layer='nope'"):
        rrclarc.loss(params, _state(6), batch, jax.random.key(0), model=model, hp=rrclarc.Hparams(layer="nope"))
    with pytest.raises(ValueError, match=r"state.cav has shape \(5,\)"):
        rrclarc.loss(params, _state(5), batch, jax.random.key(0), model=model, hp=rrclarc.Hparams())
    with pytest.raises(ValueError, match="classes"):
        rrclarc.loss(params, _state(6), batch, jax.random.key(0), model=model,
                     hp=rrclarc.Hparams(criterion="class", classes=(7,)))
    for kwargs, match in [({"criterion": "nope"}, "criterion"), ({"form": "l3"}, "form"), ({"lam": -1}, "lam"),
                          ({"criterion": "class"}, "classes"), ({"pool": "min"}, "pool")]:
        with pytest.raises(ValueError, match=match):
            rrclarc.Hparams(**kwargs)


# --------------------------------------------------------------------------- #
# the state and the A-/P-ClArC projections
# --------------------------------------------------------------------------- #


def test_init_fits_cav_and_mean_projections(net):
    module, params, ms, _ = net
    model = models.bind(module, ms, train=False)
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(40, 8, 8, 3)).astype(np.float32)
    concept = (np.arange(40) % 2).astype(np.int32)
    x[concept == 1, :3, :3, 0] = 1.0  # a red corner: the artifact
    data = Batch(jnp.asarray(x), jnp.zeros(40, jnp.int32), jnp.asarray(concept))
    hp = rrclarc.Hparams(layer="block4", pool="max")
    state = rrclarc.init(model, params, data, hp=hp, batch_size=16)  # chunked: 16 + 16 + 8
    a = np.asarray(pool_acts(model(params, jnp.asarray(x)).acts["block4"], "max"))
    # signal CAV = (class-balanced) covariance of each unit with the label, normalised
    cov = (a[concept == 1].mean(0) - a[concept == 0].mean(0))
    np.testing.assert_allclose(state.cav, cov / np.linalg.norm(cov), rtol=1e-4, atol=1e-6)
    proj = a @ np.asarray(state.cav)
    np.testing.assert_allclose(state.z_plus, proj[concept == 1].mean(), rtol=1e-5)
    np.testing.assert_allclose(state.z_minus, proj[concept == 0].mean(), rtol=1e-5)
    assert float(state.z_plus) > float(state.z_minus)


def test_init_rejects_bad_concepts(net):
    module, params, ms, batch = net
    model = models.bind(module, ms, train=False)
    with pytest.raises(ValueError, match="0 \\(clean\\) or 1"):
        rrclarc.init(model, params, batch, hp=rrclarc.Hparams(), concept=np.arange(B))
    with pytest.raises(ValueError, match="shape"):
        rrclarc.init(model, params, batch, hp=rrclarc.Hparams(), concept=np.zeros(B + 1, int))
    with pytest.raises(ValueError):  # a single concept class
        rrclarc.init(model, params, batch, hp=rrclarc.Hparams(), concept=np.ones(B, int))
    with pytest.raises(ValueError, match="concept labels are missing"):
        rrclarc.init(model, params, batch._replace(bias=None), hp=rrclarc.Hparams())


@pytest.mark.parametrize("pool", ["max", "mean"])
@pytest.mark.parametrize("ndim", [2, 4])
def test_projection_lands_on_target_and_keeps_the_rest(pool, ndim):
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(6, 5, 5, 7) if ndim == 4 else (6, 7)), jnp.float32)
    h = _unit(rng.normal(size=7))
    out = projection(h, jnp.float32(0.3), pool)(a)
    pooled = pool_acts(out, pool) if ndim == 4 else out
    np.testing.assert_allclose(pooled @ h, 0.3, atol=1e-5)
    # the change is along h only, the same at every position
    delta = np.asarray(out - a).reshape(-1, 7)
    np.testing.assert_allclose(delta - np.outer(delta @ np.asarray(h), h), 0, atol=1e-5)
    if ndim == 4:
        d = np.asarray(out - a)
        np.testing.assert_allclose(d, np.broadcast_to(d[:, :1, :1, :], d.shape), atol=1e-6)


def test_pclarc_removes_an_artifact_read_along_the_cav(net):
    """A head that reads only the direction h: after P-ClArC every sample gets the clean prediction."""
    module, params, ms, batch = net
    model = models.bind(module, ms, train=False)
    state = _state(6)
    h = state.cav
    reader = jax.tree.map(lambda v: v, params)
    reader["fc"]["kernel"] = jnp.outer(h, jnp.arange(5, dtype=jnp.float32))  # logits = (h·a) · [0..4]
    hp = pclarc.Hparams(layer="features")
    fixed = pclarc.corrected(model, state, hp)
    logits = fixed(reader, batch.x).logits - reader["fc"]["bias"]
    np.testing.assert_allclose(logits, np.outer(np.full(B, float(state.z_minus)), np.arange(5)), atol=1e-5)
    shifted = aclarc.augmented(model, state, aclarc.Hparams(layer="features"))(reader, batch.x).logits
    np.testing.assert_allclose(shifted - reader["fc"]["bias"], np.outer(np.full(B, float(state.z_plus)), np.arange(5)),
                               atol=1e-5)
    with pytest.raises(ValueError, match="edit"):
        fixed(reader, batch.x, edit={"block1": lambda a: a})


def test_aclarc_and_pclarc_losses_are_ce_of_the_shifted_model(net):
    module, params, ms, batch = net
    model = models.bind(module, ms, train=True)
    state = _state(6)
    for mod, target in ((aclarc, state.z_plus), (pclarc, state.z_minus)):
        hp = mod.Hparams()
        value, aux = mod.loss(params, state, batch, jax.random.key(0), model=model, hp=hp)
        logits = model(params, batch.x, edit={"block4": projection(state.cav, target, "max")}).logits
        ref = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch.y[:, None], 1))
        np.testing.assert_allclose(value, ref, rtol=1e-6)
        assert dataclasses.is_dataclass(hp)


def test_perturbation_of_a_corrected_model_goes_through_the_projection(net):
    """P-ClArC with mean pooling removes the h-component: the latent derivative along h is 0."""
    module, params, ms, batch = net
    model = models.bind(module, ms, train=False)
    state = _state(6)
    fixed = pclarc.corrected(model, state, pclarc.Hparams(layer="block4", pool="mean"))
    shape = model(params, batch.x).acts["block4"].shape

    def f(m, p):
        return jnp.sum(m(params, batch.x, perturb={"block4": p}).logits[:, 0])

    zeros = jnp.zeros(shape)
    tangent = jnp.broadcast_to(state.cav, shape)
    _, d_plain = jax.jvp(lambda p: f(model, p), (zeros,), (tangent,))
    _, d_fixed = jax.jvp(lambda p: f(fixed, p), (zeros,), (tangent,))
    assert abs(float(d_plain)) > 1e-4
    assert abs(float(d_fixed)) < 1e-6
