"""Reliability: a run directory cannot be lost, mixed up or silently wrong (lock, torn metrics, lost or
damaged checkpoints), and degenerate data get one clear line instead of a silently wrong result."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxbias import models
from jaxbias.methods import vanilla
from jaxbias.train import fit, make_optimizer
from jaxbias.types import Batch
from jaxbias.workdir import WorkdirBusyError, lock

MLP = models.create("mlp", hidden=(16,), num_classes=2)


def _data(n=256, d=8):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return Batch(x, (x[:, 0] > 0).astype(np.int32))


def _fit(workdir, epochs, **kw):
    return fit(module=MLP, method=vanilla, hp=vanilla.Hparams(), train=_data(), epochs=epochs, batch_size=32,
               tx=make_optimizer(lr=1e-2, steps_per_epoch=8, decay_every=None), seed=0, progress=False,
               workdir=str(workdir), **kw)


def _same(a, b):
    for u, v in zip(jax.tree.leaves((a.state.params, a.state.opt_state)), jax.tree.leaves((b.state.params,
                                                                                          b.state.opt_state))):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_a_workdir_in_use_is_refused_and_freed_when_its_holder_is_killed(tmp_path):
    w = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jaxbias.workdir import lock\n"
         f"with lock({str(w)!r}):\n    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirBusyError, match=f"in use by pid {holder.pid}"):
            _fit(w, 1)
        assert not (w / "checkpoints").exists() and not (w / "metrics.jsonl").exists()  # nothing touched
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock, nothing stale is left
        holder.wait()
    assert _fit(w, 1).history[-1]["epoch"] == 1
    with lock(w):  # re-entrant within one process: a run layer holding it may call fit
        _fit(w, 2, resume=True)


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, full3):
    full = full3
    _fit(tmp_path / "part", 2)
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "lo')  # the disk filled up during the append
    resumed = _fit(tmp_path / "part", 3, resume=True)
    _same(full, resumed)
    rows = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    (tmp_path / "part" / "metrics.jsonl").write_text('{"epoch": 1, "lo\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 1, is not a JSON row"):
        _fit(tmp_path / "part", 4, resume=True)


def test_resume_without_checkpoints_or_with_fewer_epochs_is_refused(tmp_path):
    _fit(tmp_path, 3)
    with pytest.raises(ValueError, match="already trained 3 epochs; epochs=2"):
        _fit(tmp_path, 2, resume=True)
    before = (tmp_path / "metrics.jsonl").read_text()
    shutil.rmtree(tmp_path / "checkpoints")
    with pytest.raises(FileNotFoundError, match="no checkpoint left to resume from"):
        _fit(tmp_path, 3, resume=True)
    assert (tmp_path / "metrics.jsonl").read_text() == before  # the history is kept


@pytest.fixture(scope="module")
def full3(tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("full3"), 3)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_resumes(tmp_path, capfd, damage, full3):
    full = full3
    _fit(tmp_path / "part", 2)  # keeps the checkpoints of epochs 1 and 2
    newest = tmp_path / "part" / "checkpoints" / "2"
    files = sorted((p for p in newest.rglob("*") if p.is_file() and "state" in p.parts), key=lambda p: p.stat().st_size)
    target = files[-1]
    data = bytearray(target.read_bytes())
    if damage == "flip":  # a 4 KB run of flipped bits in the middle of the arrays' file
        mid = len(data) // 2
        data[mid:mid + 4096] = bytes(b ^ 0x10 for b in data[mid:mid + 4096])
    else:
        data = data[: len(data) // 3]
    target.write_bytes(bytes(data))
    resumed = _fit(tmp_path / "part", 3, resume=True)
    assert resumed.resumed_from == 1  # epochs 2 and 3 trained again from the checkpoint of epoch 1
    _same(full, resumed)
    err = capfd.readouterr().err
    assert "the checkpoint of epoch 2" in err and "is damaged" in err and "checkpoints.damaged" in err
    assert (tmp_path / "part" / "checkpoints.damaged" / "2").is_dir()
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]


def test_labels_that_are_not_class_indices_and_empty_data_are_refused():
    for y, message in ((np.array([0, 1, -1, 0] * 8), r"range \[-1, 1\]"), (np.array([0, 1, 2, 0] * 8), r"range \[0, 2\]")):
        with pytest.raises(ValueError, match="train.y must be class indices in \\[0, 1\\], got " + message):
            fit(module=MLP, method=vanilla, hp=vanilla.Hparams(), train=Batch(np.zeros((32, 8), np.float32), y),
                epochs=1, batch_size=8, tx=make_optimizer(lr=1e-2, steps_per_epoch=4, decay_every=None), progress=False)
    with pytest.raises(ValueError, match="the training set is empty"):
        fit(module=MLP, method=vanilla, hp=vanilla.Hparams(), train=Batch(np.zeros((0, 8), np.float32),
            np.zeros(0, np.int32)), epochs=1, batch_size=8, drop_last=False,
            tx=make_optimizer(lr=1e-2, steps_per_epoch=1, decay_every=None), progress=False)


def test_a_saturated_layer_gives_no_cav():
    from jaxbias.concepts import fit_cav

    rng = np.random.default_rng(0)
    labels = np.arange(64) % 2
    for c in (20.0, -20.0):  # tanh at ±1: the "direction" would be rounding noise whose sign follows c
        acts = np.tanh(c + 1e-3 * rng.normal(size=(64, 6))).astype(np.float32)
        for method, reg in (("signal", None), ("ridge", 1e-3), ("logistic", 1e-3)):
            with pytest.raises(ValueError, match="same for all 64 samples.*saturated or dead layer"):
                fit_cav(acts, labels, method=method, reg=reg)
    fit_cav(rng.normal(size=(64, 6)).astype(np.float32), labels)  # varied acts still fit


def test_nan_inputs_are_named_not_propagated():
    from jaxbias.attribution.maps import grid_locations, pixel_map
    from jaxbias.methods import end

    feats = np.ones((4, 3), np.float32)
    feats[1, 2] = np.nan
    with pytest.raises(ValueError, match="features has 1 NaN/inf entries"):
        end.regularizer(feats, np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), alpha=0.1, beta=0.1)
    loc = grid_locations(6, patch=4, stride=2)
    with pytest.raises(ValueError, match="confidences has 1 NaN/inf entries"):
        pixel_map(np.array([1.0, np.nan, 0.0, 0.0]), loc, patch=4, image_size=6)


def test_adult_data_with_one_label_or_a_directory_is_refused(tmp_path):
    from jaxbias import runs
    from jaxbias.runs import RunConfig

    line = "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, {}, 2174, 0, 40, " \
           "United-States, <=50K\n"
    path = tmp_path / "adult.data"
    path.write_text("".join(line.format("Male" if i % 2 else "Female") for i in range(60)))
    with pytest.raises(ValueError, match="every training sample of 'adult' has the label \\[0\\]"):
        runs.prepare(RunConfig(dataset="adult", model="mlp", data_path=str(path)))
    with pytest.raises(ValueError, match="is a directory; expected the adult.data file"):
        runs.prepare(RunConfig(dataset="adult", model="mlp", data_path=str(tmp_path)))
