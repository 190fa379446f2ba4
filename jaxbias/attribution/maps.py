"""Patch grids, confidences and attribution maps (SPEC §6, De Coninck et al., CVPRW 2024).

A ``√p × √p`` grid of ``k×k`` patches with stride ``s``: patch ``i`` has its
top-left corner at ``(x_i, y_i) = ((i mod g_x)·s, ⌊i / g_x⌋·s)`` (column,
row). The region classifier scores every patch of an image; the confidence
``c_i`` of each prediction goes back to pixel space by averaging, for every
pixel, the confidences of all patches that contain it (the paper's algorithm:
``map[y:y+k, x:x+k] += c; count[y:y+k, x:x+k] += 1; map / count``), then
min-max normalised. "Specific" maps are per image, the "general" map is the
mean over many images.

Everything here is vectorised and jittable: patches are gathered with
precomputed index arrays, and :func:`pixel_map` sums the windows as one
contraction of row- and column-interval indicator matrices
(``Rᵀ diag(c) C``; a window is the outer product of its row and column
ranges; on a product grid ``R_yᵀ · c_grid · R_x``), never a loop over windows.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxbias.data.lazy import is_lazy
from jaxbias.training import predict_in_batches

Array = jax.Array

MEASURES = ("top", "margin", "entropy")


# --- argument checks -------------------------------------------------------------------------------

def _int(name: str, v: Any, *, minimum: int = 1) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {v!r} ({type(v).__name__})")
    if v < minimum:
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {v}")
    return int(v)


def image_hw(image_size: Any) -> tuple[int, int]:
    """``image_size`` (an int ``S`` for ``S×S`` or a pair ``(H, W)``) as ``(H, W)``, or a ``ValueError``."""
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        return _int("image_size[0]", image_size[0]), _int("image_size[1]", image_size[1])
    if isinstance(image_size, (tuple, list)):
        raise ValueError(f"image_size must be an int or a (height, width) pair, got {image_size!r}")
    s = _int("image_size", image_size)
    return s, s


def _check_patch(patch: Any, hw: tuple[int, int]) -> int:
    k = _int("patch", patch)
    if k > min(hw):
        raise ValueError(f"patch={k} is larger than the image (image_size={hw[0]}×{hw[1]}); "
                         f"expected patch ≤ {min(hw)}")
    return k


def check_q(q: Any) -> float:
    """The quantile ``q`` of a top-region rule, checked to lie in [0, 1] (a traced value passes as it is)."""
    if isinstance(q, jax.core.Tracer):  # a swept value, checked when its Hparams were made
        return q
    if isinstance(q, (bool, np.bool_)) or not isinstance(q, numbers.Real) or not 0.0 <= float(q) <= 1.0:
        raise ValueError(f"q must be a quantile in [0, 1], got {q!r}")
    return float(q)


def _is_concrete(a: Any) -> bool:
    return not isinstance(a, jax.core.Tracer)


# --- the grid --------------------------------------------------------------------------------------

def grid_shape(image_size: Any, *, patch: int, stride: int) -> tuple[int, int]:
    """``(g_y, g_x)``: patch rows and columns, ``g = (S − k)/s + 1`` along each axis.

    Raises ``ValueError`` for a patch larger than the image, a stride that does
    not tile (``(S − k) mod s ≠ 0``: the last row/column of pixels would be
    missed) and a stride larger than the patch (pixels between windows would
    belong to no patch).

    Example:
      >>> grid_shape(128, patch=32, stride=2)
      (49, 49)
    """
    hw = image_hw(image_size)
    k = _check_patch(patch, hw)
    s = _int("stride", stride)
    if s > k:
        raise ValueError(f"stride={s} is larger than patch={k}: pixels between windows would belong to no patch")
    for axis, n in zip(("height", "width"), hw):
        if (n - k) % s:
            raise ValueError(f"stride={s} does not tile the image: ({axis} {n} − patch {k}) = {n - k} is not a "
                             f"multiple of {s}; choose a stride that divides {n - k}")
    return (hw[0] - k) // s + 1, (hw[1] - k) // s + 1


def grid_locations(image_size: Any, *, patch: int, stride: int) -> np.ndarray:
    """Top-left corners of the patch grid, ``(p, 2)`` int32 columns ``(x, y)``.

    ``(x_i, y_i) = ((i mod g_x)·s, ⌊i / g_x⌋·s)``.

    Args:
      image_size: ``S`` or ``(H, W)``.
      patch: ``k``.
      stride: ``s``; must tile the image (see :func:`grid_shape`).
    Returns:
      ``(g_y·g_x, 2)`` int32.

    Example:
      >>> grid_locations(6, patch=4, stride=2).tolist()
      [[0, 0], [2, 0], [0, 2], [2, 2]]
    """
    gy, gx = grid_shape(image_size, patch=patch, stride=stride)
    i = np.arange(gy * gx)
    return np.stack([(i % gx) * stride, (i // gx) * stride], axis=1).astype(np.int32)


def _check_locations(locations: Any, k: int, hw: tuple[int, int]) -> Array | np.ndarray:
    shape = np.shape(locations)
    if len(shape) != 2 or shape[1] != 2 or shape[0] < 1:
        raise ValueError(f"locations must be (p, 2) top-left corners (x, y) with p ≥ 1, got shape {shape}")
    dtype = np.asarray(locations).dtype if _is_concrete(locations) else locations.dtype
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"locations must be integer pixel coordinates, got dtype {dtype}")
    if _is_concrete(locations):
        loc = np.asarray(locations)
        x, y = loc[:, 0], loc[:, 1]
        bad = (x < 0) | (y < 0) | (x > hw[1] - k) | (y > hw[0] - k)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"locations[{i}] = (x={x[i]}, y={y[i]}) puts a {k}×{k} patch outside the "
                             f"{hw[0]}×{hw[1]} image; expected 0 ≤ x ≤ {hw[1] - k} and 0 ≤ y ≤ {hw[0] - k}")
        return loc.astype(np.int32)
    return locations.astype(jnp.int32)


def check_images(images: Any, hw: tuple[int, int] | None = None) -> Array:
    """``images`` as a ``(B, H, W, C)`` array, its shape checked (and its height and width against ``hw``)."""
    if np.ndim(images) != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {np.shape(images)}")
    if hw is not None and tuple(np.shape(images)[1:3]) != hw:
        raise ValueError(f"images are {np.shape(images)[1]}×{np.shape(images)[2]} but image_size is "
                         f"{hw[0]}×{hw[1]}")
    return jnp.asarray(images)


def _window_index(locations, k: int):
    ar = jnp.arange(k, dtype=jnp.int32)
    rows = jnp.asarray(locations[:, 1])[:, None] + ar  # (p, k)
    cols = jnp.asarray(locations[:, 0])[:, None] + ar
    return rows, cols


def extract_patches(images: Any, locations: Any, *, patch: int) -> Array:
    """All windows of every image, gathered with precomputed index arrays (no loop).

    ``patches[b, i] = images[b, y_i : y_i + k, x_i : x_i + k]``.

    Args:
      images: ``(B, H, W, C)``.
      locations: ``(p, 2)`` top-left corners ``(x, y)``.
      patch: ``k``.
    Returns:
      ``(B, p, k, k, C)``.

    Example:
      >>> extract_patches(jnp.zeros((2, 8, 8, 3)), grid_locations(8, patch=4, stride=2), patch=4).shape
      (2, 9, 4, 4, 3)
    """
    images = check_images(images)
    hw = tuple(images.shape[1:3])
    k = _check_patch(patch, hw)
    loc = _check_locations(locations, k, hw)
    rows, cols = _window_index(loc, k)
    return images[:, rows[:, :, None], cols[:, None, :]]


# --- pixel maps ------------------------------------------------------------------------------------

def minmax(maps: Any) -> Array:
    """Min-max normalise each ``(H, W)`` map to [0, 1]; a constant map becomes 0.

    ``m' = (m − min m) / (max m − min m)``.

    Example:
      >>> minmax(jnp.array([[1., 3.], [2., 5.]])).tolist()
      [[0.0, 0.5], [0.25, 1.0]]
    """
    maps = jnp.asarray(maps)
    lo = maps.min(axis=(-2, -1), keepdims=True)
    hi = maps.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    return jnp.where(span > 0, (maps - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def _window_sum(values: Array, locations, k: int, hw: tuple[int, int]) -> Array:
    """``Σ_i values[..., i]·1[y_i ≤ u < y_i+k]·1[x_i ≤ v < x_i+k]`` as one contraction of indicator matrices.

    A window is the outer product of a row interval and a column interval, so
    the sum over windows is ``Rᵀ diag(c) C`` with ``R[i, u] = 1[y_i ≤ u < y_i+k]``
    and ``C[i, v] = 1[x_i ≤ v < x_i+k]``: a matrix product (exact accumulation
    order of a dot, no scatter), ``O(p·H·W)`` per map.
    """
    h, w = hw
    x = jnp.asarray(locations[:, 0])[:, None]
    y = jnp.asarray(locations[:, 1])[:, None]
    u = jnp.arange(h)[None, :]
    v = jnp.arange(w)[None, :]
    rows = ((u >= y) & (u < y + k)).astype(values.dtype)  # (p, H)
    cols = ((v >= x) & (v < x + k)).astype(values.dtype)  # (p, W)
    return jnp.einsum("iu,...i,iv->...uv", rows, values, cols, precision=jax.lax.Precision.HIGHEST)


def _grid_axes(locations: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(ys, xs)`` when concrete ``locations`` are a row-major product grid (as :func:`grid_locations` makes)."""
    if not _is_concrete(locations):
        return None
    loc = np.asarray(locations)
    xs, ys = np.unique(loc[:, 0]), np.unique(loc[:, 1])
    if xs.size * ys.size != loc.shape[0]:
        return None
    grid = np.stack([np.tile(xs, ys.size), np.repeat(ys, xs.size)], axis=1)
    return (ys, xs) if np.array_equal(grid, loc) else None


def _interval_matrix(starts: np.ndarray, k: int, n: int, dtype) -> Array:
    u = jnp.arange(n)[None, :]
    s = jnp.asarray(starts)[:, None]
    return ((u >= s) & (u < s + k)).astype(dtype)


def pixel_map(confidences: Any, locations: Any, *, patch: int, image_size: Any, normalize: bool = False) -> Array:
    """Mean confidence of the patches that contain each pixel (SPEC §6's algorithm, vectorised, jittable).

    ``map[u, v] = Σ_i c_i·1[y_i ≤ u < y_i+k, x_i ≤ v < x_i+k] / Σ_i 1[…]``; a pixel
    that no patch covers gets 0.

    Args:
      confidences: ``(p,)`` or ``(..., p)`` patch confidences.
      locations: ``(p, 2)`` integer top-left corners ``(x, y)`` (column, row).
      patch: ``k``.
      image_size: ``S`` or ``(H, W)``.
      normalize: min-max normalise each map to [0, 1] (the attribution map).
    Returns:
      ``(..., H, W)`` float32.

    Example:
      >>> loc = grid_locations(6, patch=4, stride=2)
      >>> pixel_map(jnp.array([1., 0., 0., 0.]), loc, patch=4, image_size=6)[0, 0]
      Array(1., dtype=float32)
    """
    hw = image_hw(image_size)
    k = _check_patch(patch, hw)
    loc = _check_locations(locations, k, hw)
    c = jnp.asarray(confidences)
    if c.ndim < 1 or c.shape[-1] != loc.shape[0]:
        raise ValueError(f"confidences must have shape (..., p) with p = {loc.shape[0]} (one per location), "
                         f"got {c.shape}")
    if not jnp.issubdtype(c.dtype, jnp.floating):
        c = c.astype(jnp.float32)
    if not isinstance(c, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(c))):
        raise ValueError(f"confidences has {int(jnp.sum(~jnp.isfinite(c)))} NaN/inf entries (shape {c.shape}); "
                         "expected finite patch confidences")
    axes = _grid_axes(loc)
    if axes is not None:  # a product grid: Rᵀ diag(c) C factorises into R_yᵀ · c_grid · R_x, ~(H/g)× fewer products
        ry = _interval_matrix(axes[0], k, hw[0], c.dtype)  # (g_y, H)
        rx = _interval_matrix(axes[1], k, hw[1], c.dtype)  # (g_x, W)
        grid = c.reshape(c.shape[:-1] + (axes[0].size, axes[1].size))
        hi = jax.lax.Precision.HIGHEST
        total = jnp.einsum("yu,...yx,xv->...uv", ry, grid, rx, precision=hi)
        count = jnp.einsum("yu,xv->uv", ry, rx, precision=hi)
    else:
        total = _window_sum(c, loc, k, hw)
        count = _window_sum(jnp.ones((loc.shape[0],), total.dtype), loc, k, hw)  # integers, exact in float32
    out = jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)
    return minmax(out) if normalize else out


def general_map(maps: Any) -> Array:
    """The general map: the mean of the specific maps, min-max normalised.

    ``G = minmax((1/N) Σ_n M_n)``.

    Args:
      maps: ``(N, H, W)`` specific maps.
    Returns:
      ``(H, W)``.

    Example:
      >>> general_map(jnp.stack([jnp.eye(3), jnp.zeros((3, 3))])).tolist()[0]
      [1.0, 0.0, 0.0]
    """
    maps = jnp.asarray(maps)
    if maps.ndim != 3 or maps.shape[0] < 1:
        raise ValueError(f"maps must be (N, H, W) specific maps with N ≥ 1, got shape {maps.shape}")
    return minmax(maps.mean(axis=0))


def top_region(maps: Any, q: float, *, inclusive: bool = False) -> Array:
    """Pixels above the ``q`` quantile of each map (jittable; ``q`` is static).

    ``R = {u : m_u > Q_q(m)}``, per ``(H, W)`` map; ``inclusive=True`` takes the
    pixels at the quantile too, ``m_u ≥ Q_q(m)`` (they differ where the map has
    ties at its quantile, e.g. maps on a stride-2 grid, whose pixels come in
    2×2 blocks).

    Args:
      maps: ``(H, W)`` or ``(..., H, W)``.
      q: quantile in [0, 1]; 0.7 keeps the top 30 %.
      inclusive: ``≥`` instead of ``>``.
    Returns:
      bool, same shape as ``maps``.

    Example:
      >>> top_region(jnp.arange(10.).reshape(2, 5), 0.7).sum()
      Array(3, dtype=int32)
    """
    q = check_q(q)
    maps = jnp.asarray(maps)
    if maps.ndim < 2:
        raise ValueError(f"maps must be (H, W) or (..., H, W), got shape {maps.shape}")
    thr = jnp.quantile(maps.reshape(maps.shape[:-2] + (-1,)), q, axis=-1)[..., None, None]
    return maps >= thr if inclusive else maps > thr


def iou(a: Any, b: Any) -> float:
    """Intersection over union of two boolean masks, ``|A ∩ B| / |A ∪ B|`` (1 for two empty masks).

    Example:
      >>> iou(np.array([1, 1, 0], bool), np.array([0, 1, 1], bool))
      0.3333333333333333
    """
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {a.shape} and {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# --- confidence measures ---------------------------------------------------------------------------

def confidence(logits: Any, measure: str = "top") -> Array:
    """Confidence of a prediction ``s = softmax(l)``, normalised to [0, 1] (0 = uniform, 1 = one-hot).

    - ``"top"``: ``(max s − 1/K) / (1 − 1/K)``;
    - ``"margin"``: ``s₍₁₎ − s₍₂₎`` (top minus second);
    - ``"entropy"``: negative entropy ``Σ s log s`` mapped from ``[−log K, 0]``:
      ``1 + Σ s log s / log K``.

    Args:
      logits: ``(..., K)`` with ``K ≥ 2``.
      measure: one of :data:`MEASURES`.
    Returns:
      ``(...)`` in [0, 1].

    Example:
      >>> confidence(jnp.array([0., 0.]), "top")
      Array(0., dtype=float32)
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    logits = jnp.asarray(logits)
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise ValueError(f"logits must be (..., K) with K ≥ 2 classes, got shape {logits.shape}")
    n = logits.shape[-1]
    if measure == "top":
        s = jax.nn.softmax(logits, axis=-1)
        out = (s.max(axis=-1) - 1.0 / n) / (1.0 - 1.0 / n)
    elif measure == "margin":
        s = jax.nn.softmax(logits, axis=-1)
        top2 = jax.lax.top_k(s, 2)[0]
        out = top2[..., 0] - top2[..., 1]
    else:
        logp = jax.nn.log_softmax(logits, axis=-1)
        out = 1.0 + jnp.sum(jnp.exp(logp) * logp, axis=-1) / np.log(n)
    return jnp.clip(out, 0.0, 1.0)


# --- all patches of a batch of images in one compiled call -----------------------------------------

LogitsFn = Callable[[Any, Array, Array], Array]


def default_chunk() -> int:
    """Patches per classifier call: 256 on CPU (activations stay in cache; measured 1.8× faster than 2048 for
    the default network), 4096 on accelerators."""
    return 256 if jax.default_backend() == "cpu" else 4096


def patch_logits(logits_fn: LogitsFn, variables: Any, images: Any, locations: Any, *, patch: int,
                 chunk: int | None = None) -> Array:
    """Logits of every patch of every image: ``logits_fn(variables, patches, positions)`` in chunks.

    The ``B·p`` patches are cut into chunks of ``chunk`` patches, each gathered
    from the images and classified inside one ``lax.map`` (bounded memory, one
    trace of ``logits_fn``). Jittable.

    Args:
      logits_fn: ``(variables, (n, k, k, C) patches, (n,) grid indices) -> (n, K)``.
      variables: the classifier's variables (passed through).
      images: ``(B, H, W, C)``.
      locations: ``(p, 2)`` top-left corners; patch ``i``'s grid index is ``i``.
      patch: ``k``.
      chunk: patches per classifier call (``None``: :func:`default_chunk`).
    Returns:
      ``(B, p, K)``.

    Example:
      >>> lg = patch_logits(lambda v, x, i: x.mean((1, 2)), None, jnp.ones((1, 8, 8, 2)),
      ...                   grid_locations(8, patch=4, stride=4), patch=4)
    """
    images = check_images(images)
    hw = tuple(images.shape[1:3])
    k = _check_patch(patch, hw)
    loc = _check_locations(locations, k, hw)
    chunk = default_chunk() if chunk is None else _int("chunk", chunk)
    b, p = images.shape[0], loc.shape[0]
    n = b * p
    rows, cols = _window_index(loc, k)

    def classify(flat):  # flat indices into the (B, p) patches
        bi, pi = flat // p, flat % p
        x = images[bi[:, None, None], rows[pi][:, :, None], cols[pi][:, None, :]]
        return logits_fn(variables, x, pi.astype(jnp.int32))

    if n <= chunk:
        out = classify(jnp.arange(n, dtype=jnp.int32))
    else:
        n_chunks = -(-n // chunk)
        flat = jnp.minimum(jnp.arange(n_chunks * chunk, dtype=jnp.int32), n - 1).reshape(n_chunks, chunk)
        out = jax.lax.map(classify, flat)
        out = out.reshape((n_chunks * chunk,) + out.shape[2:])[:n]
    return out.reshape((b, p) + out.shape[1:])


def make_map_fn(logits_fn: LogitsFn, *, image_size: Any, patch: int, stride: int, measure: str = "top",
                chunk: int | None = None, normalize: bool = True) -> Callable[[Any, Array], Array]:
    """A jitted ``maps(variables, images) -> (B, H, W)``: specific attribution maps in one compiled call.

    ``M_b = minmax(pixel_map(conf(logits_fn(patches_b)), grid))``: every patch of
    every image is extracted, classified (:func:`patch_logits`), scored with
    :func:`confidence` and averaged back to pixels by :func:`pixel_map`.

    Args:
      logits_fn: ``(variables, patches, positions) -> logits``.
      image_size: ``S`` or ``(H, W)``.
      patch, stride: the grid (:func:`grid_locations`).
      measure: confidence measure (:data:`MEASURES`).
      chunk: patches per classifier call inside the compiled function (``None``: :func:`default_chunk`).
      normalize: min-max normalise every map.
    Returns:
      the jitted function (compile once per batch shape: ``maps.lower(v, x).compile()``).

    Example:
      >>> maps = make_map_fn(lambda v, x, i: x.mean((1, 2)), image_size=8, patch=4, stride=2)
      >>> maps(None, jnp.ones((3, 8, 8, 2))).shape
      (3, 8, 8)
    """
    hw = image_hw(image_size)
    locations = grid_locations(hw, patch=patch, stride=stride)
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    chunk = default_chunk() if chunk is None else _int("chunk", chunk)

    @jax.jit
    def maps(variables, images):
        images = check_images(images, hw)
        logits = patch_logits(logits_fn, variables, images, locations, patch=patch, chunk=chunk)
        conf = confidence(logits, measure)
        return pixel_map(conf, locations, patch=patch, image_size=hw, normalize=normalize)

    return maps


def maps_in_batches(map_fn: Callable[[Any, Array], Array], variables: Any, images: Any, *,
                    batch_size: int = 64) -> np.ndarray:
    """Apply a :func:`make_map_fn` function to many images; the last batch is padded (one compilation).

    ``images`` may be a streamed :class:`~jaxbias.data.lazy.LazyImages`: it is read one batch at a time.

    Returns:
      ``(N, H, W)`` NumPy maps.
    """
    images = images if is_lazy(images) else np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, C) array, got shape {images.shape}")
    batch_size = _int("batch_size", batch_size)
    return predict_in_batches(lambda v, _, x: map_fn(v, x), variables, None, images,
                              batch_size=min(batch_size, images.shape[0]))
