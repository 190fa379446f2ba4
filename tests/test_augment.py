"""Augmentation inside the step: each image flipped / cropped on its own, its mask moved with it, drawn from the
step's key (a run repeats, and resumes to, the same numbers), nothing changed without it."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import runs
from jaxbias.runs import RunConfig
from jaxbias.training.augment import Augment, parse_augment
from jaxbias.types import Batch


def _batch(n=64, h=9, w=7):
    """Images whose channel 0 IS the mask (as 0/1): after augmenting, channel 0 must still equal the mask."""
    rng = np.random.default_rng(0)
    mask = rng.random((n, h, w)) < 0.3
    x = np.concatenate([mask[..., None].astype(np.float32), rng.random((n, h, w, 2), dtype=np.float32)], -1)
    return Batch(jnp.asarray(x), jnp.arange(n), jnp.arange(n) % 2, jnp.asarray(mask))


def test_flip_mirrors_each_image_or_leaves_it_and_moves_its_mask():
    b = _batch()
    out = jax.jit(Augment(flip=True))(jax.random.key(1), b)
    x, xo = np.asarray(b.x), np.asarray(out.x)
    mirrored = [np.array_equal(xo[i], x[i, :, ::-1]) for i in range(len(x))]
    kept = [np.array_equal(xo[i], x[i]) for i in range(len(x))]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 15 < sum(mirrored) < 49  # about half, per image
    np.testing.assert_array_equal(np.asarray(out.mask), xo[..., 0] > 0.5)
    np.testing.assert_array_equal(np.asarray(out.y), np.asarray(b.y))
    np.testing.assert_array_equal(np.asarray(out.bias), np.asarray(b.bias))


def test_crop_is_a_window_of_the_zero_padded_image_at_a_drawn_offset():
    p = 2
    b = _batch()
    out = jax.jit(Augment(crop=p))(jax.random.key(2), b)
    x, xo = np.asarray(b.x), np.asarray(out.x)
    h, w = x.shape[1:3]
    offsets = []
    for i in range(len(x)):
        padded = np.pad(x[i], ((p, p), (p, p), (0, 0)))
        found = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 if np.array_equal(padded[dy:dy + h, dx:dx + w], xo[i])]
        assert found, i  # a brute-force search finds the window
        offsets.append(found[0])
    assert len(set(offsets)) > 10  # drawn per image (25 possible)
    np.testing.assert_array_equal(np.asarray(out.mask), xo[..., 0] > 0.5)


def test_the_same_key_gives_the_same_batch_and_no_mask_is_fine():
    b = _batch()
    aug = Augment(flip=True, crop=1)
    a1, a2 = aug(jax.random.key(3), b), aug(jax.random.key(3), b)
    np.testing.assert_array_equal(np.asarray(a1.x), np.asarray(a2.x))
    assert not np.array_equal(np.asarray(aug(jax.random.key(4), b).x), np.asarray(a1.x))
    assert aug(jax.random.key(3), b._replace(mask=None)).mask is None


def test_text_form_and_refusals():
    assert parse_augment("flip,crop:4") == Augment(flip=True, crop=4)
    assert parse_augment(None) is None and parse_augment("") is None
    assert str(Augment(flip=True, crop=4)) == "flip,crop:4"
    with pytest.raises(ValueError, match="augment must be flip, crop:P .* got 'rotate'"):
        parse_augment("flip,rotate")
    with pytest.raises(ValueError, match="augment must be flip"):
        RunConfig(dataset="artifact_mnist", augment="crop:-1")
    with pytest.raises(ValueError, match=r"transforms images \(N, H, W, C\); the training inputs have shape \(10, 5\)"):
        Augment(flip=True).check((10, 5))


def _losses(workdir):
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_with_augment_repeats_and_resumes_to_its_numbers_and_differs_from_one_without(tmp_path):
    cfg = RunConfig(dataset="artifact_mnist", epochs=2, batch_size=250,
                    eval_every=2, model="mlp", model_settings={"hidden": (32,)}, augment="flip,crop:2")
    a = runs.train(cfg, workdir=tmp_path / "a", progress=False)
    assert a.record["augment"] == "flip,crop:2"
    runs.train(cfg.replace(epochs=1), workdir=tmp_path / "b", progress=False)
    b = runs.train(cfg, workdir=tmp_path / "b", resume=True, progress=False)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert a.results["eval"] == b.results["eval"]
    plain = runs.train(cfg.replace(augment=None), progress=False)
    assert plain.history[0]["loss"] != a.history[0]["loss"]
