"""A folder of your own images with a controlled artifact drawn in as they are decoded (issue 38): the ClArC
workflow (train, then correct) on it, streamed or in memory, with the same numbers."""
import json
import pickle

import numpy as np
import pytest

from jaxbias.data.artifacts import insert_all
from jaxbias.data.lazy import is_lazy
from jaxbias.datasets import folder

from test_folder import write_csv, write_folder

SIZE = 20  # the stamp's text needs 19 + 1 pixels


@pytest.fixture
def table(tmp_path):
    root = tmp_path / "photos"
    rows = write_folder(root)
    return root, write_csv(root / "meta.csv", rows)


def load(table, *, seed=0, **kw):
    root, meta = table
    settings = {"split_column": "split", "image_size": SIZE, "artifact": "stamp", "artifact_class": 0, "p": 0.5, **kw}
    return folder.load(folder.Settings(root=str(root), metadata=str(meta), **settings), seed=seed)


def arrays(batch):
    return [None if a is None else (a[:] if is_lazy(a) else np.asarray(a)) for a in batch]


def test_artifact_rows_and_masks_streamed_as_in_memory(table):
    for artifact in ("stamp", "patch", "lsb", "blend"):
        mem, lazy = load(table, artifact=artifact), load(table, artifact=artifact, stream=True)
        assert mem.artifact and lazy.artifact and mem.target_class == 0
        assert set(mem.evals) == {"clean", "artifact", "val"}
        assert is_lazy(lazy.train.x) and is_lazy(lazy.concept.x) and is_lazy(lazy.evals["artifact"].mask)
        for a, b in [(mem.train, lazy.train), (mem.concept, lazy.concept)] + [(mem.evals[k], lazy.evals[k])
                                                                             for k in mem.evals]:
            for u, v in zip(arrays(a), arrays(b)):
                assert (u is None) == (v is None)
                if u is not None:
                    np.testing.assert_array_equal(u, v)
        x, y, bias, mask = arrays(mem.train)
        carries = mask.reshape(len(mask), -1).any(1)
        np.testing.assert_array_equal(carries, bias == 1)  # a mask exactly where the artifact is
        assert carries.any() and not carries.all() and set(y[carries]) == {0}  # some of class 0, no other class
        plain = load(table, artifact=None)
        np.testing.assert_array_equal(x[~carries], plain.train.x[~carries])  # the others untouched
        assert not np.array_equal(x[carries], plain.train.x[carries])
        # the concept set: the artifact class's training images, bias = 1 where the artifact is
        np.testing.assert_array_equal(mem.concept.y, y[y == 0])
        np.testing.assert_array_equal(mem.concept.bias, bias[y == 0])
        assert set(mem.concept.bias.tolist()) == {0, 1}
    pickle.loads(pickle.dumps(lazy.train.x))[:2]  # picklable: what decode workers need


def test_the_artifact_is_drawn_before_the_division_by_255(table):
    data, plain = load(table), load(table, artifact=None)
    x, _, bias, _ = arrays(data.train)
    raw = np.rint(plain.train.x * 255).astype(np.uint8)
    want, _ = insert_all(raw[bias == 1], artifact="stamp", seed=0)
    np.testing.assert_array_equal(x[bias == 1], want.astype(np.float32) / np.float32(255))


def test_insertion_deterministic_for_a_seed_and_different_for_another(table):
    a, b, c = load(table, seed=1, artifact="patch"), load(table, seed=1, artifact="patch"), load(table, seed=2,
                                                                                                  artifact="patch")
    for u, v in zip(arrays(a.train), arrays(b.train)):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(a.evals["artifact"].x, b.evals["artifact"].x)
    assert not np.array_equal(a.train.bias, c.train.bias)  # other rows drawn
    assert not np.array_equal(a.evals["artifact"].mask, c.evals["artifact"].mask)  # patches elsewhere


def test_every_artifact_image_carries_it(table):
    data = load(table)
    clean, art = data.evals["clean"], data.evals["artifact"]
    np.testing.assert_array_equal(clean.y, art.y)
    assert set(clean.y.tolist()) == {0, 1, 2}
    assert art.mask.reshape(len(art.mask), -1).any(1).all()
    assert not clean.mask.any()
    inside = art.mask[..., None].repeat(3, -1)
    assert np.all(art.x[inside] == 1.0)  # the stamp's white ink
    np.testing.assert_array_equal(art.x[~inside], clean.x[~inside])


def test_heatmaps_show_the_artifact_class_with_the_artifact(table):
    from jaxbias import datasets

    data = load(table, stream=True)
    picked = datasets.shown(data, 2)
    assert picked.x.shape == (2, SIZE, SIZE, 3) and picked.y.tolist() == [0, 0]
    np.testing.assert_array_equal(picked.x, load(table).evals["artifact"].x[data.evals["artifact"].y == 0][:2])
    plain = load(table, artifact=None)
    np.testing.assert_array_equal(datasets.shown(plain, 3).x, plain.evals["test"].x[:3])


def test_settings_refusals(table):
    root, meta = table
    with pytest.raises(ValueError, match="image_size") as info:
        folder.Settings(root=str(root), metadata=str(meta), artifact="stamp", image_size=16)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="bias_column"):
        folder.Settings(root=str(root), metadata=str(meta), artifact="patch", bias_column="bias")
    with pytest.raises(ValueError, match="artifact_class"):
        load(table, artifact_class=3)
    plain = load(table, artifact=None)
    assert not plain.artifact and plain.target_class is None
    assert any("target class" in m for m in plain.artifact_missing)


@pytest.mark.slow
def test_train_then_correct_streamed_and_in_memory(table, tmp_path, capsys):
    from jaxbias.cli import main

    root, meta = table
    reports = {}
    for stream in ("false", "true"):
        base = tmp_path / f"base-{stream}"
        assert main(["train", "--dataset", f"folder:{root}", "--metadata", str(meta), "--split-column", "split",
                     "--artifact", "stamp", "--artifact-class", "0", "--p", "0.5", "--image-size", str(SIZE),
                     "--stream", stream, "--model", "simple_conv", "--channels", "2,2,2,2", "--epochs", "1",
                     "--batch-size", "8", "--workdir", str(base), "--no-progress", "--json"]) == 0
        capsys.readouterr()
        assert main(["correct", "--from", str(base), "--method", "rrclarc", "--lam", "10", "--epochs", "1",
                     "--batch-size", "8", "--trainable", "fc", "--workdir", str(tmp_path / f"rr-{stream}"),
                     "--no-progress", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["config"]["chosen"] == [0] and len(out["history"]) == 1
        for rep in (out["report"], out["base_report"]):
            assert rep["tcav_sens"] >= 0 and 0 <= rep["clean"] <= 1 and 0 <= rep["r_bias"] <= 1
        reports[stream] = (out["base_report"], out["report"])
        assert main(["evaluate", "--workdir", str(tmp_path / f"rr-{stream}"), "--json"]) == 0
        ev = json.loads(capsys.readouterr().out)
        assert ev["artifact_report"]["tcav_sens"] == pytest.approx(out["report"]["tcav_sens"], rel=1e-5)
    for mem, lazy in zip(*reports.values()):
        assert mem.keys() == lazy.keys()
        for k in mem:
            assert mem[k] == pytest.approx(lazy[k], rel=1e-5, abs=1e-7), k


@pytest.mark.slow
def test_correct_refuses_a_folder_without_artifact(table, tmp_path, capsys):
    from jaxbias.cli import main
    from jaxbias.runs.correction import correct

    root, meta = table
    base = tmp_path / "plain"
    assert main(["train", "--dataset", f"folder:{root}", "--metadata", str(meta), "--split-column", "split",
                 "--image-size", str(SIZE), "--model", "simple_conv", "--channels", "2,2,2,2", "--epochs", "1",
                 "--batch-size", "8", "--workdir", str(base), "--no-progress", "--json"]) == 0
    with pytest.raises(ValueError, match="lacks a target class") as info:
        correct(base=str(base), method="rrclarc", epochs=1, progress=False)
    assert "\n" not in str(info.value) and "'clean'" in str(info.value)
