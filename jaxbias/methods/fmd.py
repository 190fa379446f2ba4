"""FMD: measure bias on counterfactual pairs, find harmful samples by influence, unlearn by a Newton step.

Chen, Yang, Huang, Cheng, Zou, Tao. *Fast Model Debias with Machine
Unlearning.* NeurIPS 2023 (SPEC §5). Post-hoc: no training loss; the edit
changes a trained model's parameters.

Symbols → arguments:

=====================  ======================================================
paper                  here
=====================  ======================================================
``f_θ``                ``logits_fn(params, x) -> (B, k)`` logits
``(x, x̄)``             ``x``, ``x_cf`` (same labels ``y``; only the protected
                       attribute differs)
``B(θ)``               :func:`counterfactual_bias`
``L(z, θ)``            per-sample cross-entropy of ``z = (x, y)``
``H``                  Hessian of ``hessian_loss`` (mean training loss, or the
                       loss on the data at hand) on the parameter block
``θ`` block            ``subset``: top-level parameter groups (the last
                       layer(s)); the rest is frozen
``I(z_k)``             :func:`influence_on_bias`
=====================  ======================================================

Cost: one inverse HVP ``s = H⁻¹ ∇B`` serves every training sample, whose
influence is then ``−sᵀ ∇L(z_k)`` with per-sample gradients vmapped over the
data; the Newton-step edit is one more inverse HVP.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbias.influence import inverse_hvp, merge, select

Array = jax.Array
LogitsFn = Callable[[Any, Array], Array]

__all__ = ["counterfactual_bias", "per_sample_grads", "influence_on_bias", "unlearn_training",
           "unlearn_counterfactual"]


def _check_pairs(x, x_cf, y):
    if jnp.shape(x) != jnp.shape(x_cf):
        raise ValueError(f"x_cf must have the shape of x {jnp.shape(x)}; got {jnp.shape(x_cf)}")
    if jnp.ndim(y) != 1 or jnp.shape(y)[0] != jnp.shape(x)[0]:
        raise ValueError(f"y must be (N,) = ({jnp.shape(x)[0]},) labels shared by each pair; got shape {jnp.shape(y)}")


def counterfactual_bias(logits_fn: LogitsFn, params: Any, x: Array, x_cf: Array, y: Array) -> Array:
    """``B(θ) = mean_n |p_θ(y_n | x_n) − p_θ(y_n | x̄_n)|`` over counterfactual pairs.

    Example:
      >>> counterfactual_bias(lambda p, x: model(p, x).logits, params, x, x_other_colour, y)
    """
    _check_pairs(x, x_cf, y)
    y = jnp.asarray(y)

    def p_true(xx):
        return jnp.take_along_axis(jax.nn.softmax(logits_fn(params, xx)), y[:, None], axis=1)[:, 0]

    return jnp.mean(jnp.abs(p_true(x) - p_true(x_cf)))


def check_pair_labels(y: Array, y_cf: Array) -> None:
    """Counterfactual pairs share their label; raise when they do not."""
    y, y_cf = np.asarray(y), np.asarray(y_cf)
    if y.shape != y_cf.shape or np.any(y != y_cf):
        bad = int(np.sum(y != y_cf)) if y.shape == y_cf.shape else "all"
        raise ValueError(f"counterfactual pairs must have the same label; {bad} pair(s) differ")


def per_sample_grads(logits_fn: LogitsFn, params: dict, x: Array, y: Array, *, subset: Sequence[str] | None):
    """``∇_θ L(z_n, θ)`` on the block for every sample: a pytree with a leading ``N`` axis (vmapped)."""
    block = select(params, subset)

    def loss(b, xi, yi):
        logits = logits_fn(merge(params, b), xi[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

    return jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(block, jnp.asarray(x), jnp.asarray(y))


def _summed_grad(logits_fn: LogitsFn, params: dict, x: Array, y: Array, subset) -> dict:
    """``Σ_n ∇_θ L(z_n, θ)`` on the block: one backward pass of the summed loss, not N per-sample ones."""
    block = select(params, subset)

    def total(b):
        logits = logits_fn(merge(params, b), jnp.asarray(x))
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)))

    return jax.grad(total)(block)


def _dot_rows(tree_rows, tree_vec) -> Array:
    return sum(jnp.tensordot(r, v, axes=v.ndim) if v.ndim else r * v
               for r, v in zip(jax.tree.leaves(tree_rows), jax.tree.leaves(tree_vec)))


def influence_on_bias(
    logits_fn: LogitsFn,
    params: dict,
    train_x: Array,
    train_y: Array,
    pairs: tuple[Array, Array, Array],
    *,
    hessian_loss: Callable[[dict], Array],
    subset: Sequence[str] | None = None,
    damping: float = 0.0,
    method: str = "cg",
) -> Array:
    """``I(z_k) = −∇_θ B(θ̂)ᵀ H⁻¹ ∇_θ L(z_k, θ̂)`` for every training sample, ``(N,)``.

    ``I > 0``: up-weighting ``z_k`` raises the bias (a harmful sample); removing
    it changes ``B`` by about ``−I(z_k)/n`` for a mean loss over ``n`` samples.

    Args:
      pairs: ``(x, x_cf, y)`` counterfactual pairs defining ``B``.
      hessian_loss: scalar loss of the full parameters whose Hessian is ``H``.
      subset, damping, method: see :func:`jaxbias.influence.inverse_hvp`.
    """
    block = select(params, subset)
    g_b = jax.grad(lambda b: counterfactual_bias(logits_fn, merge(params, b), *pairs))(block)
    s = inverse_hvp(hessian_loss, params, g_b, method=method, damping=damping, subset=subset)
    grads = per_sample_grads(logits_fn, params, train_x, train_y, subset=subset)
    return -_dot_rows(grads, s)


def _newton(params, direction, hessian_loss, subset, damping, method, scale):
    step = inverse_hvp(hessian_loss, params, direction, method=method, damping=damping, subset=subset)
    block = select(params, subset)
    return merge(params, jax.tree.map(lambda p, d: p + scale * d, block, step))


def unlearn_training(
    logits_fn: LogitsFn,
    params: dict,
    x: Array,
    y: Array,
    *,
    n_train: int,
    hessian_loss: Callable[[dict], Array],
    subset: Sequence[str] | None = None,
    damping: float = 0.0,
    method: str = "cg",
) -> dict:
    """Remove the samples ``(x, y)`` (e.g. the top-K harmful) by one Newton step.

    ``θ_new = θ̂ + H⁻¹ Σ_k ∇L(z_k, θ̂) / n_train``.
    """
    total = _summed_grad(logits_fn, params, x, y, subset)
    return _newton(params, total, hessian_loss, subset, damping, method, 1.0 / n_train)


def unlearn_counterfactual(
    logits_fn: LogitsFn,
    params: dict,
    pairs: tuple[Array, Array, Array],
    *,
    scale: float,
    hessian_loss: Callable[[dict], Array],
    subset: Sequence[str] | None = None,
    damping: float = 0.0,
    method: str = "cg",
) -> dict:
    """Replace each biased sample by its counterfactual, with no training data.

    ``θ_new = θ̂ + s · H⁻¹ Σ_k (∇L(z_k, θ̂) − ∇L(z̄_k, θ̂))``, ``s = scale``.
    """
    x, x_cf, y = pairs
    _check_pairs(x, x_cf, y)
    g = _summed_grad(logits_fn, params, x, y, subset)
    g_cf = _summed_grad(logits_fn, params, x_cf, y, subset)
    diff = jax.tree.map(jnp.subtract, g, g_cf)
    return _newton(params, diff, hessian_loss, subset, damping, method, scale)
