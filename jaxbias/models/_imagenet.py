"""Pieces shared by the torchvision-compatible ImageNet models (private)."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbias.models.conv import Conv

Array = jax.Array

# torchvision's ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``: an
# untruncated normal with variance 2 / (out_channels · kh · kw).
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def uniform(bound: float) -> nn.initializers.Initializer:
    """``U(-bound, bound)``, e.g. PyTorch's default ``nn.Linear`` bias init with ``bound = 1/√fan_in``."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_linear_kernel_init() -> nn.initializers.Initializer:
    """PyTorch's default ``nn.Linear`` weight init, ``U(-1/√fan_in, 1/√fan_in)``."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int) -> nn.initializers.Initializer:
    return uniform(1.0 / math.sqrt(fan_in))


def check_images(x: Array, model: str, min_size: int = 32) -> None:
    """Raise unless ``x`` is an NHWC float batch of at least ``min_size``×``min_size`` images."""
    if x.ndim != 4:
        raise ValueError(f"{model}: x must be (B, H, W, C) images, got shape {x.shape}")
    if x.shape[1] < min_size or x.shape[2] < min_size:
        raise ValueError(
            f"{model}: images must be at least {min_size}×{min_size}, got x of shape {x.shape} (NHWC)"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{model}: x must be floating point (normalised images), got dtype {x.dtype}")


def check_rate(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def conv(features: int, kernel: int, *, stride: int = 1, groups: int = 1, bias: bool = False, name: str) -> nn.Conv:
    """A PyTorch-style ``Conv2d``: symmetric zero padding ``(k-1)//2`` on each side.

    Explicit padding, not Flax's ``"SAME"``: for a strided convolution on an
    even-sized input ``"SAME"`` pads more at the bottom/right than the top/left,
    which shifts every window by one pixel relative to PyTorch.
    """
    pad = (kernel - 1) // 2
    return Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=bias,
        kernel_init=KAIMING_FAN_OUT,
        name=name,
    )


def batch_norm(train: bool, *, eps: float, torch_momentum: float = 0.1, name: str) -> nn.BatchNorm:
    """``BatchNorm2d(eps, momentum)`` in Flax's convention (momentum = 1 − PyTorch's).

    Differences from PyTorch in training mode only: Flax averages the biased
    batch variance into ``var`` (PyTorch the unbiased one, larger by
    n/(n−1) with n = B·H·W). Evaluation mode is identical.
    """
    return nn.BatchNorm(use_running_average=not train, momentum=1.0 - torch_momentum, epsilon=eps, name=name)
