"""A compact ResNet for the region (patch) classifier of SPEC §6 (De Coninck et al., CVPRW 2024).

The region classifier sees one ``k×k`` patch and its grid index ``i``; the
index goes through a learned embedding ``E ∈ R^{p × k²}`` whose row ``E_i`` is
reshaped to one extra ``k×k`` input channel, so the network can tell *where*
the patch came from. The body is a ResNet of basic blocks (two 3×3 convs with
batch-norm, a 1×1 projection on the shortcut where the shape changes): the
:func:`resnet18` configuration has ResNet-18's stages (64/128/256/512 channels,
two blocks each); the default is a small CPU-friendly one (16/32/64, one block
each). With ``num_positions=0`` it is a plain image classifier that fits the
project's ``model(params, x)`` interface (``jaxbias.models.bind``, ``fit``).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbias.models.conv import Conv
from jaxbias.models.layers import check_hooks, tap

Array = jax.Array

STEMS = ("small", "imagenet")
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; 3×3 convs, 1×1 conv + BN shortcut on reshape."""

    features: int
    stride: int = 1
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        def bn(name):
            return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5, name=name)

        s = (self.stride, self.stride)
        h = Conv(self.features, (3, 3), strides=s, padding=1, use_bias=False, kernel_init=_KAIMING_FAN_OUT,
                    name="conv1")(x)
        h = nn.relu(bn("bn1")(h))
        h = Conv(self.features, (3, 3), padding=1, use_bias=False, kernel_init=_KAIMING_FAN_OUT, name="conv2")(h)
        h = bn("bn2")(h)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = Conv(self.features, (1, 1), strides=s, use_bias=False, kernel_init=_KAIMING_FAN_OUT,
                               name="proj_conv")(x)
            shortcut = bn("proj_bn")(shortcut)
        return nn.relu(h + shortcut)


class RegionResNet(nn.Module):
    """ResNet of basic blocks for patches (with a learned position channel) or whole images.

    ``x' = concat(x, reshape(E[positions], (k, k, 1)))`` when ``num_positions > 0``;
    then stem → stages → global average pool → dense.

    Layers (names in ``acts``): ``stem``, ``stage1`` … ``stageN`` (stage
    outputs), ``features`` (global average pool), ``logits``.

    Attributes:
      num_classes: outputs (2 for a binary attribute).
      widths: channels per stage; stage ``j > 0`` halves the resolution.
      blocks: basic blocks per stage (same length as ``widths``).
      stem: ``"small"`` (3×3 conv, stride 1: patches of 16–32 pixels) or
        ``"imagenet"`` (7×7 conv stride 2 and 3×3 max-pool stride 2: ResNet-18's
        stem, ÷4 resolution).
      num_positions: ``p``, size of the position embedding; 0 = no position input.
      bn_momentum: Flax convention (0.9 = PyTorch's 0.1).

    Example:
      >>> net = RegionResNet(num_classes=2, num_positions=49)
      >>> v = net.init(jax.random.key(0), jnp.zeros((4, 16, 16, 3)), positions=jnp.zeros(4, int), train=False)
      >>> logits, acts = net.apply(v, jnp.zeros((4, 16, 16, 3)), positions=jnp.arange(4), train=False)
    """

    num_classes: int = 2
    widths: Sequence[int] = (16, 32, 64)
    blocks: Sequence[int] = (1, 1, 1)
    stem: str = "small"
    num_positions: int = 0
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(
        self,
        x: Array,
        *,
        train: bool,
        positions: Array | None = None,
        perturb: Mapping[str, Array] | None = None,
        edit: Mapping[str, Callable[[Array], Array]] | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        if x.ndim != 4:
            raise ValueError(f"x must be (B, H, W, C) images or patches, got shape {x.shape}")
        if len(self.widths) != len(self.blocks) or not self.widths or min(self.widths) < 1 or min(self.blocks) < 1:
            raise ValueError(f"widths and blocks must be equally long lists of positive ints, got "
                             f"widths={tuple(self.widths)} blocks={tuple(self.blocks)}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.num_positions < 0:
            raise ValueError(f"num_positions must be ≥ 0, got {self.num_positions}")
        if self.num_positions > 0:
            if positions is None:
                raise ValueError(f"this region classifier has a position embedding (num_positions="
                                 f"{self.num_positions}): pass positions, the (B,) grid index of every patch")
            if positions.shape != (x.shape[0],) or not jnp.issubdtype(positions.dtype, jnp.integer):
                raise ValueError(f"positions must be ({x.shape[0]},) integer patch indices, got shape "
                                 f"{positions.shape} dtype {positions.dtype}")
            k_h, k_w = x.shape[1], x.shape[2]
            emb = nn.Embed(self.num_positions, k_h * k_w, name="position")(positions)
            x = jnp.concatenate([x, emb.reshape(x.shape[0], k_h, k_w, 1).astype(x.dtype)], axis=-1)
        elif positions is not None:
            raise ValueError("positions were given but num_positions=0 (no position embedding)")
        acts: dict[str, Array] = {}
        bn = dict(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5)
        if self.stem == "small":
            h = Conv(self.widths[0], (3, 3), padding=1, use_bias=False, kernel_init=_KAIMING_FAN_OUT,
                        name="stem_conv")(x)
            h = nn.relu(nn.BatchNorm(**bn, name="stem_bn")(h))
        else:
            h = Conv(self.widths[0], (7, 7), strides=(2, 2), padding=3, use_bias=False,
                        kernel_init=_KAIMING_FAN_OUT, name="stem_conv")(x)
            h = nn.relu(nn.BatchNorm(**bn, name="stem_bn")(h))
            h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        h = tap("stem", h, acts, perturb, edit)
        for j, (width, n) in enumerate(zip(self.widths, self.blocks)):
            for b in range(n):
                stride = 2 if (j > 0 and b == 0) else 1
                h = BasicBlock(width, stride, self.bn_momentum, name=f"stage{j + 1}_block{b + 1}")(h, train=train)
            h = tap(f"stage{j + 1}", h, acts, perturb, edit)
        h = tap("features", jnp.mean(h, axis=(1, 2)), acts, perturb, edit)
        logits = tap("logits", nn.Dense(self.num_classes, name="fc")(h), acts, perturb, edit)
        check_hooks(acts, perturb, edit)
        return logits, acts


def resnet18(*, num_classes: int = 2, num_positions: int = 0, stem: str = "imagenet") -> RegionResNet:
    """ResNet-18's configuration: stages of 64/128/256/512 channels, two basic blocks each.

    Args:
      num_classes: outputs.
      num_positions: ``p`` grid positions (2401 for 32×32 patches at stride 2 on 128×128); 0 = none.
      stem: ``"imagenet"`` (7×7/2 + max-pool, as ResNet-18) or ``"small"`` (3×3/1, keeps small patches' resolution).
    Returns:
      a :class:`RegionResNet`.

    Example:
      >>> net = resnet18(num_positions=2401)
    """
    return RegionResNet(num_classes=num_classes, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), stem=stem,
                        num_positions=num_positions)


def small(*, num_classes: int = 2, num_positions: int = 0, widths: Sequence[int] = (16, 32, 64),
          blocks: Sequence[int] = (1, 1, 1), stem: str = "small") -> RegionResNet:
    """The CPU-friendly default: three stages of 16/32/64 channels, one basic block each.

    Example:
      >>> net = small(num_positions=625, widths=(8, 16, 32))
    """
    return RegionResNet(num_classes=num_classes, widths=tuple(widths), blocks=tuple(blocks), stem=stem,
                        num_positions=num_positions)
