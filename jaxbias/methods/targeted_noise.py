"""Targeted noise: hide the confounder's region of every training image (SPEC §6).

De Coninck, Leroux, Simoens. *Mitigating Bias Using Model-Agnostic Data
Attribution.* CVPR Workshops 2024, arXiv:2405.05031.

A region classifier (:mod:`jaxbias.attribution`) maps where a known
confounder is visible. During training, the pixels above the ``q`` quantile
of the map get Gaussian noise or are replaced by a constant, freshly for
every batch (on the fly, inside the jitted step), so the network cannot use
them; the loss is then plain cross-entropy::

    R_n = {u : M_n[u] > Q_q(M_n)}  ("noise"),  {u : M_n[u] ≥ Q_q(M_n)}  ("mask")
    x̃_n = x_n + σ·ε·1[R_n]      ("noise", ε ~ N(0, I) per pixel and channel)
    x̃_n = x_n·1[¬R_n] + v·1[R_n] ("mask")
    L = (1/B) Σ_n CE(f(x̃_n), y_n)

The two modes treat the pixels exactly at the quantile as the authors'
release does: its mask keeps ``M < Q`` (hides ``≥``), its noise adds to
``M > Q``. They differ on maps with ties at the quantile (the paper's stride-2
grid gives maps in 2×2 blocks). ``hp.at_quantile`` picks another reading:
``"hide"`` (``≥`` for both) or ``"keep"`` (``>`` for both).

Symbols → arguments:

=========  ===============================================================
paper      here
=========  ===============================================================
``M_n``    ``hp.map="specific"``: ``batch.mask`` holds each image's own map
           ``(B, H, W)``; ``"general"``: ``State.general_map`` ``(H, W)``,
           the mean of the specific maps (:func:`init`)
``q``      ``hp.q`` (0.7: the top 30 % of the map)
``σ``      ``hp.sigma`` (0.5), in the units of ``batch.x``
``v``      ``hp.fill`` (0 = black; e.g. 0.5 for grey on [0, 1] images)
=========  ===============================================================
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbias.methods import Kind
from jaxbias.attribution.maps import check_q, top_region
from jaxbias.methods import vanilla
from jaxbias.types import Aux, Batch, BoundModel, Params

Array = jax.Array

#: A training method; ``init`` averages the training images' maps.
KIND = Kind()

MODES = ("noise", "mask")
MAPS = ("general", "specific")
AT_QUANTILE = ("release", "hide", "keep")

__all__ = ["KIND", "MAPS", "MODES", "AT_QUANTILE", "Hparams", "State", "init", "apply", "transform", "loss"]


def _check_sigma(sigma: Any) -> float:
    if isinstance(sigma, jax.core.Tracer):
        return sigma
    if isinstance(sigma, (bool, np.bool_)) or not isinstance(sigma, numbers.Real) or not float(sigma) >= 0:
        raise ValueError(f"sigma must be a non-negative number, got {sigma!r}")
    return float(sigma)


def _check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


@dataclass(frozen=True)
class Hparams:
    """Targeted-noise hyperparameters (paper defaults).

    Attributes:
      q: quantile of the map above which pixels are hidden, in [0, 1].
      sigma: noise standard deviation (``mode="noise"``).
      mode: ``"noise"`` or ``"mask"``.
      map: ``"general"`` (one map for all images) or ``"specific"`` (per image, ``batch.mask``).
      fill: the value written by ``mode="mask"``.
      at_quantile: pixels exactly at the quantile: ``"release"`` (hidden by
        ``"mask"``, kept by ``"noise"``, as the authors' code), ``"hide"`` or
        ``"keep"`` (for both modes).
    """

    q: float = 0.7
    sigma: float = 0.5
    mode: str = "noise"
    map: str = "general"
    fill: float = 0.0
    at_quantile: str = "release"

    def __post_init__(self):
        if self.at_quantile not in AT_QUANTILE:
            raise ValueError(f"at_quantile must be one of {AT_QUANTILE}, got {self.at_quantile!r}")
        check_q(self.q)
        _check_sigma(self.sigma)
        _check_mode(self.mode)
        if self.map not in MAPS:
            raise ValueError(f"map must be one of {MAPS}, got {self.map!r}")
        if isinstance(self.fill, bool) or not isinstance(self.fill, numbers.Real) or not np.isfinite(self.fill):
            raise ValueError(f"fill must be a finite number, got {self.fill!r}")


class State(NamedTuple):
    """``general_map``: ``(H, W)`` for ``map="general"``; ``(0, 0)`` (unused) for ``"specific"``."""

    general_map: Array


def init(model: BoundModel | None = None, params: Params | None = None, batch: Batch | None = None, *,
         hp: Hparams | None = None, general_map: Any = None) -> State:
    """The fixed state: the general map, given or the mean of ``batch.mask`` (the training images' specific maps).

    ``G = (1/N) Σ_n M_n`` (its quantile region equals that of the min-max normalised mean).

    Example:
      >>> state = init(hp=Hparams(map="general"), general_map=g)
    """
    del model, params
    hp = hp if hp is not None else Hparams()
    if hp.map == "specific":
        return State(jnp.zeros((0, 0), jnp.float32))
    if general_map is None:
        if batch is None or batch.mask is None:
            raise ValueError("map='general' needs general_map=(H, W) or a batch whose mask holds the "
                             "(N, H, W) specific maps to average")
        general_map = jnp.mean(jnp.asarray(batch.mask, jnp.float32), axis=0)
    g = jnp.asarray(general_map, jnp.float32)
    if g.ndim != 2:
        raise ValueError(f"general_map must be (H, W), got shape {g.shape}")
    return State(g)


def apply(x: Array, maps: Array, key: Array, *, q: float = 0.7, sigma: float = 0.5, mode: str = "noise",
          fill: float = 0.0, at_quantile: str = "release") -> Array:
    """Noise or mask the pixels above the ``q`` quantile of the map (pure, jittable; ``q``/``mode`` static).

    ``x̃ = x + σ·ε·1[R]`` or ``x·1[¬R] + fill·1[R]``, ``R = {u : M[u] > Q_q(M)}`` per map
    (``≥`` for ``mode="mask"`` or ``at_quantile="hide"``; see the module docstring).

    Args:
      x: ``(B, H, W, C)`` images.
      maps: ``(H, W)`` (general) or ``(B, H, W)`` (specific).
      key: typed key for the noise.
      q, sigma, mode, fill, at_quantile: as in :class:`Hparams`.
    Returns:
      ``(B, H, W, C)``.

    Example:
      >>> xt = apply(x, general, jax.random.key(0), q=0.7, mode="mask")
    """
    q = check_q(q)
    sigma = _check_sigma(sigma)
    mode = _check_mode(mode)
    if x.ndim != 4:
        raise ValueError(f"x must be (B, H, W, C) images, got shape {x.shape}")
    if maps.shape not in (x.shape[1:3], x.shape[:3]):
        raise ValueError(f"maps must be (H, W) = {x.shape[1:3]} or (B, H, W) = {x.shape[:3]}, got {maps.shape}")
    if at_quantile not in AT_QUANTILE:
        raise ValueError(f"at_quantile must be one of {AT_QUANTILE}, got {at_quantile!r}")
    inclusive = at_quantile == "hide" or (at_quantile == "release" and mode == "mask")
    region = top_region(maps, q, inclusive=inclusive)[..., None]
    if mode == "mask":
        return jnp.where(region, jnp.asarray(fill, x.dtype), x)
    noise = sigma * jax.random.normal(key, x.shape, x.dtype)
    return jnp.where(region, x + noise, x)


def transform(batch: Batch, state: State, key: Array, *, hp: Hparams) -> Batch:
    """The batch with its images noised/masked by ``hp`` (general map from ``state``, specific from ``batch.mask``).

    ``batch.x ← x̃`` (see :func:`apply`); the other fields are unchanged.

    Example:
      >>> noisy = transform(batch, init(hp=hp, general_map=g), key, hp=hp)
    """
    if hp.map == "specific":
        if batch.mask is None:
            raise ValueError("map='specific' needs the per-image maps in batch.mask, shape (B, H, W)")
        maps = jnp.asarray(batch.mask, jnp.float32)
    else:
        maps = state.general_map
        if maps.size == 0:
            raise ValueError("map='general' needs a fitted State: method_state=init(hp=hp, general_map=G)")
    x = apply(batch.x, maps, key, q=hp.q, sigma=hp.sigma, mode=hp.mode, fill=hp.fill, at_quantile=hp.at_quantile)
    return batch._replace(x=x)


def loss(params: Params, state: State, batch: Batch, key: Array, *, model: BoundModel,
         hp: Hparams) -> tuple[Array, Aux]:
    """Cross-entropy on the noised/masked batch.

    Example:
      >>> value, aux = loss(params, init(hp=hp, general_map=g), batch, key, model=model, hp=hp)
    """
    noisy = transform(batch, state, key, hp=hp)
    return vanilla.loss(params, vanilla.State(), noisy, key, model=model, hp=vanilla.Hparams())
