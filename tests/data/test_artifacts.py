"""Controlled artifacts against plain per-pixel references: masks, formulas, bits, rates."""
import math

import numpy as np
import pytest

from jaxbias.data import (
    ARTIFACTS,
    CORNERS,
    blend,
    colour_patch,
    decoy_mnist,
    insert_all,
    insert_into_class,
    lsb_hide,
    lsb_read,
    render_text,
    stamp,
)

# The font as drawn in the design (5 rows of 3), written out independently of the module.
EXPECTED_GLYPHS = {
    "0": ["###", "#.#", "#.#", "#.#", "###"],
    "1": [".#.", "##.", ".#.", ".#.", "###"],
    "2": ["###", "..#", "###", "#..", "###"],
    "3": ["###", "..#", ".##", "..#", "###"],
    "4": ["#.#", "#.#", "###", "..#", "..#"],
    "5": ["###", "#..", "###", "..#", "###"],
    "6": ["###", "#..", "###", "#.#", "###"],
    "7": ["###", "..#", "..#", ".#.", ".#."],
    "8": ["###", "#.#", "###", "#.#", "###"],
    "9": ["###", "#.#", "###", "..#", "###"],
    ":": ["...", ".#.", "...", ".#.", "..."],
}


def _art(rows):
    return np.array([[c == "#" for c in r] for r in rows])


def _grey(shape, lo=0, hi=255, seed=0, dtype=np.uint8):
    """Random pixels in [lo, hi)."""
    return np.random.default_rng(seed).integers(lo, hi, size=shape).astype(dtype)


def _changed(a, b):
    """Spatial mask of pixels where any channel differs."""
    d = np.asarray(a) != np.asarray(b)
    return d if d.ndim == 2 else d.any(axis=-1)


# --------------------------------------------------------------------------- stamp


@pytest.mark.parametrize("ch", sorted(EXPECTED_GLYPHS))
def test_glyph_bitmaps(ch):
    np.testing.assert_array_equal(render_text(ch), _art(EXPECTED_GLYPHS[ch]))


def test_text_layout_and_scale():
    # "2024": glyphs 3 wide, one blank column between them, built here by hand.
    rows = [" ".join("".join(EXPECTED_GLYPHS[c][r]) for c in "2024").replace(" ", ".") for r in range(5)]
    expected = _art(rows)
    assert expected.shape == (5, 15)
    np.testing.assert_array_equal(render_text("2024"), expected)
    big = render_text("2024", scale=3)
    assert big.shape == (15, 45)
    for r in range(15):
        for c in range(45):
            assert big[r, c] == expected[r // 3, c // 3]


@pytest.mark.parametrize("corner", CORNERS)
def test_stamp_position_and_mask_is_exactly_the_ink(corner):
    h, w, margin = 20, 24, 2
    img = _grey((h, w), hi=255, seed=1)  # never 255, so every ink pixel changes
    out, mask = stamp(img, "12:05", corner=corner, margin=margin)
    bitmap = render_text("12:05")
    bh, bw = bitmap.shape
    top = margin if corner.startswith("top") else h - margin - bh
    left = margin if corner.endswith("left") else w - margin - bw
    expected = np.zeros((h, w), bool)
    expected[top : top + bh, left : left + bw] = bitmap
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(_changed(out, img), mask)
    assert np.all(out[mask] == 255) and np.array_equal(out[~mask], img[~mask])
    assert out.dtype == np.uint8 and mask.dtype == bool


def test_stamp_colour_per_channel_and_float_images():
    img = _grey((16, 16, 3), hi=100, seed=2).astype(np.float32)
    before = img.copy()
    out, mask = stamp(img, "7", corner="top_left", value=[250.5, 128, 0.25], margin=0)
    np.testing.assert_array_equal(img, before)  # input untouched
    assert out.dtype == np.float32
    np.testing.assert_array_equal(mask[:5, :3], _art(EXPECTED_GLYPHS["7"]))
    assert mask.sum() == _art(EXPECTED_GLYPHS["7"]).sum()
    np.testing.assert_array_equal(out[mask], np.tile([250.5, 128, 0.25], (mask.sum(), 1)).astype(np.float32))
    np.testing.assert_array_equal(_changed(out, img), mask)


# --------------------------------------------------------------------------- blend


def test_blend_uint8_against_pixel_loop():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out, mask = blend(img)
    assert out.dtype == np.uint8 and mask.shape == (16, 16) and mask.all()
    for r in range(16):
        for c in range(16):
            assert out[r, c] == round(int(img[r, c]) * 0.7 + 0.3 * 255)  # round: half to even, like np.rint


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3)])
def test_blend_float_formula(shape):
    img = np.random.default_rng(3).uniform(0, 255, size=shape)
    out, mask = blend(img)
    np.testing.assert_allclose(out, img * 0.7 + 0.3 * 255, rtol=0, atol=1e-12)
    assert mask.shape == shape[:2] and mask.all()
    out2, _ = blend(img.astype(np.float32), weight=0.5, value=100.0)
    assert out2.dtype == np.float32
    np.testing.assert_allclose(out2, img * 0.5 + 50.0, rtol=1e-6)


# --------------------------------------------------------------------------- LSB


def _text_bits(text):
    return [(b >> (7 - k)) & 1 for b in text.encode("utf-8") for k in range(8)]


def test_lsb_moves_pixels_by_at_most_one_and_reads_back():
    img = _grey((12, 12), seed=4)
    msg = "hidden text"
    out, mask = lsb_hide(img, msg)
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - img.astype(int)).max() <= 1
    bits = _text_bits(msg)
    flat = out.reshape(-1)
    assert [int(v) & 1 for v in flat[: len(bits)]] == bits
    np.testing.assert_array_equal(flat[len(bits):], img.reshape(-1)[len(bits):])
    assert np.packbits(lsb_read(out, len(bits))).tobytes().decode() == msg
    expected_mask = np.zeros(144, bool)
    expected_mask[: len(bits)] = True
    np.testing.assert_array_equal(mask, expected_mask.reshape(12, 12))
    assert _changed(out, img)[~mask].sum() == 0


def test_lsb_mask_is_exact_when_every_bit_flips():
    bits = np.random.default_rng(5).integers(0, 2, size=40)
    img = np.zeros((8, 8), np.uint8) + 100
    img.reshape(-1)[:40] += (1 - bits).astype(np.uint8)  # lowest bit = opposite of the message
    out, mask = lsb_hide(img, bits)
    np.testing.assert_array_equal(_changed(out, img), mask)
    assert mask.sum() == 40


def test_lsb_channel_repeat_and_float():
    img = _grey((6, 6, 3), seed=6).astype(np.float64)
    out, mask = lsb_hide(img, [1, 1, 0], channel=2, repeat=True)
    assert mask.all() and out.dtype == np.float64
    np.testing.assert_array_equal(out[..., :2], img[..., :2])
    np.testing.assert_array_equal(lsb_read(out, 36, channel=2), np.resize([1, 1, 0], 36))
    assert np.abs(out - img).max() <= 1


# --------------------------------------------------------------------------- colour patch


def test_colour_patch_location_and_mask():
    img = _grey((10, 12, 3), hi=200, seed=7)
    out, mask = colour_patch(img, size=(2, 3), location=(4, 9))
    expected = np.zeros((10, 12), bool)
    expected[4:6, 9:12] = True
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(_changed(out, img), mask)
    assert np.all(out[mask] == [255, 0, 0])
    grey_out, grey_mask = colour_patch(img[..., 0], size=1, colour=210, location=(0, 0))
    assert grey_out[0, 0] == 210 and grey_mask.sum() == 1


def test_colour_patch_random_location_fits_and_varies():
    img = np.zeros((9, 9), np.uint8)
    corners = set()
    for s in range(40):
        out, mask = colour_patch(img, size=3, rng=np.random.default_rng(s))
        rows, cols = np.nonzero(mask)
        assert mask.sum() == 9 and rows.max() - rows.min() == 2 and cols.max() - cols.min() == 2
        np.testing.assert_array_equal(out != 0, mask)
        corners.add((rows.min(), cols.min()))
    assert len(corners) > 10


# --------------------------------------------------------------------------- decoy MNIST


def _digits(n=3000, h=12, w=10, seed=8):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, h, w), np.uint8)
    images[:, 4:-4, 4:-4] = rng.integers(1, 256, size=(n, h - 8, w - 8))  # corners stay 0
    return images, rng.integers(0, 10, size=n)


def _corner_slices(name, h, w, s=4):
    rows = slice(0, s) if name.startswith("top") else slice(h - s, h)
    cols = slice(0, s) if name.endswith("left") else slice(w - s, w)
    return rows, cols


def test_decoy_train_encodes_label_in_a_corner_patch():
    images, labels = _digits()
    out, masks, corners = decoy_mnist(images, labels, train=True, seed=0)
    n, h, w = images.shape
    assert out.dtype == np.uint8 and masks.shape == (n, h, w) and corners.shape == (n,)
    for i in range(n):
        expected = np.zeros((h, w), bool)
        expected[_corner_slices(CORNERS[corners[i]], h, w)] = True
        np.testing.assert_array_equal(masks[i], expected)
        assert np.all(out[i][expected] == 255 - 25 * labels[i])
    assert np.array_equal(out != images, masks)  # every patch value is ≥ 30 on a 0 background
    counts = np.bincount(corners, minlength=4)
    assert np.all(np.abs(counts - n / 4) < 5 * math.sqrt(n * 0.25 * 0.75))


def test_decoy_test_values_do_not_follow_the_label():
    images, labels = _digits()
    out, masks, corners = decoy_mnist(images, labels, train=False, seed=0)
    values = np.array([out[i][masks[i]][0] for i in range(len(labels))]).astype(int)
    for i in range(len(labels)):
        assert np.all(out[i][masks[i]] == values[i])
    assert set(np.unique(values)) <= {255 - 25 * d for d in range(10)}
    agree = np.mean(values == 255 - 25 * labels)
    assert abs(agree - 0.1) < 5 * math.sqrt(0.09 / len(labels))
    for c in range(10):
        assert len(np.unique(values[labels == c])) >= 8
    # same seed → same corners at train and test, channels get the grey value
    rgb = np.repeat(images[..., None], 3, axis=-1)
    out_rgb, masks_rgb, corners_rgb = decoy_mnist(rgb, labels, train=False, seed=0)
    np.testing.assert_array_equal(corners_rgb, corners)
    np.testing.assert_array_equal(masks_rgb, masks)
    np.testing.assert_array_equal(out_rgb, np.repeat(out[..., None], 3, axis=-1))


def test_decoy_seeds():
    images, labels = _digits(n=200)
    a = decoy_mnist(images, labels, train=False, seed=1)
    b = decoy_mnist(images, labels, train=False, seed=1)
    c = decoy_mnist(images, labels, train=False, seed=2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2]) and not np.array_equal(a[0], c[0])


# --------------------------------------------------------------------------- insertion


def _patch(im, rng):
    return colour_patch(im, size=2, colour=255, rng=rng)


@pytest.mark.parametrize("p", [0.3, 0.5, 0.9])
def test_insertion_rate_only_in_target_class(p):
    rng = np.random.default_rng(9)
    labels = np.repeat(np.arange(4), [2000, 300, 300, 300])
    labels = rng.permutation(labels)
    images = rng.integers(0, 200, size=(labels.size, 6, 6)).astype(np.uint8)
    out, masks, inserted = insert_into_class(images, labels, target_class=0, p=p, artifact=_patch, seed=3)
    n0 = np.sum(labels == 0)
    assert abs(inserted.sum() - p * n0) < 5 * math.sqrt(n0 * p * (1 - p))
    assert not inserted[labels != 0].any()
    np.testing.assert_array_equal(out[~inserted], images[~inserted])
    assert not masks[~inserted].any()
    assert np.all(masks[inserted].sum(axis=(1, 2)) == 4)
    # the masks mark exactly the changed pixels (the 255 patch on values < 200)
    np.testing.assert_array_equal(out != images, masks)


def test_insertion_p_edges_determinism_and_seeds():
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 3, size=600)
    images = rng.integers(0, 200, size=(600, 8, 8)).astype(np.uint8)
    kw = dict(target_class=2, artifact="patch")
    assert not insert_into_class(images, labels, p=0.0, seed=0, **kw)[2].any()
    np.testing.assert_array_equal(insert_into_class(images, labels, p=1.0, seed=0, **kw)[2], labels == 2)
    a = insert_into_class(images, labels, p=0.5, seed=4, **kw)
    b = insert_into_class(images, labels, p=0.5, seed=4, **kw)
    c = insert_into_class(images, labels, p=0.5, seed=5, **kw)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])
    # the artifact test set draws the same artifact for every sample index
    all_x, all_m = insert_all(images, artifact="patch", seed=4)
    assert all_m.any(axis=(1, 2)).all()
    np.testing.assert_array_equal(all_x[a[2]], a[0][a[2]])
    np.testing.assert_array_equal(all_m[a[2]], a[1][a[2]])
    assert not np.array_equal(insert_all(images, artifact="patch", seed=5)[1], all_m)


@pytest.mark.parametrize("name", ARTIFACTS)
def test_named_artifacts_on_mnist_sized_images(name):
    images = np.random.default_rng(11).integers(0, 200, size=(5, 28, 28, 3)).astype(np.uint8)
    out, masks = insert_all(images, artifact=name, seed=0)
    assert out.shape == images.shape and out.dtype == np.uint8 and masks.shape == (5, 28, 28)
    assert masks.any(axis=(1, 2)).all()
    for i in range(5):
        assert not _changed(out[i], images[i])[~masks[i]].any()  # nothing changes outside the mask


def test_images_never_modified_in_place():
    images = np.random.default_rng(12).integers(0, 200, size=(20, 28, 28)).astype(np.uint8)
    labels = np.arange(20) % 2
    before = images.copy()
    insert_into_class(images, labels, target_class=1, p=1.0, artifact="stamp", seed=0)
    decoy_mnist(images, labels, train=True, seed=0)
    np.testing.assert_array_equal(images, before)


# --------------------------------------------------------------------------- bad input

IMG = np.zeros((28, 28), np.uint8)
BATCH = np.zeros((6, 28, 28), np.uint8)
LABELS = np.array([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: stamp(np.zeros(28, np.uint8), "1"), "image must be one image"),
        (lambda: stamp(BATCH[..., None], "1"), "image must be one image"),
        (lambda: stamp(IMG, "12a"), "outside the font"),
        (lambda: stamp(IMG, ""), "non-empty"),
        (lambda: stamp(IMG, "1", corner="centre"), "corner"),
        (lambda: stamp(IMG, "1234567", scale=2), "does not fit"),
        (lambda: stamp(IMG, "1", value=[255, 0, 0]), "grey"),
        (lambda: stamp(np.zeros((8, 8, 3), np.uint8), "1", value=[255, 0]), "expected 3"),
        (lambda: stamp(IMG, "1", value=300), r"\[0, 255\]"),
        (lambda: stamp(IMG, "1", value=0.5), "whole numbers"),
        (lambda: stamp(IMG.astype(bool), "1"), "dtype"),
        (lambda: stamp(IMG.astype(np.int8), "1"), "int8"),
        (lambda: stamp(IMG - 1.0, "1"), r"\[0, 255\]"),
        (lambda: stamp(IMG + np.nan, "1"), "finite"),
        (lambda: blend(IMG, weight=1.5), "weight"),
        (lambda: blend(IMG, weight=float("nan")), "weight"),
        (lambda: lsb_hide(IMG, "x" * 100), "bits"),
        (lambda: lsb_hide(IMG, ""), "empty"),
        (lambda: lsb_hide(IMG, [0, 2]), "0 or 1"),
        (lambda: lsb_hide(IMG, "x", channel=1), "channel"),
        (lambda: lsb_hide(IMG + 0.5, "x"), "whole numbers"),
        (lambda: lsb_read(IMG, 0), "n_bits"),
        (lambda: lsb_read(IMG, 28 * 28 + 1), "n_bits"),
        (lambda: colour_patch(IMG), "rng"),
        (lambda: colour_patch(IMG, location=(26, 0)), "outside"),
        (lambda: colour_patch(IMG, size=0, location=(0, 0)), "size"),
        (lambda: colour_patch(IMG, size=29, location=(0, 0)), "does not fit"),
        (lambda: decoy_mnist(BATCH, LABELS + 8, train=True, seed=0), "labels"),
        (lambda: decoy_mnist(BATCH, LABELS[:5], train=True, seed=0), "labels has 5"),
        (lambda: decoy_mnist(BATCH[0], LABELS, train=True, seed=0), "labels has 6|images must be a batch"),
        (lambda: decoy_mnist(BATCH, LABELS, train=1, seed=0), "train"),
        (lambda: decoy_mnist(BATCH, LABELS, train=True, seed=-1), "seed"),
        (lambda: decoy_mnist(BATCH, LABELS, train=True, seed=0, size=29), "does not fit"),
        (lambda: decoy_mnist(BATCH[:, :, :, None, None], LABELS, train=True, seed=0), "images must be a batch"),
        (lambda: insert_into_class(BATCH, LABELS, target_class=0, p=1.2, artifact="stamp", seed=0), "p must"),
        (lambda: insert_into_class(BATCH, LABELS, target_class=0, p=-0.1, artifact="stamp", seed=0), "p must"),
        (lambda: insert_into_class(BATCH, LABELS, target_class=0, p=True, artifact="stamp", seed=0), "p must"),
        (lambda: insert_into_class(BATCH, LABELS, target_class=3, p=0.5, artifact="stamp", seed=0), "target_class"),
        (lambda: insert_into_class(BATCH, LABELS, target_class=-1, p=0.5, artifact="stamp", seed=0), "target_class"),
        (
            lambda: insert_into_class(BATCH, LABELS, target_class=9, p=0.5, artifact="stamp", seed=0, num_classes=5),
            "target_class",
        ),
        (lambda: insert_into_class(BATCH, LABELS, target_class=0, p=0.5, artifact="glitter", seed=0), "artifact"),
        (lambda: insert_into_class(BATCH, LABELS.astype(float), target_class=0, p=0.5, artifact="stamp", seed=0), "integer"),
        (
            lambda: insert_all(BATCH, artifact=lambda im, rng: (im, np.ones((27, 28), bool)), seed=0),
            "mask of shape",
        ),
        (lambda: insert_all(BATCH, artifact=lambda im, rng: (im.astype(float), np.ones((28, 28), bool)), seed=0), "dtype"),
        (lambda: insert_all(BATCH, artifact=lambda im, rng: (im, np.full((28, 28), 2)), seed=0), "0/1"),
        (lambda: insert_all(BATCH, artifact=lambda im, rng: im, seed=0), "pair"),
        (lambda: insert_all(BATCH, artifact=3, seed=0), "callable"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
