"""The Biased-MNIST network of ReBias (Bahng et al., ICML 2020) and EnD.

Four blocks of [7×7 conv, padding 3 → batch-norm → activation] with
16/32/64/128 channels at full 28×28 resolution, global average pooling and a
linear layer to the classes. EnD (Tartaglione et al., CVPR 2021) regularises
the pooled features (layer ``"features"``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbias import settings as settings_lib
from jaxbias.models.conv import Conv
from jaxbias.models.layers import Activation, check_hooks, tap
from jaxbias.models.registry import register

Array = jax.Array

_ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}
# He-normal with fan-out, as the ReBias/EnD reference networks initialise their convolutions.
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class SimpleConvNet(nn.Module):
    """ReBias/EnD SimpleConvNet.

    Layers (names in ``acts``): ``block1`` … ``block4`` (after the activation,
    ``(B, H, W, C_i)``), ``features`` (global average pool, ``(B, C_4)``),
    ``logits`` (``(B, num_classes)``).

    Attributes:
      num_classes: output classes (10).
      channels: channels of the four blocks; the demo shrinks them for CPU speed.
      kernel_size: 7 in the papers.
      last_activation: ``"relu"`` (ReBias) or ``"tanh"`` (EnD's network: with
        ReLU the pooled features are non-negative, so their cosines cannot go
        below 0 and EnD's disentangling term has little room) for the last block;
        the other blocks use ReLU.
    """

    num_classes: int = 10
    channels: Sequence[int] = (16, 32, 64, 128)
    kernel_size: int = 7
    last_activation: str = "relu"
    bn_momentum: float = 0.9  # Flax convention; equals PyTorch's momentum=0.1

    @nn.compact
    def __call__(
        self,
        x: Array,
        *,
        train: bool,
        perturb: Mapping[str, Array] | None = None,
        edit: Mapping[str, Callable[[Array], Array]] | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        if x.ndim != 4:
            raise ValueError(f"x must be (B, H, W, C) images, got shape {x.shape}")
        if self.last_activation not in _ACTIVATIONS:
            raise ValueError(
                f"last_activation must be one of {sorted(_ACTIVATIONS)}, got {self.last_activation!r}"
            )
        acts: dict[str, Array] = {}
        h = x
        pad = self.kernel_size // 2
        for i, c in enumerate(self.channels):
            h = Conv(
                c, (self.kernel_size, self.kernel_size), padding=pad, kernel_init=_KAIMING_FAN_OUT, name=f"conv{i + 1}"
            )(h)
            h = nn.BatchNorm(
                use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5, name=f"bn{i + 1}"
            )(h)
            last = i == len(self.channels) - 1
            act = Activation(self.last_activation if last else "relu", name=f"act{i + 1}")  # a module: LRP sees it
            h = tap(f"block{i + 1}", act(h), acts, perturb, edit)
        h = tap("features", jnp.mean(h, axis=(1, 2)), acts, perturb, edit)
        logits = tap("logits", nn.Dense(self.num_classes, name="fc")(h), acts, perturb, edit)
        check_hooks(acts, perturb, edit)
        return logits, acts


@dataclasses.dataclass(frozen=True)
class Settings:
    """The run layer's SimpleConvNet (``--model simple_conv``).

    Attributes:
      channels: channels of the conv blocks, one block each (ReBias/EnD: 16,32,64,128).
      kernel_size: side of the square convolution kernels (7 in the papers).
      last_activation: activation of the last block: tanh (EnD's released network: with relu the pooled features
        are non-negative and EnD cannot decorrelate them) or relu (ReBias).
    """

    CHOICES: ClassVar[dict] = {"last_activation": tuple(_ACTIVATIONS)}
    channels: tuple[int, ...] = (16, 32, 64, 128)
    kernel_size: int = 7
    last_activation: str = "tanh"

    def __post_init__(self):
        settings_lib.check(self)
        settings_lib.need(len(self.channels) >= 1 and min(self.channels) >= 1, self, "channels",
                          "positive ints, one per block")
        settings_lib.need(self.kernel_size >= 1, self, "kernel_size", "a positive int")


register("simple_conv", SimpleConvNet, Settings)
