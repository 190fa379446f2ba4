"""EnD regularizer against plain NumPy double loops of SPEC §4 and finite differences."""
from collections import defaultdict
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias.methods import end
from jaxbias.types import Aux, Batch, ModelOutput

VARIANTS = ("reference", "symmetric", "paper")


# --------------------------------------------------------------------------- #
# independent reference: loops over pairs, float64 NumPy
# --------------------------------------------------------------------------- #


def _gram(features):
    f = np.asarray(features, np.float64)
    norms = np.sqrt((f**2).sum(axis=1, keepdims=True))
    y = f / np.maximum(norms, 1e-12)
    return np.clip(y @ y.T, -1.0, 1.0)


def loop_terms(features, targets, biases, variant):
    """(R⊥, R∥) by explicit loops over the pairs, written from SPEC §4."""
    g = _gram(features)
    t = [int(v) for v in targets]
    b = [int(v) for v in biases]
    n = len(t)
    if variant in ("reference", "symmetric"):
        per_bias = defaultdict(float)
        m_perp = 0
        sim, m_par = 0.0, 0
        for i in range(n):
            for j in range(i):  # strictly lower triangle: i > j
                if b[i] == b[j]:
                    per_bias[b[i]] += g[i, j]
                    m_perp += 1
                cross = b[i] < b[j] if variant == "reference" else b[i] != b[j]
                if t[i] == t[j] and cross:
                    sim += (1.0 + g[i, j]) / 2.0
                    m_par += 1
        r_perp = sum(abs(v) for v in per_bias.values()) / m_perp if m_perp else 0.0
        r_par = 1.0 - sim / m_par if m_par else 0.0
        return r_perp, r_par

    # paper: per bias class, Σ_{i≠j} |g_ij| / n_b², mean over classes in the batch
    per_class = []
    any_pair = False
    for cls in sorted(set(b)):
        members = [i for i in range(n) if b[i] == cls]
        total = 0.0
        for i in members:
            for j in members:
                if i != j:
                    total += abs(g[i, j])
                    any_pair = True
        per_class.append(total / len(members) ** 2)
    r_perp = float(np.mean(per_class)) if any_pair else 0.0
    # entangle: per sample i, mean g over same-target other-bias partners
    per_sample = []
    for i in range(n):
        partners = [j for j in range(n) if t[j] == t[i] and b[j] != b[i]]
        if partners:
            per_sample.append(sum(g[i, j] for j in partners) / len(partners))
    r_par = 1.0 - float(np.mean(per_sample)) if per_sample else 0.0
    return r_perp, r_par


def loop_regularizer(features, targets, biases, alpha, beta, variant):
    r_perp, r_par = loop_terms(features, targets, biases, variant)
    return alpha * r_perp + beta * r_par


# --------------------------------------------------------------------------- #
# label patterns
# --------------------------------------------------------------------------- #


def _labels(kind, n, rng):
    if kind == "random":
        return rng.integers(0, 3, n), rng.integers(0, 3, n)
    if kind == "biased":  # mostly B(i) = T(i), as in Biased MNIST
        t = rng.integers(0, 4, n)
        return t, np.where(rng.uniform(size=n) < 0.8, t, rng.integers(0, 4, n))
    if kind == "single_bias":
        return rng.integers(0, 3, n), np.full(n, 2)
    if kind == "single_target":
        return np.full(n, 1), rng.integers(0, 3, n)
    if kind == "distinct_biases":
        return rng.integers(0, 2, n), rng.permutation(n)
    raise AssertionError(kind)


KINDS = ("random", "biased", "single_bias", "single_target", "distinct_biases")


def _inputs(seed, n, d, kind):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, d)).astype(np.float32)
    t, b = _labels(kind, n, rng)
    return feats, t.astype(np.int32), b.astype(np.int32)


# --------------------------------------------------------------------------- #
# value against the loops
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 2, 7, 64])
@pytest.mark.parametrize("d", [3, 16])
def test_matches_loop(variant, kind, n, d):
    for seed in range(3):
        feats, t, b = _inputs(seed, n, d, kind)
        terms = end.regularizer_terms(
            jnp.asarray(feats), jnp.asarray(t), jnp.asarray(b), alpha=0.3, beta=0.7, variant=variant
        )
        want_perp, want_par = loop_terms(feats, t, b, variant)
        assert terms.total.dtype == jnp.float32 and terms.total.shape == ()
        np.testing.assert_allclose(float(terms.r_perp), want_perp, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(terms.r_par), want_par, rtol=1e-5, atol=1e-6)
        value = end.regularizer(
            jnp.asarray(feats), jnp.asarray(t), jnp.asarray(b), alpha=0.3, beta=0.7, variant=variant
        )
        want = loop_regularizer(feats, t, b, 0.3, 0.7, variant)
        np.testing.assert_allclose(float(value), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_loop_references_are_not_trivial(variant):
    # A test that cannot fail is a defect: the random cases must exercise both terms.
    feats, t, b = _inputs(0, 64, 16, "biased")
    r_perp, r_par = loop_terms(feats, t, b, variant)
    assert r_perp > 1e-3 and r_par > 1e-3
    other = "paper" if variant != "paper" else "reference"
    assert not np.allclose(loop_terms(feats, t, b, other), (r_perp, r_par))


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_row_is_finite_and_matches_loop(variant):
    feats, t, b = _inputs(1, 7, 3, "random")
    feats[2] = 0.0
    got = end.regularizer_terms(jnp.asarray(feats), t, b, alpha=1.0, beta=1.0, variant=variant)
    want = loop_terms(feats, t, b, variant)
    np.testing.assert_allclose([float(got.r_perp), float(got.r_par)], want, rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda f: end.regularizer(f, t, b, alpha=1.0, beta=1.0, variant=variant))(
        jnp.asarray(feats)
    )
    assert np.all(np.isfinite(np.asarray(grad)))


# --------------------------------------------------------------------------- #
# empty terms: exactly 0, finite gradient
# --------------------------------------------------------------------------- #


def _value_and_grads(feats, t, b, variant):
    def f(x):
        terms = end.regularizer_terms(x, t, b, alpha=1.0, beta=1.0, variant=variant)
        return terms.total, terms

    (_, terms), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(feats))
    return terms, np.asarray(grad)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "kind,zero_perp,zero_par",
    [
        ("single_bias", False, True),  # no cross-bias pairs
        ("distinct_biases", True, False),  # no same-bias pairs
    ],
)
def test_empty_terms_are_exactly_zero(variant, kind, zero_perp, zero_par):
    feats, t, b = _inputs(3, 16, 5, kind)
    if kind == "distinct_biases":
        t = np.zeros_like(t)  # guarantee same-target cross-bias pairs
    terms, grad = _value_and_grads(feats, t, b, variant)
    assert (float(terms.r_perp) == 0.0) == zero_perp
    assert (float(terms.r_par) == 0.0) == zero_par
    assert np.all(np.isfinite(grad)) and np.any(grad != 0.0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_sample_and_no_pairs(variant):
    for feats, t, b in [
        (np.ones((1, 4), np.float32), np.array([0]), np.array([0])),
        # two samples, different targets and biases: no pair of either kind
        (np.eye(2, 4, dtype=np.float32), np.array([0, 1]), np.array([0, 1])),
        (np.zeros((0, 4), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int32)),
    ]:
        terms, grad = _value_and_grads(feats, t, b, variant)
        assert float(terms.total) == 0.0 and float(terms.r_perp) == 0.0 and float(terms.r_par) == 0.0
        assert np.all(np.isfinite(grad)) and np.all(grad == 0.0)


# --------------------------------------------------------------------------- #
# gradients
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradient_matches_central_differences_of_loop(variant):
    rng = np.random.default_rng(5)
    n, d = 9, 4
    feats = rng.normal(size=(n, d))
    t = rng.integers(0, 2, n)
    b = rng.integers(0, 3, n)
    alpha, beta = 0.6, 1.3
    with jax.enable_x64(True):
        grad = jax.grad(
            lambda f: end.regularizer(f, jnp.asarray(t), jnp.asarray(b), alpha=alpha, beta=beta, variant=variant)
        )(jnp.asarray(feats, jnp.float64))
        assert grad.dtype == jnp.float64
        grad = np.asarray(grad)
    eps = 1e-6
    fd = np.zeros_like(feats)
    for i in range(n):
        for k in range(d):
            up, down = feats.copy(), feats.copy()
            up[i, k] += eps
            down[i, k] -= eps
            fd[i, k] = (
                loop_regularizer(up, t, b, alpha, beta, variant)
                - loop_regularizer(down, t, b, alpha, beta, variant)
            ) / (2 * eps)
    assert np.abs(fd).max() > 1e-3  # the check has something to compare
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------- #
# jit
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("counts", [dict(num_biases=4, num_classes=4), {}])
def test_jit_equals_eager(variant, counts):
    feats, t, b = _inputs(2, 64, 16, "biased")
    fn = partial(end.regularizer, alpha=0.2, beta=0.5, variant=variant, **counts)
    eager = fn(jnp.asarray(feats), jnp.asarray(t), jnp.asarray(b))
    jitted = jax.jit(fn)
    value = jitted(jnp.asarray(feats), jnp.asarray(t), jnp.asarray(b))
    np.testing.assert_allclose(float(value), float(eager), rtol=1e-5)
    grad_eager = jax.grad(fn)(jnp.asarray(feats), jnp.asarray(t), jnp.asarray(b))
    grad_jit = jax.jit(jax.grad(fn))(jnp.asarray(feats), jnp.asarray(t), jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(grad_jit), np.asarray(grad_eager), rtol=1e-5, atol=1e-7)
    # new label values, same shapes: no recompilation
    jitted(jnp.asarray(feats), jnp.asarray(t[::-1].copy()), jnp.asarray(b))
    assert jitted._cache_size() == 1


def test_traced_weights_under_vmap():
    feats, t, b = _inputs(4, 16, 8, "random")
    weights = jnp.array([0.0, 0.5, 2.0])
    swept = jax.vmap(lambda a: end.regularizer(feats, t, b, alpha=a, beta=1.0))(weights)
    for a, v in zip(weights, swept):
        np.testing.assert_allclose(float(v), loop_regularizer(feats, t, b, float(a), 1.0, "reference"), rtol=1e-5)


# --------------------------------------------------------------------------- #
# properties
# --------------------------------------------------------------------------- #


def test_reference_order_quirk_sums_to_symmetric():
    # Reversing the batch swaps which order of each cross-bias pair counts, so the
    # two reference R∥ sums add up to the symmetric sum over all cross-bias pairs.
    feats, t, b = _inputs(6, 40, 8, "random")
    rev = slice(None, None, -1)

    def sum_and_count(f, tt, bb, variant):
        r_par = float(end.regularizer_terms(f, tt, bb, alpha=0.0, beta=1.0, variant=variant).r_par)
        strict = (lambda x, y: x < y) if variant == "reference" else (lambda x, y: x != y)
        m = sum(tt[i] == tt[j] and strict(bb[i], bb[j]) for i in range(len(tt)) for j in range(i))
        return m * (1.0 - r_par), m

    s1, m1 = sum_and_count(feats, t, b, "reference")
    s2, m2 = sum_and_count(feats[rev], t[rev], b[rev], "reference")
    s, m = sum_and_count(feats, t, b, "symmetric")
    assert m1 + m2 == m and m1 > 0 and m2 > 0
    np.testing.assert_allclose(s1 + s2, s, rtol=1e-5)


@pytest.mark.parametrize("variant", ["symmetric", "paper"])
def test_order_invariant_variants(variant):
    feats, t, b = _inputs(7, 32, 8, "random")
    perm = np.random.default_rng(0).permutation(32)
    a = end.regularizer(feats, t, b, alpha=1.0, beta=1.0, variant=variant)
    p = end.regularizer(feats[perm], t[perm], b[perm], alpha=1.0, beta=1.0, variant=variant)
    np.testing.assert_allclose(float(a), float(p), rtol=1e-5)


def _one_hot_features(labels, d):
    return np.eye(d, dtype=np.float32)[labels] + 0.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_semantics(variant):
    t = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2], np.int32)
    # descending bias order: with ascending order the reference quirk (i > j and
    # B(i) < B(j)) would leave no entangling pair at all
    b = np.array([2, 2, 2, 1, 1, 1, 0, 0, 0], np.int32)
    terms = partial(end.regularizer_terms, alpha=1.0, beta=1.0, variant=variant)
    # identical features within each bias class: maximal disentangling penalty
    same_within_bias = _one_hot_features(b, 9) * 3.0
    r_same = float(terms(same_within_bias, t, b).r_perp)
    if variant == "paper":  # |g| = 1 on the n_b(n_b − 1) off-diagonal pairs of n_b² entries
        np.testing.assert_allclose(r_same, 6 / 9, rtol=1e-6)
    else:
        np.testing.assert_allclose(r_same, 1.0, rtol=1e-6)
    # orthogonal features within each bias class: smaller (here 0)
    orthogonal = _one_hot_features(np.arange(9), 9)
    r_orth = float(terms(orthogonal, t, b).r_perp)
    assert r_orth < r_same and r_orth == pytest.approx(0.0, abs=1e-7)
    # features identical within each target class (across biases): R∥ = 0
    aligned = _one_hot_features(t, 9) * 0.5
    np.testing.assert_allclose(float(terms(aligned, t, b).r_par), 0.0, atol=1e-6)
    # same-target features orthogonal across biases: R∥ > 0
    assert float(terms(orthogonal, t, b).r_par) > 0.4


def test_reference_anti_aligned_same_target_gives_one():
    t = np.array([0, 0], np.int32)
    b = np.array([1, 0], np.int32)  # i=1 > j=0 with B(1)=0 < B(0)=1: one pair
    feats = np.array([[1.0, 0.0], [-2.0, 0.0]], np.float32)
    r = end.regularizer_terms(feats, t, b, alpha=1.0, beta=1.0)
    assert float(r.r_par) == pytest.approx(1.0)
    # opposite order of the same pair: the reference quirk drops it
    r = end.regularizer_terms(feats, t, b[::-1].copy(), alpha=1.0, beta=1.0)
    assert float(r.r_par) == 0.0


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #

_F = np.ones((4, 3), np.float32)
_L = np.array([0, 1, 0, 1], np.int32)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(features=np.ones((4, 3, 2), np.float32)), r"features.*rank 2.*\(4, 3, 2\)"),
        (dict(features=np.ones(4, np.float32)), r"features.*rank 2"),
        (dict(features=np.ones((4, 3), np.int32)), r"features.*floating.*int32"),
        (dict(targets=np.array([0, 1, 0], np.int32)), r"targets.*\(3,\).*4 rows"),
        (dict(biases=np.array([0, 1, 0, 1, 1], np.int32)), r"biases.*\(5,\).*4 rows"),
        (dict(targets=np.array([0, -1, 0, 1], np.int32)), r"targets.*non-negative"),
        (dict(biases=np.array([0, 1, -3, 1], np.int32)), r"biases.*non-negative"),
        (dict(targets=np.array([0.0, 1.0, 0.0, 1.0])), r"targets.*integer dtype.*float"),
        (dict(biases=np.array([True, False, True, True])), r"biases.*integer dtype.*bool"),
        (dict(biases=np.ones((4, 1), np.int32)), r"biases.*rank 1"),
        (dict(variant="paper2"), r"variant.*'paper2'"),
        (dict(alpha=-0.1), r"alpha.*non-negative"),
        (dict(beta=float("nan")), r"beta.*non-negative"),
        (dict(biases=np.array([0, 1, 4, 1], np.int32), num_biases=4), r"biases.*num_biases=4"),
        (dict(targets=np.array([0, 1, 9, 1], np.int32), num_classes=3), r"targets.*num_classes=3"),
        (dict(num_classes=0), r"num_classes.*positive"),
    ],
)
def test_bad_input(kwargs, match):
    args = dict(features=_F, targets=_L, biases=_L, alpha=0.1, beta=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        end.regularizer(args.pop("features"), args.pop("targets"), args.pop("biases"), **args)


def test_bad_input_under_jit_is_caught_at_trace_time():
    with pytest.raises(ValueError, match="features"):
        jax.jit(lambda f: end.regularizer(f, _L, _L, alpha=0.1, beta=0.1))(np.ones((4, 3, 2), np.float32))


def test_hparams():
    hp = end.Hparams()
    assert (hp.alpha, hp.beta, hp.variant, hp.layer) == (0.1, 0.1, "reference", "features")
    with pytest.raises(ValueError, match="variant"):
        end.Hparams(variant="nope")
    with pytest.raises(ValueError, match="alpha"):
        end.Hparams(alpha=-1.0)


# --------------------------------------------------------------------------- #
# loss
# --------------------------------------------------------------------------- #


def _fake_model(layer_shape_fn=None):
    """A linear model whose "features" are the inputs times a matrix."""

    def model(params, x, *, perturb=None, edit=None):
        feats = x @ params["w1"]
        acts = {"features": feats if layer_shape_fn is None else layer_shape_fn(feats)}
        return ModelOutput(feats @ params["w2"], acts, {"count": jnp.ones(())})

    return model


def _fake_batch():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(12, 5)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 12), jnp.int32)
    b = jnp.asarray(rng.integers(0, 3, 12), jnp.int32)
    params = {
        "w1": jnp.asarray(rng.normal(size=(5, 6)), jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32),
    }
    return params, Batch(x, y, b)


def test_loss_is_ce_plus_regularizer():
    params, batch = _fake_batch()
    hp = end.Hparams(alpha=0.4, beta=0.9, variant="symmetric", num_biases=3, num_classes=3)
    value, aux = end.loss(params, end.init(), batch, jax.random.key(0), model=_fake_model(), hp=hp)
    assert isinstance(aux, Aux) and set(aux.metrics) == {"ce", "end", "r_perp", "r_par"}
    assert aux.state == {"count": 1.0}
    feats = np.asarray(batch.x @ params["w1"])
    logits = feats @ np.asarray(params["w2"])
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    ce = -np.mean(logp[np.arange(12), np.asarray(batch.y)])
    r_perp, r_par = loop_terms(feats, batch.y, batch.bias, "symmetric")
    np.testing.assert_allclose(float(aux.metrics["ce"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(aux.metrics["r_perp"]), r_perp, rtol=1e-5)
    np.testing.assert_allclose(float(aux.metrics["r_par"]), r_par, rtol=1e-5)
    np.testing.assert_allclose(float(aux.metrics["end"]), 0.4 * r_perp + 0.9 * r_par, rtol=1e-5)
    np.testing.assert_allclose(float(value), ce + 0.4 * r_perp + 0.9 * r_par, rtol=1e-5)


def test_loss_bad_layer():
    params, batch = _fake_batch()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"acts\['features'\].*\(12, 2, 3\)"):
        end.loss(params, end.init(), batch, key, model=_fake_model(lambda f: f.reshape(12, 2, 3)), hp=end.Hparams())
    with pytest.raises(ValueError, match="hp.layer='block3'"):
        end.loss(params, end.init(), batch, key, model=_fake_model(), hp=end.Hparams(layer="block3"))
    with pytest.raises(ValueError, match="batch.bias"):
        end.loss(params, end.init(), batch._replace(bias=None), key, model=_fake_model(), hp=end.Hparams())
