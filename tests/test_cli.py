import json

import pytest

from jaxbias import cli


def test_help_of_every_command(capsys):
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    commands = sorted(sub.choices)
    assert {"demo", "train", "sweep", "correct", "unlearn", "evaluate", "attribute"} <= set(commands)
    for cmd in commands:
        with pytest.raises(SystemExit) as e:
            cli.main([cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: jaxbias " + cmd), cmd
        if cmd in ("train", "sweep"):  # the engine's flags reach both
            assert "--feed" in out and "--devices" in out


def test_version(capsys):
    from jaxbias import __version__

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"jaxbias {__version__}"


def test_bad_arguments_are_rejected(capsys, tmp_path):
    assert cli.main(["train", "--rho", "1.5", "--workdir", str(tmp_path / "r")]) == cli.USAGE_ERROR
    assert "rho must be in [0, 1]; got 1.5" in capsys.readouterr().err and not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as e:  # the choices are the method files found
        cli.main(["train", "--method", "nope", "--epochs", "1", "--workdir", str(tmp_path / "w"), "--no-progress"])
    assert e.value.code == cli.USAGE_ERROR and "invalid choice: 'nope'" in capsys.readouterr().err
    # a hyperparameter flag of another method, a post-hoc method's settings
    code = cli.main(["train", "--method", "rrr", "--alpha", "1", "--workdir", str(tmp_path / "w"), "--no-progress"])
    assert code == cli.USAGE_ERROR and "--alpha is a hyperparameter of end, not of method 'rrr'" in \
        capsys.readouterr().err
    code = cli.main(["train", "--method", "end", "--alpha", "x", "--workdir", str(tmp_path / "w"), "--no-progress"])
    assert code == cli.USAGE_ERROR and "hyperparameter 'alpha' of method 'end' expects float; got 'x'" in \
        capsys.readouterr().err
    assert cli.main(["evaluate", "--workdir", str(tmp_path / "missing")]) == 2


@pytest.mark.usefixtures("fewer_digits")
def test_train_evaluate_resume_roundtrip(capsys, tmp_path):
    wd = str(tmp_path / "run")
    common = ["train", "--rho", "0.99", "--method", "vanilla", "--channels", "2,2,2,2", "--batch-size", "500",
              "--workdir", wd, "--no-progress", "--json"]
    assert cli.main(common + ["--epochs", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["config"]["data"]["source"] == "offline"
    assert set(first["eval"]) == {"biased", "unbiased"}
    # an existing workdir needs --resume; the refused run (other seed) leaves the run's config.json as it was
    saved = (tmp_path / "run" / "config.json").read_text()
    assert cli.main(common + ["--epochs", "2", "--seed", "3"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.json").read_text() == saved
    assert cli.main(common + ["--epochs", "2", "--resume"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["resumed_from"] == 1 and [h["epoch"] for h in second["history"]] == [1, 2]
    assert cli.main(["evaluate", "--workdir", wd, "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["epoch"] == 2
    for split in ("biased", "unbiased"):
        assert ev["eval"][split]["accuracy"] == pytest.approx(second["eval"][split]["accuracy"])


@pytest.mark.usefixtures("fewer_digits")
def test_demo_reveals_the_stamp_and_rrclarc_removes_it(tmp_path, capsys):
    """`jaxbias demo --quick` end to end on (a fifth of) the offline data: every claim of the report holds, and
    each is checked here again on the numbers it is about (not on the report's own verdict alone)."""
    import json

    from jaxbias.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--json"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # --json: the JSON alone on stdout, progress on stderr
    assert "[demo] training the biased model" in captured.err
    for name in ("accuracy.png", "tcav_sens.png", "heatmaps.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "demo.json").read_text())
    assert saved["claims"] == printed["claims"]
    (v,) = saved["views"]
    base, rr, ft, rrr, pc = (v[k] for k in ("Vanilla", "RR-ClArC", "Vanilla fine-tune", "RRR", "P-ClArC"))
    # reveal: the stamp costs the biased model accuracy and pulls stamped digits to 0; TCAV beats random CAVs
    assert base["artifact"] < base["clean"] - 0.1 and base["artifact_flip_to_target"] > 0.1
    assert base["tcav"] > base["random_tcav_mean"] and base["tcav_p_value"] < 0.05
    assert base["r_bias_pull"] > 0.2  # the mask is a sixth of the image; more than that of class 0's relevance sits in it
    # revise: RR-ClArC above Vanilla on stamped digits, clean within 3 points, sensitivity and relevance down
    assert rr["artifact"] > base["artifact"] + 0.03 and rr["artifact"] > ft["artifact"]
    assert rr["clean"] > base["clean"] - 0.03
    assert rr["tcav_sens"] < base["tcav_sens"] and rr["r_bias_pull"] < base["r_bias_pull"]
    # the other methods are measured with the same views; P-ClArC (no training epochs) explained through its projection
    assert rrr["artifact_flip_to_target"] < base["artifact_flip_to_target"]
    assert 0 <= pc["r_bias"] <= 1 and pc["r_bias_pull"] != base["r_bias_pull"] and pc["seconds_per_epoch"] is None
    # cost: measured seconds per epoch, as a ratio to Vanilla fine-tuning's
    assert ft["cost_vs_vanilla"] == 1.0 and rr["cost_vs_vanilla"] == rr["seconds_per_epoch"] / ft["seconds_per_epoch"]
    # the report states each claim as it was measured, every one holding
    md = (out / "report.md").read_text()
    assert [c["name"] for c in saved["claims"]] == ["reveal_accuracy", "reveal_tcav", "reveal_lrp", "revise_artifact",
                                                    "revise_clean", "revise_tcav_sens", "revise_lrp", "cost"]
    for c in saved["claims"]:
        assert c["holds"], c["text"]
        assert f"- ✓ {c['text']}" in md
    assert "![heatmaps](heatmaps.png)" in md and "| RR-ClArC |" in md
