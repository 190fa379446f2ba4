"""Controlled artifacts: insert a known shortcut into images and return its mask (SPEC §8).

Every artifact returns ``(image, mask)``: the image with the artifact drawn in and
a boolean mask of the image's *spatial* shape ``(H, W)`` marking the pixels the
artifact writes (its footprint). That mask is the ``M`` of RRR (SPEC §3) and of
``R_bias`` (SPEC §7); for a channels-last input use ``mask[..., None]`` to cover
every channel. A pixel that already held the artifact's value is still marked,
although it did not change.

Artifacts (one image each):

- :func:`stamp` -- "timestamp"-like text in a corner, drawn with the built-in
  3×5 bitmap font :data:`FONT_3X5` (no font dependency), e.g. ImageNet "tench".
- :func:`blend` -- brightness blend ``x·(1 − w) + w·v`` (``w = 0.3``, ``v = 255``:
  ``x·0.7 + 0.3·255``, Bone Age); the mask is the whole image.
- :func:`lsb_hide` -- a bit pattern or text written into the least significant
  bit of one channel (ISIC); every pixel moves by at most 1, and
  :func:`lsb_read` reads the bits back.
- :func:`colour_patch` -- a small coloured square ("collar") at a given or
  random location.

Datasets (batches):

- :func:`decoy_mnist` -- Decoy MNIST (RRR): a 4×4 patch in a random corner whose
  grey value is ``255 − 25·label`` in training and unrelated to the label at test.
- :func:`insert_into_class` -- an artifact inserted with probability ``p`` into
  the images of one class (RR-ClArC controlled settings); :func:`insert_all`
  inserts it into every image (the "artifact test set").

Conventions:

- Pixel values are on the 0..255 scale: ``uint8``, or any other integer or
  float dtype holding values in ``[0, 255]``. Float images scaled to ``[0, 1]``
  are *not* detected; insert artifacts before :func:`jaxbias.data.to_float`.
- Outputs keep the input's dtype (and shape); the input is never modified.
  Integer outputs of :func:`blend` are rounded half to even (``np.rint``).
- Shapes are decided by the function, never guessed from the data: the
  single-image artifacts take ``(H, W)`` (grey) or ``(H, W, C)`` (channels last),
  so a rank-3 array is one multi-channel image; the batch functions take
  ``(N, H, W)`` or ``(N, H, W, C)``, so a rank-3 array is a batch of grey images.
- Randomness comes only from ``np.random.default_rng(seed)`` (or a
  ``np.random.Generator`` passed in); no global state.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import numpy as np

from jaxbias.validation import check_labels

#: An artifact as :func:`insert_into_class` calls it: ``artifact(image, rng) -> (image, mask)``.
Artifact = Callable[[np.ndarray, np.random.Generator], "tuple[np.ndarray, np.ndarray]"]

#: Corner names, in the order :func:`decoy_mnist` reports corners by index.
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")

_GLYPH_ROWS = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", "..#", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
    ":": ("...", ".#.", "...", ".#.", "..."),
    "-": ("...", "...", "###", "...", "..."),
    "/": ("..#", "..#", ".#.", "#..", "#.."),
    ".": ("...", "...", "...", "...", ".#."),
    " ": ("...", "...", "...", "...", "..."),
}


def _glyph(rows: tuple[str, ...]) -> np.ndarray:
    g = np.array([[ch == "#" for ch in row] for row in rows], dtype=bool)
    g.setflags(write=False)
    return g


#: The built-in bitmap font: character → ``(5, 3)`` bool array (``True`` = ink).
#: Digits, ``:``, ``-``, ``/``, ``.`` and space; glyphs are set one blank column apart.
FONT_3X5: dict[str, np.ndarray] = {c: _glyph(rows) for c, rows in _GLYPH_ROWS.items()}
GLYPH_HEIGHT, GLYPH_WIDTH, GLYPH_GAP = 5, 3, 1

#: Decoy MNIST: patch side and the grey-value step per label (``255 − 25·label``).
DECOY_SIZE = 4
DECOY_STEP = 25
_DECOY_CLASSES = 10


# --------------------------------------------------------------------------- checks


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _check_seed(seed: Any) -> int:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r} ({type(seed).__name__})")
    return int(seed)


def _check_pixels(name: str, arr: np.ndarray) -> None:
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must have an integer or float dtype (pixel values 0..255), got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.integer) and (np.iinfo(arr.dtype).min > 0 or np.iinfo(arr.dtype).max < 255):
        raise ValueError(f"{name} has dtype {arr.dtype}, which cannot hold pixel values 0..255; use uint8")
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 255):
        raise ValueError(
            f"{name} must hold finite pixel values in [0, 255], got range [{arr.min()}, {arr.max()}] ({arr.dtype})"
        )


def _check_image(image: Any, name: str = "image") -> np.ndarray:
    """One image: ``(H, W)`` or ``(H, W, C)`` with ``H, W, C ≥ 1``."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise ValueError(
            f"{name} must be one image of shape (H, W) or (H, W, C) with non-zero sizes "
            f"(use insert_all/insert_into_class for batches), got shape {arr.shape}"
        )
    _check_pixels(name, arr)
    return arr


def _check_batch(images: Any, name: str = "images") -> np.ndarray:
    """A batch: ``(N, H, W)`` or ``(N, H, W, C)`` with ``H, W, C ≥ 1`` (``N`` may be 0)."""
    arr = np.asarray(images)
    if arr.ndim not in (3, 4) or 0 in arr.shape[1:]:
        raise ValueError(
            f"{name} must be a batch of shape (N, H, W) or (N, H, W, C) with non-zero H, W, C, got shape {arr.shape}"
        )
    _check_pixels(name, arr)
    return arr


def _check_value(name: str, value: Any, image: np.ndarray) -> np.ndarray:
    """A pixel value for ``image``: a number (every channel) or one number per channel.

    Returns an array that broadcasts against ``image[rows, cols]``: shape ``()`` or ``(C,)``.
    """
    v = np.asarray(value)
    if v.dtype == np.bool_ or not (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating)):
        raise ValueError(f"{name} must be a number or a sequence of numbers, got {value!r}")
    if v.ndim == 1:
        if image.ndim != 3 or v.shape[0] != image.shape[2]:
            channels = "a grey (H, W) image takes a single number" if image.ndim == 2 else f"expected {image.shape[2]} values"
            raise ValueError(f"{name} has {v.shape[0]} values for an image of shape {image.shape}; {channels}")
    elif v.ndim != 0:
        raise ValueError(f"{name} must be a number or a 1-D sequence (one value per channel), got shape {v.shape}")
    if not np.all(np.isfinite(v)) or v.min() < 0 or v.max() > 255:
        raise ValueError(f"{name} must lie in [0, 255], got {value!r}")
    if np.issubdtype(image.dtype, np.integer) and not np.all(v == np.round(v)):
        raise ValueError(f"{name} must be whole numbers for an image of dtype {image.dtype}, got {value!r}")
    return v.astype(image.dtype)


def _check_corner(corner: Any) -> str:
    if corner not in CORNERS:
        raise ValueError(f"corner must be one of {CORNERS}, got {corner!r}")
    return corner


def _check_nonneg_int(name: str, x: Any, *, minimum: int = 0) -> int:
    if not _is_int(x) or x < minimum:
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {x!r} ({type(x).__name__})")
    return int(x)


def _check_channel(channel: Any, image: np.ndarray) -> int:
    n_channels = 1 if image.ndim == 2 else image.shape[2]
    if not _is_int(channel) or not 0 <= channel < n_channels:
        raise ValueError(f"channel must be an int in [0, {n_channels - 1}] for an image of shape {image.shape}, got {channel!r}")
    return int(channel)


def _corner_origin(corner: str, shape: tuple[int, int], box: tuple[int, int], margin: int) -> tuple[int, int]:
    (h, w), (bh, bw) = shape, box
    row = margin if corner.startswith("top") else h - margin - bh
    col = margin if corner.endswith("left") else w - margin - bw
    return row, col


# --------------------------------------------------------------------------- artifacts


def render_text(text: str, *, scale: int = 1) -> np.ndarray:
    """The bitmap of ``text`` in :data:`FONT_3X5`: glyphs one blank column apart, scaled.

    Args:
      text: non-empty string of characters in :data:`FONT_3X5`.
      scale: each font pixel becomes a ``scale × scale`` block (int ≥ 1).

    Returns:
      ``(5·scale, (4·len(text) − 1)·scale)`` bool array, ``True`` = ink.

    Example:
      >>> render_text("1").astype(int).tolist()[0]
      [0, 1, 0]
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty str, got {text!r}")
    unknown = sorted(set(text) - set(FONT_3X5))
    if unknown:
        raise ValueError(f"text {text!r} has characters {unknown} outside the font; supported: {''.join(FONT_3X5)!r}")
    scale = _check_nonneg_int("scale", scale, minimum=1)
    gap = np.zeros((GLYPH_HEIGHT, GLYPH_GAP), dtype=bool)
    parts: list[np.ndarray] = []
    for i, ch in enumerate(text):
        if i:
            parts.append(gap)
        parts.append(FONT_3X5[ch])
    bitmap = np.concatenate(parts, axis=1)
    return np.kron(bitmap, np.ones((scale, scale), dtype=bool))


def stamp(
    image: Any,
    text: str,
    *,
    corner: str = "bottom_right",
    value: Any = 255,
    margin: int = 1,
    scale: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw "timestamp"-like ``text`` into a corner of one image.

    The text is rendered with :func:`render_text` (font :data:`FONT_3X5`) and its ink
    pixels are set to ``value``; the box sits ``margin`` pixels from the two edges of
    ``corner``. The mask is exactly the ink pixels (not the text's bounding box).

    Args:
      image: ``(H, W)`` or ``(H, W, C)``, values in ``[0, 255]``.
      text: characters of :data:`FONT_3X5` (digits, ``:``, ``-``, ``/``, ``.``, space).
      corner: one of :data:`CORNERS`.
      value: ink value: a number (all channels) or one number per channel; whole
        numbers for integer images.
      margin: distance in pixels from the image edges (int ≥ 0).
      scale: font pixel size (int ≥ 1).

    Returns:
      ``(stamped, mask)``: same shape and dtype as ``image``, and ``(H, W)`` bool.

    Example:
      >>> img, mask = stamp(np.zeros((28, 28), np.uint8), "12:05", corner="top_left")
      >>> int(mask.sum()), int(img.max())
      (44, 255)
    """
    img = _check_image(image)
    corner = _check_corner(corner)
    margin = _check_nonneg_int("margin", margin)
    v = _check_value("value", value, img)
    bitmap = render_text(text, scale=scale)
    h, w = img.shape[:2]
    bh, bw = bitmap.shape
    if bh + margin > h or bw + margin > w:
        raise ValueError(
            f"text {text!r} at scale {scale} needs {bh}×{bw} pixels plus margin {margin}, "
            f"which does not fit an image of shape {img.shape}"
        )
    row, col = _corner_origin(corner, (h, w), (bh, bw), margin)
    mask = np.zeros((h, w), dtype=bool)
    mask[row : row + bh, col : col + bw] = bitmap
    out = img.copy()
    out[mask] = v
    return out, mask


def blend(image: Any, *, weight: float = 0.3, value: float = 255.0) -> tuple[np.ndarray, np.ndarray]:
    """Brightness blend towards ``value``: ``x' = x·(1 − w) + w·v`` on every pixel.

    The defaults give SPEC §8's ``x·0.7 + 0.3·255`` (Bone Age). The artifact touches
    every pixel, so the mask is the whole image (all ``True``) -- a region mask carries
    no information for this artifact. Integer images are rounded half to even
    (``np.rint``); float images keep the exact value (computed in float64, then cast to
    the input dtype).

    Args:
      image: ``(H, W)`` or ``(H, W, C)``, values in ``[0, 255]``.
      weight: ``w`` in ``[0, 1]``, the artifact's share.
      value: ``v`` in ``[0, 255]``, the colour blended in (a number).

    Returns:
      ``(blended, mask)``: same shape and dtype as ``image``, and ``(H, W)`` bool, all ``True``.

    Example:
      >>> blend(np.array([[0, 100]], np.uint8))[0].tolist()
      [[76, 146]]
    """
    img = _check_image(image)
    if not _is_real(weight) or not 0.0 <= float(weight) <= 1.0:  # also rejects NaN
        raise ValueError(f"weight must be a number in [0, 1], got {weight!r}")
    if not _is_real(value) or not 0.0 <= float(value) <= 255.0:
        raise ValueError(f"value must be a number in [0, 255], got {value!r}")
    w = float(weight)
    x = img.astype(np.float64) * (1.0 - w) + w * float(value)
    if np.issubdtype(img.dtype, np.integer):
        x = np.rint(x)
    return x.astype(img.dtype), np.ones(img.shape[:2], dtype=bool)


def _message_bits(message: Any) -> np.ndarray:
    if isinstance(message, str):
        message = message.encode("utf-8")
    if isinstance(message, (bytes, bytearray)):
        bits = np.unpackbits(np.frombuffer(bytes(message), dtype=np.uint8))  # most significant bit first
    else:
        arr = np.asarray(message)
        if arr.ndim != 1 or not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(
                f"message must be a str, bytes or a 1-D array of bits (bool or ints 0/1), got shape {arr.shape} dtype {arr.dtype}"
            )
        if arr.size and not np.all((arr == 0) | (arr == 1)):
            raise ValueError("message bits must be 0 or 1")
        bits = arr.astype(np.uint8)
    if bits.size == 0:
        raise ValueError("message must not be empty")
    return bits


def lsb_hide(image: Any, message: Any, *, channel: int = 0, repeat: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Hide ``message`` in the least significant bit of one channel.

    The bits (a ``str`` is UTF-8 encoded, each byte most significant bit first) go into
    the pixels of ``channel`` in row-major order from the top-left pixel; with
    ``repeat=True`` they are repeated until every pixel holds one. A written pixel
    becomes ``(x with its lowest bit cleared) + bit``, so it moves by at most 1 and the
    image looks unchanged. The mask marks the written pixels.

    Args:
      image: ``(H, W)`` or ``(H, W, C)`` holding whole numbers in ``[0, 255]`` (float
        images too, as long as the chosen channel holds whole numbers).
      message: ``str``, ``bytes`` or a 1-D array of bits; at most ``H·W`` bits.
      channel: channel to write (0 for a grey image).
      repeat: tile the message over the whole channel.

    Returns:
      ``(image, mask)``: same shape and dtype as ``image``, and ``(H, W)`` bool.

    Example:
      >>> img, mask = lsb_hide(np.full((4, 4), 200, np.uint8), [1, 0, 1])
      >>> img[0].tolist(), lsb_read(img, 3).tolist()
      ([201, 200, 201, 200], [1, 0, 1])
    """
    img = _check_image(image)
    ch = _check_channel(channel, img)
    bits = _message_bits(message)
    h, w = img.shape[:2]
    if bits.size > h * w:
        raise ValueError(f"message has {bits.size} bits but an image of shape {img.shape} holds {h * w} per channel")
    plane = img if img.ndim == 2 else img[..., ch]
    if not np.all(plane == np.round(plane)):
        raise ValueError(f"image channel {ch} must hold whole numbers to carry bits in its lowest bit (dtype {img.dtype})")
    n = h * w if repeat else bits.size
    flat_bits = np.resize(bits, n)  # np.resize repeats the bits cyclically
    values = plane.reshape(-1)[:n].astype(np.int64)
    written = (values & ~np.int64(1)) | flat_bits
    out = img.copy()
    new_plane = plane.reshape(-1).copy()
    new_plane[:n] = written.astype(img.dtype)
    if img.ndim == 2:
        out[...] = new_plane.reshape(h, w)
    else:
        out[..., ch] = new_plane.reshape(h, w)
    mask = np.zeros(h * w, dtype=bool)
    mask[:n] = True
    return out, mask.reshape(h, w)


def lsb_read(image: Any, n_bits: int, *, channel: int = 0) -> np.ndarray:
    """The lowest bits of the first ``n_bits`` pixels of ``channel`` in row-major order.

    Reads back what :func:`lsb_hide` wrote; ``np.packbits`` turns bits into bytes.

    Args:
      image: ``(H, W)`` or ``(H, W, C)`` holding whole numbers in ``[0, 255]``.
      n_bits: how many bits to read, ``1 ≤ n_bits ≤ H·W``.
      channel: channel to read.

    Returns:
      ``(n_bits,)`` uint8 array of 0/1.

    Example:
      >>> img, _ = lsb_hide(np.zeros((8, 8), np.uint8), "hi")
      >>> np.packbits(lsb_read(img, 16)).tobytes()
      b'hi'
    """
    img = _check_image(image)
    ch = _check_channel(channel, img)
    h, w = img.shape[:2]
    if not _is_int(n_bits) or not 1 <= n_bits <= h * w:
        raise ValueError(f"n_bits must be an int in [1, {h * w}] for an image of shape {img.shape}, got {n_bits!r}")
    plane = (img if img.ndim == 2 else img[..., ch]).reshape(-1)[:n_bits]
    if not np.all(plane == np.round(plane)):
        raise ValueError(f"image channel {ch} must hold whole numbers to read its lowest bit (dtype {img.dtype})")
    return (plane.astype(np.int64) & 1).astype(np.uint8)


def colour_patch(
    image: Any,
    *,
    size: int | Sequence[int] = 3,
    colour: Any = None,
    location: Sequence[int] | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a small filled rectangle ("collar") of one colour into one image.

    The patch's top-left pixel is ``location = (row, col)``; when ``location`` is
    ``None`` it is drawn uniformly from the positions where the whole patch fits, using
    ``rng``. The mask is the patch.

    Args:
      image: ``(H, W)`` or ``(H, W, C)``, values in ``[0, 255]``.
      size: side ``s`` (an ``s × s`` square) or ``(height, width)``, ints ≥ 1.
      colour: a number (all channels) or one number per channel. ``None``: red
        ``(255, 0, 0)`` for a 3-channel image, 255 otherwise.
      location: ``(row, col)`` of the top-left pixel, or ``None`` for a random one.
      rng: ``np.random.Generator``, needed when ``location`` is ``None``.

    Returns:
      ``(image, mask)``: same shape and dtype as ``image``, and ``(H, W)`` bool.

    Example:
      >>> img, mask = colour_patch(np.zeros((8, 8, 3), np.uint8), size=2, location=(1, 5))
      >>> img[1, 5].tolist(), int(mask.sum())
      ([255, 0, 0], 4)
    """
    img = _check_image(image)
    if _is_int(size):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_int(s) and s >= 1 for s in size)):
        raise ValueError(f"size must be an int ≥ 1 or a (height, width) pair of ints ≥ 1, got {size!r}")
    ph, pw = int(size[0]), int(size[1])
    h, w = img.shape[:2]
    if ph > h or pw > w:
        raise ValueError(f"a patch of size {ph}×{pw} does not fit an image of shape {img.shape}")
    if colour is None:
        colour = (255, 0, 0) if img.ndim == 3 and img.shape[2] == 3 else 255
    v = _check_value("colour", colour, img)
    if location is None:
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a np.random.Generator when location is None, got {type(rng).__name__}")
        row, col = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    else:
        if not (isinstance(location, (tuple, list)) and len(location) == 2 and all(_is_int(c) for c in location)):
            raise ValueError(f"location must be a (row, col) pair of ints, got {location!r}")
        row, col = int(location[0]), int(location[1])
        if not (0 <= row <= h - ph and 0 <= col <= w - pw):
            raise ValueError(
                f"location {location!r} puts a {ph}×{pw} patch outside an image of shape {img.shape}; "
                f"expected row in [0, {h - ph}] and col in [0, {w - pw}]"
            )
    mask = np.zeros((h, w), dtype=bool)
    mask[row : row + ph, col : col + pw] = True
    out = img.copy()
    out[mask] = v
    return out, mask


# --------------------------------------------------------------------------- datasets


def decoy_mnist(
    images: Any, labels: Any, *, train: bool, seed: int, size: int = DECOY_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoy MNIST (RRR): a grey ``size × size`` patch in a random corner of every image.

    Each image gets a corner drawn uniformly from :data:`CORNERS`. The patch's grey
    value is ``255 − 25·label`` when ``train`` (a perfect shortcut); at test it is
    ``255 − 25·d`` for a digit ``d`` drawn uniformly from 0..9 independently of the
    label, so the values are the same set but say nothing about the class. The mask is
    the patch.

    Args:
      images: ``(N, H, W)`` or ``(N, H, W, C)`` (every channel gets the grey value),
        values in ``[0, 255]``; ``H, W ≥ size``.
      labels: ``(N,)`` integer digit classes in ``[0, 9]``.
      train: ``True`` for the label-encoding patch, ``False`` for the random one.
      seed: non-negative int; corners and test values depend on nothing else.
      size: patch side (int ≥ 1), 4 in the paper.

    Returns:
      ``(images, masks, corners)``: same shape and dtype as ``images``, ``(N, H, W)``
      bool, and ``(N,)`` int8 indices into :data:`CORNERS`.

    Example:
      >>> x, m, corners = decoy_mnist(digits.train_x, digits.train_y, train=True, seed=0)
    """
    imgs = _check_batch(images)
    n, h, w = imgs.shape[:3]
    labels = check_labels("labels", labels, n=n, against="images", num_classes=_DECOY_CLASSES)
    if not isinstance(train, (bool, np.bool_)):
        raise ValueError(f"train must be a bool, got {train!r}")
    seed = _check_seed(seed)
    size = _check_nonneg_int("size", size, minimum=1)
    if size > h or size > w:
        raise ValueError(f"a {size}×{size} decoy patch does not fit images of shape {imgs.shape}")
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, len(CORNERS), size=n).astype(np.int8)
    digits = labels if train else rng.integers(0, _DECOY_CLASSES, size=n)
    grey = (255 - DECOY_STEP * digits.astype(np.int64)).astype(imgs.dtype)
    corner_masks = np.zeros((len(CORNERS), h, w), dtype=bool)
    for k, name in enumerate(CORNERS):
        row, col = _corner_origin(name, (h, w), (size, size), 0)
        corner_masks[k, row : row + size, col : col + size] = True
    masks = corner_masks[corners]
    out = imgs.copy()
    where = masks if imgs.ndim == 3 else masks[..., None]
    fill = grey.reshape((n,) + (1,) * (imgs.ndim - 1))
    out = np.where(where, fill, out).astype(imgs.dtype)
    return out, masks, corners


def _named(name: str) -> Artifact:
    if name == "stamp":
        return lambda im, rng: stamp(im, "12:05")
    if name == "blend":
        return lambda im, rng: blend(im)
    if name == "lsb":
        return lambda im, rng: lsb_hide(im, "jaxbias")
    if name == "patch":
        return lambda im, rng: colour_patch(im, rng=rng)
    raise ValueError(f"artifact must be a callable (image, rng) -> (image, mask) or one of {ARTIFACTS}, got {name!r}")


#: Names :func:`insert_into_class` accepts for ``artifact``, with their defaults:
#: ``"stamp"`` = ``stamp(im, "12:05")`` (bottom right, white), ``"blend"`` = ``blend(im)``,
#: ``"lsb"`` = ``lsb_hide(im, "jaxbias")``, ``"patch"`` = ``colour_patch(im, rng=rng)``
#: (3×3, random location).
ARTIFACTS = ("stamp", "blend", "lsb", "patch")


def named(name: str) -> Artifact:
    """The artifact ``name`` of :data:`ARTIFACTS` as ``artifact(image, rng) -> (image, mask)`` (defaults there)."""
    return _named(name)


def _insert(imgs: np.ndarray, chosen: np.ndarray, artifact: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(artifact, str):
        artifact = _named(artifact)
    elif not callable(artifact):
        raise ValueError(f"artifact must be a callable (image, rng) -> (image, mask) or one of {ARTIFACTS}, got {artifact!r}")
    out = imgs.copy()
    masks = np.zeros(imgs.shape[:3], dtype=bool)
    for i in np.flatnonzero(chosen):
        # One generator per sample index: what sample i gets does not depend on which
        # other samples were chosen (so insert_all and insert_into_class agree on it).
        rng = np.random.default_rng([seed, 1, int(i)])
        result = artifact(imgs[i], rng)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ValueError(f"artifact must return an (image, mask) pair, got {type(result).__name__}")
        new, mask = np.asarray(result[0]), np.asarray(result[1])
        if new.shape != imgs.shape[1:] or new.dtype != imgs.dtype:
            raise ValueError(
                f"artifact returned an image of shape {new.shape} dtype {new.dtype} for an input of shape "
                f"{imgs.shape[1:]} dtype {imgs.dtype}; expected the same shape and dtype"
            )
        if mask.shape != imgs.shape[1:3]:
            raise ValueError(
                f"artifact returned a mask of shape {mask.shape} for an image of shape {imgs.shape[1:]}; "
                f"expected the spatial shape {imgs.shape[1:3]}"
            )
        if mask.dtype != np.bool_:
            if not (np.issubdtype(mask.dtype, np.number) and np.all((mask == 0) | (mask == 1))):
                raise ValueError(f"artifact returned a mask of dtype {mask.dtype} with values other than 0/1")
            mask = mask.astype(bool)
        out[i] = new
        masks[i] = mask
    return out, masks


def insert_into_class(
    images: Any,
    labels: Any,
    *,
    target_class: int,
    p: float,
    artifact: Artifact | str,
    seed: int,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Insert ``artifact`` into each image of ``target_class`` independently with probability ``p``.

    Sample ``i`` is chosen when ``labels[i] == target_class`` and ``u_i < p`` for
    ``u_i ~ U[0, 1)`` from the seed; images of other classes are never touched. The
    artifact is called as ``artifact(image, rng)`` with a generator that depends only on
    ``(seed, i)``, so :func:`insert_all` with the same seed draws the same artifact for
    sample ``i``.

    Args:
      images: ``(N, H, W)`` or ``(N, H, W, C)``, values in ``[0, 255]``.
      labels: ``(N,)`` integer class labels.
      target_class: the class that carries the artifact, in ``[0, num_classes)``.
      p: insertion probability in ``[0, 1]``.
      artifact: a callable ``(image, rng) -> (image, mask)`` taking one image of shape
        ``images.shape[1:]`` and returning the same shape and dtype plus an
        ``(H, W)`` bool (or 0/1) mask -- e.g. ``lambda im, rng: stamp(im, "07")`` --
        or a name from :data:`ARTIFACTS` (defaults listed there).
      seed: non-negative int; the result depends on nothing else.
      num_classes: number of classes; ``None`` means ``labels.max() + 1``.

    Returns:
      ``(images, masks, inserted)``: same shape and dtype as ``images``, ``(N, H, W)``
      bool (all ``False`` where nothing was inserted), and ``(N,)`` bool.

    Example:
      >>> x, m, hit = insert_into_class(digits.train_x, digits.train_y, target_class=8,
      ...                               p=0.5, artifact="stamp", seed=0)
    """
    imgs = _check_batch(images)
    n = imgs.shape[0]
    if num_classes is not None:
        num_classes = _check_nonneg_int("num_classes", num_classes, minimum=1)
    labels = check_labels("labels", labels, n=n, against="images", num_classes=num_classes)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if n else 0
    if not _is_int(target_class) or not 0 <= target_class < num_classes:
        raise ValueError(
            f"target_class must be an int in [0, {num_classes - 1}] (num_classes={num_classes}), got {target_class!r}"
        )
    if not _is_real(p) or not 0.0 <= float(p) <= 1.0:  # also rejects NaN
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    seed = _check_seed(seed)
    u = np.random.default_rng([seed, 0]).random(n)
    inserted = (labels == target_class) & (u < float(p))
    out, masks = _insert(imgs, inserted, artifact, seed)
    return out, masks, inserted


def insert_all(images: Any, *, artifact: Artifact | str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Insert ``artifact`` into every image: the "artifact test set".

    Same artifact contract and per-sample generators as :func:`insert_into_class`.

    Args:
      images: ``(N, H, W)`` or ``(N, H, W, C)``, values in ``[0, 255]``.
      artifact: a callable ``(image, rng) -> (image, mask)`` or a name from :data:`ARTIFACTS`.
      seed: non-negative int.

    Returns:
      ``(images, masks)``: same shape and dtype as ``images``, and ``(N, H, W)`` bool.

    Example:
      >>> x_art, m_art = insert_all(digits.test_x, artifact="stamp", seed=0)
    """
    imgs = _check_batch(images)
    seed = _check_seed(seed)
    return _insert(imgs, np.ones(imgs.shape[0], dtype=bool), artifact, seed)
