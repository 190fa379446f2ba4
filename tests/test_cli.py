import json

import pytest

from jaxbias import cli


def test_help_of_every_command(capsys):
    for cmd in ("demo", "train", "evaluate"):
        with pytest.raises(SystemExit) as e:
            cli.main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: jaxbias " + cmd in capsys.readouterr().out


def test_bad_arguments_are_rejected(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["train", "--rho", "1.5", "--workdir", str(tmp_path)])
    assert "--rho must be in [0, 1]" in capsys.readouterr().err
    code = cli.main(["train", "--method", "nope", "--epochs", "1", "--workdir", str(tmp_path / "w"), "--no-progress"])
    assert code == 2
    assert "method 'nope' is unknown" in capsys.readouterr().err
    assert cli.main(["evaluate", "--workdir", str(tmp_path / "missing")]) == 2


def test_train_evaluate_resume_roundtrip(capsys, tmp_path):
    wd = str(tmp_path / "run")
    common = ["train", "--rho", "0.99", "--method", "vanilla", "--channels", "2,2,2,2", "--batch-size", "500",
              "--workdir", wd, "--no-progress", "--json"]
    assert cli.main(common + ["--epochs", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["config"]["source"] == "offline"
    assert set(first["eval"]) == {"biased", "unbiased"}
    # an existing workdir needs --resume
    assert cli.main(common + ["--epochs", "2"]) == 2
    capsys.readouterr()
    assert cli.main(common + ["--epochs", "2", "--resume"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["resumed_from"] == 1 and [h["epoch"] for h in second["history"]] == [1, 2]
    assert cli.main(["evaluate", "--workdir", wd, "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["epoch"] == 2
    for split in ("biased", "unbiased"):
        assert ev["eval"][split]["accuracy"] == pytest.approx(second["eval"][split]["accuracy"])
