"""Minibatch index iterators."""
import jax
import numpy as np
import pytest

from jaxbias.data import batch_indices, iterate, num_batches
from jaxbias.types import Batch


@pytest.mark.parametrize("n, bs", [(1, 1), (10, 3), (12, 4), (257, 32), (5, 100)])
def test_epoch_covers_every_index_once(n, bs):
    batches = batch_indices(n, bs, key=jax.random.key(0))
    assert len(batches) == num_batches(n, bs) == -(-n // bs)
    assert all(b.dtype == np.int32 for b in batches)
    assert all(len(b) == bs for b in batches[:-1]) and 1 <= len(batches[-1]) <= bs
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(n))


def test_drop_last():
    batches = batch_indices(10, 3, key=jax.random.key(1), drop_last=True)
    assert len(batches) == num_batches(10, 3, drop_last=True) == 3
    assert all(len(b) == 3 for b in batches)
    flat = np.concatenate(batches)
    assert len(np.unique(flat)) == 9 and flat.min() >= 0 and flat.max() < 10
    assert len(batch_indices(12, 4, key=jax.random.key(1), drop_last=True)) == 3
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(3, 5, key=jax.random.key(0), drop_last=True)


def test_deterministic_per_key_and_differs_across_keys():
    key = jax.random.key(42)
    a = np.concatenate(batch_indices(100, 7, key=key))
    b = np.concatenate(batch_indices(100, 7, key=key))
    c = np.concatenate(batch_indices(100, 7, key=jax.random.fold_in(key, 1)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, np.arange(100))  # actually shuffled


@pytest.mark.parametrize("n, bs", [(0, 2), (5, 0), (5, -1), (5.0, 2), (5, 2.5), (True, 2)])
def test_bad_sizes(n, bs):
    with pytest.raises(ValueError, match="n|batch_size"):
        batch_indices(n, bs, key=jax.random.key(0))
    with pytest.raises(ValueError, match="n|batch_size"):
        num_batches(n, bs)


def test_bad_key():
    with pytest.raises(ValueError, match="key"):
        batch_indices(5, 2, key=0)
    with pytest.raises(ValueError, match="key"):
        batch_indices(5, 2, key=jax.random.split(jax.random.key(0), 2))


def test_iterate_slices_all_arrays_together():
    x = np.arange(22 * 2).reshape(22, 2)
    y = np.arange(22) * 10
    key = jax.random.key(3)
    got = list(iterate((x, y), 5, key=key))
    idx = batch_indices(22, 5, key=key)
    assert len(got) == len(idx) == 5
    for (bx, by), i in zip(got, idx):
        np.testing.assert_array_equal(bx, x[i])
        np.testing.assert_array_equal(by, y[i])
    assert sorted(np.concatenate([b for _, b in got]).tolist()) == y.tolist()


def test_iterate_keeps_namedtuple_and_none():
    batch = Batch(x=np.zeros((9, 2, 2, 3)), y=np.arange(9), bias=None)
    out = list(iterate(batch, 4, key=jax.random.key(0), drop_last=True))
    assert len(out) == 2 and all(isinstance(b, Batch) for b in out)
    assert out[0].x.shape == (4, 2, 2, 3) and out[0].bias is None and out[0].mask is None


def test_iterate_validates_eagerly():
    with pytest.raises(ValueError, match="leading dimension"):
        iterate((np.zeros(3), np.zeros(4)), 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="arrays"):
        iterate(np.zeros(3), 2, key=jax.random.key(0))
