"""Consumers of a dataset besides training and `correct`, on a streamed folder: a sweep of several members and the
TCAV significance test read the images a batch at a time and give what they give on the same data in memory."""
import jax
import numpy as np
import pytest

from jaxbias import models as models_lib
from jaxbias.concepts import SignalSums, fit_cavs, layer_acts
from jaxbias.evaluation import tcav_test
from jaxbias.methods import vanilla
from jaxbias.sweep import fit_sweep

from test_stream_correct import BATCH, load, model, table  # noqa: F401  (fixtures)


def test_signal_sums_of_many_label_rows_equal_fit_cavs():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(41, 3, 3, 5)).astype(np.float32)
    labels = np.stack([rng.permutation(np.repeat([0, 1], [25, 16])) for _ in range(7)])
    sums = SignalSums("max")
    for start in range(0, 41, 6):
        sums.add(a[start:start + 6], labels[:, start:start + 6])
    np.testing.assert_allclose(sums.cav(), np.asarray(fit_cavs(a, labels, method="signal")), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sums.count, np.tile([25, 16], (7, 1)))
    with pytest.raises(ValueError, match="do not match the earlier batches"):
        sums.add(a[:4], labels[0, :4])  # one label row after batches of seven


@pytest.mark.parametrize("method,reg", [("signal", None), ("ridge", 1e-2)])
def test_tcav_test_streamed_equals_in_memory(table, model, gathered, method, reg):
    _, params, _, bound = model
    mem, lazy = load(table), load(table, stream=True)
    gathered[0] = 0
    art, concept = lazy.evals["artifact"], lazy.concept
    assert len(art.y) > BATCH and len(concept.y) > BATCH
    kw = {"layer": "block4", "target": 0, "n_random": 12, "key": 3, "method": method, "reg": reg,
          "batch_size": BATCH}
    acts = layer_acts(bound, params, mem.concept.x, "block4")
    whole = tcav_test(bound, params, mem.evals["artifact"].x, acts, mem.concept.bias, **kw)
    streamed = tcav_test(bound, params, art.x, concept=concept.bias, concept_x=concept.x, **kw)
    assert 0 < gathered[0] <= BATCH  # neither set was ever read whole
    assert whole.keys() == streamed.keys()
    for k, v in whole.items():
        assert streamed[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    # the scores are the release's #(s > 0) / #(s != 0) of s = grad . h, per position
    g = np.asarray(jax.grad(lambda p: bound(params, mem.evals["artifact"].x, perturb={"block4": p}).logits[:, 0].sum())(
        np.zeros(acts.shape[1:], np.float32)[None].repeat(len(mem.evals["artifact"].y), 0)))
    h = np.asarray(fit_cavs(np.asarray(acts), np.asarray(mem.concept.bias)[None], method=method,
                            regs=reg))[0]
    s = g.reshape(-1, g.shape[-1]) @ h
    assert whole["tcav"] == pytest.approx(np.sum(s > 0) / np.sum(s != 0))
    assert whole["tcav_sens"] == pytest.approx(np.mean(np.abs(s)), rel=1e-5)


def test_tcav_test_refuses_unclear_input(table, model):
    _, params, _, bound = model
    lazy = load(table, stream=True)
    art, concept = lazy.evals["artifact"], lazy.concept
    with pytest.raises(ValueError, match="one of them"):
        tcav_test(bound, params, art.x, concept=concept.bias, layer="block4", target=0)
    with pytest.raises(ValueError, match="concept must be 0/1 labels"):
        tcav_test(bound, params, art.x, concept=np.asarray(concept.bias)[:-1], concept_x=concept.x, layer="block4",
                  target=0)
    with pytest.raises(ValueError, match="reg must be None"):
        tcav_test(bound, params, art.x, concept=concept.bias, concept_x=concept.x, layer="block4", target=0,
                  reg=0.1)


def test_sweep_on_a_streamed_folder_equals_in_memory(table, gathered):
    mem, lazy = load(table), load(table, stream=True)
    module = models_lib.build("simple_conv", {"channels": [2, 2, 2, 2]}, num_classes=3)
    kw = {"module": module, "method": vanilla, "members": [{"seed": 0}, {"seed": 1, "lr": 3e-3}], "epochs": 2,
          "batch_size": BATCH, "lr": 1e-3}
    gathered[0] = 0
    streamed = fit_sweep(train=lazy.train, eval_sets=lazy.evals, **kw)
    # training read BATCH rows at a time; the evaluation reads up to its own batch of 512 rows (here a whole set)
    assert 0 < gathered[0] <= max(BATCH, *(len(e.y) for e in lazy.evals.values())) < len(lazy.train.y)
    # the same host feed (an in-memory set would take the device feed, whose fused gather rounds differently)
    whole = fit_sweep(train=mem.train, eval_sets=mem.evals, feed="host", **kw)
    for a, b in zip(jax.tree.leaves(whole.state.params), jax.tree.leaves(streamed.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [h[-1]["eval"] for h in whole.history] == [h[-1]["eval"] for h in streamed.history]


def _fmd_case(table, model):
    from jaxbias.methods import fmd

    _, params, _, bound = model
    mem, lazy = load(table), load(table, stream=True)
    clean, art = mem.evals["clean"], mem.evals["artifact"]
    np.testing.assert_array_equal(clean.y, art.y)  # the same images with and without the artifact
    pairs = (art.x, clean.x, art.y)
    hp = fmd.Hparams(mode="training", params="all", curvature="ggn", damping=0.1, top_k=5)
    return fmd, params, (lambda p, x: bound(p, x).logits), mem, lazy, pairs, hp


def test_fmd_training_mode_on_a_streamed_training_set_equals_in_memory(table, model, gathered):
    fmd, params, logits, mem, lazy, pairs, hp = _fmd_case(table, model)
    whole = fmd.debias(logits, params, pairs, hp=hp, train=(mem.train.x, mem.train.y))
    gathered[0] = 0
    streamed = fmd.debias(logits, params, pairs, hp=hp, train=(lazy.train.x, lazy.train.y), batch_size=BATCH)
    np.testing.assert_array_equal(streamed.removed, whole.removed)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(streamed.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    assert streamed.scale == whole.scale
    assert streamed.bias_after == pytest.approx(whole.bias_after, rel=1e-4, abs=1e-7)


def test_fmd_streamed_curvature_on_a_bounded_subsample(table, model, gathered, monkeypatch, caplog):
    import logging

    fmd, params, logits, mem, lazy, pairs, hp = _fmd_case(table, model)
    n = len(lazy.train.y)
    monkeypatch.setattr(fmd, "STREAM_CURVATURE_SAMPLES", 8)
    gathered[0] = 0
    with caplog.at_level(logging.INFO, logger="jaxbias.methods.fmd"):
        res = fmd.debias(logits, params, pairs, hp=hp, train=(lazy.train.x, lazy.train.y),
                         batch_size=BATCH)
    assert f"random subsample of 8 of the {n} training samples" in caplog.text
    assert 0 < gathered[0] <= 8 < n  # the set was never read whole: batches, the subsample, the top_k removed
    assert res.removed.shape == (5,) and len(set(res.removed.tolist())) == 5
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(res.params))


def test_unlearn_a_streamed_folder_run_in_training_mode(table, gathered, monkeypatch):
    """`jaxbias unlearn` on a run trained on a streamed folder with an inserted stamp: the pairs are its test images
    with and without the stamp, the training set (influences) is read a batch at a time."""
    from jaxbias.methods import fmd
    from jaxbias.runs import RunConfig, train
    from jaxbias.runs.unlearning import unlearn_workdir

    root, meta = table
    config = RunConfig(dataset="folder", data={"root": str(root), "metadata": str(meta), "split_column": "split",
                                               "image_size": 20, "artifact": "stamp", "artifact_class": 0,
                                               "p": 0.5, "stream": True},
                       model="simple_conv", model_settings={"channels": [2, 2, 2, 2]}, epochs=1, batch_size=BATCH)
    run = train(config, progress=False)
    monkeypatch.setattr(fmd, "STREAM_CURVATURE_SAMPLES", 8)  # else all 30 rows are the curvature's subsample
    mem = load(table)
    n_train, n_test = len(mem.train.y), len(mem.evals["clean"].y)
    gathered[0] = 0
    hp = fmd.Hparams(mode="training", top_k=3, damping=0.1)
    res = unlearn_workdir(run, external=3, hp=hp, baseline=False)
    assert res["pairs"] == 3 and set(res["fmd"]["accuracy"]) == {"clean", "artifact"}
    # reads: the training set BATCH rows at a time, 8 for the curvature, a test set's rest (here < 1024) at once
    assert 0 < gathered[0] <= max(BATCH, 8, n_test - 3) < n_train
    assert 0.0 <= res["before"]["bias"] <= 1.0 and n_test > 3
