"""Data parallelism: a 1-D device mesh, batch/replicated shardings, multi-host start-up.

The training state is replicated on every device of the mesh and each batch is
split along its leading (batch) axis, ``B / D`` rows per device for ``D``
devices. The step stays the pure ``step(state, batch)`` of
:func:`jaxbias.train.make_train_step`; :func:`jit_step` compiles it once with
``in_shardings``/``out_shardings`` and XLA inserts the cross-device reductions
(the gradient mean, the batch-norm statistics), so a sharded step computes the
same numbers as the single-device step up to floating-point summation order.
No ``pmap``, no per-device code.

Single host, all local accelerators::

    from jaxbias.training import parallel
    mesh = parallel.make_mesh()                      # every device; make_mesh(4): the first 4
    result = fit(..., batch_size=256, mesh=mesh)     # 256 must divide by the device count
    # CLI: jaxbias train --devices 4 ...

Eight simulated devices on a CPU (testing; the flag must be set before JAX
starts, i.e. before the first ``import jax`` in the process)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 jaxbias train --devices 8 ...

Several hosts (one process per host, every process runs the same program)::

    # on every host, before any other JAX call:
    JAXBIAS_COORDINATOR=10.0.0.1:1234 JAXBIAS_NUM_PROCESSES=2 JAXBIAS_PROCESS_ID=<0|1> python train.py
    # train.py:
    parallel.initialize_distributed()   # reads the variables above; no-op for one process
    mesh = parallel.make_mesh()         # all devices of all hosts
    fit(..., mesh=mesh)

On Slurm, Open MPI, Cloud TPU (and other clusters JAX auto-detects) set
``JAXBIAS_DISTRIBUTED=auto`` instead, or call
``initialize_distributed(auto=True)``: ``jax.distributed.initialize()`` then
finds the coordinator, process count and id itself. Several CPU processes
on one machine (how ``tests/test_parallel.py`` checks this path) also need
``jax.config.update("jax_cpu_collectives_implementation", "gloo")``.

Multi-process convention: the batch is *global* (``batch_size`` in
:func:`jaxbias.train.fit` counts the rows of all processes together) and each
process feeds only its own rows. :func:`shard_batch` receives a process's local
rows — those of the global batch that land on its own devices,
:func:`process_rows` says which — and builds the global array with
``jax.make_array_from_process_local_data``. ``fit`` does this for you: every
process draws the same shuffled global batch (same key) and takes its rows, so
the run computes what a single process with all devices would. With one
process, the local rows are the whole batch.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxbias.models.conv import use_fast_cpu_conv
from jaxbias.types import Batch

__all__ = [
    "make_mesh",
    "num_shards",
    "batch_sharding",
    "replicated",
    "check_batch_size",
    "process_rows",
    "shard_batch",
    "replicate",
    "jit_step",
    "initialize_distributed",
]

#: Environment variables read by :func:`initialize_distributed`.
ENV_COORDINATOR = "JAXBIAS_COORDINATOR"
ENV_NUM_PROCESSES = "JAXBIAS_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXBIAS_PROCESS_ID"
ENV_AUTO = "JAXBIAS_DISTRIBUTED"


def make_mesh(num_devices: int | None = None, *, axis: str = "data") -> Mesh:
    """A 1-D mesh named ``axis`` over the first ``num_devices`` devices (``None``: all of them).

    The axis is ``AxisType.Auto`` (the compiler propagates shardings from the
    jit's in/out shardings), so the methods run unchanged on sharded batches.

    Raises:
      ValueError: ``num_devices`` is not an int, is < 1, or exceeds ``jax.device_count()``.

    Example:
      >>> mesh = make_mesh(8)            # with 8 devices
      >>> batch_sharding(mesh).spec      # PartitionSpec('data',)
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if isinstance(num_devices, (bool, np.bool_)) or not isinstance(num_devices, (int, np.integer)):
        raise ValueError(f"num_devices must be an int >= 1 or None, got {num_devices!r} ({type(num_devices).__name__})")
    num_devices = int(num_devices)
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if num_devices > len(devices):
        raise ValueError(
            f"num_devices={num_devices} but only {len(devices)} {devices[0].platform} device(s) are available "
            "(on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts simulates N)"
        )
    if not isinstance(axis, str) or not axis:
        raise ValueError(f"axis must be a non-empty string, got {axis!r}")
    return jax.make_mesh((num_devices,), (axis,), axis_types=(AxisType.Auto,), devices=devices[:num_devices])


def num_shards(mesh: Mesh) -> int:
    """How many pieces a batch is cut into: every device of the mesh holds one."""
    return int(mesh.devices.size)


def _batch_spec(mesh: Mesh) -> P:
    names = tuple(mesh.axis_names)
    # a 1-D mesh gives the plain P('data'); a larger mesh splits the batch over all its axes
    return P(names[0]) if len(names) == 1 else P(names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh, the other axes whole: ``NamedSharding(mesh, P('data'))``."""
    return NamedSharding(mesh, _batch_spec(mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh: ``NamedSharding(mesh, P())``."""
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, *, name: str = "batch_size") -> None:
    """Raise ``ValueError`` unless ``batch_size`` rows split evenly over the mesh's devices."""
    d = num_shards(mesh)
    if batch_size < 1 or batch_size % d:
        raise ValueError(
            f"{name}={batch_size} does not divide evenly over {d} devices: data parallelism gives every device "
            f"the same number of rows, so use a multiple of {d} (e.g. {max(d, batch_size // d * d)})"
        )


def process_rows(mesh: Mesh, global_batch_size: int) -> np.ndarray:
    """Indices of the rows of a global batch that live on this process's devices, ascending.

    With one process this is ``arange(global_batch_size)``. These are the rows
    a process passes to :func:`shard_batch` (in this order).
    """
    check_batch_size(global_batch_size, mesh)
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    rows = set()
    for idx in index_map.values():
        rows.update(range(*idx[0].indices(global_batch_size)))
    return np.asarray(sorted(rows), dtype=np.int64)


def _local_devices_in_mesh(mesh: Mesh) -> int:
    pid = jax.process_index()
    return sum(1 for d in mesh.devices.flat if d.process_index == pid)


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
    """Place ``batch`` on ``mesh``, split along the batch axis (``None`` fields stay ``None``).

    With several processes ``batch`` holds this process's rows only (see the
    module docstring) and the result is the global batch of all processes.

    Raises:
      ValueError: fields disagree on the number of rows, a field has no batch
        axis, or the rows do not divide evenly over the devices.

    Example:
      >>> b = shard_batch(Batch(x, y), make_mesh(8))   # x: (64, 28, 28, 3)
      >>> b.x.addressable_shards[0].data.shape         # (8, 28, 28, 3)
    """
    if not isinstance(batch, Batch):
        raise ValueError(f"batch must be a jaxbias.types.Batch, got {type(batch).__name__}")
    if batch.x is None or batch.y is None:
        raise ValueError("batch.x and batch.y must not be None")
    n = None
    for name, a in zip(Batch._fields, batch):
        if a is None:
            continue
        shape = np.shape(a)
        if len(shape) == 0:
            raise ValueError(f"batch.{name} is a scalar; every field needs a leading batch axis")
        if n is None:
            n = shape[0]
        elif shape[0] != n:
            raise ValueError(f"batch.{name} has {shape[0]} rows, expected {n} (same as batch.x)")
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        check_batch_size(n, mesh, name="batch size")
        return Batch(*(None if a is None else jax.device_put(a, sharding) for a in batch))
    local = _local_devices_in_mesh(mesh)
    if local == 0 or n % local:
        raise ValueError(
            f"this process's batch has {n} rows, which do not divide evenly over its {local} devices of the "
            f"{num_shards(mesh)}-device mesh (global batch = rows of all processes)"
        )
    return Batch(
        *(None if a is None else jax.make_array_from_process_local_data(sharding, np.asarray(a)) for a in batch)
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A full copy of every array of ``tree`` on every device of ``mesh`` (e.g. a ``TrainState``).

    With several processes every process must pass the same values.
    """
    return Layout(mesh).put(tree, "data")


def jit_step(step: Callable, mesh: Mesh, *, donate: bool = True) -> Callable:
    """``jax.jit`` of ``step(state, batch) -> (state, metrics)``: state replicated, batch split.

    ``in_shardings=(replicated, batch_sharding)``, ``out_shardings=(replicated,
    replicated)``; the state (argument 0) is donated. Feed it the output of
    :func:`replicate` and :func:`shard_batch`: then one compilation serves
    every step.

    On a mesh of several devices the step is traced with
    :mod:`jaxbias.models.conv`'s CPU path off: its weight gradient scans over
    the batch one image at a time, and a scan over the sharded batch axis is
    gathered onto every device, where XLA's own convolution is split along it.
    """
    rep = replicated(mesh)
    return jax.jit(
        _xla_conv_on_mesh(step, mesh),
        donate_argnums=0 if donate else (),
        in_shardings=(rep, batch_sharding(mesh)),
        out_shardings=(rep, rep),
    )


def _xla_conv_on_mesh(fn: Callable, mesh: Mesh | None) -> Callable:
    """``fn`` traced with :mod:`jaxbias.models.conv`'s CPU path off when ``mesh`` has several devices."""
    if mesh is None or mesh.size == 1:
        return fn

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with use_fast_cpu_conv(False):
            return fn(*args, **kwargs)

    return traced


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool | None = None,
) -> bool:
    """Start JAX's multi-process runtime when this run has several processes; else do nothing.

    Each setting comes from its argument, else from the environment:
    ``JAXBIAS_COORDINATOR`` (``host:port`` of process 0), ``JAXBIAS_NUM_PROCESSES``,
    ``JAXBIAS_PROCESS_ID`` (``0 … num_processes-1``). ``auto=True`` (or
    ``JAXBIAS_DISTRIBUTED=auto``) leaves the missing settings to JAX's own
    cluster detection (Slurm, Open MPI, Cloud TPU, …). Nothing configured, or
    ``num_processes == 1``: a no-op. Idempotent: a second call (or a call after
    ``jax.distributed.initialize``) changes nothing. Must run before any other
    JAX computation of the process.

    Returns:
      ``True`` when the multi-process runtime is (now) initialised, ``False``
      for a single-process run.

    Raises:
      ValueError: a malformed setting (non-integer, ``num_processes < 1``,
        ``process_id`` out of range, several processes without a coordinator
        and without ``auto``).
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR, "").strip() or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    if auto is None:
        auto = os.environ.get(ENV_AUTO, "").strip().lower() in ("auto", "1", "true", "yes")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None and (process_id < 0 or (num_processes is not None and process_id >= num_processes)):
        raise ValueError(f"process_id must be in [0, num_processes={num_processes}), got {process_id}")
    if num_processes == 1:
        return False
    if not auto:
        if coordinator_address is None and num_processes is None and process_id is None:
            return False  # nothing configured: one process
        missing = [
            env
            for env, v in ((ENV_COORDINATOR, coordinator_address), (ENV_NUM_PROCESSES, num_processes),
                           (ENV_PROCESS_ID, process_id))
            if v is None
        ]
        if missing:
            raise ValueError(
                f"a multi-process run needs coordinator_address, num_processes and process_id; missing {missing} "
                f"(or set {ENV_AUTO}=auto to let JAX detect the cluster)"
            )
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True


# --------------------------------------------------------------------------- #
# layouts: where the engine puts the state, the data and each batch
# --------------------------------------------------------------------------- #

#: Mesh axis that sweep members are split over.
MEMBERS = "members"


def make_sweep_mesh(num_devices: int | None = None, *, data: int = 1) -> Mesh:
    """A ``(members, data)`` mesh over the first ``num_devices`` devices (``None``: all of every process).

    Sweep members are split over ``members`` (``num_devices / data`` groups);
    with ``data > 1`` each member's batch is also split over ``data`` devices
    of its group.

    Example:
      >>> mesh = make_sweep_mesh(8)           # 8 member groups of one device
      >>> mesh = make_sweep_mesh(8, data=2)   # 4 member groups, each batch over 2 devices
    """
    flat = make_mesh(num_devices)
    d = flat.devices.size
    if isinstance(data, (bool, np.bool_)) or not isinstance(data, (int, np.integer)) or data < 1 or d % data:
        raise ValueError(f"data must be a positive int dividing the {d} devices; got {data!r}")
    return jax.make_mesh((d // data, int(data)), (MEMBERS, "data"), axis_types=(AxisType.Auto,) * 2,
                         devices=list(flat.devices.flat))


class Layout:
    """How the engine places a run on devices: the state, the whole data set, each batch, the step's arguments.

    ``Layout()`` is one device (JAX's default placement). :meth:`data_parallel`:
    the state replicated, a ``(B, …)`` batch split over every device.
    :meth:`members`: ``K`` stacked states split over the ``members`` axis, a
    ``(K, B, …)`` batch split over ``members`` (and ``B`` over ``data``).
    The whole data set (device-resident feed) is replicated in both.
    """

    def __init__(self, mesh: Mesh | None = None, *, member_axis: str | None = None,
                 batch_axes: Sequence[str] = ()):
        self.mesh = mesh
        self.member_axis = member_axis
        self.batch_axes = tuple(batch_axes)
        b = self.batch_axes[0] if len(self.batch_axes) == 1 else (self.batch_axes or None)
        lead = P(member_axis) if member_axis else P()
        self._specs = {"state": lead, "args": lead, "data": P(),
                       "batch": P(member_axis, b) if member_axis else P(b)}

    @classmethod
    def data_parallel(cls, mesh: Mesh) -> "Layout":
        return cls(mesh, batch_axes=mesh.axis_names)

    @classmethod
    def members(cls, mesh: Mesh) -> "Layout":
        if MEMBERS not in mesh.axis_names:
            raise ValueError(f"a sweep mesh needs a {MEMBERS!r} axis (make_sweep_mesh); got axes {mesh.axis_names}")
        return cls(mesh, member_axis=MEMBERS, batch_axes=[a for a in mesh.axis_names if a != MEMBERS])

    @property
    def sharded(self) -> bool:
        """Whether the run lives on a mesh."""
        return self.mesh is not None

    def sharding(self, what: str) -> NamedSharding | None:
        """The ``NamedSharding`` of ``"state"``, ``"batch"``, ``"args"`` or ``"data"`` (``None`` on one device)."""
        return None if self.mesh is None else NamedSharding(self.mesh, self._specs[what])

    def check(self, *, batch_size: int, members: int | None = None, name: str = "batch_size") -> None:
        """Raise ``ValueError`` unless the batch rows (and the members) split evenly over their mesh axes."""
        if self.mesh is None:
            return
        for name, size, axes in ((name, batch_size, self.batch_axes),
                                 ("members", members, (self.member_axis,) if self.member_axis else ())):
            d = int(np.prod([self.mesh.shape[a] for a in axes])) if axes else 1
            if size is not None and size % d:
                raise ValueError(f"{name}={size} does not divide evenly over the {d} devices of mesh axes "
                                 f"{list(axes)}: every device gets the same share, so use a multiple of {d}")

    def put(self, tree: Any, what: str) -> Any:
        """Host or device arrays as global arrays with ``what``'s sharding (every process passes the same values)."""
        sharding = self.sharding(what)
        if sharding is None:
            return jax.tree.map(jax.numpy.asarray, tree)
        if jax.process_count() == 1:
            return jax.device_put(tree, sharding)

        def one(a):
            a = np.asarray(a)
            return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

        return jax.tree.map(one, tree)

    def gather(self, arrays: Batch, idx: np.ndarray) -> Batch:
        """The batch ``arrays[idx]`` gathered on the host and placed with the batch sharding.

        Only this process's shards are gathered (``idx`` may be ``(B,)`` or ``(K, B)``). On one device the
        NumPy rows are returned as they are: a jitted step places them on its own fast path, where an
        explicit transfer per array costs a Python dispatch each.
        """
        sharding = self.sharding("batch")
        if sharding is None:
            return Batch(*(None if a is None else a[idx] for a in arrays))
        if jax.process_count() == 1:
            return Batch(*(None if a is None else jax.device_put(a[idx], sharding) for a in arrays))
        k = idx.ndim

        def one(a):
            shape = idx.shape + a.shape[1:]
            return jax.make_array_from_callback(shape, sharding, lambda index: a[idx[index[:k]]][
                (slice(None),) * k + tuple(index[k:])])

        return Batch(*(None if a is None else one(a) for a in arrays))

    def constrain(self, tree: Any, what: str) -> Any:
        """Inside a jitted function: ask for ``what``'s sharding (a no-op on one device)."""
        sharding = self.sharding(what)
        return tree if sharding is None else jax.lax.with_sharding_constraint(tree, sharding)

    def jit(self, fn: Callable, *, donate_argnums: Any = 0) -> Callable:
        """``jax.jit(fn)``, traced with :mod:`jaxbias.models.conv`'s CPU path off on a mesh of several devices.

        That path's weight gradient scans over the batch one image at a time;
        a scan over a sharded batch axis would be gathered onto every device.
        """
        return jax.jit(_xla_conv_on_mesh(fn, self.mesh), donate_argnums=donate_argnums)


def to_host(tree: Any) -> Any:
    """NumPy copies of every array of ``tree``, gathered from all processes when an array spans several."""
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            if a.is_fully_replicated:
                return np.asarray(a.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(one, tree)
