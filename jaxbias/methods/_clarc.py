"""What A-, P- and RR-ClArC share: the fitted concept state and the latent projection.

Anders, Weber, Neumann, Samek, Müller, Lapuschkin. *Finding and removing
Clever Hans: using explanation methods to debug and improve deep models.*
Information Fusion 2022 (A-/P-ClArC). Dreyer, Pahde, Anders, Samek,
Lapuschkin. *From hope to safety: unlearning biases of deep models via gradient
penalization in latent space.* AAAI 2024 (RR-ClArC). SPEC §2.

A ClArC state holds the unit CAV ``h`` of one layer and the mean scalar
projections ``⟨z⁺⟩`` (artifact samples) and ``⟨z⁻⟩`` (clean samples) of the
pooled activations on ``h``. For a convolutional layer the projection acts on
the pooled activation (max or mean over the spatial positions, as the CAV) and
the resulting shift is added at every position; because the shift is the same
per channel at every position, the pooled activation of the edited map lands
exactly on the target value for both max- and mean-pooling.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbias.batching import is_traced
from jaxbias.concepts import (STREAM_CAV_SAMPLES, SignalSums, check_layer, fit_cav, layer_acts, layer_acts_batches,
                              pool_acts, stratified_subsample)
from jaxbias.data.lazy import is_lazy
from jaxbias.methods import static
from jaxbias.types import Aux, Batch, BoundModel, Params

Array = jax.Array

log = logging.getLogger(__name__)


class State(NamedTuple):
    """Fitted ClArC state.

    Attributes:
      cav: unit CAV ``h``, shape ``(C,)`` (channels of the layer).
      z_plus: ``⟨z⁺⟩``, mean of ``h·a(x)`` over the artifact samples (scalar).
      z_minus: ``⟨z⁻⟩``, mean of ``h·a(x)`` over the clean samples (scalar).
    """

    cav: Array
    z_plus: Array
    z_minus: Array


@dataclass(frozen=True)
class ShiftHparams:
    """Hyperparameters of A-ClArC and P-ClArC (the same for both).

    Attributes:
      layer: layer of the CAV and of the shift/projection.
      cav: CAV fitter (``jaxbias.concepts.fit_cav`` ``method``).
      cav_reg: its regularisation (``None``: chosen by cross-validation for the
        regularised fitters).
      pool: spatial pooling of conv activations (``"max"``/``"mean"``).
    """

    layer: str = "block4"
    cav: str = "signal"
    cav_reg: float | None = static(None)  # the CAV fit's, before training
    pool: str = "max"

    def __post_init__(self):
        if self.pool not in ("max", "mean"):
            raise ValueError(f"pool must be 'max' or 'mean'; got {self.pool!r}")


def init(model: BoundModel, params: Params, data: Batch, *, hp: Any, concept: Any = None, **kwargs) -> "State":
    """Fit ``h``, ``⟨z⁺⟩``, ``⟨z⁻⟩`` at ``hp.layer`` on ``data`` (``data.bias`` or ``concept``: 1 = artifact).

    ``model`` should be bound in evaluation mode; see :func:`fit_state`.
    """
    return fit_state(model, params, data, layer=hp.layer, cav=hp.cav, cav_reg=hp.cav_reg, pool=hp.pool,
                     concept=concept, **kwargs)


def check_state(state: State, channels: int) -> None:
    if not isinstance(state, State):
        raise ValueError(f"state must be a ClArC State (fit it with init(...)); got {type(state).__name__}")
    if jnp.shape(state.cav) != (channels,):
        raise ValueError(f"state.cav has shape {jnp.shape(state.cav)}, expected ({channels},) for this layer")


def _fit_on_host(pooled: np.ndarray, labels: np.ndarray, cav: str, cav_reg: float | None) -> State:
    pooled, labels = np.asarray(pooled), np.asarray(labels).astype(np.int32)
    h = np.asarray(fit_cav(pooled, labels, method=cav, reg=cav_reg, balanced=True), np.float32)
    proj = pooled @ h
    return State(cav=h, z_plus=np.float32(proj[labels == 1].mean()), z_minus=np.float32(proj[labels == 0].mean()))


def _fit_streamed(model: BoundModel, params: Params, x: Any, labels: np.ndarray, *, layer: str, cav: str,
                  cav_reg: float | None, pool: str, batch_size: int) -> State:
    """:func:`fit_state` on streamed concept samples, one batch of ``batch_size`` images decoded at a time.

    The class means of the pooled activations are running sums over every sample (:class:`SignalSums`): the
    signal CAV is theirs (the same as the in-memory fit up to float32 rounding), and so are ``⟨z±⟩`` (``h·μ±``).
    Another fitter is fitted on the pooled activations of a stratified subsample of at most
    :data:`STREAM_CAV_SAMPLES` samples (:func:`stratified_subsample`, seed 0), kept as the batches pass.
    """
    labels = labels.astype(np.int32)
    sums = SignalSums(pool)
    keep = None if cav == "signal" else stratified_subsample(labels, STREAM_CAV_SAMPLES)
    kept = []
    for rows, a in layer_acts_batches(model, params, x, layer, batch_size=batch_size, pool=pool):
        sums.add(a, labels[rows])
        if keep is not None:
            kept.append(np.asarray(a)[keep[rows]])
    if keep is None:
        h = sums.cav()
    else:
        if keep.sum() < keep.size:
            log.info("CAV %s on streamed concept samples: fitted on a stratified subsample of %d of the %d samples "
                     "(STREAM_CAV_SAMPLES); the class means use every sample", cav, int(keep.sum()), keep.size)
        h = _fit_on_host(np.concatenate(kept), labels[keep], cav, cav_reg).cav
    mu = sums.means()
    return State(cav=h, z_plus=np.float32(mu[1] @ h), z_minus=np.float32(mu[0] @ h))


def fit_state(
    model: BoundModel,
    params: Params,
    data: Batch,
    *,
    layer: str,
    cav: str,
    cav_reg: float | None,
    pool: str,
    concept: Any = None,
    batch_size: int = 256,
) -> State:
    """Fit ``h`` on the pooled ``acts[layer]`` and the two mean projections.

    ``concept`` (``(N,)`` 0/1: 1 = the sample carries the artifact) defaults to
    ``data.bias``. Traceable: under ``jit``/``eval_shape`` the CAV solver (a
    host computation: scikit-learn or NumPy) runs as a ``pure_callback``, so
    ``jax.eval_shape`` gives the state's structure without fitting anything.
    A streamed ``data.x`` (:class:`jaxbias.data.lazy.LazyImages`) is read ``batch_size`` images at a time and
    no per-sample activations of the whole set are kept: see :func:`_fit_streamed` (the signal CAV from running
    sums; another fitter on at most :data:`STREAM_CAV_SAMPLES` samples).
    """
    labels = data.bias if concept is None else concept
    if labels is None:
        raise ValueError("concept labels are missing: pass concept=(N,) 0/1 or a Batch with bias=(N,) 0/1")
    if np.ndim(labels) != 1 or np.shape(labels)[0] != np.shape(data.x)[0]:
        raise ValueError(f"concept labels must have shape ({np.shape(data.x)[0]},); got {np.shape(labels)}")
    traced = is_traced((params, data.x, labels))
    if not traced and not np.isin(np.asarray(labels), (0, 1)).all():
        raise ValueError(f"concept labels must be 0 (clean) or 1 (artifact); got values "
                         f"{np.unique(np.asarray(labels))[:10]}")
    if not traced and is_lazy(data.x):
        return jax.tree.map(jnp.asarray, _fit_streamed(model, params, data.x, np.asarray(labels), layer=layer,
                                                       cav=cav, cav_reg=cav_reg, pool=pool, batch_size=batch_size))
    pooled = layer_acts(model, params, data.x, layer, batch_size=batch_size, pool=pool)
    if not traced:
        return jax.tree.map(jnp.asarray, _fit_on_host(pooled, labels, cav, cav_reg))
    f32 = jnp.float32
    shape = State(jax.ShapeDtypeStruct(pooled.shape[-1:], f32), jax.ShapeDtypeStruct((), f32),
                  jax.ShapeDtypeStruct((), f32))
    return jax.pure_callback(lambda a, b: _fit_on_host(a, b, cav, cav_reg), shape, pooled, labels)


def projection(h: Array, target: Array, pool: str) -> Callable[[Array], Array]:
    """``a ↦ a + (target − h·ā)/(h·h) · h`` with ``ā`` the pooled ``a`` (``a`` itself for ``(B, C)``)."""

    def edit(a: Array) -> Array:
        pooled = pool_acts(a, pool) if a.ndim == 4 else a
        shift = ((target - pooled @ h) / jnp.dot(h, h))[:, None] * h  # (B, C)
        return a + (shift[:, None, None, :] if a.ndim == 4 else shift)

    return edit


def shifted_model(model: BoundModel, *, cav: Array, target: Array, layer: str, pool: str) -> BoundModel:
    """``model`` with :func:`projection` to ``target`` applied at ``layer`` (A-/P-ClArC).

    A ``perturb`` at ``layer`` is added *before* the projection, so latent
    gradients of the corrected model (TCAV, RR-ClArC) see the correction.
    """
    edit = projection(cav, target, pool)

    def run(params, x, **kwargs):
        if kwargs.pop("edit", None):
            raise ValueError(f"this corrected model owns the edit at {layer!r}; pass no edit=")
        perturb = dict(kwargs.pop("perturb", None) or {})
        p = perturb.pop(layer, None)
        fn = edit if p is None else (lambda a: edit(a + p))
        return model(params, x, edit={layer: fn}, perturb=perturb or None, **kwargs)

    return run


def shifted_loss(params: Params, state: State, batch: Batch, *, model: BoundModel, target: Array, layer: str, pool: str):
    """Cross-entropy of the model shifted along ``state.cav`` to ``target``; ``(loss, Aux)``."""
    shapes = jax.eval_shape(lambda p: model(p, batch.x), params)
    check_state(state, check_layer(shapes.acts, layer).shape[-1])
    out = shifted_model(model, cav=state.cav, target=target, layer=layer, pool=pool)(params, batch.x)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out.logits, batch.y))
    return ce, Aux(metrics={"ce": ce}, state=out.state)
