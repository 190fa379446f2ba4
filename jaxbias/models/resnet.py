"""ResNet-18 (He et al., CVPR 2016) with torchvision's ``resnet18`` architecture.

Stem: 7×7/2 conv (padding 3) → BN → ReLU → 3×3/2 max pool (padding 1). Four
stages of two basic blocks (two 3×3 convs with BN; a 1×1 strided conv + BN on
the shortcut where the shape changes) with 64/128/256/512 channels, strides
1/2/2/2; global average pool; Dense ``num_classes``. 11,689,512 parameters for
1000 classes. ImageNet weights: :func:`jaxbias.models.torchvision_weights.load_torchvision`.
"""
from __future__ import annotations

from typing import Callable, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbias.models._imagenet import (
    batch_norm,
    check_images,
    conv,
    torch_linear_bias_init,
    torch_linear_kernel_init,
)
from jaxbias.models.layers import check_hooks, tap
from jaxbias.models.registry import register

Array = jax.Array

CHANNELS = (64, 128, 256, 512)
STRIDES = (1, 2, 2, 2)
BLOCKS = (2, 2, 2, 2)
BN_EPS = 1e-5  # torchvision's nn.BatchNorm2d default, momentum 0.1


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Params: ``conv1 bn1 conv2 bn2``, plus ``downsample_conv downsample_bn``
    (1×1 strided conv + BN on the shortcut) where the shape changes.
    """

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        h = conv(self.features, 3, stride=self.stride, name="conv1")(x)
        h = nn.relu(batch_norm(train, eps=BN_EPS, name="bn1")(h))
        h = conv(self.features, 3, name="conv2")(h)
        h = batch_norm(train, eps=BN_EPS, name="bn2")(h)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = conv(self.features, 1, stride=self.stride, name="downsample_conv")(x)
            shortcut = batch_norm(train, eps=BN_EPS, name="downsample_bn")(shortcut)
        return nn.relu(h + shortcut)


class ResNet18(nn.Module):
    """torchvision ``resnet18`` on NHWC images of any size ≥ 32×32.

    Layers (names in ``acts``): ``stem`` (after the max pool, ``(B, H/4, W/4, 64)``),
    ``layer1`` … ``layer4`` (stage outputs), ``last_conv`` (= ``layer4``,
    ``(B, H/32, W/32, 512)``), ``features`` (global average pool, ``(B, 512)``),
    ``logits``.

    Params: ``conv1``, ``bn1``, ``layer{i}_{j}`` (:class:`BasicBlock`, i = 1…4,
    j = 0, 1), ``fc`` (the only ``nn.Dense``; :attr:`linear_groups`).
    Batch-norm statistics live in the ``batch_stats`` collection.

    Attributes:
      num_classes: output classes (1000).

    Example:
      >>> m = ResNet18(num_classes=10)
      >>> params, state = jaxbias.models.init(m, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    """

    num_classes: int = 1000

    latent_layer: ClassVar[str] = "last_conv"
    linear_groups: ClassVar[tuple[str, ...]] = ("fc",)

    @nn.compact
    def __call__(
        self,
        x: Array,
        *,
        train: bool,
        perturb: Mapping[str, Array] | None = None,
        edit: Mapping[str, Callable[[Array], Array]] | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        check_images(x, "ResNet18")
        acts: dict[str, Array] = {}
        h = conv(64, 7, stride=2, name="conv1")(x)  # padding 3
        h = nn.relu(batch_norm(train, eps=BN_EPS, name="bn1")(h))
        # torch pads max pooling with -inf, as nn.max_pool does
        h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        h = tap("stem", h, acts, perturb, edit)
        for i, (c, stride, n) in enumerate(zip(CHANNELS, STRIDES, BLOCKS), start=1):
            for j in range(n):
                h = BasicBlock(c, stride if j == 0 else 1, name=f"layer{i}_{j}")(h, train=train)
            h = tap(f"layer{i}", h, acts, perturb, edit)
        h = tap("last_conv", h, acts, perturb, edit)
        h = tap("features", jnp.mean(h, axis=(1, 2)), acts, perturb, edit)
        fc = nn.Dense(
            self.num_classes,
            kernel_init=torch_linear_kernel_init(),
            bias_init=torch_linear_bias_init(h.shape[-1]),
            name="fc",
        )
        logits = tap("logits", fc(h), acts, perturb, edit)
        check_hooks(acts, perturb, edit)
        return logits, acts


# no settings in the run layer: its model call passes no dropout key, so the dropout rates stay 0
register("resnet18", ResNet18)
