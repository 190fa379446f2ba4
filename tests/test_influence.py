"""HVPs against finite differences; inverse HVPs against a dense solve."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias.influence import hvp, inverse_hvp, select


def _problem(seed=0, n=60, d=5, l2=0.1):
    """L2-regularised logistic regression with a small hidden layer group that stays fixed."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, n), jnp.float32)
    params = {"w": jnp.asarray(rng.normal(size=d) * 0.3, jnp.float32), "b": jnp.float32(0.1),
              "pre": jnp.asarray(np.eye(d) + 0.1 * rng.normal(size=(d, d)), jnp.float32)}

    def f(p):
        z = jnp.tanh(x @ p["pre"]) @ p["w"] + p["b"]
        nll = jnp.mean(jnp.logaddexp(0.0, z) - y * z)
        return nll + 0.5 * l2 * (jnp.sum(p["w"] ** 2) + p["b"] ** 2)

    return f, params


def test_hvp_matches_finite_differences_of_the_gradient():
    f, params = _problem()
    rng = np.random.default_rng(1)
    v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=np.shape(a)), jnp.float32), params)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), v)
        g = jax.grad(f)
        eps = 1e-5
        fd = jax.tree.map(lambda a, b: (a - b) / (2 * eps),
                          g(jax.tree.map(lambda p, d: p + eps * d, p64, v64)),
                          g(jax.tree.map(lambda p, d: p - eps * d, p64, v64)))
        got = hvp(f, p64, v64)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(fd)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("subset", [None, ("w", "b")])
@pytest.mark.parametrize("method", ["cg", "lissa"])
def test_iterative_solvers_match_the_dense_solve(method, subset):
    f, params = _problem()
    block = select(params, subset)
    rng = np.random.default_rng(2)
    v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=np.shape(a)), jnp.float32), block)
    damping = 0.2  # the full problem (with the tanh layer) is indefinite without it
    exact = inverse_hvp(f, params, v, method="exact", damping=damping, subset=subset)
    got = inverse_hvp(f, params, v, method=method, damping=damping, subset=subset)
    e = np.concatenate([np.ravel(a) for a in jax.tree.leaves(exact)])
    x = np.concatenate([np.ravel(a) for a in jax.tree.leaves(got)])
    assert np.linalg.norm(x - e) <= 1e-4 * np.linalg.norm(e)


def test_exact_against_numpy_hessian():
    f, params = _problem()
    block = select(params, ("w", "b"))
    v = {"w": jnp.arange(5, dtype=jnp.float32), "b": jnp.float32(1.0)}
    got = inverse_hvp(f, params, v, method="exact", subset=("w", "b"))
    # Hessian of the (w, b) block by central differences of the gradient, solved with NumPy
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(block)
    grad = jax.grad(lambda q: f({**params, **unravel(q)}))
    with jax.enable_x64(True):
        flat64 = jnp.asarray(flat, jnp.float64)
        eps = 1e-4
        cols = [(np.asarray(grad(flat64 + eps * e)) - np.asarray(grad(flat64 - eps * e))) / (2 * eps)
                for e in np.eye(flat.size)]
    h = np.array(cols).T
    ref = np.linalg.solve(0.5 * (h + h.T), np.asarray(ravel_pytree(v)[0], np.float64))
    np.testing.assert_allclose(ravel_pytree(got)[0], ref, rtol=1e-3, atol=1e-4)


def test_not_positive_definite_needs_damping():
    def f(p):  # a saddle: eigenvalues +1 and -1
        return 0.5 * (p["a"][0] ** 2 - p["a"][1] ** 2)

    params = {"a": jnp.zeros(2)}
    v = {"a": jnp.ones(2)}
    for method in ("exact", "cg", "lissa"):
        with pytest.raises(ValueError, match="damping"):
            inverse_hvp(f, params, v, method=method)
    # enough damping makes it positive definite: (H + 2I)⁻¹ 1 = (1/3, 1)
    x = inverse_hvp(f, params, v, method="exact", damping=2.0)
    np.testing.assert_allclose(x["a"], [1 / 3, 1.0], rtol=1e-6)


def test_bad_input():
    f, params = _problem()
    with pytest.raises(ValueError, match="subset"):
        inverse_hvp(f, params, {"nope": jnp.ones(1)}, subset=("nope",))
    with pytest.raises(ValueError, match="structure"):
        inverse_hvp(f, params, {"w": jnp.ones(5)}, subset=("w", "b"))
    with pytest.raises(ValueError, match="shape"):
        inverse_hvp(f, params, {"w": jnp.ones(4)}, subset=("w",))
    with pytest.raises(ValueError, match="damping"):
        inverse_hvp(f, params, {"w": jnp.ones(5)}, subset=("w",), damping=-1.0)
    with pytest.raises(ValueError, match="method"):
        inverse_hvp(f, params, {"w": jnp.ones(5)}, subset=("w",), method="qr")


def _mlp_logits(p, x):
    return jnp.tanh(x @ p["h"]) @ p["out"] + p["b"]


def _mlp(seed=0, n=12, d=3, k=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    params = {"h": rng.normal(size=(d, 5)) * 0.7, "out": rng.normal(size=(5, k)) * 0.7, "b": rng.normal(size=k) * 0.1}
    return x, params


def test_ggn_equals_explicit_jacobian_product():
    from jax.flatten_util import ravel_pytree

    from jaxbias.influence import ggn_vp

    with jax.enable_x64(True):
        x, params = _mlp()
        params = jax.tree.map(jnp.asarray, params)
        flat, unravel = ravel_pytree(params)
        # independent reference: G = (1/N) Σ J_nᵀ (diag p − p pᵀ) J_n with J from jacfwd, in NumPy
        jac = np.asarray(jax.jacfwd(lambda q: _mlp_logits(unravel(q), x))(flat))  # (N, k, P)
        probs = np.asarray(jax.nn.softmax(_mlp_logits(params, x)))
        g = sum(jac[n].T @ (np.diag(probs[n]) - np.outer(probs[n], probs[n])) @ jac[n] for n in range(len(x))) / len(x)
        v = np.random.default_rng(1).normal(size=flat.shape[0])
        got = ravel_pytree(ggn_vp(_mlp_logits, params, x, unravel(jnp.asarray(v))))[0]
        np.testing.assert_allclose(got, g @ v, rtol=1e-10, atol=1e-12)
        assert np.linalg.eigvalsh(g)[0] > -1e-12  # positive semi-definite


def test_ggn_is_the_hessian_for_the_last_layer():
    from jaxbias.influence import ggn_vp

    with jax.enable_x64(True):
        x, params = _mlp(2)
        params = jax.tree.map(jnp.asarray, params)
        y = jnp.asarray(np.random.default_rng(3).integers(0, 4, len(x)))

        def ce(p):
            z = _mlp_logits(p, x)
            return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], 1)[:, 0])

        rng = np.random.default_rng(4)
        v = {"out": jnp.asarray(rng.normal(size=(5, 4))), "b": jnp.asarray(rng.normal(size=4))}
        got = ggn_vp(_mlp_logits, params, x, v, subset=("out", "b"))
        f_block = lambda blk: ce({**params, **blk})  # noqa: E731
        want = hvp(f_block, {"out": params["out"], "b": params["b"]}, v)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
        # for the hidden layer the true Hessian differs (the network's own curvature)
        vh = {"h": jnp.asarray(rng.normal(size=(3, 5)))}
        gh = ggn_vp(_mlp_logits, params, x, vh, subset=("h",))["h"]
        hh = hvp(lambda blk: ce({**params, **blk}), {"h": params["h"]}, vh)["h"]
        assert np.linalg.norm(gh - hh) > 1e-3 * np.linalg.norm(hh)


@pytest.mark.parametrize("method", ["cg", "lissa"])
def test_inverse_ggn_matches_the_dense_solve(method):
    from jaxbias.influence import inverse_ggn

    x, params = _mlp(5, n=40)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    x = jnp.asarray(x, jnp.float32)
    rng = np.random.default_rng(6)
    v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=np.shape(a)), jnp.float32), params)
    exact = inverse_ggn(_mlp_logits, params, x, v, method="exact", damping=0.05)
    got = inverse_ggn(_mlp_logits, params, x, v, method=method, damping=0.05)
    e = np.concatenate([np.ravel(a) for a in jax.tree.leaves(exact)])
    g = np.concatenate([np.ravel(a) for a in jax.tree.leaves(got)])
    assert np.linalg.norm(g - e) <= 1e-4 * np.linalg.norm(e)
    # more parameters than samples × classes: G is singular, so no damping is an error, never NaN/inf
    with pytest.raises(ValueError, match="damping"):
        inverse_ggn(_mlp_logits, params, x[:2], v, method="exact", damping=0.0)
    with pytest.raises(ValueError, match="x must be"):
        inverse_ggn(_mlp_logits, params, x[0], v, damping=0.1)


def test_cg_stops_at_an_exact_solution_without_nan():
    """Two distinct eigenvalues: CG is exact after 2 steps; a tolerance below float32 reach must stay finite."""
    a = jnp.diag(jnp.array([1.0, 2.0, 2.0, 1.0], jnp.float32))
    f = lambda p: 0.5 * p["w"] @ a @ p["w"]  # noqa: E731
    params = {"w": jnp.zeros(4, jnp.float32)}
    for _ in range(5):
        x = inverse_hvp(f, params, {"w": jnp.ones(4, jnp.float32)}, method="cg", tol=1e-12, maxiter=500)
        np.testing.assert_allclose(x["w"], [1.0, 0.5, 0.5, 1.0], rtol=1e-6)
