"""Controlled-artifact correction: latent sensitivity, the report, and `jaxbias correct` end to end."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import models
from jaxbias.runs.correction import artifact_report, latent_sensitivity
from jaxbias.types import Batch


@pytest.fixture(scope="module")
def small():
    module = models.create("simple_conv", channels=(3, 4, 5, 6), kernel_size=3, last_activation="tanh")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(6, 8, 8, 3)), jnp.float32)
    params, ms = models.init(module, jax.random.key(0), x)
    return module, params, ms, x


def test_latent_sensitivity_closed_form(small):
    """Above block4 the net is mean-pool + dense: ∂f_c/∂a_(v) = W[:, c] / (H·W) at every position v."""
    module, params, ms, x = small
    model = models.bind(module, ms, train=False)
    h = jnp.asarray(np.random.default_rng(1).normal(size=6), jnp.float32)
    h = h / jnp.linalg.norm(h)
    s = latent_sensitivity(model, params, x, h, layer="block4", target=3)
    assert s.shape == (6, 8, 8)
    expected = float(params["fc"]["kernel"][:, 3] @ h) / 64
    np.testing.assert_allclose(s, expected, rtol=1e-5)
    s_feat = latent_sensitivity(model, params, x, h, layer="features", target=3)
    np.testing.assert_allclose(s_feat, expected * 64, rtol=1e-5)


def test_latent_sensitivity_bad_input(small):
    module, params, ms, x = small
    model = models.bind(module, ms, train=False)
    with pytest.raises(ValueError, match="layer='nope'"):
        latent_sensitivity(model, params, x, jnp.ones(6), layer="nope", target=0)
    with pytest.raises(ValueError, match=r"cav has shape \(5,\)"):
        latent_sensitivity(model, params, x, jnp.ones(5), layer="block4", target=0)
    with pytest.raises(ValueError, match="target"):
        latent_sensitivity(model, params, x, jnp.ones(6), layer="block4", target=10)


def test_artifact_report_against_numpy(small):
    module, params, ms, x = small
    model = models.bind(module, ms, train=False)
    pred = np.asarray(model(params, x).logits).argmax(-1)
    y = np.array([pred[0], pred[1], (pred[2] + 1) % 10, pred[3], (pred[4] + 1) % 10, pred[5]], np.int32)
    evals = {"clean": Batch(x, jnp.asarray(y)), "artifact": Batch(x, jnp.asarray(y))}
    h = jnp.ones(6) / np.sqrt(6)
    target = int(y[0])
    rep = artifact_report(model, params, evals, cav=h, layer="block4", target_class=target, batch_size=4)
    assert rep["clean"] == pytest.approx(4 / 6)
    chosen = y == target
    assert rep["chosen_clean"] == pytest.approx(np.mean(pred[chosen] == y[chosen]))
    assert rep["other_clean"] == pytest.approx(np.mean(pred[~chosen] == y[~chosen]))
    assert rep["artifact_flip_to_target"] == pytest.approx(np.mean(pred[y != target] == target))
    s = np.asarray(latent_sensitivity(model, params, x, h, layer="block4", target=target))
    assert rep["tcav"] == pytest.approx(np.mean(s > 0))
    assert rep["tcav_sens"] == pytest.approx(np.mean(np.abs(s)), rel=1e-5)


@pytest.mark.usefixtures("fewer_digits")
def test_cli_train_then_correct(tmp_path, capsys):
    from jaxbias.cli import main

    base = tmp_path / "base"
    assert main(["train", "--dataset", "artifact_mnist", "--epochs", "1", "--batch-size", "100", "--channels",
                 "2,2,2,2", "--workdir", str(base), "--no-progress", "--json"]) == 0
    capsys.readouterr()
    assert main(["correct", "--from", str(base), "--method", "pclarc", "--epochs", "0", "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["method"] == "pclarc" and out["history"] == []
    for rep in (out["report"], out["base_report"]):
        assert 0 <= rep["clean"] <= 1 and 0 <= rep["tcav"] <= 1 and rep["tcav_sens"] >= 0
    assert out["report"]["tcav_sens"] != out["base_report"]["tcav_sens"]  # evaluated through the projection
    assert 0 <= out["base_report"]["r_bias"] <= 1 and 0 <= out["base_report"]["r_bias_chosen"] <= 1
    # LRP explains the corrected model through its projection: a map of its own, not the base's
    assert 0 <= out["report"]["r_bias"] <= 1 and out["report"]["r_bias"] != out["base_report"]["r_bias"]
    rr = tmp_path / "rr"
    assert main(["correct", "--from", str(base), "--method", "rrclarc", "--lam", "10", "--classes", "0",
                 "--criterion", "class", "--epochs", "1", "--batch-size", "100", "--trainable", "fc", "--workdir", str(rr),
                 "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["hparams"] == {"lam": 10.0, "criterion": "class", "classes": [0]}
    assert len(out["history"]) == 1 and "rr" in out["history"][0]
    assert out["config"]["trainable"] == ["fc"]
    assert 0 <= out["report"]["r_bias"] <= 1 and out["report"]["r_bias"] != out["base_report"]["r_bias"]
    # the fine-tuned run restores (its checkpoint carries the fitted CAV)
    assert main(["evaluate", "--workdir", str(rr), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["epoch"] == 1 and set(ev["eval"]) == {"clean", "artifact"}
    # evaluate reports along the base model's CAV, as correct did
    for k in ("clean", "tcav", "tcav_sens", "chosen_clean", "other_clean"):
        assert ev["artifact_report"][k] == pytest.approx(out["report"][k], rel=1e-5)
    # LRP heatmaps: base maps above the corrected model's; the run and its base are each restored once
    import jaxbias.runs
    import jaxbias.runs.measure

    restored, real_restore = [], jaxbias.runs.restore

    def counting_restore(workdir):
        restored.append(os.path.realpath(workdir))
        return real_restore(workdir)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jaxbias.runs, "restore", counting_restore)
        mp.setattr(jaxbias.runs.measure, "restore", counting_restore)
        assert main(["evaluate", "--workdir", str(rr), "--heatmaps", "--n", "3", "--out", str(tmp_path / "maps"),
                     "--json"]) == 0
    assert sorted(restored) == sorted([os.path.realpath(rr), os.path.realpath(base)])
    ev = json.loads(capsys.readouterr().out)
    assert ev["heatmaps"] == [str(tmp_path / "maps" / "heatmaps.png")]
    assert (tmp_path / "maps" / "heatmaps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", "--workdir", str(base), "--heatmaps", "--n", "0"]) == 2
    assert "n must be" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the choices are the training methods: FMD edits, it does not train
        main(["correct", "--from", str(base), "--method", "fmd"])


def test_correct_is_configured_by_its_dataclass(tmp_path, capsys):
    """`jaxbias correct`'s schedule flags are CorrectionConfig's fields with its defaults (none copied by hand), the
    correction's RunConfig is the base's with them replaced, and bad settings are refused in one line."""
    import dataclasses

    from jaxbias.cli import _settings_from_args, build_parser, main
    from jaxbias.runs import CorrectionConfig, Run, RunConfig, correct

    parser = build_parser()
    args = parser.parse_args(["correct", "--from", "b", "--method", "vanilla"])
    assert _settings_from_args(CorrectionConfig, args) == CorrectionConfig()
    args = parser.parse_args(["correct", "--from", "b", "--method", "vanilla", "--lr", "2e-3", "--trainable", "fc",
                              "--epochs", "0", "--cav-method", "ridge", "--seed", "4"])
    assert _settings_from_args(CorrectionConfig, args) == CorrectionConfig(lr=2e-3, trainable=("fc",), epochs=0,
                                                                            cav_method="ridge", seed=4)
    help_text = parser._subparsers._group_actions[0].choices["correct"].format_help()
    for f in dataclasses.fields(CorrectionConfig):
        assert "--" + f.name.replace("_", "-") in help_text

    base_cfg = RunConfig(dataset="artifact_mnist", epochs=7, lr=1e-3, decay_every=3, seed=2, batch_size=32)
    base = Run(config=base_cfg, record={}, module=None, state=None, method=None, hp=None)
    cfg = CorrectionConfig(epochs=2, lr=5e-4, trainable=["fc"]).run_config(base, "rrclarc", {"lam": 10.0})
    assert (cfg.method, dict(cfg.hparams), cfg.epochs, cfg.lr, cfg.batch_size, cfg.decay_every, cfg.seed,
            cfg.trainable, cfg.init_from) == ("rrclarc", {"lam": 10.0}, 2, 5e-4, 64, None, 0, ("fc",), base)
    assert cfg.data_seed == base_cfg.resolved_data_seed and cfg.dataset == "artifact_mnist"  # the base's images

    with pytest.raises(ValueError, match="^lr must be a positive float"):
        CorrectionConfig(lr=-1.0)
    with pytest.raises(ValueError, match="cav_method"):
        CorrectionConfig(cav_method="pca")
    with pytest.raises(TypeError, match="'lrr'.*not a field of CorrectionConfig"):
        correct(base=str(tmp_path / "nowhere"), method="vanilla", lrr=1e-3)  # refused before anything is read
    assert main(["correct", "--from", str(tmp_path / "b"), "--method", "vanilla", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch_size must be a positive int" in err[0]
    assert not (tmp_path / "b").exists()


def test_clarc_methods_need_a_base_model():
    from jaxbias.runs.recipes import train_model

    with pytest.raises(ValueError, match="init_from"):
        train_model(dataset="artifact_mnist", method="rrclarc", epochs=1)


def test_tcav_test_separates_a_planted_concept(small):
    """A head that reads exactly the concept direction: TCAV = 1 and random CAVs score ≈ 0.5 (p tiny)."""
    from jaxbias.runs.correction import tcav_test

    module, params, ms, x = small
    model = models.bind(module, ms, train=False)
    rng = np.random.default_rng(0)
    d = rng.normal(size=6)
    d /= np.linalg.norm(d)
    concept = np.repeat([0, 1], 60)
    acts = rng.normal(size=(120, 6)) + 3.0 * concept[:, None] * d  # the concept moves acts along d
    reader = jax.tree.map(lambda v: v, params)
    reader["fc"]["kernel"] = jnp.zeros_like(params["fc"]["kernel"]).at[:, 2].set(jnp.asarray(d, jnp.float32))
    out = tcav_test(model, reader, x, acts, concept, layer="block4", target=2, n_random=40, key=1)
    assert out["tcav"] == 1.0
    assert 0.2 < np.mean(out["random_tcav"]) < 0.8 and len(out["random_tcav"]) == 40
    assert out["p_value"] < 1e-6
    with pytest.raises(ValueError, match="n_random"):
        tcav_test(model, reader, x, acts, concept, layer="block4", target=2, n_random=1)


def test_lrp_r_bias_against_direct_computation():
    from jaxbias.runs.correction import lrp_r_bias
    from jaxbias.explain import lrp, to_graph
    from jaxbias.types import Batch

    module = models.create("simple_conv", channels=(2, 3, 3, 4), kernel_size=3)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(6, 10, 10, 3)), jnp.float32)
    params, ms = models.init(module, jax.random.key(0), x)
    y = np.array([0, 1, 0, 2, 0, 1])
    mask = np.zeros((6, 10, 10), bool)
    mask[:, :3, :4] = True
    out = lrp_r_bias(module, {"params": params, **ms}, Batch(x, y, None, mask), target_class=0, batch_size=4,
                     postprocess=False)
    graph = to_graph(module, {"params": params, **ms})
    rel = np.abs(np.asarray(lrp(graph, x, target=jnp.asarray(y)))).sum(-1)
    per = (rel * mask).sum((1, 2)) / rel.sum((1, 2))
    assert out["r_bias"] == pytest.approx(per.mean(), rel=1e-5)
    assert out["r_bias_chosen"] == pytest.approx(per[y == 0].mean(), rel=1e-5)
    pull = np.abs(np.asarray(lrp(graph, x[y != 0], target=0))).sum(-1)
    want = ((pull * mask[y != 0]).sum((1, 2)) / pull.sum((1, 2))).mean()
    assert out["r_bias_pull"] == pytest.approx(want, rel=1e-5)
    # the paper's post-processed (widened) mask takes a larger share
    wide = lrp_r_bias(module, {"params": params, **ms}, Batch(x, y, None, mask), target_class=0)
    assert wide["r_bias"] > out["r_bias"]
    with pytest.raises(ValueError, match="mask"):
        lrp_r_bias(module, {"params": params, **ms}, Batch(x, y))
