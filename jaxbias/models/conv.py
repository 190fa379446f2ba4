"""A 2-D convolution whose derivatives run on fast primitives on XLA:CPU.

XLA:CPU runs a forward convolution about as fast as PyTorch, but its
*derivative* convolutions much slower: the weight gradient (a convolution of
the input with the output gradient, batch as the contracted dimension) at a
third to a half of the forward rate, and the input gradient of wide layers at
about half. This module defines the convolution as three bilinear primitives,

- ``F(x, w)``   the convolution ``y = x ⋆ w``,
- ``Gx(g, w)``  its transpose in ``x`` (the input gradient, shaped like ``x``),
- ``Gw(x, g)``  its transpose in ``w`` (the weight gradient, shaped like ``w``),

and closes them under differentiation: each is bilinear, so its JVP is a sum
of two calls of itself, and each linear slice transposes into another member
of the family (``F(·,w)ᵀ = Gx(·,w)``, ``F(x,·)ᵀ = Gw(x,·)``, ``Gx(·,w)ᵀ =
F(·,w)``, ``Gx(g,·)ᵀ = Gw(·,g)``, ``Gw(·,g)ᵀ = Gx(g,·)``, ``Gw(x,·)ᵀ =
F(x,·)``). Gradients of any order, forward mode through reverse mode (the
JVP of an input gradient, as RR-ClArC and Hessian-vector products need) and
``vmap`` therefore all stay inside the family, and each member picks its own
implementation when it is lowered:

- ``F``: XLA's convolution; 7×7 layers with 64 output channels compute two
  neighbouring output columns as 128 channels (XLA:CPU runs 128-channel
  outputs about twice as fast);
- ``Gw``: per image and kernel row, the strided windows of the padded input
  as a ``(kw·C_in) × (H_out·W_out)`` matrix times the output gradient, summed
  over the batch inside a ``lax.scan`` (memory: one image's windows); XLA's
  own below 10×10 output positions;
- ``Gx``: for 128+ output channels of 5×5+ or strided kernels, per image, ``g · Wᵀ`` (one matrix product) and the
  ``kh·kw`` column blocks added back at their strided offsets ("col2im");
  otherwise XLA's own transpose.

Only plain convolutions take this path: NHWC/HWIO, no dilation, one feature
group, float32, and the CPU backend (read when a function is traced).
Depthwise convolutions (one filter per channel, as in EfficientNet) on the
same conditions are the same three primitives with ``groups = C``, lowered
on CPU to sums of ``kh·kw`` shifted slices times the per-channel weights
(:func:`_dw_f`, :func:`_dw_gx`, :func:`_dw_gw`), which XLA fuses into
element-wise loops and runs several times faster than its grouped
convolution. Other grouped convolutions, other dtypes and every GPU/TPU
keep ``lax.conv_general_dilated`` and XLA's native derivatives (cuDNN / TPU
kernels). ``use_fast_cpu_conv(False)`` or ``JAXBIAS_FAST_CPU_CONV=0`` turns
the path off; the choice is read at trace time, so already compiled functions
keep theirs.

On a batched weight (a vmapped sweep with one kernel per member) the
batching rule runs the members one after another with ``lax.map``, each on
the fast kernels, when every member has at least ``MEMBER_MAP_MIN_BATCH``
images; with fewer (per-sample weight gradients) it falls back to XLA's
native operations under ``vmap``, which is what a plain ``lax`` convolution
would do.
"""
from __future__ import annotations

import contextlib
import os
from functools import partial
from typing import Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir
from jax._src import dispatch  # apply_primitive: eager calls compile the primitive

Array = jax.Array

_NHWC = ("NHWC", "HWIO", "NHWC")
_STATE = {"enabled": os.environ.get("JAXBIAS_FAST_CPU_CONV", "1").strip().lower()
          not in {"0", "false", "no", "off"}}

# Where the col2im input gradient beats XLA's transpose on a 2-core Xeon
# (benchmarks/conv_cpu.py): wide outputs. Below this XLA's own is kept.
COL2IM_MIN_OUT_CHANNELS = 128
COL2IM_MIN_KERNEL_AREA = 25  # ... and 5×5 or larger kernels, or strided ones
# Below this many output positions per image XLA's own weight gradient is kept.
GW_MIN_OUTPUT_POSITIONS = 100
# Forward convolutions with these output widths compute that many output columns as channels
# (measured gain ≈1.6× for 7×7 kernels with 64 outputs; none for 3×3 or narrower outputs).
PACK_FACTORS = {64: 2}
PACK_MIN_KERNEL_WIDTH = 5
# A vmapped kernel (sweep members) runs member after member from this many images per member on.
MEMBER_MAP_MIN_BATCH = 8


def fast_cpu_conv_enabled() -> bool:
    """Whether convolutions traced now take the fast CPU path (CPU backend and not turned off)."""
    return _STATE["enabled"] and jax.default_backend() == "cpu"


@contextlib.contextmanager
def use_fast_cpu_conv(enabled: bool) -> Iterator[None]:
    """Turn the fast CPU convolution on or off for the functions traced inside the block."""
    old = _STATE["enabled"]
    set_fast_cpu_conv(enabled)
    try:
        yield
    finally:
        _STATE["enabled"] = old


def set_fast_cpu_conv(enabled: bool) -> None:
    """Turn the fast CPU convolution on or off for functions traced from now on."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    _STATE["enabled"] = enabled


# --------------------------------------------------------------------------
# geometry

def _out_size(n: int, k: int, s: int, lo: int, hi: int) -> int:
    return (n + lo + hi - k) // s + 1


def _native_f(x, w, strides, padding, groups=1):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC, feature_group_count=groups)


def _native_gx(g, w, strides, padding, in_hw, groups=1):
    n = g.shape[0]
    x_aval = jax.ShapeDtypeStruct((n, *in_hw, w.shape[2] * groups), g.dtype)
    (dx,) = jax.linear_transpose(lambda x: _native_f(x, w, strides, padding, groups), x_aval)(g)
    return dx


def _native_gw(x, g, strides, padding, kernel_hw, groups=1):
    w_aval = jax.ShapeDtypeStruct((*kernel_hw, x.shape[3] // groups, g.shape[3]), x.dtype)
    (dw,) = jax.linear_transpose(lambda w: _native_f(x, w, strides, padding, groups), w_aval)(g)
    return dw


def _fast_gw(x, g, strides, padding, kernel_hw):
    """Weight gradient: per image and kernel row, a window matrix times the output gradient.

    Per image (a ``lax.scan`` over the batch, so memory holds one image's
    windows): the padded image, channels first, is expanded once along the
    width into ``(kw, C_in, H_p, W_out)``; the rows of kernel row ``a`` are
    then a slice of it, and ``dW[a] = X_a · G`` is one ``(kw·C_in) × (H_out·W_out)``
    by ``(H_out·W_out) × C_out`` matrix product.
    """
    kh, kw = kernel_hw
    sh, sw = strides
    (pt, pb), (pl, pr) = padding
    _, _, _, cin = x.shape
    _, ho, wo, cout = g.shape
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))).transpose(0, 3, 1, 2)  # (N, C_in, H_p, W_p)
    hp = xp.shape[2]
    h_span, w_span = sh * (ho - 1) + 1, sw * (wo - 1) + 1

    def one_image(acc, xs):
        xi, gi = xs  # (C_in, H_p, W_p), (H_out, W_out, C_out)
        wide = jnp.stack([lax.slice(xi, (0, 0, b), (cin, hp, b + w_span), (1, 1, sw))
                          for b in range(kw)])  # (kw, C_in, H_p, W_out)
        gm = gi.reshape(ho * wo, cout)
        rows = [lax.slice(wide, (0, 0, a, 0), (kw, cin, a + h_span, wo), (1, 1, sh, 1)).reshape(kw * cin, ho * wo) @ gm
                for a in range(kh)]
        return acc + jnp.stack(rows), None

    acc0 = jnp.zeros((kh, kw * cin, cout), jnp.result_type(x.dtype, g.dtype))
    acc, _ = lax.scan(one_image, acc0, (xp, g))
    return acc.reshape(kh, kw, cin, cout)


def _fast_gx(g, w, strides, padding, in_hw):
    """Input gradient by col2im: per image ``g·Wᵀ``, then each kernel offset's block added back."""
    kh, kw, cin, cout = w.shape
    sh, sw = strides
    (pt, pb), (pl, pr) = padding
    h, wd = in_hw
    _, ho, wo, _ = g.shape
    hp, wp = h + pt + pb, wd + pl + pr
    wt = w.reshape(kh * kw * cin, cout).T  # (C_out, kh·kw·C_in)

    def one_image(_, gi):
        z = (gi.reshape(ho * wo, cout) @ wt).reshape(ho, wo, kh, kw, cin)
        full = None
        for a in range(kh):
            for b in range(kw):
                # block (a, b) lands on rows a, a+sh, …; interior padding spreads it by the stride
                part = lax.pad(z[:, :, a, b, :], jnp.zeros((), z.dtype), (
                    (a, hp - a - (sh * (ho - 1) + 1), sh - 1),
                    (b, wp - b - (sw * (wo - 1) + 1), sw - 1),
                    (0, 0, 0)))
                full = part if full is None else full + part
        return None, lax.slice(full, (pt, pl, 0), (pt + h, pl + wd, cin))

    _, dx = lax.scan(one_image, None, g)
    return dx


# depthwise (groups = channels, one filter per channel) -----------------------

def _window(xp, a, b, strides, out_hw):
    """The strided window of kernel offset ``(a, b)``: ``xp[:, a::s_h, b::s_w, :]`` cut to the output's size."""
    n, _, _, c = xp.shape
    (sh, sw), (ho, wo) = strides, out_hw
    return lax.slice(xp, (0, a, b, 0), (n, a + sh * (ho - 1) + 1, b + sw * (wo - 1) + 1, c), (1, sh, sw, 1))



def _dw_f(x, w, strides, padding):
    """Depthwise forward as ``kh·kw`` shifted, strided slices times the per-channel weights.

    ``y[n, i, j, c] = Σ_{a,b} x_pad[n, i·s + a, j·s + b, c] · w[a, b, 0, c]``: element-wise products
    that XLA fuses into one loop, instead of XLA:CPU's grouped convolution.
    """
    _, h, wd, _ = x.shape
    kh, kw = w.shape[:2]
    out_hw = (_out_size(h, kh, strides[0], *padding[0]), _out_size(wd, kw, strides[1], *padding[1]))
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    out = None
    for a in range(kh):
        for b in range(kw):
            term = _window(xp, a, b, strides, out_hw) * w[a, b, 0]
            out = term if out is None else out + term
    return out


def _dw_gx(g, w, strides, padding, in_hw):
    """Depthwise input gradient: the output gradient spread by the stride, correlated with the flipped kernel.

    ``dx[n, i, j, c] = Σ_{a,b} g_s[n, i + p_t + kh-1-a, j + p_l + kw-1-b, c] · w[a, b, 0, c]``, where ``g_s``
    is ``g`` with ``s - 1`` zeros between its rows/columns and ``kh - 1`` / ``kw - 1`` around: one array
    of about the input's size, then the same fused shifted products as the forward.
    """
    _, ho, wo, _ = g.shape
    kh, kw = w.shape[:2]
    sh, sw = strides
    (pt, pb), (pl, pr) = padding
    h, wd = in_hw
    extra_h = h + pt + pb - (sh * (ho - 1) + kh)  # bottom rows of the padded input no window reaches
    extra_w = wd + pl + pr - (sw * (wo - 1) + kw)
    gs = lax.pad(g, jnp.zeros((), g.dtype),
                 ((0, 0, 0), (kh - 1, kh - 1 + extra_h, sh - 1), (kw - 1, kw - 1 + extra_w, sw - 1), (0, 0, 0)))
    out = None
    for a in range(kh):
        for b in range(kw):  # stride 1 over the spread gradient, from offset (kh-1-a+p_t, kw-1-b+p_l)
            term = _window(gs, kh - 1 - a + pt, kw - 1 - b + pl, (1, 1), (h, wd)) * w[a, b, 0]
            out = term if out is None else out + term
    return out


def _dw_gw(x, g, strides, padding, kernel_hw):
    """Depthwise weight gradient: ``dw[a, b, 0, c] = Σ_{n,i,j} x_pad[n, i·s + a, j·s + b, c] · g[n, i, j, c]``.

    A ``lax.scan`` over the images: XLA:CPU materialises each tap's product before reducing it, so
    summing over the whole batch at once would hold ``kh·kw`` arrays of the output's size.
    """
    _, _, _, c = x.shape
    _, ho, wo, _ = g.shape
    kh, kw = kernel_hw

    def one_image(acc, xs):
        xi, gi = xs
        xi = jnp.pad(xi[None], ((0, 0), padding[0], padding[1], (0, 0)))
        taps = [jnp.sum(_window(xi, a, b, strides, (ho, wo))[0] * gi, axis=(0, 1))
                for a in range(kh) for b in range(kw)]
        return acc + jnp.stack(taps), None

    acc, _ = lax.scan(one_image, jnp.zeros((kh * kw, c), jnp.result_type(x.dtype, g.dtype)), (x, g))
    return acc.reshape(kh, kw, 1, c)


def _flipped_gx(g, w, strides, padding, in_hw):
    """Input gradient as a forward convolution of the stride-spread ``g`` with the flipped, transposed kernel.

    Numerically what XLA runs for its own transpose at the top level of a program, but with the kernel
    physically in HWIO order: inside a loop body (``lax.map`` over sweep members, ``lax.scan``) XLA:CPU
    runs the transpose that JAX's rule emits (swapped kernel dimensions) 2–6× slower, this one not.
    """
    kh, kw = w.shape[:2]
    (pt, pb), (pl, pr) = padding
    ho, wo = g.shape[1:3]
    extra_h = in_hw[0] + pt + pb - (strides[0] * (ho - 1) + kh)  # padded rows no window reaches
    extra_w = in_hw[1] + pl + pr - (strides[1] * (wo - 1) + kw)
    pads = ((kh - 1 - pt, kh - 1 - pb + extra_h), (kw - 1 - pl, kw - 1 - pr + extra_w))
    if min(min(p) for p in pads) < 0:  # padding wider than the kernel: XLA's own
        return _native_gx(g, w, strides, padding, in_hw)
    wf = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    return lax.conv_general_dilated(g, wf, (1, 1), pads, lhs_dilation=strides, dimension_numbers=_NHWC)


def _batch_window_gw(x, g, strides, padding, kernel_hw):
    """Weight gradient for small outputs: per kernel offset, the strided window of the whole batch times ``g``.

    ``dW[a, b] = X_abᵀ · G`` with ``X_ab`` the ``(N·H_out·W_out) × C_in`` window and ``G`` the
    ``(N·H_out·W_out) × C_out`` output gradient: ``kh·kw`` matrix products, used below
    ``GW_MIN_OUTPUT_POSITIONS`` output positions where the windows are small. As fast as XLA's own at
    the top level; inside a loop body XLA:CPU runs its own weight gradient 17–230× slower.
    """
    kh, kw = kernel_hw
    n, _, _, cin = x.shape
    _, ho, wo, cout = g.shape
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    gm = g.reshape(n * ho * wo, cout)
    taps = [_window(xp, a, b, strides, (ho, wo)).reshape(n * ho * wo, cin).T @ gm
            for a in range(kh) for b in range(kw)]
    return jnp.stack(taps).reshape(kh, kw, cin, cout)


def _packed_f(x, w, strides, padding, r):
    """Forward convolution with ``r`` neighbouring output columns computed as ``r·C_out`` channels.

    XLA:CPU's convolution runs about twice as fast with 128 output channels
    as with 64 or fewer. Output column ``r·j + d`` is column ``j`` of a
    convolution with stride ``r`` along the width whose kernel ``W2[:, b, :,
    d] = W[:, b - d]`` is ``kw + r - 1`` wide: ``(kw + r - 1) / kw`` times the
    arithmetic at about twice the rate.
    """
    kh, kw, cin, cout = w.shape
    (pt, pb), (pl, pr) = padding
    n, _, wd, _ = x.shape
    wo = wd + pl + pr - kw + 1
    wo_packed = -(-wo // r)
    extra = wo_packed * r - wo
    xp = jnp.pad(x, ((0, 0), (0, 0), (pl, pr + extra), (0, 0)))
    w2 = jnp.zeros((kh, kw + r - 1, cin, r, cout), w.dtype)
    for d in range(r):
        w2 = w2.at[:, d:d + kw, :, d, :].set(w)
    y = lax.conv_general_dilated(xp, w2.reshape(kh, kw + r - 1, cin, r * cout), (strides[0], r),
                                 ((pt, pb), (0, 0)), dimension_numbers=_NHWC)
    return y.reshape(n, y.shape[1], wo_packed * r, cout)[:, :, :wo, :]


def _pack_factor(w_shape, strides) -> int:
    _, kw, _, cout = w_shape
    if strides[1] != 1 or kw < PACK_MIN_KERNEL_WIDTH:
        return 1
    return PACK_FACTORS.get(cout, 1)


def _use_col2im(w_shape, strides) -> bool:
    kh, kw, _, cout = w_shape
    # measured (benchmarks/results/conv_cpu.md): col2im wins for wide outputs of large or strided
    # kernels; XLA's own is faster for 3×3 stride-1 layers and for 1×1
    return cout >= COL2IM_MIN_OUT_CHANNELS and kh * kw > 1 and (kh * kw >= COL2IM_MIN_KERNEL_AREA or max(strides) > 1)


def _use_window_gw(out_hw) -> bool:
    # the per-image window matrix needs enough output positions to feed its matrix product;
    # below ~10×10 (ResNet-18's last stages) XLA's weight gradient is faster
    return out_hw[0] * out_hw[1] >= GW_MIN_OUTPUT_POSITIONS


# --------------------------------------------------------------------------
# primitives

conv_f_p = jex_core.Primitive("jaxbias_conv")
conv_gx_p = jex_core.Primitive("jaxbias_conv_input_grad")
conv_gw_p = jex_core.Primitive("jaxbias_conv_weight_grad")


def _f(x, w, *, strides, padding, groups=1):
    return conv_f_p.bind(x, w, strides=strides, padding=padding, groups=groups)


def _gx(g, w, *, strides, padding, in_hw, groups=1):
    return conv_gx_p.bind(g, w, strides=strides, padding=padding, in_hw=in_hw, groups=groups)


def _gw(x, g, *, strides, padding, kernel_hw, groups=1):
    return conv_gw_p.bind(x, g, strides=strides, padding=padding, kernel_hw=kernel_hw, groups=groups)


# abstract evaluation ------------------------------------------------------

def _f_abstract(x, w, *, strides, padding, groups):
    n, h, wd, _ = x.shape
    kh, kw, _, cout = w.shape
    ho = _out_size(h, kh, strides[0], *padding[0])
    wo = _out_size(wd, kw, strides[1], *padding[1])
    return jax.core.ShapedArray((n, ho, wo, cout), x.dtype)


def _gx_abstract(g, w, *, strides, padding, in_hw, groups):
    return jax.core.ShapedArray((g.shape[0], *in_hw, w.shape[2] * groups), g.dtype)


def _gw_abstract(x, g, *, strides, padding, kernel_hw, groups):
    return jax.core.ShapedArray((*kernel_hw, x.shape[3] // groups, g.shape[3]), x.dtype)


conv_f_p.def_abstract_eval(_f_abstract)
conv_gx_p.def_abstract_eval(_gx_abstract)
conv_gw_p.def_abstract_eval(_gw_abstract)


# implementations / lowering ----------------------------------------------

def _f_impl(x, w, *, strides, padding, groups):
    return _native_f(x, w, strides, padding, groups)


def _f_impl_cpu(x, w, *, strides, padding, groups):
    if groups > 1:
        return _dw_f(x, w, strides, padding)
    r = _pack_factor(w.shape, strides)
    if r > 1:
        return _packed_f(x, w, strides, padding, r)
    return _native_f(x, w, strides, padding)


def _gx_impl_cpu(g, w, *, strides, padding, in_hw, groups):
    if groups > 1:
        return _dw_gx(g, w, strides, padding, in_hw)
    if _use_col2im(w.shape, strides):
        return _fast_gx(g, w, strides, padding, in_hw)
    return _flipped_gx(g, w, strides, padding, in_hw)


def _gw_impl_cpu(x, g, *, strides, padding, kernel_hw, groups):
    if groups > 1:
        return _dw_gw(x, g, strides, padding, kernel_hw)
    if _use_window_gw(g.shape[1:3]):
        return _fast_gw(x, g, strides, padding, kernel_hw)
    return _batch_window_gw(x, g, strides, padding, kernel_hw)


def _gx_impl_native(g, w, *, strides, padding, in_hw, groups):
    return _native_gx(g, w, strides, padding, in_hw, groups)


def _gw_impl_native(x, g, *, strides, padding, kernel_hw, groups):
    return _native_gw(x, g, strides, padding, kernel_hw, groups)


for _p, _cpu, _native in (
    (conv_f_p, _f_impl_cpu, _f_impl),
    (conv_gx_p, _gx_impl_cpu, _gx_impl_native),
    (conv_gw_p, _gw_impl_cpu, _gw_impl_native),
):
    _p.def_impl(partial(dispatch.apply_primitive, _p))
    mlir.register_lowering(_p, mlir.lower_fun(_native, multiple_results=False))
    mlir.register_lowering(_p, mlir.lower_fun(_cpu, multiple_results=False), platform="cpu")


# differentiation ------------------------------------------------------------

def _zero(t) -> bool:
    return type(t) is ad.Zero


def _sum_terms(terms, aval):
    terms = [t for t in terms if t is not None]
    if not terms:
        return ad.Zero(aval)
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def _bilinear_jvp(prim):
    """JVP rule of a primitive bilinear in its two operands: ``d B(a, b) = B(da, b) + B(a, db)``."""
    def rule(primals, tangents, **params):
        (a, b), (da, db) = primals, tangents
        out = prim.bind(a, b, **params)
        terms = [None if _zero(da) else prim.bind(da, b, **params),
                 None if _zero(db) else prim.bind(a, db, **params)]
        return out, _sum_terms(terms, jax.typeof(out).to_tangent_aval())
    return rule


def _f_transpose(ct, x, w, *, strides, padding, groups):
    if ad.is_undefined_primal(x) and ad.is_undefined_primal(w):
        raise ValueError("the convolution is bilinear, not linear, in (x, w) together")
    if ad.is_undefined_primal(x):
        if _zero(ct):
            return ad.Zero(x.aval), None
        return _gx(ct, w, strides=strides, padding=padding, groups=groups, in_hw=tuple(x.aval.shape[1:3])), None
    if _zero(ct):
        return None, ad.Zero(w.aval)
    return None, _gw(x, ct, strides=strides, padding=padding, groups=groups, kernel_hw=tuple(w.aval.shape[:2]))


def _gx_transpose(ct, g, w, *, strides, padding, in_hw, groups):
    if ad.is_undefined_primal(g) and ad.is_undefined_primal(w):
        raise ValueError("the input gradient is bilinear, not linear, in (g, w) together")
    if ad.is_undefined_primal(g):
        if _zero(ct):
            return ad.Zero(g.aval), None
        return _f(ct, w, strides=strides, padding=padding, groups=groups), None
    if _zero(ct):
        return None, ad.Zero(w.aval)
    return None, _gw(ct, g, strides=strides, padding=padding, groups=groups, kernel_hw=tuple(w.aval.shape[:2]))


def _gw_transpose(ct, x, g, *, strides, padding, kernel_hw, groups):
    if ad.is_undefined_primal(x) and ad.is_undefined_primal(g):
        raise ValueError("the weight gradient is bilinear, not linear, in (x, g) together")
    if ad.is_undefined_primal(x):
        if _zero(ct):
            return ad.Zero(x.aval), None
        return _gx(g, ct, strides=strides, padding=padding, groups=groups, in_hw=tuple(x.aval.shape[1:3])), None
    if _zero(ct):
        return None, ad.Zero(g.aval)
    return None, _f(x, ct, strides=strides, padding=padding, groups=groups)


for _p in (conv_f_p, conv_gx_p, conv_gw_p):
    ad.primitive_jvps[_p] = _bilinear_jvp(_p)
ad.primitive_transposes[conv_f_p] = _f_transpose
ad.primitive_transposes[conv_gx_p] = _gx_transpose
ad.primitive_transposes[conv_gw_p] = _gw_transpose


# batching -------------------------------------------------------------------

def _fold(fn, a, b, a_dim):
    """Merge a batched activation's vmapped axis into its batch axis."""
    a = jnp.moveaxis(a, a_dim, 0)
    k, n = a.shape[:2]
    out = fn(a.reshape(k * n, *a.shape[2:]), b)
    return out.reshape(k, n, *out.shape[1:]), 0


def _images(a, d) -> int:
    """Images per member: the leading axis of ``a`` once its vmapped axis ``d`` is taken out."""
    return a.shape[1] if d == 0 else a.shape[0]


def _per_member(prim_fn, native_fn, args, dims, image_batch):
    """A vmapped axis that is not only an activation's (one kernel per sweep member, per-sample gradients).

    With at least ``MEMBER_MAP_MIN_BATCH`` images per member, ``lax.map``
    runs the primitive member after member, so every member keeps the fast
    kernels (XLA:CPU would turn the vmapped convolution into a grouped one,
    ~7× slower: benchmarks/sweep.py). Smaller per-member batches (per-sample
    gradients) use XLA's native operations under ``vmap``.
    """
    if image_batch < MEMBER_MAP_MIN_BATCH:
        return jax.vmap(native_fn, in_axes=tuple(dims))(*args), 0
    moved = [None if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]

    def one(members):
        it = iter(members)
        return prim_fn(*[a if m is None else next(it) for a, m in zip(args, moved)])

    return lax.map(one, [m for m in moved if m is not None]), 0


def _f_batch(args, dims, *, strides, padding, groups):
    x, w = args
    dx, dw = dims
    prim = partial(_f, strides=strides, padding=padding, groups=groups)
    if dw is None:
        return _fold(prim, x, w, dx)
    return _per_member(prim, partial(_native_f, strides=strides, padding=padding, groups=groups), args, dims,
                       _images(x, dx))


def _gx_batch(args, dims, *, strides, padding, in_hw, groups):
    g, w = args
    dg, dw = dims
    prim = partial(_gx, strides=strides, padding=padding, groups=groups, in_hw=in_hw)
    if dw is None:
        return _fold(prim, g, w, dg)
    native = partial(_native_gx, strides=strides, padding=padding, groups=groups, in_hw=in_hw)
    return _per_member(prim, native, args, dims, _images(g, dg))


def _gw_batch(args, dims, *, strides, padding, kernel_hw, groups):
    x, g = args
    dx, dg = dims
    prim = partial(_gw, strides=strides, padding=padding, groups=groups, kernel_hw=kernel_hw)
    native = partial(_native_gw, strides=strides, padding=padding, groups=groups, kernel_hw=kernel_hw)
    return _per_member(prim, native, args, dims, _images(x, dx))


batching.primitive_batchers[conv_f_p] = _f_batch
batching.primitive_batchers[conv_gx_p] = _gx_batch
batching.primitive_batchers[conv_gw_p] = _gw_batch


# --------------------------------------------------------------------------
# public entry point

def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return tuple(map(tuple, dimension_numbers)) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return tuple(dimension_numbers) == _NHWC


def _pairs(padding, x_hw, k_hw, strides):
    if isinstance(padding, str):
        return tuple(tuple(int(v) for v in p) for p in lax.padtype_to_pads(x_hw, k_hw, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _trivial(v) -> bool:
    return v is None or all(int(d) == 1 for d in v)


def conv_general_dilated(
    lhs: Array,
    rhs: Array,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> Array:
    """Drop-in for ``lax.conv_general_dilated`` (pass it to ``flax.linen.Conv(conv_general_dilated=…)``).

    Plain and depthwise 2-D NHWC/HWIO float32 convolutions on the CPU backend
    go through the primitives above; everything else is passed to
    ``lax.conv_general_dilated`` unchanged.
    """
    ours = (
        fast_cpu_conv_enabled()
        and lhs.ndim == 4 and rhs.ndim == 4
        and _is_nhwc(dimension_numbers)
        and _trivial(lhs_dilation) and _trivial(rhs_dilation)
        and batch_group_count == 1
        and precision is None and preferred_element_type is None
        and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
    )
    if ours:
        strides = tuple(int(s) for s in window_strides)
        pads = _pairs(padding, lhs.shape[1:3], rhs.shape[:2], strides)
        ours = all(lo >= 0 and hi >= 0 for lo, hi in pads)
    fast = ours and feature_group_count == 1
    # depthwise: one filter per channel (multiplier 1); other grouped convolutions stay XLA's
    depthwise = (ours and feature_group_count == lhs.shape[3] > 1 and rhs.shape[2] == 1
                 and rhs.shape[3] == lhs.shape[3])
    if depthwise:
        return _f(lhs, rhs, strides=strides, padding=pads, groups=lhs.shape[3])
    if not fast:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    if lhs.shape[3] != rhs.shape[2]:
        raise ValueError(
            f"conv: input has {lhs.shape[3]} channels but the kernel expects {rhs.shape[2]} "
            f"(lhs {lhs.shape}, rhs {rhs.shape})")
    return _f(lhs, rhs, strides=strides, padding=pads)


def conv2d(x: Array, w: Array, strides=(1, 1), padding="SAME") -> Array:
    """NHWC × HWIO convolution through :func:`conv_general_dilated` (a convenience for tests)."""
    return conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)


def Conv(*args, **kwargs):  # noqa: N802 — a drop-in for the class name it wraps
    """``flax.linen.Conv`` with :func:`conv_general_dilated` as its convolution.

    Parameters, names and shapes are those of ``nn.Conv``, so checkpoints and
    imported weights are unaffected.
    """
    kwargs.setdefault("conv_general_dilated", conv_general_dilated)
    return nn.Conv(*args, **kwargs)
