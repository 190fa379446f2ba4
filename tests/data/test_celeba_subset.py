"""CelebA subset protocol on synthetic attribute arrays; record handling; a clean skip without the data."""
import numpy as np
import pytest

from jaxbias.data import celeba
from jaxbias.data.sources import DatasetUnavailableError


def _attrs(n=20000, seed=0):
    rng = np.random.default_rng(seed)
    male = rng.uniform(size=n) < 0.45
    blond = np.where(male, rng.uniform(size=n) < 0.03, rng.uniform(size=n) < 0.25)  # CelebA-like rates
    return male.astype(np.int32), blond  # bool confounder accepted too


def _groups(t, c, idx):
    return {(a, b): int(((t[idx] == a) & (c[idx] == b)).sum()) for a in (0, 1) for b in (0, 1)}


def test_published_subset_counts():
    t, c = _attrs()
    idx = celeba.select_subset(t, c, seed=0)
    assert idx.shape == (6000,) and np.unique(idx).shape == (6000,) and (np.diff(idx) > 0).all()
    assert _groups(t, c.astype(int), idx) == {(1, 1): 0, (1, 0): 3000, (0, 1): 2000, (0, 0): 1000}
    np.testing.assert_array_equal(idx, celeba.select_subset(t, c, seed=0))  # deterministic
    assert not np.array_equal(idx, celeba.select_subset(t, c, seed=1))
    other = celeba.select_subset(t, c, counts={(1, 1): 10, (1, 0): 10, (0, 1): 10, (0, 0): 10}, exclude=idx)
    assert not set(other) & set(idx)


def test_balanced_test_set_and_confounder_balanced_set():
    t, c = _attrs(seed=1)
    c = c.astype(np.int32)
    test = celeba.balanced_indices(t, c, per_group=100, seed=0)
    assert _groups(t, c, test) == {g: 100 for g in [(0, 0), (0, 1), (1, 0), (1, 1)]}
    smallest = min(_groups(t, c, np.arange(t.shape[0])).values())
    assert celeba.balanced_indices(t, c).shape == (4 * smallest,)
    attr = celeba.confounder_balanced(c, size=501, seed=0, exclude=test)
    assert attr.shape == (501,) and c[attr].sum() == 250 and not set(attr) & set(test)


@pytest.mark.parametrize("call,match", [
    (lambda t, c: celeba.select_subset(t, c, counts={(1, 1): 10 ** 6, (1, 0): 0, (0, 1): 0, (0, 0): 0}),
     r"group \(target=1, confounder=1\) has \d+ candidate images, fewer than the 1000000"),
    (lambda t, c: celeba.select_subset(t, c, counts={(1, 1): 1}), "four"),
    (lambda t, c: celeba.select_subset(t, c[:10]), "confounder has 10 entries"),
    (lambda t, c: celeba.select_subset(t * 2, c), "target must be binary"),
    (lambda t, c: celeba.balanced_indices(t, c, per_group=10 ** 6), "smallest"),
])
def test_subset_bad_input(call, match):
    t, c = _attrs(2000)
    with pytest.raises(ValueError, match=match):
        call(t, c)


def test_records_to_arrays():
    rng = np.random.default_rng(0)
    recs = [{"image": rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8),
             "attributes": {"Male": bool(i % 2), "Blond_Hair": i == 2, "Smiling": True}} for i in range(3)]
    a = celeba.attributes_of(recs, ["Male", "Blond_Hair"])
    assert a["Male"].tolist() == [0, 1, 0] and a["Blond_Hair"].tolist() == [0, 0, 1]
    x = celeba.preprocess(np.stack([r["image"] for r in recs]), 64)
    assert x.shape == (3, 64, 64, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    # centre crop 178×178 from rows 20..197: a uniform image stays uniform
    flat = np.full((1, 218, 178, 3), 200, np.uint8)
    np.testing.assert_allclose(celeba.preprocess(flat, 32), 200 / 255, atol=1e-5)


def test_load_celeba_without_the_data_is_a_clean_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DatasetUnavailableError, match="celeb_a"):
        celeba.load_celeba("Blond_Hair", data_dir=str(tmp_path), download=False)
    with pytest.raises(ValueError, match="confounder must be one of"):
        celeba.load_celeba("Bald", data_dir=str(tmp_path))
