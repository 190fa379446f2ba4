"""FMD end to end: external pairs and evaluation splits, reports against direct computations, the CLI."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias.runs import unlearning as unlearn
from jaxbias.cli import main
from jaxbias.methods import fmd

FIELDS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
          "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country"]


def _adult_file(path, n=400, seed=0):
    """Synthetic Adult records whose label leans on sex (the bias FMD should remove)."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        sex = "Male" if rng.random() < 0.6 else "Female"
        edu = int(rng.integers(1, 17))
        y = (edu / 16 + 0.5 * (sex == "Male") + 0.3 * rng.normal()) > 0.8
        rec = [int(rng.integers(17, 90)), rng.choice(["Private", "State-gov"]), int(rng.integers(1e4, 1e6)),
               rng.choice(["Bachelors", "HS-grad"]), edu, rng.choice(["Never-married", "Divorced"]),
               rng.choice(["Sales", "Tech-support"]), rng.choice(["Husband", "Wife"]),
               rng.choice(["White", "Black", "Other"]), sex, int(rng.choice([0, 5000])), 0, int(rng.integers(10, 60)),
               "United-States"]
        lines.append(", ".join(str(v) for v in rec) + (", >50K" if y else ", <=50K"))
    path.write_text("\n".join(lines) + "\n")
    return path


def _trained(tmp_path_factory, dataset, hidden, epochs):
    """The workdir of a ``jaxbias train`` run of the MLP on ``dataset``."""
    work = tmp_path_factory.mktemp(f"fmd_{dataset}")
    assert main(["train", "--dataset", dataset, "--model", "mlp", "--hidden", hidden, "--epochs", str(epochs),
                 "--batch-size", "64", "--workdir", str(work), "--no-progress", "--json"]) == 0
    return work


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    return _trained(tmp_path_factory, "biased_mnist", "32,32", 2)


def test_biased_mnist_split(mnist_run):
    from jaxbias.runs.recipes import load_dataset

    data, _, _ = load_dataset("biased_mnist", seed=0)
    split = unlearn.split_biased_mnist(data, external=50, seed=3)
    x, x_cf, y = split.pairs
    assert x.shape == (50, 28, 28, 3) and x_cf.shape == x.shape
    n_eval = data.biased_x.shape[0] - 50
    assert split.eval_pairs[0].shape[0] == 9 * n_eval
    assert split.eval_sets["biased"][0].shape[0] == n_eval
    # the external digits are not among the evaluation digits
    ext_set = {xx.tobytes() for xx in x}
    assert not ext_set & {xx.tobytes() for xx in split.eval_sets["biased"][0]}
    # training counterfactuals: the same digits on a different colour
    diff = np.any(split.train_cf != data.train_x, axis=-1)
    assert np.all(diff.any(axis=(1, 2)))
    with pytest.raises(ValueError, match="external"):
        unlearn.split_biased_mnist(data, external=0)


def test_report_against_direct_computation(mnist_run):
    from jaxbias.runs.recipes import load_dataset, restore_workdir

    data, _, _ = load_dataset("biased_mnist", seed=0)
    split = unlearn.split_biased_mnist(data, external=100, seed=0)
    run = restore_workdir(str(mnist_run))
    logits_fn = unlearn._logits_fn(run.module, run.state.model_state)
    params = run.state.params
    rep = unlearn.report(logits_fn, params, split)
    want = float(fmd.counterfactual_bias(logits_fn, params, *split.eval_pairs))
    assert rep["bias"] == pytest.approx(want, rel=1e-5)
    ux, uy = split.eval_sets["unbiased"]
    assert rep["accuracy"]["unbiased"] == pytest.approx(float(np.mean(np.argmax(logits_fn(params, ux), -1) == uy)))


def test_cli_unlearn_mnist(mnist_run, tmp_path, capsys):
    out = tmp_path / "edited"
    assert main(["unlearn", "--from", str(mnist_run), "--external", "100", "--params", "last", "--out", str(out),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["pairs"] == 100 and res["fmd"]["block"] == ["out"]
    b0, b1 = res["fmd"]["bias_pairs"]
    assert b1 <= b0 and res["fmd"]["seconds"] > 0 and res["fmd"]["scale"] > 0
    assert {"before", "fmd", "finetune"} <= set(res)
    saved = np.load(out / "params.npz")
    assert "out/kernel" in saved.files and "fc1/kernel" in saved.files
    # only the last layer changed
    from jaxbias.runs.recipes import restore_workdir

    params = restore_workdir(str(mnist_run)).state.params
    np.testing.assert_array_equal(saved["fc1/kernel"], np.asarray(params["fc1"]["kernel"]))
    assert not np.array_equal(saved["out/kernel"], np.asarray(params["out"]["kernel"]))
    assert json.loads((out / "report.json").read_text())["fmd"]["block"] == ["out"]
    # human-readable output
    assert main(["unlearn", "--from", str(mnist_run), "--params", "last2", "--no-baseline"]) == 0
    text = capsys.readouterr().out
    assert "| before |" in text and "| fmd |" in text and "fc2" in text
    # Newton steps: the first is the single-step edit, the later ones only lower B on the pairs
    assert main(["unlearn", "--from", str(mnist_run), "--params", "last", "--steps", "3", "--no-baseline",
                 "--json"]) == 0
    multi = json.loads(capsys.readouterr().out)["fmd"]
    assert len(multi["step_scales"]) == 3 and multi["step_scales"][0] == pytest.approx(res["fmd"]["scale"])
    assert multi["bias_pairs"][1] <= b1 + 1e-7


def test_cli_unlearn_bad_input(mnist_run, tmp_path, capsys):
    assert main(["unlearn", "--from", str(mnist_run), "--params", "fc9", "--no-baseline"]) == 2
    assert "fc9" in capsys.readouterr().err
    assert main(["unlearn", "--from", str(mnist_run), "--external", "0", "--no-baseline"]) == 2
    assert "external" in capsys.readouterr().err
    assert main(["unlearn", "--from", str(mnist_run), "--steps", "0", "--no-baseline"]) == 2
    assert "steps" in capsys.readouterr().err
    assert main(["unlearn", "--from", str(tmp_path), "--no-baseline"]) == 2
    assert "config.json" in capsys.readouterr().err
    # the true Hessian over all layers of a ReLU network away from a minimum is indefinite without damping
    assert main(["unlearn", "--from", str(mnist_run), "--params", "all", "--curvature", "hessian", "--damping", "0",
                 "--no-baseline"]) == 2
    assert "damping" in capsys.readouterr().err


def test_cli_adult_train_and_unlearn(tmp_path, capsys):
    path = _adult_file(tmp_path / "adult.data")
    work = tmp_path / "run"
    assert main(["train", "--dataset", "adult", "--data-path", str(path), "--model", "mlp", "--hidden", "16",
                 "--epochs", "30", "--batch-size", "64", "--decay-every", "0", "--workdir", str(work),
                 "--no-progress", "--json"]) == 0
    capsys.readouterr()
    assert main(["unlearn", "--from", str(work), "--external", "20", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    before, after = res["before"], res["fmd"]
    assert 0 <= before["dp_gap"] <= 1 and len(before["group_accuracy"]) == 2
    assert res["pairs"] == 20 and after["bias_pairs"][1] <= after["bias_pairs"][0]
    # the report's fairness views against NumPy
    from jaxbias.runs.recipes import load_dataset, restore_workdir

    data, _, _ = load_dataset("adult", seed=0, data_path=str(path))
    split = unlearn.split_adult(data, external=20, seed=0)
    run = restore_workdir(str(work))
    f = unlearn._logits_fn(run.module, run.state.model_state)
    ex, ey = split.eval_sets["test"]
    pred = np.argmax(np.asarray(f(run.state.params, jnp.asarray(ex))), -1)
    rates = [np.mean(pred[split.groups == g] == 1) for g in (0, 1)]
    assert before["dp_gap"] == pytest.approx(abs(rates[0] - rates[1]))
    # sex is binary: one counterfactual per external record, differing only in the sex columns
    x, x_cf, _ = split.pairs
    changed = np.flatnonzero(np.any(x != x_cf, axis=0))
    assert set(changed) == set(data.protected_columns)


def test_edit_is_compiled_once(mnist_run):
    """A second edit with the same model function and shapes does not retrace."""
    from jaxbias.runs.recipes import load_dataset, restore_workdir

    data, _, _ = load_dataset("biased_mnist", seed=0)
    run = restore_workdir(str(mnist_run))
    f = unlearn._logits_fn(run.module, run.state.model_state)
    traces = []

    def logits_fn(p, x):
        traces.append(1)
        return f(p, x)

    hp = fmd.Hparams(params="last")
    for seed in (0, 1):
        split = unlearn.split_biased_mnist(data, external=30, seed=seed)
        fmd.debias(logits_fn, run.state.params, split.pairs, hp=hp)
        if seed == 0:
            first = len(traces)
    assert first > 0 and len(traces) == first
    jax.clear_caches()


@pytest.fixture(scope="module")
def artifact_run(tmp_path_factory):
    """A model trained on artifact_mnist (the stamp in half of the 0s): it learns the stamp as a 0-shortcut."""
    return _trained(tmp_path_factory, "artifact_mnist", "64", 4)


def test_unlearn_an_inserted_artifact_with_its_test_pairs(artifact_run, tmp_path, capsys):
    from jaxbias.runs import restore

    run = restore(str(artifact_run))
    dataset = run.config.load_data()
    split = unlearn.split_artifact(dataset, external=40, seed=1)
    x, x_cf, y = split.pairs
    clean, marked = dataset.evals["clean"], dataset.evals["artifact"]
    # each pair: a test image and the same image with the stamp, the bias-aligned one first (the stamped image
    # for the stamp's class 0, the clean image for the others)
    assert x.shape == x_cf.shape == (40, *np.shape(clean.x)[1:])
    own = (y == dataset.target_class)[:, None, None, None]
    assert 0 < own.sum() < 40
    hit = [int(np.flatnonzero((np.asarray(clean.x) == c).all(axis=(1, 2, 3)))[0]) for c in np.where(own, x_cf, x)]
    np.testing.assert_array_equal(np.where(own, x, x_cf), np.asarray(marked.x)[hit])
    np.testing.assert_array_equal(y, np.asarray(clean.y)[hit])
    assert len(split.eval_pairs[2]) == len(clean.y) - 40
    res = unlearn.unlearn_workdir(run, external=40, seed=1, hp=fmd.Hparams(damping=0.01), baseline=False)
    # B: the mean change of the true class's probability when the stamp is removed, on the held-out images
    logits = unlearn._logits_fn(run.module, run.state.model_state)
    ex, ex_cf, ey = split.eval_pairs
    p = jax.nn.softmax(logits(run.state.params, jnp.asarray(ex)))[np.arange(len(ey)), ey]
    p_cf = jax.nn.softmax(logits(run.state.params, jnp.asarray(ex_cf)))[np.arange(len(ey)), ey]
    assert res["before"]["bias"] == pytest.approx(float(np.mean(np.abs(p - p_cf))), rel=1e-5)
    assert res["before"]["bias"] > 0.01  # the stamp moves the biased model
    assert res["fmd"]["bias"] < res["before"]["bias"]  # the edit removes part of that dependence
    with pytest.raises(ValueError, match="no clean and artifact test sets"):
        unlearn.split_artifact(dataclasses.replace(dataset, evals={"test": clean}), external=5)
