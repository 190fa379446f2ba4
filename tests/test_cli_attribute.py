"""`jaxbias attribute` end to end on tiny data, and its argument errors."""
import json

import numpy as np
import pytest

from jaxbias import cli


def test_attribute_end_to_end_json(tmp_path, capsys):
    out = tmp_path / "attr"
    argv = ["attribute", "--limit", "48", "--epochs", "1", "--patch", "16", "--stride", "8", "--batch-size", "16",
            "--widths", "4,8", "--blocks", "1,1", "--n", "3", "--out", str(out), "--no-progress", "--json"]
    assert cli.main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["positions"] == 49 and res["image_size"] == [64, 64] and res["widths"] == [4, 8]
    assert 0.0 <= res["ece"] <= 1.0 and 0.0 <= res["iou"] <= 1.0 and res["val_patches"] == 48 * 49
    assert sum(res["reliability"]["count"]) == 48 * 49 and len(res["history"]) == 1
    g = np.load(out / "general_map.npy")
    s = np.load(out / "specific_maps.npy")
    assert g.shape == (64, 64) and s.shape == (48, 64, 64) and g.min() == 0.0 and g.max() == pytest.approx(1.0)
    for png in ("maps.png", "reliability.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "attribution.json").read_text())["ece"] == res["ece"]


def test_attribute_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["attribute", "--help"])
    assert e.value.code == 0 and "usage: jaxbias attribute" in capsys.readouterr().out
    assert cli.main(["attribute", "--q", "1.5", "--out", str(tmp_path / "q")]) == 2
    assert "q must be a quantile in [0, 1]; got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()  # refused before anything is written
    with pytest.raises(SystemExit):
        cli.main(["attribute", "--measure", "median"])
    assert "invalid choice: 'median'" in capsys.readouterr().err
    # every RegionConfig field but seed (the data's --seed) is a flag with the class's default: none hand-copied
    import dataclasses

    from jaxbias.runs import RegionConfig

    args = cli.build_parser().parse_args(["attribute"])
    for f in dataclasses.fields(RegionConfig):
        if f.name != "seed":
            assert getattr(args, f.name) == f.default, f.name
    assert cli._settings_from_args(RegionConfig, args, skip=("seed",)) == RegionConfig()
    # the same for unlearn's FMD flags and fmd.Hparams
    from jaxbias.methods import fmd

    args = cli.build_parser().parse_args(["unlearn", "--from", "x"])
    assert cli._settings_from_args(fmd.Hparams, args) == fmd.Hparams()
    args = cli.build_parser().parse_args(["unlearn", "--from", "x", "--scale", "none", "--solver", "exact",
                                          "--top-k", "7", "--max-acc-drop", "0.1"])
    assert cli._settings_from_args(fmd.Hparams, args) == fmd.Hparams(scale=None, solver="exact", top_k=7,
                                                                      max_acc_drop=0.1)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["unlearn", "--help"])
    assert ":mod:" not in capsys.readouterr().out  # docstring roles shown as plain names
    code = cli.main(["attribute", "--limit", "8", "--patch", "16", "--stride", "5", "--out", str(tmp_path),
                     "--no-progress"])
    assert code == 2 and "stride=5 does not tile the image" in capsys.readouterr().err
    code = cli.main(["attribute", "--limit", "8", "--patch", "80", "--out", str(tmp_path), "--no-progress"])
    assert code == 2 and "patch=80 is larger than the image" in capsys.readouterr().err
    code = cli.main(["attribute", "--dataset", "celeba", "--data-dir", str(tmp_path / "none"), "--no-progress"])
    assert code == 2 and "celeb_a" in capsys.readouterr().err
