"""The region classifier: network, patch sampling, the smoothed loss, training on a planted region, calibration."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbias import attribution as A
from jaxbias import metrics
from jaxbias.types import Batch


def test_network_takes_a_position_channel_and_returns_named_layers():
    net = A.small(num_positions=9, widths=(4, 8), blocks=(1, 2))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 8, 8, 3)), jnp.float32)
    v = A.init_variables(net, jax.random.key(0), patch=8, channels=3)
    assert v["params"]["position"]["embedding"].shape == (9, 64)  # one k×k channel per grid position
    assert v["params"]["stem_conv"]["kernel"].shape == (3, 3, 4, 4)  # 3 image channels + the position channel
    logits, acts = net.apply(v, x, positions=jnp.array([0, 1, 2]), train=False)
    assert logits.shape == (3, 2)
    assert set(acts) == {"stem", "stage1", "stage2", "features", "logits"} and acts["stage2"].shape == (3, 4, 4, 8)
    same = jnp.repeat(x[:1], 2, axis=0)
    moved, _ = net.apply(v, same, positions=jnp.array([0, 5]), train=False)
    assert not np.allclose(moved[0], moved[1])  # the position changes the prediction
    (_, _), upd = net.apply(v, x, positions=jnp.array([0, 1, 2]), train=True, mutable=["batch_stats"])
    assert "batch_stats" in upd


def test_resnet18_configuration_has_resnet18_stages():
    net = A.resnet18(num_positions=2401)
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             positions=jnp.zeros(1, jnp.int32), train=False))
    p = shapes["params"]
    assert p["stem_conv"]["kernel"].shape == (7, 7, 4, 64)
    for j, w in enumerate((64, 128, 256, 512), start=1):
        assert p[f"stage{j}_block2"]["conv2"]["kernel"].shape == (3, 3, w, w)
        assert f"stage{j}_block3" not in p
    assert p["position"]["embedding"].shape == (2401, 32 * 32)
    n = sum(np.prod(a.shape) for a in jax.tree.leaves(p))
    # torchvision's resnet18 (11,689,512 with 1000 classes) with 2 classes, the position channel in the stem,
    # and the 2401 × 32·32 embedding
    assert n == 11_689_512 - (512 * 1000 + 1000) + (512 * 2 + 2) + 7 * 7 * 64 + 2401 * 1024


def test_network_bad_input():
    net = A.small(num_positions=4)
    x = jnp.zeros((2, 8, 8, 3))
    with pytest.raises(ValueError, match="pass positions"):
        net.init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="num_positions=0"):
        A.small().init(jax.random.key(0), x, positions=jnp.zeros(2, jnp.int32), train=False)
    with pytest.raises(ValueError, match=r"positions must be \(2,\) integer"):
        net.init(jax.random.key(0), x, positions=jnp.zeros(2), train=False)


def test_sample_patches_and_the_smoothed_loss():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(size=(5, 12, 12, 2)), jnp.float32)
    loc = A.grid_locations(12, patch=4, stride=4)
    key = jax.random.key(3)
    patches, idx = A.sample_patches(x, jnp.asarray(loc), key, patch=4)
    for n in range(5):
        cx, cy = loc[int(idx[n])]
        np.testing.assert_array_equal(patches[n], x[n, cy : cy + 4, cx : cx + 4])
    net = A.small(num_positions=9, widths=(4,), blocks=(1,))
    v = A.init_variables(net, jax.random.key(0), patch=4, channels=2)
    params = v.pop("params")
    y = jnp.array([0, 1, 1, 0, 1])
    loss_fn = A.region_loss(net, loc, patch=4, label_smoothing=0.1)
    value, aux = loss_fn(params, v, (), Batch(x, y), key)
    logits = net.apply({"params": params, **v}, patches, positions=idx, train=True, mutable=["batch_stats"])[0][0]
    target = jax.nn.one_hot(y, 2) * 0.9 + 0.05
    np.testing.assert_allclose(float(value), float(optax.softmax_cross_entropy(logits, target).mean()), rtol=1e-5)
    assert set(aux.metrics) == {"ce", "accuracy"} and "batch_stats" in aux.state


def _planted(n, seed):
    """16×16 images; c = 1 puts a bright 4×4 square somewhere in the top-left 8×8 quadrant."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.3, size=(n, 16, 16, 1)).astype(np.float32)
    c = (np.arange(n) % 2).astype(np.int32)
    for i in np.flatnonzero(c):
        r, q = rng.integers(0, 5, 2)
        x[i, r : r + 4, q : q + 4] = 1.0
    return x, c


def test_training_finds_the_planted_region_and_is_calibrated():
    x, c = _planted(256, 0)
    clf = A.train_region_classifier(x, c, patch=8, stride=4, epochs=8, batch_size=32, lr=3e-3, seed=0,
                                    module=A.small(num_positions=9, widths=(8, 16), blocks=(1, 1)))
    assert len(clf.history) == 8 and clf.history[-1]["accuracy"] > clf.history[0]["accuracy"]
    xv, cv = _planted(64, 1)
    cal = A.calibration(clf, xv, cv)
    probs = A.patch_probabilities(clf, xv)
    assert probs.shape == (64, 9, 2)
    assert cal["ece"] == pytest.approx(metrics.ece(probs.reshape(-1, 2), np.repeat(cv, 9)))
    assert cal["patches"] == 64 * 9 and cal["position_accuracy"].shape == (9,)
    # the top-left position sees the whole quadrant: it is the most accurate one
    assert cal["position_accuracy"][0] == cal["position_accuracy"].max() and cal["position_accuracy"][0] > 0.8
    raw = A.specific_maps(clf, xv, normalize=False)
    g = np.asarray(A.general_map(raw))
    assert g[:8, :8].mean() > g[8:, 8:].mean() + 0.3
    quadrant = np.zeros((16, 16), bool)
    quadrant[:8, :8] = True
    assert A.iou(np.asarray(A.top_region(g, 0.75)), quadrant) >= 0.5


def test_training_bad_input():
    x, c = _planted(8, 0)
    with pytest.raises(ValueError, match="num_positions=4 but the grid"):
        A.train_region_classifier(x, c, patch=8, stride=4, module=A.small(num_positions=4), epochs=1, batch_size=4)
    with pytest.raises(ValueError, match="labels has 7 entries"):
        A.train_region_classifier(x, c[:7], patch=8, stride=4, epochs=1, batch_size=4)
    with pytest.raises(ValueError, match="batch_size must be in"):
        A.train_region_classifier(x, c, patch=8, stride=4, epochs=1, batch_size=9)
    with pytest.raises(ValueError, match="patch=32 is larger than the image"):
        A.train_region_classifier(x, c, patch=32, stride=2, epochs=1, batch_size=4)
    with pytest.raises(ValueError, match="images must be float"):
        A.train_region_classifier((x * 255).astype(np.uint8), c, patch=8, stride=4, epochs=1, batch_size=4)
