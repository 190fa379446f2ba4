"""A run directory's lock (one process trains into a workdir at a time) and how its files are written.

:func:`lock` takes an exclusive ``flock`` on ``<workdir>/.lock`` for as
long as the run holds the directory. The kernel drops the lock when the
process ends in any way (``kill -9`` included), so a killed run never
leaves a stale lock behind, and ``--resume`` can take it again at once. A
second run into the same workdir (another shell, a second ``jaxbias train``
a few seconds later) is refused with the holder's pid instead of mixing its
checkpoints and ``metrics.jsonl`` with the first's.

The lock is re-entrant within a process (:func:`jaxbias.runs.train` holds it
around :func:`jaxbias.train.fit`, which takes it as well), and only process
0 of a multi-process run takes it (the others write nothing there).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from typing import Any, Iterator, Mapping

import jax

from jaxbias.training.checkpoint import Checkpointer

#: The files of a run directory by role: the one place their names are spelled (every reader and writer asks
#: :func:`run_path`). ``train``/``correct``/``sweep`` write ``config``, ``checkpoints``, ``metrics`` and
#: ``results``; ``evaluate --heatmaps`` ``heatmaps``; ``attribute`` the attribution files; ``unlearn`` ``params``
#: and ``report``; ``lock`` is held while a process uses the directory; ``jaxbias demo`` writes the ``demo_*``
#: files, the two charts and ``heatmaps`` into its report folder.
FILES = {
    "config": "config.json", "checkpoint_dir": "checkpoints", "metrics": "metrics.jsonl", "results": "results.json",
    "lock": ".lock", "heatmaps": "heatmaps.png",
    "attribution": "attribution.json", "general_map": "general_map.npy", "specific_maps": "specific_maps.npy",
    "maps_png": "maps.png", "reliability_png": "reliability.png",
    "params": "params.npz", "report": "report.json",
    # the demo's report folder
    "demo_report": "report.md", "demo_json": "demo.json", "accuracy_png": "accuracy.png",
    "tcav_sens_png": "tcav_sens.png",
}


def run_path(workdir: str | os.PathLike, role: str) -> str:
    """The path of the file playing ``role`` (a key of :data:`FILES`) in the run directory ``workdir``."""
    if role not in FILES:
        raise ValueError(f"role must be one of {sorted(FILES)}; got {role!r}")
    return os.path.join(os.fspath(workdir), FILES[role])


def holds_run(workdir: str | os.PathLike) -> bool:
    """Whether ``workdir`` holds a trained run: its ``config.json`` or a ``checkpoints/`` folder."""
    return os.path.exists(run_path(workdir, "config")) or os.path.isdir(run_path(workdir, "checkpoint_dir"))


_HELD: dict[str, tuple[int, int]] = {}  # realpath -> (fd, depth) of the locks this process holds


class WorkdirBusyError(RuntimeError):
    """Another live process holds the workdir."""


class WorkdirNotWritableError(PermissionError):
    """The workdir cannot be created or written by this process."""


@contextlib.contextmanager
def lock(workdir: str | os.PathLike | None, *, enabled: bool = True) -> Iterator[None]:
    """Hold ``workdir`` exclusively (creating it) for the ``with`` block; ``None`` or ``enabled=False``: no-op.

    Raises:
      WorkdirBusyError: another process holds it (its pid and host in the message).
      WorkdirNotWritableError: the workdir cannot be written (named in the message).
    """
    if workdir is None or not enabled:
        yield
        return
    path = os.path.realpath(os.fspath(workdir))
    if path in _HELD:
        fd, depth = _HELD[path]
        _HELD[path] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _HELD[path]
            _HELD[path] = (fd, depth - 1)
        return
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(run_path(path, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:
        raise WorkdirNotWritableError(f"workdir {os.fspath(workdir)} is not writable: choose another --workdir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise WorkdirBusyError(f"workdir {os.fspath(workdir)} is in use by {holder}: wait for that run to end, "
                               "or choose another workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _HELD[path] = (fd, 1)
    try:
        yield
    finally:
        fd, depth = _HELD[path]
        if depth > 1:
            _HELD[path] = (fd, depth - 1)
        else:
            del _HELD[path]
            os.close(fd)  # releases the flock (the file stays; its content is only informative)


def write_text(path: str | os.PathLike, text: str, *, append: bool = False) -> None:
    """Write ``text`` to ``path``: atomically (a reader sees the old file or the new one, never half of one),
    or appended. A failure (a full disk, a file-size limit) raises ``OSError`` naming ``path``, and leaves no
    temporary file behind."""
    path = os.fspath(path)
    tmp = path if append else f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "a" if append else "w") as f:
            f.write(text)
        if not append:
            os.replace(tmp, path)
    except OSError as e:
        if not append:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise OSError(e.errno, f"could not write {path}: {e.strerror or e}") from e


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (:func:`write_text`)."""
    write_text(path, json.dumps(obj, indent=2))


def read_history(path: str | None, *, upto: int, strict: bool = True) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` up to epoch ``upto``.

    A torn last line (the append cut off: a kill or a full disk) is dropped
    with a warning on stderr; a bad line before the last names the file and the
    line: a ``ValueError`` (a run about to append to the file), or with
    ``strict=False`` (a reader such as ``evaluate``) a warning, the line skipped.
    """
    if path is None or not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if all(not rest.strip() for rest in lines[i + 1:]):  # the last line, torn
                print(f"warning: {path}: ignored its last line, cut off ({len(line)} characters, not a whole JSON "
                      "row: the append was interrupted); the rows before it are kept", file=sys.stderr, flush=True)
                break
            message = f"{path}, line {i + 1}, is not a JSON row ({line[:60]!r}); the file is damaged before its last " \
                      "line"
            if strict:
                raise ValueError(message) from None
            print(f"warning: {message}: skipped it", file=sys.stderr, flush=True)
    return [r for r in rows if r.get("epoch", 0) <= upto]


def write_history(path: str | None, rows: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` by ``rows`` atomically (another process may be reading it)."""
    if path is not None:
        write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _json_safe(d: Any) -> Any:
    return json.loads(json.dumps(d, default=str))


class Store:
    """A run directory as the training loop keeps a run in it: its lock, a checkpoint per epoch
    (``checkpoints/``) and the history of the epochs' rows (``metrics.jsonl``).

    :func:`jaxbias.training.loop.run_epochs` is handed one and writes no file otherwise: ``with store:`` holds the
    lock and opens the checkpointer (both released together however the block ends), :meth:`resume` finds
    where the run stands, :meth:`record` keeps an epoch. With several processes, every one saves its part of
    the checkpoint and only ``writer`` (process 0 by default) writes the history and holds the lock.
    """

    def __init__(self, workdir: str | os.PathLike, *, writer: bool | None = None):
        self.workdir = workdir
        self.writer = jax.process_index() == 0 if writer is None else bool(writer)
        self.metrics = run_path(workdir, "metrics")
        self._held: contextlib.ExitStack | None = None
        self._ckpt: Checkpointer | None = None

    def __enter__(self) -> "Store":
        held = contextlib.ExitStack()
        held.enter_context(lock(self.workdir, enabled=self.writer))
        try:
            self._ckpt = held.enter_context(contextlib.closing(Checkpointer(run_path(self.workdir,
                                                                                     "checkpoint_dir"))))
        except BaseException:
            held.close()
            raise
        self._held = held
        return self

    def __exit__(self, *exc) -> None:
        held, self._held, self._ckpt = self._held, None, None
        if held is not None:
            held.close()

    def _checkpointer(self) -> Checkpointer:
        if self._ckpt is None:
            raise RuntimeError(f"the store of {self.workdir} is used outside its with block")
        return self._ckpt

    def resume(self, template: Any, *, epochs: int, resume: bool,
               must_match: Mapping[str, Any] | None = None) -> tuple[Any, int, list[dict[str, Any]]] | None:
        """Where the run stands: ``(state, epoch, rows)`` of its newest checkpoint that reads back whole (the
        state in ``template``'s structure; damaged newer ones set aside; history rows of later epochs dropped),
        or ``None`` for a run that starts (its stale history removed).

        Raises:
          FileExistsError: the directory holds checkpoints and ``resume`` is false.
          ValueError: ``epochs`` below the epochs already trained, or ``must_match`` differs from what the
            run saved.
          FileNotFoundError: no checkpoint is left although the history records trained epochs.
        """
        ckpt, workdir = self._checkpointer(), self.workdir
        latest = ckpt.latest_epoch()
        if latest is not None and not resume:
            raise FileExistsError(f"workdir {workdir} already holds checkpoints (epoch {latest}); pass resume=True "
                                  "(--resume) to continue or choose an empty workdir")
        if latest is not None and latest > epochs:
            raise ValueError(f"the run in workdir {workdir} has already trained {latest} epochs; epochs={epochs} "
                             "would contradict its history: resume with epochs >= its epochs")
        # rows of the epoch after the newest checkpoint are normal (the run stopped while saving it);
        # rows of later epochs mean checkpoints that were written are gone
        if latest is None and resume and any(r.get("epoch", 0) > 1 for r in read_history(self.metrics,
                                                                                        upto=sys.maxsize)):
            raise FileNotFoundError(
                f"resume: workdir {workdir} has no checkpoint left to resume from, but its metrics.jsonl "
                "records trained epochs; restore its checkpoints/ folder, or train into an empty workdir")
        if latest is None:
            if os.path.exists(self.metrics) and self.writer:
                os.remove(self.metrics)
            return None
        try:
            saved = ckpt.read_meta(latest)
        except Exception:  # noqa: BLE001 - a damaged newest checkpoint: restore() finds the one before
            saved = {}
        self._check_saved(saved, must_match)  # before reading any arrays
        restored, saved = ckpt.restore(template)
        self._check_saved(saved, must_match)
        latest = int(saved["epoch"])
        rows = read_history(self.metrics, upto=latest)
        lost = sorted(set(range(1, latest + 1)) - {r.get("epoch") for r in rows})
        if lost:  # e.g. the last row torn after its checkpoint was written: its training metrics are gone
            print(f"warning: {self.metrics} has lost the row of epoch(s) {', '.join(map(str, lost))} (a line cut "
                  f"off or removed) although the checkpoint of epoch {latest} is kept: training resumes from it and "
                  "the history goes on without that row", file=sys.stderr, flush=True)
        if self.writer:
            write_history(self.metrics, rows)  # drop rows of an epoch that was cut off
        return restored, latest, rows

    def record(self, epoch: int, rows: list[dict[str, Any]], state: Any, meta: Mapping[str, Any] | None) -> None:
        """Keep epoch ``epoch``: its rows appended to the history, then the state checkpointed with ``meta``."""
        if self.writer:
            write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows), append=True)
        self._checkpointer().save(epoch, state, {"epoch": epoch, **_json_safe(dict(meta or {}))})

    def _check_saved(self, saved: Mapping[str, Any], must_match: Mapping[str, Any] | None) -> None:
        for k, v in (must_match or {}).items():
            if k in saved and saved[k] != _json_safe(v):
                raise ValueError(f"{k} differ from those of the run in workdir {self.workdir} ({saved[k]}); "
                                 "resume with the same settings or choose an empty workdir")
