"""The run layer (jaxbias.runs): the run configuration, config files, config.json, restore, exit codes."""
import json

import numpy as np
import pytest

from jaxbias import cli, runs
from jaxbias.runs import RunConfig


def test_config_round_trips_through_json():
    config = RunConfig(dataset="artifact_mnist", data={"artifact": "blend", "p": 0.7}, model="mlp", model_settings={"hidden": (32, 16)},
                       method="rrr", hparams={"lam": "10", "variant": "cosine"}, epochs=3, decay_every=0, seed=4,
                       members=({"lam": 1.0, "seed": 0}, {"lam": 2.0, "seed": 1}), feed="host")
    assert config.hparams == {"lam": 10.0, "variant": "cosine"}  # typed once, from text or values
    assert config.decay_every is None and config.resolved_data_seed == 4
    text = json.dumps(config.to_dict())
    back = RunConfig.from_dict(json.loads(text))
    assert back == config.replace(data_seed=4)  # config.json records the data seed it used
    assert RunConfig.from_dict(back.to_dict()) == back


def test_a_config_is_immutable_and_hashable():
    config = RunConfig(method="rrclarc", init_from="base", hparams={"lam": 2, "classes": [0]},
                       members=({"lam": 1.0, "seed": 0},))
    with pytest.raises(TypeError):
        config.hparams["lam"] = 3.0
    with pytest.raises(TypeError):
        config.members[0]["lam"] = 3.0
    assert config.hparams == {"lam": 2.0, "classes": (0,)} and dict(config.hparams)["lam"] == 2.0
    assert hash(config) == hash(RunConfig.from_dict(config.to_dict()).replace(data_seed=None))
    assert len({config, config.replace(hparams={"lam": 2.0, "classes": (0,)})}) == 1
    assert json.loads(json.dumps(config.to_dict()))["hparams"] == {"lam": 2.0, "classes": [0]}


@pytest.mark.parametrize("bad, message", [
    ({"data": {"rho": 1.5}}, "rho must be in [0, 1]"),
    ({"data": {"rhoo": 0.5}}, "unknown settings of dataset 'biased_mnist' ['rhoo']"),
    ({"dataset": "adult", "data": {"rho": 0.5}}, "unknown settings of dataset 'adult' ['rho']"),
    ({"method": "fmd"}, "post-hoc"),
    ({"method": "rrclarc"}, "init_from"),
    ({"method": "end", "hparams": {"alpha": "x"}}, "hyperparameter 'alpha' of method 'end' expects float"),
    ({"method": "rrr", "hparams": {"alpha": 1.0}}, "hyperparameter 'alpha' is not one of method 'rrr'"),
    ({"feed": "disk"}, "feed must be one of"),
    ({"model_settings": {"channels": (4, 0)}}, "channels must be positive ints, one per block"),
    ({"model_settings": {"hidden": (4,)}}, "unknown settings of model 'simple_conv' ['hidden']"),
    ({"model": "resnet50"}, "model .resnet50. is unknown; expected one of"),
    ({"trainable": ("fc",)}, "set init_from"),
])
def test_bad_settings_name_the_setting(bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RunConfig(**bad)


def test_config_file_toml_and_json(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('dataset = "adult"\nmodel = "mlp"\nhidden = [64, 32]\nmethod = "end"\nepochs = 5\n'
                    'lr = 1\n[hparams]\nalpha = 2\n')
    config = RunConfig.load(toml, epochs=7)  # overrides win
    assert (config.dataset, config.model_settings.hidden, config.epochs, config.lr) == ("adult", (64, 32), 7, 1.0)
    assert config.hparams == {"alpha": 2.0}
    js = tmp_path / "run.json"
    js.write_text(json.dumps(config.to_dict()))
    assert RunConfig.load(js) == config.replace(data_seed=0)
    (tmp_path / "bad.toml").write_text("epochs = 5\nepoch = 3\n")
    with pytest.raises(ValueError, match=r"bad.toml.*unknown run settings \['epoch'\]"):
        RunConfig.load(tmp_path / "bad.toml")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json' is not valid JSON"):
        RunConfig.load(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        RunConfig.load(tmp_path / "missing.toml")


def test_config_file_hparams_follow_the_method_given_as_a_flag(tmp_path):
    """A file's [hparams] are checked against the method that results (--method), not the file's default."""
    parser = cli.build_parser()
    cfg = tmp_path / "run.toml"
    cfg.write_text("epochs = 2\n[hparams]\nalpha = 2.0\n")  # no method in the file: vanilla, which has no alpha
    config = cli.run_config(parser.parse_args(["train", "--workdir", "w", "--config", str(cfg), "--method", "end", "--beta", "0.5"]))
    assert (config.method, config.epochs, config.hparams) == ("end", 2, {"alpha": 2.0, "beta": 0.5})
    with pytest.raises(ValueError, match="not one of method 'vanilla'"):  # without --method, the file is wrong
        cli.run_config(parser.parse_args(["train", "--workdir", "w", "--config", str(cfg)]))
    other = tmp_path / "rrr.toml"  # a file for another method: its hyperparameters stay with it
    other.write_text('method = "rrr"\n[hparams]\nlam = 5.0\n')
    config = cli.run_config(parser.parse_args(["train", "--workdir", "w", "--config", str(other), "--method", "end"]))
    assert (config.method, config.hparams) == ("end", {})
    assert cli.run_config(parser.parse_args(["train", "--workdir", "w", "--config", str(other)])).hparams == {"lam": 5.0}


@pytest.mark.usefixtures("fewer_digits")
def test_cli_config_file_flags_override_and_config_json_repeats_the_run(tmp_path, capsys):
    """`train --config` + a flag; the run's config.json, given back as --config, repeats the run exactly."""
    cfg = tmp_path / "run.toml"
    cfg.write_text('method = "end"\nchannels = [2, 2, 2, 2]\nbatch_size = 500\nepochs = 3\nrho = 0.9\n'
                   '[hparams]\nalpha = 0.5\nbeta = 0.25\n')
    first = tmp_path / "first"
    assert cli.main(["train", "--config", str(cfg), "--epochs", "1", "--beta", "0.75", "--workdir", str(first),
                     "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # stdout holds the JSON alone
    saved = json.loads((first / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["data"]["rho"] == 0.9 and saved["hparams"] == {"alpha": 0.5, "beta": 0.75}
    assert saved["model"]["channels"] == [2, 2, 2, 2] and out["config"] == saved
    again = tmp_path / "again"
    assert cli.main(["train", "--config", str(first / "config.json"), "--workdir", str(again), "--no-progress",
                     "--json"]) == 0
    repeat = json.loads(capsys.readouterr().out)
    assert repeat["history"][0]["loss"] == out["history"][0]["loss"]
    assert repeat["eval"] == out["eval"]
    # resuming with other settings than the workdir's is refused, naming them
    assert cli.main(["train", "--config", str(cfg), "--epochs", "2", "--rho", "0.8", "--beta", "0.75", "--workdir",
                     str(first), "--resume", "--no-progress"]) == cli.USAGE_ERROR
    assert "configured differently (rho" in capsys.readouterr().err
    # a diverging run is a run failure (1), not a usage error (2)
    assert cli.main(["train", "--config", str(cfg), "--epochs", "1", "--lr", "1e38", "--batch-size", "100", "--workdir",
                     str(tmp_path / "nan"), "--no-progress"]) == cli.RUN_FAILED
    assert "the run failed: FloatingPointError" in capsys.readouterr().err


@pytest.mark.usefixtures("fewer_digits")
def test_restore_reads_the_state_without_fitting_anything(tmp_path, monkeypatch):
    """A corrected (RR-ClArC) run restores into eval_shape's template: the CAV comes from the checkpoint."""
    from jaxbias.methods import _clarc

    base = runs.train(RunConfig(dataset="artifact_mnist", model_settings={"channels": (2, 2, 2, 2)}, batch_size=100, epochs=1),
                      workdir=str(tmp_path / "base"), progress=False)
    fixed = runs.train(RunConfig(dataset="artifact_mnist", method="rrclarc", init_from=base, epochs=1,
                                 batch_size=100, hparams={"lam": 1.0}), workdir=str(tmp_path / "rr"), progress=False)
    assert fixed.record["init_from"] == str(tmp_path / "base")  # a Run passed in memory records its workdir

    def no_fit(*args, **kwargs):
        raise AssertionError("restore fitted a CAV")

    monkeypatch.setattr(_clarc, "fit_cav", no_fit)
    back = runs.restore(str(tmp_path / "rr"))
    np.testing.assert_array_equal(np.asarray(back.state.method_state.cav), np.asarray(fixed.state.method_state.cav))
    assert back.config == fixed.config.replace(init_from=str(tmp_path / "base"), data_seed=0)
    assert back.epoch == 1 and [h["epoch"] for h in back.history] == [1]


@pytest.mark.usefixtures("fewer_digits")
def test_a_sweep_member_is_a_run_passed_on_in_memory(tmp_path):
    """runs.sweep returns a Sweep; member(i) is a Run with its own settings that evaluates and starts a correction."""
    sw = runs.sweep(RunConfig(dataset="artifact_mnist", model_settings={"channels": (2, 2, 2, 2)}, batch_size=100, epochs=1,
                              members=({"lr": 1e-3, "seed": 0}, {"lr": 3e-3, "seed": 1})), progress=False)
    assert len(sw) == 2 and sw.results["traces"] == 1
    member = sw.member(1)
    assert (member.config.lr, member.config.seed, member.config.members) == (3e-3, 1, None)
    dataset = member.config.load_data()
    assert member.evaluate(dataset) == sw.results["members"][1]["eval"]  # the member's own weights
    assert member.evaluate(dataset) != sw.member(0).evaluate(dataset)
    with pytest.raises(ValueError, match="member index 2 is out of range for a sweep of 2 members"):
        sw.member(2)
    fixed = runs.train(RunConfig(dataset="artifact_mnist", method="rrclarc", init_from=member, epochs=1,
                                 batch_size=100, trainable=("fc",), hparams={"lam": 1.0}), progress=False)
    head = lambda run: np.asarray(run.state.params["fc"]["kernel"])  # noqa: E731
    conv = lambda run: np.asarray(run.state.params["conv1"]["kernel"])  # noqa: E731
    np.testing.assert_array_equal(conv(fixed), conv(member))  # started from member 1, only its head trained
    assert not np.array_equal(head(fixed), head(member))
