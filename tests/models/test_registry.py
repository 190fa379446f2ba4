"""The model registry: a model of yours is one register call; the CLI flags, config files, config.json and
restore follow its Settings."""
import dataclasses
import json
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp
import pytest

from jaxbias import models, runs
from jaxbias.models.layers import check_hooks, tap


@dataclasses.dataclass(frozen=True)
class TinySettings:
    """A one-hidden-layer net.

    Attributes:
      width: units of the hidden layer.
      act: the hidden layer's nonlinearity.
    """

    CHOICES: ClassVar[dict] = {"act": ("relu", "tanh")}
    width: int = 16
    act: str = "relu"


class Tiny(nn.Module):
    width: int = 16
    act: str = "relu"
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train, perturb=None, edit=None):
        acts = {}
        f = nn.relu if self.act == "relu" else jnp.tanh
        h = tap("hidden", f(nn.Dense(self.width, name="fc")(x.reshape(x.shape[0], -1))), acts, perturb, edit)
        logits = tap("logits", nn.Dense(self.num_classes, name="out")(h), acts, perturb, edit)
        check_hooks(acts, perturb, edit)
        return logits, acts


@pytest.fixture
def tiny():
    entry = models.register("tiny_net", Tiny, TinySettings)
    yield entry
    models.unregister("tiny_net")


def test_a_registered_model_trains_from_the_cli_and_resumes(tiny, tmp_path, capsys):
    from jaxbias import cli

    assert "tiny_net" in models.available()
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    # (another model with a `width` setting, e.g. one a docs example registered in this process, shares the flag)
    assert "--width V" in text and "tiny_net: units of the hidden layer." in text
    assert "tiny_net: the hidden layer's nonlinearity. (default relu)" in text
    wd = tmp_path / "run"
    argv = ["train", "--dataset", "biased_mnist", "--rho", "0.0", "--model", "tiny_net", "--width", "48",
            "--act", "tanh", "--epochs", "3", "--batch-size", "64", "--lr", "0.001", "--decay-every", "0",
            "--no-progress", "--json", "--workdir", str(wd)]
    assert cli.main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["eval"]["unbiased"]["accuracy"] > 0.4  # ten classes (chance 0.1): the net learnt the digits
    record = json.loads((wd / "config.json").read_text())
    assert record["model"] == {"name": "tiny_net", "width": 48, "act": "tanh", "num_classes": 10}
    run = runs.restore(wd)  # the module rebuilt from config.json
    assert (run.module.width, run.module.act, run.module.num_classes) == (48, "tanh", 10)
    assert run.state.params["fc"]["kernel"].shape[-1] == 48
    assert cli.main([*argv[:-3], "--epochs", "4", "--resume", "--workdir", str(wd)]) == 0
    capsys.readouterr()
    assert runs.restore(wd).epoch == 4
    # another model's flag, a value outside the choices, another width on resume: refused, nothing left behind
    assert cli.main([*argv[:5], "--model", "tiny_net", "--hidden", "8", "--workdir", str(tmp_path / "b")]) == 2
    assert "--hidden is a setting of mlp, not of model 'tiny_net'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*argv[:5], "--model", "tiny_net", "--act", "gelu", "--workdir", str(tmp_path / "c")])
    assert cli.main([*argv[:-3], "--width", "8", "--epochs", "5", "--resume", "--workdir", str(wd)]) == 2
    assert "width" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_a_registered_model_in_run_configs_and_config_files(tiny, tmp_path):
    config = runs.RunConfig(model="tiny_net", model_settings={"width": "32"})
    assert config.model_settings == TinySettings(width=32)
    assert config.model_dict() == {"name": "tiny_net", "width": 32, "act": "relu"}
    assert runs.RunConfig.from_dict(config.to_dict()) == config.replace(data_seed=0)
    assert config.replace(act="tanh").model_settings == TinySettings(width=32, act="tanh")
    assert config.replace(model="mlp").model_settings == models.settings("mlp")  # another model: its defaults
    (tmp_path / "run.toml").write_text('model = "tiny_net"\nwidth = 12\n')
    assert runs.RunConfig.load(tmp_path / "run.toml").model_settings == TinySettings(width=12)
    with pytest.raises(ValueError, match="act"):
        runs.RunConfig(model="tiny_net", model_settings={"act": "gelu"})
    with pytest.raises(ValueError, match="hidden is a setting of model mlp, not of model .tiny_net."):
        runs.RunConfig.from_dict({"model": "tiny_net", "hidden": [8]})


def test_register_refuses_what_is_not_a_model(tiny):
    @dataclasses.dataclass(frozen=True)
    class WithClasses:
        num_classes: int = 3

    with pytest.raises(ValueError, match="must be an identifier"):
        models.register("tiny net", Tiny, TinySettings)
    with pytest.raises(ValueError, match="num_classes comes from the data"):
        models.register("other", Tiny, WithClasses)
    with pytest.raises(ValueError, match="Settings must be a dataclass"):
        models.register("other", Tiny, dict)
    with pytest.raises(ValueError, match="registered already"):
        models.register("tiny_net", models.MLP)
    assert models.register("tiny_net", Tiny, TinySettings) is not None  # the same factory again: a no-op
    with pytest.raises(ValueError, match="model 'nope' is unknown"):
        models.get("nope")
