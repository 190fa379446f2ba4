"""Images read from their source when indexed: a dataset larger than memory as a read-only array.

:class:`LazyImages` stands where a float32 array ``(N, H, W, C)`` of images in [0, 1] would (``train.x`` of a
streamed dataset): it has the array's ``shape``, ``dtype`` and ``len``, and ``a[i]``, ``a[i:j]`` and ``a[idx]``
decode just those rows from a random-access source, computed as the in-memory loaders compute them (the same
``uint8 / float32(255)``), so a streamed run sees the same bits. Nothing is cached: memory stays flat whatever the
number of rows.

Turning the whole of it into one array (``np.asarray``) is refused: that is exactly what a dataset larger than
memory must not do, and a refusal names the step that tried, where a silent conversion would swap the machine
or die. :meth:`LazyImages.materialise` does it on purpose (the in-memory loaders use it).
"""
from __future__ import annotations

import collections
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

#: the fields a :class:`LazyImages` reads: images as float32 in [0, 1], masks as bool
FIELDS = ("image", "mask")
#: ``stream`` none streams a dataset whose decoded images would take more than this share of the machine's memory.
MEMORY_SHARE = 0.25
#: Batches :func:`prefetched` may hold decoded ahead of the one being used, per decode worker.
PREFETCH_PER_WORKER = 2
#: The kinds of decode worker: threads of this process, or processes of their own (started fresh, see
#: :func:`process_pool`).
WORKER_KINDS = ("thread", "process")
#: How decode processes start: a fresh interpreter (forking a process after JAX has started its threads is unsafe).
START_METHOD = "spawn"

T = TypeVar("T")

log = logging.getLogger(__name__)


class LazyImages:
    """Rows ``rows`` of ``source``'s field ``field``, decoded when indexed.

    ``source[i][field]`` (or ``source.read(i, field)`` when the source has it, which decodes only that field) is
    a uint8 image ``(H, W, C)`` for ``field="image"`` (returned as float32 ``/ 255``) or a bool mask ``(H, W)`` for
    ``field="mask"`` (returned as it is). Every row has ``item_shape``. Holds the source and the row numbers only:
    it pickles when the source does. ``workers`` is for whoever reads it batch after batch: the number of threads
    that may decode the next batches ahead (the training loop's host feed), 0 = each batch when it is asked for;
    ``worker_kind`` (one of :data:`WORKER_KINDS`) says whether they are threads or processes.

    Example:
      >>> x = LazyImages(source, np.arange(len(source)), item_shape=(64, 64, 3))  # doctest: +SKIP
      >>> x[np.array([5, 2])].shape  # doctest: +SKIP
      (2, 64, 64, 3)
    """

    def __init__(self, source: Any, rows: Sequence[int] | np.ndarray, *, item_shape: Sequence[int],
                 field: str = "image", workers: int = 0, worker_kind: str = "thread"):
        if field not in FIELDS:
            raise ValueError(f"field must be one of {FIELDS}; got {field!r}")
        if not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 0:
            raise ValueError(f"workers must be a non-negative int; got {workers!r}")
        check_worker_kind(worker_kind)
        self.workers = int(workers)
        self.worker_kind = worker_kind
        self.source = source
        self.rows = np.asarray(rows, np.int64).reshape(-1)
        self.field = field
        self.item_shape = tuple(int(d) for d in item_shape)
        self.dtype = np.dtype(np.float32 if field == "image" else bool)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.rows.size, *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.rows.size

    def __repr__(self) -> str:
        return f"LazyImages({self.field}, shape={self.shape}, dtype={self.dtype.name}, read when indexed)"

    def _read(self, row: int) -> np.ndarray:
        read = getattr(self.source, "read", None)
        return read(row, self.field) if callable(read) else self.source[row][self.field]

    def _item(self, row: int) -> np.ndarray:
        """Row ``row`` of the source as it has it (uint8 image, bool mask), its shape checked."""
        item = self._read(int(row))
        if np.shape(item) != self.item_shape:
            raise ValueError(f"row {int(row)} of the source has a {self.field} of shape {np.shape(item)}; expected "
                             f"{self.item_shape}")
        return item

    def _into(self, out: np.ndarray, row: int) -> None:
        item = self._item(row)
        if self.field == "image":
            np.divide(item, np.float32(255.0), out=out, dtype=np.float32)  # as the in-memory loaders divide
        else:
            out[...] = item

    def raw(self, index: Any) -> np.ndarray:
        """Rows at positions ``index`` (an int array of any shape) as the source has them: uint8 images (or bool
        masks), shape ``index.shape + item_shape``; :meth:`finish` turns them into what ``self[index]`` returns.
        A decode process sends these back (a quarter of the float32 bytes)."""
        rows = self.rows[self._in_range(index)]
        out = np.empty((rows.size, *self.item_shape), np.uint8 if self.field == "image" else bool)
        for j, row in enumerate(rows.reshape(-1)):
            out[j] = self._item(row)
        return out.reshape(*rows.shape, *self.item_shape)

    def finish(self, raw: np.ndarray) -> np.ndarray:
        """What :meth:`raw` returned as ``self[index]`` returns it: images ``uint8 / float32(255)`` (the same
        arithmetic as the in-memory loaders, so the same bits), masks as they are."""
        if self.field == "image":
            return np.divide(raw, np.float32(255.0), dtype=np.float32)
        return raw

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((rows.size, *self.item_shape), self.dtype)
        for j, row in enumerate(rows.reshape(-1)):
            self._into(out[j], row)
        return out.reshape(*rows.shape, *self.item_shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        n = self.rows.size
        if isinstance(index, (int, np.integer)) and not isinstance(index, (bool, np.bool_)):
            if not -n <= index < n:
                raise IndexError(f"index {int(index)} is outside the {n} rows")
            out = np.empty(self.item_shape, self.dtype)
            self._into(out, self.rows[int(index)])
            return out
        if isinstance(index, slice):
            return self._gather(self.rows[index])
        if isinstance(index, tuple) or index is None or index is Ellipsis:
            raise TypeError(f"{type(self).__name__} takes one row index (an int, a slice or an int array), not "
                            f"{index!r}: index the rows first, then the array they return")
        return self._gather(self.rows[self._in_range(index)])

    def _in_range(self, index: Any) -> np.ndarray:
        """:meth:`_positions` of ``index``, each checked to lie within the rows."""
        idx, n = self._positions(index), self.rows.size
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index {int(idx[(idx < -n) | (idx >= n)][0])} is outside the {n} rows")
        return idx

    def _positions(self, index: Any) -> np.ndarray:
        """An int array or a bool array over the rows as int64 positions (checked to be ints)."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (self.rows.size,):
                raise IndexError(f"a boolean index must have shape ({self.rows.size},); got {idx.shape}")
            idx = np.flatnonzero(idx)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"row indices must be ints; got {idx.dtype}")
        return idx.astype(np.int64)

    def __array__(self, dtype: Any = None, copy: Any = None):
        raise TypeError(f"{self!r} is streamed from disk and is not turned into one array in memory (the data may "
                        "not fit); index its rows, or load the dataset without streaming (stream false)")

    def take(self, index: Any) -> "LazyImages":
        """The rows ``index`` (an int array, a bool array over the rows or a slice) as a :class:`LazyImages` of
        the same source: nothing decoded (a subset that stays on disk, e.g. one class's images)."""
        rows = self.rows[index] if isinstance(index, slice) else self.rows[self._positions(index).reshape(-1)]
        return LazyImages(self.source, rows, item_shape=self.item_shape, field=self.field, workers=self.workers,
                          worker_kind=self.worker_kind)

    def materialise(self) -> np.ndarray:
        """Every row decoded into one array in memory (what a dataset loaded without streaming holds)."""
        return self._gather(self.rows)


def check_worker_kind(kind: Any) -> None:
    """Refuse a ``worker_kind`` that is not one of :data:`WORKER_KINDS` (one line naming the setting)."""
    if not isinstance(kind, str) or kind not in WORKER_KINDS:
        raise ValueError(f"worker_kind must be one of {', '.join(WORKER_KINDS)}; got {kind!r}")


def prefetched(read: Callable[[np.ndarray], T], rows: Sequence[np.ndarray], *, workers: int,
               kind: str = "thread", pool: ProcessPoolExecutor | None = None,
               then: Callable[[Any], T] | None = None) -> Iterator[T]:
    """``read(idx)`` for each ``idx`` of ``rows``, in order: with ``workers`` = 0 each when the caller asks for it;
    else ``workers`` workers call ``read`` on the next ones while the caller uses the current one, at most
    :data:`PREFETCH_PER_WORKER` ``· workers`` ahead (memory bounded whatever the number of batches). The same values
    in the same order either way. Close the iterator (``contextlib.closing``) to stop the work of an epoch left
    early.

    ``kind`` (:data:`WORKER_KINDS`): ``"thread"``, a grain pipeline of threads of this process; ``"process"``,
    processes of their own: ``read`` (and each ``idx``) must pickle, its results come back through a pipe and
    ``then`` (if given) turns each into what is yielded, in this process, when the caller asks for it. They are
    ``pool``'s processes (:func:`process_pool`, kept by the caller, e.g. for a whole run; closing the iterator
    cancels its batches not yet started) or, without ``pool``, a pool of ``workers`` started at the first batch
    and shut down when the iterator ends or is closed.

    Example:
      >>> [int(b.sum()) for b in prefetched(lambda idx: idx * 2, [np.arange(2), np.arange(3)], workers=1)]
      [2, 6]
    """
    if not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 0:
        raise ValueError(f"workers must be a non-negative int; got {workers!r}")
    check_worker_kind(kind)
    if not workers:
        return (read(idx) if then is None else then(read(idx)) for idx in rows)
    if kind == "process":
        return _in_processes(read, rows, int(workers), pool, then)
    import grain  # heavy at start (absl, protobuf): only for a streamed run with decode workers

    options = grain.ReadOptions(num_threads=int(workers), prefetch_buffer_size=PREFETCH_PER_WORKER * int(workers))
    batches = grain.MapDataset.source(list(rows)).map(read).to_iter_dataset(options)
    return iter(batches) if then is None else (then(b) for b in batches)


def process_pool(workers: int, initializer: Callable[..., None] | None = None,
                 initargs: tuple = ()) -> ProcessPoolExecutor:
    """``workers`` decode processes (started with :data:`START_METHOD`), each running ``initializer(*initargs)``
    once (e.g. to hold the arrays it reads, sent once instead of with each batch). They ignore Ctrl-C (the
    caller's loop decides when to stop) and exit on their own when this process dies (even by ``kill -9``).
    ``shutdown()`` it when done."""
    if not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int for decode processes; got {workers!r}")
    return ProcessPoolExecutor(int(workers), mp_context=multiprocessing.get_context(START_METHOD),
                               initializer=_start_worker, initargs=(initializer, initargs))


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """In a decode process: ignore Ctrl-C, leave when the parent dies, then the caller's initializer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        def watch():
            multiprocessing.connection.wait([parent.sentinel])  # readable once the parent is gone
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="jaxbias-parent-watch").start()
    if initializer is not None:
        initializer(*initargs)


def _in_processes(read, rows, workers: int, pool: ProcessPoolExecutor | None, then) -> Iterator[Any]:
    """:func:`prefetched`'s process kind: an ordered window of at most ``PREFETCH_PER_WORKER · workers`` batches
    submitted to ``pool`` (or a pool of its own), each yielded (through ``then``) in order."""
    own = pool is None
    if own:
        pool = process_pool(workers)
    pending: collections.deque = collections.deque()
    todo = iter(rows)
    ahead = PREFETCH_PER_WORKER * workers
    try:
        for idx in todo:
            pending.append(pool.submit(read, idx))
            if len(pending) >= ahead:
                break
        while pending:
            done = pending.popleft().result()
            for idx in todo:  # keep the window full while the caller uses this one
                pending.append(pool.submit(read, idx))
                break
            yield done if then is None else then(done)
    finally:
        for f in pending:
            f.cancel()
        if own:
            pool.shutdown(wait=True, cancel_futures=True)


#: in a decode process of a run: the training arrays it reads (set once by :func:`hold`)
_HELD: Any = None


def hold(arrays: Any) -> None:
    """In a decode process: keep ``arrays`` (a :class:`jaxbias.types.Batch` of arrays and :class:`LazyImages`) for
    :func:`read_held` (a :func:`process_pool` initializer)."""
    global _HELD
    _HELD = arrays


def read_held(idx: np.ndarray) -> tuple:
    """In a decode process: the held arrays' rows ``idx``; a :class:`LazyImages` gives :meth:`LazyImages.raw`
    (uint8 images, bool masks; :func:`finish_held` finishes them), an array ``a[idx]``, ``None`` stays ``None``."""
    return tuple(None if a is None else a.raw(idx) if is_lazy(a) else a[idx] for a in _HELD)


def finish_held(arrays: Sequence[Any], read: Sequence[Any]) -> list:
    """What :func:`read_held` returned for ``arrays`` as ``a[idx]`` of each would be: the same bits."""
    return [r if not is_lazy(a) else a.finish(r) for a, r in zip(arrays, read)]


def memory_bytes() -> int:
    """This machine's physical memory in bytes (0 where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def stream_by_size(need: int, what: str) -> bool:
    """Whether data whose decoded arrays take ``need`` bytes is streamed by ``stream`` none: more than
    :data:`MEMORY_SHARE` of this machine's memory (never when the system does not say). Logs the decision for
    ``what`` (e.g. ``"folder meta.csv: 20000 images of 224x224x3"``)."""
    stream = need > MEMORY_SHARE * (memory_bytes() or float("inf"))
    log.info("%s take %.1f GiB decoded: %s", what, need / 2**30,
             "streamed (more than a quarter of the memory)" if stream else "read into memory")
    return stream


def is_lazy(a: Any) -> bool:
    """Whether ``a`` is read when indexed (a :class:`LazyImages`), not an array in memory."""
    return isinstance(a, LazyImages)


def take(a: Any, index: Any) -> Any:
    """Rows ``index`` of ``a``: a :class:`LazyImages` of those rows (nothing decoded) for a lazy ``a``, else
    ``np.asarray(a)[index]``; ``None`` stays ``None``."""
    if a is None:
        return None
    return a.take(index) if is_lazy(a) else np.asarray(a)[index]


__all__ = ["FIELDS", "MEMORY_SHARE", "PREFETCH_PER_WORKER", "START_METHOD", "WORKER_KINDS", "LazyImages",
           "check_worker_kind", "finish_held", "hold", "is_lazy", "memory_bytes", "prefetched", "process_pool",
           "read_held", "stream_by_size", "take"]
