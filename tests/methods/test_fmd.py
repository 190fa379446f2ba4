"""FMD on a convex problem: influence predictions against actual retraining; the edits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias.methods import fmd

N, D, L2 = 80, 4, 0.05


def _data(seed=0):
    rng = np.random.default_rng(seed)
    attr = rng.integers(0, 2, N)
    y = ((rng.normal(size=N) + 1.5 * attr - 0.75) > 0).astype(np.int32)  # the label leans on the attribute
    x = np.concatenate([rng.normal(size=(N, D - 1)) + 0.5 * y[:, None], attr[:, None]], axis=1)
    return x, y


def logits_fn(p, x):
    z = x @ p["w"] + p["b"]
    return jnp.stack([jnp.zeros_like(z), z], axis=-1)  # binary logistic regression as 2-class logits


def _objective(x, y, weights):
    def f(p):
        ce = jax.vmap(lambda xi, yi: -jax.nn.log_softmax(logits_fn(p, xi[None]))[0, yi])(x, y)
        return jnp.sum(weights * ce) / N + 0.5 * L2 * (jnp.sum(p["w"] ** 2) + p["b"] ** 2)

    return f


def _fit(x, y, weights, steps=30):
    """Exact Newton iterations (convex, float64) from zero."""
    from jax.flatten_util import ravel_pytree

    p0 = {"w": jnp.zeros(D), "b": jnp.zeros(())}
    flat, unravel = ravel_pytree(p0)
    f = lambda q: _objective(x, y, weights)(unravel(q))  # noqa: E731
    for _ in range(steps):
        flat = flat - jnp.linalg.solve(jax.hessian(f)(flat), jax.grad(f)(flat))
    return unravel(flat)


def test_influence_predicts_retraining_without_each_sample():
    with jax.enable_x64(True):
        x, y = (jnp.asarray(a) for a in _data())
        x_cf = x.at[:, -1].set(1 - x[:, -1])  # flip the protected attribute
        pairs = (x, x_cf, y)
        ones = jnp.ones(N)
        theta = _fit(x, y, ones)
        b0 = float(fmd.counterfactual_bias(logits_fn, theta, *pairs))
        assert b0 > 0.05  # the model does use the attribute
        infl = fmd.influence_on_bias(logits_fn, theta, x, y, pairs, hessian_loss=_objective(x, y, ones),
                                     method="exact")
        idx = np.arange(0, N, 2)  # 40 samples
        actual = []
        for k in idx:
            w = ones.at[k].set(0.0)
            actual.append(float(fmd.counterfactual_bias(logits_fn, _fit(x, y, w, steps=8), *pairs)) - b0)
        predicted = -np.asarray(infl)[idx] / N
        r = np.corrcoef(predicted, actual)[0, 1]
        assert r >= 0.95, r
        # the same through CG
        infl_cg = fmd.influence_on_bias(logits_fn, theta, x, y, pairs, hessian_loss=_objective(x, y, ones),
                                        method="cg")
        np.testing.assert_allclose(infl_cg, infl, rtol=1e-5, atol=1e-9)


def test_unlearning_the_harmful_samples_lowers_the_bias():
    with jax.enable_x64(True):
        x, y = (jnp.asarray(a) for a in _data(1))
        x_cf = x.at[:, -1].set(1 - x[:, -1])
        pairs = (x, x_cf, y)
        ones = jnp.ones(N)
        f = _objective(x, y, ones)
        theta = _fit(x, y, ones)
        b0 = float(fmd.counterfactual_bias(logits_fn, theta, *pairs))
        infl = np.asarray(fmd.influence_on_bias(logits_fn, theta, x, y, pairs, hessian_loss=f, method="exact"))
        top = np.argsort(-infl)[:10]
        new = fmd.unlearn_training(logits_fn, theta, x[top], y[top], n_train=N, hessian_loss=f, method="exact")
        assert float(fmd.counterfactual_bias(logits_fn, new, *pairs)) < b0
        # the Newton step approximates retraining without them
        w = ones.at[top].set(0.0)
        retrained = _fit(x, y, w)
        np.testing.assert_allclose(new["w"], retrained["w"], atol=0.1 * float(jnp.linalg.norm(theta["w"])))
        # half-replacing every sample by its counterfactual: the data then holds both attribute values
        # for every record, so the attribute carries no label information and its weight collapses
        cf = fmd.unlearn_counterfactual(logits_fn, theta, pairs, scale=0.5 / N, hessian_loss=f, method="exact")
        assert float(fmd.counterfactual_bias(logits_fn, cf, *pairs)) < 0.5 * b0
        assert abs(float(cf["w"][-1])) < 0.5 * abs(float(theta["w"][-1]))


def test_bad_input():
    x, y = (jnp.asarray(a) for a in _data())
    with pytest.raises(ValueError, match="same label"):
        fmd.check_pair_labels(np.array([0, 1]), np.array([0, 0]))
    with pytest.raises(ValueError, match="x_cf"):
        fmd.counterfactual_bias(logits_fn, {"w": jnp.zeros(D), "b": jnp.zeros(())}, x, x[:, :2], y)
    with pytest.raises(ValueError, match="subset"):
        fmd.per_sample_grads(logits_fn, {"w": jnp.zeros(D), "b": jnp.zeros(())}, x, y, subset=("fc",))
