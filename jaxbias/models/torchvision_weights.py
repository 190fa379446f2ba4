"""Import torchvision ImageNet weights into :class:`VGG16`, :class:`ResNet18`, :class:`EfficientNetB0`.

The file is a torchvision state dict, either ``.npz`` (keys = state-dict names,
arrays in PyTorch layout) or a ``torch.save`` file (``.pth``/``.pt``), read by
:mod:`jaxbias.models.torch_pickle` without torch. Layout changes:

- conv weight ``(O, I/groups, kh, kw)`` → kernel ``(kh, kw, I/groups, O)``
  (the same transpose covers depthwise convs);
- linear weight ``(out, in)`` → kernel ``(in, out)``; EfficientNet's
  squeeze-excitation 1×1 convs ``(out, in, 1, 1)`` → Dense kernels ``(in, out)``;
- VGG's first classifier layer reads the 7×7×512 pool flattened channel-first
  in PyTorch and channel-last here, so its input rows are permuted;
- batch-norm ``weight, bias`` → params ``scale, bias``; ``running_mean,
  running_var`` → ``batch_stats`` ``mean, var``; ``num_batches_tracked`` is ignored.

Example (weights from ``torchvision.models.resnet18(weights="IMAGENET1K_V1")``,
inputs normalised with the ImageNet mean/std)::

    params, state = load_torchvision("resnet18", "resnet18-f37072fd.pth")
    model = jaxbias.models.bind(ResNet18(), state, train=False)
    logits = model(params, x).logits
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxbias.models import efficientnet, vgg
from jaxbias.models.efficientnet import EfficientNetB0
from jaxbias.models.resnet import BLOCKS as RESNET_BLOCKS
from jaxbias.models.resnet import ResNet18
from jaxbias.models.torch_pickle import read_state_dict, save_pth
from jaxbias.models.vgg import VGG16
from jaxbias.types import ModelState, Params

MODELS: dict[str, type[nn.Module]] = {"vgg16": VGG16, "resnet18": ResNet18, "efficientnet_b0": EfficientNetB0}
# the torchvision key of the last linear layer's weight, which fixes num_classes
_HEAD = {"vgg16": "classifier.6.weight", "resnet18": "fc.weight", "efficientnet_b0": "classifier.1.weight"}


# --- one leaf's layout change, both ways, and its shape map -------------------


@dataclass(frozen=True)
class _Layout:
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]
    torch_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


_SAME = _Layout(lambda a: a, lambda a: a, lambda s: s)
_CONV = _Layout(
    lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1), lambda s: (s[3], s[2], s[0], s[1])
)
_DENSE = _Layout(lambda a: a.T, lambda a: a.T, lambda s: (s[1], s[0]))
_CONV1X1_DENSE = _Layout(lambda a: a[:, :, 0, 0].T, lambda a: a.T[:, :, None, None], lambda s: (s[1], s[0], 1, 1))


def _vgg_fc1_layout(hw: int = 7, c: int = 512) -> _Layout:
    # torch flattens (C, H, W), we flatten (H, W, C). Swapping within each row
    # first keeps the big copy cache-friendly; the final .T stays a view.
    def to_flax(a):
        rows = np.ascontiguousarray(a.reshape(a.shape[0], c, hw * hw).transpose(0, 2, 1))
        return rows.reshape(a.shape[0], hw * hw * c).T

    def to_torch(k):
        return k.reshape(hw, hw, c, k.shape[1]).transpose(3, 2, 0, 1).reshape(k.shape[1], c * hw * hw)

    return _Layout(to_flax, to_torch, lambda s: (s[1], s[0]))


@dataclass(frozen=True)
class _Leaf:
    torch_key: str
    collection: str  # "params" or "batch_stats"
    path: tuple[str, ...]  # module path + leaf name
    layout: _Layout


def _conv(prefix: str, path: tuple[str, ...], bias: bool = False) -> list[_Leaf]:
    leaves = [_Leaf(f"{prefix}.weight", "params", path + ("kernel",), _CONV)]
    if bias:
        leaves.append(_Leaf(f"{prefix}.bias", "params", path + ("bias",), _SAME))
    return leaves


def _dense(prefix: str, path: tuple[str, ...], layout: _Layout = _DENSE) -> list[_Leaf]:
    return [
        _Leaf(f"{prefix}.weight", "params", path + ("kernel",), layout),
        _Leaf(f"{prefix}.bias", "params", path + ("bias",), _SAME),
    ]


def _bn(prefix: str, path: tuple[str, ...]) -> list[_Leaf]:
    return [
        _Leaf(f"{prefix}.weight", "params", path + ("scale",), _SAME),
        _Leaf(f"{prefix}.bias", "params", path + ("bias",), _SAME),
        _Leaf(f"{prefix}.running_mean", "batch_stats", path + ("mean",), _SAME),
        _Leaf(f"{prefix}.running_var", "batch_stats", path + ("var",), _SAME),
    ]


def _vgg16_leaves() -> list[_Leaf]:
    leaves: list[_Leaf] = []
    idx = 0  # index in torchvision's `features` Sequential: conv, ReLU, ..., MaxPool
    for s, stage in enumerate(vgg.STAGES, start=1):
        for j in range(1, len(stage) + 1):
            leaves += _conv(f"features.{idx}", (f"conv{s}_{j}",), bias=True)
            idx += 2
        idx += 1
    leaves += _dense("classifier.0", ("fc1",), _vgg_fc1_layout())
    leaves += _dense("classifier.3", ("fc2",))
    leaves += _dense("classifier.6", ("fc3",))
    return leaves


def _resnet18_leaves() -> list[_Leaf]:
    leaves = _conv("conv1", ("conv1",)) + _bn("bn1", ("bn1",))
    for i, n in enumerate(RESNET_BLOCKS, start=1):
        for j in range(n):
            t, f = f"layer{i}.{j}", f"layer{i}_{j}"
            leaves += _conv(f"{t}.conv1", (f, "conv1")) + _bn(f"{t}.bn1", (f, "bn1"))
            leaves += _conv(f"{t}.conv2", (f, "conv2")) + _bn(f"{t}.bn2", (f, "bn2"))
            if i > 1 and j == 0:
                leaves += _conv(f"{t}.downsample.0", (f, "downsample_conv"))
                leaves += _bn(f"{t}.downsample.1", (f, "downsample_bn"))
    return leaves + _dense("fc", ("fc",))


def _efficientnet_b0_leaves() -> list[_Leaf]:
    leaves = _conv("features.0.0", ("stem_conv",)) + _bn("features.0.1", ("stem_bn",))
    for s, (ratio, *_, n) in enumerate(efficientnet.STAGES, start=1):
        for j in range(n):
            t, f = f"features.{s}.{j}.block", f"stage{s}_{j}"
            b = 0
            if ratio != 1:
                leaves += _conv(f"{t}.0.0", (f, "expand_conv")) + _bn(f"{t}.0.1", (f, "expand_bn"))
                b = 1
            leaves += _conv(f"{t}.{b}.0", (f, "dw_conv")) + _bn(f"{t}.{b}.1", (f, "dw_bn"))
            leaves += _dense(f"{t}.{b + 1}.fc1", (f, "se_fc1"), _CONV1X1_DENSE)
            leaves += _dense(f"{t}.{b + 1}.fc2", (f, "se_fc2"), _CONV1X1_DENSE)
            leaves += _conv(f"{t}.{b + 2}.0", (f, "project_conv")) + _bn(f"{t}.{b + 2}.1", (f, "project_bn"))
    last = len(efficientnet.STAGES) + 1
    leaves += _conv(f"features.{last}.0", ("head_conv",)) + _bn(f"features.{last}.1", ("head_bn",))
    return leaves + _dense("classifier.1", ("classifier",))


_LEAVES: dict[str, Callable[[], list[_Leaf]]] = {
    "vgg16": _vgg16_leaves,
    "resnet18": _resnet18_leaves,
    "efficientnet_b0": _efficientnet_b0_leaves,
}


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"model name {name!r} is unknown; expected one of {sorted(MODELS)}")


def _bn_prefixes(leaves: list[_Leaf]) -> set[str]:
    return {lf.torch_key.rsplit(".", 1)[0] for lf in leaves if lf.collection == "batch_stats"}


def _abstract_variables(name: str, num_classes: int) -> dict[str, Any]:
    """Shapes of every variable (no allocation); they do not depend on the image size."""
    module = MODELS[name](num_classes=num_classes)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    return jax.eval_shape(lambda k, x: module.init(k, x, train=False), jax.random.key(0), x)


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for p in path:
        if not isinstance(tree, Mapping) or p not in tree:
            return None
        tree = tree[p]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _list(keys: list[str], limit: int = 8) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(repr(k) for k in keys[:limit]) + more


def read_torchvision_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a state dict from ``.npz`` or a ``torch.save`` file (zip or legacy), without torch."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path {path!r} is not a file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            is_npz = all(n.endswith(".npy") for n in zf.namelist())
        if is_npz:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
    return read_state_dict(path)


def from_torchvision_state(
    name: str, state_dict: Mapping[str, np.ndarray], *, num_classes: int | None = None
) -> tuple[Params, ModelState]:
    """Convert a torchvision state dict (``{name: array}``, PyTorch layout) to ``(params, state)``.

    Args:
      name: ``"vgg16"``, ``"resnet18"`` or ``"efficientnet_b0"``.
      state_dict: every key of torchvision's ``model.state_dict()``
        (``num_batches_tracked`` optional).
      num_classes: classes of the model the weights are for; ``None`` reads it
        from the last linear layer.
    Returns:
      ``(params, state)`` as :func:`jaxbias.models.init` returns them for
      ``MODELS[name](num_classes=num_classes)``; ``state`` is
      ``{"batch_stats": …}`` (``{}`` for VGG-16).
    Raises:
      ValueError: unknown model name; a missing or unexpected key; a shape
        differing from the model's (naming the key, the file's shape and the
        expected one); a non-numeric array.
    """
    _check_name(name)
    leaves = _LEAVES[name]()
    expected = {lf.torch_key for lf in leaves}
    optional = {f"{p}.num_batches_tracked" for p in _bn_prefixes(leaves)}
    missing = sorted(expected - set(state_dict), key=[lf.torch_key for lf in leaves].index)
    if missing:
        raise ValueError(f"{name}: missing key(s) {_list(missing)} in the state dict ({len(state_dict)} keys)")
    unexpected = sorted(set(state_dict) - expected - optional)
    if unexpected:
        raise ValueError(f"{name}: unexpected key(s) {_list(unexpected)}; expected torchvision's {name} state dict")

    if num_classes is None:
        head = np.shape(state_dict[_HEAD[name]])
        if len(head) != 2:
            raise ValueError(f"{name}: key {_HEAD[name]!r} has shape {head} in the file, expected (num_classes, in)")
        num_classes = int(head[0])
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    abstract = _abstract_variables(name, num_classes)
    out: dict[str, dict[str, Any]] = {}
    for lf in leaves:
        a = np.asarray(state_dict[lf.torch_key])
        target = _get(abstract[lf.collection], lf.path)
        want = lf.layout.torch_shape(tuple(target.shape))
        if a.shape != want:
            raise ValueError(
                f"{name}: key {lf.torch_key!r} has shape {a.shape} in the file, expected {want} "
                f"(num_classes={num_classes})"
            )
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"{name}: key {lf.torch_key!r} has dtype {a.dtype}, expected a float array")
        value = jnp.asarray(lf.layout.to_flax(a.astype(np.float32, copy=False)))
        _set(out.setdefault(lf.collection, {}), lf.path, value)

    # every variable of the model must have been written exactly once
    n_model = len(jax.tree.leaves(abstract))
    n_written = len(jax.tree.leaves(out))
    if n_model != n_written:  # a bug in the key tables, not bad input
        raise RuntimeError(f"{name}: filled {n_written} of the model's {n_model} variables")
    params = out.pop("params")
    return params, out


def load_torchvision(
    name: str, path: str | os.PathLike, *, num_classes: int | None = None
) -> tuple[Params, ModelState]:
    """Load torchvision weights for ``name`` from ``path`` (``.npz`` or ``torch.save`` ``.pth``).

    torch is never imported. See :func:`from_torchvision_state` for the
    arguments and errors.

    Example:
      >>> params, state = load_torchvision("efficientnet_b0", "efficientnet_b0_rwightman-7f5810bc.pth")
      >>> logits, acts = EfficientNetB0().apply({"params": params, **state}, x, train=False)
    """
    _check_name(name)
    return from_torchvision_state(name, read_torchvision_file(path), num_classes=num_classes)


def to_torchvision_state(name: str, params: Params, state: ModelState) -> dict[str, np.ndarray]:
    """The inverse of :func:`from_torchvision_state`: ``{torchvision key: array}`` in PyTorch layout.

    ``num_batches_tracked`` is written as 0 (int64) for every batch-norm, so
    ``model.load_state_dict`` in PyTorch accepts the result strictly.
    """
    _check_name(name)
    leaves = _LEAVES[name]()
    variables = {"params": params, **dict(state or {})}
    head = _get(params, (leaves[-2].path[0], "kernel"))
    if head is None or np.ndim(head) != 2:
        raise ValueError(f"{name}: params have no classifier kernel at {leaves[-2].path}")
    abstract = _abstract_variables(name, int(np.shape(head)[1]))
    out: dict[str, np.ndarray] = {}
    for lf in leaves:
        a = _get(variables.get(lf.collection, {}), lf.path)
        want = _get(abstract[lf.collection], lf.path).shape
        if a is None:
            raise ValueError(f"{name}: {lf.collection} has no entry {'/'.join(lf.path)}")
        if np.shape(a) != want:
            raise ValueError(
                f"{name}: {lf.collection} {'/'.join(lf.path)} has shape {np.shape(a)}, expected {want}"
            )
        out[lf.torch_key] = np.ascontiguousarray(lf.layout.to_torch(np.asarray(a, np.float32)))
        if lf.torch_key.endswith(".running_var"):
            out[lf.torch_key[: -len("running_var")] + "num_batches_tracked"] = np.array(0, np.int64)
    return out


def torchvision_shapes(name: str, *, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of torchvision's ``state_dict()`` for ``name``, computed without allocating.

    Includes ``num_batches_tracked`` (shape ``()``, int64 in PyTorch) for every batch-norm.
    """
    _check_name(name)
    abstract = _abstract_variables(name, num_classes)
    out: dict[str, tuple[int, ...]] = {}
    for lf in _LEAVES[name]():
        out[lf.torch_key] = lf.layout.torch_shape(tuple(_get(abstract[lf.collection], lf.path).shape))
        if lf.torch_key.endswith(".running_var"):
            out[lf.torch_key[: -len("running_var")] + "num_batches_tracked"] = ()
    return out


def save_npz(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray]) -> None:
    """Write a state dict (e.g. from :func:`to_torchvision_state`) as an uncompressed ``.npz``."""
    np.savez(path, **{k: np.asarray(v) for k, v in state_dict.items()})


__all__ = [
    "MODELS",
    "load_torchvision",
    "from_torchvision_state",
    "to_torchvision_state",
    "read_torchvision_file",
    "torchvision_shapes",
    "save_npz",
    "save_pth",
]
