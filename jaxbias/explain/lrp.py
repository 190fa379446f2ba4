"""Layer-wise relevance propagation (LRP) with the EpsilonPlusFlat composite, and gradient maps.

SPEC §7: the RR-ClArC evaluation explains a chosen logit with LRP using the
epsilon rule for dense layers, z⁺ for convolutions, the flat rule for the
first layer, batch-norm folded into the preceding convolution, and
activations and pooling passing relevance through. Rules, for a linear layer
``z_k = Σ_j a_j w_jk + b_k`` receiving relevance ``R_k``:

- epsilon: ``R_j = a_j Σ_k w_jk R_k / (z_k + ε·sign(z_k))`` (sign(0) = +1);
- z⁺: only positive contributions, ``R_j = Σ_k (a_j⁺ w_jk⁺ + a_j⁻ w_jk⁻) R_k / z⁺_k``
  with ``z⁺_k = Σ_j (a_j⁺ w_jk⁺ + a_j⁻ w_jk⁻) + b_k⁺`` (+ε): the positive part
  of the bias stays in the denominator (and absorbs its share of ``R_k``), as
  zennit's ``ZPlus`` (inside its EpsilonPlusFlat, which the RR-ClArC
  evaluation uses) computes it; ``zplus_bias=False`` drops it (the textbook
  ``a_j w_jk⁺ / Σ a w⁺`` for the non-negative inputs after a ReLU, which
  conserves relevance);
- flat: every input of ``k``'s receptive field gets an equal share,
  ``R_j = Σ_k R_k / n_k`` (``n_k`` inputs feed ``k``);
- average pooling (and global average pooling) is linear: the epsilon rule;
  max pooling gives all of a window's relevance to its maximum;
- residual additions ``y = f(x) + g(x)`` split ``R`` in proportion to
  ``f(x)`` and ``g(x)``, then follow each branch.

Each rule is computed with the VJP of the layer's linear part (``Wᵀ s``), so
one LRP map costs a forward pass plus about one VJP and one extra forward of
each linear layer — batched, and jittable (:func:`make_lrp`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxbias.explain.graph import (
    LINEAR,
    Activation,
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    Layer,
    MaxPool,
    Residual,
    apply_layer,
    check_graph,
    fold_batchnorm,
    forward,
)

Array = jax.Array
RULES = ("epsilon", "zplus", "flat")

__all__ = ["RULES", "lrp", "make_lrp", "gradient", "grad_times_input", "first_linear", "composite_rules", "target_onehot"]


def _stab(z: Array, eps: float) -> Array:
    return z + eps * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


def _linear_part(layer: Layer, **replace) -> Callable[[Array], Array]:
    lay = layer._replace(**replace) if replace else layer
    return lambda t: apply_layer(lay, t, with_bias=False)


def _epsilon(layer, a, r, eps):
    z = apply_layer(layer, a)
    _, vjp = jax.vjp(_linear_part(layer), a)
    return a * vjp(r / _stab(z, eps))[0]


def _zplus(layer, a, r, eps, bias=True):
    pos, neg = _linear_part(layer, kernel=jnp.maximum(layer.kernel, 0)), _linear_part(
        layer, kernel=jnp.minimum(layer.kernel, 0))
    ap, an = jnp.maximum(a, 0), jnp.minimum(a, 0)
    zp, vjp_p = jax.vjp(pos, ap)
    zn, vjp_n = jax.vjp(neg, an)
    z = zp + zn
    if bias and layer.bias is not None:
        z = z + jnp.maximum(layer.bias, 0)  # zennit's ZPlus: b⁺ joins the positive part
    s = r / (z + eps)  # z⁺ ≥ 0
    return ap * vjp_p(s)[0] + an * vjp_n(s)[0]


def _flat(layer, a, r, eps):
    ones = _linear_part(layer, kernel=jnp.ones_like(layer.kernel))
    n, vjp = jax.vjp(ones, jnp.ones_like(a))
    return vjp(r / jnp.maximum(n, eps))[0]


def first_linear(graph: Sequence[Layer]) -> Layer | None:
    """The first convolution or dense layer in forward order (inside residual bodies too)."""
    for layer in graph:
        if isinstance(layer, LINEAR):
            return layer
        if isinstance(layer, Residual):
            hit = first_linear(layer.body) or first_linear(layer.shortcut)
            if hit is not None:
                return hit
    return None


def composite_rules(graph: Sequence[Layer], *, first: str = "flat", conv: str = "zplus",
                    dense: str = "epsilon") -> Callable[[Layer], str]:
    """EpsilonPlusFlat by default: ``first`` for the first linear layer, ``conv``/``dense`` for the others."""
    for name, rule in (("first", first), ("conv", conv), ("dense", dense)):
        if rule not in RULES:
            raise ValueError(f"{name} must be one of {RULES}; got {rule!r}")
    head = first_linear(graph)

    def rule(layer: Layer) -> str:
        if head is not None and layer is head:
            return first
        return conv if isinstance(layer, Conv) else dense

    return rule


def _propagate(graph: Sequence[Layer], x: Array, r: Array, rule: Callable[[Layer], str], eps: float,
               zplus_bias: bool = True) -> Array:
    inputs = []
    h = x
    for layer in graph:
        inputs.append(h)
        h = apply_layer(layer, h)
    for layer, a in zip(reversed(graph), reversed(inputs)):
        if isinstance(layer, LINEAR):
            name = rule(layer)
            r = (_zplus(layer, a, r, eps, zplus_bias) if name == "zplus"
                 else {"epsilon": _epsilon, "flat": _flat}[name](layer, a, r, eps))
        elif isinstance(layer, (BatchNorm, AvgPool, GlobalAvgPool)):
            r = _epsilon(layer, a, r, eps)
        elif isinstance(layer, MaxPool):
            _, vjp = jax.vjp(lambda t, lay=layer: apply_layer(lay, t), a)
            r = vjp(r)[0]
        elif isinstance(layer, Flatten):
            r = jnp.reshape(r, a.shape)
        elif isinstance(layer, Activation):
            pass
        elif isinstance(layer, Residual):
            fb, fs = forward(layer.body, a), forward(layer.shortcut, a)
            s = r / _stab(fb + fs, eps)
            r = (_propagate(layer.body, a, fb * s, rule, eps, zplus_bias)
                 + _propagate(layer.shortcut, a, fs * s, rule, eps, zplus_bias))
        else:  # check_graph has rejected everything else
            raise ValueError(f"no LRP rule for layer {layer!r}")
    return r


def target_onehot(logits: Array, target) -> Array:
    """One-hot rows of the explained class per sample: ``target`` (an int, ``(B,)`` indices) or the predicted one."""
    b, k = logits.shape
    if target is None:
        target = jnp.argmax(logits, axis=-1)
    target = jnp.asarray(target)
    if target.ndim == 0:
        target = jnp.full((b,), target)
    if target.shape != (b,):
        raise ValueError(f"target must be None, an int or ({b},) class indices; got shape {target.shape}")
    if not jnp.issubdtype(target.dtype, jnp.integer):
        raise ValueError(f"target must hold integer class indices; got dtype {target.dtype}")
    return jax.nn.one_hot(target, k, dtype=logits.dtype)


def lrp(
    graph: Sequence[Layer],
    x: Array,
    *,
    target=None,
    epsilon: float = 1e-6,
    first: str = "flat",
    conv: str = "zplus",
    dense: str = "epsilon",
    fold: bool = True,
    zplus_bias: bool = True,
) -> Array:
    """Relevance of the ``target`` logit for every input element, shape of ``x``.

    Args:
      graph: layers (:func:`jaxbias.explain.to_graph` or built by hand).
      x: a batch, ``(B, H, W, C)`` or ``(B, D)``.
      target: class per sample ``(B,)``, one class for all, or ``None`` (the
        predicted class). The output relevance is that logit's value at its
        class and 0 elsewhere.
      epsilon: the stabiliser of the epsilon rule (and of z⁺/flat denominators).
      first, conv, dense: rules of the composite (default EpsilonPlusFlat).
      fold: fold batch-norm into the preceding linear layers first.
      zplus_bias: keep the positive part of each bias in the z⁺ denominator
        (zennit's ZPlus, as in the RR-ClArC evaluation); ``False`` drops the
        biases from z⁺ (the textbook rule, relevance-conserving).

    Returns:
      ``(B, ...)`` relevance; with zero biases (or ``zplus_bias=False`` and no
      epsilon-rule biases) and ``ε → 0`` it sums to the explained logit per
      sample (conservation).

    Raises:
      ValueError: a layer without an LRP rule (named), or a bad ``target``.

    Example:
      >>> g = to_graph(module, variables)
      >>> rel = lrp(g, images, target=labels)        # (B, 28, 28, 3)
    """
    check_graph(graph)
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0; got {epsilon}")
    g = fold_batchnorm(graph) if fold else list(graph)
    rule = composite_rules(g, first=first, conv=conv, dense=dense)
    x = jnp.asarray(x)
    logits = forward(g, x)
    if logits.ndim != 2:
        raise ValueError(f"the graph must end in (B, classes) logits; got shape {logits.shape}")
    r = logits * target_onehot(logits, target)
    return _propagate(g, x, r, rule, epsilon, zplus_bias)


def make_lrp(graph: Sequence[Layer], **kwargs) -> Callable[[Array, Array | None], Array]:
    """``fn(x, target=None)``: :func:`lrp` of ``graph`` compiled once (the graph is a constant)."""
    check_graph(graph)
    g = fold_batchnorm(graph) if kwargs.pop("fold", True) else list(graph)

    @jax.jit
    def fn(x, target=None):
        return lrp(g, x, target=target, fold=False, **kwargs)

    return fn


def gradient(logits_fn: Callable[[Array], Array], x: Array, *, target=None) -> Array:
    """``∂ f_target / ∂x`` per sample (one VJP for the batch; samples must not interact)."""
    x = jnp.asarray(x)
    logits, vjp = jax.vjp(logits_fn, x)
    return vjp(target_onehot(logits, target))[0]


def grad_times_input(logits_fn: Callable[[Array], Array], x: Array, *, target=None) -> Array:
    """``x ⊙ ∂ f_target / ∂x``."""
    return jnp.asarray(x) * gradient(logits_fn, x, target=target)
