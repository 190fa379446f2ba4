"""The one epoch loop of :func:`jaxbias.train.fit` and :func:`jaxbias.sweep.fit_sweep`, and its feeds.

A run is one or more *lanes*. A lane is a training state (one model, or ``K``
members stacked along a leading axis), the extra arguments of its step (a
sweep's hyperparameter values) and its data key(s). Each epoch, every lane
draws its batches as :func:`jaxbias.data.iterators.batch_indices` does::

    perm = permutation(fold_in(data_key, epoch), n)          # one per member
    batch t = perm[t·B : (t+1)·B]     t = 0 … S-1,   S = ⌊n / B⌋   (+ a short last batch without drop_last)

and runs ``step(state, batch, args) -> (state, metrics)`` on them. How the
batches reach the step is the *feed*:

- ``"host"``: every batch is gathered from host memory (``a[idx]``), sent to
  the device(s) and the step is called from Python, one call per step (any
  size of in-memory data).
- ``"device"``: the training arrays are put on the device(s) once; each
  epoch's permutation is drawn there and the epoch (or a chunk of it, for the
  progress bar) runs as ONE compiled ``lax.scan`` of steps, the metrics summed
  on the device: no gather on the host, no transfer and no sync per step.
- ``"auto"`` (default): ``"device"`` when the training arrays take at most
  :data:`DEVICE_FEED_FRACTION` of a device's memory (2 GiB where JAX reports
  no limit, e.g. on a CPU), else ``"host"``.

Training arrays read when indexed (a streamed dataset's
:class:`jaxbias.data.lazy.LazyImages`) take the host feed: each step decodes
its batch only, so memory does not grow with the data set (``"auto"`` picks
``"host"``; ``"device"`` is refused). With decode workers (``LazyImages.workers``,
the folder dataset's ``workers`` setting) the epoch's batches are a grain
pipeline over the same index order: ``k`` threads decode the next batches and
place them with the step's sharding while the device runs the current one, at
most :data:`PREFETCH_PER_WORKER` ``· k`` batches ahead; the same arrays in the
same order, so the same numbers. With ``worker_kind="process"`` the ``k``
workers are processes (spawned once per run, shut down when it ends or is
interrupted): they decode the next batches to uint8 and send them back; this
process turns them into float32 (the same arithmetic) and places them.

Both feeds run the same step on the same batches in the same order and sum the
metrics in the same order, so they give the same numbers (measured equal to
the bit on XLA:CPU for the bundled networks; ``tests/test_engine.py``); the
checkpoints have the same layout and a run may resume with another feed. A
:class:`jaxbias.training.parallel.Layout` says where everything lives: one device,
data parallelism (state replicated, batch split), or sweep members split over
a mesh axis.

The loop writes no file itself: handed a :class:`Store` (e.g. :class:`jaxbias.workdir.Store`: a
run directory's lock, checkpoints and ``metrics.jsonl``), it records each
epoch there (the state as packed by the caller, the epoch's rows) and resumes
from it: the newest checkpoint is restored, rows of later epochs are dropped
and the run replays exactly what the uninterrupted run would have done.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxbias.data.iterators import num_batches, permutation
from jaxbias.data.lazy import (PREFETCH_PER_WORKER, finish_held, hold, is_lazy, prefetched, process_pool,
                               read_held)
from jaxbias.training.checkpoint import interrupts_deferred
from jaxbias.training.parallel import Layout, to_host
from jaxbias.types import Batch
from jaxbias.validation import check_labels

__all__ = ["FEEDS", "DEVICE_FEED_FRACTION", "PREFETCH_PER_WORKER", "Lane", "LoopResult", "Store", "choose_feed", "check_eval_sets", "check_train", "epoch_order", "run_epochs",
           "progress_bar"]

FEEDS = ("auto", "host", "device")
#: Share of one device's memory the training arrays may take for ``feed="auto"`` to keep them there.
DEVICE_FEED_FRACTION = 0.25
_CPU_DEVICE_FEED_BYTES = 2 << 30
#: Steps the host feed may run ahead of the device with streamed data: each queued step holds its decoded batch,
#: so an unbounded queue would grow with the epoch.
STREAM_AHEAD = 2
#: Most progress-bar updates per epoch with the device feed (each one a sync, so few).
BAR_CHUNKS = 10


@dataclass
class Lane:
    """One state the loop trains: a model, or ``K`` members stacked (``data_key`` then has shape ``(K,)``)."""

    state: Any
    args: Any
    data_key: jax.Array


def check_train(train: Batch, num_classes: int | None = None) -> int:
    """Rows of the training set; raises ``ValueError`` when it is empty or its fields disagree.

    Integer labels must be class indices: non-negative, and below ``num_classes`` when given.
    """
    if train.x is None or train.y is None:
        raise ValueError("train.x and train.y must be arrays")
    n = int(np.shape(train.x)[0])
    if n == 0:
        raise ValueError("the training set is empty (train.x has 0 rows)")
    for name in ("y", "bias", "mask"):
        a = getattr(train, name)
        if a is not None and np.shape(a)[0] != n:
            raise ValueError(f"train.{name} has {np.shape(a)[0]} rows, expected {n} (same as train.x)")
    y = np.asarray(train.y)
    if y.ndim == 1:  # class indices (an integer dtype: float labels would reach the loss's TypeError)
        check_labels("train.y", y, num_classes=num_classes)
    return n


def check_eval_sets(sets: Any, num_classes: int) -> None:
    """Each evaluation set's labels are class indices of the model, or a ``ValueError`` naming the set."""
    for name, data in (sets or {}).items():
        check_labels(f"the labels (y) of evaluation set {name!r}", data.y, n=int(np.shape(data.x)[0]),
                     against="its x", num_classes=num_classes)


def _nbytes(train: Batch) -> int:
    return sum(int(np.prod(np.shape(a))) * np.dtype(a.dtype).itemsize for a in train if a is not None)


def _streamed(train: Batch) -> bool:
    """Whether a training array is read when indexed (not held in memory): see :mod:`jaxbias.data.lazy`."""
    return any(is_lazy(a) for a in train)


def choose_feed(feed: str, train: Batch) -> str:
    """``"host"`` or ``"device"``: ``feed`` itself, or for ``"auto"`` whether the training arrays fit (module docstring);
    streamed training arrays take ``"host"``."""
    if feed not in FEEDS:
        raise ValueError(f"feed must be one of {FEEDS}; got {feed!r}")
    if _streamed(train):
        if feed == "device":
            raise ValueError("feed 'device' puts the whole training set on the device, but this dataset is streamed "
                             "from disk (stream true): use feed 'host' or 'auto', or load the data without streaming")
        return "host"
    if feed != "auto":
        return feed
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    budget = DEVICE_FEED_FRACTION * limit if limit else _CPU_DEVICE_FEED_BYTES
    return "device" if _nbytes(train) <= budget else "host"


def epoch_order(data_key: jax.Array, epoch: Any, *, n: int, batch_size: int, drop_last: bool):
    """One epoch's batches: ``(full, last)``, ``full`` of shape ``(S, B)`` (``(S, K, B)`` for ``K`` keys).

    ``last`` is the short final batch (``(r,)`` or ``(K, r)``) without
    ``drop_last`` when ``B`` does not divide ``n``, else ``None``. Traceable
    (``epoch`` may be an array); equal to :func:`~jaxbias.data.iterators.batch_indices`.
    """
    s = n // batch_size

    def one(key):
        return permutation(jax.random.fold_in(key, epoch), n)

    perm = one(data_key) if data_key.ndim == 0 else jax.vmap(one)(data_key)
    full = perm[..., : s * batch_size].reshape(*perm.shape[:-1], s, batch_size)
    if perm.ndim == 2:
        full = jnp.swapaxes(full, 0, 1)
    last = perm[..., s * batch_size:] if (not drop_last and n % batch_size) else None
    return full, last


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr, or ``None``."""
    if not enabled:
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------- #
# feeds
# --------------------------------------------------------------------------- #


class _HostFeed:
    """Gather on the host, place, call the jitted step once per step."""

    def __init__(self, step, train: Batch, layout: Layout, *, n: int, batch_size: int, drop_last: bool,
                 interrupted: Callable[[], bool] = lambda: False):
        self.interrupted = interrupted  # checked before each step: see run_epochs
        # host arrays as they are; streamed ones (read when indexed) stay so: each step decodes its batch only
        self.train = Batch(*(None if a is None else a if is_lazy(a) else np.asarray(a) for a in train))
        self.ahead = STREAM_AHEAD if _streamed(train) else None
        self.workers = max((a.workers for a in train if is_lazy(a)), default=0)  # decode workers, 0: none
        kinds = {a.worker_kind for a in train if is_lazy(a) and a.workers}
        self.processes = "process" in kinds  # decode processes (else threads)
        if self.processes and jax.process_count() > 1:
            raise ValueError("worker_kind must be thread in a run of several JAX processes (decode processes place "
                             "their batches from this process only); got 'process'")
        self.pool = None  # the decode processes, started at the first epoch, kept until close()
        self.layout = layout
        self.step = layout.jit(lambda st, b, args: _placed_step(step, layout, st, b, args))
        self.order = _order_fn(n=n, batch_size=batch_size, drop_last=drop_last)
        self.collect = jax.jit(_collect)

    def run(self, lane: Lane, epoch: jax.Array, bar):
        full, last = self.order(lane.data_key, epoch)
        rows = list(to_host(full)) + ([to_host(last)] if last is not None else [])
        state, ms = lane.state, []
        step, args, interrupted, ahead = self.step, lane.args, self.interrupted, self.ahead  # looked up once
        with contextlib.closing(self._batches(rows)) as batches:
            for t, batch in enumerate(batches):  # per step: one call of the compiled step, nothing else on the device
                if interrupted():
                    raise KeyboardInterrupt
                state, m = step(state, batch, args)
                ms.append(m)
                if ahead is not None and t >= ahead:  # streamed: a bounded queue of decoded batches
                    jax.block_until_ready(ms[t - ahead])
                if bar is not None:
                    if t % 5 == 4:
                        bar.set_postfix(loss=_short(m["loss"]))
                    bar.update(1)
        sums, losses = self.collect(ms)  # once per epoch, one program: the steps' metrics summed in order
        return state, sums, losses, len(rows)

    def _batches(self, rows: list[np.ndarray]):
        """The batches of ``rows`` in order: gathered when the loop asks for each, or with decode workers by a grain
        pipeline whose threads gather and place the next ones ahead (closed with the iterator)."""
        if not self.workers:
            gather, train = self.layout.gather, self.train
            return (gather(train, idx) for idx in rows)
        if self.processes:
            if self.pool is None:
                self.pool = process_pool(self.workers, hold, (self.train,))
            return prefetched(read_held, rows, workers=self.workers, kind="process", pool=self.pool,
                              then=self._placed_read)
        return prefetched(self._placed_batch, rows, workers=self.workers)

    def _placed_read(self, read: tuple) -> Batch:
        """In this process: a decode process's batch (uint8 images) finished as ``a[idx]`` would be and placed as
        :meth:`_placed_batch` places it."""
        return self.layout.put(Batch(*finish_held(self.train, read)), "batch")

    def close(self) -> None:
        """Shut the decode processes down (if any were started): batches not started are cancelled."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _placed_batch(self, idx: np.ndarray) -> Batch:
        """A decode worker's part: batch ``idx`` gathered and put on the device(s) with the step's sharding."""
        batch = self.layout.gather(self.train, idx)
        return jax.device_put(batch) if self.layout.sharding("batch") is None else batch


class _DeviceFeed:
    """The data on the device once; each epoch (or chunk) one compiled ``lax.scan`` of steps."""

    def __init__(self, step, train: Batch, layout: Layout, *, n: int, batch_size: int, drop_last: bool,
                 interrupted: Callable[[], bool] = lambda: False):
        self.interrupted = interrupted  # checked before each chunk: see run_epochs
        self.layout = layout
        self.data = layout.put(train, "data")  # host or device arrays, sent (or kept) once
        self.order = _order_fn(n=n, batch_size=batch_size, drop_last=drop_last)
        # chunk offsets on the device once: an epoch then sends nothing from the host
        s = n // batch_size
        self.starts = {size: layout.put([np.int32(i) for i in range(0, s, size)], "data")
                       for size in {max(s, 1), _bar_chunk(s)}}

        def take(data, idx):
            return layout.constrain(Batch(*(None if a is None else a[idx] for a in data)), "batch")

        def chunk(state, data, order, start, args, *, length):
            def body(st, idx):
                return _placed_step(step, layout, st, take(data, idx), args)

            return jax.lax.scan(body, state, jax.lax.dynamic_slice_in_dim(order, start, length))

        def last(state, data, idx, args):
            state, m = _placed_step(step, layout, state, take(data, idx), args)
            return state, jax.tree.map(lambda v: v[None], m)

        # one program per chunk length: the whole epoch without a bar, _bar_chunk(s) steps with one
        self._chunk = {size: layout.jit(functools.partial(chunk, length=size)) for size in self.starts}
        self.last = layout.jit(last)
        # the sums in a program of their own: the step's program then has one signature, first chunk or not
        self.add = jax.jit(_running_sum, donate_argnums=0)

    def run(self, lane: Lane, epoch: jax.Array, bar):
        full, last = self.order(lane.data_key, epoch)
        if self.layout.sharded:
            full, last = self.layout.put((full, last), "data")
        s = int(full.shape[0])
        size = max(s, 1) if bar is None else _bar_chunk(s)
        state, sums, losses = lane.state, None, []
        for start in self.starts[size]:  # size divides s: every chunk has the same length
            _stop_if(self.interrupted)
            state, ms = self._chunk[size](state, self.data, full, start, lane.args)
            sums = self.add(sums, ms)
            losses.append(ms["loss"])
            if bar is not None:
                bar.set_postfix(loss=_short(ms["loss"][-1]))
                bar.update(size)
        if last is not None:
            state, ms = self.last(state, self.data, last, lane.args)
            sums = self.add(sums, ms)
            losses.append(ms["loss"])
            if bar is not None:
                bar.update(1)
        return state, sums, jnp.concatenate(losses), s + (last is not None)


def _bar_chunk(s: int) -> int:
    """Steps per chunk with a progress bar: the smallest divisor of ``s`` giving at most :data:`BAR_CHUNKS` chunks.

    A divisor, so that every chunk has one length and the epoch program is
    compiled once (a prime ``s`` runs as one chunk: the bar moves per epoch).
    """
    lo = max(1, -(-s // BAR_CHUNKS))
    return next((d for d in range(lo, s + 1) if s % d == 0), max(s, 1))


def _order_fn(*, n: int, batch_size: int, drop_last: bool):
    """Jitted :func:`epoch_order` on raw key data (placed like the data: every process holds it)."""
    return jax.jit(lambda key_data, epoch: epoch_order(jax.random.wrap_key_data(key_data), epoch, n=n,
                                                       batch_size=batch_size, drop_last=drop_last))


def _placed_step(step, layout: Layout, state, batch, args):
    state, m = step(state, batch, args)
    return layout.constrain(state, "state"), m


def _collect(ms: list) -> tuple[Any, jax.Array]:
    """The per-step metrics of an epoch (a list of dicts): their sums (:func:`_running_sum`'s order) and the losses."""
    stacked = jax.tree.map(lambda *v: jnp.stack(v), *ms)
    return _running_sum(None, stacked), stacked["loss"]


def _running_sum(sums, ms):
    """``sums + ms[0] + ms[1] + …`` in that order (the host feed's order, so both feeds sum to the same bits)."""
    if sums is None:
        sums, ms = jax.tree.map(lambda v: v[0], ms), jax.tree.map(lambda v: v[1:], ms)
    return jax.lax.scan(lambda acc, m: (jax.tree.map(jnp.add, acc, m), None), sums, ms)[0]


def _short(loss) -> str:
    v = np.asarray(to_host(loss), np.float64)
    return f"{float(v.mean()):.4f}" if v.size else "–"


# --------------------------------------------------------------------------- #
# the loop
# --------------------------------------------------------------------------- #


class Store(Protocol):
    """What the loop keeps a run in (:class:`jaxbias.workdir.Store` keeps it in a run directory): entered for the
    whole loop, asked once for the state to resume from, handed each finished epoch."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...

    def resume(self, template: Any, *, epochs: int, resume: bool,
               must_match: Mapping[str, Any] | None) -> tuple[Any, int, list[dict[str, Any]]] | None:
        """``(state, epoch, rows)`` of the newest kept epoch (``state`` shaped like ``template``), or ``None`` to
        start afresh; refuses kept epochs when ``resume`` is false."""

    def record(self, epoch: int, rows: list[dict[str, Any]], state: Any, meta: Mapping[str, Any] | None) -> None:
        """Keep epoch ``epoch`` (1-based): its rows and the state after it."""


@dataclass
class LoopResult:
    """What :func:`run_epochs` returns: the final lanes, every record (resumed ones first), losses per step."""

    lanes: list[Lane]
    rows: list[dict[str, Any]]
    losses: list[jax.Array]
    resumed_from: int | None


def run_epochs(
    *,
    step: Callable[[Any, Batch, Any], tuple[Any, dict[str, jax.Array]]],
    lanes: Sequence[Lane],
    train: Batch,
    epochs: int,
    batch_size: int,
    drop_last: bool = True,
    feed: str = "auto",
    layout: Layout | None = None,
    records: Callable[[int, list[dict[str, np.ndarray]], int, list[Lane], float], list[dict[str, Any]]],
    pack: Callable[[list[Any]], Any] = lambda states: states[0],
    unpack: Callable[[Any], list[Any]] = lambda state: [state],
    store: Store | None = None,
    resume: bool = False,
    meta: Mapping[str, Any] | None = None,
    must_match: Mapping[str, Any] | None = None,
    progress: bool = True,
    desc: str = "",
    log: Callable[[list[dict[str, Any]]], None] | None = None,
) -> LoopResult:
    """Train every lane for ``epochs`` epochs with ``step``, fed by ``feed``; checkpoints and resume in ``store``.

    Args:
      step: pure ``step(state, batch, args) -> (state, metrics)``; jitted here,
        the state donated. Metrics are scalars (``(K,)`` for stacked members)
        and include ``"loss"``.
      lanes: the states to train (see :class:`Lane`); their states are placed
        with ``layout``'s state sharding.
      train: the training arrays (host or device).
      records: ``records(epoch, sums, steps, lanes, seconds)`` builds the
        epoch's JSON rows from each lane's metric sums (NumPy) and the number
        of steps (evaluation goes here); the rows are recorded in ``store``
        and passed to ``log``.
      pack / unpack: the checkpointed pytree from the lanes' states and back
        (default: the one lane's state).
      meta: the JSON record saved with every checkpoint (plus ``epoch``).
      must_match: entries of ``meta`` a resumed run must have saved identically.
      store: where the run is kept (a :class:`Store`; ``None``: in memory only), held from
        the start of the loop to its end; ``resume`` continues its newest checkpoint.

    Returns:
      :class:`LoopResult`.

    Raises:
      FileExistsError: ``store`` holds checkpoints and ``resume`` is false.
      ValueError: a bad ``feed``, or ``must_match`` differs from the saved run.
      KeyboardInterrupt: a Ctrl-C, at the next step, chunk or epoch (never inside a checkpoint write).
    """
    layout = layout or Layout()
    n = check_train(train)
    num_batches(n, batch_size, drop_last)  # validates
    kind = choose_feed(feed, train)
    # the data keys (raw) and the epoch numbers go to the device now: an epoch then sends nothing. Each
    # process draws the orders on its first device (a host callback sorts on a CPU, which must not run
    # inside a program of several devices that wait for each other), and the device feed copies them out.
    lanes = [Lane(layout.put(ln.state, "state"), layout.put(ln.args, "args"),
                  jnp.asarray(jax.random.key_data(ln.data_key))) for ln in lanes]
    start, resumed_from, rows = 0, None, []
    held = contextlib.ExitStack()  # the store (its lock and checkpointer) and the interrupt guard, closed together
    if store is not None:
        held.enter_context(store)
        try:
            kept = store.resume(pack([ln.state for ln in lanes]), epochs=epochs, resume=resume, must_match=must_match)
        except BaseException:
            held.close()
            raise
        if kept is not None:
            restored, start, rows = kept
            resumed_from = start
            lanes = [Lane(layout.put(s, "state"), ln.args, ln.data_key) for s, ln in zip(unpack(restored), lanes)]

    losses: list[jax.Array] = []
    try:
        # a Ctrl-C is held back to the loop's safe points (between steps, chunks and epochs): raised elsewhere
        # (orbax's writer, a host callback of the batch order) it could abort or hang the process
        interrupts = held.enter_context(interrupts_deferred())
        feeder = (_DeviceFeed if kind == "device" else _HostFeed)(step, train, layout, n=n, batch_size=batch_size,
                                                                  drop_last=drop_last, interrupted=interrupts)
        if isinstance(feeder, _HostFeed):
            held.callback(feeder.close)  # its decode processes, if any: ended with the run, however it ends
        steps_per_epoch = num_batches(n, batch_size, drop_last)
        epoch_ids = [jnp.asarray(e, jnp.int32) for e in range(start, epochs)]
        for epoch in range(start, epochs):
            _stop_if(interrupts)
            t0 = time.perf_counter()
            bar = progress_bar(steps_per_epoch * len(lanes), f"epoch {epoch + 1}/{epochs}{desc}", progress)
            sums, epoch_losses = [], []
            for i, lane in enumerate(lanes):
                state, s, ls, steps = feeder.run(lane, epoch_ids[epoch - start], bar)
                lanes[i] = Lane(state, lane.args, lane.data_key)
                sums.append(s)
                epoch_losses.append(ls)
            if bar is not None:
                bar.close()
            sums_host = [to_host(s) for s in sums]  # the epoch's one sync
            losses.append(epoch_losses[0] if len(lanes) == 1 else jnp.stack(epoch_losses, axis=-1))
            new = records(epoch, sums_host, steps, lanes, time.perf_counter() - t0)
            rows.extend(new)
            if store is not None:
                store.record(epoch + 1, new, pack([ln.state for ln in lanes]), meta)
            if log is not None:
                log(new)
    finally:
        held.close()
    return LoopResult(lanes=lanes, rows=rows, losses=losses, resumed_from=resumed_from)


def _stop_if(interrupted: Callable[[], bool]) -> None:
    if interrupted():
        raise KeyboardInterrupt
