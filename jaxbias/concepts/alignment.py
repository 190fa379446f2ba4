"""CAV alignment with the true artifact direction in controlled settings (SPEC §1)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbias.concepts import _checks
from jaxbias.concepts._checks import POOLS

Array = jax.Array


def _cos_to(h_unit: Array, v: Array) -> Array:
    """``cos(h, v)`` along the last axis; 0 where ``v = 0`` (the artifact moved nothing)."""
    norm = jnp.linalg.norm(v, axis=-1)
    dot = jnp.sum(v * h_unit, axis=-1)
    return jnp.where(norm > 0, dot / jnp.where(norm > 0, norm, 1), 0)


def alignment(cav: Array, delta_acts: Array, *, pool: str = "max") -> tuple[Array, Array]:
    """Individual and overall cosine between a CAV and the activation change an artifact causes.

    With ``Δa(x) = a(φ(x)) − a(x)`` (``φ`` inserts the artifact into a clean image)::

        individual  s = mean_x cos(h, Δa(x))
        overall     s̄ = cos(h, mean_x Δa(x))

    A sample with ``Δa(x) = 0`` counts as ``cos = 0`` (no movement, so no
    alignment) instead of ``0/0``; likewise ``s̄ = 0`` when the mean change is 0.

    Conv input ``(N, H, W, m)`` is a per-position change ``a_{i,v,q}(φ(x)) −
    a_{i,v,q}(x)``, reduced over ``H, W`` with ``pool`` like the activations of
    :func:`~jaxbias.concepts.fit_cav`. For ``"mean"`` this is exactly the change
    of the mean-pooled activation; for ``"max"`` it is the largest change at
    any position, not the change of the max-pooled activation: for that, pass
    ``pool_acts(a_art, "max") − pool_acts(a_clean, "max")``, shape ``(N, m)``.

    Args:
      cav: ``(m,)`` CAV ``h`` (normalised here; must be non-zero and finite).
      delta_acts: ``(N, m)`` or ``(N, H, W, m)`` activation changes ``Δa``.
      pool: ``"max"`` or ``"mean"``, used for rank-4 ``delta_acts`` only.

    Returns:
      ``(individual, overall)``, float scalars in ``[-1, 1]``.

    Example:
      >>> delta = pool_acts(acts_with_artifact) - pool_acts(acts_clean)
      >>> s, s_bar = alignment(fit_cav(acts, labels), delta)
    """
    _checks.check_choice("pool", pool, POOLS)
    delta = _checks.check_acts("delta_acts", delta_acts)
    h = jnp.asarray(cav)
    m = delta.shape[-1]
    if h.shape != (m,) or not jnp.issubdtype(h.dtype, jnp.floating):
        raise ValueError(
            f"cav must be a floating vector of shape ({m},) to match delta_acts {delta.shape}; "
            f"got shape {h.shape}, dtype {h.dtype}"
        )
    if not _checks.is_traced(h):
        if not bool(jnp.all(jnp.isfinite(h))):
            raise ValueError(f"cav has NaN/inf entries (shape {h.shape}); expected a finite vector")
        if not bool(jnp.any(h != 0)):
            raise ValueError(f"cav is the zero vector (shape {h.shape}); its direction is undefined")
    dtype = jnp.promote_types(jnp.promote_types(delta.dtype, h.dtype), jnp.float32)
    if delta.ndim == 4:
        delta = jnp.max(delta, axis=(1, 2)) if pool == "max" else jnp.mean(delta, axis=(1, 2))
    delta = delta.astype(dtype)
    h = h.astype(dtype)
    h_unit = h / jnp.linalg.norm(h)
    return jnp.mean(_cos_to(h_unit, delta)), _cos_to(h_unit, jnp.mean(delta, axis=0))
