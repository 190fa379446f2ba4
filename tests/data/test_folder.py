"""Your own images: a folder + metadata table read, checked row by row, decoded, and trained on from the CLI."""
import csv
import json
import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from jaxbias import datasets
from jaxbias.data.folder import open_folder, read_table

SIZE = 16
COLOURS = ((200, 40, 40), (40, 190, 60), (50, 60, 210))  # each class's colour: what a model can learn
NAMES = ("dog", "ant", "cat")  # string labels: sorted, ant = 0, cat = 1, dog = 2
SQUARE = (slice(0, 8), slice(0, 8))  # the artifact: a white square top left


def write_folder(root, *, per_class=12, split=True, artifact=True):
    """Images (PNG and JPEG alternating, in sub-folders) and the rows of their table: path, label, name, bias,
    mask, split. Odd images carry the artifact square (bias 1) and a mask PNG marking it."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for c, colour in enumerate(COLOURS):
        for j in range(per_class):
            image = np.clip(np.array(colour) + rng.normal(0, 10, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            bias = j % 2 if artifact else 0
            mask = ""
            if bias:
                image[SQUARE] = 255
                m = np.zeros((SIZE, SIZE), np.uint8)
                m[SQUARE] = 255
                mask = f"masks/{c}_{j}.png"
                Image.fromarray(m).save(root / mask)
            path = f"img/{c}_{j}.{'png' if j % 3 else 'jpg'}"
            Image.fromarray(image).save(root / path)
            part = "train" if j < per_class * 2 // 3 else ("test" if j % 2 else "val")
            rows.append({"path": path, "label": c, "name": NAMES[c], "bias": bias, "mask": mask,
                         "split": part if split else ""})
    return rows


def write_csv(path, rows, columns=None):
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    rows = write_folder(root)
    return root, write_csv(root / "meta.csv", rows), rows


def one_line(info, *parts):
    msg = str(info.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, msg
    return msg


def test_the_table_is_read_and_each_row_decoded(folder):
    root, table, rows = folder
    source = open_folder(root, table, bias_column="bias", mask_column="mask", split_column="split", image_size=SIZE)
    assert len(source) == len(rows) and source.num_classes == 3 and source.classes is None
    np.testing.assert_array_equal(source.labels, [r["label"] for r in rows])
    np.testing.assert_array_equal(source.bias, [r["bias"] for r in rows])
    assert list(source.splits) == [r["split"] for r in rows]
    for i in (0, 1, 4, len(rows) - 1):  # png and jpg, with and without the artifact
        item = source[i]
        assert item["image"].dtype == np.uint8 and item["image"].shape == (SIZE, SIZE, 3)
        assert item["label"] == rows[i]["label"] and item["bias"] == rows[i]["bias"]
        want = np.zeros((SIZE, SIZE), bool)
        if rows[i]["bias"]:
            want[SQUARE] = True
        np.testing.assert_array_equal(item["mask"], want)
        # the pixels are the file's (JPEG within its loss), away from the square
        written = np.asarray(Image.open(root / rows[i]["path"]).convert("RGB"))
        np.testing.assert_array_equal(item["image"], written)
        assert np.abs(item["image"][8:, 8:].mean(axis=(0, 1)) - COLOURS[rows[i]["label"]]).max() < 12
    # resized (bilinear) and grey (ITU-R 601 luma, as Pillow converts): shapes and the brightness kept;
    # absent columns absent from the items
    small = open_folder(root, table, image_size=8, mode="grey")
    item = small[2]
    assert item["image"].shape == (8, 8, 1) and set(item) == {"image", "label"}
    assert abs(float(item["image"].mean()) - np.dot(COLOURS[0], (0.299, 0.587, 0.114))) < 12
    # random access holds no file: it pickles, and the copy decodes the same
    again = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(again[5]["image"], source[5]["image"])
    with pytest.raises(IndexError, match="outside the 36 rows"):
        source[36]


def test_names_become_sorted_class_indices_and_absolute_paths_work(folder, tmp_path):
    root, _, rows = folder
    rows = [{**r, "path": str(root / r["path"]) if i % 2 else r["path"]} for i, r in enumerate(rows)]
    table = write_csv(tmp_path / "named.csv", rows, ["path", "name"])
    source = open_folder(root, table, label_column="name")
    assert source.classes == ("ant", "cat", "dog") and source.num_classes == 3
    np.testing.assert_array_equal(source.labels, [source.classes.index(r["name"]) for r in rows])
    assert source[1]["label"] == source.classes.index("dog")


def test_parquet_tables_read_like_csv(folder, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root, table, rows = folder
    path = tmp_path / "meta.parquet"
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in ("path", "label", "name", "bias", "split")}), path)
    source = open_folder(root, path, bias_column="bias", split_column="split")
    csv_source = open_folder(root, table, bias_column="bias", split_column="split")
    np.testing.assert_array_equal(source.labels, csv_source.labels)
    np.testing.assert_array_equal(source.bias, csv_source.bias)
    np.testing.assert_array_equal(source.splits, csv_source.splits)
    assert open_folder(root, path, label_column="name").classes == ("ant", "cat", "dog")


def test_parquet_without_pyarrow_says_to_install_it(folder, tmp_path, monkeypatch):
    path = tmp_path / "meta.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ValueError) as info:
        read_table(path)
    one_line(info, str(path), "pip install pyarrow")


def refusals(root, rows, tmp_path):
    """(what, table rows or None, open_folder kwargs, error type, what the message names)."""
    missing = [dict(r) for r in rows]
    missing[6]["path"] = "img/nope.png"
    out_of_range = [dict(r) for r in rows]
    out_of_range[3]["label"] = 7
    not_int = [dict(r) for r in rows]
    not_int[9]["bias"] = "yes"
    typo = [dict(r) for r in rows]
    typo[4]["label"] = "1O"
    negative = [dict(r) for r in rows]
    negative[2]["bias"] = -1
    no_mask = [dict(r) for r in rows]
    no_mask[1]["mask"] = "masks/gone.png"
    return [
        ("missing image", missing, {}, FileNotFoundError, ["row 7", "'img/nope.png'", str(root)]),
        ("label out of range", out_of_range, {"num_classes": 3}, ValueError, ["row 4", "label 7", "3 classes"]),
        ("bias not an int", not_int, {"bias_column": "bias"}, ValueError, ["row 10", "'bias'", "'yes'", "not an int"]),
        ("label typo among ints", typo, {}, ValueError, ["row 5", "'1O'", "not an int"]),
        ("negative bias", negative, {"bias_column": "bias"}, ValueError, ["row 3", "non-negative"]),
        ("missing mask", no_mask, {"mask_column": "mask"}, FileNotFoundError, ["row 2", "'masks/gone.png'"]),
        ("missing column", rows, {"bias_column": "artifact"}, ValueError,
         ["no column 'artifact'", "path, label, name, bias, mask, split"]),
        ("empty table", [], {}, ValueError, ["empty"]),
    ]


@pytest.mark.parametrize("case", range(8))
def test_each_refusal_is_one_line_naming_the_file_and_row(folder, tmp_path, case):
    root, _, rows = folder
    what, table_rows, kwargs, error, parts = refusals(root, rows, tmp_path)[case]
    table = tmp_path / f"case{case}.csv"
    if table_rows:
        write_csv(table, table_rows)
    else:
        table.write_text("")
    with pytest.raises(error) as info:
        open_folder(root, table, **kwargs)
    one_line(info, str(table), *parts)


def test_missing_table_header_only_and_ragged_rows(folder, tmp_path):
    root, _, _ = folder
    with pytest.raises(FileNotFoundError) as info:
        open_folder(root, tmp_path / "nope.csv")
    one_line(info, str(tmp_path / "nope.csv"), "does not exist")
    header = tmp_path / "header.csv"
    header.write_text("path,label\n")
    with pytest.raises(ValueError) as info:
        open_folder(root, header)
    one_line(info, str(header), "no rows")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("path,label\nimg/0_0.jpg,0\nimg/0_1.png\n")
    with pytest.raises(ValueError) as info:
        open_folder(root, ragged)
    one_line(info, str(ragged), "row 2", "1 cells")
    with pytest.raises(FileNotFoundError) as info:
        open_folder(tmp_path / "nowhere", header)
    one_line(info, str(tmp_path / "nowhere"), "not a directory")


def test_an_undecodable_image_names_its_row(folder):
    root, table, rows = folder
    (root / rows[4]["path"]).write_bytes(b"not an image at all")
    source = open_folder(root, table)  # the table is fine: decoding is where it fails
    with pytest.raises(ValueError) as info:
        source[4]
    one_line(info, str(table), "row 5", rows[4]["path"], "cannot decode")
    with pytest.raises(ValueError) as info:
        datasets.load("folder", {"root": str(root), "metadata": str(table)})
    one_line(info, "row 5", "cannot decode")


def test_the_dataset_honours_the_split_column(folder):
    root, table, rows = folder
    ds = datasets.load("folder", {"root": str(root), "metadata": str(table), "bias_column": "bias",
                                  "mask_column": "mask", "split_column": "split", "image_size": 8}, seed=0)
    assert ds.name == "folder" and ds.num_classes == 3 and datasets.images("folder")
    assert set(ds.evals) == {"test", "val"}
    for name, batch in [("train", ds.train), *ds.evals.items()]:
        want = [r for r in rows if r["split"] == name]
        assert batch.x.shape == (len(want), 8, 8, 3) and batch.x.dtype == np.float32
        assert 0.0 <= batch.x.min() and batch.x.max() <= 1.0
        np.testing.assert_array_equal(batch.y, [r["label"] for r in want])
        np.testing.assert_array_equal(batch.bias, [r["bias"] for r in want])
        np.testing.assert_array_equal(batch.mask[:, :4, :4].all(axis=(1, 2)), [r["bias"] == 1 for r in want])
        assert not batch.mask[:, 4:, 4:].any()
    assert ds.concept is ds.train and ds.source == str(table)
    limited = datasets.load("folder", {"root": str(root), "metadata": str(table), "split_column": "split",
                                       "limit": 5, "image_size": 8})
    assert limited.train.x.shape[0] == 5 and limited.evals["test"].x.shape[0] == ds.evals["test"].x.shape[0]
    with pytest.raises(ValueError, match="no row of split 'training'.*its splits: test, train, val"):
        datasets.load("folder", {"root": str(root), "metadata": str(table), "split_column": "split",
                                 "train_split": "training"})


def test_without_a_split_column_a_seeded_stratified_fifth_is_held_out(folder):
    root, table, rows = folder
    settings = {"root": str(root), "metadata": str(table), "image_size": 8}
    a, b, c = (datasets.load("folder", settings, seed=s) for s in (0, 0, 1))
    assert set(a.evals) == {"test"}
    assert np.bincount(a.evals["test"].y).tolist() == [2, 2, 2]  # round(0.2 · 12) of each class
    assert np.bincount(a.train.y).tolist() == [10, 10, 10]
    np.testing.assert_array_equal(a.evals["test"].x, b.evals["test"].x)  # the data seed decides
    assert not np.array_equal(a.evals["test"].x, c.evals["test"].x)


def test_settings_refuse_what_cannot_load():
    with pytest.raises(ValueError, match="root must be the folder of your images"):
        datasets.settings("folder", {"metadata": "m.csv"})
    with pytest.raises(ValueError, match="metadata must be the metadata table"):
        datasets.settings("folder", {"root": "photos"})
    with pytest.raises(ValueError, match="image_size must be an int >= 8; got 4"):
        datasets.settings("folder", {"root": "photos", "metadata": "m.csv", "image_size": "4"})
    with pytest.raises(ValueError, match="image_mode must be one of"):
        datasets.settings("folder", {"root": "photos", "metadata": "m.csv", "image_mode": "cmyk"})


def test_train_on_a_folder_from_the_command_line(tmp_path, capsys):
    from jaxbias.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--root V folder:", "--metadata V folder:", "--label-column V folder:", "--bias-column V folder:",
                 "--mask-column V folder:", "--split-column V folder:", "--train-split V folder:",
                 "--image-mode {rgb,grey} folder:", "folder: side of the square images"):
        assert flag in text, flag
    assert "--mode V targeted_noise:" in text  # the method's flag keeps its name
    root = tmp_path / "photos"
    table = write_csv(root / "meta.csv", write_folder(root, per_class=30, split=False))
    argv = ["train", "--dataset", "folder", "--root", str(root), "--metadata", str(table), "--image-size", "8",
            "--bias-column", "bias", "--mask-column", "mask", "--model", "mlp", "--hidden", "32", "--epochs", "2",
            "--batch-size", "16", "--lr", "0.01", "--workdir", str(tmp_path / "run"), "--no-progress", "--json"]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["eval"]["test"]["accuracy"] > 0.6  # three colour classes: chance is 1/3
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["dataset"] == "folder" and record["data"]["root"] == str(root)
    assert main([*argv[:3], "--workdir", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "root must be the folder of your images" in capsys.readouterr().err


def test_dataset_name_with_a_value_is_the_named_setting(tmp_path, capsys):
    """``--dataset folder:PATH`` is ``--dataset folder --root PATH`` (same run, same numbers), in a config file too;
    a value for a dataset that takes none, an empty value and two different roots are refused in one line."""
    from jaxbias.cli import main
    from jaxbias.runs import RunConfig

    root = tmp_path / "photos"
    table = write_csv(root / "meta.csv", write_folder(root, per_class=10, split=False))
    common = ["--metadata", str(table), "--image-size", "8", "--model", "mlp", "--hidden", "8", "--epochs", "1",
              "--batch-size", "8", "--no-progress", "--json"]
    assert main(["train", "--dataset", "folder", "--root", str(root), *common, "--workdir", str(tmp_path / "a")]) == 0
    flags = json.loads(capsys.readouterr().out)
    assert main(["train", "--dataset", f"folder:{root}", *common, "--workdir", str(tmp_path / "b")]) == 0
    named = json.loads(capsys.readouterr().out)
    assert named["eval"] == flags["eval"] and named["history"][-1]["loss"] == flags["history"][-1]["loss"]
    record = json.loads((tmp_path / "b" / "config.json").read_text())
    assert record["dataset"] == "folder" and record["data"]["root"] == str(root)  # stored as the setting

    cfg = tmp_path / "run.toml"
    cfg.write_text(f'dataset = "folder:{root}"\nmodel = "mlp"\n[data]\nmetadata = "{table}"\nimage_size = 8\n')
    assert main(["train", "--config", str(cfg), "--hidden", "8", "--epochs", "1", "--batch-size", "8",
                 "--no-progress", "--json", "--workdir", str(tmp_path / "c")]) == 0
    assert json.loads(capsys.readouterr().out)["eval"] == flags["eval"]
    assert RunConfig(dataset=f"folder:{root}", data={"metadata": str(table)}).data.root == str(root)

    with pytest.raises(ValueError, match="give it once"):
        RunConfig(dataset=f"folder:{root}", data={"root": str(tmp_path)})
    assert main(["train", "--dataset", f"folder:{root}", "--root", str(tmp_path), *common,
                 "--workdir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give it once" in err[0] and not (tmp_path / "d").exists()
    for bad, words in ((f"adult:{root}", "takes no value after ':'"), ("folder:", "give its root after the colon"),
                       ("nope:x", "is unknown")):
        with pytest.raises(SystemExit):
            main(["train", "--dataset", bad, "--workdir", str(tmp_path / "e")])
        assert words in capsys.readouterr().err, bad


def test_heatmaps_of_a_streamed_folder_run_decode_only_the_images_shown(tmp_path, capsys, monkeypatch):
    """`evaluate --heatmaps` on a run that streams its folder: the dataset's first evaluation set's first n images
    (jaxbias.datasets.shown), decoded alone; the streamed arrays are never made whole."""
    from jaxbias.cli import main
    from jaxbias.data import lazy

    root = tmp_path / "photos"
    table = write_csv(root / "meta.csv", write_folder(root, per_class=10, split=False))
    assert main(["train", "--dataset", f"folder:{root}", "--metadata", str(table), "--image-size", "8", "--stream",
                 "true", "--model", "simple_conv", "--channels", "2,2,2,2", "--epochs", "1", "--batch-size", "8",
                 "--no-progress", "--workdir", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    decoded = []
    real = lazy.LazyImages.__getitem__
    monkeypatch.setattr(lazy.LazyImages, "__getitem__", lambda self, i: decoded.append(len(real(self, i))) or
                        real(self, i))
    assert main(["evaluate", "--workdir", str(tmp_path / "run"), "--heatmaps", "--n", "3", "--out",
                 str(tmp_path / "maps"), "--json"]) == 0
    assert (tmp_path / "maps" / "heatmaps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 3 in decoded and max(decoded) <= 512  # the shown rows, and the evaluation's batches: never all at once


def test_reduced_decoding_scales_large_jpegs_while_decoding_and_leaves_other_files_alone(tmp_path):
    """decode=reduced asks libjpeg for a 1/2-, 1/4- or 1/8-scale decode (at least the target size) before the
    resize: the same picture within a few grey levels, not the same pixels (so the reduction happened), and a PNG
    decodes exactly as with decode=full."""
    rng = np.random.default_rng(1)
    coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    photo = np.asarray(Image.fromarray(coarse).resize((256, 192), Image.Resampling.BICUBIC))
    photo = np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "a.jpg", quality=92)
    Image.fromarray(photo).save(tmp_path / "b.png")
    write_csv(tmp_path / "meta.csv", [{"path": "a.jpg", "label": 0}, {"path": "b.png", "label": 1}])
    full, reduced = (open_folder(tmp_path, tmp_path / "meta.csv", image_size=40, decode=d) for d in ("full", "reduced"))
    assert reduced.decode == "reduced" and pickle.loads(pickle.dumps(reduced)).decode == "reduced"
    a_full, a_reduced = full.read(0, "image").astype(int), reduced.read(0, "image").astype(int)
    assert a_full.shape == a_reduced.shape == (40, 40, 3)
    assert np.abs(a_full - a_reduced).max() > 0  # decoded at 1/4 scale (64x48), not at full size
    assert np.abs(a_full - a_reduced).mean() < 4  # the same picture
    np.testing.assert_array_equal(full.read(1, "image"), reduced.read(1, "image"))  # PNG: no reduced decode
    with pytest.raises(ValueError, match="decode must be one of"):
        open_folder(tmp_path, tmp_path / "meta.csv", decode="fast")
    with pytest.raises(ValueError, match="decode must be one of"):
        datasets.settings("folder", {"root": "photos", "metadata": "m.csv", "decode": "fast"})
