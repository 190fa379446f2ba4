"""Training the region classifier and reading it out (SPEC §6, De Coninck et al., CVPRW 2024).

The classifier predicts an image-level attribute ``a`` (the confounder) from
one ``k×k`` patch and its grid index. Every step draws one random patch per
image (``i_n ~ U{0 … p−1}`` from the step key) and minimises the cross-entropy
against label-smoothed targets (``ε = 0.1``):
``L = (1/B) Σ_n CE(f(x_n[y_i:y_i+k, x_i:x_i+k], i_n), (1 − ε)·onehot(a_n) + ε/K)``.
Training goes through the project's train step
(:func:`jaxbias.training.make_train_step`, jitted once with the state donated).
"""
from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxbias.attribution import maps as maps_lib
from jaxbias.attribution.network import RegionResNet, small
from jaxbias.batching import each_batch
from jaxbias.data.iterators import batch_indices
from jaxbias.data.lazy import is_lazy
from jaxbias.training import LossFn, create_train_state, make_optimizer, make_train_step
from jaxbias.types import Aux, Batch
from jaxbias.validation import check_labels

Array = jax.Array


class RegionClassifier(NamedTuple):
    """A trained region classifier and its grid.

    Attributes:
      module: the :class:`~jaxbias.attribution.network.RegionResNet`.
      variables: ``{"params": …, "batch_stats": …}``.
      patch, stride: the grid's ``k`` and ``s``.
      image_size: ``(H, W)``.
      locations: ``(p, 2)`` top-left corners ``(x, y)``.
      history: one dict per epoch (mean loss, accuracy on the sampled patches, seconds).
    """

    module: nn.Module
    variables: Any
    patch: int
    stride: int
    image_size: tuple[int, int]
    locations: np.ndarray
    history: list

    def logits_fn(self) -> Callable[[Any, Array, Array], Array]:
        """``(variables, patches, positions) -> logits`` in evaluation mode (for :func:`maps.make_map_fn`).

        Example:
          >>> maps = make_map_fn(clf.logits_fn(), image_size=64, patch=16, stride=4)
        """
        module = self.module

        def f(variables, patches, positions):
            return module.apply(variables, patches, positions=positions, train=False)[0]

        return f


def _check_images_labels(images: Any, labels: Any) -> tuple[Any, np.ndarray]:
    """The images (a streamed :class:`~jaxbias.data.lazy.LazyImages` as it is, else a NumPy array) and the labels
    as int32, checked to match."""
    images = images if is_lazy(images) else np.asarray(images)
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be a non-empty (N, H, W, C) array, got shape {images.shape}")
    if images.dtype.kind != "f":
        raise ValueError(f"images must be float (e.g. scaled to [0, 1]), got dtype {images.dtype}")
    labels = check_labels("labels", labels, n=images.shape[0], against="images")
    return images, labels.astype(np.int32)


def init_variables(module: nn.Module, key: Array, *, patch: int, channels: int = 3) -> dict:
    """The variables of a region classifier for ``(k, k, channels)`` patches, initialised in one compiled call.

    The initialisers draw from an ``"rbg"`` key derived from ``key``: XLA compiles
    one ``RngBitGenerator`` per draw where threefry unrolls its rounds, which
    takes the compilation of a small ResNet's init from ~7 s to ~2 s on CPU.

    Example:
      >>> v = init_variables(small(num_positions=169), jax.random.key(0), patch=16)
    """
    rbg = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
    x = jnp.zeros((1, patch, patch, channels), jnp.float32)
    pos = jnp.zeros((1,), jnp.int32) if getattr(module, "num_positions", 0) else None
    return dict(jax.jit(lambda k: module.init(k, x, positions=pos, train=False))(rbg))


def sample_patches(images: Array, locations: Array, key: Array, *, patch: int) -> tuple[Array, Array]:
    """One uniformly random grid patch per image: ``(patches (B, k, k, C), indices (B,))``.

    Example:
      >>> x, i = sample_patches(jnp.zeros((4, 8, 8, 1)), jnp.asarray(maps.grid_locations(8, patch=4, stride=2)),
      ...                       jax.random.key(0), patch=4)
    """
    b, c = images.shape[0], images.shape[-1]
    idx = jax.random.randint(key, (b,), 0, locations.shape[0], dtype=jnp.int32)
    loc = locations[idx]

    def crop(img, xy):
        return jax.lax.dynamic_slice(img, (xy[1], xy[0], 0), (patch, patch, c))

    return jax.vmap(crop)(images, loc), idx


def region_loss(module: nn.Module, locations: Any, *, patch: int, label_smoothing: float = 0.1) -> LossFn:
    """The region classifier's loss in the train step's signature ``(params, model_state, _, batch, key)``.

    ``batch.x``: whole images ``(B, H, W, C)``; ``batch.y``: the attribute to
    predict. One random patch per image per step; smoothed cross-entropy.

    Example:
      >>> step = make_train_step(region_loss(net, grid_locations(64, patch=16, stride=4), patch=16), tx)
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    locs = jnp.asarray(locations, jnp.int32)

    def loss_fn(params, model_state, method_state, batch, key):
        del method_state
        patches, idx = sample_patches(batch.x, locs, key, patch=patch)
        mutable = list(model_state)
        variables = {"params": params, **model_state}
        if mutable:
            (logits, _), new_state = module.apply(variables, patches, positions=idx, train=True, mutable=mutable)
            new_state = dict(new_state)
        else:
            logits, _ = module.apply(variables, patches, positions=idx, train=True)
            new_state = model_state
        targets = optax.smooth_labels(jax.nn.one_hot(batch.y, logits.shape[-1]), label_smoothing)
        ce = jnp.mean(optax.softmax_cross_entropy(logits, targets))
        acc = jnp.mean(jnp.argmax(logits, -1) == batch.y)
        return ce, Aux(metrics={"ce": ce, "accuracy": acc}, state=new_state)

    return loss_fn


def train_region_classifier(
    images: Any,
    labels: Any,
    *,
    patch: int,
    stride: int,
    module: RegionResNet | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    label_smoothing: float = 0.1,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[dict], None] | None = None,
) -> RegionClassifier:
    """Train a region classifier to predict ``labels`` (an image attribute) from single patches.

    Keys as in :func:`jaxbias.train.fit`: ``key(seed)`` splits into init, data
    and step keys; epoch ``e`` shuffles with ``fold_in(data_key, e)``, step ``t``
    draws its patches with ``fold_in(step_key, t)``.

    Args:
      images: ``(N, H, W, C)`` float: an array, or a streamed :class:`~jaxbias.data.lazy.LazyImages` (each step
        decodes only its batch's rows).
      labels: ``(N,)`` attribute labels (0 … K−1).
      patch, stride: the grid (:func:`maps.grid_locations`; default 32 / 2 on 128×128).
      module: the network; ``None`` builds :func:`network.small` with ``p`` positions
        and ``K = max(labels) + 1 ≥ 2`` classes. Its ``num_positions`` must equal ``p``.
      epochs, batch_size, lr, weight_decay: Adam with L2 weight decay, constant rate.
      label_smoothing: ``ε`` (0.1 in the paper).
      seed: seeds initialisation, shuffling and patch sampling.
      progress: tqdm bar per epoch.
      log: called with each epoch's record.
    Returns:
      :class:`RegionClassifier`.

    Example:
      >>> clf = train_region_classifier(x, confounder, patch=16, stride=4, epochs=5)
    """
    images, labels = _check_images_labels(images, labels)
    hw = tuple(images.shape[1:3])
    locations = maps_lib.grid_locations(hw, patch=patch, stride=stride)
    p = locations.shape[0]
    if epochs < 0:
        raise ValueError(f"epochs must be ≥ 0, got {epochs}")
    n = images.shape[0]
    if batch_size < 1 or batch_size > n:
        raise ValueError(f"batch_size must be in [1, {n}] (the number of images), got {batch_size}")
    num_classes = max(int(labels.max()) + 1, 2)
    if module is None:
        module = small(num_classes=num_classes, num_positions=p)
    if module.num_positions != p:
        raise ValueError(f"module.num_positions={module.num_positions} but the grid (patch={patch}, stride={stride} "
                         f"on {hw[0]}×{hw[1]}) has p={p} positions")
    init_key, data_key, step_key = jax.random.split(jax.random.key(seed), 3)
    c = images.shape[-1]
    variables = init_variables(module, init_key, patch=patch, channels=c)
    params = variables.pop("params")
    tx = make_optimizer(lr=lr, weight_decay=weight_decay, decay_every=None)
    state = create_train_state(params, variables, tx, key=step_key)
    step = jax.jit(make_train_step(region_loss(module, locations, patch=patch, label_smoothing=label_smoothing), tx),
                   donate_argnums=0)
    history = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        idx_list = batch_indices(n, batch_size, key=jax.random.fold_in(data_key, epoch), drop_last=True)
        bar = None
        if progress:
            bar = tqdm(total=len(idx_list), desc=f"region classifier {epoch + 1}/{epochs}", leave=False)
        sums: dict[str, Any] = {}
        for idx in idx_list:
            state, m = step(state, Batch(jnp.asarray(images[idx]), jnp.asarray(labels[idx])))
            sums = {k: sums.get(k, 0.0) + v for k, v in m.items()}
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        record = {"epoch": epoch + 1, **{k: float(v) / len(idx_list) for k, v in sums.items()},
                  "seconds": time.perf_counter() - t0}
        if not np.isfinite(record["loss"]):
            raise FloatingPointError(f"non-finite region-classifier loss at epoch {epoch + 1}: {record}")
        history.append(record)
        if log is not None:
            log(record)
    return RegionClassifier(module=module, variables={"params": state.params, **state.model_state}, patch=patch,
                            stride=stride, image_size=hw, locations=locations, history=history)


def make_probability_fn(clf: RegionClassifier, *, chunk: int | None = None) -> Callable[[Any, Array], Array]:
    """Jitted ``probs(variables, images) -> (B, p, K)``: softmax of every patch of every image in one call.

    Example:
      >>> probs = make_probability_fn(clf)(clf.variables, x_val)
    """
    f = clf.logits_fn()
    hw = clf.image_size

    @jax.jit
    def probs(variables, images):
        images = maps_lib.check_images(images, hw)
        return jax.nn.softmax(maps_lib.patch_logits(f, variables, images, clf.locations, patch=clf.patch,
                                                    chunk=chunk), axis=-1)

    return probs


def make_specific_map_fn(clf: RegionClassifier, *, measure: str = "top", chunk: int | None = None,
                         normalize: bool = True):
    """:func:`maps.make_map_fn` for a trained classifier: ``maps(variables, images) -> (B, H, W)``."""
    return maps_lib.make_map_fn(clf.logits_fn(), image_size=clf.image_size, patch=clf.patch, stride=clf.stride,
                                measure=measure, chunk=chunk, normalize=normalize)


def patch_probabilities(clf: RegionClassifier, images: Any, *, batch_size: int = 16,
                        chunk: int | None = None) -> np.ndarray:
    """Softmax probabilities of all patches of ``images``: ``(N, p, K)`` NumPy (batches padded: one compilation).

    ``P[n, i] = softmax(f(x_n[y_i:y_i+k, x_i:x_i+k], i))``.

    Example:
      >>> probs = patch_probabilities(clf, x_val)   # (N, p, K)
    """
    fn = make_probability_fn(clf, chunk=chunk)
    return maps_lib.maps_in_batches(fn, clf.variables, _float_images(images), batch_size=batch_size)


def specific_maps(clf: RegionClassifier, images: Any, *, measure: str = "top", batch_size: int = 16,
                  chunk: int | None = None, normalize: bool = True) -> np.ndarray:
    """Specific (per-image) attribution maps ``(N, H, W)``, min-max normalised to [0, 1] (or raw mean confidences).

    With ``normalize=False`` the maps keep the confidences' scale (:func:`maps.pixel_map`);
    :func:`maps.general_map` of those weighs an image by how sure the classifier is,
    and ``minmax`` of each gives the normalised specific maps.

    Example:
      >>> raw = specific_maps(clf, x_train, normalize=False)
      >>> specific, general = maps.minmax(raw), maps.general_map(raw)
    """
    fn = make_specific_map_fn(clf, measure=measure, chunk=chunk, normalize=normalize)
    return maps_lib.maps_in_batches(fn, clf.variables, _float_images(images), batch_size=batch_size)


def _float_images(images: Any) -> Any:
    """A streamed :class:`~jaxbias.data.lazy.LazyImages` as it is (float32 rows when indexed), else float32 NumPy."""
    return images if is_lazy(images) else np.asarray(images, np.float32)


def calibration(clf: RegionClassifier, images: Any, labels: Any, *, n_bins: int = 15, batch_size: int = 16,
                chunk: int | None = None) -> dict[str, Any]:
    """ECE and reliability bins over all patches of a validation set (every patch carries its image's label).

    ``ECE = Σ_b (n_b / N·p) |acc_b − conf_b|`` over the ``N·p`` patch predictions. The images are classified
    ``batch_size`` at a time and only per-bin counts and sums are kept (bins as in
    :func:`jaxbias.metrics.reliability_bins`), so a streamed set is read one batch at a time.

    Args:
      clf: the trained classifier.
      images: ``(N, H, W, C)`` validation images (an array or a streamed ``LazyImages``).
      labels: ``(N,)`` their attribute labels.
      n_bins: confidence bins.
    Returns:
      ``{"ece", "accuracy", "mean_confidence", "patches", "bins": {...}, "position_accuracy": (p,)}``;
      ``position_accuracy`` is the accuracy of each grid position over the images.

    Example:
      >>> cal = calibration(clf, x_val, c_val); cal["ece"]
    """
    images, labels = _check_images_labels(images, labels)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int; got {n_bins!r}")
    fn = make_probability_fn(clf, chunk=chunk)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    count = np.zeros(n_bins, np.int64)
    acc_sum = np.zeros(n_bins)
    conf_sum = np.zeros(n_bins)
    position_correct = np.zeros(clf.locations.shape[0], np.int64)
    for rows, probs in each_batch(fn, images, args=(clf.variables,), batch_size=batch_size):
        p = probs.astype(np.float64)  # as reliability_bins reads probabilities
        correct = p.argmax(-1) == labels[rows, None]
        conf = p.max(-1).reshape(-1)
        b = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
        count += np.bincount(b, minlength=n_bins)
        acc_sum += np.bincount(b, weights=correct.reshape(-1).astype(np.float64), minlength=n_bins)
        conf_sum += np.bincount(b, weights=conf, minlength=n_bins)
        position_correct += correct.sum(axis=0)
    total = int(count.sum())
    safe = np.maximum(count, 1)
    accuracy, confidence = acc_sum / safe, conf_sum / safe
    bins = {"edges": edges.tolist(), "count": count.astype(int).tolist(), "accuracy": accuracy.tolist(),
            "confidence": confidence.tolist()}
    return {
        "ece": float(np.sum(count / total * np.abs(accuracy - confidence))),
        "accuracy": float(acc_sum.sum() / total),
        "mean_confidence": float(conf_sum.sum() / total),
        "patches": total,
        "bins": bins,
        "position_accuracy": position_correct / images.shape[0],
    }


def map_set(clf: RegionClassifier, images: Any, *, measure: str = "top", batch_size: int = 16,
            chunk: int | None = None, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Specific maps and the general map of a set, ``batch_size`` images at a time: ``(specific, general)``.

    Each batch's raw maps (mean confidences, :func:`specific_maps` with ``normalize=False``) are min-max
    normalised into ``out[rows]`` and added to a running sum; the general map is ``minmax`` of that sum over
    ``N`` (:func:`maps.general_map` of the raw maps, up to the order of the summation). Memory holds one batch
    of images and maps, so with ``out`` on disk (e.g. ``numpy.lib.format.open_memmap``) it does not grow with
    ``N``.

    Args:
      images: ``(N, H, W, C)`` (an array or a streamed ``LazyImages``).
      out: where the ``(N, H, W)`` specific maps go (any float dtype, e.g. a float16 memmap); ``None``: a new
        float32 array.
    Returns:
      ``out`` (or the new array) and the ``(H, W)`` general map (float32).

    Example:
      >>> specific, general = map_set(clf, x_train, batch_size=32)
    """
    images = _float_images(images)
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be a non-empty (N, H, W, C) array, got shape {images.shape}")
    n = images.shape[0]
    want = (n, *clf.image_size)
    if out is None:
        out = np.empty(want, np.float32)
    elif tuple(out.shape) != want:
        raise ValueError(f"out must have shape (N, H, W) = {want} for these images; got {tuple(out.shape)}")
    fn = make_specific_map_fn(clf, measure=measure, chunk=chunk, normalize=False)
    total = np.zeros(clf.image_size, np.float64)
    for rows, raw in each_batch(fn, images, args=(clf.variables,), batch_size=batch_size):
        total += raw.sum(axis=0, dtype=np.float64)
        out[rows] = np.asarray(maps_lib.minmax(raw))
    general = np.asarray(maps_lib.minmax(np.float32(total / n)))
    return out, general
