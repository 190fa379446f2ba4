"""The dataset registry: a dataset is one file declaring its Settings and a loader; flags, config files and
config.json follow the Settings."""
import json
import sys

import numpy as np
import pytest

from jaxbias import datasets
from jaxbias.runs import RunConfig

BLOBS = '''"""Two Gaussian blobs: a throwaway dataset written by a test, to show that a dataset is one file."""
import dataclasses
from typing import ClassVar

import numpy as np

from jaxbias import settings as settings_lib
from jaxbias.datasets import Dataset
from jaxbias.types import Batch


@dataclasses.dataclass(frozen=True)
class Settings:
    """The blobs.

    Attributes:
      n: training samples.
      shift: distance of each class mean from the origin along the first axis.
      spread: the blobs' standard deviation.
    """

    CHOICES: ClassVar[dict] = {"spread": (0.5, 1.0)}
    n: int = 256
    shift: float = 2.0
    spread: float = 1.0

    def __post_init__(self):
        settings_lib.check(self)
        settings_lib.need(self.n >= 2, self, "n", "an int >= 2")


def _blobs(n, settings, rng):
    y = np.arange(n) % 2
    x = rng.normal(0.0, settings.spread, size=(n, 4)).astype(np.float32)
    x[:, 0] += np.where(y == 1, settings.shift, -settings.shift)
    return Batch(x, y.astype(np.int32), (x[:, 1] > 0).astype(np.int32))


def load(settings, *, seed):
    rng = np.random.default_rng(seed)
    train = _blobs(settings.n, settings, rng)
    return Dataset("blobs", train, {"test": _blobs(200, settings, rng)}, 2, train, None)
'''


@pytest.fixture
def blobs(tmp_path, monkeypatch):
    """A dataset module in a folder of its own, added to the datasets package's search path (no registration)."""
    folder = tmp_path / "more_datasets"
    folder.mkdir()
    (folder / "blobs.py").write_text(BLOBS)
    monkeypatch.setattr(datasets, "__path__", [*datasets.__path__, str(folder)])
    yield datasets.get("blobs")
    sys.modules.pop("jaxbias.datasets.blobs", None)


def test_a_new_dataset_is_one_file(blobs, tmp_path, capsys):
    from jaxbias import cli

    assert "blobs" in datasets.available() and not datasets.images("blobs")
    for command in ("train", "sweep"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "blobs" in text and "--shift V blobs: distance of each class mean" in text
        assert "--spread {0.5,1.0} blobs: the blobs' standard deviation. (default 1.0)" in text
    wd = tmp_path / "run"
    argv = ["train", "--dataset", "blobs", "--shift", "3", "--spread", "0.5", "--model", "mlp", "--hidden", "8",
            "--epochs", "3", "--batch-size", "32", "--lr", "0.01", "--decay-every", "0", "--no-progress",
            "--workdir", str(wd), "--json"]
    assert cli.main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["eval"]["test"]["accuracy"] > 0.95  # separated blobs: the run learnt from the loaded data
    record = json.loads((wd / "config.json").read_text())
    assert record["dataset"] == "blobs" and record["data"] == {"n": 256, "shift": 3.0, "spread": 0.5}
    assert record["input_shape"] == [4]
    assert cli.main([*argv[:-3], "--epochs", "4", "--resume", "--workdir", str(wd)]) == 0  # config.json reads back
    capsys.readouterr()
    # flags of another dataset, values outside a field's type or choices: one line naming the flag
    assert cli.main([*argv[:3], "--rho", "0.5", "--workdir", str(tmp_path / "b")]) == 2
    assert "--rho is a setting of biased_mnist, not of dataset 'blobs'" in capsys.readouterr().err
    assert cli.main([*argv[:3], "--n", "1", "--workdir", str(tmp_path / "c")]) == 2
    assert "n must be an int >= 2; got 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*argv[:3], "--spread", "2", "--workdir", str(tmp_path / "d")])
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_settings_come_from_mappings_flat_keys_and_older_config_files():
    config = RunConfig.from_dict({"dataset": "artifact_mnist", "p": 1, "data": {"artifact": "blend"}})
    assert config.data == datasets.get("artifact_mnist").Settings(artifact="blend", p=1.0)
    assert config.replace(p=0.25).data.artifact == "blend"  # a field by name keeps the others
    assert config.replace(dataset="biased_mnist").data == datasets.settings("biased_mnist")  # another dataset: its defaults
    assert RunConfig.from_dict(config.to_dict()) == config.replace(data_seed=0)
    # a config.json written when data settings were flat fields of every run: the dataset's own are kept,
    # the others (at the values they had when unused) are dropped, image_size None is the dataset's default
    old = {"dataset": "region_mnist", "rho": 0.99, "artifact": "stamp", "artifact_class": 0, "p": 0.5,
           "data_path": None, "protected": "sex", "source": "offline", "data_dir": None, "image_size": None,
           "style": "hair", "confounder": "Blond_Hair", "data_seed": 3}
    assert RunConfig.from_dict(old).data == datasets.get("region_mnist").Settings(image_size=64, style="hair")
    with pytest.raises(ValueError, match="rho is a setting of biased_mnist, not of dataset 'region_mnist'"):
        RunConfig.from_dict({**old, "rho": 0.5})
    with pytest.raises(ValueError, match="are not those of dataset 'adult'"):
        RunConfig(dataset="adult", data=datasets.settings("biased_mnist"))


def test_the_registry_refuses_what_is_not_a_dataset(tmp_path, monkeypatch):
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "nosettings.py").write_text("def load(settings, *, seed):\n    return None\n")
    (folder / "wrongname.py").write_text(BLOBS.replace('Dataset("blobs"', 'Dataset("other"'))
    monkeypatch.setattr(datasets, "__path__", [*datasets.__path__, str(folder)])
    try:
        with pytest.raises(ValueError, match="must declare a dataclass Settings"):
            datasets.get("nosettings")
        with pytest.raises(ValueError, match="must return the Dataset named 'wrongname'"):
            datasets.load("wrongname")
        with pytest.raises(ValueError, match="dataset 'nope' is unknown; expected one of"):
            datasets.get("nope")
    finally:
        for name in ("nosettings", "wrongname"):
            sys.modules.pop(f"jaxbias.datasets.{name}", None)


def test_the_bundled_datasets_load_as_their_protocol_says():
    """The registry's modules give the same samples as the protocol functions they wrap."""
    from jaxbias.data import biased_mnist

    ds = datasets.load("biased_mnist", {"rho": 0.9}, seed=2)
    raw = biased_mnist(rho=0.9, seed=2, source="offline")
    np.testing.assert_array_equal(ds.train.x, raw.train_x)
    np.testing.assert_array_equal(ds.train.bias, raw.train_bias)
    assert set(ds.evals) == {"biased", "unbiased"} and ds.num_classes == 10
    assert datasets.image_names() == ["artifact_mnist", "biased_mnist", "celeba", "fashion_mnist", "folder",
                                     "region_mnist", "tfds"]


def test_split_name_gives_a_dataset_its_declared_setting():
    from jaxbias import datasets
    from jaxbias.runs import RunConfig

    assert datasets.split_name("adult") == ("adult", {})
    assert datasets.split_name("tfds:mnist:3.0.1") == ("tfds", {"tfds_name": "mnist:3.0.1"})  # the first colon
    assert datasets.split_name("folder:/data/isic") == ("folder", {"root": "/data/isic"})
    cfg = RunConfig(dataset="tfds:celeb_a", data={"bias_feature": "attributes/Male"})
    assert (cfg.dataset, cfg.data.tfds_name, cfg.data.bias_feature) == ("tfds", "celeb_a", "attributes/Male")
    again = RunConfig.from_dict(cfg.to_dict())  # stored as the name and the setting: it round-trips
    assert (again.dataset, again.data) == (cfg.dataset, cfg.data)
    with pytest.raises(ValueError, match="takes no value"):
        datasets.split_name("biased_mnist:0.9")
