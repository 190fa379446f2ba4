"""Patch grid, pixel maps, confidences and the one-compiled-call map function (SPEC §6)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import attribution as A


def loop_pixel_map(conf, locations, k, hw):
    """The paper's algorithm, literally: a Python loop over windows."""
    h, w = hw
    conf = np.asarray(conf, np.float64)
    total = np.zeros(conf.shape[:-1] + (h, w))
    count = np.zeros((h, w))
    for i, (x, y) in enumerate(np.asarray(locations)):
        total[..., y : y + k, x : x + k] += conf[..., i, None, None]
        count[y : y + k, x : x + k] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), 0.0)


@pytest.mark.parametrize("size,patch,stride", [(128, 32, 2), (64, 16, 4), (10, 4, 3), (7, 7, 1), ((12, 9), 3, 3),
                                               (20, 5, 5), (9, 1, 1)])
def test_pixel_map_equals_the_loop_over_windows(size, patch, stride):
    hw = A.image_hw(size)
    loc = A.grid_locations(size, patch=patch, stride=stride)
    rng = np.random.default_rng(0)
    conf = rng.uniform(size=(3, loc.shape[0])).astype(np.float32)
    got = np.asarray(A.pixel_map(conf, loc, patch=patch, image_size=size))
    np.testing.assert_allclose(got, loop_pixel_map(conf, loc, patch, hw), rtol=1e-5, atol=1e-6)
    # unbatched, and normalised
    one = np.asarray(A.pixel_map(conf[1], loc, patch=patch, image_size=size, normalize=True))
    ref = loop_pixel_map(conf[1], loc, patch, hw)
    span = ref.max() - ref.min()
    ref = (ref - ref.min()) / span if span > 0 else np.zeros_like(ref)  # one window: a constant map
    np.testing.assert_allclose(one, ref, rtol=1e-5, atol=1e-5)


def test_pixel_map_arbitrary_locations_and_uncovered_pixels():
    loc = np.array([[0, 0], [3, 1], [3, 1], [5, 6]], np.int32)  # repeated and scattered windows
    conf = np.array([0.2, 1.0, 0.4, 0.9], np.float32)
    got = np.asarray(A.pixel_map(conf, loc, patch=3, image_size=(9, 8)))
    ref = loop_pixel_map(conf, loc, 3, (9, 8))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    assert got[8, 0] == 0.0 and np.isfinite(got).all()  # a pixel no window covers: 0, not NaN
    assert got[2, 4] == pytest.approx(0.7)  # mean of the two windows at (3, 1)


def test_pixel_map_is_jittable_with_traced_confidences_and_locations():
    loc = A.grid_locations(16, patch=8, stride=4)
    conf = jnp.asarray(np.random.default_rng(1).uniform(size=(2, loc.shape[0])), jnp.float32)
    f = jax.jit(lambda c, l: A.pixel_map(c, l, patch=8, image_size=16))
    np.testing.assert_allclose(np.asarray(f(conf, jnp.asarray(loc))), loop_pixel_map(conf, loc, 8, (16, 16)),
                               rtol=1e-5, atol=1e-6)


def test_grid_follows_the_spec_formula():
    loc = A.grid_locations(128, patch=32, stride=2)
    assert loc.shape == (2401, 2) and A.grid_shape(128, patch=32, stride=2) == (49, 49)
    i = np.arange(2401)
    np.testing.assert_array_equal(loc[:, 0], (i % 49) * 2)
    np.testing.assert_array_equal(loc[:, 1], (i // 49) * 2)
    assert loc.max() == 128 - 32


def test_extract_patches_matches_slicing():
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(2, 12, 10, 3)).astype(np.float32)
    loc = A.grid_locations((12, 10), patch=4, stride=2)
    got = np.asarray(A.extract_patches(x, loc, patch=4))
    assert got.shape == (2, loc.shape[0], 4, 4, 3)
    for i, (cx, cy) in enumerate(loc):
        np.testing.assert_array_equal(got[:, i], x[:, cy : cy + 4, cx : cx + 4])


def test_all_2401_patches_of_a_128_image_from_one_compiled_call():
    net = A.small(num_positions=2401, widths=(4,), blocks=(1,))
    variables = A.init_variables(net, jax.random.key(0), patch=32, channels=3)
    traces, sizes = [], []

    def logits_fn(v, patches, positions):
        traces.append(1)  # runs only while tracing
        sizes.append(patches.shape[0])
        return net.apply(v, patches, positions=positions, train=False)[0]

    maps = A.make_map_fn(logits_fn, image_size=128, patch=32, stride=2, chunk=1024)
    x = jnp.asarray(np.random.default_rng(3).uniform(size=(1, 128, 128, 3)), jnp.float32)
    compiled = maps.lower(variables, x).compile()  # one executable for all 2401 patches
    assert len(traces) == 1 and sizes == [1024]  # the classifier is traced once, inside lax.map
    out = np.asarray(compiled(variables, x))
    assert out.shape == (1, 128, 128) and out.min() == 0.0 and out.max() == pytest.approx(1.0)
    # the same map, computed piecewise outside the compiled function
    loc = A.grid_locations(128, patch=32, stride=2)
    patches = A.extract_patches(x, loc, patch=32)[0]
    conf = A.confidence(net.apply(variables, patches, positions=jnp.arange(2401), train=False)[0], "top")
    ref = A.minmax(loop_pixel_map(np.asarray(conf), loc, 32, (128, 128)))
    np.testing.assert_allclose(out[0], np.asarray(ref), rtol=1e-4, atol=2e-4)
    # a second batch of the same shape reuses the compiled function
    maps(variables, x)
    maps(variables, x + 1.0)
    assert len(traces) == 1  # the trace of .lower serves the jitted calls: no retrace, no second compilation


def test_patch_logits_chunks_agree_with_one_call():
    f = lambda v, x, i: jnp.stack([x.mean((1, 2, 3)), x.std((1, 2, 3)) + 0.01 * i], -1)  # noqa: E731
    x = jnp.asarray(np.random.default_rng(4).uniform(size=(3, 16, 16, 2)), jnp.float32)
    loc = A.grid_locations(16, patch=8, stride=2)
    whole = A.patch_logits(f, None, x, loc, patch=8, chunk=10_000)
    chunked = A.patch_logits(f, None, x, loc, patch=8, chunk=7)  # 3·25 = 75 patches, the last chunk padded
    np.testing.assert_allclose(np.asarray(whole), np.asarray(chunked), rtol=1e-6)
    assert whole.shape == (3, 25, 2)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_confidence_measures_against_numpy(k):
    rng = np.random.default_rng(k)
    logits = rng.normal(scale=3.0, size=(200, k)).astype(np.float32)
    s = np.exp(logits - logits.max(1, keepdims=True))
    s /= s.sum(1, keepdims=True)
    srt = np.sort(s, axis=1)
    ref = {
        "top": (s.max(1) - 1 / k) / (1 - 1 / k),
        "margin": srt[:, -1] - srt[:, -2],
        "entropy": 1 + (s * np.log(s)).sum(1) / np.log(k),
    }
    for m in A.MEASURES:
        got = np.asarray(A.confidence(logits, m))
        np.testing.assert_allclose(got, ref[m], rtol=1e-4, atol=1e-5)
        assert got.min() >= 0.0 and got.max() <= 1.0
        assert float(A.confidence(np.zeros(k, np.float32), m)) == pytest.approx(0.0, abs=1e-6)  # uniform
        assert float(A.confidence(np.array([40.0] + [0.0] * (k - 1), np.float32), m)) == pytest.approx(1.0, abs=1e-5)


def test_general_map_top_region_and_iou():
    rng = np.random.default_rng(5)
    maps = rng.uniform(size=(4, 10, 10)).astype(np.float32)
    g = np.asarray(A.general_map(maps))
    mean = maps.mean(0)
    np.testing.assert_allclose(g, (mean - mean.min()) / (mean.max() - mean.min()), rtol=1e-5, atol=1e-6)
    top = np.asarray(A.top_region(g, 0.7))
    assert top.sum() == 30  # distinct values: exactly the top 30 %
    assert g[top].min() > g[~top].max()
    per = np.asarray(A.top_region(maps, 0.9))
    assert per.shape == maps.shape and (per.reshape(4, -1).sum(1) == 10).all()
    assert A.iou(top, top) == 1.0 and A.iou(top, ~top) == 0.0
    assert A.iou(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


@pytest.mark.parametrize("call,match", [
    (lambda: A.grid_locations(16, patch=20, stride=2), "patch=20 is larger than the image"),
    (lambda: A.grid_locations(128, patch=32, stride=5), r"stride=5 does not tile the image: \(height 128 − patch 32\)"),
    (lambda: A.grid_locations(16, patch=4, stride=6), "stride=6 is larger than patch=4"),
    (lambda: A.grid_locations(16, patch=0, stride=1), "patch must be an int"),
    (lambda: A.grid_locations((16, 8, 3), patch=4, stride=2), "image_size must be an int or a"),
    (lambda: A.pixel_map(np.ones(4), A.grid_locations(8, patch=4, stride=2), patch=4, image_size=8),
     r"confidences must have shape \(\.\.\., p\) with p = 9"),
    (lambda: A.pixel_map(np.ones(1), np.array([[5, 0]]), patch=4, image_size=8), r"locations\[0\]"),
    (lambda: A.pixel_map(np.ones(1), np.array([[0.5, 0]]), patch=4, image_size=8), "integer pixel coordinates"),
    (lambda: A.pixel_map(np.ones(1), np.array([[0, 0]]), patch=9, image_size=8), "patch=9 is larger"),
    (lambda: A.top_region(np.ones((4, 4)), 1.5), r"q must be a quantile in \[0, 1\]"),
    (lambda: A.top_region(np.ones((4, 4)), -0.1), r"q must be a quantile in \[0, 1\]"),
    (lambda: A.confidence(np.ones((3, 2)), "max"), "measure must be one of"),
    (lambda: A.confidence(np.ones((3, 1)), "top"), "K ≥ 2"),
    (lambda: A.make_map_fn(lambda v, x, i: x, image_size=64, patch=16, stride=5), "stride=5 does not tile"),
    (lambda: A.extract_patches(np.ones((8, 8, 3)), np.array([[0, 0]]), patch=4), r"images must be \(B, H, W, C\)"),
])
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_map_fn_rejects_images_of_another_size():
    maps = A.make_map_fn(lambda v, x, i: x.mean((1, 2)), image_size=16, patch=8, stride=4)
    with pytest.raises(ValueError, match="images are 12×12 but image_size is 16×16"):
        maps(None, jnp.ones((1, 12, 12, 2)))


def test_grid_and_general_paths_agree():
    loc = A.grid_locations(32, patch=8, stride=4)
    conf = np.random.default_rng(6).uniform(size=(2, loc.shape[0])).astype(np.float32)
    perm = np.random.default_rng(7).permutation(loc.shape[0])  # not row-major: the general contraction
    grid = np.asarray(A.pixel_map(conf, loc, patch=8, image_size=32))
    general = np.asarray(A.pixel_map(conf[:, perm], loc[perm], patch=8, image_size=32))
    np.testing.assert_allclose(grid, general, rtol=1e-6, atol=1e-7)
