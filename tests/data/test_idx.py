"""IDX files (MNIST / Fashion-MNIST format), the fashion_mnist dataset and the protocols on Fashion-MNIST images."""
import gzip
import json
import os
import struct
import time

import numpy as np
import pytest

from jaxbias import cli, datasets
from jaxbias.data import idx
from jaxbias.data.idx import IDX_FILES, read_idx
from jaxbias.data.sources import load_fashion_mnist, load_images, load_mnist

REAL = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "fashion-mnist")


def idx_bytes(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    a = np.asarray(array)
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[type_byte]
    return struct.pack(">BBBB", 0, 0, type_byte, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + \
        a.astype(dtype).tobytes()


def write(path, data: bytes, gz: bool) -> str:
    path = str(path) + (".gz" if gz else "")
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)
    return path


def make_dir(folder, n_train=200, n_test=50, gz=True, seed=0):
    """A Fashion-MNIST-like IDX folder: class c images are bright in row band c (learnable in an epoch)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    arrays = []
    for n in (n_train, n_test):
        y = np.arange(n) % 10
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 2 * c + 4:2 * c + 6] = 255
        arrays += [x, y.astype(np.uint8)]
    for name, a in zip(IDX_FILES, arrays):
        write(os.path.join(folder, name), idx_bytes(a), gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_images_labels_and_wider_types(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    got = read_idx(write(tmp_path / "im", idx_bytes(images), gz))
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, images)
    got[0, 0, 0] = 9  # a writable array of its own
    labels = read_idx(write(tmp_path / "lab", idx_bytes(np.array([3, 1, 4], np.uint8)), gz))
    np.testing.assert_array_equal(labels, [3, 1, 4])
    wide = np.array([[-2, 300], [7, -1]], np.int16)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "w", idx_bytes(wide, 0x0B), gz)), wide)
    f = np.array([0.5, -1.25], np.float32)
    got = read_idx(write(tmp_path / "f", idx_bytes(f, 0x0D), gz))
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(got, f)
    empty = read_idx(write(tmp_path / "e", idx_bytes(np.zeros((0, 28, 28), np.uint8)), gz))
    assert empty.shape == (0, 28, 28)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_refuses_in_one_line_naming_the_file(tmp_path, gz):
    with pytest.raises(FileNotFoundError, match="IDX file .*nope.* does not exist"):
        read_idx(tmp_path / "nope")
    images = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    cases = {
        "png": (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "is not an IDX file: its magic number is 0x89504e47"),
        "short": (b"\0\0", "is not an IDX file"),
        "cut": (images[:-10], r"is truncated: dims \(3, 28, 28\) need 2352 bytes of uint8 data, the file has 2342"),
        "header": (images[:9], "is truncated: its header names 3 dimensions but ends after 1"),
        "long": (images + b"\0", r"has more data than its dims \(3, 28, 28\) say"),
    }
    for name, (data, msg) in cases.items():
        path = write(tmp_path / name, data, gz)
        with pytest.raises(ValueError, match=msg) as e:
            read_idx(path)
        assert path in str(e.value) and "\n" not in str(e.value)
    if gz:  # a gzip file cut short
        path = tmp_path / "bad.gz"
        path.write_bytes(gzip.compress(images)[:-20])
        with pytest.raises(ValueError, match="is not a valid gzip file|is truncated") as e:
            read_idx(path)
        assert str(path) in str(e.value)


def test_a_folder_refuses_missing_files_and_counts_that_differ(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_fashion_mnist("dir", data_dir=str(tmp_path / "none"))
    with pytest.raises(ValueError, match="data_dir must be their folder .*--data-dir.*source tfds; got None"):
        load_fashion_mnist("dir")
    with pytest.raises(ValueError, match=r"source must be one of \('dir', 'tfds'\) for Fashion-MNIST"):
        load_fashion_mnist("offline")
    make_dir(tmp_path, gz=False)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="holds no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz"):
        load_fashion_mnist("dir", data_dir=str(tmp_path))
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(49, np.uint8)), False)
    with pytest.raises(ValueError, match="holds 50 images but .*t10k-labels-idx1-ubyte' holds 49 labels"):
        load_fashion_mnist("dir", data_dir=str(tmp_path))
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.full(50, 10, np.uint8)), False)
    with pytest.raises(ValueError, match="has labels up to 10; expected classes 0 to 9"):
        load_fashion_mnist("dir", data_dir=str(tmp_path))
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((50, 32, 32), np.uint8)), False)
    with pytest.raises(ValueError, match=r"holds uint8 \(50, 32, 32\); expected uint8 images \(N, 28, 28\)"):
        load_fashion_mnist("dir", data_dir=str(tmp_path))


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_and_mnist_read_a_folder(tmp_path, gz):
    train_x, train_y, test_x, test_y = make_dir(tmp_path, gz=gz)
    for d in (load_fashion_mnist("dir", data_dir=str(tmp_path)), load_mnist("dir", data_dir=str(tmp_path)),
              load_images("fashion_mnist", "dir", data_dir=tmp_path)):
        assert d.source == "dir" and d.train_x.dtype == np.uint8 and d.train_y.dtype == np.int32
        for got, want in zip(d[:4], (train_x, train_y, test_x, test_y)):
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=r"source must be one of \('dir', 'tfds'\) for images 'fashion_mnist'"):
        load_images("fashion_mnist", "auto")


def test_fashion_mnist_dataset_settings_and_limit(tmp_path):
    make_dir(tmp_path)
    ds = datasets.load("fashion_mnist", {"data_dir": str(tmp_path)})
    assert ds.num_classes == 10 and set(ds.evals) == {"test"} and ds.source == "dir"
    assert ds.train.x.shape == (200, 28, 28, 1) and ds.train.x.dtype == np.float32
    assert ds.evals["test"].x.shape == (50, 28, 28, 1) and ds.train.bias is None
    assert float(ds.train.x.max()) == 1.0 and float(ds.train.x.min()) >= 0.0
    raw = load_fashion_mnist("dir", data_dir=str(tmp_path))
    np.testing.assert_array_equal(ds.train.x[..., 0], raw.train_x.astype(np.float32) / np.float32(255))
    small = datasets.load("fashion_mnist", {"data_dir": str(tmp_path), "limit": "30"})
    assert small.train.x.shape[0] == 30 and small.evals["test"].x.shape[0] == 50
    with pytest.raises(ValueError, match="limit must be at most the 200 training images"):
        datasets.load("fashion_mnist", {"data_dir": str(tmp_path), "limit": 201})
    with pytest.raises(ValueError, match="limit must be a positive int or none; got 0"):
        datasets.settings("fashion_mnist", {"limit": 0})
    with pytest.raises(ValueError, match=r"source must be one of \('dir', 'tfds'\); got 'offline'"):
        datasets.settings("fashion_mnist", {"source": "offline"})
    assert "fashion_mnist" in datasets.image_names()


def test_protocols_take_fashion_images(tmp_path):
    make_dir(tmp_path)
    folder = str(tmp_path)
    art = datasets.load("artifact_mnist", {"images": "fashion_mnist", "source": "dir", "data_dir": folder,
                                           "artifact_class": 3, "p": 1.0}, seed=1)
    raw = load_fashion_mnist("dir", data_dir=folder)
    assert art.train.x.shape == (200, 28, 28, 3) and art.target_class == 3 and art.source == "dir"
    np.testing.assert_array_equal(art.train.y, raw.train_y)
    assert art.train.bias[raw.train_y == 3].all() and not art.train.bias[raw.train_y != 3].any()
    # the protocol's own code: only the images changed
    from jaxbias.data.artifact_mnist import artifact_mnist
    direct = artifact_mnist(target_class=3, p=1.0, seed=1, source="dir", data_dir=folder, images="fashion_mnist")
    np.testing.assert_array_equal(art.train.x, direct.train_x)
    biased = datasets.load("biased_mnist", {"images": "fashion_mnist", "source": "dir", "data_dir": folder,
                                            "rho": 1.0})
    assert biased.train.x.shape == (200, 28, 28, 3) and set(biased.evals) == {"biased", "unbiased"}
    np.testing.assert_array_equal(biased.train.bias, raw.train_y)  # rho 1: colour = class
    with pytest.raises(ValueError, match=r"source must be one of \('dir', 'tfds'\) for images 'fashion_mnist'.*"
                                         r"got 'offline'"):
        datasets.settings("artifact_mnist", {"images": "fashion_mnist"})
    with pytest.raises(ValueError, match=r"images must be one of \('mnist', 'fashion_mnist'\)"):
        datasets.settings("biased_mnist", {"images": "cifar"})
    # defaults unchanged: MNIST from the offline sample; older config files (no images) load as before
    assert datasets.settings("artifact_mnist").images == "mnist"
    from jaxbias.runs import RunConfig

    old = RunConfig.from_dict({"dataset": "artifact_mnist", "data": {"artifact": "blend", "source": "offline",
                                                                     "data_dir": None}})
    assert old.data == datasets.get("artifact_mnist").Settings(artifact="blend")


def test_fmd_pairs_come_from_the_runs_images(tmp_path):
    """split_biased_mnist (FMD's external pairs) reads the images the Biased MNIST data was built from: a
    Fashion-MNIST folder, not the MNIST digits (issue 39's bug: it reloaded MNIST whatever the run's images)."""
    from jaxbias.data.biased_mnist import biased_mnist
    from jaxbias.runs.unlearning import split_biased_mnist

    folder = str(tmp_path / "fashion")
    make_dir(folder, n_train=200, n_test=50, gz=False, seed=4)
    raw = load_fashion_mnist("dir", data_dir=folder)
    data = datasets.load("biased_mnist", {"images": "fashion_mnist", "source": "dir", "data_dir": folder,
                                          "rho": 0.99}, seed=0).raw
    assert data.images == "fashion_mnist" and data.data_dir == folder and data.source == "dir"
    split = split_biased_mnist(data, external=10, seed=2)
    x, x_cf, y = split.pairs
    ext = np.sort(np.random.default_rng(2).permutation(50)[:10])  # the external test images, as split draws them
    np.testing.assert_array_equal(y, raw.test_y[ext])
    fg = raw.test_x[ext] != 0  # the garment pixels are white in both halves of each pair, the rest is colour
    for half in (x, x_cf):
        white = np.all(half == 1.0, axis=-1)
        np.testing.assert_array_equal(white, fg)
    assert split.eval_pairs[0].shape[0] == 9 * 40 and split.train_cf.shape == (200, 28, 28, 3)
    np.testing.assert_array_equal(np.all(split.train_cf == 1.0, axis=-1), raw.train_x != 0)
    # data that claims other images than it was built from is refused, not paired with the wrong images
    with pytest.raises(ValueError, match="not the ones this Biased MNIST data was built from"):
        split_biased_mnist(data._replace(images="mnist", source="offline", data_dir=None), external=10)


def test_train_help_lists_fashion_mnist(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert "fashion_mnist" in out and "--images" in out and "--limit" in out and "--data-dir" in out


def test_cli_trains_on_a_fashion_folder(tmp_path, capsys):
    folder = tmp_path / "idx"
    make_dir(folder)
    wd = str(tmp_path / "run")
    argv = ["train", "--dataset", "fashion_mnist", "--data-dir", str(folder), "--epochs", "1", "--method", "vanilla",
            "--channels", "4,4,4,4", "--batch-size", "50", "--workdir", wd, "--no-progress", "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["data"] == {"source": "dir", "data_dir": str(folder), "limit": None}
    assert set(out["eval"]) == {"test"} and 0.0 <= out["eval"]["test"]["accuracy"] <= 1.0
    assert cli.main(["evaluate", "--workdir", wd, "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["eval"]) == {"test"}
    # without the folder: one line that says what to pass
    code = cli.main(["train", "--dataset", "fashion_mnist", "--epochs", "1", "--workdir", str(tmp_path / "none"),
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "--data-dir" in err and "source tfds" in err
    # artifact MNIST on Fashion-MNIST images, through the flags
    argv = ["train", "--dataset", "artifact_mnist", "--images", "fashion_mnist", "--source", "dir", "--data-dir",
            str(folder), "--epochs", "1", "--method", "vanilla", "--channels", "4,4,4,4", "--batch-size", "50",
            "--workdir", str(tmp_path / "art"), "--no-progress", "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["data"]["images"] == "fashion_mnist" and set(out["eval"]) == {"clean", "artifact"}


@pytest.mark.skipif(not os.path.isdir(REAL), reason="the real Fashion-MNIST folder (../shared/data/fashion-mnist) "
                    "is absent")
def test_real_fashion_mnist():
    t0 = time.perf_counter()
    d = load_fashion_mnist("dir", data_dir=REAL)
    assert time.perf_counter() - t0 < 20
    assert d.train_x.shape == (60000, 28, 28) and d.test_x.shape == (10000, 28, 28)
    assert d.train_x.dtype == np.uint8 and d.train_y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(d.train_y, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(d.test_y, minlength=10), np.full(10, 1000))
    assert 0.4 < float(np.mean(d.train_x == 0)) < 0.6  # about half of all pixels are background
    ds = datasets.load("fashion_mnist", {"data_dir": REAL, "limit": 1000})
    assert ds.train.x.shape == (1000, 28, 28, 1) and ds.evals["test"].x.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(ds.train.y, d.train_y[:1000])
