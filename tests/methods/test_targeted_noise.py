"""Targeted noise / mask: which pixels change, the noise statistics, the mask value, keys, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import models
from jaxbias.methods import targeted_noise as tn
from jaxbias.types import Batch


def _setup(b=4, h=32, w=32, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(size=(b, h, w, c)), jnp.float32)
    general = jnp.asarray(rng.uniform(size=(h, w)), jnp.float32)  # distinct values: exact quantile regions
    specific = jnp.asarray(rng.uniform(size=(b, h, w)), jnp.float32)
    return x, general, specific


def test_noise_changes_exactly_the_pixels_above_the_quantile():
    x, g, _ = _setup(b=8, h=64, w=64)
    out = tn.apply(x, g, jax.random.key(0), q=0.7, sigma=0.5, mode="noise")
    region = np.asarray(g) > np.quantile(np.asarray(g), 0.7)
    assert abs(region.mean() - 0.3) < 1e-3
    diff = np.asarray(out - x)
    np.testing.assert_array_equal(diff[:, ~region], 0.0)  # the rest untouched, bit for bit
    assert (diff[:, region] != 0).all()
    noise = diff[:, region].ravel()  # 8 · 1229 · 3 draws
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 0.5) < 0.01
    again = tn.apply(x, g, jax.random.key(0), q=0.7, sigma=0.5, mode="noise")
    other = tn.apply(x, g, jax.random.key(1), q=0.7, sigma=0.5, mode="noise")
    np.testing.assert_array_equal(np.asarray(again), np.asarray(out))  # same key, same noise
    assert not np.allclose(np.asarray(other), np.asarray(out))  # a fresh key per step: fresh noise


def test_mask_writes_the_fill_value_on_specific_regions():
    x, _, s = _setup()
    out = np.asarray(tn.apply(x, s, jax.random.key(0), q=0.9, mode="mask", fill=0.5))
    for b in range(x.shape[0]):
        region = np.asarray(s[b]) >= np.quantile(np.asarray(s[b]), 0.9)
        assert abs(region.mean() - 0.1) < 2e-3
        np.testing.assert_array_equal(out[b][region], 0.5)
        np.testing.assert_array_equal(out[b][~region], np.asarray(x[b])[~region])
    # per-image regions differ
    assert not np.array_equal(np.asarray(s[0]) > np.quantile(s[0], 0.9), np.asarray(s[1]) > np.quantile(s[1], 0.9))


def test_quantile_ends():
    x, g, _ = _setup()
    np.testing.assert_array_equal(np.asarray(tn.apply(x, g, jax.random.key(0), q=1.0)), np.asarray(x))  # nothing
    masked = np.asarray(tn.apply(x, g, jax.random.key(0), q=0.0, mode="mask"))
    assert (masked == 0).mean() == 1.0  # the mask hides ≥ the quantile: the minimum pixel too
    kept = np.asarray(tn.apply(x, g, jax.random.key(0), q=0.0, mode="mask", at_quantile="keep"))
    assert (kept == 0).mean() == pytest.approx(1 - 1 / (32 * 32))  # all but the minimum pixel


def test_ties_at_the_quantile_follow_the_release():
    """A map on the paper's stride-2 grid comes in 2×2 blocks, so pixels sit exactly at the quantile.

    The released mask keeps ``map < Q`` (hides ``≥``), the released noise adds to ``map > Q``: a loop over
    the pixels with NumPy's quantile decides each one."""
    rng = np.random.default_rng(7)
    blocks = rng.permutation(64).astype(np.float32).reshape(8, 8)  # distinct block values
    g = np.kron(blocks, np.ones((2, 2), np.float32))  # (16, 16), every value 4 times
    x = jnp.asarray(rng.uniform(0.1, 1.0, size=(2, 16, 16, 3)), jnp.float32)
    q = 0.7
    thr = np.quantile(g, q)
    assert np.sum(g == thr) == 4  # the quantile falls on a block: 4 tied pixels
    hide, noise = np.zeros(g.shape, bool), np.zeros(g.shape, bool)
    for i in range(16):
        for j in range(16):
            hide[i, j] = not (g[i, j] < thr)  # the release's mask: keep map < Q
            noise[i, j] = g[i, j] > thr  # the release's noise: map > Q
    masked = np.asarray(tn.apply(x, jnp.asarray(g), jax.random.key(0), q=q, mode="mask", fill=0.0))
    np.testing.assert_array_equal(masked[..., 0] == 0, np.broadcast_to(hide, (2, 16, 16)))
    noised = np.asarray(tn.apply(x, jnp.asarray(g), jax.random.key(0), q=q, mode="noise"))
    np.testing.assert_array_equal(noised[..., 0] != np.asarray(x)[..., 0], np.broadcast_to(noise, (2, 16, 16)))
    assert hide.sum() == noise.sum() + 4
    # the other readings, named
    both = np.asarray(tn.apply(x, jnp.asarray(g), jax.random.key(0), q=q, mode="noise", at_quantile="hide"))
    np.testing.assert_array_equal(both[..., 0] != np.asarray(x)[..., 0], np.broadcast_to(hide, (2, 16, 16)))
    kept = np.asarray(tn.apply(x, jnp.asarray(g), jax.random.key(0), q=q, mode="mask", at_quantile="keep"))
    np.testing.assert_array_equal(kept[..., 0] == 0, np.broadcast_to(noise, (2, 16, 16)))
    with pytest.raises(ValueError, match="at_quantile must be one of"):
        tn.Hparams(at_quantile="ties")


def test_loss_uses_the_general_map_from_init_and_the_specific_maps_from_the_batch():
    module = models.create("simple_conv", channels=(2, 2, 2, 2), kernel_size=3)
    x, g, s = _setup(h=8, w=8)
    batch = Batch(x, jnp.array([0, 1, 2, 3]), None, s)
    params, ms = jax.jit(lambda k: models.init(module, k, x))(jax.random.key(0))
    model = models.bind(module, ms, train=False)
    hp_g = tn.Hparams(map="general", mode="mask")
    st = tn.init(model, params, batch, hp=hp_g)  # the mean of the batch's specific maps
    np.testing.assert_allclose(np.asarray(st.general_map), np.asarray(s).mean(0), rtol=1e-6)
    st2 = tn.init(hp=hp_g, general_map=g)
    seen = tn.transform(batch, st2, jax.random.key(0), hp=hp_g).x
    np.testing.assert_array_equal(np.asarray(seen), np.asarray(tn.apply(x, g, jax.random.key(0), mode="mask")))
    hp_s = tn.Hparams(map="specific", mode="noise", sigma=0.1)
    seen = tn.transform(batch, tn.init(hp=hp_s), jax.random.key(2), hp=hp_s).x
    np.testing.assert_array_equal(np.asarray(seen), np.asarray(tn.apply(x, s, jax.random.key(2), sigma=0.1)))
    value, aux = jax.jit(lambda p, k: tn.loss(p, st2, batch, k, model=model, hp=hp_g))(params, jax.random.key(0))
    assert np.isfinite(float(value)) and set(aux.metrics) == {"ce"}


@pytest.mark.parametrize("call,match", [
    (lambda: tn.Hparams(q=1.5), r"q must be a quantile in \[0, 1\], got 1.5"),
    (lambda: tn.Hparams(q=-0.2), r"q must be a quantile in \[0, 1\]"),
    (lambda: tn.Hparams(sigma=-1.0), "sigma must be a non-negative number"),
    (lambda: tn.Hparams(mode="blur"), "mode must be one of"),
    (lambda: tn.Hparams(map="local"), "map must be one of"),
    (lambda: tn.apply(jnp.ones((2, 4, 4, 1)), jnp.ones((4, 4)), jax.random.key(0), q=2.0), "q must be a quantile"),
    (lambda: tn.apply(jnp.ones((2, 4, 4, 1)), jnp.ones((3, 4, 4)), jax.random.key(0)), r"maps must be \(H, W\)"),
    (lambda: tn.init(hp=tn.Hparams(map="general")), "needs general_map"),
    (lambda: tn.transform(Batch(jnp.ones((2, 4, 4, 1)), jnp.zeros(2, int)), tn.init(hp=tn.Hparams(map="specific")),
                          jax.random.key(0), hp=tn.Hparams(map="specific")), "per-image maps in batch.mask"),
])
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
