"""Region attribution on the run layer: maps of a dataset's training images, passed to a training run."""
import json

import numpy as np
import pytest

from jaxbias import cli, runs
from jaxbias.data.region_mnist import region_mnist
from jaxbias.runs import RegionConfig, RunConfig
from jaxbias.runs import attribution as attribution_lib
from jaxbias import datasets
from jaxbias.types import Batch

REGION = RegionConfig(patch=16, stride=8, epochs=1, batch_size=16, widths=(4, 8), blocks=(1, 1))


@pytest.fixture(scope="module")
def small():
    """region_mnist (seed 0) cut to 64 training, 32 test and 64 attribution images."""
    d = region_mnist(seed=0)
    cut = {f"{s}_{k}": getattr(d, f"{s}_{k}")[:n] for s, n in (("train", 64), ("test", 32), ("attr", 64))
           for k in ("x", "y", "c", "mark") if hasattr(d, f"{s}_{k}")}
    cut["train_digit"] = d.train_digit[:64]
    return datasets.view("region_mnist", d._replace(**cut))


def test_region_mnist_dataset_view(small):
    assert small.num_classes == 2 and small.train.x.shape == (64, 64, 64, 3) and small.train.mask is None
    np.testing.assert_array_equal(small.train.bias, small.raw.train_c)  # bias = the confounder
    np.testing.assert_array_equal(small.concept.bias, small.raw.attr_c)  # the region classifier's labels
    assert small.region.shape == (64, 64) and small.region[:5].all() and not small.region[-20:].any()
    with pytest.raises(ValueError, match=r"training masks must be \(N, H, W\) = \(64, 64, 64\)"):
        small.with_train_mask(np.zeros((63, 64, 64)))


def test_maps_pass_from_attribution_to_training_in_memory_and_through_the_workdir(small, tmp_path):
    cfg = RunConfig(dataset="region_mnist", seed=0, model_settings={"channels": (2, 2, 2, 2)}, epochs=1, batch_size=32,
                    decay_every=None)
    att = runs.attribute(cfg, REGION, data=small, workdir=str(tmp_path / "attr"))
    assert att.specific.shape == (64, 64, 64) and att.general.shape == (64, 64)
    assert att.summary["map_images"] == 64 and 0 <= att.summary["region_coverage"] <= 1
    with pytest.raises(FileExistsError, match="already holds an attribution"):
        runs.attribute(cfg, REGION, data=small, workdir=str(tmp_path / "attr"))
    back = attribution_lib.load(str(tmp_path / "attr"))
    np.testing.assert_array_equal(back.specific, att.specific)  # what a run uses is what the workdir keeps
    assert back.data == att.data and back.region == att.region

    tn = cfg.replace(method="targeted_noise", hparams={"map": "general"})
    run = runs.train(tn.replace(maps=str(tmp_path / "attr")), data=small, progress=False,
                     workdir=str(tmp_path / "run"))
    # targeted noise's general map is the mean of the training masks, i.e. of the attribution's maps
    g = np.asarray(run.state.method_state.general_map)
    np.testing.assert_allclose(g, att.specific.mean(0), rtol=1e-5, atol=1e-6)
    assert g.std() > 0.01
    assert json.loads((tmp_path / "run" / "config.json").read_text())["maps"] == str(tmp_path / "attr")
    # in memory, the same training masks reach the run
    np.testing.assert_array_equal(runs.prepare(tn.replace(maps=att), data=small).dataset.train.mask, att.specific)

    for other, what in ((cfg.replace(style="hair"), "style"), (cfg.replace(seed=1), "data_seed")):
        with pytest.raises(ValueError, match=f"made on other data \\({what}"):
            runs.train(other.replace(maps=att), data=small, progress=False)


def test_attribute_refuses_data_without_confounder_labels():
    unlabelled = datasets.Dataset("adult", None, {}, 2, Batch(np.zeros((2, 3)), np.zeros(2)), None)
    with pytest.raises(ValueError, match="dataset 'adult' has no confounder labels"):
        runs.attribute(RunConfig(dataset="adult"), data=unlabelled)


def test_cli_maps_flag_reaches_the_run_config(tmp_path):
    args = cli.build_parser().parse_args(["train", "--dataset", "region_mnist", "--style", "hair", "--image-size",
                                          "96", "--maps", str(tmp_path), "--method", "targeted_noise",
                                          "--workdir", str(tmp_path / "run")])
    config = cli.run_config(args)
    assert (config.dataset, config.data.style, config.data.image_size, config.maps) == ("region_mnist", "hair", 96,
                                                                            str(tmp_path))
    with pytest.raises(ValueError, match="image_size must be an int >= 48"):
        config.replace(image_size=32)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--confounder", "Bald", "--workdir", str(tmp_path)])
