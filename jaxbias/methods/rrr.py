"""RRR ("right for the right reasons"): penalise input gradients inside the artifact mask.

Ross, Hughes, Doshi-Velez. *Right for the right reasons: training
differentiable models by constraining their explanations.* IJCAI 2017
(SPEC §3).

``variant="l2"`` (the original)::

    L = (1/B) Σ_n CE(f(x_n), y_n) + λ₁ Σ_n Σ_d (M_nd · ∂/∂x_nd Σ_k log ŷ_nk)² + λ₂ ||θ||²

``variant="cosine"`` (the form timed in the RR-ClArC paper)::

    L = CE + λ₁ · (1/B) Σ_n cos(|Σ_c g_n|, M_n),
    g = ∂/∂x Σ_n mean_k log(ŷ_nk + 1e-5)

where a sample without a mask contributes 0, so the term is exactly 0 when no
sample of the batch has a non-empty mask. ``reduce="batch"`` (the default)
divides by the batch size B as the RR-ClArC release's ``RRR_ExpLogSum`` and
SPEC §3 do; ``reduce="masked"`` divides by the number of samples that carry a
mask instead (the penalty then does not shrink when fewer samples of a batch
carry the artifact; on a batch where half the samples have a mask it is twice
the released one).

Symbols → arguments:

=========  ===============================================================
paper      here
=========  ===============================================================
``x_n``    ``batch.x`` (``(B, H, W, C)``, or ``(B, d)``)
``M_n``    ``batch.mask``: same shape as ``x``, or ``(B, H, W)`` for images
           (the same mask for every channel); 1 = must not matter
``ŷ_nk``   softmax of the logits
``λ₁``     ``hp.lam``
``λ₂``     ``hp.l2`` (0 by default: use the optimiser's weight decay)
=========  ===============================================================

Both variants need the input gradient inside the loss, so training
differentiates a gradient (double backpropagation through the whole network):
the most expensive method of the family, which the cost benchmark reports.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxbias.methods import Kind
from jaxbias.types import Aux, Batch, BoundModel, Params

Array = jax.Array

#: A training method; nothing is fitted.
KIND = Kind()

VARIANTS = ("l2", "cosine")
REDUCTIONS = ("batch", "masked")

__all__ = ["KIND", "VARIANTS", "REDUCTIONS", "Hparams", "State", "init", "input_gradient", "penalty", "loss"]


@dataclass(frozen=True)
class Hparams:
    """RRR hyperparameters.

    Attributes:
      lam: ``λ₁``. Ross et al. pick it so that the penalty and the
        cross-entropy have similar size; 1000 suits 28×28 images in [0, 1].
      l2: ``λ₂`` (explicit ``||θ||²`` in the loss).
      variant: ``"l2"`` or ``"cosine"``.
      reduce: how the ``"cosine"`` term averages over the batch: ``"batch"``
        (over all B samples, unmasked ones counting 0: the RR-ClArC release) or
        ``"masked"`` (over the samples that carry a mask). The ``"l2"`` term is
        a sum and ignores it.
    """

    lam: float = 1000.0
    l2: float = 0.0
    variant: str = "l2"
    reduce: str = "batch"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {self.variant!r}")
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}; got {self.reduce!r}")
        for name in ("lam", "l2"):
            if not (float(getattr(self, name)) >= 0):
                raise ValueError(f"{name} must be a non-negative number; got {getattr(self, name)!r}")


class State(NamedTuple):
    """Nothing is fitted for RRR."""


def init(model: BoundModel | None = None, params: Params | None = None, data: Batch | None = None, *,
         hp: Hparams | None = None) -> State:
    """The empty state (the signature every method's ``init`` shares)."""
    del model, params, data, hp
    return State()


def _mask(batch: Batch) -> Array:
    """``batch.mask`` as float, shape of ``x``; a ``(B, H, W)`` mask covers every channel."""
    if batch.mask is None:
        raise ValueError("batch.mask is None; RRR needs artifact masks (1 = must not matter)")
    x, m = batch.x, jnp.asarray(batch.mask)
    if m.shape == x.shape:
        return m.astype(x.dtype)
    if x.ndim == 4 and m.shape == x.shape[:3]:
        return jnp.broadcast_to(m[..., None], x.shape).astype(x.dtype)
    expected = f"{x.shape}" + (f" or {x.shape[:3]}" if x.ndim == 4 else "")
    raise ValueError(f"batch.mask has shape {m.shape}; expected {expected} (the shape of batch.x)")


def input_gradient(model: BoundModel, params: Params, x: Array, *, variant: str = "l2"):
    """``(g, ModelOutput)``: ``g = ∂/∂x`` of ``Σ_n Σ_k log ŷ_nk`` (``"l2"``) or ``Σ_n mean_k log(ŷ_nk + 1e-5)`` (``"cosine"``)."""

    def f(xx):
        out = model(params, xx)
        if variant == "l2":
            total = jnp.sum(jax.nn.log_softmax(out.logits))
        else:
            total = jnp.sum(jnp.mean(jnp.log(jax.nn.softmax(out.logits) + 1e-5), axis=-1))
        return total, out

    g, out = jax.grad(f, has_aux=True)(x)
    return g, out


def _penalty_and_output(params, batch, model, hp):
    m = _mask(batch)
    g, out = input_gradient(model, params, batch.x, variant=hp.variant)
    b = batch.x.shape[0]
    if hp.variant == "l2":
        per = jnp.sum(((m * g) ** 2).reshape(b, -1), axis=1)
        has = jnp.ones((b,), bool)
    else:
        if batch.x.ndim == 4:
            sal = jnp.abs(jnp.sum(g, axis=-1)).reshape(b, -1)  # |Σ_c g|
            mm = jnp.max(m, axis=-1).reshape(b, -1)
        else:
            sal, mm = jnp.abs(g), m
        has = jnp.any(mm > 0, axis=1)
        cos = jnp.sum(sal * mm, axis=1) / (
            jnp.maximum(jnp.linalg.norm(sal, axis=1), 1e-12) * jnp.maximum(jnp.linalg.norm(mm, axis=1), 1e-12)
        )
        per = jnp.where(has, cos, 0.0)
    return per, has, out


def penalty(params: Params, state: State, batch: Batch, key: Array, *, model: BoundModel, hp: Hparams) -> Array:
    """Per-sample term ``(B,)``: ``Σ_d (M_nd g_nd)²`` (``"l2"``) or the cosine (0 for an empty mask)."""
    del state, key
    per, _, _ = _penalty_and_output(params, batch, model, hp)
    return per


def loss(params: Params, state: State, batch: Batch, key: Array, *, model: BoundModel, hp: Hparams) -> tuple[Array, Aux]:
    """``L = CE + λ₁ · term + λ₂ ||θ||²`` (term: sum over the batch for ``"l2"``; for ``"cosine"`` the mean over
    the batch, or over the masked samples with ``reduce="masked"``).

    Returns:
      ``(L, Aux(metrics={"ce", "rrr"}, state))`` with ``rrr`` the unweighted term.

    Example:
      >>> value, aux = loss(params, State(), Batch(x, y, mask=m), key, model=model, hp=Hparams())
    """
    del state, key
    per, has, out = _penalty_and_output(params, batch, model, hp)
    if hp.variant == "l2":
        term = jnp.sum(per)
    elif hp.reduce == "batch":
        term = jnp.sum(per) / per.shape[0]
    else:
        term = jnp.sum(per) / jnp.maximum(jnp.sum(has), 1)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out.logits, batch.y))
    total = ce + hp.lam * term
    # a concrete 0 adds no term: 0·Σθ² is exactly 0, but its ops change how XLA fuses the compiled step and so
    # its rounding (training drifted by 3e-4 in 2 epochs); a swept l2 is traced and always adds it
    if not (isinstance(hp.l2, (int, float)) and hp.l2 == 0):
        total = total + hp.l2 * sum(jnp.sum(p * p) for p in jax.tree.leaves(params))
    return total, Aux(metrics={"ce": ce, "rrr": term}, state=out.state)
