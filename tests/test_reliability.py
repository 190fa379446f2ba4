"""Reliability: a run directory cannot be lost, mixed up or silently wrong (lock, torn metrics, lost or
damaged checkpoints), and degenerate data get one clear line instead of a silently wrong result."""
from __future__ import annotations

import contextlib
import io
import json
import os
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


def test_a_workdir_that_cannot_be_written_is_a_usage_error(capsys):
    from jaxbias.cli import main

    target = "/sys/jaxbias_cannot_write_here"
    try:
        os.makedirs(target)
    except PermissionError:
        pass
    else:  # pragma: no cover - a machine where /sys is writable
        os.rmdir(target)
        pytest.skip("/sys is writable here")
    code = main(["train", "--dataset", "artifact_mnist", "--model", "mlp", "--epochs", "1", "--workdir", target,
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"workdir {target} is not writable" in err


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
        # the command line: a usage error (choose another workdir), one line naming the holder
        from jaxbias.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["train", "--dataset", "artifact_mnist", "--model", "mlp", "--epochs", "1",
                         "--workdir", str(w), "--no-progress"])
        assert code == 2, err.getvalue()
        assert err.getvalue().count("\n") == 1 and f"in use by pid {holder.pid}" in err.getvalue()
        assert not (w / "config.json").exists()
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
        runs.prepare(RunConfig(dataset="adult", model="mlp", data={"data_path": str(path)}))
    with pytest.raises(ValueError, match="is a directory; expected the adult.data file"):
        runs.prepare(RunConfig(dataset="adult", model="mlp", data={"data_path": str(tmp_path)}))


# --------------------------------------------------------------------------- #
# Issue 32: a refused run leaves nothing behind, every failure ends in one line
# --------------------------------------------------------------------------- #

def _adult_file(path, n=200, seed=0):
    """Synthetic Adult records (both labels, both sexes): a few hundred rows train in a second."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        sex = "Male" if i % 3 else "Female"
        edu = int(rng.integers(1, 17))
        rec = [int(rng.integers(17, 90)), "Private", int(rng.integers(1e4, 1e6)), "Bachelors", edu, "Divorced",
               "Sales", "Husband", "White", sex, 0, 0, int(rng.integers(10, 60)), "United-States"]
        lines.append(", ".join(str(v) for v in rec) + (", >50K" if edu > 8 else ", <=50K"))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def adult(tmp_path_factory):
    return _adult_file(tmp_path_factory.mktemp("adult") / "adult.data")


def _train_argv(data_path, workdir, *more):
    """The issue's ``A``: a small MLP on an Adult file."""
    return ["train", "--dataset", "adult", "--data-path", str(data_path), "--model", "mlp", "--hidden", "16,8",
            "--batch-size", "64", "--decay-every", "0", "--epochs", "1", "--no-progress", "--workdir", str(workdir),
            *more]


def _one_error_line(err):
    """The failure's line: stderr holds it alone (no traceback), after the epochs' progress lines if any."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("epoch ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_batch_larger_than_the_data_is_refused_before_the_workdir_is_written(tmp_path, capfd, adult):
    from jaxbias import cli

    wd = tmp_path / "run"
    assert cli.main(_train_argv(adult, wd, "--batch-size", "100000")) == cli.USAGE_ERROR
    line = _one_error_line(capfd.readouterr().err)
    assert "batch_size 100000 is larger than the" in line and "--batch-size" in line
    assert not wd.exists()  # absent before, absent after
    wd.mkdir()
    (wd / "notes.txt").write_text("mine")
    assert cli.main(_train_argv(adult, wd, "--batch-size", "100000")) == cli.USAGE_ERROR
    assert sorted(p.name for p in wd.iterdir()) == ["notes.txt"]  # an existing folder is left as it was
    capfd.readouterr()
    assert cli.main(_train_argv(adult, wd)) == 0  # the same workdir then takes the corrected run


def test_a_layer_the_model_lacks_is_refused_before_the_workdir_is_written(tmp_path, capfd, adult):
    from jaxbias import cli

    wd = tmp_path / "run"
    assert cli.main(_train_argv(adult, wd, "--method", "end", "--layer", "nope", "--num-biases", "2",
                                "--num-classes", "2")) == cli.USAGE_ERROR
    line = _one_error_line(capfd.readouterr().err)
    assert "hp.layer='nope' is not an activation of the model" in line and "'dense1'" in line
    assert not wd.exists()
    assert cli.main(_train_argv(adult, wd, "--method", "end", "--layer", "dense1", "--num-biases", "2",
                                "--num-classes", "2")) == 0  # the same workdir then takes the corrected run


def test_resume_is_strict_and_auto_resume_starts_or_resumes(tmp_path, capfd, adult):
    from jaxbias import cli

    wd = tmp_path / "run"
    for where in (wd, tmp_path):  # a missing workdir, an empty one
        assert cli.main(_train_argv(adult, where, "--resume")) == cli.USAGE_ERROR
        line = _one_error_line(capfd.readouterr().err)
        assert f"workdir {where} holds no run" in line and "--auto-resume" in line
    assert not wd.exists() and list(tmp_path.iterdir()) == []
    assert cli.main(_train_argv(adult, wd, "--auto-resume", "--json")) == 0  # nothing there: starts
    assert json.loads(capfd.readouterr().out)["resumed_from"] in (None, 0)
    assert cli.main(_train_argv(adult, wd, "--auto-resume", "--json", "--epochs", "2")) == 0  # a run there: resumes
    second = json.loads(capfd.readouterr().out)
    assert second["resumed_from"] == 1 and [h["epoch"] for h in second["history"]] == [1, 2]
    with pytest.raises(SystemExit):  # one or the other
        cli.main(_train_argv(adult, wd, "--resume", "--auto-resume"))
    assert "not allowed with argument" in capfd.readouterr().err


def test_a_failure_is_one_line_and_debug_gives_the_traceback(tmp_path, capfd, adult):
    from jaxbias import cli

    missing = tmp_path / "nope.data"
    assert cli.main(_train_argv(missing, tmp_path / "w")) == cli.USAGE_ERROR
    line = _one_error_line(capfd.readouterr().err)
    assert line.startswith("jaxbias train: error:") and "nope.data" in line
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", *_train_argv(missing, tmp_path / "w")])
    with pytest.raises(FileNotFoundError):  # also after the command's name
        cli.main([*_train_argv(missing, tmp_path / "w"), "--debug"])
    # the exit code and line of each kind of failure
    assert cli.failure(ValueError("bad\nmore"))[0] == cli.USAGE_ERROR
    assert cli.failure(ValueError("bad\nmore"))[1] == "error: bad [more with --debug]"
    assert cli.failure(OSError(28, "No space left on device"))[0] == cli.RUN_FAILED
    code, text = cli.failure(KeyError("x"))
    assert code == cli.RUN_FAILED and "internal error: KeyError" in text and "--debug" in text


def test_a_ctrl_c_during_a_checkpoint_write_takes_effect_after_it():
    import signal

    from jaxbias.training.checkpoint import interrupts_deferred

    saved = signal.signal(signal.SIGINT, signal.default_int_handler)  # xdist workers ignore SIGINT
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                done.append(1)  # held back: the block runs to its end
        assert done and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C acts at once
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                done.append(2)
        assert done == [1]
        mine = []
        signal.signal(signal.SIGINT, lambda *a: mine.append(a))  # a caller's handler is left in charge
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
        assert len(mine) == 1
    finally:
        signal.signal(signal.SIGINT, saved)


def test_interrupted_train_exits_130_in_one_line_and_resumes(tmp_path, adult):
    import signal
    import time

    wd = tmp_path / "run"
    argv = _train_argv(adult, wd, "--epochs", "1000")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    # pytest-xdist workers (and background shell jobs) ignore SIGINT, which a child inherits: restore it first
    start = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "runpy.run_module('jaxbias.cli', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", start, *argv], stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (wd / "checkpoints" / "2").exists():  # a few epochs on disk
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    line = _one_error_line(err)
    from jaxbias import cli

    kept = max(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert "interrupted" in line and "--resume" in line and f"the checkpoint of epoch {kept} in" in line
    assert cli.main(_train_argv(adult, wd, "--epochs", str(kept + 1), "--resume")) == 0
    rows = [json.loads(r) for r in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, kept + 2))


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_temp_file(tmp_path, capfd, adult, monkeypatch):
    import errno

    import orbax.checkpoint as ocp

    from jaxbias import cli

    wd = tmp_path / "run"
    assert cli.main(_train_argv(adult, wd)) == 0  # epoch 1 on disk
    capfd.readouterr()
    real = ocp.CheckpointManager.save

    def full(self, step, *a, **kw):
        if step >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, step, *a, **kw)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    assert cli.main(_train_argv(adult, wd, "--epochs", "3", "--resume")) == cli.RUN_FAILED
    line = _one_error_line(capfd.readouterr().err)
    assert "could not write the checkpoint of epoch 2" in line and str(wd / "checkpoints") in line
    assert "No space left on device, errno 28): the disk is full" in line and "epoch 1 is kept" in line
    assert not [p for p in wd.rglob("*") if ".tmp" in p.name]
    monkeypatch.undo()
    assert cli.main(_train_argv(adult, wd, "--epochs", "3", "--resume")) == 0  # once the disk has room


def test_an_atomic_write_that_fails_names_the_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno
    import io

    from jaxbias import workdir

    class Full(io.StringIO):
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = open

    def fake_open(path, mode="r", *a, **kw):
        real_open(path, mode, *a, **kw).close()  # the temp file is created, then the write fails
        return Full()

    target = tmp_path / "config.json"
    target.write_text("{}")
    monkeypatch.setattr("builtins.open", fake_open)
    with pytest.raises(OSError, match=f"could not write {target}: No space left on device") as e:
        workdir.write_json(target, {"a": 1})
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"] and target.read_text() == "{}"


def test_duplicate_sweep_members_are_refused(tmp_path, capfd, adult):
    from jaxbias import cli

    wd = tmp_path / "sweep"
    argv = ["sweep", "--dataset", "adult", "--data-path", str(adult), "--model", "mlp", "--hidden", "8",
            "--batch-size", "64", "--epochs", "1", "--no-progress", "--workdir", str(wd)]
    assert cli.main([*argv, "--seeds", "0,0"]) == cli.USAGE_ERROR
    line = _one_error_line(capfd.readouterr().err)
    assert "members[0] and members[1] have the same settings" in line and "--seeds 0,0" in line
    assert not wd.exists()
    assert cli.main([*argv, "--lrs", "0.001,0.001"]) == cli.USAGE_ERROR
    assert "same settings" in capfd.readouterr().err
    code = cli.main([*argv, "--lrs", "nan,0.001"])  # refused before the workdir is written too
    assert code == cli.USAGE_ERROR and "positive finite" in _one_error_line(capfd.readouterr().err)
    assert not wd.exists()


def test_a_binary_or_tiny_adult_file_is_named(tmp_path, capfd, adult):
    from jaxbias import cli

    binary = tmp_path / "adult.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert cli.main(_train_argv(binary, tmp_path / "w")) == cli.USAGE_ERROR
    line = _one_error_line(capfd.readouterr().err)
    assert f"{binary} is not a text file" in line and "not UTF-8" in line
    tiny = tmp_path / "tiny.data"
    tiny.write_text("".join(adult.read_text().splitlines(keepends=True)[:5]))
    assert cli.main(_train_argv(tiny, tmp_path / "w")) == cli.USAGE_ERROR
    line = _one_error_line(capfd.readouterr().err)
    assert f"{tiny} holds only 5 records" in line and "np.str_" not in line
    assert not (tmp_path / "w").exists()


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, capfd):
    from jaxbias.workdir import read_history

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "lo')
    assert [r["epoch"] for r in read_history(str(path), upto=10)] == [1, 2]
    err = capfd.readouterr().err
    assert "warning:" in err and str(path) in err and "ignored its last line" in err
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n')
    assert len(read_history(str(path), upto=10)) == 2 and capfd.readouterr().err == ""


def test_bad_flags_and_labels_are_refused_in_one_line_naming_them(tmp_path, capfd, adult, monkeypatch):
    from jaxbias import cli, train

    wd = tmp_path / "run"
    with pytest.raises(SystemExit) as e:  # an empty width is not dropped
        cli.main(_train_argv(adult, wd, "--hidden", "16,,8"))
    assert e.value.code == cli.USAGE_ERROR and "--hidden" in capfd.readouterr().err
    for more, words in ((["--method", "end", "--hp", "alpha=abc"], ["--hp alpha=abc", "expects float"]),
                        (["--hp", "alpha=1"], ["--hp alpha=1", "method 'vanilla'", "has none"]),
                        (["--config", str(tmp_path)], [f"{tmp_path}' is a directory", "expected a TOML"]),
                        (["--method", "end", "--num-biases", "1"], ["--num-biases", "bias labels up to 1"])):
        assert cli.main(_train_argv(adult, wd, *more)) == cli.USAGE_ERROR, more
        line = _one_error_line(capfd.readouterr().err)
        assert all(w in line for w in words), line
    monkeypatch.delenv("JAXBIAS_ADULT", raising=False)  # no --data-path: a usage error, as a missing file is
    argv = _train_argv(adult, wd)
    del argv[3:5]
    assert cli.main(argv) == cli.USAGE_ERROR and "--data-path" in _one_error_line(capfd.readouterr().err)
    assert not wd.exists()
    # labels of an evaluation set outside the model's classes, float labels: named, not computed with
    x = np.zeros((14, 8), np.float32)
    with pytest.raises(ValueError, match=r"evaluation set 'test'.* \[0, 1\], got range \[0, 6\]"):
        train.evaluate(lambda p, ms, x: np.zeros((x.shape[0], 2), np.float32), None, None,
                       {"test": Batch(x, np.arange(14) % 7)})
    with pytest.raises(ValueError, match="train.y must have an integer dtype, got float32"):
        fit(module=MLP, method=vanilla, hp=vanilla.Hparams(), train=Batch(x, np.zeros(14, np.float32)), epochs=1,
            batch_size=7, tx=make_optimizer(lr=1e-2, steps_per_epoch=2, decay_every=None), progress=False)


def test_resume_takes_the_same_data_file_however_its_path_is_spelled(tmp_path, capfd, adult, monkeypatch):
    from jaxbias import cli

    wd = tmp_path / "run"
    assert cli.main(_train_argv(adult, wd)) == 0  # an absolute path
    capfd.readouterr()
    (tmp_path / "link.data").symlink_to(adult)
    monkeypatch.chdir(adult.parent)
    for epochs, path in ((2, adult.name), (3, tmp_path / "link.data")):  # relative, then a symlink
        assert cli.main(_train_argv(path, wd, "--epochs", str(epochs), "--resume", "--json")) == 0, capfd.readouterr()
        assert json.loads(capfd.readouterr().out)["resumed_from"] == epochs - 1
    other = _adult_file(tmp_path / "other.data", seed=1)  # another file is still another run
    assert cli.main(_train_argv(other, wd, "--epochs", "4", "--resume")) == cli.USAGE_ERROR
    line = _one_error_line(capfd.readouterr().err)
    assert "configured differently (data_file, data_path" in line, line


def _rows(wd):
    return [json.loads(r)["epoch"] for r in (wd / "metrics.jsonl").read_text().splitlines()]


def test_a_lost_row_of_a_kept_epoch_is_named_and_a_damaged_middle_row_does_not_stop_evaluate(tmp_path, capfd, adult):
    from jaxbias import cli

    wd = tmp_path / "run"
    assert cli.main(_train_argv(adult, wd, "--epochs", "3")) == 0
    metrics = wd / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-40])  # the row of epoch 3, whose checkpoint is kept, torn
    capfd.readouterr()
    assert cli.main(_train_argv(adult, wd, "--epochs", "5", "--resume")) == 0
    err = capfd.readouterr().err
    assert f"warning: {metrics} has lost the row of epoch(s) 3" in err and "checkpoint of epoch 3 is kept" in err
    assert _rows(wd) == [1, 2, 4, 5]
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], lines[1][:30], *lines[2:]]) + "\n")  # a damaged middle line
    assert cli.main(["evaluate", "--workdir", str(wd), "--json"]) == 0
    assert json.loads(capfd.readouterr().out)["epoch"] == 5


def test_evaluate_leaves_a_damaged_checkpoint_in_place_and_names_the_epoch_it_used(tmp_path, capfd, adult):
    from jaxbias import cli

    wd = tmp_path / "run"
    assert cli.main(_train_argv(adult, wd, "--epochs", "2")) == 0
    target = max((p for p in (wd / "checkpoints" / "2").rglob("*") if p.is_file() and "state" in p.parts),
                 key=lambda p: p.stat().st_size)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
    before = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()}
    capfd.readouterr()
    assert cli.main(["evaluate", "--workdir", str(wd), "--json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["epoch"] == 1
    assert "the checkpoint of epoch 2" in err and "is damaged" in err and "left it in place" in err
    assert f"evaluated the checkpoint of epoch 1 in {wd}" in err and "resumed" not in err
    assert {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()} == before  # the workdir as it was
    assert not (wd / "checkpoints.damaged").exists()


# --------------------------------------------------------------------------- #
# Fault injection: SIGKILL at random moments, a real file-size limit
# --------------------------------------------------------------------------- #

def _child_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}


def _kept_epochs(wd):
    folder = wd / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def _launch(argv, log):
    with open(log, "w") as err:  # a file, not a pipe: nothing blocks a child that is about to be killed
        return subprocess.Popen([sys.executable, "-m", "jaxbias.cli", *argv], stdout=subprocess.DEVNULL, stderr=err,
                                env=_child_env())


def _entries(folder):
    """``{(name, inode, ctime)}`` of ``folder``: a temporary folder left by a killed write that orbax removes and
    makes again (perhaps with the same inode number) is a new entry."""
    out = set()
    with contextlib.suppress(FileNotFoundError):
        for e in os.scandir(folder):
            with contextlib.suppress(FileNotFoundError):
                out.add((e.name, e.inode(), e.stat(follow_symlinks=False).st_ctime_ns))
    return out


def _first_seen(proc, folder, until, timeout=120.0):
    """Poll ``folder`` (every ~1 ms) until a new entry whose name satisfies ``until`` appears; the moment, or
    ``None`` if ``proc`` ended first."""
    import time

    before, deadline = _entries(folder), time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the run made no progress"
        if any(until(name) for name, *_ in _entries(folder) - before):
            return time.monotonic()
        time.sleep(0.001)
    return None


def _with_file_size_limit(argv, limit):
    """``jaxbias`` in a child whose files cannot grow past ``limit`` bytes (``ulimit -f``): a write past it fails
    with EFBIG (SIGXFSZ ignored), as one on a full disk fails with ENOSPC."""
    start = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); from jaxbias.cli import entry; entry()")
    return subprocess.run([sys.executable, "-c", start, *argv], capture_output=True, text=True, env=_child_env(),
                          timeout=300)


def test_a_file_size_limit_is_one_line_exit_1_leaves_no_temp_file_and_resumes(tmp_path, adult):
    wd = tmp_path / "run"
    argv = _train_argv(adult, wd, "--epochs", "2")
    # 4 KB: config.json (< 1 KB) and the metrics row are written; the checkpoint's arrays and metadata are not
    done = _with_file_size_limit(argv, 4096)
    assert done.returncode == 1, done.stderr  # a run that started and failed
    line = _one_error_line(done.stderr)
    assert line == done.stderr.strip().splitlines()[-1] and "absl" not in done.stderr and "WARNING" not in done.stderr
    assert line.startswith("jaxbias train: the run failed:")
    assert f"could not write the checkpoint of epoch 1 in {wd / 'checkpoints'}" in line
    assert "File too large, errno 27" in line and "file-size limit" in line and "No earlier checkpoint" in line
    assert (wd / "config.json").is_file() and _kept_epochs(wd) == []
    assert not [p for p in wd.rglob("*") if "tmp" in p.name]  # orbax's temporary folder removed
    resumed = subprocess.run([sys.executable, "-m", "jaxbias.cli", *argv, "--resume"], capture_output=True,
                             text=True, env=_child_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr  # without the limit
    assert _kept_epochs(wd) == [1, 2] and _rows(wd) == [1, 2]
    # a limit below config.json's size: the file is named, nothing half-written is left
    other = tmp_path / "other"
    done = _with_file_size_limit(_train_argv(adult, other), 256)
    assert done.returncode == 1, done.stderr
    line = _one_error_line(done.stderr)
    assert f"could not write {other / 'config.json'}: File too large" in line
    assert not [p for p in other.rglob("*") if "tmp" in p.name or p.name == "config.json"]


@pytest.mark.slow
def test_a_run_killed_at_20_random_moments_resumes_to_the_same_bits(tmp_path):
    """kill -9 during startup, during an epoch, during the metrics append and during checkpoint writes (orbax's
    ``<epoch>.orbax-checkpoint-tmp`` folder caught as it appears); ``--auto-resume`` after each kill; the final
    state and history equal those of the uninterrupted run, bit for bit."""
    import signal
    import time

    from jaxbias import runs

    epochs, kills = 12, 20
    data = _adult_file(tmp_path / "adult.data", n=4000)

    def argv(wd):
        return _train_argv(data, wd, "--epochs", str(epochs), "--batch-size", "8", "--hidden", "128,128",
                           "--auto-resume")

    # the uninterrupted run, timed: when does training start, how long is an epoch
    ref = tmp_path / "ref"
    t0 = time.monotonic()
    proc = _launch(argv(ref), tmp_path / "ref.log")
    first = _first_seen(proc, ref / "checkpoints", lambda n: n.startswith("1.")) - t0
    assert proc.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()
    total = time.monotonic() - t0
    epoch_time = (total - first) / (epochs - 1)

    rng = np.random.default_rng(32)
    wd, log, moments = tmp_path / "killed", [], []
    for i in range(kills):
        kept = max(_kept_epochs(wd), default=0)
        assert kept < epochs, f"the run finished after {i} kills: {moments}"
        # keep epochs for the kills to come: once few are left, kill before the next checkpoint is complete
        spare = (epochs - kept - 1) > (kills - i) // 2
        mode = rng.choice(["startup", "epoch", "write"], p=[0.2, 0.4, 0.4] if spare else [0.5, 0.0, 0.5])
        at_launch, t0 = _entries(wd / "checkpoints"), time.monotonic()
        proc = _launch(argv(wd), tmp_path / f"kill{i}.log")
        if mode == "startup":  # importing, reading the data, compiling, restoring, writing config.json
            time.sleep(rng.uniform(0.0, 0.8 * first))
        else:
            target = kept + (int(rng.integers(1, 3)) if spare else 1)
            if mode == "write":  # while orbax writes the checkpoint's temporary folder (or renames it)
                until, wait = (lambda n, t=target: n.startswith(f"{t}.orbax-checkpoint-tmp")), rng.uniform(0, 0.08)
            else:  # anywhere in the epochs after the first new checkpoint, the metrics append included
                until, wait = (lambda n, t=kept + 1: n.startswith(f"{t}.")), rng.uniform(0, 1.5 * epoch_time)
            if _first_seen(proc, wd / "checkpoints", until) is not None:
                time.sleep(wait if mode == "epoch" or spare else 0.0)
        writing = any("orbax-checkpoint-tmp" in n for n, *_ in _entries(wd / "checkpoints") - at_launch)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        code = proc.wait(timeout=60)
        assert code == -signal.SIGKILL, (tmp_path / f"kill{i}.log").read_text()
        moments.append((str(mode), round(time.monotonic() - t0, 3), kept, max(_kept_epochs(wd), default=0), writing))
        log.append((tmp_path / f"kill{i}.log").read_text())
    proc = _launch(argv(wd), tmp_path / "last.log")
    assert proc.wait(timeout=300) == 0, (tmp_path / "last.log").read_text()
    print(f"\nreference run {total:.1f}s (training from {first:.1f}s, {epoch_time:.2f}s/epoch); kills "
          "(mode, seconds after launch, epochs kept before, after, during a checkpoint write):", *moments, sep="\n  ")
    print("damaged checkpoints set aside:", sum("is damaged" in text for text in log),
          "; left in checkpoints/:", sorted(os.listdir(wd / "checkpoints")))
    assert {m[0] for m in moments} == {"startup", "epoch", "write"}
    assert len({m[2] for m in moments}) >= 6  # spread over the run
    assert sum(m[4] for m in moments) >= 3  # a checkpoint's temporary folder there and then
    assert all(n.isdigit() for n in os.listdir(wd / "checkpoints"))  # no temporary folder left

    a, b = runs.restore(str(ref)), runs.restore(str(wd))
    assert a.epoch == b.epoch == epochs
    leaves_a, leaves_b = jax.tree.leaves(a.state), jax.tree.leaves(b.state)
    assert len(leaves_a) == len(leaves_b) > 0
    for u, v in zip(leaves_a, leaves_b):  # parameters, optimiser state, step, key: bit for bit
        assert np.asarray(u).dtype == np.asarray(v).dtype and np.array_equal(np.asarray(u), np.asarray(v))

    def rows(w):
        return [{k: v for k, v in json.loads(r).items() if k != "seconds"}
                for r in (w / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows(wd)] == list(range(1, epochs + 1))  # one row per epoch
    assert rows(wd) == rows(ref)  # the same losses and accuracies


def test_an_adult_run_config_round_trips_and_source_is_checked(adult, tmp_path, monkeypatch, capsys):
    """config.json keeps the configured ``source`` (the file read goes to ``data_file``), so the
    configuration reads back as itself; a source that names no data source is refused."""
    from jaxbias import runs
    from jaxbias.cli import main
    from jaxbias.runs.config import RunConfig

    w = tmp_path / "run"
    assert main(_train_argv(adult, w)) == 0
    record = json.loads((w / "config.json").read_text())
    assert record["data"] == {"data_path": str(adult), "protected": "sex"} and record["data_file"] == str(adult)
    restored = runs.restore(str(w))
    assert RunConfig.from_dict(record) == restored.config
    assert restored.config.data.data_path == str(adult)
    # the file given another way ($JAXBIAS_ADULT) is still recorded, and a resume checks it is the same file
    monkeypatch.setenv("JAXBIAS_ADULT", str(adult))
    w2 = tmp_path / "env"
    argv = [a for a in _train_argv(adult, w2) if a not in ("--data-path", str(adult))]
    assert main(argv) == 0
    assert json.loads((w2 / "config.json").read_text())["data_file"] == str(adult)
    other = _adult_file(tmp_path / "other.data", seed=1)
    monkeypatch.setenv("JAXBIAS_ADULT", str(other))
    capsys.readouterr()
    assert main([*argv, "--resume", "--epochs", "2"]) == 2  # another file behind the same settings
    assert "configured differently (data_file" in _one_error_line(capsys.readouterr().err)
    with pytest.raises(ValueError, match="source must be one of"):
        RunConfig(data={"source": "bogus"})
