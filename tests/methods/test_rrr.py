"""RRR against finite differences and a model that provably ignores the masked region."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import models
from jaxbias.methods import rrr
from jaxbias.types import Batch

B, H, W, C, K = 4, 3, 3, 2, 3


@pytest.fixture(scope="module")
def mlp():
    module = models.create("mlp", hidden=(7,), num_classes=K)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B, H, W, C)), jnp.float32)
    y = jnp.asarray(rng.integers(0, K, B), jnp.int32)
    mask = np.zeros((B, H, W), bool)
    mask[0, :2, :2] = True
    mask[1, 2, :] = True
    mask[3, 1, 1] = True  # sample 2 has an empty mask
    params, ms = models.init(module, jax.random.key(0), x)
    return module, params, ms, Batch(x, y, None, jnp.asarray(mask))


def _fd_input_gradient(f, x, eps=1e-3):
    """Central differences of a scalar NumPy-in/float-out function."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        g[idx] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


def test_l2_penalty_equals_finite_difference_gradient(mlp):
    module, params, ms, batch = mlp
    model = models.bind(module, ms, train=True)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)

        def total(x):
            return float(jnp.sum(jax.nn.log_softmax(model(p64, jnp.asarray(x)).logits)))

        g = _fd_input_gradient(total, batch.x)
    m = np.broadcast_to(np.asarray(batch.mask)[..., None], g.shape)
    ref = ((m * g) ** 2).reshape(B, -1).sum(1)
    got = rrr.penalty(params, rrr.State(), batch, jax.random.key(0), model=model, hp=rrr.Hparams())
    assert ref[2] == 0 and ref.max() > 1e-3
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-9)
    value, aux = rrr.loss(params, rrr.State(), batch, jax.random.key(0), model=model, hp=rrr.Hparams(lam=10.0))
    np.testing.assert_allclose(aux.metrics["rrr"], ref.sum(), rtol=1e-4)
    np.testing.assert_allclose(value, aux.metrics["ce"] + 10.0 * aux.metrics["rrr"], rtol=1e-6)


def test_full_channel_mask_equals_spatial_mask(mlp):
    module, params, ms, batch = mlp
    model = models.bind(module, ms, train=True)
    full = batch._replace(mask=jnp.broadcast_to(batch.mask[..., None], batch.x.shape))
    a = rrr.penalty(params, rrr.State(), batch, None, model=model, hp=rrr.Hparams())
    b = rrr.penalty(params, rrr.State(), full, None, model=model, hp=rrr.Hparams())
    np.testing.assert_array_equal(a, b)


def test_zero_for_a_model_blind_to_the_region(mlp):
    """First-layer weights zero on every masked input: the input gradient there is exactly 0."""
    module, params, ms, batch = mlp
    model = models.bind(module, ms, train=True)
    region = np.zeros((H, W, C), bool)
    region[:2, :, :] = True  # the same region for every sample: the top two rows
    shared = batch._replace(mask=jnp.broadcast_to(jnp.asarray(region), batch.x.shape))
    blind = jax.tree.map(lambda v: v, params)
    blind["fc1"]["kernel"] = jnp.where(jnp.asarray(region.reshape(-1, 1)), 0.0, params["fc1"]["kernel"])
    for variant in ("l2", "cosine"):
        hp = rrr.Hparams(variant=variant)
        before = rrr.penalty(params, rrr.State(), shared, None, model=model, hp=hp)
        after = rrr.penalty(blind, rrr.State(), shared, None, model=model, hp=hp)
        assert float(jnp.min(before)) > 1e-6
        np.testing.assert_array_equal(after, 0.0)


def test_cosine_variant_against_numpy(mlp):
    module, params, ms, batch = mlp
    model = models.bind(module, ms, train=True)

    def total(x):
        return jnp.sum(jnp.mean(jnp.log(jax.nn.softmax(model(params, x).logits) + 1e-5), axis=-1))

    g = np.asarray(jax.grad(total)(batch.x), np.float64)
    sal = np.abs(g.sum(-1)).reshape(B, -1)
    mm = np.asarray(batch.mask, np.float64).reshape(B, -1)
    ref = np.array([
        0.0 if mm[n].sum() == 0 else sal[n] @ mm[n] / (np.linalg.norm(sal[n]) * np.linalg.norm(mm[n])) for n in range(B)
    ])
    hp = rrr.Hparams(variant="cosine", lam=2.0)
    got = rrr.penalty(params, rrr.State(), batch, None, model=model, hp=hp)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-8)
    # the released RRR_ExpLogSum: a loop over the batch adding each masked sample's cosine, divided by B
    released = 0.0
    for n in range(B):
        if mm[n].sum() > 0:
            released += sal[n] @ mm[n] / (np.linalg.norm(sal[n]) * np.linalg.norm(mm[n]))
    released /= B
    value, aux = rrr.loss(params, rrr.State(), batch, None, model=model, hp=hp)
    np.testing.assert_allclose(aux.metrics["rrr"], released, rtol=1e-5)  # sample 2 (no mask) counts 0
    _, aux = rrr.loss(params, rrr.State(), batch, None, model=model, hp=rrr.Hparams(variant="cosine", reduce="masked"))
    np.testing.assert_allclose(aux.metrics["rrr"], ref[[0, 1, 3]].mean(), rtol=1e-5)  # the masked samples only
    # half the batch masked: the "masked" reading is twice the released one
    half = batch._replace(mask=batch.mask.at[1].set(False))
    _, a = rrr.loss(params, rrr.State(), half, None, model=model, hp=hp)
    _, m = rrr.loss(params, rrr.State(), half, None, model=model, hp=rrr.Hparams(variant="cosine", reduce="masked"))
    np.testing.assert_allclose(float(m.metrics["rrr"]), 2 * float(a.metrics["rrr"]), rtol=1e-6)
    np.testing.assert_allclose(float(a.metrics["rrr"]), (ref[0] + ref[3]) / B, rtol=1e-5)
    empty = batch._replace(mask=jnp.zeros_like(batch.mask))
    value, aux = rrr.loss(params, rrr.State(), empty, None, model=model, hp=hp)
    assert float(aux.metrics["rrr"]) == 0.0 and np.isfinite(float(value))
    grads = jax.grad(lambda p: rrr.loss(p, rrr.State(), empty, None, model=model, hp=hp)[0])(params)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(grads))


def test_explicit_weight_penalty(mlp):
    module, params, ms, batch = mlp
    model = models.bind(module, ms, train=True)
    a, _ = rrr.loss(params, rrr.State(), batch, None, model=model, hp=rrr.Hparams(l2=0.0))
    b, _ = rrr.loss(params, rrr.State(), batch, None, model=model, hp=rrr.Hparams(l2=0.5))
    sq = sum(float(jnp.sum(v * v)) for v in jax.tree.leaves(params))
    np.testing.assert_allclose(float(b) - float(a), 0.5 * sq, rtol=1e-4)


def test_trains_through_the_double_gradient_under_jit(mlp):
    module, params, ms, batch = mlp
    model = models.bind(module, ms, train=True)
    f = jax.jit(lambda p: rrr.loss(p, rrr.State(), batch, None, model=model, hp=rrr.Hparams())[0])
    g = jax.grad(f)(params)
    # directional finite difference of the loss along the gradient
    eps = 1e-3
    unit = jax.tree.map(lambda v: v / jnp.sqrt(sum(jnp.sum(u * u) for u in jax.tree.leaves(g))), g)
    plus = jax.tree.map(lambda p, d: p + eps * d, params, unit)
    minus = jax.tree.map(lambda p, d: p - eps * d, params, unit)
    fd = (float(f(plus)) - float(f(minus))) / (2 * eps)
    norm = float(jnp.sqrt(sum(jnp.sum(u * u) for u in jax.tree.leaves(g))))
    np.testing.assert_allclose(fd, norm, rtol=2e-2)


def test_bad_input(mlp):
    module, params, ms, batch = mlp
    model = models.bind(module, ms, train=True)
    with pytest.raises(ValueError, match="batch.mask is None"):
        rrr.loss(params, rrr.State(), batch._replace(mask=None), None, model=model, hp=rrr.Hparams())
    with pytest.raises(ValueError, match=r"batch.mask has shape \(4, 3, 2\)"):
        rrr.loss(params, rrr.State(), batch._replace(mask=batch.mask[:, :, :2]), None, model=model, hp=rrr.Hparams())
    for kwargs, match in [({"variant": "l1"}, "variant"), ({"lam": -1.0}, "lam"), ({"l2": float("nan")}, "l2")]:
        with pytest.raises(ValueError, match=match):
            rrr.Hparams(**kwargs)


def test_zero_l2_trains_exactly_as_the_loss_without_the_term():
    """``l2=0`` leaves the compiled step as without a weight term: adding 0·Σθ² is exact in the loss but changes
    how XLA fuses the step, and training drifted from the same loss without it (issue 34, defect 5)."""
    import types

    import optax

    from jaxbias.train import fit, make_optimizer

    module = models.create("simple_conv", channels=(4, 8, 16, 32), num_classes=10)
    rng = np.random.default_rng(0)
    n = 256
    mask = np.zeros((n, 28, 28), bool)
    mask[: n // 2, 20:, 18:] = True
    train = Batch(rng.normal(size=(n, 28, 28, 3)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32), None,
                  mask)

    def loss_without_weight_term(params, state, batch, key, *, model, hp):
        per, _, out = rrr._penalty_and_output(params, batch, model, hp)  # the same term (checked elsewhere by FD)
        term = jnp.sum(per)
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out.logits, batch.y))
        return ce + hp.lam * term, rrr.Aux(metrics={"ce": ce, "rrr": term}, state=out.state)

    reference = types.ModuleType("rrr_without_weight_term")
    reference.__dict__.update({k: v for k, v in vars(rrr).items() if not k.startswith("__")})
    reference.loss = loss_without_weight_term
    params = []
    for method in (rrr, reference):
        tx = make_optimizer(lr=1e-3, steps_per_epoch=n // 32, decay_every=None, weight_decay=1e-4)
        fitted = fit(module=module, method=method, hp=rrr.Hparams(lam=20.0, l2=0.0), train=train, epochs=2,
                     batch_size=32, tx=tx, progress=False)
        params.append(fitted.state.params)
    for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
