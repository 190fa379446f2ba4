"""EfficientNet-B0 (Tan & Le, ICML 2019) with torchvision's ``efficientnet_b0`` architecture.

Stem 3×3/2 conv (32) → BN → SiLU; 16 MBConv blocks in seven stages; a 1×1
head conv to 1280 channels → BN → SiLU; global average pool; Dropout → Dense
``num_classes``. An MBConv block is: 1×1 expansion conv → BN → SiLU (skipped
when the expansion ratio is 1), k×k depthwise conv (``feature_group_count`` =
channels) → BN → SiLU, squeeze-excitation (global mean → Dense → SiLU → Dense →
sigmoid, scaling the channels; squeeze width = block input channels // 4), 1×1
projection conv → BN, and, when stride is 1 and the width is unchanged,
stochastic depth + the identity shortcut. 5,288,548 parameters for 1000
classes. ImageNet weights: :func:`jaxbias.models.torchvision_weights.load_torchvision`.
"""
from __future__ import annotations

import math
from typing import Callable, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbias.models._imagenet import KAIMING_FAN_OUT, batch_norm, check_images, check_rate, conv, uniform
from jaxbias.models.layers import Activation, Gate, check_hooks, tap
from jaxbias.models.registry import register

Array = jax.Array

# (expand_ratio, kernel, stride, in_channels, out_channels, num_layers), torchvision's B0 table
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-5  # torchvision's efficientnet_b0 uses plain nn.BatchNorm2d (eps 1e-5, momentum 0.1)
NUM_BLOCKS = sum(s[-1] for s in STAGES)


def stochastic_depth(module: nn.Module, h: Array, rate: float, train: bool) -> Array:
    """Drop the residual branch of whole examples with probability ``rate`` ("row" mode), rescale by 1/(1−rate)."""
    if not train or rate == 0.0:
        return h
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, (h.shape[0],) + (1,) * (h.ndim - 1))
    return jnp.where(keep, h / (1.0 - rate), 0.0)


class MBConv(nn.Module):
    """Inverted residual block with squeeze-excitation.

    Params: ``expand_conv``/``expand_bn`` (absent when ``expand_ratio == 1``),
    ``dw_conv``/``dw_bn``, ``se_fc1``/``se_fc2`` (``nn.Dense`` with bias; 1×1
    convs in torchvision), ``project_conv``/``project_bn``.
    """

    expand_ratio: int
    kernel: int
    stride: int
    out_channels: int
    drop_rate: float = 0.0

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        cin = x.shape[-1]
        width = cin * self.expand_ratio
        h = x
        if self.expand_ratio != 1:
            h = conv(width, 1, name="expand_conv")(h)
            h = Activation("silu")(batch_norm(train, eps=BN_EPS, name="expand_bn")(h))
        h = conv(width, self.kernel, stride=self.stride, groups=width, name="dw_conv")(h)
        h = Activation("silu")(batch_norm(train, eps=BN_EPS, name="dw_bn")(h))
        s = jnp.mean(h, axis=(1, 2))
        s = Activation("silu")(nn.Dense(max(1, cin // 4), kernel_init=KAIMING_FAN_OUT, name="se_fc1")(s))
        s = nn.sigmoid(nn.Dense(width, kernel_init=KAIMING_FAN_OUT, name="se_fc2")(s))
        h = Gate()(h, s[:, None, None, :])  # modules, not calls: LRP passes relevance through them (layers.py)
        h = conv(self.out_channels, 1, name="project_conv")(h)
        h = batch_norm(train, eps=BN_EPS, name="project_bn")(h)
        if self.stride == 1 and cin == self.out_channels:
            h = stochastic_depth(self, h, self.drop_rate, train) + x
        return h


class EfficientNetB0(nn.Module):
    """torchvision ``efficientnet_b0`` on NHWC images of any size ≥ 32×32.

    Layers (names in ``acts``): ``stem`` (``(B, H/2, W/2, 32)``), ``stage1`` …
    ``stage7`` (outputs of the seven MBConv stages: 16, 24, 40, 80, 112, 192,
    320 channels), ``last_conv`` (head conv after BN + SiLU,
    ``(B, H/32, W/32, 1280)``), ``features`` (global average pool,
    ``(B, 1280)``), ``logits``.

    Params: ``stem_conv``, ``stem_bn``, ``stage{s}_{j}`` (:class:`MBConv`),
    ``head_conv``, ``head_bn``, ``classifier`` (the only top-level
    ``nn.Dense``; :attr:`linear_groups`).

    Attributes:
      num_classes: output classes (1000).
      dropout_rate: dropout before the classifier in training mode;
        torchvision uses 0.2.
      stochastic_depth_rate: drop probability of the last residual branch, grown
        linearly from 0 over the 16 blocks (block k uses rate·k/16);
        torchvision uses 0.2. Both default to 0 because the model call takes
        no key: with a rate > 0 pass ``rngs={"dropout": key}`` to ``apply``.

    Example:
      >>> m = EfficientNetB0(num_classes=10)
      >>> params, state = jaxbias.models.init(m, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    """

    num_classes: int = 1000
    dropout_rate: float = 0.0
    stochastic_depth_rate: float = 0.0

    latent_layer: ClassVar[str] = "last_conv"
    linear_groups: ClassVar[tuple[str, ...]] = ("classifier",)

    @nn.compact
    def __call__(
        self,
        x: Array,
        *,
        train: bool,
        perturb: Mapping[str, Array] | None = None,
        edit: Mapping[str, Callable[[Array], Array]] | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        check_images(x, "EfficientNetB0")
        check_rate("dropout_rate", self.dropout_rate)
        check_rate("stochastic_depth_rate", self.stochastic_depth_rate)
        acts: dict[str, Array] = {}
        h = conv(STEM_CHANNELS, 3, stride=2, name="stem_conv")(x)
        h = Activation("silu")(batch_norm(train, eps=BN_EPS, name="stem_bn")(h))
        h = tap("stem", h, acts, perturb, edit)
        k = 0
        for s, (ratio, kernel, stride, _, cout, n) in enumerate(STAGES, start=1):
            for j in range(n):
                rate = self.stochastic_depth_rate * k / NUM_BLOCKS
                block = MBConv(ratio, kernel, stride if j == 0 else 1, cout, rate, name=f"stage{s}_{j}")
                h = block(h, train=train)
                k += 1
            h = tap(f"stage{s}", h, acts, perturb, edit)
        h = conv(HEAD_CHANNELS, 1, name="head_conv")(h)
        h = Activation("silu")(batch_norm(train, eps=BN_EPS, name="head_bn")(h))
        h = tap("last_conv", h, acts, perturb, edit)
        h = tap("features", jnp.mean(h, axis=(1, 2)), acts, perturb, edit)
        if train and self.dropout_rate > 0:
            h = nn.Dropout(self.dropout_rate, deterministic=False)(h)
        # torchvision: U(-1/√num_classes, 1/√num_classes) weights, zero bias
        fc = nn.Dense(self.num_classes, kernel_init=uniform(1.0 / math.sqrt(self.num_classes)), name="classifier")
        logits = tap("logits", fc(h), acts, perturb, edit)
        check_hooks(acts, perturb, edit)
        return logits, acts


# no settings in the run layer: its model call passes no dropout key, so the dropout rates stay 0
register("efficientnet_b0", EfficientNetB0)
