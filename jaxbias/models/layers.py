"""The named-layer hook shared by every bundled model, activations as modules, and PyTorch's adaptive pooling."""
from __future__ import annotations

from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

#: The elementwise activations :class:`Activation` applies, by name.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"relu": nn.relu, "tanh": jnp.tanh, "silu": nn.silu,
                                                    "gelu": nn.gelu, "sigmoid": nn.sigmoid}


class Activation(nn.Module):
    """An elementwise activation written as a module (no parameters): the same function as ``ACTIVATIONS[kind]``,
    visible to LRP (:mod:`jaxbias.explain.intercept`), which passes relevance through it unchanged as the
    EpsilonPlusFlat composite does; a plain function call other than ReLU would follow autodiff instead.
    """

    kind: str

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.kind not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {self.kind!r}")
        return ACTIVATIONS[self.kind](x)


class Gate(nn.Module):
    """``x · gate``: a multiplicative gate (squeeze-excitation's channel scales) written as a module, so that LRP
    (:mod:`jaxbias.explain.intercept`) passes the relevance of the product on to ``x``, the gated branch, and none
    into the gate, as the EpsilonPlusFlat composite treats gates."""

    @nn.compact
    def __call__(self, x: Array, gate: Array) -> Array:
        return x * gate


def tap(
    name: str,
    h: Array,
    acts: dict[str, Array],
    perturb: Mapping[str, Array] | None,
    edit: Mapping[str, Callable[[Array], Array]] | None,
) -> Array:
    """Apply ``edit[name]`` then add ``perturb[name]`` to a layer output and record it.

    ``perturb`` is what makes latent gradients cheap: the derivative of the
    output with respect to an added zero array equals the derivative with
    respect to the activation itself (RR-ClArC, TCAV), without splitting the
    network into two functions.
    """
    if edit is not None and name in edit:
        out = edit[name](h)
        if out.shape != h.shape:
            raise ValueError(
                f"edit[{name!r}] changed the layer shape from {h.shape} to {out.shape}; "
                "an edit must return an array of the same shape"
            )
        h = out
    if perturb is not None and name in perturb:
        p = perturb[name]
        if p.shape != h.shape:
            raise ValueError(
                f"perturb[{name!r}] has shape {p.shape}, expected the layer's shape {h.shape} "
                "(no broadcasting)"
            )
        h = h + p
    acts[name] = h
    return h


def check_hooks(
    acts: Mapping[str, Array],
    perturb: Mapping[str, Array] | None,
    edit: Mapping[str, object] | None,
) -> None:
    """Raise for a ``perturb``/``edit`` key that names no layer of the model."""
    for arg, hooks in (("perturb", perturb), ("edit", edit)):
        unknown = sorted(set(hooks or ()) - set(acts))
        if unknown:
            raise ValueError(
                f"{arg} names unknown layer(s) {unknown}; the model's layers are {sorted(acts)}"
            )


def adaptive_window(i: int, n_in: int, n_out: int) -> tuple[int, int]:
    """Window ``[start, end)`` of output cell ``i`` in PyTorch's adaptive pooling.

    ``start = ⌊i·n_in / n_out⌋``, ``end = ⌈(i+1)·n_in / n_out⌉``: windows overlap
    when ``n_out`` does not divide ``n_in`` and repeat input cells when
    ``n_out > n_in``.
    """
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


def _adaptive_matrix(n_in: int, n_out: int) -> np.ndarray:
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start, end = adaptive_window(i, n_in, n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: Array, output_size: tuple[int, int]) -> Array:
    """PyTorch's ``AdaptiveAvgPool2d(output_size)`` on NHWC images.

    ``out[b, i, j, c] = mean(x[b, h0:h1, w0:w1, c])`` with the windows of
    :func:`adaptive_window` along each spatial axis. Sizes are static, so the
    windows become a fixed averaging matrix per axis (a reshape-mean when the
    output divides the input, nothing when they are equal).

    Args:
      x: ``(B, H, W, C)``.
      output_size: ``(h, w)``, both ≥ 1.
    Returns:
      ``(B, h, w, C)``.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (B, H, W, C), got shape {x.shape}")
    if len(output_size) != 2 or min(output_size) < 1:
        raise ValueError(f"output_size must be two positive ints, got {output_size!r}")
    for axis, n_out in ((1, output_size[0]), (2, output_size[1])):
        n_in = x.shape[axis]
        if n_in == n_out:
            continue
        if n_in % n_out == 0:
            shape = x.shape[:axis] + (n_out, n_in // n_out) + x.shape[axis + 1 :]
            x = jnp.mean(jnp.reshape(x, shape), axis=axis + 1)
        else:
            m = jnp.asarray(_adaptive_matrix(n_in, n_out), x.dtype)
            spec = "oh,bhwc->bowc" if axis == 1 else "ow,bhwc->bhoc"
            x = jnp.einsum(spec, m, x, precision=jax.lax.Precision.HIGHEST)
    return x
