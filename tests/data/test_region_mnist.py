"""The controlled confounder dataset: published proportions, balanced test set, known region."""
import numpy as np
import pytest

from jaxbias.data.celeba import PUBLISHED_COUNTS
from jaxbias.data.region_mnist import region_mnist, scaled_counts


@pytest.fixture(scope="module")
def hair():
    return region_mnist(seed=0, style="hair")


def _groups(y, c):
    return {f"t{t}_c{k}": int(((y == t) & (c == k)).sum()) for t in (0, 1) for k in (0, 1)}


def test_training_set_has_the_published_proportions(hair):
    assert hair.counts == {"t0_c0": 667, "t0_c1": 1333, "t1_c0": 2000, "t1_c1": 0}
    assert _groups(hair.train_y, hair.train_c) == hair.counts
    np.testing.assert_array_equal(hair.train_y, (hair.train_digit < 5).astype(np.int32))  # target = digit < 5
    assert hair.train_x.shape == (4000, 64, 64, 3) and hair.train_x.dtype == np.float32
    assert 0 <= hair.train_x.min() and hair.train_x.max() <= 1


def test_test_set_is_balanced_and_region_classifier_set_is_independent(hair):
    assert _groups(hair.test_y, hair.test_c) == {k: 250 for k in ("t0_c0", "t0_c1", "t1_c0", "t1_c1")}
    assert hair.attr_x.shape[0] == 4000 and abs(hair.attr_c.mean() - 0.5) < 0.03
    # in the region classifier's set the confounder does not predict the target
    p1 = hair.attr_c[hair.attr_y == 1].mean()
    p0 = hair.attr_c[hair.attr_y == 0].mean()
    assert abs(p1 - p0) < 0.05


def test_the_confounder_lives_only_in_the_band(hair):
    band = hair.region
    assert band.shape == (64, 64) and band[:12].all() and not band[12:].any()
    x, c = hair.test_x, hair.test_c
    red = x[..., 0]
    assert red[c == 1][:, band].mean() > red[c == 0][:, band].mean() + 0.3  # blond vs dark
    assert x[:, ~band].reshape(x.shape[0], -1).max(1).min() > 0.5  # every image has its digit below
    np.testing.assert_array_equal(hair.test_mark[0], band)
    # outside the band the two confounder values are indistinguishable: same digits, same placement
    assert abs(x[c == 1][:, ~band].mean() - x[c == 0][:, ~band].mean()) < 0.01


def test_mark_style_draws_squares_inside_the_band():
    d = region_mnist(seed=1, style="mark")
    marks = d.test_mark
    assert not marks[d.test_c == 0].any()
    assert (marks[d.test_c == 1].reshape(-1, 64 * 64).sum(1) == 10 * 10).all()
    assert not marks[:, 12:].any()
    assert _groups(d.train_y, d.train_c) == d.counts


def test_scaled_counts_and_bad_arguments():
    assert scaled_counts(PUBLISHED_COUNTS, {0: 2000, 1: 2000}) == {(0, 0): 667, (0, 1): 1333, (1, 0): 2000,
                                                                      (1, 1): 0}
    assert scaled_counts(PUBLISHED_COUNTS, {0: 6000, 1: 3000}) == {(0, 0): 1000, (0, 1): 2000, (1, 0): 3000,
                                                                      (1, 1): 0}
    with pytest.raises(ValueError, match="image_size must be an int ≥ 48"):
        region_mnist(image_size=32)
    with pytest.raises(ValueError, match="style must be one of"):
        region_mnist(style="hat")
    with pytest.raises(ValueError, match="band must be an int"):
        region_mnist(band=40)
