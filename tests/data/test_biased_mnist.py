"""Biased MNIST (ReBias protocol) against a plain per-class count of the rules."""
import math

import numpy as np
import pytest

from jaxbias.data import COLOURS, BiasedMNIST, biased_mnist, color_mnist, colourise, load_mnist, to_float

# The colour table of SPEC §8, written out independently of the module.
SPEC_COLOURS = [
    [255, 0, 0], [0, 255, 0], [0, 0, 255], [225, 225, 0], [225, 0, 225],
    [0, 255, 255], [255, 128, 0], [255, 0, 128], [128, 0, 255], [128, 128, 128],
]
# Uneven class sizes, including sizes whose remainder is not a multiple of 9 and an empty class.
CLASS_SIZES = [1000, 997, 5, 0, 123, 9, 10, 1, 450, 77]


def _digits(sizes=CLASS_SIZES, seed=0):
    """Random strokes: zeros background, values 1..255 on ~30% of pixels; labels shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10), sizes)).astype(np.int64)
    n = labels.shape[0]
    values = rng.integers(1, 256, size=(n, 28, 28))
    images = np.where(rng.random((n, 28, 28)) < 0.3, values, 0).astype(np.uint8)
    return images, labels


def test_colours_match_spec():
    assert COLOURS.dtype == np.uint8 and COLOURS.shape == (10, 3)
    np.testing.assert_array_equal(COLOURS, np.array(SPEC_COLOURS))


@pytest.mark.parametrize("rho", [0.99, 0.995, 0.997, 0.1, 1.0, 0.0])
def test_protocol_counts(rho):
    images, labels = _digits()
    rgb, bias = color_mnist(images, labels, rho=rho, seed=3)
    assert rgb.shape == images.shape + (3,) and rgb.dtype == np.uint8
    assert bias.shape == labels.shape and bias.dtype == np.int32
    for c in range(10):
        b = bias[labels == c]
        n = b.shape[0]
        own = int(n * rho)
        assert np.sum(b == c) == own, (c, n)
        others = np.array([np.sum(b == k) for k in range(10) if k != c])
        assert others.sum() == n - own
        # as even as possible: every other colour gets floor or ceil of rest / 9
        rest = n - own
        assert others.min() == rest // 9 and others.max() == math.ceil(rest / 9), (c, others)


def test_pixels_white_foreground_and_exact_background():
    images, labels = _digits(sizes=[7] * 10)
    rgb, bias = color_mnist(images, labels, rho=0.5, seed=0)
    for i in range(images.shape[0]):
        fg = images[i] != 0
        np.testing.assert_array_equal(rgb[i][fg], np.full((fg.sum(), 3), 255))
        np.testing.assert_array_equal(rgb[i][~fg], np.tile(SPEC_COLOURS[bias[i]], ((~fg).sum(), 1)))


def test_grey_foreground_keeps_intensity():
    images, labels = _digits(sizes=[7] * 10)
    rgb, bias = color_mnist(images, labels, rho=0.5, seed=0, foreground="grey")
    fg = images != 0
    for ch in range(3):
        np.testing.assert_array_equal(rgb[..., ch][fg], images[fg])
    np.testing.assert_array_equal(rgb[~fg], np.asarray(SPEC_COLOURS)[np.broadcast_to(bias[:, None, None], images.shape)[~fg]])
    # same colour assignment as the white foreground
    np.testing.assert_array_equal(bias, color_mnist(images, labels, rho=0.5, seed=0)[1])


def test_bias_label_is_background_colour_index():
    images, labels = _digits(sizes=[20] * 10)
    images[:, 0, 0] = 0  # a known background pixel
    rgb, bias = color_mnist(images, labels, rho=0.3, seed=1)
    corner = rgb[:, 0, 0, :]
    found = np.array([SPEC_COLOURS.index(list(px)) for px in corner])
    np.testing.assert_array_equal(found, bias)


def test_channel_axis_and_whole_number_floats_accepted():
    images, labels = _digits(sizes=[5] * 10)
    ref = color_mnist(images, labels, rho=0.8, seed=2)
    for variant in (images[..., None], images.astype(np.float64), images.astype(np.int64)):
        out = color_mnist(variant, labels, rho=0.8, seed=2)
        np.testing.assert_array_equal(out[0], ref[0])
        np.testing.assert_array_equal(out[1], ref[1])


def test_deterministic_per_seed_and_differs_across_seeds():
    images, labels = _digits()
    a = color_mnist(images, labels, rho=0.9, seed=7)
    b = color_mnist(images, labels, rho=0.9, seed=7)
    c = color_mnist(images, labels, rho=0.9, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    # no hidden global state
    np.random.seed(123)
    np.testing.assert_array_equal(color_mnist(images, labels, rho=0.9, seed=7)[1], a[1])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(rho=-0.1), "rho"),
        (dict(rho=1.5), "rho"),
        (dict(rho=float("nan")), "rho"),
        (dict(rho="0.5"), "rho"),
        (dict(rho=True), "rho"),
        (dict(seed=1.5), "seed"),
        (dict(seed=-1), "seed"),
        (dict(foreground="black"), "foreground"),
    ],
)
def test_bad_scalar_arguments(kwargs, name):
    images, labels = _digits(sizes=[3] * 10)
    args = dict(rho=0.5, seed=0) | kwargs
    with pytest.raises(ValueError, match=name):
        color_mnist(images, labels, **args)


def test_bad_arrays():
    images, labels = _digits(sizes=[3] * 10)
    with pytest.raises(ValueError, match="labels"):
        color_mnist(images, labels[:-1], rho=0.5, seed=0)
    with pytest.raises(ValueError, match="labels"):
        color_mnist(images, np.where(labels == 0, -1, labels), rho=0.5, seed=0)
    with pytest.raises(ValueError, match="labels"):
        color_mnist(images, np.where(labels == 0, 10, labels), rho=0.5, seed=0)
    with pytest.raises(ValueError, match="labels"):
        color_mnist(images, labels.astype(np.float32), rho=0.5, seed=0)
    with pytest.raises(ValueError, match="labels"):
        color_mnist(images, labels[:, None], rho=0.5, seed=0)
    with pytest.raises(ValueError, match="images"):
        color_mnist(images.reshape(30, -1), labels, rho=0.5, seed=0)
    with pytest.raises(ValueError, match="images"):
        color_mnist(images.astype(np.float32) / 255.0, labels, rho=0.5, seed=0)
    with pytest.raises(ValueError, match="images"):
        color_mnist(np.full_like(images, 300, dtype=np.int32), labels, rho=0.5, seed=0)


def test_biased_mnist_offline_sets():
    data = biased_mnist(rho=0.99, seed=0, source="offline")
    assert isinstance(data, BiasedMNIST) and data.source == "offline"
    digits = load_mnist("offline")
    assert data.train_x.shape == (4000, 28, 28, 3) and data.train_x.dtype == np.float32
    assert data.biased_x.shape == data.unbiased_x.shape == (1000, 28, 28, 3)
    for x in (data.train_x, data.biased_x, data.unbiased_x):
        assert x.min() >= 0.0 and x.max() <= 1.0
    for y in (data.train_y, data.biased_y, data.unbiased_y, data.train_bias, data.biased_bias, data.unbiased_bias):
        assert y.dtype == np.int32
    # the training split is color_mnist at (rho, seed) on the training digits
    rgb, bias = color_mnist(digits.train_x, digits.train_y, rho=0.99, seed=0)
    np.testing.assert_array_equal(data.train_bias, bias)
    np.testing.assert_allclose(data.train_x, rgb / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(data.train_y, digits.train_y)
    # 400 per class at rho=0.99: 396 own colour, 4 spread over 4 of the 9 others
    for c in range(10):
        assert np.sum(data.train_bias[data.train_y == c] == c) == 396
    # biased test: every sample in its own colour; unbiased test: 100 per class at
    # rho=0.1 -> exactly 10 per (digit, colour) cell
    np.testing.assert_array_equal(data.biased_bias, data.biased_y)
    cells = np.zeros((10, 10), int)
    np.add.at(cells, (data.unbiased_y, data.unbiased_bias), 1)
    np.testing.assert_array_equal(cells, np.full((10, 10), 10))
    # the two test sets colour the same digits
    np.testing.assert_array_equal(data.biased_y, data.unbiased_y)
    np.testing.assert_array_equal(data.biased_x.min(-1) == 1.0, data.unbiased_x.min(-1) == 1.0)


def test_biased_mnist_seed_and_rho_validation():
    a = biased_mnist(rho=0.995, seed=1)
    b = biased_mnist(rho=0.995, seed=1)
    c = biased_mnist(rho=0.995, seed=2)
    np.testing.assert_array_equal(a.unbiased_bias, b.unbiased_bias)
    assert not np.array_equal(a.unbiased_bias, c.unbiased_bias)
    with pytest.raises(ValueError, match="rho"):
        biased_mnist(rho=2.0)
    with pytest.raises(ValueError, match="source"):
        biased_mnist(rho=0.99, source="imagenet")


def test_to_float():
    x = np.array([0, 51, 255], np.uint8)
    np.testing.assert_allclose(to_float(x), [0.0, 0.2, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="rgb"):
        to_float(x.astype(np.float32))


def test_every_colour_equals_colourise_per_colour():
    from jaxbias.data.biased_mnist import every_colour

    rng = np.random.default_rng(3)
    imgs = (rng.random((4, 28, 28)) > 0.7).astype(np.uint8) * rng.integers(1, 256, (4, 28, 28)).astype(np.uint8)
    out = every_colour(imgs)
    assert out.shape == (4, 10, 28, 28, 3) and out.dtype == np.uint8
    for n in range(4):
        for c in range(10):
            np.testing.assert_array_equal(out[n, c], colourise(imgs[n:n + 1], np.array([c]))[0])


def test_colour_pairs_all_and_random():
    from jaxbias.data.biased_mnist import colour_pairs

    rng = np.random.default_rng(4)
    imgs = (rng.random((6, 28, 28)) > 0.7).astype(np.uint8) * 200
    labels = np.array([0, 3, 9, 3, 5, 1])
    pairs = colour_pairs(imgs, labels, others="all")
    assert pairs.x.shape == (54, 28, 28, 3) and pairs.x.dtype == np.float32
    for n in range(6):
        rows = np.flatnonzero(pairs.index == n)
        assert rows.shape == (9,)
        assert sorted(pairs.bias_cf[rows].tolist()) == [c for c in range(10) if c != labels[n]]
        assert np.all(pairs.bias[rows] == labels[n]) and np.all(pairs.y[rows] == labels[n])
        for r in rows:
            np.testing.assert_array_equal(pairs.x[r], to_float(colourise(imgs[n:n + 1], labels[n:n + 1]))[0])
            np.testing.assert_array_equal(pairs.x_cf[r], to_float(colourise(imgs[n:n + 1], pairs.bias_cf[r:r + 1]))[0])
            fg = imgs[n] != 0  # only the background differs
            np.testing.assert_array_equal(pairs.x[r][fg], pairs.x_cf[r][fg])
    rnd = colour_pairs(imgs, labels, others="random", seed=1)
    assert rnd.x.shape == (6, 28, 28, 3) and np.all(rnd.bias_cf != labels)
    again = colour_pairs(imgs, labels, others="random", seed=1)
    np.testing.assert_array_equal(rnd.bias_cf, again.bias_cf)
    with pytest.raises(ValueError, match="others"):
        colour_pairs(imgs, labels, others="some")
    with pytest.raises(ValueError, match="labels"):
        colour_pairs(imgs, labels[:3])


def test_validation_set_is_the_first_training_images_recoloured_at_rho_0_1():
    """The EnD authors' validation set: training images (not test images) with colours independent of the class,
    so that hyperparameters are chosen without looking at a test set."""
    data = biased_mnist(rho=0.99, seed=3, validation=500, foreground="grey")
    assert data.val_x.shape == (500, 28, 28, 3) and data.foreground == "grey"
    np.testing.assert_array_equal(data.val_y, data.train_y[:500])
    np.testing.assert_array_equal(np.bincount(data.val_bias, minlength=10), np.full(10, 50))  # rho 0.1: even
    assert abs(np.mean(data.val_bias == data.val_y) - 0.1) < 0.03  # the training set's colours mostly match
    assert np.mean(data.train_bias == data.train_y) > 0.98
    # the same images: where the colour drawn is the training colour, the validation image is the training image
    same = data.val_bias == data.train_bias[:500]
    assert 0 < same.sum() < 500
    np.testing.assert_array_equal(data.val_x[same], data.train_x[:500][same])
    assert not np.array_equal(data.val_x[~same][0], data.train_x[:500][~same][0])
    assert biased_mnist(rho=0.99, seed=3).val_x is None
    with pytest.raises(ValueError, match="validation must be an int in"):
        biased_mnist(rho=0.99, seed=3, validation=10**6)


def test_the_dataset_adds_val_to_its_evaluation_sets_when_asked():
    from jaxbias import datasets

    ds = datasets.load("biased_mnist", {"rho": 0.99, "validation": 100}, seed=0)
    assert set(ds.evals) == {"biased", "unbiased", "val"}
    assert set(datasets.load("biased_mnist", {"rho": 0.99}, seed=0).evals) == {"biased", "unbiased"}
    with pytest.raises(ValueError, match="foreground must be one of"):
        datasets.settings("biased_mnist", {"foreground": "pink"})
