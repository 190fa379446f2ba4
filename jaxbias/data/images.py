"""Pictures as arrays, shared by the image sources (:mod:`jaxbias.data.folder`, :mod:`jaxbias.data.tfds_source`):
a decoded image converted to a colour mode and resized bilinearly with Pillow, as uint8 ``(H, W, C)``."""
from __future__ import annotations

import numpy as np
from PIL import Image

#: the colour modes: rgb = 3 channels, grey = 1
MODES = ("rgb", "grey")
_PIL_MODES = {"rgb": "RGB", "grey": "L"}


#: How a JPEG is decoded to a smaller size: ``full`` decodes every pixel, then resizes; ``reduced`` lets the JPEG
#: decoder scale by 1/2, 1/4 or 1/8 while decoding (libjpeg's DCT scaling, Pillow's ``draft``) to the smallest scale
#: still at least the target size, then resizes: several times less work for a photo a few times larger than the
#: target, slightly different pixels (the DCT-domain reduction antialiases in place of part of the bilinear
#: filter). Other formats decode in full either way.
DECODES = ("full", "reduced")


def open_uint8(path: str, mode: str, size: int | None = None, *, decode: str = "full") -> np.ndarray:
    """The image file ``path`` as :func:`to_uint8` gives it, decoded as ``decode`` says (:data:`DECODES`).

    Raises:
      ValueError: an unknown ``decode``; OSError (from Pillow): a file that is not a readable image.
    """
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES}; got {decode!r}")
    with Image.open(path) as img:
        if decode == "reduced" and size is not None and mode in _PIL_MODES:
            img.draft(_PIL_MODES[mode], (size, size))  # a no-op for formats other than JPEG
        return to_uint8(img, mode, size)


def to_uint8(image: Image.Image | np.ndarray, mode: str, size: int | None = None) -> np.ndarray:
    """``image`` (a Pillow image, or a uint8 array ``(H, W)`` / ``(H, W, C)`` with C in 1, 3, 4) in colour ``mode``
    (:data:`MODES`), resized bilinearly to ``size`` × ``size`` (``None``: its own size), as uint8 ``(H, W, C)``
    (C 3 for rgb, 1 for grey).

    Raises:
      ValueError: an unknown mode, or an array that is not a uint8 picture (its shape and dtype named).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"expected a uint8 picture (H, W) or (H, W, C) with C in 1, 3, 4; got {image.dtype} "
                             f"{image.shape}")
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    image = image.convert(_PIL_MODES[mode])
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    out = np.asarray(image, np.uint8)
    return out if out.ndim == 3 else out[..., None]


__all__ = ["DECODES", "MODES", "open_uint8", "to_uint8"]
