"""EnD: entangle same-target features across biases, disentangle same-bias features.

Tartaglione, Barbano, Grangetto. *EnD: Entangling and Disentangling deep
representations for bias correction.* CVPR 2021.

Training loss ``L = CE + R`` with the Gram-matrix regularizer
``R = α R⊥ + β R∥`` on the L2-normalised pooled features of one layer
(SPEC §4).

Symbols → arguments:

=================  ==========================================================
paper              here
=================  ==========================================================
``y_i``            ``features[i]`` (``acts[hp.layer]``, after global average
                   pooling), L2-normalised inside :func:`regularizer`
``G = ỹ ỹᵀ``       the Gram matrix of the normalised features, clamped to [-1, 1]
``g_ij``           ``G[i, j]``
``T(i)``           ``targets[i]`` (``batch.y``)
``B(i)``           ``biases[i]`` (``batch.bias``)
``M``              batch size ``B`` (rows of ``features``)
``M^{t,b}``        number of samples with target ``t`` and bias ``b``
``α``, ``β``       ``alpha``, ``beta`` (:class:`Hparams`)
``R⊥``, ``R∥``     ``r_perp``, ``r_par`` (metrics of :func:`loss`)
=================  ==========================================================

EnD is a *batch-level* term: ``R⊥`` and ``R∥`` are built from pairs of samples,
so there is no per-example penalty whose mean would give ``R``. This module
therefore has no ``penalty``; :func:`regularizer` (scalar) and
:func:`regularizer_terms` (``R`` with its two parts) play that role, and
:func:`loss` is the training loss.

Vectorised formulation: the released code loops over the bias classes and over
(target, bias, other bias) triples, building ~450 masked ``B×B`` products per
step. Here every mask is one ``B×B`` comparison of label vectors (the product
``P Pᵀ`` of one-hot label matrices ``P``, without materialising ``P``), and
per-class sums become one matrix-vector product with the same-bias mask, so the
cost is one ``B×B×d`` matmul plus a few ``B×B`` elementwise passes, independent
of the number of classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbias.methods import Kind, static
from jaxbias.types import Aux, Batch, BoundModel, Params

Array = jax.Array

#: A training method; nothing is fitted.
KIND = Kind()

VARIANTS = ("reference", "symmetric", "paper")

# Rows with a norm below this are divided by it instead (as torch's
# ``F.normalize(eps=1e-12)`` in the released code): an all-zero row stays zero
# and its gradient stays finite.
_NORM_EPS = 1e-12


class Terms(NamedTuple):
    """``R = α R⊥ + β R∥`` and its two unweighted parts (scalars)."""

    total: Array
    r_perp: Array
    r_par: Array


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #


def _concrete_value(x) -> np.ndarray | None:
    """``x`` as a NumPy array when it is concrete, ``None`` under tracing."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_labels(name: str, labels, n: int, count: int | None, count_name: str) -> None:
    shape, dtype = jnp.shape(labels), jnp.result_type(labels)
    if len(shape) != 1:
        raise ValueError(f"{name} must be rank 1 of shape (B,) = ({n},); got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name} must have an integer dtype (class indices); got dtype {dtype}")
    if shape[0] != n:
        raise ValueError(
            f"{name} has shape {shape} but features has {n} rows; expected shape ({n},)"
        )
    if count is not None and (not isinstance(count, (int, np.integer)) or count < 1):
        raise ValueError(f"{count_name} must be a positive int or None; got {count!r}")
    value = _concrete_value(labels)
    if value is None or value.size == 0:
        return  # traced: values are unknown until run time
    if value.min() < 0:
        raise ValueError(
            f"{name} must be non-negative class indices; got min {value.min()} "
            f"(shape {shape}, dtype {dtype})"
        )
    if count is not None and value.max() >= count:
        raise ValueError(
            f"{name} must be < {count_name}={count}; got max {value.max()} "
            f"(shape {shape}, dtype {dtype})"
        )


def _check_weight(name: str, w) -> None:
    value = _concrete_value(w)
    if value is None:  # traced (e.g. a vmapped sweep over weights): check the shape only
        if jnp.ndim(w) != 0:
            raise ValueError(f"{name} must be a scalar; got shape {jnp.shape(w)}")
        return
    if value.ndim != 0 or value.dtype.kind not in "iuf":
        raise ValueError(
            f"{name} must be a real scalar; got shape {value.shape}, dtype {value.dtype}"
        )
    if not (value >= 0):  # `not >=` also rejects NaN
        raise ValueError(f"{name} must be a non-negative scalar weight; got {value}")


def _validate(features, targets, biases, alpha, beta, variant, num_biases, num_classes) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
    shape, dtype = jnp.shape(features), jnp.result_type(features)
    if len(shape) != 2:
        raise ValueError(
            f"features must be rank 2 of shape (B, d) (pool spatial axes first); got shape {shape}"
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"features must have a floating dtype; got dtype {dtype} (shape {shape})")
    if not isinstance(features, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(features))):
        n_bad = int(jnp.sum(~jnp.isfinite(jnp.asarray(features))))
        raise ValueError(f"features has {n_bad} NaN/inf entries (shape {shape}); expected finite features")
    _check_labels("targets", targets, shape[0], num_classes, "num_classes")
    _check_labels("biases", biases, shape[0], num_biases, "num_biases")
    _check_weight("alpha", alpha)
    _check_weight("beta", beta)


# --------------------------------------------------------------------------- #
# the regularizer
# --------------------------------------------------------------------------- #


def _normalise(features: Array) -> Array:
    """``ỹ_i = y_i / max(||y_i||, ε)``; finite value and gradient for a zero row."""
    sq = jnp.sum(features * features, axis=1, keepdims=True)
    return features * jax.lax.rsqrt(jnp.maximum(sq, _NORM_EPS**2))


def _safe_mean(total: Array, count: Array) -> tuple[Array, Array]:
    """``(total / count, count > 0)`` with a denominator that is never 0."""
    nonzero = count > 0
    return total / jnp.where(nonzero, count, 1.0), nonzero


def _reference_terms(g, t, b, *, symmetric: bool) -> tuple[Array, Array]:
    n = g.shape[0]
    lower = jnp.tril(jnp.ones((n, n), dtype=bool), k=-1)  # pairs i > j
    same_b = b[:, None] == b[None, :]  # E = P_B P_Bᵀ, diagonal included

    # R⊥ = Σ_b |S_b| / M⊥ with S_b = Σ_{i>j, B(i)=B(j)=b} g_ij.
    # r_i = Σ_{j<i, B(j)=B(i)} g_ij; S_{B(i)} = (E r)_i; Σ_b |S_b| = Σ_i |S_{B(i)}| / n_{B(i)}.
    pair_perp = lower & same_b
    r = jnp.sum(jnp.where(pair_perp, g, 0.0), axis=1)
    s_of_sample = same_b.astype(g.dtype) @ r
    n_of_sample = jnp.sum(same_b, axis=1).astype(g.dtype)  # ≥ 1 (the diagonal)
    m_perp = jnp.sum(pair_perp).astype(g.dtype)
    r_perp, ok = _safe_mean(jnp.sum(jnp.abs(s_of_sample) / n_of_sample), m_perp)
    r_perp = jnp.where(ok, r_perp, 0.0)

    # R∥ = 1 − (1/M∥) Σ (1 + g_ij)/2 over pairs i > j, T(i) = T(j), B(i) < B(j)
    # (reference: the released code's ordered bias loop) or B(i) ≠ B(j) (symmetric).
    cross = (b[:, None] != b[None, :]) if symmetric else (b[:, None] < b[None, :])
    pair_par = lower & (t[:, None] == t[None, :]) & cross
    m_par = jnp.sum(pair_par).astype(g.dtype)
    mean_sim, ok = _safe_mean(jnp.sum(jnp.where(pair_par, (1.0 + g) * 0.5, 0.0)), m_par)
    r_par = jnp.where(ok, 1.0 - mean_sim, 0.0)
    return r_perp, r_par


def _paper_terms(g, t, b) -> tuple[Array, Array]:
    n = g.shape[0]
    off_diag = ~jnp.eye(n, dtype=bool)
    same_b = b[:, None] == b[None, :]

    # R⊥ = (1/N_B) Σ_b (1/(M^{·,b})²) Σ_{i≠j, B(i)=B(j)=b} |g_ij|, N_B = bias classes
    # in the batch. Per sample: Σ_b (1/n_b²) Σ_{i∈b} s_i = Σ_i s_i / n_{B(i)}², and
    # N_B = Σ_i 1/n_{B(i)}.
    pair_perp = same_b & off_diag
    s = jnp.sum(jnp.where(pair_perp, jnp.abs(g), 0.0), axis=1)
    n_of_sample = jnp.sum(same_b, axis=1).astype(g.dtype)  # M^{·,B(i)} ≥ 1
    n_bias_classes = jnp.sum(1.0 / n_of_sample)
    r_perp = jnp.sum(s / n_of_sample**2) / jnp.maximum(n_bias_classes, 1.0)
    r_perp = jnp.where(jnp.any(pair_perp), r_perp, 0.0)

    # R∥ = 1 − (1/M) Σ_i (1/m_i) Σ_j δ[T(i),T(j)] δ̄[B(i),B(j)] g_ij with
    # m_i = Σ_{b≠B(i)} M^{T(i),b}; the mean over i runs over the samples with m_i > 0.
    pair_par = (t[:, None] == t[None, :]) & ~same_b
    m_i = jnp.sum(pair_par, axis=1).astype(g.dtype)
    per_sample, has_partner = _safe_mean(jnp.sum(jnp.where(pair_par, g, 0.0), axis=1), m_i)
    per_sample = jnp.where(has_partner, per_sample, 0.0)
    mean_sim, ok = _safe_mean(jnp.sum(per_sample), jnp.sum(has_partner).astype(g.dtype))
    r_par = jnp.where(ok, 1.0 - mean_sim, 0.0)
    return r_perp, r_par


def regularizer_terms(
    features: Array,
    targets: Array,
    biases: Array,
    *,
    alpha: float | Array,
    beta: float | Array,
    variant: str = "reference",
    num_biases: int | None = None,
    num_classes: int | None = None,
) -> Terms:
    """EnD regularizer ``R = α R⊥ + β R∥`` together with ``R⊥`` and ``R∥``.

    Same arguments as :func:`regularizer`, which documents the formulas.

    Returns:
      :class:`Terms` ``(total, r_perp, r_par)``; ``r_perp`` and ``r_par`` are
      the unweighted ``R⊥`` and ``R∥``.
    """
    _validate(features, targets, biases, alpha, beta, variant, num_biases, num_classes)
    dtype = jnp.promote_types(jnp.result_type(features), jnp.float32)
    y = _normalise(jnp.asarray(features, dtype))
    # Full precision: on accelerators the default f32 matmul may run in TF32/bf16,
    # which moves g_ij ≈ ±1 by ~1e-3; the Gram matrix is a small part of a step.
    g = jnp.clip(jnp.matmul(y, y.T, precision=jax.lax.Precision.HIGHEST), -1.0, 1.0)
    t = jnp.asarray(targets)
    b = jnp.asarray(biases)
    if variant == "paper":
        r_perp, r_par = _paper_terms(g, t, b)
    else:
        r_perp, r_par = _reference_terms(g, t, b, symmetric=variant == "symmetric")
    alpha = jnp.asarray(alpha, dtype)
    beta = jnp.asarray(beta, dtype)
    return Terms(alpha * r_perp + beta * r_par, r_perp, r_par)


def regularizer(
    features: Array,
    targets: Array,
    biases: Array,
    *,
    alpha: float | Array,
    beta: float | Array,
    variant: str = "reference",
    num_biases: int | None = None,
    num_classes: int | None = None,
) -> Array:
    """EnD regularizer ``R = α R⊥ + β R∥`` of one batch (SPEC §4).

    With ``ỹ_i = y_i / ||y_i||`` and ``G = clamp(ỹ ỹᵀ, −1, 1)``:

    ``variant="reference"`` (default; the authors' released code, which produced
    the published numbers), over the strictly lower-triangular pairs ``i > j``::

        R⊥ = Σ_b |Σ_{i>j, B(i)=B(j)=b} g_ij| / M⊥,     M⊥ = #{i>j : B(i)=B(j)}
        R∥ = 1 − (1/M∥) Σ_{i>j, T(i)=T(j), B(i)<B(j)} (1 + g_ij)/2,
             M∥ = #{i>j : T(i)=T(j), B(i)<B(j)}

    ``B(i) < B(j)`` is the released code's quirk (it loops over ordered pairs of
    bias classes and keeps the lower triangle), so only one order of each
    cross-bias pair counts, depending on batch order.

    ``variant="symmetric"``: as ``"reference"`` with ``B(i) ≠ B(j)`` in ``R∥``
    (every cross-bias pair ``i > j`` of the same target).

    ``variant="paper"``: the paper's equations, read as::

        R⊥ = (1/N_B) Σ_b (1/(M^{·,b})²) Σ_{i≠j, B(i)=B(j)=b} |g_ij|
        R∥ = 1 − (1/M') Σ_{i: m_i>0} (1/m_i) Σ_{j: T(j)=T(i), B(j)≠B(i)} g_ij,
             m_i = Σ_{b≠B(i)} M^{T(i),b}

    where ``M^{·,b}`` is the number of samples of bias ``b`` in the batch,
    ``N_B`` the number of bias classes present in the batch, and the pair sums
    run over ordered pairs ``(i, j)``, ``j ≠ i`` (the diagonal ``|g_ii| = 1`` is
    a constant and is left out, so each unordered pair counts twice). The
    paper's ``1/M`` averages over the samples of the batch; a sample without a
    same-target, other-bias partner (``m_i = 0``) has an undefined inner mean
    ``0/0``, so the average runs over the ``M'`` samples with ``m_i > 0``
    (``M' = M`` when every sample has a partner). Unlike the released code,
    ``R∥`` uses ``g_ij`` (range [0, 2]) rather than ``(1 + g_ij)/2``.

    In every variant a term whose pair count is 0 in the batch is exactly 0,
    with a finite gradient.

    Args:
      features: ``(B, d)`` floating features ``y_i`` (pool spatial axes first);
        rows are L2-normalised here (an all-zero row stays zero).
      targets: ``(B,)`` integer target labels ``T(i) ≥ 0``.
      biases: ``(B,)`` integer bias labels ``B(i) ≥ 0``.
      alpha: weight ``α ≥ 0`` of the disentangling term ``R⊥``.
      beta: weight ``β ≥ 0`` of the entangling term ``R∥``.
      variant: ``"reference"``, ``"symmetric"`` or ``"paper"``.
      num_biases: optional number of bias classes; when given and ``biases`` is
        concrete, labels ``≥ num_biases`` raise. The computation compares labels
        pairwise, so it needs no class count and runs under ``jax.jit`` with
        traced labels without it.
      num_classes: optional number of target classes (checked like
        ``num_biases``).

    Returns:
      Scalar ``R``, float32 (float64 for float64 features).

    Raises:
      ValueError: for features not rank-2 floating or not finite, labels not rank-1 integer of
        length ``B``, negative (or out-of-range) concrete labels, negative
        ``alpha``/``beta``, or an unknown ``variant``.

    Example:
      >>> y = jnp.eye(4, 3)
      >>> regularizer(y, jnp.array([0, 0, 1, 1]), jnp.array([0, 1, 0, 1]), alpha=0.1, beta=0.1)
    """
    return regularizer_terms(
        features,
        targets,
        biases,
        alpha=alpha,
        beta=beta,
        variant=variant,
        num_biases=num_biases,
        num_classes=num_classes,
    ).total


# --------------------------------------------------------------------------- #
# method interface
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Hparams:
    """EnD hyperparameters.

    ``alpha = beta = 0.1`` are the defaults of the authors' released
    Biased-MNIST script (``configs.py``); their published per-``ρ`` values came
    from a Bayesian sweep of both weights over [0, 1].

    Attributes:
      alpha: weight ``α`` of the disentangling term ``R⊥``.
      beta: weight ``β`` of the entangling term ``R∥``.
      variant: ``"reference"`` (released code), ``"symmetric"`` or ``"paper"``.
      layer: name of the activation in ``ModelOutput.acts`` the terms act on;
        it must be ``(B, d)`` (globally pooled).
      num_biases: number of bias classes (label range check).
      num_classes: number of target classes (label range check).
    """

    alpha: float = 0.1
    beta: float = 0.1
    variant: str = "reference"
    layer: str = "features"
    num_biases: int | None = static(10)  # label ranges: shapes of the one-hot codes
    num_classes: int | None = static(10)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {self.variant!r}")
        for name in ("alpha", "beta"):
            _check_weight(f"hp.{name}", getattr(self, name))


class State(NamedTuple):
    """Nothing is fitted for EnD."""


def init(model: BoundModel | None = None, params: Params | None = None, data: Batch | None = None, *,
         hp: Hparams | None = None) -> State:
    """The empty state (the signature every method's ``init`` shares)."""
    del model, params, data, hp
    return State()


def loss(
    params: Params, state: State, batch: Batch, key: Array, *, model: BoundModel, hp: Hparams
) -> tuple[Array, Aux]:
    """Training loss ``L = (1/B) Σ_n CE(f(x_n), y_n) + α R⊥ + β R∥``.

    The EnD terms use ``acts[hp.layer]`` of the model output, the targets
    ``batch.y`` and the bias labels ``batch.bias``.

    Returns:
      ``(L, Aux(metrics={"ce", "end", "r_perp", "r_par"}, state))`` with ``"end"``
      the weighted ``R`` and ``r_perp``/``r_par`` unweighted; ``state`` is the
      model's updated non-trainable state.

    Example:
      >>> value, aux = loss(params, State(), batch, key, model=model, hp=Hparams())
    """
    del state, key
    if batch.bias is None:
        raise ValueError("batch.bias is None; EnD needs bias labels of shape (B,)")
    out = model(params, batch.x)
    if hp.layer not in out.acts:
        raise ValueError(
            f"hp.layer={hp.layer!r} is not an activation of the model; "
            f"available layers are {sorted(out.acts)}"
        )
    feats = out.acts[hp.layer]
    if feats.ndim != 2:
        raise ValueError(
            f"acts[{hp.layer!r}] has shape {feats.shape}; EnD expects pooled features of "
            "shape (B, d): choose a globally pooled layer"
        )
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out.logits, batch.y))
    terms = regularizer_terms(
        feats,
        batch.y,
        batch.bias,
        alpha=hp.alpha,
        beta=hp.beta,
        variant=hp.variant,
        num_biases=hp.num_biases,
        num_classes=hp.num_classes,
    )
    metrics = {"ce": ce, "end": terms.total, "r_perp": terms.r_perp, "r_par": terms.r_par}
    return ce + terms.total, Aux(metrics=metrics, state=out.state)
