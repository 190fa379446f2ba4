"""LRP against an explicit NumPy redistribution, conservation, rule properties, canonization, conversion."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import explain, models
from jaxbias.explain import (
    Activation,
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    MaxPool,
    Residual,
)

EPS = 1e-6


# ---------------------------------------------------------------- NumPy reference (loops, one sample)

def np_fold(graph):
    out = []
    for layer in graph:
        if isinstance(layer, Residual):
            out.append(layer._replace(body=tuple(np_fold(layer.body)), shortcut=tuple(np_fold(layer.shortcut))))
        elif isinstance(layer, BatchNorm) and out and isinstance(out[-1], (Conv, Dense)):
            prev = out.pop()
            k = np.asarray(layer.scale) / np.sqrt(np.asarray(layer.var) + layer.eps)
            b = np.zeros_like(k) if prev.bias is None else np.asarray(prev.bias)
            out.append(prev._replace(kernel=np.asarray(prev.kernel) * k,
                                     bias=(b - np.asarray(layer.mean)) * k + np.asarray(layer.bias)))
        else:
            out.append(layer)
    return out


def _pads(layer, h, w):
    if layer.padding == "VALID":
        return 0, 0
    (pt, _), (pl, _) = layer.padding
    return pt, pl


def conv_links(layer, shape):
    """Every (input index, output index, weight) of a convolution, by explicit loops."""
    h, w, cin = shape
    k = np.asarray(layer.kernel)
    kh, kw, _, cout = k.shape
    sh, sw = layer.strides
    pt, pl = _pads(layer, h, w)
    if layer.padding == "VALID":
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    else:
        (pt, pb), (pl, pr) = layer.padding
        oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    links = []
    for i in range(oh):
        for j in range(ow):
            for co in range(cout):
                for di in range(kh):
                    for dj in range(kw):
                        r, c = i * sh + di - pt, j * sw + dj - pl
                        if 0 <= r < h and 0 <= c < w:
                            for ci in range(cin):
                                links.append(((r, c, ci), (i, j, co), k[di, dj, ci, co]))
    return links, (oh, ow, cout)


def dense_links(layer, shape):
    k = np.asarray(layer.kernel)
    return [((i,), (o,), k[i, o]) for i in range(k.shape[0]) for o in range(k.shape[1])], (k.shape[1],)


def pool_links(layer, shape):
    h, w, c = shape
    wh, ww = layer.window
    sh, sw = layer.strides
    oh, ow = (h - wh) // sh + 1, (w - ww) // sw + 1
    return [((i * sh + di, j * sw + dj, ch), (i, j, ch), 1.0 / (wh * ww)) for i in range(oh) for j in range(ow)
            for ch in range(c) for di in range(wh) for dj in range(ww)], (oh, ow, c)


def np_forward_layer(layer, a):
    if isinstance(layer, (Conv, Dense)):
        links, shape = (conv_links if isinstance(layer, Conv) else dense_links)(layer, a.shape)
        z = np.zeros(shape)
        for src, dst, wt in links:
            z[dst] += a[src] * wt
        if layer.bias is not None:
            z = z + np.asarray(layer.bias)
        return z
    if isinstance(layer, BatchNorm):
        return (a - np.asarray(layer.mean)) / np.sqrt(np.asarray(layer.var) + layer.eps) * np.asarray(
            layer.scale) + np.asarray(layer.bias)
    if isinstance(layer, Activation):
        return np.maximum(a, 0) if layer.kind == "relu" else np.tanh(a)
    if isinstance(layer, (AvgPool, MaxPool)):
        links, shape = pool_links(layer, a.shape)
        z = np.zeros(shape) if isinstance(layer, AvgPool) else np.full(shape, -np.inf)
        for src, dst, wt in links:
            z[dst] = z[dst] + a[src] * wt if isinstance(layer, AvgPool) else max(z[dst], a[src])
        return z
    if isinstance(layer, GlobalAvgPool):
        return a.mean(axis=(0, 1))
    if isinstance(layer, Flatten):
        return a.reshape(-1)
    if isinstance(layer, Residual):
        return np_forward(layer.body, a) + np_forward(layer.shortcut, a)
    raise AssertionError(layer)


def np_forward(graph, a):
    for layer in graph:
        a = np_forward_layer(layer, a)
    return a


def stab(z):
    return z + EPS * np.where(z >= 0, 1.0, -1.0)


def np_redistribute(links, a, r_out, rule, bias=None):
    """R_in[j] = Σ_k c_jk / Σ_j' c_j'k · R_k with the rule's contribution c_jk."""
    def contrib(src, wt):
        if rule == "epsilon":
            return a[src] * wt
        if rule.startswith("zplus"):
            return max(a[src], 0) * max(wt, 0) + min(a[src], 0) * min(wt, 0)
        return 1.0  # flat

    denom = np.zeros(r_out.shape)
    for src, dst, wt in links:
        denom[dst] += contrib(src, wt)
    if rule == "epsilon":
        if bias is not None:
            denom = denom + bias
        denom = stab(denom)
    elif rule.startswith("zplus"):
        if rule == "zplus" and bias is not None:  # zennit's ZPlus: the bias's positive part joins z⁺
            denom = denom + np.maximum(bias, 0)
        denom = denom + EPS
    else:
        denom = np.maximum(denom, EPS)
    r_in = np.zeros(a.shape)
    for src, dst, wt in links:
        r_in[src] += contrib(src, wt) / denom[dst] * r_out[dst]
    return r_in


def np_lrp_graph(graph, x, r, rules):
    inputs = []
    a = x
    for layer in graph:
        inputs.append(a)
        a = np_forward_layer(layer, a)
    for layer, a in zip(reversed(graph), reversed(inputs)):
        if isinstance(layer, Conv):
            links, _ = conv_links(layer, a.shape)
            r = np_redistribute(links, a, r, rules[id(layer)], None if layer.bias is None else np.asarray(layer.bias))
        elif isinstance(layer, Dense):
            links, _ = dense_links(layer, a.shape)
            r = np_redistribute(links, a, r, rules[id(layer)], None if layer.bias is None else np.asarray(layer.bias))
        elif isinstance(layer, AvgPool):
            links, _ = pool_links(layer, a.shape)
            r = np_redistribute(links, a, r, "epsilon")
        elif isinstance(layer, GlobalAvgPool):
            h, w, c = a.shape
            r = a / (h * w) / stab(a.mean(axis=(0, 1))) * r
        elif isinstance(layer, MaxPool):
            links, shape = pool_links(layer, a.shape)
            z = np_forward_layer(layer, a)
            r_in = np.zeros(a.shape)
            taken = set()
            for src, dst, _ in links:
                if a[src] == z[dst] and dst not in taken:
                    r_in[src] += r[dst]
                    taken.add(dst)
            r = r_in
        elif isinstance(layer, Flatten):
            r = r.reshape(a.shape)
        elif isinstance(layer, Activation):
            pass
        elif isinstance(layer, Residual):
            fb, fs = np_forward(layer.body, a), np_forward(layer.shortcut, a)
            s = r / stab(fb + fs)
            r = np_lrp_graph(layer.body, a, fb * s, rules) + np_lrp_graph(layer.shortcut, a, fs * s, rules)
        else:
            raise AssertionError(layer)
    return r


def np_lrp(graph, x, target, zplus="zplus"):
    g = np_fold(graph)
    linear = []

    def walk(gr):
        for layer in gr:
            if isinstance(layer, (Conv, Dense)):
                linear.append(layer)
            if isinstance(layer, Residual):
                walk(layer.body)
                walk(layer.shortcut)

    walk(g)
    rules = {id(layer): ("epsilon" if isinstance(layer, Dense) else zplus) for layer in linear}
    rules[id(linear[0])] = "flat"
    out = []
    for n in range(x.shape[0]):
        logits = np_forward(g, x[n])
        r = np.zeros_like(logits)
        r[target[n]] = logits[target[n]]
        out.append(np_lrp_graph(g, x[n], r, rules))
    return np.stack(out)


# ---------------------------------------------------------------- test networks

def _rand(rng, *shape, scale=0.5):
    return jnp.asarray(rng.normal(size=shape) * scale)


def _bn(rng, c, name):
    return BatchNorm(_rand(rng, c, scale=0.3) + 1.0, _rand(rng, c, scale=0.1), _rand(rng, c, scale=0.1),
                     jnp.asarray(rng.uniform(0.5, 1.5, c)), 1e-5, name)


def conv_net(rng, zero_bias=False):
    b = (lambda n: None) if zero_bias else (lambda n: _rand(rng, n, scale=0.1))
    return [
        Conv(_rand(rng, 3, 3, 3, 4), b(4), (1, 1), ((1, 1), (1, 1)), "c1"),
        _bn(rng, 4, "bn1") if not zero_bias else BatchNorm(jnp.ones(4) * 1.3, jnp.zeros(4), jnp.zeros(4),
                                                           jnp.ones(4), 1e-5, "bn1"),
        Activation("relu", "a1"),
        Conv(_rand(rng, 3, 3, 4, 5), b(5), (2, 2), ((1, 1), (1, 1)), "c2"),
        Activation("relu", "a2"),
        MaxPool((2, 2), (2, 2), "mp"),
        Conv(_rand(rng, 1, 1, 5, 3), b(3), (1, 1), "VALID", "c3"),
        Activation("relu", "a3"),
        AvgPool((1, 1), (1, 1), "ap"),
        GlobalAvgPool("gap"),
        Dense(_rand(rng, 3, 6), b(6), "d1"),
        Activation("relu", "a4"),
        Dense(_rand(rng, 6, 4), b(4), "d2"),
    ]


def residual_net(rng, zero_bias=False):
    b = (lambda n: None) if zero_bias else (lambda n: _rand(rng, n, scale=0.1))
    return [
        Conv(_rand(rng, 3, 3, 2, 4), b(4), (1, 1), ((1, 1), (1, 1)), "stem"),
        Activation("relu", "a0"),
        Residual((Conv(_rand(rng, 3, 3, 4, 4), b(4), (1, 1), ((1, 1), (1, 1)), "r1c1"), Activation("relu", "r1a"),
                  Conv(_rand(rng, 3, 3, 4, 4), b(4), (1, 1), ((1, 1), (1, 1)), "r1c2")), (), "res1"),
        Activation("relu", "a1"),
        Residual((Conv(_rand(rng, 3, 3, 4, 6), b(6), (2, 2), ((1, 1), (1, 1)), "r2c1"),),
                 (Conv(_rand(rng, 1, 1, 4, 6), b(6), (2, 2), "VALID", "r2sc"),), "res2"),
        Activation("relu", "a2"),
        GlobalAvgPool("gap"),
        Dense(_rand(rng, 6, 3), b(3), "fc"),
    ]


@pytest.mark.parametrize("zplus_bias", [True, False])
@pytest.mark.parametrize("make,shape", [(conv_net, (2, 8, 8, 3)), (residual_net, (2, 6, 6, 2))])
def test_lrp_matches_numpy_redistribution(make, shape, zplus_bias):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        graph = make(rng)
        x = jnp.asarray(rng.uniform(0, 1, shape))
        target = np.array([1, 2])
        got = np.asarray(explain.lrp(graph, x, target=jnp.asarray(target), epsilon=EPS, zplus_bias=zplus_bias))
        want = np_lrp(graph, np.asarray(x), target, zplus="zplus" if zplus_bias else "zplus_nobias")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
        if make is conv_net:  # biases with positive parts: the two readings differ
            other = np_lrp(graph, np.asarray(x), target, zplus="zplus_nobias" if zplus_bias else "zplus")
            assert np.max(np.abs(other - want)) > 1e-3 * np.max(np.abs(want))
        # the NumPy forward pass (folded) is the network too
        np.testing.assert_allclose(np_forward(np_fold(graph), np.asarray(x[0])),
                                   np.asarray(explain.forward(graph, x))[0], rtol=1e-6, atol=1e-9)


# z⁺ conserves where z⁺ > 0; after a residual split a branch can receive negative relevance at a unit whose
# z⁺ is 0, which z⁺ then drops: the residual net is checked with the epsilon rule for its convolutions.
@pytest.mark.parametrize("make,shape,conv", [(conv_net, (3, 8, 8, 3), "zplus"), (residual_net, (3, 6, 6, 2), "epsilon")])
def test_conservation_without_biases(make, shape, conv):
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        graph = make(rng, zero_bias=True)
        x = jnp.asarray(rng.uniform(0, 1, shape))
        logits = explain.forward(graph, x)
        target = jnp.argmax(logits, -1)
        rel = explain.lrp(graph, x, epsilon=1e-12, conv=conv)  # target=None: the predicted class
        sums = np.asarray(jnp.sum(rel, axis=tuple(range(1, rel.ndim))))
        np.testing.assert_allclose(sums, np.asarray(logits[jnp.arange(shape[0]), target]), rtol=1e-6)


def test_zplus_gives_non_negative_relevance_and_flat_spreads_uniformly():
    from jaxbias.explain.lrp import _flat, _zplus

    rng = np.random.default_rng(2)
    conv = Conv(_rand(rng, 3, 3, 2, 4), _rand(rng, 4), (1, 1), ((1, 1), (1, 1)), "c")
    a = jnp.asarray(rng.uniform(0, 1, (2, 5, 5, 2)))
    r = jnp.asarray(rng.uniform(0, 1, (2, 5, 5, 4)))
    assert float(jnp.min(_zplus(conv, a, r, 1e-9))) >= 0.0
    # without the bias in z⁺ it conserves what it receives; zennit's reading keeps b⁺'s share back
    np.testing.assert_allclose(float(jnp.sum(_zplus(conv, a, r, 1e-12, bias=False))), float(jnp.sum(r)), rtol=1e-5)
    assert float(jnp.max(conv.bias)) > 0
    assert float(jnp.sum(_zplus(conv, a, r, 1e-12))) < float(jnp.sum(r)) * (1 - 1e-3)
    # a conv whose biases are all ≤ 0 gives the same map either way (only b⁺ enters)
    neg = conv._replace(bias=-jnp.abs(conv.bias))
    np.testing.assert_array_equal(np.asarray(_zplus(neg, a, r, 1e-9)), np.asarray(_zplus(neg, a, r, 1e-9, bias=False)))
    dense = Dense(_rand(rng, 7, 3), _rand(rng, 3), "d")
    rd = jnp.asarray(rng.normal(size=(2, 3)))
    flat = _flat(dense, jnp.asarray(rng.normal(size=(2, 7))), rd, 1e-12)
    np.testing.assert_allclose(np.asarray(flat), np.repeat(np.asarray(rd.sum(1, keepdims=True)) / 7, 7, 1),
                               rtol=1e-6)
    # flat ignores the input values and the weights entirely
    flat2 = _flat(dense._replace(kernel=dense.kernel * 3), jnp.asarray(rng.normal(size=(2, 7))), rd, 1e-12)
    np.testing.assert_allclose(np.asarray(flat2), np.asarray(flat), rtol=1e-6)


def test_folding_batchnorm_keeps_the_function():
    rng = np.random.default_rng(3)
    for graph, shape in ((conv_net(rng), (2, 8, 8, 3)), (residual_net(rng), (2, 6, 6, 2))):
        graph = [layer._replace(kernel=layer.kernel.astype(jnp.float32)) if hasattr(layer, "kernel") else layer
                 for layer in graph]
        x = jnp.asarray(rng.uniform(0, 1, shape), jnp.float32)
        folded = explain.fold_batchnorm(graph)
        assert not any(isinstance(layer, BatchNorm) for layer in folded)
        np.testing.assert_allclose(np.asarray(explain.forward(folded, x)), np.asarray(explain.forward(graph, x)),
                                   rtol=1e-5, atol=1e-5)


def _bundled(name, **kw):
    module = models.create(name, **kw)
    x = jnp.asarray(np.random.default_rng(4).uniform(0, 1, (3, 12, 12, 3)), jnp.float32)
    params, state = models.init(module, jax.random.key(0), x)
    if state:  # non-trivial running statistics
        rng = np.random.default_rng(5)
        state = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype), state)
    return module, {"params": params, **state}, x


@pytest.mark.parametrize("name,kw", [("simple_conv", dict(channels=(3, 4, 5, 6), kernel_size=3, last_activation="tanh")),
                                     ("mlp", dict(hidden=(8, 6)))])
def test_to_graph_reproduces_the_model(name, kw):
    module, variables, x = _bundled(name, **kw)
    graph = explain.to_graph(module, variables)
    want = module.apply(variables, x, train=False)[0]
    np.testing.assert_allclose(np.asarray(explain.forward(graph, x)), np.asarray(want), rtol=1e-5, atol=1e-5)
    rel = explain.make_lrp(graph)(x, jnp.array([0, 1, 2]))
    assert rel.shape == x.shape and bool(jnp.all(jnp.isfinite(rel)))
    np.testing.assert_allclose(np.asarray(rel), np.asarray(explain.lrp(graph, x, target=jnp.array([0, 1, 2]))),
                               rtol=1e-5, atol=1e-7)


def test_gradient_and_grad_times_input_against_jax_grad_per_sample():
    module, variables, x = _bundled("simple_conv", channels=(3, 4, 5, 6), kernel_size=3)
    f = lambda xx: module.apply(variables, xx, train=False)[0]  # noqa: E731
    target = jnp.array([2, 0, 1])
    g = explain.gradient(f, x, target=target)
    for n in range(3):
        want = jax.grad(lambda xi: f(xi[None])[0, target[n]])(x[n])
        np.testing.assert_allclose(np.asarray(g[n]), np.asarray(want), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(explain.grad_times_input(f, x, target=target)), np.asarray(x * g),
                               rtol=1e-6)


def test_bad_input_names_the_layer():
    rng = np.random.default_rng(6)
    x = jnp.ones((1, 4))
    with pytest.raises(ValueError, match="gelu"):
        explain.lrp([Dense(_rand(rng, 4, 3), None, "d"), Activation("gelu", "act_gelu")], x)

    class Softmax:
        name = "softmax_head"

    with pytest.raises(ValueError, match="softmax_head"):
        explain.lrp([Dense(_rand(rng, 4, 3), None, "d"), Softmax()], x)
    with pytest.raises(ValueError, match=r"'r2'\)\.body\[0\].*softmax_head"):
        explain.check_graph([Residual((Softmax(),), (), "r2")])
    with pytest.raises(ValueError, match="target"):
        explain.lrp([Dense(_rand(rng, 4, 3), None, "d")], x, target=jnp.array([0, 1]))
    with pytest.raises(ValueError, match="first"):
        explain.lrp([Dense(_rand(rng, 4, 3), None, "d")], x, first="alpha")

    class Other:
        pass

    with pytest.raises(ValueError, match="Other"):
        explain.to_graph(Other(), {"params": {}})
