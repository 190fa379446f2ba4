"""Read and write PyTorch ``torch.save`` state dicts without importing torch.

A state dict saved by ``torch.save`` is one of two formats:

- **zip** (PyTorch ≥ 1.6): a zip archive ``<name>/data.pkl`` (a pickle of the
  dict whose tensors point at storages by *persistent id*
  ``("storage", StorageType, key, location, numel)``), ``<name>/data/<key>``
  (raw little-endian bytes of each storage), ``<name>/byteorder``,
  ``<name>/version``.
- **legacy** (older checkpoints, e.g. some torchvision ImageNet weights): a
  stream of pickles — magic number, protocol version, system info, the dict
  (persistent ids with a sixth field, an optional storage view), the sorted
  list of storage keys — then, per key, an int64 element count and the raw
  bytes.

Tensors are rebuilt by ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)``. The unpickler here resolves only the handful of globals a
state dict needs (``collections.OrderedDict``, the rebuild functions, the
float32/float16/float64/int64 storage types) and rejects every other global,
so loading a file runs no code from it.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Mapping

import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# storage type name -> element dtype (little-endian)
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "DoubleStorage": np.dtype("<f8"),
    "LongStorage": np.dtype("<i8"),
}
_DTYPE_STORAGES = {np.dtype(v).newbyteorder("="): k for k, v in _STORAGE_DTYPES.items()}


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. inside the unpickler."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A storage whose bytes may arrive later (legacy format: after the pickle)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None
        self.base: tuple[_Storage, int] | None = None  # legacy storage view: (root, offset)

    def array(self) -> np.ndarray:
        if self.base is not None:
            root, offset = self.base
            return root.array()[offset : offset + self.numel]
        if self.data is None:
            raise ValueError("torch file: a tensor's storage has no data record")
        return self.data


class _LazyTensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        if not isinstance(storage, _Storage):
            raise ValueError(f"torch file: a tensor is built from {type(storage).__name__}, not a storage")
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def materialise(self) -> np.ndarray:
        data = self.storage.array()
        if len(self.size) != len(self.stride):
            raise ValueError(f"torch file: tensor size {self.size} and stride {self.stride} differ in length")
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, data.dtype.newbyteorder("="))
        last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
        if self.offset < 0 or min(self.stride, default=0) < 0 or last >= data.size:
            raise ValueError(
                f"torch file: tensor (offset {self.offset}, size {self.size}, stride {self.stride}) "
                f"reads past its storage of {data.size} elements"
            )
        native = data.dtype.newbyteorder("=")
        n = int(np.prod(self.size))
        contiguous = [int(np.prod(self.size[i + 1 :])) for i in range(len(self.size))]
        if data.dtype == native and all(st == c for n_i, st, c in zip(self.size, self.stride, contiguous) if n_i > 1):
            return data[self.offset : self.offset + n].reshape(self.size)  # a view, no copy
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(st * data.itemsize for st in self.stride),
            writeable=False,
        )
        return np.array(view, dtype=data.dtype.newbyteorder("="))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    del requires_grad, backward_hooks
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, source: str, storages: dict[str, _Storage], fetch=None):
        super().__init__(file)
        self._source = source
        self._storages = storages
        self._fetch = fetch  # zip format: key -> raw bytes

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name.endswith("Storage"):
            raise ValueError(
                f"{self._source}: storage type torch.{name} is not supported; "
                f"expected one of {sorted(_STORAGE_DTYPES)} (save the state dict as float32)"
            )
        raise ValueError(
            f"{self._source}: refusing to unpickle {module}.{name}; only a plain state dict of tensors "
            "(OrderedDict name -> tensor) can be read"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or not pid or _ascii(pid[0]) != "storage" or len(pid) not in (5, 6):
            raise ValueError(f"{self._source}: unsupported persistent id {pid!r}")
        stype, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(stype, _StorageType):
            raise ValueError(f"{self._source}: persistent id names {stype!r}, not a storage type")
        key = _ascii(key)
        if key not in self._storages:
            storage = _Storage(stype.dtype, int(numel))
            if self._fetch is not None:
                storage.data = self._fetch(key, stype.dtype, int(numel))
            self._storages[key] = storage
        storage = self._storages[key]
        if view is None:
            return storage
        view_key, offset, view_size = view
        view_key = _ascii(view_key)
        if view_key not in self._storages:
            sub = _Storage(stype.dtype, int(view_size))
            sub.base = (storage, int(offset))
            self._storages[view_key] = sub
        return self._storages[view_key]


def _ascii(s: Any) -> Any:
    return s.decode("ascii") if isinstance(s, bytes) else s


def _materialise(obj: Any, source: str) -> dict[str, np.ndarray]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        raise ValueError(
            f"{source}: holds a checkpoint dict with a 'state_dict' entry; save the state dict itself "
            "(torch.save(model.state_dict(), path))"
        )
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, _LazyTensor):
            raise ValueError(
                f"{source}: expected a state dict (str -> tensor), entry {k!r} is a {type(v).__name__}"
            )
        out[k] = v.materialise()
    return out


def _read_zip(path: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise ValueError(f"{path}: a zip file without exactly one '<name>/data.pkl'; not a torch.save file")
        prefix = pkls[0][: -len("data.pkl")]
        order = "little"
        if prefix + "byteorder" in names:
            order = zf.read(prefix + "byteorder").decode("ascii").strip()
        if order not in ("little", "big"):
            raise ValueError(f"{path}: unknown byteorder record {order!r}")

        def fetch(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            name = f"{prefix}data/{key}"
            if name not in names:
                raise ValueError(f"{path}: storage record {name!r} is missing")
            dt = dtype.newbyteorder("<" if order == "little" else ">")
            nbytes = numel * dt.itemsize
            if zf.getinfo(name).file_size < nbytes:
                raise ValueError(f"{path}: storage {key} has {zf.getinfo(name).file_size} bytes, expected {nbytes}")
            buf = bytearray(nbytes)  # writable, unlike zf.read's bytes
            with zf.open(name) as fh:
                fh.readinto(buf)
            return np.frombuffer(buf, dt, count=numel)

        storages: dict[str, _Storage] = {}
        obj = _Unpickler(io.BytesIO(zf.read(pkls[0])), path, storages, fetch).load()
        return _materialise(obj, path)


def _read_legacy(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        storages: dict[str, _Storage] = {}
        header = []
        try:
            for _ in range(3):
                header.append(_Unpickler(f, path, storages).load())
        except Exception as e:  # not a pickle stream at all
            raise ValueError(f"{path}: neither a zip nor a legacy torch.save file ({e})") from None
        magic, protocol, sys_info = header
        if magic != _MAGIC or protocol != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: not a torch.save file (magic {magic!r}, protocol {protocol!r})")
        little = sys_info.get("little_endian", True) if isinstance(sys_info, Mapping) else True
        obj = _Unpickler(f, path, storages).load()
        keys = _Unpickler(f, path, storages).load()
        for key in keys:
            key = _ascii(key)
            if key not in storages:
                raise ValueError(f"{path}: storage key {key!r} is not used by any tensor")
            storage = storages[key]
            (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
            dt = storage.dtype.newbyteorder("<" if little else ">")
            raw = bytearray(numel * dt.itemsize)
            if f.readinto(raw) != len(raw):
                raise ValueError(f"{path}: file ends inside storage {key!r}")
            storage.data = np.frombuffer(raw, dt)
        return _materialise(obj, path)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``torch.save``-d state dict (zip or legacy format) into NumPy arrays, without torch.

    Args:
      path: a ``.pth``/``.pt`` file holding ``model.state_dict()``.
    Returns:
      ``{name: array}`` in the file's order, arrays in PyTorch layout and dtype.
    Raises:
      ValueError: not a torch file, a global other than a tensor/storage/OrderedDict,
        an unsupported storage type (bfloat16, int32, …), or a truncated storage.
    """
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    return _read_legacy(path)


# ---------------------------------------------------------------------------
# Writing: the pickle is emitted opcode by opcode, because pickling a reference
# to torch._utils._rebuild_tensor_v2 through `pickle` would need torch itself.


def _op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _op_int(n: int) -> bytes:
    if 0 <= n < 256:
        return pickle.BININT1 + bytes([n])
    if -(2**31) <= n < 2**31:
        return pickle.BININT + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(raw)]) + raw


def _op_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def _op_tuple(items: list[bytes]) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _ordered_dict() -> bytes:
    return _op_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE


def _pickle_state(arrays: list[tuple[str, np.ndarray]], legacy: bool) -> bytes:
    out = [pickle.PROTO + b"\x02", _ordered_dict(), pickle.MARK]
    for i, (name, a) in enumerate(arrays):
        stype = _DTYPE_STORAGES[a.dtype.newbyteorder("=")]
        pid = [_op_str("storage"), _op_global("torch", stype), _op_str(str(i)), _op_str("cpu"), _op_int(a.size)]
        if legacy:
            pid.append(pickle.NONE)
        strides = [st // a.itemsize for st in np.empty(a.shape, a.dtype).strides] if a.ndim else []
        args = [
            _op_tuple(pid) + pickle.BINPERSID,
            _op_int(0),
            _op_tuple([_op_int(n) for n in a.shape]),
            _op_tuple([_op_int(s) for s in strides]),
            pickle.NEWFALSE,
            _ordered_dict(),
        ]
        out += [_op_str(name), _op_global("torch._utils", "_rebuild_tensor_v2"), _op_tuple(args), pickle.REDUCE]
    out += [pickle.SETITEMS, pickle.STOP]
    return b"".join(out)


def save_pth(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray], *, legacy_format: bool = False) -> None:
    """Write ``{name: array}`` as a file that ``torch.load`` (also ``weights_only=True``) reads.

    Args:
      path: destination, conventionally ``.pth``.
      state_dict: arrays of dtype float32, float16, float64 or int64 (PyTorch layout).
      legacy_format: write the pre-1.6 stream format instead of the zip archive
        (``torch.save(..., _use_new_zipfile_serialization=False)``).
    """
    arrays: list[tuple[str, np.ndarray]] = []
    for name, a in state_dict.items():
        a = np.asarray(a)
        if a.dtype.newbyteorder("=") not in _DTYPE_STORAGES:
            raise ValueError(
                f"state_dict[{name!r}] has dtype {a.dtype}; expected one of float32, float16, float64, int64"
            )
        arrays.append((str(name), np.asarray(a, a.dtype.newbyteorder("<"), order="C")))
    body = _pickle_state(arrays, legacy_format)
    path = os.fspath(path)
    if legacy_format:
        sys_info = {"protocol_version": _LEGACY_PROTOCOL, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 8}}
        with open(path, "wb") as f:
            for head in (_MAGIC, _LEGACY_PROTOCOL, sys_info):
                f.write(pickle.dumps(head, protocol=2))
            f.write(body)
            f.write(pickle.dumps([str(i) for i in range(len(arrays))], protocol=2))
            for _, a in arrays:
                f.write(struct.pack("<q", a.size))
                f.write(a.tobytes())
        return
    stem = "archive"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{stem}/data.pkl", body)
        zf.writestr(f"{stem}/byteorder", "little")
        for i, (_, a) in enumerate(arrays):
            zf.writestr(f"{stem}/data/{i}", a.tobytes())
        zf.writestr(f"{stem}/version", "3\n")
