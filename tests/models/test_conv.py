"""The fast CPU convolution (jaxbias.models.conv) against XLA's native convolution and its derivatives.

Reference: ``lax.conv_general_dilated`` with JAX's own differentiation rules.
Every derivative the project uses is compared at 1e-5 relative (max-abs error
over max-abs value): first order in both arguments, second order (the gradient
of an input-gradient penalty, as RRR), forward mode through reverse mode (a
Hessian-vector product / the JVP of an input gradient), under jit and vmap.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxbias import models
from jaxbias.models import conv as C

NHWC = ("NHWC", "HWIO", "NHWC")
TOL = 1e-5


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _pair(k, s, padding, groups=1):
    def native(x, w):
        return lax.conv_general_dilated(x, w, (s, s), padding, dimension_numbers=NHWC, feature_group_count=groups)

    def fast(x, w):
        return C.conv_general_dilated(x, w, (s, s), padding, dimension_numbers=NHWC, feature_group_count=groups)

    return native, fast


def _data(k, cin, cout, groups=1, n=3, h=11, w=10, seed=0):
    kx, kw_, kv, kg = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(kx, (n, h, w, cin))
    wt = jax.random.normal(kw_, (k, k, cin // groups, cout)) / np.sqrt(k * k * cin)
    v = jax.random.normal(kv, wt.shape)
    return x, wt, v


def _objective(conv):
    return lambda x, w: jnp.sum(jnp.tanh(conv(x, w)) ** 2)


def _penalty(conv):
    """RRR-style: squared input gradient of a nonlinear output, as a function of the weights."""
    def pen(w, x):
        gx = jax.grad(lambda x: jnp.sum(jnp.sin(conv(x, w))))(x)
        return jnp.sum(gx ** 2)
    return pen


CASES = list(itertools.product((1, 3, 5, 7), (1, 2), ("SAME", "VALID")))


# 6 output channels: XLA's input gradient inside the family; 128: the col2im input gradient
def _all_orders_cases():
    """Every case of 6 and (col2im) 128 output channels; 7×7 and 5×5 at 128 channels run with -m slow.

    The default suite keeps every code path (kernel 1/3/5, both strides and paddings, col2im, packing):
    7×7 differs from 5×5 only in size, at ~4 s of compilation a case.
    """
    cases = [c + (6,) for c in CASES] + [c + (128,) for c in CASES if c[2] == "SAME" and c[0] > 1]
    return [pytest.param(*c, marks=pytest.mark.slow) if c[0] == 7 or (c[0] == 5 and c[3] == 128) else c
            for c in cases]


@pytest.mark.parametrize("k,s,padding,cout", _all_orders_cases())
def test_all_orders_match_native(k, s, padding, cout, monkeypatch):
    # every implementation inside the family is exercised, whatever the size rules would pick
    monkeypatch.setattr(C, "GW_MIN_OUTPUT_POSITIONS", 0)
    monkeypatch.setattr(C, "COL2IM_MIN_KERNEL_AREA", 2)
    monkeypatch.setattr(C, "PACK_FACTORS", {6: 2, 128: 3})  # output columns packed as channels
    monkeypatch.setattr(C, "PACK_MIN_KERNEL_WIDTH", 1)
    native, fast = _pair(k, s, padding)
    x, w, v = _data(k, 4, cout)
    # forward and first order, in both arguments
    assert _rel(jax.jit(fast)(x, w), native(x, w)) < TOL
    got = jax.jit(jax.grad(_objective(fast), (0, 1)))(x, w)
    ref = jax.grad(_objective(native), (0, 1))(x, w)
    for a, b in zip(got, ref):
        assert _rel(a, b) < TOL
    # second order: gradient (in w and x) of an input-gradient penalty
    got = jax.jit(jax.grad(_penalty(fast), (0, 1)))(w, x)
    ref = jax.grad(_penalty(native), (0, 1))(w, x)
    for a, b in zip(got, ref):
        assert _rel(a, b) < TOL
    # forward over reverse: a Hessian-vector product in the weights
    def hvp(conv):
        return jax.jvp(jax.grad(lambda w: _objective(conv)(x, w)), (w,), (v,))[1]
    assert _rel(jax.jit(lambda: hvp(fast))(), hvp(native)) < TOL
    # the JVP of the input gradient along an input direction (RR-ClArC-like)
    dx = jnp.cos(x)
    def jvp_gx(conv):
        return jax.jvp(jax.grad(lambda x: _objective(conv)(x, w)), (x,), (dx,))[1]
    assert _rel(jax.jit(lambda: jvp_gx(fast))(), jvp_gx(native)) < TOL


@pytest.mark.parametrize("k,s,padding", [(1, 2, "SAME"), (3, 1, "SAME"), (3, 2, "VALID"), (5, 2, ((3, 0), (1, 2))),
                                       (1, 1, ((1, 0), (0, 2)))])  # the last: padding wider than the kernel
def test_small_output_weight_gradient_and_flipped_input_gradient(k, s, padding, monkeypatch):
    """The whole-batch window weight gradient (small outputs) and the flipped-kernel input gradient."""
    monkeypatch.setattr(C, "GW_MIN_OUTPUT_POSITIONS", 10**9)
    monkeypatch.setattr(C, "COL2IM_MIN_OUT_CHANNELS", 10**9)
    native, fast = _pair(k, s, padding)
    x, w, v = _data(k, 4, 6)
    jaxpr = str(jax.make_jaxpr(jax.grad(_penalty(fast), (0, 1)))(w, x))
    assert "jaxbias_conv_weight_grad" in jaxpr and "jaxbias_conv_input_grad" in jaxpr
    for a, b in zip(jax.jit(jax.grad(_penalty(fast), (0, 1)))(w, x), jax.grad(_penalty(native), (0, 1))(w, x)):
        assert _rel(a, b) < TOL
    hvp = lambda conv: jax.jvp(jax.grad(lambda w: _objective(conv)(x, w)), (w,), (v,))[1]  # noqa: E731
    assert _rel(jax.jit(lambda: hvp(fast))(), hvp(native)) < TOL


def test_explicit_asymmetric_padding_and_odd_sizes():
    pad = ((2, 1), (0, 3))
    native, fast = _pair(3, 2, pad)
    x, w, _ = _data(3, 5, 128, h=13, w=9)
    for a, b in zip(jax.jit(jax.grad(_objective(fast), (0, 1)))(x, w), jax.grad(_objective(native), (0, 1))(x, w)):
        assert _rel(a, b) < TOL


def test_third_order_stays_in_the_family():
    native, fast = _pair(3, 1, "SAME")
    x, w, v = _data(3, 3, 4)

    def third(conv):  # directional third derivative of the objective in w
        g = lambda w: jax.grad(lambda w: _objective(conv)(x, w))(w)
        hv = lambda w: jax.jvp(g, (w,), (v,))[1]
        return jax.jvp(hv, (w,), (v,))[1]

    assert _rel(jax.jit(lambda: third(fast))(), third(native)) < 1e-4


@pytest.mark.parametrize("groups,cin,cout", [(2, 4, 6), (4, 4, 8)])  # grouped; depthwise with multiplier 2
def test_grouped_convs_take_xla_path_and_match(groups, cin, cout):
    native, fast = _pair(3, 2, "SAME", groups)
    x, w, _ = _data(3, cin, cout, groups)
    jaxpr = str(jax.make_jaxpr(jax.grad(_objective(fast), 1))(x, w))
    assert "jaxbias_conv" not in jaxpr and "conv_general_dilated" in jaxpr
    for a, b in zip(jax.grad(_penalty(fast), (0, 1))(w, x), jax.grad(_penalty(native), (0, 1))(w, x)):
        assert _rel(a, b) < TOL


@pytest.mark.parametrize("k,s,padding", [(1, 2, "SAME"), (3, 1, "SAME"), (5, 2, "SAME"), (5, 1, "VALID"),
                                       (3, 2, ((2, 0), (1, 3)))])
def test_depthwise_is_shifted_slices_and_matches_native_in_all_orders(k, s, padding, monkeypatch):
    """Depthwise (groups = channels, multiplier 1, as EfficientNet): no convolution op left, same numbers."""
    native, fast = _pair(k, s, padding, groups=6)
    x, w, v = _data(k, 6, 6, groups=6, n=4, h=13, w=12)
    jaxpr = str(jax.make_jaxpr(jax.grad(_penalty(fast), (0, 1)))(w, x))
    assert ("conv_general_dilated" in jaxpr) != (jax.default_backend() == "cpu")
    assert _rel(jax.jit(fast)(x, w), native(x, w)) < TOL
    for a, b in zip(jax.jit(jax.grad(_objective(fast), (0, 1)))(x, w), jax.grad(_objective(native), (0, 1))(x, w)):
        assert _rel(a, b) < TOL
    for a, b in zip(jax.jit(jax.grad(_penalty(fast), (0, 1)))(w, x), jax.grad(_penalty(native), (0, 1))(w, x)):
        assert _rel(a, b) < TOL
    hvp = lambda conv: jax.jvp(jax.grad(lambda w: _objective(conv)(x, w)), (w,), (v,))[1]  # noqa: E731
    assert _rel(jax.jit(lambda: hvp(fast))(), hvp(native)) < TOL
    # a vmapped kernel (sweep members): member after member, or XLA's vmapped grouped convolution
    ws = jnp.stack([w, -0.5 * w, 2 * w])
    ref = jax.vmap(jax.grad(_objective(native), (0, 1)), (None, 0))(x, ws)
    for threshold in (1, 10**9):
        monkeypatch.setattr(C, "MEMBER_MAP_MIN_BATCH", threshold)
        got = jax.jit(jax.vmap(jax.grad(_objective(fast), (0, 1)), (None, 0)))(x, ws)
        for a, b in zip(got, ref):
            assert _rel(a, b) < TOL


@pytest.mark.parametrize("s", [1, 2])
def test_depthwise_7x7_first_order(s):
    native, fast = _pair(7, s, "SAME", groups=5)
    x, w, _ = _data(7, 5, 5, groups=5, n=2, h=12, w=11)
    assert _rel(jax.jit(fast)(x, w), native(x, w)) < TOL
    for a, b in zip(jax.jit(jax.grad(_objective(fast), (0, 1)))(x, w), jax.grad(_objective(native), (0, 1))(x, w)):
        assert _rel(a, b) < TOL


def test_plain_conv_takes_fast_path_on_cpu_and_option_turns_it_off():
    _, fast = _pair(3, 1, "SAME")
    x, w, _ = _data(3, 3, 4)
    jaxpr = str(jax.make_jaxpr(jax.grad(_penalty(fast)))(w, x))
    if jax.default_backend() == "cpu":
        assert "jaxbias_conv_weight_grad" in jaxpr and "jaxbias_conv_input_grad" in jaxpr
    with C.use_fast_cpu_conv(False):
        assert not C.fast_cpu_conv_enabled()
        off = str(jax.make_jaxpr(jax.grad(_penalty(fast)))(w, x))
    assert "jaxbias_conv" not in off
    assert C.fast_cpu_conv_enabled() == (jax.default_backend() == "cpu")
    with pytest.raises(TypeError, match="enabled must be a bool"):
        with C.use_fast_cpu_conv("no"):
            pass


def test_float64_and_dilated_convs_fall_back():
    x = jnp.ones((1, 5, 5, 2), jnp.float16)
    w = jnp.ones((3, 3, 2, 2), jnp.float16)
    assert "jaxbias_conv" not in str(jax.make_jaxpr(C.conv2d)(x, w))
    x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
    dil = lambda x, w: C.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=NHWC)
    assert "jaxbias_conv" not in str(jax.make_jaxpr(dil)(x32, w32))


@pytest.mark.parametrize("member_map", [True, False])
@pytest.mark.parametrize("k,s", [(3, 1), (3, 2), (1, 2)])
def test_vmap_over_activations_and_over_weights(k, s, member_map, monkeypatch):
    # a vmapped kernel runs member after member (lax.map of the fast primitives) or as XLA's vmapped op
    monkeypatch.setattr(C, "MEMBER_MAP_MIN_BATCH", 1 if member_map else 10**9)
    native, fast = _pair(k, s, "SAME")
    x, w, _ = _data(k, 3, 128)
    xs, ws = jnp.stack([x, 2 * x, -x]), jnp.stack([w, 0.5 * w, -w])
    g_fast, g_nat = jax.grad(_objective(fast), (0, 1)), jax.grad(_objective(native), (0, 1))
    for axes, args in (((0, None), (xs, w)), ((0, 0), (xs, ws)), ((None, 0), (x, ws))):
        got = jax.jit(jax.vmap(g_fast, in_axes=axes))(*args)
        ref = jax.vmap(g_nat, in_axes=axes)(*args)
        for a, b in zip(got, ref):
            assert _rel(a, b) < TOL
    # per-sample weight gradients (vmap over single examples) and a vmapped second-order penalty
    per = lambda conv: jax.vmap(lambda xi: jax.grad(_objective(conv), 1)(xi[None], w))(x)
    assert _rel(jax.jit(lambda: per(fast))(), per(native)) < TOL
    pen = lambda conv: jax.vmap(jax.grad(_penalty(conv)), (0, None))(ws, x)
    assert _rel(jax.jit(lambda: pen(fast))(), pen(native)) < TOL
    # which path ran: members mapped with the fast primitives inside, or XLA's (grouped) convolution
    jaxpr = str(jax.make_jaxpr(jax.vmap(g_fast, in_axes=(None, 0)))(x, ws))
    assert ("scan" in jaxpr and "jaxbias_conv" in jaxpr) == member_map
    assert ("conv_general_dilated" in jaxpr) != member_map


def test_eager_call_matches():
    native, fast = _pair(5, 2, "SAME")
    x, w, _ = _data(5, 3, 7)
    assert _rel(fast(x, w), native(x, w)) < TOL
    assert _rel(jax.grad(_objective(fast), 1)(x, w), jax.grad(_objective(native), 1)(x, w)) < TOL


def test_channel_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="input has 3 channels but the kernel expects 4"):
        C.conv2d(jnp.ones((1, 5, 5, 3)), jnp.ones((3, 3, 4, 2)))


@pytest.mark.parametrize("name,kwargs,shape", [
    ("simple_conv", dict(channels=(4, 8, 8, 16)), (2, 28, 28, 3)),
    # ~35 s of compilation (both paths, first and second order through every ResNet-18 layer): slow
    pytest.param("resnet18", dict(num_classes=5), (2, 32, 32, 3), marks=pytest.mark.slow),
])
def test_models_train_step_gradients_match_native(name, kwargs, shape):
    """A bundled model's loss gradient and an RRR-style second-order gradient, fast path vs XLA."""
    module = models.create(name, **kwargs)
    x = jax.random.uniform(jax.random.key(1), shape)
    y = jnp.arange(shape[0]) % 2
    params, state = models.init(module, jax.random.key(0), x[:1])

    def loss(p, x):
        logits, _ = module.apply({"params": p, **state}, x, train=False)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(shape[0]), y])

    def rrr(p):
        return jnp.sum(jax.grad(loss, 1)(p, x) ** 2)

    def both():
        return jax.grad(loss)(params, x), jax.grad(rrr)(params)

    fast = jax.jit(both)()
    with C.use_fast_cpu_conv(False):
        ref = jax.jit(both)()
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(ref)):
        assert _rel(a, b) < 1e-4
