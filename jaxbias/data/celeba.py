"""CelebA with a hidden confounder: the subset protocol of De Coninck et al. (CVPRW 2024), SPEC §6.

Target ``Male``; confounder one of ``Blond_Hair``, ``Eyeglasses``, ``Smiling``,
``Wearing_Hat``. The training subset has 6,000 images in fixed
(target, confounder) groups — ``(male ∧ c) = 0``, ``(male ∧ ¬c) = 3000``,
``(female ∧ c) = 2000``, ``(female ∧ ¬c) = 1000`` — so the confounder predicts
"female" perfectly; the test set is balanced (equal count in each of the four
groups). The region classifier gets its own images: ones from the training
split outside the subset, balanced for the confounder.

Images come from ``tfds.data_source("celeb_a", …)`` (random access, no
TensorFlow to *read*; building the dataset the first time needs the
manually downloaded files and may need TensorFlow:
``tfds build celeb_a --file_format=array_record``). The aligned 218×178
images are centre-cropped to 178×178 and resized to ``image_size``.
:func:`select_subset` and :func:`balanced_indices` work on any attribute
arrays (tested on synthetic ones).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbias.data.sources import DatasetUnavailableError
from jaxbias.validation import check_labels

TARGET = "Male"
CONFOUNDERS = ("Blond_Hair", "Eyeglasses", "Smiling", "Wearing_Hat")
#: ``(target, confounder) -> images`` of the published training subset.
PUBLISHED_COUNTS: Mapping[tuple[int, int], int] = {(1, 1): 0, (1, 0): 3000, (0, 1): 2000, (0, 0): 1000}
_TFDS_NAME = "celeb_a"
_CHUNK = 1024


def _binary(name: str, a: Any, n: int | None = None) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == bool:
        arr = arr.astype(np.int32)
    arr = check_labels(name, arr, n=n, against="target")
    if arr.size and arr.max() > 1:
        raise ValueError(f"{name} must be binary (0/1 or bool), got values up to {arr.max()}")
    return arr.astype(np.int32)


def check_counts(counts: Mapping[tuple[int, int], int]) -> dict[tuple[int, int], int]:
    """Group sizes ``{(target, confounder): n}`` checked (all four groups, non-negative ints) and returned as a dict."""
    keys = {(1, 1), (1, 0), (0, 1), (0, 0)}
    if set(counts) != keys:
        raise ValueError(f"counts must have the four (target, confounder) keys {sorted(keys)}, got {sorted(counts)}")
    out = {}
    for k, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"counts[{k}] must be a non-negative int, got {v!r}")
        out[k] = int(v)
    if sum(out.values()) == 0:
        raise ValueError("counts selects no image at all")
    return out


def select_subset(target: Any, confounder: Any, *, counts: Mapping[tuple[int, int], int] = PUBLISHED_COUNTS,
                  seed: int = 0, exclude: Any = None) -> np.ndarray:
    """Indices of a subset with exactly ``counts[(t, c)]`` images in each (target, confounder) group.

    Each group is sampled uniformly without replacement (``np.random.default_rng(seed)``).

    Args:
      target: ``(N,)`` binary target (``Male``).
      confounder: ``(N,)`` binary confounder.
      counts: images per group; default the published 0/3000/2000/1000.
      seed: sampling seed.
      exclude: indices that must not be selected (e.g. another subset), or ``None``.
    Returns:
      sorted int64 indices, ``Σ counts`` of them.
    Raises:
      ValueError: a group has fewer candidates than requested.

    Example:
      >>> idx = select_subset(attrs["Male"], attrs["Blond_Hair"], seed=0)
    """
    t = _binary("target", target)
    c = _binary("confounder", confounder, t.shape[0])
    counts = check_counts(counts)
    allowed = np.ones(t.shape[0], bool)
    if exclude is not None:
        allowed[np.asarray(exclude, np.int64)] = False
    rng = np.random.default_rng(seed)
    chosen = []
    for (tv, cv), n in sorted(counts.items(), reverse=True):
        pool = np.flatnonzero((t == tv) & (c == cv) & allowed)
        if pool.shape[0] < n:
            raise ValueError(f"group (target={tv}, confounder={cv}) has {pool.shape[0]} candidate images, "
                             f"fewer than the {n} requested")
        chosen.append(rng.choice(pool, size=n, replace=False))
    return np.sort(np.concatenate(chosen).astype(np.int64))


def balanced_indices(target: Any, confounder: Any, *, per_group: int | None = None, seed: int = 0,
                     exclude: Any = None) -> np.ndarray:
    """A subset balanced for target and confounder: ``per_group`` images in each of the four groups.

    ``per_group=None`` takes the size of the smallest group (all of it).

    Example:
      >>> test = balanced_indices(attrs["Male"], attrs["Blond_Hair"], seed=0)
    """
    t = _binary("target", target)
    c = _binary("confounder", confounder, t.shape[0])
    allowed = np.ones(t.shape[0], bool)
    if exclude is not None:
        allowed[np.asarray(exclude, np.int64)] = False
    sizes = {(tv, cv): int(((t == tv) & (c == cv) & allowed).sum()) for tv in (0, 1) for cv in (0, 1)}
    smallest = min(sizes.values())
    if per_group is None:
        per_group = smallest
    if isinstance(per_group, bool) or not isinstance(per_group, (int, np.integer)) or per_group < 1:
        raise ValueError(f"per_group must be an int ≥ 1, got {per_group!r} (group sizes {sizes})")
    if per_group > smallest:
        raise ValueError(f"per_group={per_group} but the smallest (target, confounder) group has {smallest} "
                         f"images (group sizes {sizes})")
    return select_subset(t, c, counts={k: int(per_group) for k in sizes}, seed=seed, exclude=exclude)


def confounder_balanced(confounder: Any, *, size: int, seed: int = 0, exclude: Any = None) -> np.ndarray:
    """``size`` indices, half with and half without the confounder (the region classifier's images).

    Example:
      >>> attr = confounder_balanced(attrs["Blond_Hair"], size=6000, exclude=train_idx)
    """
    c = _binary("confounder", confounder)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size must be an int ≥ 2, got {size!r}")
    allowed = np.ones(c.shape[0], bool)
    if exclude is not None:
        allowed[np.asarray(exclude, np.int64)] = False
    rng = np.random.default_rng(seed)
    out = []
    for cv, n in ((1, size // 2), (0, size - size // 2)):
        pool = np.flatnonzero((c == cv) & allowed)
        if pool.shape[0] < n:
            raise ValueError(f"only {pool.shape[0]} images with confounder={cv} available, {n} requested")
        out.append(rng.choice(pool, size=n, replace=False))
    return np.sort(np.concatenate(out).astype(np.int64))


# --- reading ----------------------------------------------------------------------------------------

def preprocess(images: Any, image_size: int) -> np.ndarray:
    """Centre-crop aligned CelebA images (218×178) to a square and resize: ``(N, S, S, 3)`` float32 in [0, 1]."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got shape {x.shape}")
    h, w = x.shape[1:3]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[:, top : top + s, left : left + s].astype(np.float32) / 255.0
    if s != image_size:
        x = np.asarray(jax.image.resize(jnp.asarray(x), (x.shape[0], image_size, image_size, 3), "linear",
                                        antialias=True))
    return np.clip(x, 0.0, 1.0)


def attributes_of(records: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, np.ndarray]:
    """``{name: (N,) int32}`` from CelebA records (``record["attributes"][name]``, bool)."""
    out = {n: np.empty(len(records), np.int32) for n in names}
    for i, rec in enumerate(records):
        attrs = rec["attributes"]
        for n in names:
            out[n][i] = int(bool(attrs[n]))
    return out


def _read(ds: Any, keys: np.ndarray) -> list:
    get_many = getattr(ds, "__getitems__", None)
    out = []
    for start in range(0, keys.shape[0], _CHUNK):
        k = [int(i) for i in keys[start : start + _CHUNK]]
        out.extend(get_many(k) if get_many is not None else [ds[i] for i in k])
    return out


class CelebASubset(NamedTuple):
    """The published training subset, a balanced test set and the region classifier's images.

    ``*_x`` ``(N, S, S, 3)`` float32 in [0, 1]; ``*_y`` target (``Male``);
    ``*_c`` the confounder. ``attr_*``: training-split images outside the
    subset, half with the confounder; ``val_*``: validation-split images,
    balanced for target and confounder (calibration).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    train_c: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_c: np.ndarray
    attr_x: np.ndarray
    attr_c: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    val_c: np.ndarray
    confounder: str
    counts: dict


def load_celeba(
    confounder: str = "Blond_Hair",
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int = 128,
    counts: Mapping[tuple[int, int], int] = PUBLISHED_COUNTS,
    test_per_group: int | None = 500,
    attribution_size: int = 6000,
    val_per_group: int = 250,
    seed: int = 0,
    download: bool = False,
) -> CelebASubset:
    """Load the confounded CelebA subsets through ``tfds.data_source``.

    Args:
      confounder: one of :data:`CONFOUNDERS`.
      data_dir: TFDS data directory (``None``: TFDS's default).
      image_size: output side ``S`` (128 in the paper).
      counts: training groups (:data:`PUBLISHED_COUNTS`).
      test_per_group: test images per (target, confounder) group; ``None``: the smallest group.
      attribution_size: images for the region classifier.
      val_per_group: validation images per group (calibration).
      seed: subset sampling.
      download: let TFDS build the dataset when it is missing (needs the manual files).
    Raises:
      DatasetUnavailableError: tensorflow-datasets or the prepared dataset is missing.

    Example:
      >>> data = load_celeba("Blond_Hair", data_dir="~/tensorflow_datasets")
    """
    if confounder not in CONFOUNDERS:
        raise ValueError(f"confounder must be one of {CONFOUNDERS}, got {confounder!r}")
    counts = check_counts(counts)
    try:
        import tensorflow_datasets as tfds  # ~0.3 s: loaded on use (tests/data/test_sources.py::test_import_is_light)
    except ImportError as e:
        raise DatasetUnavailableError(f"CelebA needs tensorflow-datasets: pip install tensorflow-datasets ({e})") from e
    where = data_dir if data_dir is not None else "the default TFDS data_dir"
    try:
        kw = dict(data_dir=data_dir, download=download, builder_kwargs={"file_format": "array_record"})
        light = tfds.data_source(_TFDS_NAME, split=["train", "validation", "test"],
                                 decoders={"image": tfds.decode.SkipDecoding()}, **kw)
        full = tfds.data_source(_TFDS_NAME, split=["train", "validation", "test"], **kw)
    except Exception as e:  # tfds raises many types (missing files, format, network)
        raise DatasetUnavailableError(
            f"TFDS dataset {_TFDS_NAME!r} is not available in {where}: {type(e).__name__}: {e}\n"
            "CelebA needs its files downloaded by hand, then "
            f"`tfds build {_TFDS_NAME} --file_format=array_record` (may need TensorFlow)."
        ) from e
    names = [TARGET, confounder]
    splits = {}
    for split, ds in zip(("train", "validation", "test"), light):
        splits[split] = attributes_of(_read(ds, np.arange(len(ds))), names)
    tr, va, te = splits["train"], splits["validation"], splits["test"]
    train_idx = select_subset(tr[TARGET], tr[confounder], counts=counts, seed=seed)
    attr_idx = confounder_balanced(tr[confounder], size=attribution_size, seed=seed + 1, exclude=train_idx)
    test_idx = balanced_indices(te[TARGET], te[confounder], per_group=test_per_group, seed=seed + 2)
    val_idx = balanced_indices(va[TARGET], va[confounder], per_group=val_per_group, seed=seed + 3)

    def images(ds, idx):  # in chunks: 6,000 full-size float images would take ~2 GB
        out = [preprocess(np.stack([np.asarray(r["image"]) for r in _read(ds, idx[i : i + _CHUNK])]), image_size)
               for i in range(0, idx.shape[0], _CHUNK)]
        return np.concatenate(out)

    return CelebASubset(
        train_x=images(full[0], train_idx), train_y=tr[TARGET][train_idx], train_c=tr[confounder][train_idx],
        test_x=images(full[2], test_idx), test_y=te[TARGET][test_idx], test_c=te[confounder][test_idx],
        attr_x=images(full[0], attr_idx), attr_c=tr[confounder][attr_idx],
        val_x=images(full[1], val_idx), val_y=va[TARGET][val_idx], val_c=va[confounder][val_idx],
        confounder=confounder, counts={f"t{k[0]}_c{k[1]}": v for k, v in counts.items()},
    )
