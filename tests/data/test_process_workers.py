"""Decode workers that are processes (``worker_kind process``): the same batches in the same order as threads and
as no workers, a training run to the same bits, no process left behind, and one-line refusals of bad settings."""
import contextlib
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxbias.data.lazy import LazyImages, prefetched

from test_stream import _argv, _numbers, load, write_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("process_workers") / "photos"
    return root, write_folder(root, per_class=40)


def _no_children(timeout=10.0):
    """Whether every child process of this one has ended (waiting up to ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while multiprocessing.active_children():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _tenfold(idx):  # module level: it pickles by name into a spawned process
    return idx * 10


def test_what_a_decode_process_needs_pickles_to_the_same_rows(folder):
    data = load(folder, True, workers=2, worker_kind="process")
    for a in (data.train.x, data.train.mask):
        assert isinstance(a, LazyImages) and a.worker_kind == "process" and a.workers == 2
        b = pickle.loads(pickle.dumps(a))
        idx = np.array([4, 0, 7])
        assert b[idx].tobytes() == a[idx].tobytes() and b.worker_kind == "process"
        assert a.finish(a.raw(idx)).tobytes() == a[idx].tobytes()  # uint8 then / 255: the same bits
    assert data.train.x.take(np.array([1, 2])).worker_kind == "process"


def test_prefetched_in_processes_gives_the_values_in_order_and_closing_it_ends_its_processes():
    rows = [np.arange(i, i + 3) for i in range(0, 30, 3)]
    got = list(prefetched(_tenfold, rows, workers=2, kind="process", then=lambda r: r + 1))
    assert [g.tolist() for g in got] == [(idx * 10 + 1).tolist() for idx in rows]
    assert _no_children()
    it = prefetched(_tenfold, rows, workers=2, kind="process")
    assert next(it).tolist() == [0, 10, 20]
    assert multiprocessing.active_children()  # its workers run ahead
    it.close()  # an epoch left early
    assert _no_children()


def test_decode_processes_give_the_host_feed_the_bits_of_threads_and_of_no_workers(folder):
    from jaxbias.training import loop
    from jaxbias.training.parallel import Layout

    mem, procs = load(folder, False), load(folder, True, workers=2, worker_kind="process")
    n = len(mem.train.x)
    rows = [np.random.default_rng(t).permutation(n)[:16] for t in range(5)] + [np.arange(5)]
    f = loop._HostFeed(lambda st, b, args: (st, {"loss": 0.0}), procs.train, Layout(), n=n, batch_size=16,
                       drop_last=False)
    assert f.workers == 2 and f.processes
    try:
        for _ in range(2):  # two epochs: the same pool
            got = list(f._batches(rows))
            assert len(got) == len(rows)
            for b, i in zip(got, rows):
                assert np.asarray(b.x).tobytes() == mem.train.x[i].tobytes()
                assert np.asarray(b.mask).tobytes() == mem.train.mask[i].tobytes()
                assert np.array_equal(np.asarray(b.y), mem.train.y[i]) and np.asarray(b.x).dtype == np.float32
        pool = f.pool
        assert pool is not None
        with pytest.raises(IndexError, match="outside the"):  # the worker's error, raised where the loop reads
            list(f._batches([np.arange(4), np.array([n])]))
        batches = f._batches(rows)
        next(batches)
        batches.close()  # an epoch left after one batch
        assert f.pool is pool  # kept for the run
    finally:
        f.close()
    assert f.pool is None and _no_children()


def test_a_run_with_decode_processes_trains_to_the_bits_of_threads_and_of_no_workers(folder, tmp_path):
    from jaxbias.cli import main

    root, table = folder
    common = ("--epochs", "2", "--stream", "true")
    assert main(_argv(root, table, tmp_path / "none", *common)) == 0
    assert main(_argv(root, table, tmp_path / "threads", *common, "--workers", "2")) == 0
    assert main(_argv(root, table, tmp_path / "procs", *common, "--workers", "2", "--worker-kind", "process")) == 0
    assert _numbers(tmp_path / "procs") == _numbers(tmp_path / "threads") == _numbers(tmp_path / "none")
    assert _no_children()  # the run shut its decode processes down


def test_a_run_interrupted_mid_epoch_leaves_no_decode_process(folder, tmp_path, monkeypatch):
    """A Ctrl-C taken at the loop's third step of the first epoch: the run stops and its decode processes end."""
    from jaxbias import runs
    from jaxbias.training import loop

    checks = {"n": 0}

    @contextlib.contextmanager
    def ctrl_c_at_step_3():
        def interrupted():
            checks["n"] += 1
            return checks["n"] >= 4  # the epoch's check, then steps 1, 2, 3
        yield interrupted

    monkeypatch.setattr(loop, "interrupts_deferred", ctrl_c_at_step_3)
    root, table = folder
    config = runs.RunConfig(dataset="folder", model="mlp", epochs=1, batch_size=8,
                            data={"root": str(root), "metadata": str(table), "split_column": "split",
                                  "image_size": 10, "stream": True, "workers": 2, "worker_kind": "process"})
    with pytest.raises(KeyboardInterrupt):
        runs.train(config, workdir=str(tmp_path / "run"), progress=False)
    assert checks["n"] == 4 and _no_children()


@pytest.mark.parametrize("more, field", [({"workers": 2, "worker_kind": "fork"}, "worker_kind"),
                                         ({"workers": 0, "worker_kind": "process"}, "worker_kind")])
def test_bad_worker_kinds_are_refused_in_one_line(folder, more, field):
    with pytest.raises(ValueError) as info:
        load(folder, True, **more)
    assert str(info.value).startswith(f"{field} must be") and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="^worker_kind must be one of thread, process; got 'fork'$"):
        prefetched(_tenfold, [np.arange(2)], workers=1, kind="fork")


_KILLED_PARENT = """
import os, sys, time
from jaxbias.data.lazy import process_pool

def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()

if __name__ == "__main__":
    pool = process_pool(2)
    pids = {f.result() for f in [pool.submit(pid_after, 1.0) for _ in range(2)]}
    print(" ".join(map(str, sorted(pids))), flush=True)
    time.sleep(600)
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie (ended, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def test_decode_processes_exit_when_their_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(_KILLED_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) >= 1 and all(_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)  # no finally, no atexit: only the workers' own watch can end them
        parent.wait(10)
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), f"decode processes {pids} outlived their killed parent"
    finally:
        parent.kill()
