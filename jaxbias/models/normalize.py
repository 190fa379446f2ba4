"""Input normalisation as the network's first operation: ``(x − mean) / std`` per channel, inside the model.

The data stay images in [0, 1] everywhere (artifacts are drawn, masks and heatmaps shown, concepts fitted on
them); a network that expects normalised inputs (ImageNet weights: torchvision's mean and std) gets them from
:class:`Normalized`, which wraps it. The wrapper shares its network's scope (``nn.share_scope``): the parameter
tree, the tapped layers' names and the weights files are the network's own, and every method, gradient and LRP
rule sees the normalisation as the differentiable first step it is (the first layer's flat rule spreads relevance
over positions, so heatmaps are per input pixel as without it).

Written as text (``--normalize imagenet``, ``--normalize 0.5/0.25``, ``--normalize 0.49,0.48,0.45/0.25,0.24,0.26``):
a name of :data:`NAMED`, or means and standard deviations (one, or one per channel) separated by ``/``.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["NAMED", "Normalized", "normalized", "parse_normalize"]

#: named normalisations: ``name -> (means, standard deviations)`` per channel
NAMED = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def parse_normalize(text: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(means, stds)`` of ``text`` (see the module's docstring); ``None`` or ``""``: ``None``.

    Raises:
      ValueError: not a name and not ``MEANS/STDS`` of finite numbers, a standard deviation ≤ 0, or as many means
        as standard deviations neither (one line naming ``normalize``).
    """
    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    if text in NAMED:
        return NAMED[text]
    expected = (f"normalize must be one of {sorted(NAMED)} or MEANS/STDS (e.g. 0.5/0.25 or 0.49,0.48,0.45/0.25,0.24,"
                f"0.26); got {text!r}")
    parts = text.split("/")
    if len(parts) != 2:
        raise ValueError(expected)
    try:
        mean, std = (tuple(float(v) for v in p.split(",")) for p in parts)
    except ValueError:
        raise ValueError(expected) from None
    if not all(math.isfinite(v) for v in mean + std) or len(mean) != len(std):
        raise ValueError(expected + " (finite numbers, as many means as standard deviations)")
    if min(std) <= 0:
        raise ValueError(f"normalize's standard deviations must be > 0; got {std}")
    return mean, std


def text_of(spec: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    """The text :func:`parse_normalize` reads back to ``spec`` (a name where there is one)."""
    for name, value in NAMED.items():
        if value == spec:
            return name
    return "/".join(",".join(repr(v) for v in part) for part in spec)


class Normalized(nn.Module):
    """``inner`` called on ``(x − mean) / std`` (per channel, broadcast over the last axis), in ``inner``'s scope.

    Attributes:
      inner: the network (any module of the house's contract: ``(x, train=…, perturb=…, edit=…) -> (logits,
        acts)``).
      mean, std: one value, or one per channel.
    """

    inner: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def setup(self):
        nn.share_scope(self, self.inner)  # the network's parameter names, not nested under "inner"

    @property
    def num_classes(self) -> Any:
        return getattr(self.inner, "num_classes", None)

    def __call__(self, x, *args, **kwargs):
        mean = jnp.asarray(self.mean, x.dtype)
        std = jnp.asarray(self.std, x.dtype)
        return self.inner((x - mean) / std, *args, **kwargs)


def normalized(module: nn.Module, text: str | None, *, channels: int | None = None) -> nn.Module:
    """``module`` wrapped in :class:`Normalized` for ``text`` (``None``: ``module`` as it is); ``channels``: the
    inputs' channel count, checked against the number of means."""
    spec = parse_normalize(text)
    if spec is None:
        return module
    if channels is not None and len(spec[0]) not in (1, channels):
        raise ValueError(f"normalize {text!r} gives {len(spec[0])} means and standard deviations; the inputs have "
                         f"{channels} channels (give one value, or one per channel)")
    return Normalized(module, *spec)
