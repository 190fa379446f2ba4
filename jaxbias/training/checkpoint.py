"""Orbax checkpoints of a training run, one per epoch, atomic, with resume.

A checkpoint holds the whole ``TrainState`` (parameters, batch-norm
statistics, optimiser state, step counter and key) plus a small JSON record
(the epoch and the run's configuration). Orbax writes into a temporary folder
and renames it when complete, so a killed run never leaves a half-written
"latest" checkpoint.

Every checkpoint also records a fingerprint of its arrays' bytes (a
position-weighted sum per array, computed on the device), checked when it is
read back: a damaged newest checkpoint (a flipped bit, a truncated file,
unreadable metadata) is moved aside to ``<directory>.damaged/`` with a
warning, and the previous one is used instead.

A Ctrl-C (SIGINT) that arrives while a checkpoint is being written is held
back until the write is complete (:func:`interrupts_deferred`): raised inside
orbax's asynchronous writer, it aborted or hung the process.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
import signal
import sys
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax writes a checkpoint into <epoch><suffix> and renames it when complete


def _errno(e: BaseException) -> int | None:
    """The errno of ``e`` or of the exceptions it was raised from (tensorstore passes it on in its message)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e.errno
        code = re.search(r"os_error_code='?(\d+)", str(e))
        if code:
            return int(code.group(1))
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def interrupts_deferred():
    """Hold a Ctrl-C (SIGINT) back until the block ends, then raise ``KeyboardInterrupt``; a second one acts at once.

    Yields a function that says whether one is held: a loop raises at its safe
    points. Only where Python's own SIGINT handler is installed, in the main
    thread: a handler of the caller's (or SIGINT ignored, or a block already
    deferring) is left as it is.
    """
    caught: list[int] = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield lambda: False
        return

    def hold(signum, frame):
        caught.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, hold)
    try:
        yield lambda: bool(caught)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


class CheckpointError(RuntimeError):
    """No readable checkpoint is left in the directory, or one could not be written."""


@jax.jit
def _fingerprints(leaves: list[Any]) -> jax.Array:
    """One uint32 per array: ``Σ_i b_i·w_i mod 2³²`` over its bytes ``b``, odd weights ``w`` (any one-byte change shows)."""
    out = []
    for x in leaves:
        b = jax.lax.bitcast_convert_type(x, jnp.uint8) if x.dtype.itemsize > 1 else x.astype(jnp.uint8)
        b = b.reshape(-1).astype(jnp.uint32)
        w = jnp.arange(b.shape[0], dtype=jnp.uint32) * jnp.uint32(2654435761) | jnp.uint32(1)
        out.append(jnp.sum(b * w, dtype=jnp.uint32))
    return jnp.stack(out) if out else jnp.zeros((0,), jnp.uint32)


def fingerprint(tree: Any) -> list[int]:
    """The fingerprints of ``tree``'s arrays (PRNG keys by their data), as JSON ints."""
    leaves = []
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        leaves.append(jnp.asarray(x))
    return [int(v) for v in np.asarray(_fingerprints(leaves))]


def _is_empty(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and 0 in tuple(x.shape)


def _without_empty(tree: Any) -> Any:
    """``tree`` with its zero-size arrays as ``None`` (orbax cannot write them; they hold no data)."""
    return jax.tree.map(lambda x: None if _is_empty(x) else x, tree)


def _refill_empty(restored: Any, target: Any) -> Any:
    """Put back the zero-size arrays of ``target`` (shape and dtype) where :func:`_without_empty` left ``None``."""
    return jax.tree.map(lambda t, r: jnp.zeros(t.shape, t.dtype) if _is_empty(t) else r, target, restored,
                        is_leaf=lambda x: x is None)


class Checkpointer:
    """Save/restore ``(state, meta)`` pairs keyed by epoch under ``directory``."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 2):
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_epoch(self) -> int | None:
        """Epoch number of the newest complete checkpoint, or ``None``."""
        return self._manager.latest_step()

    def save(self, epoch: int, state: Any, meta: dict[str, Any]) -> None:
        """Write the checkpoint of ``epoch`` (with the state's fingerprint) and wait until it is on disk.

        A Ctrl-C meanwhile takes effect once it is written (:func:`interrupts_deferred`).
        """
        with interrupts_deferred():
            self._save(epoch, state, meta)

    def _save(self, epoch: int, state: Any, meta: dict[str, Any]) -> None:
        meta = {**meta, "fingerprint": fingerprint(state)}
        try:
            self._manager.save(
                epoch,
                args=ocp.args.Composite(state=ocp.args.StandardSave(_without_empty(state)), meta=ocp.args.JsonSave(meta)),
            )
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore report a full disk in several ways
            self._settle()
            self._remove_partial(epoch)
            kept = self.latest_epoch()
            code = _errno(e)
            first = (f"{os.strerror(code)}, errno {code}" if code else
                     (str(e).strip().splitlines() or [type(e).__name__])[0][:200])
            why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                   errno.EFBIG: "a file-size limit (ulimit -f) is reached"}.get(code, "is the disk full?")
            raise CheckpointError(
                f"could not write the checkpoint of epoch {epoch} in {self.directory} ({first}): {why}. "
                + (f"The checkpoint of epoch {kept} is kept: resume from it once there is room"
                   if kept is not None else "No earlier checkpoint exists: resuming starts the run again")) from e

    def _remove_partial(self, epoch: int) -> None:
        """Remove what a failed save left: orbax's temporary folder of ``epoch`` (it is renamed only when complete)."""
        for path in glob.glob(os.path.join(glob.escape(self.directory), f"{epoch}{_TMP_SUFFIX}*")):
            shutil.rmtree(path, ignore_errors=True)

    def _settle(self) -> None:
        """After a failed save: let orbax's other writer threads fail too, before the error is reported."""
        for _ in range(3):
            try:
                self._manager.wait_until_finished()
                return
            except Exception:  # noqa: BLE001 - the first failure is the one reported
                continue

    def restore(self, target: Any, epoch: int | None = None, *, set_aside: bool = True) -> tuple[Any, dict[str, Any]]:
        """Restore into the structure of ``target`` (arrays or ``jax.ShapeDtypeStruct``s).

        Without ``epoch``: the newest checkpoint that reads back whole; newer ones that
        do not are then moved aside (with a warning on stderr), or with ``set_aside=False``
        (a reader such as ``evaluate``: the directory is left as it is) only named in the
        warning. ``meta["epoch"]`` says which.

        Raises:
          FileNotFoundError: no checkpoint at all. CheckpointError: none is readable.
        """
        steps = sorted(self._manager.all_steps(), reverse=True) if epoch is None else [epoch]
        if not steps:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        problems, damaged = [], []
        for step in steps:
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(_without_empty(abstract)), meta=ocp.args.JsonRestore()),
                )
                state, meta = _refill_empty(restored["state"], abstract), dict(restored["meta"])
                if "fingerprint" in meta and fingerprint(state) != meta["fingerprint"]:
                    raise CheckpointError("its arrays do not match the fingerprint saved with them")
            except Exception as e:  # noqa: BLE001 - any failure to read it back
                first = str(e).splitlines()[0][:200] if str(e) else ""
                problems.append(f"epoch {step}: {type(e).__name__}: {first}")
                damaged.append(step)
                continue
            # only now, with an older checkpoint of the same structure read back whole, are the newer ones
            # known to be damaged (not a run of another shape): set them aside so that saving goes on
            for bad, why in zip(damaged, problems):
                if set_aside:
                    self._set_aside(bad, why)
                else:
                    print(f"warning: the checkpoint of epoch {bad} in {self.directory} is damaged ({why}); left it "
                          f"in place and used the checkpoint of epoch {step}", file=sys.stderr, flush=True)
            meta.setdefault("epoch", step)
            return state, meta
        raise CheckpointError(f"no checkpoint in {self.directory} reads back into this run's state: "
                              + "; ".join(problems))

    def _set_aside(self, step: int, why: str) -> None:
        """Move a damaged checkpoint out of the manager's folder (kept for inspection) and say so."""
        src = os.path.join(self.directory, str(step))
        dst_root = f"{self.directory}.damaged"
        os.makedirs(dst_root, exist_ok=True)
        dst = os.path.join(dst_root, str(step))
        if os.path.exists(dst):
            shutil.rmtree(dst)
        if os.path.exists(src):
            shutil.move(src, dst)
        self._manager.reload()
        print(f"warning: the checkpoint of epoch {step} in {self.directory} is damaged ({why}); moved it to {dst} "
              "and resumed from the one before", file=sys.stderr, flush=True)

    def read_meta(self, epoch: int | None = None) -> dict[str, Any]:
        """Only the JSON record (no arrays) of a checkpoint."""
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        restored = self._manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def close(self) -> None:
        with interrupts_deferred():
            self._manager.close()


def latest_epoch(directory: str | os.PathLike | None) -> int | None:
    """The epoch of the newest complete checkpoint in ``directory``, or ``None`` (none yet, or no such folder:
    nothing is created)."""
    if directory is None or not os.path.isdir(directory):
        return None
    return Checkpointer(directory).latest_epoch()
