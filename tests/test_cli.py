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
    with pytest.raises(SystemExit):
        cli.main(["train", "--rho", "1.5", "--workdir", str(tmp_path)])
    assert "--rho must be in [0, 1]" in capsys.readouterr().err
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
    assert first["config"]["source"] == "offline"
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
def test_demo_writes_its_report_and_end_beats_vanilla(tmp_path, capsys):
    """`jaxbias demo` end to end on (a fifth of) the offline data at ρ = 0.9, 4 epochs per model: the report's
    claim holds (EnD above Vanilla on the unbiased test, Vanilla at chance there) and its numbers are the EnD
    experiment's for the same seed and budget (tests/experiments/test_end_biased_mnist.py)."""
    import json

    from jaxbias.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "4", "--rho", "0.9", "--out", str(out), "--no-progress", "--json"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # --json: the JSON alone on stdout, progress on stderr
    assert "[demo] training vanilla" in captured.err
    for name in ("demo.md", "demo.png", "demo.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "demo.md").read_text()
    assert "| Vanilla |" in md and "| EnD |" in md
    saved = json.loads((out / "demo.json").read_text())
    (vanilla,), (end,) = saved["runs"]["vanilla"], saved["runs"]["end"]
    for run in (vanilla, end):
        assert run["eval"]["unbiased"]["count"] == 200  # the offline test digits of fewer_digits
    assert vanilla["eval"]["biased"]["accuracy"] >= 0.95 and vanilla["eval"]["unbiased"]["accuracy"] <= 0.12
    assert end["eval"]["unbiased"]["accuracy"] >= vanilla["eval"]["unbiased"]["accuracy"] + 0.03
    assert end["eval"]["unbiased"]["conflicting"] > vanilla["eval"]["unbiased"]["conflicting"]
    assert printed["rho"] == 0.9 and printed["epochs"] == 4
