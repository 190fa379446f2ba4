"""Orbax checkpoints of a training run, one per epoch, atomic, with resume.

A checkpoint holds the whole ``TrainState`` (parameters, batch-norm
statistics, optimiser state, step counter and key) plus a small JSON record
(the epoch and the run's configuration). Orbax writes into a temporary folder
and renames it when complete, so a killed run never leaves a half-written
"latest" checkpoint.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


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
        """Write the checkpoint of ``epoch`` and wait until it is on disk."""
        self._manager.save(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        )
        self._manager.wait_until_finished()

    def restore(self, target: Any, epoch: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restore into the structure of ``target`` (arrays or ``jax.ShapeDtypeStruct``s)."""
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = self._manager.restore(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["meta"])

    def read_meta(self, epoch: int | None = None) -> dict[str, Any]:
        """Only the JSON record (no arrays) of a checkpoint."""
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        restored = self._manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def close(self) -> None:
        self._manager.close()
