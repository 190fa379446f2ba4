"""A controlled confounder with a known region: MNIST digits below a "hair" band (SPEC §6, §8).

The offline stand-in for the CelebA protocol of De Coninck et al. (CVPRW
2024). Every image is ``S×S×3`` (default 64): a grey MNIST digit below a band
of the top ``band`` rows, which is the confounder's region (like hair above a
face). The target is ``y = 1[digit < 5]`` (the "Male" of the protocol). The
confounder ``c`` lives only in the band:

- ``style="mark"`` (default): the band is black and ``c = 1`` images carry a
  small coloured square at a uniformly random place inside it;
- ``style="hair"`` (like ``Blond_Hair``): every image has a textured band,
  ``colour·(0.6 + 0.4·u)`` with ``u ~ U(0, 1)`` per pixel; blond (``c = 1``)
  or dark (``c = 0``).

The training set follows the published group proportions
``(y ∧ c) : (y ∧ ¬c) : (¬y ∧ c) : (¬y ∧ ¬c) = 0 : 3000 : 2000 : 1000``, scaled
to the digits available, so the mark predicts ``y = 0`` perfectly; the test set
is balanced for target and confounder; the region classifier's set (``attr_*``)
has the mark independent of the target (probability ``attribution_p``).
``region`` is the true confounder region (the band), the reference for the
attribution map's IoU.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

from jaxbias.data.celeba import PUBLISHED_COUNTS, check_counts
from jaxbias.data.sources import load_mnist

#: ``style="hair"``: the band's colour for ``c = 1`` (blond) and ``c = 0`` (dark).
BLOND = (0.95, 0.8, 0.35)
DARK = (0.35, 0.22, 0.12)
#: ``style="mark"``: the square's colour.
MARK_COLOUR = (1.0, 0.85, 0.2)
STYLES = ("hair", "mark")


class RegionMNIST(NamedTuple):
    """Arrays of :func:`region_mnist`.

    ``*_x`` ``(N, S, S, 3)`` float32 in [0, 1]; ``*_y`` ``(N,)`` int32 target
    ``1[digit < 5]``; ``*_c`` ``(N,)`` int32 confounder (mark present);
    ``*_mark`` ``(N, S, S)`` bool pixels that carry the confounder (the band
    for ``"hair"``, the square for ``"mark"``); ``*_digit`` the digit classes.
    ``region``: ``(S, S)`` bool, the band where marks are drawn. ``counts``:
    the training groups ``{"t1_c0": …}``.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    train_c: np.ndarray
    train_mark: np.ndarray
    train_digit: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_c: np.ndarray
    test_mark: np.ndarray
    attr_x: np.ndarray
    attr_y: np.ndarray
    attr_c: np.ndarray
    attr_mark: np.ndarray
    region: np.ndarray
    counts: dict
    source: str


def scaled_counts(counts: Mapping[tuple[int, int], int], available: Mapping[int, int]) -> dict[tuple[int, int], int]:
    """The largest group sizes proportional to ``counts`` that the ``available`` images per target allow.

    ``n_(t,c) = round(f · counts_(t,c))`` with ``f = min_t available_t / Σ_c counts_(t,c)`` (at most 1 is not
    required: the published counts are a proportion here).

    Example:
      >>> scaled_counts(PUBLISHED_COUNTS, {0: 2000, 1: 2000})
      {(0, 0): 667, (0, 1): 1333, (1, 0): 2000, (1, 1): 0}
    """
    counts = check_counts(counts)
    per_t = {t: counts[(t, 0)] + counts[(t, 1)] for t in (0, 1)}
    f = min(available[t] / per_t[t] for t in (0, 1) if per_t[t] > 0)
    out = {}
    for t in (0, 1):
        n_t = int(round(f * per_t[t]))
        n_c = int(round(f * counts[(t, 1)]))
        out[(t, 0)], out[(t, 1)] = n_t - n_c, n_c
    return dict(sorted(out.items()))


def _canvas(digits: np.ndarray, size: int, band: int) -> np.ndarray:
    """Grey digits (N, 28, 28) uint8 → (N, S, S, 3) float32, centred horizontally below the band."""
    scale = max(1, size // 64)
    d = digits.astype(np.float32) / 255.0
    if scale > 1:
        d = d.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w = d.shape
    top = band + (size - band - h) // 2
    left = (size - w) // 2
    out = np.zeros((n, size, size, 3), np.float32)
    out[:, top : top + h, left : left + w, :] = d[..., None]
    return out


def _draw_hair(x: np.ndarray, c: np.ndarray, rng: np.random.Generator, *, band: int) -> np.ndarray:
    n, size = x.shape[0], x.shape[1]
    texture = (0.6 + 0.4 * rng.uniform(size=(n, band, size, 1))).astype(np.float32)
    colour = np.where(c[:, None, None, None], np.asarray(BLOND, np.float32), np.asarray(DARK, np.float32))
    x[:, :band] = texture * colour
    masks = np.zeros((n, size, size), bool)
    masks[:, :band] = True
    return masks


def _draw_marks(x: np.ndarray, has_mark: np.ndarray, rng: np.random.Generator, *, band: int, mark_size: int,
                colour: Sequence[float], style: str = "mark") -> np.ndarray:
    if style == "hair":
        return _draw_hair(x, has_mark, rng, band=band)
    n, size = x.shape[0], x.shape[1]
    masks = np.zeros((n, size, size), bool)
    rows = rng.integers(0, band - mark_size + 1, n)
    cols = rng.integers(0, size - mark_size + 1, n)
    for i in np.flatnonzero(has_mark):
        masks[i, rows[i] : rows[i] + mark_size, cols[i] : cols[i] + mark_size] = True
    x[masks] = np.asarray(colour, np.float32)
    return masks


def region_mnist(
    *,
    image_size: int = 64,
    style: str = "mark",
    band: int | None = None,
    mark_size: int | None = None,
    colour: Sequence[float] = MARK_COLOUR,
    counts: Mapping[tuple[int, int], int] = PUBLISHED_COUNTS,
    attribution_p: float = 0.5,
    seed: int = 0,
    source: str = "offline",
    data_dir: str | None = None,
) -> RegionMNIST:
    """Digits with a confounding mark in the top band, in the published CelebA-subset proportions.

    Args:
      image_size: ``S`` (≥ 48); digits are scaled ×``⌊S/64⌋``.
      style: ``"mark"`` (a square in the band) or ``"hair"`` (the band's colour is the confounder).
      band: rows of the confounder region (default ``round(0.19·S)``: 12 of 64, so that the top 30 %
        of a map can cover all of it).
      mark_size: ``"mark"``: side of the square (default ``S // 6``).
      colour: ``"mark"``: RGB of the square in [0, 1].
      counts: ``(target, confounder) -> images`` proportions of the training set.
      attribution_p: probability of the mark in the region classifier's set.
      seed: marks and subsampling (the digits' train/test split is fixed by ``source``).
      source: digits from :func:`jaxbias.data.load_mnist` (``"offline"``: 4,000 train / 1,000 test).
      data_dir: TFDS data directory.
    Returns:
      :class:`RegionMNIST`.

    Example:
      >>> data = region_mnist(seed=0)
      >>> data.counts
      {'t0_c0': 667, 't0_c1': 1333, 't1_c0': 2000, 't1_c1': 0}
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 48:
        raise ValueError(f"image_size must be an int ≥ 48, got {image_size!r}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    size = int(image_size)
    band = int(round(0.19 * size)) if band is None else band
    mark_size = max(2, min(size // 6, band)) if mark_size is None else mark_size
    scale = max(1, size // 64)
    if not isinstance(band, (int, np.integer)) or not 1 <= band <= size - 28 * scale:
        raise ValueError(f"band must be an int in [1, {size - 28 * scale}] (room for the digit below), got {band!r}")
    if not isinstance(mark_size, (int, np.integer)) or not 1 <= mark_size <= band:
        raise ValueError(f"mark_size must be an int in [1, band={band}], got {mark_size!r}")
    col = np.asarray(colour, np.float64)
    if col.shape != (3,) or col.min() < 0 or col.max() > 1:
        raise ValueError(f"colour must be three numbers in [0, 1], got {colour!r}")
    if not 0.0 <= float(attribution_p) <= 1.0:
        raise ValueError(f"attribution_p must be in [0, 1], got {attribution_p!r}")
    digits = load_mnist(source, data_dir=data_dir)
    rng = np.random.default_rng(seed)

    # training subset: within each target class, a random share gets the mark
    y_all = (digits.train_y < 5).astype(np.int32)
    groups = scaled_counts(counts, {t: int((y_all == t).sum()) for t in (0, 1)})
    chosen, marked = [], []
    for t in (0, 1):
        pool = rng.permutation(np.flatnonzero(y_all == t))
        n_c, n_nc = groups[(t, 1)], groups[(t, 0)]
        chosen += [pool[:n_c], pool[n_c : n_c + n_nc]]
        marked += [np.ones(n_c, bool), np.zeros(n_nc, bool)]
    order = np.concatenate(chosen)
    has = np.concatenate(marked)
    perm = rng.permutation(order.shape[0])  # no group blocks in the stored order
    order, has = order[perm], has[perm]
    train_x = _canvas(digits.train_x[order], size, band)
    train_mark = _draw_marks(train_x, has, rng, band=band, mark_size=mark_size, colour=col, style=style)

    # test: balanced, half of each target class marked
    y_test = (digits.test_y < 5).astype(np.int32)
    has_t = np.zeros(y_test.shape[0], bool)
    for t in (0, 1):
        idx = rng.permutation(np.flatnonzero(y_test == t))
        has_t[idx[: idx.shape[0] // 2]] = True
    test_x = _canvas(digits.test_x, size, band)
    test_mark = _draw_marks(test_x, has_t, rng, band=band, mark_size=mark_size, colour=col, style=style)

    # region classifier's set: the training digits, mark independent of the target
    has_a = rng.uniform(size=digits.train_y.shape[0]) < attribution_p
    attr_x = _canvas(digits.train_x, size, band)
    attr_mark = _draw_marks(attr_x, has_a, rng, band=band, mark_size=mark_size, colour=col, style=style)

    region = np.zeros((size, size), bool)
    region[:band] = True
    return RegionMNIST(
        train_x=train_x, train_y=y_all[order], train_c=has.astype(np.int32), train_mark=train_mark,
        train_digit=digits.train_y[order].astype(np.int32),
        test_x=test_x, test_y=y_test, test_c=has_t.astype(np.int32), test_mark=test_mark,
        attr_x=attr_x, attr_y=(digits.train_y < 5).astype(np.int32), attr_c=has_a.astype(np.int32), attr_mark=attr_mark,
        region=region, counts={f"t{t}_c{c}": n for (t, c), n in groups.items()}, source=digits.source,
    )
