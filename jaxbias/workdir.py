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
from typing import Any, Iterator

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
