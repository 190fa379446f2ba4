"""Any TFDS dataset by name: a tiny dataset built offline into tmp_path (array_record, no TensorFlow: Tensor
features, which serialise without it) and mnist mocked by tfds.testing.mock_data; features checked, decoded,
resized, and trained on from the CLI."""
import importlib.util
import pickle

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None,
                                reason="tensorflow_datasets not installed")

SIZE = 12
COLOURS = ((200, 40, 40), (40, 190, 60), (50, 60, 210))  # each class's colour: what a model can learn
COUNTS = {"train": 30, "test": 9, "validation": 6}


def _builder_class():
    import tensorflow_datasets as tfds

    class JaxbiasTinyFaces(tfds.core.GeneratorBasedBuilder):
        """Three classes of coloured 12×12 pictures, a 'glasses' bias (a white square) with its mask."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "picture": tfds.features.Tensor(shape=(SIZE, SIZE, 3), dtype=np.uint8),
                "grey": tfds.features.Tensor(shape=(SIZE, SIZE, 1), dtype=np.uint8),
                "mood": tfds.features.ClassLabel(names=["sad", "calm", "glad"]),
                "count": tfds.features.Scalar(dtype=np.int64),
                "score": tfds.features.Scalar(dtype=np.float32),
                "attributes": {"glasses": tfds.features.Scalar(dtype=np.bool_)},
                "square": tfds.features.Tensor(shape=(SIZE, SIZE), dtype=np.bool_),
            }))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(n, k) for k, (split, n) in enumerate(COUNTS.items())}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                c, glasses = i % 3, bool(i % 2)
                image = np.clip(np.array(COLOURS[c]) + rng.normal(0, 10, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
                square = np.zeros((SIZE, SIZE), bool)
                if glasses:
                    square[:4, :4] = True
                    image[square] = 255
                yield i, {"picture": image, "grey": image[..., :1], "mood": c, "count": c + 1, "score": float(c),
                          "attributes": {"glasses": glasses}, "square": square}

    return JaxbiasTinyFaces


NAME = "jaxbias_tiny_faces"
FEATURES = dict(image_feature="picture", label_feature="mood")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    where = tmp_path_factory.mktemp("tfds")
    _builder_class()(data_dir=str(where), file_format="array_record").download_and_prepare()
    return str(where)


def test_features_read_resized_and_pickled(data_dir):
    from jaxbias.data.tfds_source import open_tfds

    source = open_tfds(NAME, "test", data_dir=data_dir, bias_feature="attributes/glasses", mask_feature="square",
                       **FEATURES)
    assert len(source) == COUNTS["test"] and source.num_classes == 3 and source.mode == "rgb"
    assert source.splits == ("train", "test", "validation")
    item = source[1]
    assert item["image"].shape == (SIZE, SIZE, 3) and item["image"].dtype == np.uint8
    assert item["bias"] == 1 and item["mask"].shape == (SIZE, SIZE) and item["mask"][:4, :4].all()
    assert item["mask"].sum() == 16 and (item["image"][:4, :4] == 255).all()
    small = open_tfds(NAME, "test", data_dir=data_dir, image_size=8, image_feature="grey", label_feature="count",
                      mask_feature="square")
    assert small.mode == "grey" and small.num_classes is None  # an int scalar label: no class count in the info
    got = small[1]
    assert got["image"].shape == (8, 8, 1) and got["mask"].shape == (8, 8) and got["label"] == 2
    back = pickle.loads(pickle.dumps(small))  # the open records are not pickled: the copy re-opens them
    assert "_records" not in back.__dict__ or back.__dict__["_records"] is None
    np.testing.assert_array_equal(back[1]["image"], got["image"])
    with pytest.raises(IndexError, match="outside the 9 records"):
        source[9]


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_feature="photo"), "has no feature 'photo' \\(the image feature\\); its features: picture, grey, "
                                  "mood, count, score, attributes/glasses, square"),
    (dict(label_feature="score"), "feature 'score' \\(label\\) is Scalar \\(float32, shape \\(\\)\\), not an int class"),
    (dict(label_feature="picture"), "feature 'picture' \\(label\\) is Tensor .*not an int class"),
    (dict(bias_feature="attributes/hat"), "no feature 'attributes/hat' \\(the bias feature\\)"),
    (dict(image_feature="mood"), "feature 'mood' \\(image\\) is ClassLabel .*expected a uint8 picture"),
    (dict(mask_feature="picture"), "feature 'picture' \\(mask\\) .*expected a bool or int picture"),
])
def test_bad_features_refused_in_one_line(data_dir, kwargs, match):
    from jaxbias.data.tfds_source import open_tfds

    with pytest.raises(ValueError, match=match) as info:
        open_tfds(NAME, "train", data_dir=data_dir, **{**FEATURES, **kwargs})
    assert "\n" not in str(info.value)


def test_unknown_split_and_unprepared_refused_in_one_line(data_dir, tmp_path):
    from jaxbias.data import DatasetUnavailableError
    from jaxbias.data.tfds_source import open_tfds

    with pytest.raises(ValueError, match="has no split 'dev'; its splits: train, test, validation"):
        open_tfds(NAME, "dev", data_dir=data_dir, **FEATURES)
    with pytest.raises(DatasetUnavailableError) as info:
        open_tfds("mnist", data_dir=str(tmp_path))  # never downloads
    msg = str(info.value)
    assert "\n" not in msg and "not prepared" in msg and str(tmp_path) in msg
    assert "tfds build mnist --file_format=array_record" in msg
    with pytest.raises(DatasetUnavailableError, match="knows no dataset 'no_such_dataset_xyz'"):
        open_tfds("no_such_dataset_xyz", data_dir=str(tmp_path))


def test_dataset_splits_classes_bias_and_limit(data_dir):
    from jaxbias import datasets

    values = {"tfds_name": NAME, "data_dir": data_dir, **FEATURES, "bias_feature": "attributes/glasses",
              "mask_feature": "square", "image_size": 16}
    ds = datasets.load("tfds", values)
    assert datasets.images("tfds") and ds.num_classes == 3 and set(ds.evals) == {"test", "validation"}
    assert ds.train.x.shape == (30, 16, 16, 3) and ds.train.x.dtype == np.float32 and ds.train.x.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(ds.train.y), [10, 10, 10])  # TFDS shuffles the records it prepares
    np.testing.assert_array_equal(ds.train.bias, ds.train.mask.any(axis=(1, 2)))
    assert ds.train.bias.sum() == 15 and ds.train.bias.dtype == np.int32
    assert ds.train.mask.shape == (30, 16, 16) and ds.evals["validation"].x.shape[0] == 6
    assert ds.concept is ds.train and ds.source == f"tfds:{NAME}"
    one = datasets.load("tfds", {**values, "eval_splits": "validation", "limit": 7, "label_feature": "count",
                                 "image_size": "none"})
    assert set(one.evals) == {"validation"} and one.train.x.shape == (7, SIZE, SIZE, 3)
    assert one.num_classes == 4  # count is 1..3: no class count in the info, so the largest label + 1
    parts = datasets.load("tfds", {**values, "train_split": "train[:20]", "eval_splits": "train[20:],test"})
    assert parts.train.x.shape[0] == 20 and {k: v.x.shape[0] for k, v in parts.evals.items()} == {"train[20:]": 10,
                                                                                                 "test": 9}
    with pytest.raises(ValueError, match="limit must be at most the 30 training records"):
        datasets.load("tfds", {**values, "limit": 31})
    with pytest.raises(ValueError, match="tfds_name must be the TFDS dataset to read"):
        datasets.settings("tfds", {})
    with pytest.raises(ValueError, match="eval_splits"):
        datasets.settings("tfds", {"tfds_name": NAME, "eval_splits": "train"})


def test_mocked_mnist_reads(tmp_path):
    import tensorflow_datasets as tfds

    from jaxbias import datasets

    with tfds.testing.mock_data(num_examples=12):
        ds = datasets.load("tfds", {"tfds_name": "mnist", "data_dir": str(tmp_path), "eval_splits": "test"})
    assert ds.num_classes == 10 and ds.train.x.shape == (12, 28, 28, 1) and set(ds.evals) == {"test"}


def test_train_from_the_cli(data_dir, tmp_path, capsys):
    import json

    from jaxbias.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--tfds-name V tfds:", "--image-feature V tfds:", "--bias-feature V tfds:", "--eval-splits V tfds:",
                 "--download V tfds:"):
        assert flag in text, flag
    assert "--mode V targeted_noise:" in text  # the methods' flags keep their names
    argv = ["train", "--dataset", "tfds", "--tfds-name", NAME, "--data-dir", data_dir, "--image-feature", "picture",
            "--label-feature", "mood", "--bias-feature", "attributes/glasses", "--mask-feature", "square",
            "--model", "mlp", "--epochs", "1", "--batch-size", "10", "--workdir", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset"] == "tfds" and config["data"]["tfds_name"] == NAME
    streamed = argv[:-3] + ["--stream", "true", "--workers", "1", "--workdir", str(tmp_path / "streamed"), "--no-progress"]
    assert main(streamed) == 0
    config = json.loads((tmp_path / "streamed" / "config.json").read_text())
    assert config["data"]["stream"] is True and config["data"]["workers"] == 1


def test_a_streamed_tfds_dataset_equals_the_one_in_memory(data_dir, gathered, monkeypatch):
    """stream true keeps the records in the split (LazyImages read a batch at a time), the same values; stream none
    streams once the decoded images would take more than a quarter of the memory."""
    from jaxbias import datasets
    from jaxbias.data.lazy import is_lazy
    from jaxbias.data import lazy as lazy_lib

    values = {"tfds_name": NAME, "data_dir": data_dir, **FEATURES, "bias_feature": "attributes/glasses",
              "mask_feature": "square", "image_size": 16}
    mem = datasets.load("tfds", values)
    gathered[0] = 0
    lazy = datasets.load("tfds", {**values, "stream": "true", "workers": 2})
    assert gathered[0] == 0  # loading read the labels only
    assert is_lazy(lazy.train.x) and is_lazy(lazy.train.mask) and lazy.train.x.workers == 2
    for name, a in (("train", lazy.train), *lazy.evals.items()):
        b = mem.train if name == "train" else mem.evals[name]
        assert is_lazy(a.x) and a.x.shape == b.x.shape
        np.testing.assert_array_equal(a.x[np.arange(len(a.y))], b.x)
        np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_array_equal(a.bias, b.bias)
    np.testing.assert_array_equal(lazy.train.mask[np.arange(30)], mem.train.mask)
    monkeypatch.setattr(lazy_lib, "memory_bytes", lambda: 4 * 45 * 16 * 16 * 4)  # a quarter holds 45·16·16·4 B
    assert is_lazy(datasets.load("tfds", values).train.x)  # 45 records of 16·16·(3·4 + 1) bytes: streamed
    monkeypatch.setattr(lazy_lib, "memory_bytes", lambda: 2**40)
    assert not is_lazy(datasets.load("tfds", values).train.x)
    with pytest.raises(ValueError, match="workers must be 0 with stream false"):
        datasets.settings("tfds", {"tfds_name": NAME, "stream": "false", "workers": 1})


def test_train_streamed_from_tfds_equals_in_memory(data_dir, tmp_path):
    import jax

    from jaxbias.runs import RunConfig, train

    data = {"tfds_name": NAME, "data_dir": data_dir, **FEATURES, "image_size": 16}
    runs = [train(RunConfig(dataset="tfds", data={**data, "stream": stream}, model="mlp",
                            model_settings={"hidden": (8,)}, epochs=2, batch_size=10, feed="host"), progress=False)
            for stream in (False, True)]
    for a, b in zip(*(jax.tree.leaves(r.state.params) for r in runs)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert runs[0].history[-1]["eval"] == runs[1].history[-1]["eval"]
