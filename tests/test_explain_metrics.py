"""Explanation metrics (SPEC §7): R_bias, relevance-mass accuracy, RR-ClArC mask post-processing,
and the heatmap figures of ``jaxbias.report``."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import metrics, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _loop_r_bias(rel, mask):
    """R_bias = Σ_j |R_j M_j| / Σ_j |R_j| by explicit loops over samples, pixels and channels."""
    rel = np.asarray(rel, dtype=np.float64)
    if rel.ndim == 3:
        rel = rel[..., None]
    b, h, w, c = rel.shape
    out = np.zeros(b)
    for i in range(b):
        m = mask if np.ndim(mask) == 2 else mask[i]
        num = den = 0.0
        for y in range(h):
            for x in range(w):
                for k in range(c):
                    num += abs(rel[i, y, x, k] * float(m[y, x]))
                    den += abs(rel[i, y, x, k])
        out[i] = num / den if den > 0 else 0.0
    return out


def _loop_rma(rel, mask):
    rel = np.asarray(rel, dtype=np.float64)
    if rel.ndim == 3:
        rel = rel[..., None]
    b, h, w, c = rel.shape
    out = np.zeros(b)
    for i in range(b):
        m = mask if np.ndim(mask) == 2 else mask[i]
        num = den = 0.0
        for y in range(h):
            for x in range(w):
                for k in range(c):
                    pos = max(rel[i, y, x, k], 0.0)
                    num += pos * float(m[y, x])
                    den += pos
        out[i] = num / den if den > 0 else 0.0
    return out


def _cases():
    rng = np.random.default_rng(0)
    b, h, w = 4, 6, 5
    for channels in (None, 3):
        shape = (b, h, w) if channels is None else (b, h, w, channels)
        rel = rng.normal(size=shape)  # mixed signs
        yield "hard-per-sample", rel, rng.uniform(size=(b, h, w)) < 0.3
        yield "hard-shared", rel, rng.uniform(size=(h, w)) < 0.4
        yield "soft-per-sample", rel, rng.uniform(size=(b, h, w))
        yield "soft-shared", rel, rng.uniform(size=(h, w)).astype(np.float32)


@pytest.mark.parametrize("name,rel,mask", list(_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_r_bias_against_loop(name, rel, mask):
    got = metrics.r_bias(rel, mask)
    assert got.dtype == np.float64 and got.shape == (rel.shape[0],)
    np.testing.assert_allclose(got, _loop_r_bias(rel, mask), rtol=1e-12, atol=1e-12)
    assert np.all((got >= 0) & (got <= 1))
    # not trivially 0 or 1: the test can tell a wrong formula from a right one
    assert np.all((got > 0.01) & (got < 0.99))


@pytest.mark.parametrize("name,rel,mask", list(_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_r_bias_jax_jitted_matches_numpy(name, rel, mask):
    got = jax.jit(metrics.r_bias_jax)(jnp.asarray(rel, jnp.float32), jnp.asarray(mask))
    assert got.shape == (rel.shape[0],)
    np.testing.assert_allclose(np.asarray(got), metrics.r_bias(rel, mask), rtol=1e-5, atol=1e-6)
    # also eager, and the NumPy version accepts JAX arrays
    np.testing.assert_allclose(np.asarray(metrics.r_bias_jax(rel, mask)), metrics.r_bias(rel, mask), rtol=1e-5)
    np.testing.assert_allclose(metrics.r_bias(jnp.asarray(rel), jnp.asarray(mask)), metrics.r_bias(rel, mask),
                               rtol=1e-6)


def test_r_bias_edge_cases():
    rng = np.random.default_rng(1)
    rel = rng.normal(size=(3, 4, 4, 2))
    rel[1] = 0.0  # all-zero relevance -> 0 by convention, never NaN
    ones, zeros = np.ones((4, 4), bool), np.zeros((3, 4, 4))
    np.testing.assert_array_equal(metrics.r_bias(rel, ones), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(metrics.r_bias(rel, zeros), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(jax.jit(metrics.r_bias_jax)(rel, ones)), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(jax.jit(metrics.r_bias_jax)(rel, zeros)), [0.0, 0.0, 0.0])
    # signs do not cancel: |R| per element, per channel
    r = np.zeros((1, 1, 2, 2))
    r[0, 0, 0] = [1.0, -1.0]
    r[0, 0, 1] = [2.0, 0.0]
    assert metrics.r_bias(r, np.array([[1, 0]]))[0] == pytest.approx(0.5)


def test_r_bias_jax_zero_relevance_has_finite_gradient():
    g = jax.grad(lambda r: metrics.r_bias_jax(r, jnp.ones((2, 2))).sum())(jnp.zeros((1, 2, 2)))
    assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("name,rel,mask", list(_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_relevance_mass_accuracy_against_loop(name, rel, mask):
    got = metrics.relevance_mass_accuracy(rel, mask)
    assert got.dtype == np.float64 and got.shape == (rel.shape[0],)
    np.testing.assert_allclose(got, _loop_rma(rel, mask), rtol=1e-12, atol=1e-12)
    assert not np.allclose(got, metrics.r_bias(rel, mask))  # negative relevance is ignored, unlike R_bias


def test_relevance_mass_accuracy_edge_cases():
    rel = np.array([[[-1.0, -2.0]], [[0.0, 0.0]], [[3.0, -5.0]]])  # (3, 1, 2)
    mask = np.array([[1, 0]])
    np.testing.assert_array_equal(metrics.relevance_mass_accuracy(rel, mask), [0.0, 0.0, 1.0])


# --- gaussian_blur / postprocess_mask -----------------------------------------------------------------

def _separable_blur(x, sigma, kernel_size=None, padding="reflect"):
    """torchvision's GaussianBlur by hand: kernel exp(-t²/2σ²) on linspace(-r, r, 2r + 1), normalised,
    correlated along H then W over a reflect-padded (edge not repeated) or zero-padded image."""
    r = (kernel_size // 2) if kernel_size is not None else int(2.5 * sigma + 0.5)
    k = np.exp(-0.5 * (np.linspace(-r, r, 2 * r + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.asarray(x, np.float64)
    for axis in (-2, -1):
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect" if padding == "reflect" else "constant")
        out = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return out


@pytest.mark.parametrize("padding", ["reflect", "zeros"])
@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.0, 3.7])
def test_gaussian_blur_is_torchvisions_kernel(sigma, padding):
    x = np.random.default_rng(2).uniform(size=(11, 13))
    got = metrics.gaussian_blur(x, sigma, padding=padding)
    np.testing.assert_allclose(got, _separable_blur(x, sigma, padding=padding), atol=1e-12, rtol=0)
    xb = np.random.default_rng(3).uniform(size=(3, 11, 13))  # the batch axis is not blurred
    np.testing.assert_allclose(metrics.gaussian_blur(xb, sigma, padding=padding),
                               _separable_blur(xb, sigma, padding=padding), atol=1e-12, rtol=0)
    # an explicit kernel size
    np.testing.assert_allclose(metrics.gaussian_blur(x, sigma, kernel_size=5, padding=padding),
                               _separable_blur(x, sigma, 5, padding), atol=1e-12, rtol=0)
    # reflect padding keeps the mass of any image (the kernel sums to 1 and the image is mirrored)
    if padding == "reflect":
        assert got.mean() == pytest.approx(x.mean(), rel=0.05)
    point = np.zeros((101, 101))
    point[50, 50] = 1.0
    assert metrics.gaussian_blur(point, sigma, padding=padding).sum() == pytest.approx(1.0, abs=1e-12)


def test_release_blur_is_41_taps_sigma_8_reflect():
    """The default kernel at σ = 8 is torchvision's GaussianBlur(41, 8); a corner box (where the ImageNet
    timestamp sits) shows the difference from the zero-padded, 4σ-truncated blur used before."""
    assert metrics.blur_kernel_size(8.0) == 41
    box = np.zeros((224, 224))
    box[196:220, 150:222] = 1.0  # the lower-right corner, 2 px from the edges
    got = metrics.gaussian_blur(box, 8.0)
    np.testing.assert_allclose(got, _separable_blur(box, 8.0, 41), atol=1e-12, rtol=0)
    old = metrics.gaussian_blur(box, 8.0, kernel_size=65, padding="zeros")
    assert np.abs(got - old).max() > 0.1  # reflect padding keeps the corner's mass in
    # after the release's thresholds the two masks differ on several percent of the mask's pixels
    new_mask = metrics.postprocess_mask(box)
    old_mask = metrics.postprocess_mask(box, kernel_size=65, padding="zeros")
    assert np.sum(new_mask != old_mask) > 0.02 * new_mask.sum()
    ref = _separable_blur(box, 8.0, 41)
    np.testing.assert_array_equal(new_mask, ref >= 0.3 * ref.max())


def _reference_postprocess(m, low, sigma, high):
    """The three RR-ClArC steps for one (H, W) mask, blurred by hand; returns (result, blurred, threshold)."""
    if m.max() == 0:
        return np.zeros(m.shape, bool), None, None
    m1 = (m >= low * m.max()).astype(np.float64)
    bl = _separable_blur(m1, sigma)
    return bl >= high * bl.max(), bl, high * bl.max()


@pytest.mark.parametrize("low,sigma,high", [(0.1, 2.0, 0.3), (0.5, 1.0, 0.6), (1.0, 0.7, 1.0), (0.05, 3.0, 0.1)])
def test_postprocess_mask_matches_reference(low, sigma, high):
    rng = np.random.default_rng(4)
    masks = rng.uniform(size=(4, 16, 16)) ** 4
    masks[2] = 0.0  # all-zero sample stays empty
    got = metrics.postprocess_mask(masks, low=low, sigma=sigma, high=high)
    assert got.dtype == bool and got.shape == masks.shape
    for i in range(masks.shape[0]):
        ref, bl, thr = _reference_postprocess(masks[i], low, sigma, high)
        diff = got[i] != ref
        if bl is not None:  # disagreements only allowed within rounding of the threshold
            assert np.all(np.abs(bl[diff] - thr) < 1e-9)
        else:
            assert not diff.any()
    assert not got[2].any()
    # a single (H, W) mask gives the same as its sample in a batch
    np.testing.assert_array_equal(metrics.postprocess_mask(masks[0], low=low, sigma=sigma, high=high), got[0])


def test_postprocess_single_pixel_grows_into_blob():
    m = np.zeros((21, 21))
    m[10, 10] = 1.0
    out = metrics.postprocess_mask(m, sigma=2.0)  # low=0.1, high=0.3
    assert out[10, 10] and out.sum() > 1
    ys, xs = np.nonzero(out)
    d2 = (ys - 10) ** 2 + (xs - 10) ** 2
    # the blob is the disc where exp(-d²/(2σ²)) >= 0.3, i.e. d² <= -8 ln 0.3 ≈ 9.63
    assert d2.max() <= 9
    np.testing.assert_array_equal(out, ((np.arange(21)[:, None] - 10) ** 2 + (np.arange(21) - 10) ** 2) <= 9)


def test_postprocess_removes_below_threshold_noise():
    rng = np.random.default_rng(5)
    m = rng.uniform(0, 0.05, size=(24, 24))  # noise below 0.1 · max
    m[4:8, 4:8] = 1.0  # the artifact
    out = metrics.postprocess_mask(m, sigma=1.0)
    assert out[4:8, 4:8].all()
    far = np.ones_like(out)
    far[:12, :12] = False
    assert not out[far].any()
    # scale-free: multiplying the mask does not change the result; bool masks work
    np.testing.assert_array_equal(metrics.postprocess_mask(m * 7.0, sigma=1.0), out)
    np.testing.assert_array_equal(metrics.postprocess_mask(m >= 0.1, sigma=1.0), out)


# --- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "rel,mask,match",
    [
        (np.ones((2, 4, 4)), np.ones((3, 4, 4)), "mask"),  # batch mismatch
        (np.ones((2, 4, 4)), np.ones((2, 4, 5)), "mask"),  # W mismatch
        (np.ones((2, 4, 4, 3)), np.ones((4, 5)), "mask"),  # shared mask of the wrong size
        (np.ones((2, 4, 4, 3)), np.ones((2, 4, 4, 3)), "mask"),  # per-channel mask: not broadcast
        (np.ones((2, 4, 4, 3)), np.ones((1, 4, 4)), "mask"),  # no silent broadcast over the batch
        (np.ones((4, 4)), np.ones((4, 4)), "relevance"),  # wrong ndim
        (np.ones((2, 4, 4, 3, 1)), np.ones((4, 4)), "relevance"),
        (np.ones((0, 4, 4)), np.ones((4, 4)), "relevance"),  # empty
        (np.ones((2, 4, 4)), np.full((4, 4), 1.5), r"mask.*\[0, 1\]"),  # mask outside [0, 1]
        (np.ones((2, 4, 4)), np.full((4, 4), -0.1), r"mask.*\[0, 1\]"),
        (np.ones((2, 4, 4)), np.full((4, 4), np.nan), "mask.*NaN"),
        (np.full((2, 4, 4), np.inf), np.ones((4, 4)), "relevance.*NaN or inf"),
        (np.ones((2, 4, 4), bool), np.ones((4, 4)), "relevance.*dtype"),
        (np.ones((2, 4, 4)), np.array([["a"] * 4] * 4), "mask.*dtype"),
    ],
)
def test_explain_metrics_reject_bad_input(rel, mask, match):
    for fn in (metrics.r_bias, metrics.relevance_mass_accuracy, metrics.r_bias_jax):
        with pytest.raises(ValueError, match=match):
            fn(rel, mask)


def test_r_bias_jax_checks_shapes_at_trace_time():
    with pytest.raises(ValueError, match="mask"):
        jax.jit(metrics.r_bias_jax)(jnp.ones((2, 4, 4)), jnp.ones((3, 4, 4)))


@pytest.mark.parametrize(
    "mask,kwargs,match",
    [
        (np.ones((4, 4)), {"sigma": 0.0}, "sigma"),
        (np.ones((4, 4)), {"sigma": -1.0}, "sigma"),
        (np.ones((4, 4)), {"sigma": float("nan")}, "sigma"),
        (np.ones((4, 4)), {"low": 0.0}, "low"),
        (np.ones((4, 4)), {"low": 1.5}, "low"),
        (np.ones((4, 4)), {"high": 0.0}, "high"),
        (np.ones((4, 4)), {"high": 1.01}, "high"),
        (np.ones((4, 4)), {"high": True}, "high"),
        (np.ones(4), {}, "mask"),
        (np.ones((2, 2, 4, 4)), {}, "mask"),
        (np.ones((0, 4)), {}, "mask"),
        (-np.ones((4, 4)), {}, "mask.*non-negative"),
        (np.full((4, 4), np.nan), {}, "mask.*NaN"),
    ],
)
def test_postprocess_mask_rejects_bad_input(mask, kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.postprocess_mask(mask, **kwargs)


def test_gaussian_blur_rejects_bad_input():
    with pytest.raises(ValueError, match="sigma"):
        metrics.gaussian_blur(np.ones((3, 3)), 0)
    with pytest.raises(ValueError, match="x"):
        metrics.gaussian_blur(np.ones(3), 1.0)
    with pytest.raises(ValueError, match="kernel_size must be an odd positive int; got 4"):
        metrics.gaussian_blur(np.ones((3, 3)), 1.0, kernel_size=4)
    with pytest.raises(ValueError, match="padding must be one of"):
        metrics.gaussian_blur(np.ones((3, 3)), 1.0, padding="edge")


# --- figures ----------------------------------------------------------------------------------------

def _fig_inputs(n=3, h=8, w=10, rgb=True):
    rng = np.random.default_rng(6)
    img = rng.uniform(size=(n, h, w, 3) if rgb else (n, h, w))
    rel = rng.normal(size=(n, h, w, 3))
    return img, rel


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


@pytest.mark.parametrize("rgb", [True, False])
def test_heatmap_overlay_writes_png(tmp_path, rgb):
    img, rel = _fig_inputs(rgb=rgb)
    rel[1] = 0.0  # an all-zero map is drawn, not an error
    out = report.heatmap_overlay(img, rel, tmp_path / "overlay.png", titles=["a", "b", "c"], cols=2, alpha=0.5)
    assert out == str(tmp_path / "overlay.png") and _is_png(out)
    out2 = report.heatmap_overlay(jnp.asarray(img), rel[..., 0], str(tmp_path / "o2.png"))
    assert _is_png(out2)


def test_heatmaps_before_after_writes_png(tmp_path):
    img, rel = _fig_inputs()
    out = report.heatmaps_before_after(img, rel, 0.1 * rel[..., 0], tmp_path / "ba.png",
                                       labels=("vanilla", "RR-ClArC"), titles=["x", "y", "z"])
    assert out == str(tmp_path / "ba.png") and _is_png(out)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"images": np.ones((2, 8, 10, 3))}, "relevances.*N = 2"),  # N mismatch
        ({"relevances": np.ones((3, 8, 9))}, "relevances.*H, W"),  # W mismatch
        ({"images": np.ones((3, 8, 10, 4))}, "images"),  # not RGB
        ({"images": np.full((3, 8, 10), 2.0)}, r"images.*\[0, 1\]"),
        ({"relevances": np.ones((3, 8))}, "relevances"),
        ({"relevances": np.full((3, 8, 10), np.nan)}, "relevances.*NaN"),
        ({"titles": ["a"]}, "titles"),
        ({"titles": "abc"}, "titles"),
        ({"cols": 0}, "cols"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
def test_heatmap_overlay_rejects_bad_input(tmp_path, kwargs, match):
    img, rel = _fig_inputs()
    args = {"images": img, "relevances": rel, "path": tmp_path / "x.png", **kwargs}
    with pytest.raises(ValueError, match=match):
        report.heatmap_overlay(**args)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"before": np.ones((2, 8, 10))}, "before.*N = 3"),
        ({"after": np.ones((3, 7, 10))}, "after.*H, W"),
        ({"labels": ("only one",)}, "labels"),
        ({"labels": "ab"}, "labels"),
        ({"titles": ["a", "b"]}, "titles"),
    ],
)
def test_heatmaps_before_after_rejects_bad_input(tmp_path, kwargs, match):
    img, rel = _fig_inputs()
    args = {"images": img, "before": rel, "after": rel, "path": tmp_path / "x.png", **kwargs}
    with pytest.raises(ValueError, match=match):
        report.heatmaps_before_after(**args)
    assert not (tmp_path / "x.png").exists()
