"""Measurements of a trained model: latent sensitivity, the TCAV test, the artifact report and R_bias.

Below the run layer: these take a bound model (or a Flax module and its
variables) and arrays, never a workdir. :func:`artifact_report` measures what
the RR-ClArC paper reports in its controlled setting: clean and artifact-test
accuracy, accuracy of the chosen (corrected) class(es) against the other
classes, TCAV / TCAV_sens of the artifact CAV; :func:`lrp_r_bias` the share of
LRP relevance on the artifact.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbias.batching import each_batch, map_batches, pad_rows
from jaxbias import metrics
from jaxbias.concepts import (STREAM_CAV_SAMPLES, SignalSums, fit_cavs, layer_acts_batches,
                              stratified_subsample)
from jaxbias.explain import make_lrp_model
from jaxbias.types import Batch, BoundModel, Params

Array = jax.Array


def _check_layer_target(model, params, x, layer, target):
    shapes = jax.eval_shape(lambda p: model(p, x), params)
    if layer not in shapes.acts:
        raise ValueError(f"layer={layer!r} is not an activation of the model; available: {sorted(shapes.acts)}")
    k = shapes.logits.shape[-1]
    if not 0 <= int(target) < k:
        raise ValueError(f"target must be a class in [0, {k - 1}]; got {target}")
    return shapes.acts[layer].shape


def latent_gradient(model: BoundModel, params: Params, x: Array, *, layer: str, target: int) -> Array:
    """``∇_a f_c(a(x))`` at ``layer`` for every sample (and position): the layer's shape.

    One backward pass; the gradient is taken with respect to an added zero
    array at ``layer`` (the model's ``perturb`` hook), so corrected models
    (P-ClArC) are differentiated through their correction. ``model`` should run
    in evaluation mode so that samples do not interact.
    """
    shape = _check_layer_target(model, params, x, layer, target)

    def f(p):
        return jnp.sum(model(params, x, perturb={layer: p}).logits[:, target])

    return jax.grad(f)(jnp.zeros(shape, jnp.float32))


def latent_sensitivity(
    model: BoundModel, params: Params, x: Array, cav: Array, *, layer: str, target: int
) -> Array:
    """Per-position latent sensitivity ``s(x) = ∇_a f_c(a(x)) · h`` (SPEC §2).

    Returns ``(B, H, W)`` for a conv layer (the gradient at every position
    dotted with ``h``) or ``(B,)`` for a ``(B, C)`` layer; see :func:`latent_gradient`.

    Example:
      >>> s = latent_sensitivity(model, params, x_artifact, state.cav, layer="block4", target=0)
      >>> metrics.tcav(s), metrics.tcav_sens(s)
    """
    g = latent_gradient(model, params, x, layer=layer, target=target)
    if jnp.shape(cav) != (g.shape[-1],):
        raise ValueError(f"cav has shape {jnp.shape(cav)}, expected ({g.shape[-1]},) for layer {layer!r}")
    return g @ jnp.asarray(cav, jnp.float32)


def tcav_test(
    model: BoundModel,
    params: Params,
    x: Any,
    acts: Any = None,
    concept: Any = None,
    *,
    layer: str,
    target: int,
    n_random: int = 100,
    key: Array | int = 0,
    method: str = "signal",
    reg: float | None = None,
    pool: str = "max",
    zeros: str = "exclude",
    concept_x: Any = None,
    acts_model: BoundModel | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """TCAV of the concept CAV and its t-test against CAVs of random splits (SPEC §2).

    The concept CAV is fitted on ``acts`` (``(N, C)`` or ``(N, H, W, C)``) with
    labels ``concept``; ``n_random`` more CAVs are fitted on random permutations
    of the same labels (same class sizes). One latent gradient of the target logit
    per image of ``x`` serves every CAV (``s = ∇_a f_c · H^T``). The test is
    :func:`jaxbias.metrics.tcav_significance` with the single concept score against
    the random ones. Every score is :func:`jaxbias.metrics.tcav` with ``zeros``
    (default: the release's ``#(s > 0) / #(s ≠ 0)``). ``method`` and ``reg`` are
    :func:`~jaxbias.concepts.fit_cavs`'s (``reg``: the ``λ`` a regularised method needs).

    Instead of ``acts``, ``concept_x`` gives the concept images (an array or a streamed
    :class:`~jaxbias.data.lazy.LazyImages`): their activations at ``layer`` under ``acts_model``
    (default ``model``) are computed ``batch_size`` images at a time and never held whole. The
    signal CAVs then come from running class sums over every image, all ``n_random + 1`` label rows
    in one product per batch (:class:`~jaxbias.concepts.SignalSums`: the in-memory fit up to float32
    rounding); another ``method`` is fitted on a seeded, stratified subsample of at most
    :data:`~jaxbias.concepts.STREAM_CAV_SAMPLES` images (all of them when there are fewer), the random
    splits permuting the subsample's labels. ``x`` is always read ``batch_size`` images at a time,
    and only the counts behind the scores are kept.

    Returns:
      ``{"tcav", "tcav_sens", "random_tcav" (list), "p_value", "t", ...}``.

    Example:
      >>> out = tcav_test(model, params, art.x, concept=concept.bias, concept_x=concept.x, layer="block4", target=0)
    """
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 2:
        raise ValueError(f"n_random must be an int ≥ 2 for a t-test; got {n_random!r}")
    if zeros not in ("exclude", "count"):
        raise ValueError(f"zeros must be 'exclude' or 'count'; got {zeros!r}")
    if (acts is None) == (concept_x is None):
        raise ValueError("pass the concept set's activations (acts) or its images (concept_x), one of them")
    if concept is None:
        raise ValueError("concept (the 0/1 concept label of each concept sample) is missing")
    concept = np.asarray(concept)
    n = np.shape(acts if concept_x is None else concept_x)[0]
    if concept.shape != (n,) or not np.isin(concept, (0, 1)).all():
        raise ValueError(f"concept must be 0/1 labels of shape ({n},), one per concept sample; got shape "
                         f"{concept.shape} with values {np.unique(concept)[:10]}")
    keys = jax.random.split(jax.random.key(key) if isinstance(key, int) else key, n_random)

    def with_random_splits(labels):  # (1 + n_random, n): the labels, then permutations of them
        perms = jax.vmap(lambda k: jax.random.permutation(k, jnp.asarray(labels)))(keys)
        return np.concatenate([np.asarray(labels)[None], np.asarray(perms)]).astype(np.int32)

    if concept_x is None:
        cavs = fit_cavs(jnp.asarray(acts), with_random_splits(concept), method=method, regs=reg, pool=pool)
    else:
        cavs = _streamed_cavs(acts_model or model, params, concept_x, concept, with_random_splits, layer=layer,
                              method=method, reg=reg, pool=pool, batch_size=batch_size)
    scores, sens = _tcav_scores(model, params, x, cavs, layer=layer, target=target, zeros=zeros,
                                batch_size=batch_size, what="x")
    out = metrics.tcav_significance(scores[0], scores[1:])
    return {"tcav": float(scores[0]), "tcav_sens": sens, "random_tcav": scores[1:].astype(np.float64).tolist(),
            **out}


def _tcav_scores(model: BoundModel, params: Params, x: Any, cavs: Any, *, layer: str, target: int, zeros: str,
                 batch_size: int, what: str) -> tuple[np.ndarray, float]:
    """TCAV of each CAV (the rows of ``cavs``, ``(K, C)``) over the images ``x`` and TCAV_sens of the first, from
    counts and a sum gathered ``batch_size`` images at a time (no sensitivity map of the whole set held):
    :func:`jaxbias.metrics.tcav` (with ``zeros``) and :func:`jaxbias.metrics.tcav_sens` of
    ``s = ∇_a f_target · h`` at every position of ``layer``."""
    if np.ndim(x) == 0 or np.shape(x)[0] == 0:
        raise ValueError(f"{what} must hold at least one image to take latent gradients of; got shape {np.shape(x)}")
    shape = _check_layer_target(model, params, x[:1], layer, target)
    cavs = jnp.asarray(cavs, jnp.float32)
    if cavs.ndim != 2 or cavs.shape[1] != shape[-1]:
        raise ValueError(f"cav has shape {tuple(cavs.shape[1:])}, expected ({shape[-1]},) for layer {layer!r}")
    places = int(np.prod(shape[1:-1], dtype=np.int64)) * int(np.shape(x)[0])  # positions: 1 for a (B, C) layer

    def counts(p, xb):  # per image: positive / negative s per CAV, Σ|s| of the first, all finite
        g = latent_gradient(model, p, xb, layer=layer, target=target)
        s = g.reshape(g.shape[0], -1, g.shape[-1]) @ cavs.T  # (B, positions, K)
        return {"pos": jnp.sum(s > 0, 1), "neg": jnp.sum(s < 0, 1), "abs": jnp.sum(jnp.abs(s[..., 0]), 1),
                "finite": jnp.all(jnp.isfinite(s), (1, 2))}

    pos = neg = 0
    total = 0.0
    for _, c in each_batch(counts, x, args=(params,), batch_size=batch_size):
        if not c["finite"].all():
            raise ValueError(f"the latent sensitivities s of {what} have non-finite values (NaN or inf)")
        pos, neg = pos + c["pos"].sum(0, dtype=np.int64), neg + c["neg"].sum(0, dtype=np.int64)
        total += float(np.sum(c["abs"], dtype=np.float64))
    if zeros == "count":  # #(s > 0) / #s, or / #(s ≠ 0) (0 when every s is 0)
        return pos / places, total / places
    return np.where(pos + neg > 0, pos / np.maximum(pos + neg, 1), 0.0), total / places


def _streamed_cavs(model: BoundModel, params: Params, x: Any, concept: np.ndarray, with_random_splits, *,
                   layer: str, method: str, reg: float | None, pool: str, batch_size: int) -> np.ndarray:
    """:func:`tcav_test`'s CAVs of the concept labels and their random splits, from images read a batch at a time."""
    if method == "signal":
        if reg is not None:
            raise ValueError(f"method='signal' has no regularisation; reg must be None, got {reg!r}")
        labels = with_random_splits(concept)
        sums = SignalSums(pool)
        for rows, a in layer_acts_batches(model, params, x, layer, batch_size=batch_size, pool=pool):
            sums.add(a, labels[:, rows])
        return sums.cav()
    keep = stratified_subsample(concept, STREAM_CAV_SAMPLES)
    kept = [np.asarray(a)[keep[rows]]
            for rows, a in layer_acts_batches(model, params, x, layer, batch_size=batch_size, pool=pool)]
    return np.asarray(fit_cavs(jnp.asarray(np.concatenate(kept)), with_random_splits(concept[keep]), method=method,
                               regs=reg, pool=pool))


def _per_class(pred: np.ndarray, y: np.ndarray, classes: Sequence[int]) -> dict[str, float]:
    return {str(c): float(np.mean(pred[y == c] == c)) for c in classes if np.any(y == c)}


def artifact_report(
    model: BoundModel,
    params: Params,
    evals: Mapping[str, Batch],
    *,
    cav: Array,
    layer: str,
    target_class: int,
    chosen: Sequence[int] | None = None,
    batch_size: int = 250,
) -> dict[str, Any]:
    """Accuracy views and TCAV scores of a model on the clean and artifact test sets.

    Args:
      model: evaluation-mode bound model (a corrected one for P-ClArC).
      evals: ``{"clean": Batch, "artifact": Batch}`` (artifact in every image).
      cav: the artifact CAV ``h`` of ``layer`` (use the same one for every model
        compared, e.g. the uncorrected model's).
      target_class: the class whose training images carried the artifact; TCAV
        uses its logit.
      chosen: the corrected classes for the chosen/other split (default
        ``(target_class,)``).

    Returns:
      ``clean``/``artifact`` accuracy, per-class accuracies, ``chosen_*`` and
      ``other_*`` accuracies on both sets, ``tcav`` and ``tcav_sens`` over the
      artifact test images (per position), and ``artifact_flip_to_target``:
      the fraction of non-target artifact images predicted as the target class.

    Every set is read ``batch_size`` images at a time (a streamed set is never whole in memory); what is kept per
    image is its predicted class.
    """
    chosen = (target_class,) if chosen is None else tuple(chosen)
    def predict(p, x):
        return jnp.argmax(model(p, x).logits, -1)

    out: dict[str, Any] = {}
    for name in ("clean", "artifact"):
        data = evals[name]
        y = np.asarray(data.y)
        pred = map_batches(predict, data.x, args=(params,), batch_size=batch_size)
        classes = sorted(set(y.tolist()))
        out[name] = float(np.mean(pred == y))
        out[f"{name}_per_class"] = _per_class(pred, y, classes)
        is_chosen = np.isin(y, chosen)
        out[f"chosen_{name}"] = float(np.mean(pred[is_chosen] == y[is_chosen])) if is_chosen.any() else None
        out[f"other_{name}"] = float(np.mean(pred[~is_chosen] == y[~is_chosen])) if (~is_chosen).any() else None
        if name == "artifact":
            off = y != target_class
            out["artifact_flip_to_target"] = float(np.mean(pred[off] == target_class))
    scores, out["tcav_sens"] = _tcav_scores(model, params, evals["artifact"].x, jnp.asarray(cav)[None], layer=layer,
                                            target=target_class, zeros="exclude", batch_size=batch_size,
                                            what="the artifact set")
    out["tcav"] = float(scores[0])
    return out


def lrp_r_bias(module, variables: Mapping[str, Any], batch: Batch, *, target_class: int | None = None,
               postprocess: bool = True, blur_sigma: float = 2.0, batch_size: int = 250,
               edit: Mapping[str, Any] | None = None) -> dict[str, float]:
    """R_bias of LRP maps (EpsilonPlusFlat, SPEC §7) on images that carry the artifact (``batch.mask``).

    Returns ``r_bias``: relevance of each sample's true class, mean over all
    samples; with ``target_class`` (the class the artifact was inserted into)
    also ``r_bias_chosen`` (its own images) and ``r_bias_pull`` (the
    ``target_class`` logit explained on the other classes' images: how much of
    the artifact class's evidence there sits on the artifact). ``postprocess``
    applies the paper's mask post-processing (threshold 0.1·max, Gaussian
    blur, threshold 0.3·max; :func:`jaxbias.metrics.postprocess_mask`), which
    widens the mask by the blur of relevance that the flat first-layer rule
    causes. The blur is the release's (reflect padding, taps to 2.5σ) with
    ``blur_sigma`` px: 2 by default, for the small images here (the release's
    σ = 8 is for 224-px images). ``edit``: the inference-time edits of a corrected model (P-ClArC's
    projection, :meth:`jaxbias.runs.Run.edits`), explained with them.
    """

    if batch.mask is None:
        raise ValueError("batch.mask must mark the artifact pixels")
    fn = make_lrp_model(module, dict(variables), edit=edit)
    y = np.asarray(batch.y)

    def mean_r_bias(sel, target):
        # batch_size rows at a time, images and masks decoded per chunk (a streamed set is never whole in memory);
        # every chunk padded to one size (one compilation), the post-processing and R_bias are per sample
        rows, target = np.flatnonzero(sel), np.asarray(target, np.int32)
        size = min(batch_size, rows.size)
        values = []
        for start in range(0, rows.size, size):
            part = rows[start:start + size]
            mask = np.asarray(batch.mask[part])
            if postprocess:
                mask = metrics.postprocess_mask(mask.astype(np.float64), sigma=blur_sigma)
            x, t = pad_rows(np.asarray(batch.x[part]), size), pad_rows(target[start:start + size], size)
            relevance = map_batches(fn, x, t, batch_size=size)[:part.size]
            values.append(metrics.r_bias(relevance, mask))
        return float(np.concatenate(values).mean())

    every = np.ones(y.shape[0], bool)
    out = {"r_bias": mean_r_bias(every, y)}
    if target_class is not None:
        own = y == target_class
        if own.any():
            out["r_bias_chosen"] = mean_r_bias(own, y[own])
        if (~own).any():
            out["r_bias_pull"] = mean_r_bias(~own, np.full(int((~own).sum()), target_class))
    return out
