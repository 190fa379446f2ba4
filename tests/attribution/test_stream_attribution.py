"""Region attribution on a streamed folder: the same maps, general map and calibration as in memory, read a batch
at a time (never more rows decoded by one index than the batch size), the maps kept in specific_maps.npy."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))  # the folder writers of the data tests

from jaxbias import cli, metrics, runs  # noqa: E402
from jaxbias.attribution import maps as maps_lib  # noqa: E402
from jaxbias.attribution.classifier import calibration, map_set, patch_probabilities, specific_maps  # noqa: E402
from jaxbias.data.lazy import is_lazy  # noqa: E402
from jaxbias.runs import RegionConfig, RunConfig  # noqa: E402
from test_folder import write_csv, write_folder  # noqa: E402

BATCH = 4  # smaller than every set below: a whole-set read would gather more rows than this
REGION = RegionConfig(patch=8, stride=4, widths=(4,), blocks=(1,), epochs=1, batch_size=BATCH, map_batch_size=BATCH)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream_attribution") / "photos"
    rows = write_folder(root, per_class=12)
    return root, write_csv(root / "meta.csv", rows)


def config(table, **kw):
    root, meta = table
    data = {"root": str(root), "metadata": str(meta), "split_column": "split", "image_size": 20,
            "bias_column": "bias", **kw}
    return RunConfig(dataset="folder", seed=0, data=data, model_settings={"channels": (2, 2, 2, 2)}, epochs=1,
                     batch_size=BATCH, decay_every=None)


@pytest.fixture(scope="module")
def in_memory(table):
    cfg = config(table)
    return cfg, cfg.load_data(), runs.attribute(cfg, REGION)


def test_batched_maps_and_calibration_equal_the_whole_set(in_memory):
    _, data, att = in_memory
    clf, x = att.classifier, np.asarray(data.train.x)
    raw = specific_maps(clf, x, normalize=False, batch_size=BATCH)
    specific, general = map_set(clf, x, batch_size=BATCH)
    np.testing.assert_array_equal(specific, np.asarray(maps_lib.minmax(raw)))
    np.testing.assert_allclose(general, np.asarray(maps_lib.general_map(raw)), rtol=1e-5, atol=1e-6)
    vx, vc = np.asarray(data.evals["val"].x), np.asarray(data.evals["val"].bias)
    probs = patch_probabilities(clf, vx, batch_size=BATCH)
    n, p, k = probs.shape
    cal = calibration(clf, vx, vc, batch_size=BATCH)
    flat, lab = probs.reshape(n * p, k), np.repeat(vc, p)
    assert cal["ece"] == pytest.approx(metrics.ece(flat, lab), abs=1e-9)
    assert cal["bins"]["count"] == metrics.reliability_bins(flat, lab)["count"] and cal["patches"] == n * p
    assert cal["accuracy"] == pytest.approx(float((probs.argmax(-1) == vc[:, None]).mean()))
    with pytest.raises(ValueError, match=r"out must have shape \(N, H, W\)") as info:
        map_set(clf, x, out=np.zeros((1, 20, 20), np.float16))
    assert "\n" not in str(info.value)


def test_streamed_attribution_equals_in_memory(table, in_memory, tmp_path, gathered):
    _, _, mem = in_memory
    cfg = config(table, stream=True)
    lazy = cfg.load_data()
    assert is_lazy(lazy.train.x) and len(lazy.train.y) > BATCH and len(lazy.evals["val"].y) > BATCH
    gathered[0] = 0
    # maps.png decodes its n_figure images in one read: kept to the batch here
    att = runs.attribute(cfg, REGION, data=lazy, workdir=str(tmp_path / "attr"), n_figure=BATCH)
    assert 0 < gathered[0] <= BATCH
    assert isinstance(att.specific, np.memmap) and att.specific.dtype == np.float16 and not att.specific.flags.writeable
    np.testing.assert_array_equal(np.asarray(att.specific, np.float32), mem.specific)
    np.testing.assert_allclose(att.general, mem.general, rtol=1e-5, atol=1e-6)
    assert att.summary["ece"] == pytest.approx(mem.summary["ece"], abs=1e-9) and "iou" not in att.summary
    back = runs.attribution.load(str(tmp_path / "attr"))
    assert isinstance(back.specific, np.memmap) and back.summary["streamed"]

    # a training run takes the mapped maps as its training masks (gathered per batch)
    tn = cfg.replace(method="targeted_noise", hparams={"map": "specific"}, maps=att)
    mask = runs.prepare(tn, data=lazy).dataset.train.mask
    assert mask.dtype == np.float16 and np.shares_memory(mask, att.specific)  # a view of the file, no copy
    run = runs.train(tn, data=lazy, progress=False)
    assert np.isfinite(np.asarray(run.state.method_state.general_map)).all()


def test_streamed_attribution_needs_a_workdir(table):
    cfg = config(table, stream=True)
    with pytest.raises(ValueError, match="streamed.*needs a workdir") as info:
        runs.attribute(cfg, REGION)
    assert "\n" not in str(info.value)


def test_cli_attribute_on_a_streamed_folder(table, tmp_path, capsys):
    root, meta = table
    out = tmp_path / "attr"
    argv = ["attribute", "--dataset", f"folder:{root}", "--metadata", str(meta), "--bias-column", "bias",
            "--split-column", "split", "--image-size", "20", "--stream", "true", "--patch", "8", "--stride", "4",
            "--widths", "4", "--blocks", "1", "--epochs", "1", "--batch-size", "4", "--map-batch-size", "4",
            "--out", str(out), "--no-progress", "--json"]
    assert cli.main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dataset"] == "folder" and res["positions"] == 16 and "iou" not in res and res["streamed"]
    s = np.load(out / "specific_maps.npy")
    assert s.dtype == np.float16 and s.shape == (res["map_images"], 20, 20)
    assert json.loads((out / "attribution.json").read_text())["ece"] == res["ece"]

    # without its bias column a folder has no confounder labels: one line, nothing trained
    assert cli.main(argv[:5] + argv[7:-4] + ["--out", str(tmp_path / "none"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no confounder labels" in err and "\n" not in err
    with pytest.raises(SystemExit):
        cli.main(["attribute", "--dataset", "adult"])
    assert "invalid choice: 'adult'" in capsys.readouterr().err


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_streamed_attribution_leaves_nothing_behind(table, tmp_path, monkeypatch, existing):
    cfg = config(table, stream=True)
    real = runs.attribution.run_attribution

    def fails_mid_way(inputs, *, maps_out, **kw):  # the maps of the first batch are written, then the run dies
        maps_out[:BATCH] = 1.0
        maps_out.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.attribution, "run_attribution", fails_mid_way)
    workdir = tmp_path / "attr"
    if existing:
        workdir.mkdir()
    with pytest.raises(KeyboardInterrupt):
        runs.attribute(cfg, REGION, workdir=str(workdir))
    assert (sorted(p.name for p in workdir.iterdir()) == []) if existing else not workdir.exists()

    monkeypatch.setattr(runs.attribution, "run_attribution", real)  # a rerun into the same folder then works
    att = runs.attribute(cfg, REGION, workdir=str(workdir), n_figure=BATCH)
    assert sorted(p.name for p in workdir.iterdir() if p.suffix == ".npy") == ["general_map.npy", "specific_maps.npy"]
    assert att.specific.shape[0] == len(cfg.load_data().train.y)
