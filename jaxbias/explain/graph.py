"""A small layer graph that LRP walks: the project's models as explicit layers.

LRP redistributes relevance layer by layer with a rule per layer type, so it
needs the network as a sequence of known layers rather than an opaque
function. :func:`to_graph` reads a bundled model (``SimpleConvNet``, ``MLP``)
and its variables into such a sequence; users can build graphs of their own
networks from the same layer types (:class:`Residual` for skip connections).
:func:`forward` runs a graph (it must reproduce the model's logits),
:func:`fold_batchnorm` merges every batch-norm into the preceding linear
layer ("canonization"), which leaves the function unchanged.

Shapes: images are NHWC, dense inputs ``(B, D)``; kernels as Flax stores them
(conv ``(kh, kw, C_in, C_out)``, dense ``(D_in, D_out)``).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp

from jaxbias.models.convnet import SimpleConvNet
from jaxbias.models.mlp import MLP

Array = jax.Array


class Conv(NamedTuple):
    """2-D convolution, NHWC; ``padding`` as ``lax.conv_general_dilated`` takes it."""

    kernel: Array
    bias: Array | None
    strides: tuple[int, int] = (1, 1)
    padding: Any = "SAME"
    name: str = "conv"


class Dense(NamedTuple):
    kernel: Array
    bias: Array | None
    name: str = "dense"


class BatchNorm(NamedTuple):
    """Inference-mode batch-norm: ``(x − mean) / sqrt(var + eps) · scale + bias`` over the last axis."""

    scale: Array
    bias: Array
    mean: Array
    var: Array
    eps: float = 1e-5
    name: str = "bn"


class Activation(NamedTuple):
    """``"relu"`` or ``"tanh"``: relevance passes through unchanged."""

    kind: str
    name: str = "act"


class AvgPool(NamedTuple):
    window: tuple[int, int]
    strides: tuple[int, int]
    name: str = "avgpool"


class MaxPool(NamedTuple):
    window: tuple[int, int]
    strides: tuple[int, int]
    name: str = "maxpool"


class GlobalAvgPool(NamedTuple):
    """Mean over the spatial axes: ``(B, H, W, C) → (B, C)``."""

    name: str = "gap"


class Flatten(NamedTuple):
    name: str = "flatten"


class Residual(NamedTuple):
    """``body(x) + shortcut(x)`` (an empty shortcut is the identity)."""

    body: tuple
    shortcut: tuple = ()
    name: str = "residual"


Layer = Union[Conv, Dense, BatchNorm, Activation, AvgPool, MaxPool, GlobalAvgPool, Flatten, Residual]
LINEAR = (Conv, Dense)
_ACTS = ("relu", "tanh")


def _conv(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, tuple(strides), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _pool(x, window, strides, op):
    init = -jnp.inf if op == "max" else 0.0
    fn = jax.lax.max if op == "max" else jax.lax.add
    out = jax.lax.reduce_window(x, jnp.asarray(init, x.dtype), fn, (1, *window, 1), (1, *strides, 1), "VALID")
    return out if op == "max" else out / (window[0] * window[1])


def apply_layer(layer: Layer, x: Array, *, with_bias: bool = True) -> Array:
    """One layer's output (``with_bias=False``: the linear part only)."""
    if isinstance(layer, Conv):
        z = _conv(x, layer.kernel, layer.strides, layer.padding)
        return z + layer.bias if (with_bias and layer.bias is not None) else z
    if isinstance(layer, Dense):
        z = x @ layer.kernel
        return z + layer.bias if (with_bias and layer.bias is not None) else z
    if isinstance(layer, BatchNorm):
        k = layer.scale / jnp.sqrt(layer.var + layer.eps)
        return (x - layer.mean) * k + layer.bias if with_bias else x * k
    if isinstance(layer, Activation):
        return jax.nn.relu(x) if layer.kind == "relu" else jnp.tanh(x)
    if isinstance(layer, AvgPool):
        return _pool(x, layer.window, layer.strides, "avg")
    if isinstance(layer, MaxPool):
        return _pool(x, layer.window, layer.strides, "max")
    if isinstance(layer, GlobalAvgPool):
        return jnp.mean(x, axis=(1, 2))
    if isinstance(layer, Flatten):
        return jnp.reshape(x, (x.shape[0], -1))
    if isinstance(layer, Residual):
        return forward(layer.body, x) + forward(layer.shortcut, x)
    raise ValueError(f"layer {getattr(layer, 'name', layer)!r} of type {type(layer).__name__} is not supported")


def forward(graph: Sequence[Layer], x: Array) -> Array:
    """Run ``graph`` on ``x``."""
    for layer in graph:
        x = apply_layer(layer, x)
    return x


def check_graph(graph: Sequence[Layer], *, where: str = "graph") -> None:
    """Raise ``ValueError`` naming the first layer LRP has no rule for."""
    for i, layer in enumerate(graph):
        if isinstance(layer, Residual):
            check_graph(layer.body, where=f"{where}[{i}] ({layer.name!r}).body")
            check_graph(layer.shortcut, where=f"{where}[{i}] ({layer.name!r}).shortcut")
        elif isinstance(layer, Activation):
            if layer.kind not in _ACTS:
                raise ValueError(f"{where}[{i}] ({layer.name!r}): activation {layer.kind!r} has no LRP rule; "
                                 f"supported: {_ACTS}")
        elif not isinstance(layer, (Conv, Dense, BatchNorm, AvgPool, MaxPool, GlobalAvgPool, Flatten)):
            raise ValueError(f"{where}[{i}]: layer {getattr(layer, 'name', layer)!r} of type "
                             f"{type(layer).__name__} has no LRP rule")


def fold_batchnorm(graph: Sequence[Layer]) -> list[Layer]:
    """Merge each batch-norm into the linear layer right before it (inside residual blocks too).

    ``W' = W · k``, ``b' = (b − mean) · k + bias_bn`` with ``k = scale / sqrt(var + eps)``
    per output channel; the network computes the same function. A batch-norm
    with no linear layer before it stays (LRP treats it as an affine layer).
    """
    out: list[Layer] = []
    for layer in graph:
        if isinstance(layer, Residual):
            out.append(layer._replace(body=tuple(fold_batchnorm(layer.body)),
                                      shortcut=tuple(fold_batchnorm(layer.shortcut))))
            continue
        if isinstance(layer, BatchNorm) and out and isinstance(out[-1], LINEAR):
            prev = out.pop()
            k = layer.scale / jnp.sqrt(layer.var + layer.eps)
            b = prev.bias if prev.bias is not None else jnp.zeros_like(layer.mean)
            out.append(prev._replace(kernel=prev.kernel * k, bias=(b - layer.mean) * k + layer.bias,
                                     name=f"{prev.name}+{layer.name}"))
            continue
        out.append(layer)
    return out


def to_graph(module, variables: dict) -> list[Layer]:
    """The layer graph of a bundled model (``SimpleConvNet`` or ``MLP``) with its variables.

    Args:
      module: the Flax module (from :func:`jaxbias.models.create`).
      variables: ``{"params": ..., "batch_stats": ...}`` (batch-norm in
        inference mode: the running statistics).

    Raises:
      ValueError: for another module type, naming it.
    """
    p = variables["params"]
    if isinstance(module, SimpleConvNet):
        stats = variables.get("batch_stats", {})
        pad = module.kernel_size // 2
        graph: list[Layer] = []
        n = len(module.channels)
        for i in range(1, n + 1):
            c, bn, st = p[f"conv{i}"], p[f"bn{i}"], stats[f"bn{i}"]
            graph.append(Conv(c["kernel"], c.get("bias"), (1, 1), ((pad, pad), (pad, pad)), f"conv{i}"))
            graph.append(BatchNorm(bn["scale"], bn["bias"], st["mean"], st["var"], 1e-5, f"bn{i}"))
            graph.append(Activation(module.last_activation if i == n else "relu", f"block{i}"))
        graph += [GlobalAvgPool("features"), Dense(p["fc"]["kernel"], p["fc"]["bias"], "fc")]
        return graph
    if isinstance(module, MLP):
        graph = [Flatten("flatten")]
        for i in range(1, len(module.hidden) + 1):
            graph += [Dense(p[f"fc{i}"]["kernel"], p[f"fc{i}"]["bias"], f"fc{i}"), Activation("relu", f"dense{i}")]
        graph.append(Dense(p["out"]["kernel"], p["out"]["bias"], "out"))
        return graph
    raise ValueError(f"to_graph supports SimpleConvNet and MLP; got a {type(module).__name__} "
                     "(build a graph of jaxbias.explain layers for other networks)")
