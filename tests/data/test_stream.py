"""A folder streamed from disk (``stream true``): the same bits as in memory, a run that resumes to the same bits,
and peak memory that does not grow with the folder."""
import csv
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxbias import datasets
from jaxbias.data.lazy import LazyImages
from jaxbias.types import Batch

SIZE = 12
COLOURS = ((200, 40, 40), (40, 190, 60), (50, 60, 210))  # each class's colour: what a model can learn


def write_folder(root, *, per_class=100, size=SIZE, fmt="png", masks=True, split=True):
    """``per_class`` noisy images of each colour (odd ones with a white corner square, bias 1, and its mask PNG)
    and their metadata CSV; returns the CSV's path."""
    rng = np.random.default_rng(0)
    root = Path(root)
    (root / "img").mkdir(parents=True)
    rows = []
    if masks:
        (root / "masks").mkdir()
    for c, colour in enumerate(COLOURS):
        for j in range(per_class):
            image = np.clip(np.array(colour) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            bias, mask = j % 2, ""
            if bias:
                image[: size // 3, : size // 3] = 255
                if masks:
                    m = np.zeros((size, size), np.uint8)
                    m[: size // 3, : size // 3] = 255
                    mask = f"masks/{c}_{j}.png"
                    Image.fromarray(m).save(root / mask)
            path = f"img/{c}_{j}.{fmt}"
            Image.fromarray(image).save(root / path)
            rows.append({"path": path, "label": c, "bias": bias, "mask": mask,
                         "split": "train" if j % 5 else ("test" if j % 10 else "val")})
    table = root / "meta.csv"
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if (masks and split) else
                           [k for k in rows[0] if (masks or k != "mask") and (split or k != "split")],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return table


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream") / "photos"
    return root, write_folder(root)


def load(folder, stream=None, **more):
    root, table = folder
    return datasets.load("folder", {"root": str(root), "metadata": str(table), "bias_column": "bias",
                                    "mask_column": "mask", "split_column": "split", "image_size": 10,
                                    **({} if stream is None else {"stream": stream}), **more}, seed=0)


def test_lazy_rows_equal_the_arrays_in_memory_bit_for_bit(folder):
    mem, lazy = load(folder, False), load(folder, True)
    assert sorted(lazy.evals) == sorted(mem.evals) == ["test", "val"]
    for a, b in [(mem.train, lazy.train), *((mem.evals[k], lazy.evals[k]) for k in mem.evals)]:
        for field in ("x", "mask"):
            want, got = getattr(a, field), getattr(b, field)
            assert isinstance(got, LazyImages) and isinstance(want, np.ndarray)
            assert got.shape == want.shape and got.dtype == want.dtype and len(got) == len(want)
            assert np.shape(got) == want.shape and np.ndim(got) == want.ndim
            n = len(want)
            for index in (0, n - 1, -1, slice(None), slice(3, 17), slice(None, None, 7), slice(-5, None),
                          np.array([5, 2, 2, n - 1]), [1, 0], np.array([[0, 3], [4, 1]]), np.array([], int),
                          np.arange(n) % 3 == 0):
                x, y = got[index], want[index]
                assert type(x) is np.ndarray and x.dtype == y.dtype and x.shape == y.shape, index
                assert x.tobytes() == y.tobytes(), index  # bit for bit
        for field in ("y", "bias"):
            np.testing.assert_array_equal(getattr(b, field), getattr(a, field))
        assert b.x.materialise().tobytes() == a.x.tobytes()
    assert pickle.loads(pickle.dumps(lazy.train.x))[4:6].tobytes() == mem.train.x[4:6].tobytes()


def test_a_lazy_array_is_never_turned_into_one_array_unasked(folder):
    x = load(folder, True).train.x
    for convert in (np.asarray, np.array, lambda a: np.asarray(a, np.float32)):
        with pytest.raises(TypeError, match="streamed from disk") as info:
            convert(x)
        assert "\n" not in str(info.value)
    with pytest.raises(IndexError, match="outside the"):
        x[len(x)]
    with pytest.raises(IndexError, match="outside the"):
        x[np.array([0, -len(x) - 1])]
    with pytest.raises(TypeError, match="one row index"):
        x[0, 1]
    with pytest.raises(TypeError, match="row indices must be ints"):
        x[np.array([0.5])]


def test_the_loop_takes_the_host_feed_for_streamed_data_and_refuses_the_device_feed(folder):
    from jaxbias.training import loop

    ds = load(folder, True)
    assert loop.choose_feed("auto", ds.train) == "host" and loop.choose_feed("host", ds.train) == "host"
    with pytest.raises(ValueError, match="streamed from disk") as info:
        loop.choose_feed("device", ds.train)
    assert "\n" not in str(info.value)
    assert loop.choose_feed("auto", Batch(np.zeros((4, 2), np.float32), np.zeros(4, np.int32))) == "device"


def _argv(root, table, workdir, *more):
    return ["train", "--dataset", "folder", "--root", str(root), "--metadata", str(table), "--image-size", "10",
            "--bias-column", "bias", "--mask-column", "mask", "--split-column", "split", "--model", "mlp",
            "--hidden", "16", "--batch-size", "32", "--lr", "0.01", "--workdir", str(workdir), "--no-progress",
            *more]


def _numbers(workdir):
    """results.json without what a run may differ in (its seconds, its configuration's stream flag)."""
    results = json.loads((Path(workdir) / "results.json").read_text())
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in results["history"]]
    return results["eval"], history


def test_a_streamed_run_trains_to_the_bits_of_the_in_memory_run_and_resumes_to_them(folder, tmp_path, capsys):
    from jaxbias.cli import main

    root, table = folder
    assert main(_argv(root, table, tmp_path / "mem", "--epochs", "2", "--feed", "host")) == 0
    assert main(_argv(root, table, tmp_path / "stream", "--epochs", "2", "--stream", "true")) == 0
    mem, streamed = _numbers(tmp_path / "mem"), _numbers(tmp_path / "stream")
    assert streamed == mem
    assert mem[0]["test"]["accuracy"] > 0.6  # three colour classes: chance is 1/3
    record = json.loads((tmp_path / "stream" / "config.json").read_text())
    assert record["data"]["stream"] is True
    # one epoch, then resumed to two: the same bits as two straight
    assert main(_argv(root, table, tmp_path / "resumed", "--epochs", "1", "--stream", "true")) == 0
    assert main(_argv(root, table, tmp_path / "resumed", "--epochs", "2", "--stream", "true", "--resume")) == 0
    assert _numbers(tmp_path / "resumed") == streamed
    assert json.loads((tmp_path / "resumed" / "results.json").read_text())["resumed_from"] == 1
    capsys.readouterr()
    # the device feed would hold the whole set: refused in one line
    assert main(_argv(root, table, tmp_path / "dev", "--epochs", "1", "--stream", "true", "--feed", "device")) != 0
    err = capsys.readouterr().err.strip()
    assert "streamed from disk" in err and "\n" not in err


def test_decode_workers_give_the_host_feed_the_same_batches_in_the_same_order(folder):
    """The grain pipeline of a streamed epoch (decode threads ahead) yields the arrays the plain gather yields, in
    the order of the epoch's rows, and the in-memory arrays' bits; an image that fails to decode is its error."""
    from jaxbias.training import loop
    from jaxbias.training.parallel import Layout

    mem, plain, ahead = load(folder, False), load(folder, True), load(folder, True, workers=3)
    assert ahead.train.x.workers == ahead.train.mask.workers == 3 and plain.train.x.workers == 0
    n = len(mem.train.x)
    rows = [np.random.default_rng(t).permutation(n)[:16] for t in range(9)] + [np.arange(5)]  # a short last batch

    def feed(train):
        return loop._HostFeed(lambda st, b, args: (st, {"loss": 0.0}), train, Layout(), n=n, batch_size=16,
                              drop_last=False)

    want = [(mem.train.x[i], mem.train.mask[i]) for i in rows]
    for train in (plain.train, ahead.train):
        f = feed(train)
        assert f.workers == train.x.workers
        got = list(f._batches(rows))
        assert len(got) == len(rows)
        for b, (x, mask) in zip(got, want):
            assert np.asarray(b.x).tobytes() == x.tobytes() and np.asarray(b.mask).tobytes() == mask.tobytes()
    f = feed(ahead.train)
    with pytest.raises(IndexError, match="outside the"):  # the worker's error, raised where the loop reads
        list(f._batches([np.arange(4), np.array([n])]))
    assert loop.PREFETCH_PER_WORKER * 3 <= 6  # memory: a few batches ahead, whatever the epoch's length


def test_decode_workers_are_refused_without_stream_or_below_zero(folder):
    for more, match in (({"stream": False, "workers": 2}, "0 with stream false"), ({"stream": True, "workers": -1},
                                                                                  "non-negative")):
        with pytest.raises(ValueError, match=match) as info:
            load(folder, **more)
        assert "\n" not in str(info.value)


def test_a_streamed_run_with_decode_workers_trains_to_the_bits_of_the_in_memory_run(folder, tmp_path):
    from jaxbias.cli import main

    root, table = folder
    assert main(_argv(root, table, tmp_path / "mem", "--epochs", "2", "--feed", "host")) == 0
    assert main(_argv(root, table, tmp_path / "ahead", "--epochs", "2", "--stream", "true", "--workers", "2")) == 0
    assert _numbers(tmp_path / "ahead") == _numbers(tmp_path / "mem")


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_folder(tmp_path):
    """Training streamed from 10× the images takes no more peak memory (within 10 %), with glibc's mmap threshold
    fixed (its default lets freed batch buffers fragment the heap by a run-to-run varying amount: benchmarks/)."""
    here = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(here))
    try:
        import stream_memory
    finally:
        sys.path.remove(str(here))
    small, large = 2000, 20000
    rss = {n: stream_memory.peak_rss(stream_memory.write(tmp_path / str(n), n), tmp_path / f"run{n}", stream=True,
                                     malloc=stream_memory.FIXED_MALLOC)[0]
           for n in (small, large)}
    assert rss[large] <= 1.10 * rss[small], rss


@pytest.mark.slow
def test_a_streamed_run_killed_mid_epoch_resumes_to_the_bits_of_the_uninterrupted_run(folder, tmp_path):
    """``kill -9`` of a streamed run (decode workers on) in the middle of its second epoch (its progress bar past
    the first step), then ``--resume`` to the end: the checkpoint (parameters, optimiser state, step, key) and every
    metrics row equal those of the uninterrupted streamed run (no workers), bit for bit."""
    import os
    import re
    import signal
    import time

    import jax

    from jaxbias import runs

    root, table = folder
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}

    def argv(wd, *more):  # 240 training images in batches of 2: 120 steps per epoch
        args = _argv(root, table, wd, "--epochs", "3", "--stream", "true", "--batch-size", "2", *more)
        return [sys.executable, "-m", "jaxbias.cli", *(a for a in args if a != "--no-progress")]

    assert subprocess.run(argv(tmp_path / "ref"), capture_output=True, env=env, timeout=300).returncode == 0
    wd, log = tmp_path / "killed", tmp_path / "killed.log"
    with open(log, "w") as err:  # a file, not a pipe: nothing blocks a child that is about to be killed
        proc = subprocess.Popen(argv(wd, "--workers", "2"), stdout=subprocess.DEVNULL, stderr=err, env=env)
    mid = re.compile(r"epoch 2/3: +\d+%\|[^|]*\| *([1-9]\d*)/120")  # the second epoch's bar past its first step
    deadline = time.monotonic() + 300
    while proc.poll() is None and not mid.search(log.read_text(errors="replace")):
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.002)
    assert proc.poll() is None, f"the run ended before it was killed: {log.read_text()}"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    steps = [int(s) for s in mid.findall(log.read_text(errors="replace"))]
    kept = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [1] and 0 < steps[-1] < 120, (kept, steps)  # killed inside epoch 2
    done = subprocess.run(argv(wd, "--workers", "2", "--resume"), capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((wd / "results.json").read_text())["resumed_from"] == 1

    a, b = runs.restore(str(tmp_path / "ref")), runs.restore(str(wd))
    assert a.epoch == b.epoch == 3
    leaves_a, leaves_b = jax.tree.leaves(a.state), jax.tree.leaves(b.state)
    assert len(leaves_a) == len(leaves_b) > 0
    for u, v in zip(leaves_a, leaves_b):  # bit for bit
        assert np.asarray(u).dtype == np.asarray(v).dtype and np.array_equal(np.asarray(u), np.asarray(v))

    def rows(w):
        return [{k: v for k, v in json.loads(r).items() if k != "seconds"}
                for r in (w / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows(wd)] == [1, 2, 3] and rows(wd) == rows(tmp_path / "ref")
    assert _numbers(wd) == _numbers(tmp_path / "ref")


def test_prefetched_gives_the_same_values_in_order_with_and_without_workers():
    from jaxbias.data.lazy import prefetched

    rows = [np.arange(i, i + 3) for i in range(0, 30, 3)]
    expected = [idx * 10 for idx in rows]
    for workers in (0, 1, 3):
        got = list(prefetched(lambda idx: idx * 10, rows, workers=workers))
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)
    with pytest.raises(ValueError, match="workers must be a non-negative int"):
        prefetched(lambda idx: idx, rows, workers=-1)


def test_stream_none_streams_exactly_when_the_decoded_folder_would_not_fit_a_quarter_of_the_memory(folder,
                                                                                                   monkeypatch):
    from jaxbias.data import lazy as lazy_lib

    assert lazy_lib.memory_bytes() > 2**28  # this machine's memory, read from the system
    root, meta = folder
    settings = {"root": str(root), "metadata": str(meta), "image_size": SIZE, "mask_column": "mask"}
    need = 300 * SIZE * SIZE * (4 * 3 + 1)  # 300 images of 12x12x3 float32 and a mask byte per pixel
    for memory, lazy in ((4 * need, False), (4 * need - 4, True), (0, False)):  # 0: the system does not say
        monkeypatch.setattr(lazy_lib, "memory_bytes", lambda memory=memory: memory)
        ds = datasets.load("folder", settings, seed=0)
        assert isinstance(ds.train.x, LazyImages) is lazy, memory
        assert all(isinstance(e.x, LazyImages) is lazy for e in ds.evals.values())
    monkeypatch.setattr(lazy_lib, "memory_bytes", lambda: 1)  # an explicit setting wins over the estimate
    assert not isinstance(datasets.load("folder", {**settings, "stream": False}, seed=0).train.x, LazyImages)
