"""Augmentation inside the compiled step: random flips and crops of a batch of images, their masks moved with them.

:class:`Augment` is a pure function ``augment(key, batch) -> batch`` that the step
(:func:`jaxbias.training.step.make_train_step`) applies to each batch before the
loss, with a key drawn from the step's own (the state's key folded with the step
number): on the device, vectorised over the batch, no host work and no transfer;
the same batch at the same step gets the same draw, so a resumed run repeats the
uninterrupted one bit for bit, streamed or in memory. Each image is transformed
on its own (per-image keys); a mask (RRR's annotation, targeted noise's region,
an artifact's pixels) gets exactly its image's flip and crop, so it still marks
the same pixels. Labels and bias labels are kept. Evaluation sees the images as
they are.

Written as text, e.g. on the command line (``--augment flip,crop:4``):
``flip`` mirrors each image left-right with probability 1/2; ``crop:P`` pads
each side with ``P`` zero pixels and cuts a window of the original size at a
uniformly drawn offset (the CIFAR-style random crop).
"""
from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp

from jaxbias.types import Batch

__all__ = ["Augment", "parse_augment"]

_CROP = re.compile(r"^crop:(\d+)$")


@dataclasses.dataclass(frozen=True)
class Augment:
    """Per-image random transforms of a batch ``(B, H, W, C)`` (and its mask ``(B, H, W)``).

    Attributes:
      flip: mirror each image left-right with probability 1/2.
      crop: pad each side by this many zero pixels, then cut a random ``H × W`` window (0: no crop).
    """

    flip: bool = False
    crop: int = 0

    def __post_init__(self):
        if not isinstance(self.flip, bool):
            raise ValueError(f"flip must be a bool; got {self.flip!r}")
        if isinstance(self.crop, bool) or not isinstance(self.crop, int) or self.crop < 0:
            raise ValueError(f"crop must be a non-negative int (pixels of padding); got {self.crop!r}")

    def __str__(self) -> str:
        return ",".join([*(["flip"] if self.flip else []), *([f"crop:{self.crop}"] if self.crop else [])])

    def check(self, x_shape) -> None:
        """Refuse data this cannot transform: images ``(N, H, W, C)`` with a crop smaller than each side."""
        if len(x_shape) != 4:
            raise ValueError(f"augment {str(self)!r} transforms images (N, H, W, C); the training inputs have shape "
                             f"{tuple(x_shape)} (tabular data is not augmented: leave augment out)")

    def __call__(self, key: jax.Array, batch: Batch) -> Batch:
        x, mask = batch.x, batch.mask
        keys = jax.random.split(key, x.shape[0])

        def one(k, image, m):
            k_flip, k_crop = jax.random.split(k)
            if self.flip:
                mirror = jax.random.bernoulli(k_flip)
                image = jnp.where(mirror, image[:, ::-1], image)
                m = None if m is None else jnp.where(mirror, m[:, ::-1], m)
            if self.crop:
                p = self.crop
                h, w = image.shape[:2]
                dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * p + 1)
                padded = jnp.pad(image, ((p, p), (p, p), (0, 0)))
                image = jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)
                if m is not None:
                    m = jax.lax.dynamic_slice(jnp.pad(m, ((p, p), (p, p))), (dy, dx), (h, w))
            return image, m

        if mask is None:
            x = jax.vmap(lambda k, image: one(k, image, None)[0])(keys, x)
        else:
            x, mask = jax.vmap(one)(keys, x, mask)
        return batch._replace(x=x, mask=mask)


def parse_augment(text: str | None) -> Augment | None:
    """``"flip"``, ``"crop:P"`` or both, comma-separated, as an :class:`Augment`; ``None`` or ``""``: ``None``.

    Raises:
      ValueError: a word that is neither (named, with what is expected).
    """
    if text is None or not str(text).strip():
        return None
    flip, crop = False, 0
    for word in (w.strip() for w in str(text).split(",")):
        m = _CROP.match(word)
        if word == "flip":
            flip = True
        elif m:
            crop = int(m.group(1))
        else:
            raise ValueError(f"augment must be flip, crop:P (P pixels of padding) or both, comma-separated; got "
                             f"{word!r} in {text!r}")
    return Augment(flip=flip, crop=crop)
