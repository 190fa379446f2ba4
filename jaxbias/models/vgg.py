"""VGG-16 (Simonyan & Zisserman, ICLR 2015) with torchvision's ``vgg16`` architecture.

Thirteen 3×3 convolutions (padding 1, ReLU, no batch-norm) in five stages of
64/128/256/512/512 channels, each stage closed by a 2×2 max pool; PyTorch's
``AdaptiveAvgPool2d((7, 7))``; a classifier of Dense 4096 → ReLU → Dropout →
Dense 4096 → ReLU → Dropout → Dense ``num_classes``. 138,357,544 parameters
for 1000 classes. ImageNet weights: :func:`jaxbias.models.torchvision_weights.load_torchvision`.
"""
from __future__ import annotations

from typing import Callable, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbias.models._imagenet import KAIMING_FAN_OUT, check_images, check_rate
from jaxbias.models.conv import Conv
from jaxbias.models.layers import adaptive_avg_pool, check_hooks, tap
from jaxbias.models.registry import register

Array = jax.Array

# channels of the convolutions, stage by stage (configuration "D")
STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# torchvision: nn.init.normal_(linear.weight, 0, 0.01), bias 0
_FC_INIT = nn.initializers.normal(0.01)


class VGG16(nn.Module):
    """torchvision ``vgg16`` on NHWC images of any size ≥ 32×32.

    Layers (names in ``acts``): ``block1`` … ``block4`` (last ReLU of stages
    1–4, before their max pool), ``last_conv`` (ReLU after the 13th conv,
    ``(B, H/16, W/16, 512)``), ``features`` (the 7×7 adaptive average pool
    flattened in NHWC order, ``(B, 25088)``), ``fc1``, ``fc2`` (hidden
    classifier layers after ReLU, ``(B, 4096)``), ``logits``.

    Params: ``conv1_1`` … ``conv5_3`` (``nn.Conv``), ``fc1``, ``fc2``, ``fc3``
    (``nn.Dense``; listed in :attr:`linear_groups`).

    Attributes:
      num_classes: output classes (1000).
      dropout_rate: dropout after ``fc1`` and ``fc2`` in training mode;
        torchvision uses 0.5. 0 by default because the model call takes no
        key: with a rate > 0 pass ``rngs={"dropout": key}`` to ``apply``.

    Example:
      >>> m = VGG16(num_classes=10)
      >>> params, state = jaxbias.models.init(m, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    """

    num_classes: int = 1000
    dropout_rate: float = 0.0

    latent_layer: ClassVar[str] = "last_conv"
    linear_groups: ClassVar[tuple[str, ...]] = ("fc1", "fc2", "fc3")

    @nn.compact
    def __call__(
        self,
        x: Array,
        *,
        train: bool,
        perturb: Mapping[str, Array] | None = None,
        edit: Mapping[str, Callable[[Array], Array]] | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        check_images(x, "VGG16")
        check_rate("dropout_rate", self.dropout_rate)
        acts: dict[str, Array] = {}
        h = x
        for s, stage in enumerate(STAGES, start=1):
            for j, c in enumerate(stage, start=1):
                h = Conv(c, (3, 3), padding=((1, 1), (1, 1)), kernel_init=KAIMING_FAN_OUT, name=f"conv{s}_{j}")(h)
                h = nn.relu(h)
            h = tap("last_conv" if s == len(STAGES) else f"block{s}", h, acts, perturb, edit)
            h = nn.max_pool(h, (2, 2), strides=(2, 2))  # floor mode, like torch
        h = adaptive_avg_pool(h, (7, 7))
        h = tap("features", jnp.reshape(h, (h.shape[0], -1)), acts, perturb, edit)
        for i in (1, 2):
            h = nn.relu(nn.Dense(4096, kernel_init=_FC_INIT, name=f"fc{i}")(h))
            h = tap(f"fc{i}", h, acts, perturb, edit)
            if train and self.dropout_rate > 0:
                h = nn.Dropout(self.dropout_rate, deterministic=False)(h)
        logits = nn.Dense(self.num_classes, kernel_init=_FC_INIT, name="fc3")(h)
        logits = tap("logits", logits, acts, perturb, edit)
        check_hooks(acts, perturb, edit)
        return logits, acts


# no settings in the run layer: its model call passes no dropout key, so the dropout rates stay 0
register("vgg16", VGG16)
