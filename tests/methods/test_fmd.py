"""FMD on a convex problem: influence predictions against actual retraining; the edits."""
import dataclasses
import functools

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


@functools.partial(jax.jit, static_argnames="steps")
def _fit(x, y, weights, steps=30):
    """Exact Newton iterations (convex, float64) from zero; compiled once for every weighting."""
    from jax.flatten_util import ravel_pytree

    p0 = {"w": jnp.zeros(D, x.dtype), "b": jnp.zeros((), x.dtype)}
    flat, unravel = ravel_pytree(p0)
    f = lambda q: _objective(x, y, weights)(unravel(q))  # noqa: E731
    flat = jax.lax.fori_loop(0, steps, lambda _, q: q - jnp.linalg.solve(jax.hessian(f)(q), jax.grad(f)(q)), flat)
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


def _two_layer(seed=0, n=60, d=4, k=3):
    """A small tanh network on data whose label leans on the last input column (the 'attribute')."""
    rng = np.random.default_rng(seed)
    attr = rng.integers(0, 2, n)
    y = np.where(rng.random(n) < 0.8, attr * 2, rng.integers(0, k, n)).astype(np.int32)
    x = np.concatenate([rng.normal(size=(n, d - 1)) + 0.3 * y[:, None], attr[:, None]], 1).astype(np.float32)
    params = {"hidden": {"w": jnp.asarray(rng.normal(size=(d, 6)) * 0.8, jnp.float32)},
              "out": {"w": jnp.asarray(rng.normal(size=(6, k)) * 0.8, jnp.float32), "b": jnp.zeros(k)}}
    x_cf = x.copy()
    x_cf[:, -1] = 1 - x_cf[:, -1]
    return params, jnp.asarray(x), jnp.asarray(x_cf), jnp.asarray(y)


def net(p, x):
    return jnp.tanh(x @ p["hidden"]["w"]) @ p["out"]["w"] + p["out"]["b"]


def _trained(seed=0):
    import optax

    params, x, x_cf, y = _two_layer(seed)
    tx = optax.adam(0.05)
    opt = tx.init(params)
    loss = lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(net(p, x), y))  # noqa: E731
    for _ in range(150):
        g = jax.grad(loss)(params)
        u, opt = tx.update(g, opt)
        params = optax.apply_updates(params, u)
    return params, x, x_cf, y


def test_resolve_subset():
    params = {"fc1": 0, "fc2": 0, "out": 0}
    assert fmd.resolve_subset("last", params) == ("out",)
    assert fmd.resolve_subset("last2", params) == ("fc2", "out")
    assert fmd.resolve_subset("all", params) is None
    assert fmd.resolve_subset("fc1, out", params) == ("fc1", "out")
    assert fmd.resolve_subset("last", params, order=["out", "fc1", "fc2"]) == ("fc2",)
    for bad in ("fc9", "last4", "last0"):
        with pytest.raises(ValueError, match="params|subset|groups"):
            fmd.resolve_subset(bad, params)


def test_debias_auto_scale_is_the_best_feasible_grid_point():
    params, x, x_cf, y = _trained()
    pairs = (x, x_cf, y)
    hp = fmd.Hparams(params="all", damping=0.1)
    res = fmd.debias(net, params, pairs, hp=hp)
    assert res.bias_after < res.bias_before
    assert res.acc_after >= res.acc_before - hp.max_acc_drop - 1e-6
    scales, bias, acc = res.grid
    # independent check: every grid scale as an explicit edit, then the rule by hand
    b0 = float(fmd.counterfactual_bias(net, params, *pairs))
    a0 = float(np.mean(np.argmax(net(params, x), -1) == y))
    manual = []
    for s in scales[::10]:  # each scale is a static hyperparameter: one compilation per point
        r = fmd.debias(net, params, pairs, hp=dataclasses.replace(hp, scale=float(s)))
        np.testing.assert_allclose(r.bias_after, float(fmd.counterfactual_bias(net, r.params, *pairs)), rtol=1e-5)
        manual.append((r.bias_after, r.acc_after))
    np.testing.assert_allclose([m[0] for m in manual], bias[::10], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([m[1] for m in manual], acc[::10], atol=1e-6)
    feasible = [(b, s) for b, a, s in zip(bias, acc, scales) if a >= a0 - hp.max_acc_drop - 1e-6]
    assert res.scale == min(feasible)[1]
    assert res.bias_before == pytest.approx(b0, rel=1e-5)


def test_debias_ggn_equals_hessian_on_the_last_layer():
    params, x, x_cf, y = _trained(1)
    kw = dict(params="last", damping=0.01, scale=1e-2, solver="exact")
    a = fmd.debias(net, params, (x, x_cf, y), hp=fmd.Hparams(curvature="ggn", **kw))
    b = fmd.debias(net, params, (x, x_cf, y), hp=fmd.Hparams(curvature="hessian", **kw))
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(a.params["hidden"]["w"], params["hidden"]["w"])  # frozen block untouched


def test_debias_training_mode_removes_the_top_influence_samples():
    params, x, x_cf, y = _trained(2)
    pairs = (x[:20], x_cf[:20], y[:20])
    hp = fmd.Hparams(mode="training", params="last", top_k=7, damping=0.05, curvature="ggn")
    res = fmd.debias(net, params, pairs, hp=hp, train=(x, y), train_cf=x_cf)
    infl = np.asarray(fmd.influence_on_bias(net, params, x, y, pairs, subset=("out",), damping=0.05,
                                            curvature="ggn"))
    assert sorted(res.removed.tolist()) == sorted(np.argsort(-infl)[:7].tolist())
    # the JVP influences equal per-sample gradients dotted with H⁻¹∇B (the explicit form)
    from jaxbias.influence import inverse_ggn, select
    g_b = jax.grad(lambda b: fmd.counterfactual_bias(net, {**params, **b}, *pairs))(select(params, ("out",)))
    s = inverse_ggn(net, params, x, g_b, damping=0.05, subset=("out",))
    grads = fmd.per_sample_grads(net, params, x, y, subset=("out",))
    explicit = -sum(np.tensordot(np.asarray(g), np.asarray(v), axes=v.ndim)
                    for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(s)))
    np.testing.assert_allclose(infl, explicit, rtol=1e-4, atol=1e-6)
    assert np.all(infl[res.removed] > 0)  # harmful: up-weighting them raises B
    with pytest.raises(ValueError, match="train"):
        fmd.debias(net, params, pairs, hp=hp)


def test_debias_bad_input():
    params, x, x_cf, y = _trained(3)
    with pytest.raises(ValueError, match="same label"):
        fmd.debias(net, params, (x, x_cf, y), y_cf=(y + 1) % 3)
    with pytest.raises(ValueError, match="subset|groups"):
        fmd.debias(net, params, (x, x_cf, y), hp=fmd.Hparams(params="fc"))
    with pytest.raises(ValueError, match="x_cf"):
        fmd.debias(net, params, (x, x_cf[:5], y))
    # the true Hessian over the hidden layer is indefinite here: without damping an error, never NaN
    with pytest.raises(ValueError, match="damping"):
        fmd.debias(net, params, (x, x_cf, y), hp=fmd.Hparams(params="all", curvature="hessian", damping=0.0,
                                                             solver="exact"))
    for bad in (dict(mode="x"), dict(curvature="fisher"), dict(solver="lu"), dict(damping=-1.0), dict(scale=0.0),
                dict(max_acc_drop=2.0), dict(top_k=0), dict(accuracy_on="all"), dict(params=""), dict(steps=0),
                dict(steps=True), dict(steps=2, mode="training")):
        with pytest.raises(ValueError):
            fmd.Hparams(**bad)


def test_debias_newton_steps_follow_the_rule_step_by_step():
    """``steps=k``: each step re-linearised at the edited parameters, its scale chosen on the grid; checked
    against a host loop of single-step edits through the public ``unlearn_counterfactual`` (another solver path)."""
    params, x, x_cf, y = _trained(4)
    pairs = (x, x_cf, y)
    hp = fmd.Hparams(params="last", curvature="hessian", solver="exact", damping=0.01, steps=3)
    res = fmd.debias(net, params, pairs, hp=hp)
    one = fmd.debias(net, params, pairs, hp=dataclasses.replace(hp, steps=1))
    assert res.step_scales.shape == (3,) and res.step_scales[0] == one.scale == res.scale

    def scores(p):
        b = float(fmd.counterfactual_bias(net, p, *pairs))
        return b, float(np.mean(np.argmax(net(p, x), -1) == y))

    b0, a0 = scores(params)
    cx, cy = jnp.concatenate([x, x_cf]), jnp.concatenate([y, y])
    p, b_cur, taken = params, None, []
    for k in range(3):
        cands = []
        for s in fmd.SCALE_GRID:
            q = fmd.unlearn_counterfactual(net, p, pairs, scale=s, hessian_loss=fmd._ce_loss(net, cx, cy),
                                           subset=("out",), damping=0.01, method="exact")
            b, a = scores(q)
            if a >= a0 - hp.max_acc_drop - 1e-6 and (b_cur is None or b < b_cur - 1e-6):
                cands.append((b, s, q))
        if not cands:
            taken.append(0.0)
            continue
        b_cur, s, p = min(cands, key=lambda c: c[0])
        taken.append(s)
    np.testing.assert_allclose(res.step_scales, taken, rtol=1e-5)
    assert any(t > 0 for t in taken[1:])  # the later steps do something on this problem
    np.testing.assert_allclose(res.params["out"]["w"], p["out"]["w"], rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(res.params["hidden"]["w"], params["hidden"]["w"])
    b_end, a_end = scores(res.params)
    assert res.bias_after == pytest.approx(b_end, rel=1e-4) and b_end < one.bias_after
    assert res.acc_after == pytest.approx(a_end) and a_end >= a0 - hp.max_acc_drop - 1e-6
