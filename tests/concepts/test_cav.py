"""CAV fitters and alignment against scikit-learn, NumPy loops of SPEC §1 and a planted direction."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import Lasso, LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.svm import LinearSVC

from jaxbias.concepts import (
    DEFAULT_REGS,
    alignment,
    fit_cav,
    fit_cavs,
    pool_acts,
    select_reg,
    stratified_folds,
)

REG_METHODS = ("ridge", "lasso", "logistic", "svm")
N, M = 300, 12


def _cos(u, v):
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


@pytest.fixture(scope="module")
def data():
    """Imbalanced (30 % concept), offset, mildly correlated activations: balance and no-intercept matter."""
    rng = np.random.default_rng(0)
    t = (rng.uniform(size=N) < 0.3).astype(np.int32)
    mix = np.eye(M) + 0.3 * rng.normal(size=(M, M))
    acts = rng.normal(size=(N, M)) @ mix + 0.7 * np.outer(t, rng.normal(size=M)) + 0.3
    return acts.astype(np.float32), t


# --------------------------------------------------------------------------- #
# the λ-methods against scikit-learn
# --------------------------------------------------------------------------- #


def _sklearn_coef(method, acts, t, lam, balanced):
    """scikit-learn's minimiser of the same objective, no intercept.

    Ours: ``J(h) = Σ_n ω_n ℓ_n + λ P(h)`` with ``ω_n = s_n / N``, where ``s`` is
    scikit-learn's sample weight, ``Σ_n s_n = N`` (``class_weight="balanced"``:
    ``s_n = N / (2 n_class)``; unbalanced ``s_n = 1``). Mapping:

    - Ridge: ``Σ s r² + α||h||² = N (Σ ω r² + (α/N)||h||²)`` → ``alpha = N·λ``.
    - Lasso: ``(1/(2Σs)) Σ s r² + α||h||₁`` (it rescales ``s`` to sum to N)
      ``= ½ (Σ ω r² + 2α||h||₁)`` → ``alpha = λ/2``.
    - LogisticRegression / LinearSVC(loss="hinge"): ``C Σ s ℓ + ½||h||²``;
      ``J/(2λ) = (1/(2λN)) Σ s ℓ + ½||h||²`` → ``C = 1/(2Nλ)``.
    """
    n = t.shape[0]
    y = 2 * t - 1
    weight = "balanced" if balanced else None
    sw = np.where(t == 1, n / (2 * t.sum()), n / (2 * (n - t.sum()))) if balanced else None
    x = acts.astype(np.float64)
    if method == "ridge":
        return Ridge(alpha=n * lam, fit_intercept=False).fit(x, y, sample_weight=sw).coef_
    if method == "lasso":
        est = Lasso(alpha=lam / 2, fit_intercept=False, tol=1e-10, max_iter=100_000)
        return est.fit(x, y, sample_weight=sw).coef_
    c = 1 / (2 * n * lam)
    if method == "logistic":
        est = LogisticRegression(C=c, fit_intercept=False, class_weight=weight, tol=1e-10, max_iter=10_000)
    else:
        est = LinearSVC(C=c, loss="hinge", fit_intercept=False, class_weight=weight, tol=1e-10, max_iter=1_000_000)
    return est.fit(x, t).coef_[0]


SK_REG = {"ridge": 1e-2, "lasso": 5e-2, "logistic": 1e-3, "svm": 1e-2}
SK_RTOL = {"ridge": 1e-4, "lasso": 1e-4, "logistic": 1e-3, "svm": 1e-3}


@pytest.mark.parametrize("balanced", [True, False])
@pytest.mark.parametrize("method", REG_METHODS)
def test_matches_sklearn_with_same_regularisation(data, method, balanced):
    acts, t = data
    lam = SK_REG[method]
    ref = _sklearn_coef(method, acts, t, lam, balanced)
    h = fit_cav(acts, t, method=method, reg=lam, balanced=balanced)
    assert h.shape == (M,)
    np.testing.assert_allclose(np.linalg.norm(h), 1.0, rtol=1e-5)
    assert _cos(h, ref) >= 0.99
    # The raw minimiser, not only its direction: a λ mapping off by a factor
    # (e.g. 2) moves the coefficients by far more than this tolerance.
    raw = np.asarray(fit_cavs(acts, t, method=method, regs=lam, balanced=balanced, normalize=False))
    np.testing.assert_allclose(raw, ref, rtol=0, atol=SK_RTOL[method] * np.abs(ref).max())
    if method == "lasso":
        assert 0 < np.sum(ref == 0) < M  # a λ where the sparsity pattern is non-trivial
        np.testing.assert_array_equal(np.abs(raw) < 1e-6, ref == 0)


def test_balance_changes_the_fit(data):
    acts, t = data
    a = fit_cav(acts, t, method="logistic", reg=1e-2, balanced=True)
    b = fit_cav(acts, t, method="logistic", reg=1e-2, balanced=False)
    assert _cos(a, b) < 0.999


# --------------------------------------------------------------------------- #
# signal CAV: closed form and the planted direction
# --------------------------------------------------------------------------- #


def _signal_loop(acts, t, weights):
    """h = Σ_n w_n (a_n − ā)(t_n − t̄) with weighted means, by an explicit loop."""
    a = np.asarray(acts, np.float64)
    w = np.asarray(weights, np.float64) / np.sum(weights)
    a_bar = sum(w[n] * a[n] for n in range(len(t)))
    t_bar = sum(w[n] * t[n] for n in range(len(t)))
    h = np.zeros(a.shape[1])
    for n in range(len(t)):
        h += w[n] * (a[n] - a_bar) * (t[n] - t_bar)
    return h / np.linalg.norm(h)


@pytest.mark.parametrize("balanced", [True, False])
def test_signal_equals_closed_form(data, balanced):
    acts, t = data
    n_pos = t.sum()
    w = np.where(t == 1, 1 / n_pos, 1 / (N - n_pos)) if balanced else np.ones(N)
    np.testing.assert_allclose(fit_cav(acts, t, balanced=balanced), _signal_loop(acts, t, w), atol=1e-5)
    # For binary t any class-constant weights give the direction μ₊ − μ₋.
    diff = acts[t == 1].mean(0) - acts[t == 0].mean(0)
    np.testing.assert_allclose(fit_cav(acts, t, balanced=balanced), diff / np.linalg.norm(diff), atol=1e-5)


def _planted(seed, n=400, m=10):
    """``a = t·d + 2 z u + small noise`` with a distractor ``u`` at 45° to ``d``.

    The noise covariance is dominated by ``u``; a filter (ridge, lasso, logistic,
    svm) must cancel ``u`` to classify and so tilts away from ``d``
    (``cos ≈ 0.7``), while the signal/pattern CAV ``Cov(a, t) ∝ d`` stays on it.
    """
    rng = np.random.default_rng(seed)
    d = rng.normal(size=m)
    d /= np.linalg.norm(d)
    e = rng.normal(size=m)
    e -= (e @ d) * d
    e /= np.linalg.norm(e)
    u = (d + e) / np.sqrt(2)
    t = (rng.uniform(size=n) < 0.4).astype(np.int32)
    z = rng.normal(size=n)
    acts = np.outer(t, d) + 2.0 * np.outer(z, u) + 0.1 * rng.normal(size=(n, m)) + 0.5
    return acts.astype(np.float32), t, d


@pytest.mark.parametrize("seed, regs", [(0, (1e-3, "cv")), (1, (1e-3,))])
def test_signal_recovers_planted_direction_better_than_filters(seed, regs):
    """The RR-ClArC paper's claim, at a fixed λ and at the λ chosen by cross-validation."""
    acts, t, d = _planted(seed)
    signal = _cos(fit_cav(acts, t), d)
    assert signal >= 0.95
    for method in REG_METHODS:
        for reg in regs:
            filt = _cos(fit_cav(acts, t, method=method, reg=reg), d)
            assert filt <= signal - 0.1, (method, reg, filt, signal)


# --------------------------------------------------------------------------- #
# one vmapped call for concepts × λ
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method", REG_METHODS)
def test_grid_of_concepts_and_regs_equals_single_fits(data, method):
    acts, t = data
    rng = np.random.default_rng(1)
    labels = np.stack([t, 1 - t, (rng.uniform(size=N) < 0.5).astype(np.int32)])
    regs = np.array([1e-3, 1e-2, 1e-1])
    grid = np.asarray(fit_cavs(acts, labels, method=method, regs=regs))
    assert grid.shape == (3, 3, M)
    for c in range(3):
        for r, lam in enumerate(regs):
            single = fit_cav(acts, labels[c], method=method, reg=float(lam))
            np.testing.assert_allclose(grid[c, r], single, atol=2e-5)
    # Flipping the concept flips every CAV (t* → −t*; balance weights swap with it).
    np.testing.assert_allclose(grid[1], -grid[0], atol=2e-5)


def test_grid_signal_has_no_reg_axis(data):
    acts, t = data
    labels = np.stack([t, 1 - t])
    grid = fit_cavs(acts, labels)
    assert grid.shape == (2, M)
    np.testing.assert_allclose(grid[0], fit_cav(acts, t), atol=1e-6)


def test_fit_cavs_runs_under_jit(data):
    acts, t = data
    fn = jax.jit(lambda a, lab, r: fit_cavs(a, lab, method="ridge", regs=r))
    out = fn(jnp.asarray(acts), jnp.asarray(t), jnp.asarray([1e-2, 1e-1]))
    np.testing.assert_allclose(out[0], fit_cav(acts, t, method="ridge", reg=1e-2), atol=1e-5)


# --------------------------------------------------------------------------- #
# cross-validation of λ
# --------------------------------------------------------------------------- #


def test_stratified_folds_are_deterministic_and_balanced(data):
    _, t = data
    f = stratified_folds(t, 5, key=3)
    np.testing.assert_array_equal(f, stratified_folds(t, 5, key=jax.random.key(3)))
    assert not np.array_equal(f, stratified_folds(t, 5, key=4))
    for cls in (0, 1):
        sizes = np.bincount(f[t == cls], minlength=5)
        assert sizes.max() - sizes.min() <= 1
    sizes = np.bincount(f, minlength=5)
    assert sizes.max() - sizes.min() <= 1


@pytest.mark.parametrize("method", ["ridge", "logistic"])
def test_cv_equals_manual_kfold_loop(data, method):
    acts, t = data
    regs = np.array([1e-4, 1e-2, 1.0, 1e2])
    cv = select_reg(acts, t, method=method, regs=regs, n_folds=4, key=7)
    manual = np.zeros((len(regs), 4))
    for k in range(4):
        train, held = cv.folds != k, cv.folds == k
        for r, lam in enumerate(regs):
            h = fit_cav(acts[train], t[train], method=method, reg=float(lam))
            manual[r, k] = roc_auc_score(t[held], acts[held] @ np.asarray(h))
    np.testing.assert_allclose(cv.scores, manual, atol=1e-6)
    best = manual.mean(1)
    assert cv.reg == regs[np.flatnonzero(best == best.max()).max()]
    np.testing.assert_allclose(
        fit_cav(acts, t, method=method, reg="cv", regs=regs, n_folds=4, key=7),
        fit_cav(acts, t, method=method, reg=cv.reg),
        atol=1e-6,
    )


def test_cv_picks_a_lambda_that_generalises():
    """Few samples in many correlated dimensions: the grid matters, and CV's λ is near the test optimum."""
    rng = np.random.default_rng(0)
    m = 30
    d = rng.normal(size=m)
    d /= np.linalg.norm(d)
    mix = rng.normal(size=(m, m)) / np.sqrt(m)

    def make(n):
        t = (rng.uniform(size=n) < 0.4).astype(np.int32)
        return (0.8 * np.outer(t, d) + rng.normal(size=(n, m)) @ mix.T + 0.3).astype(np.float32), t

    acts, t = make(60)
    test_acts, test_t = make(4000)
    cv = select_reg(acts, t, method="ridge")
    hs = np.asarray(fit_cavs(acts, t, method="ridge", regs=np.array(DEFAULT_REGS)))
    test_auc = np.array([roc_auc_score(test_t, test_acts @ h) for h in hs])
    assert test_auc.max() - test_auc.min() > 0.2
    chosen = test_auc[list(DEFAULT_REGS).index(pytest.approx(cv.reg, rel=1e-6))]
    assert chosen >= test_auc.max() - 0.02


@pytest.mark.parametrize("scoring, method", [("accuracy", "ridge"), ("loss", "svm")])
def test_cv_other_scores_against_numpy(data, scoring, method):
    """Balanced held-out accuracy of sign(a·h), and minus the balanced held-out hinge loss."""
    acts, t = data
    regs = np.array([1e-2, 1.0])
    cv = select_reg(acts, t, method=method, regs=regs, n_folds=3, scoring=scoring)
    for k in range(3):
        train, held = cv.folds != k, cv.folds == k
        th, ah = t[held], acts[held].astype(np.float64)
        w = np.where(th == 1, 0.5 / th.sum(), 0.5 / (th.size - th.sum()))
        for r, lam in enumerate(regs):
            h = np.asarray(fit_cavs(acts[train], t[train], method=method, regs=lam, normalize=False), np.float64)
            margin = (2 * th - 1) * (ah @ h)
            want = w @ (margin > 0) if scoring == "accuracy" else -(w @ np.maximum(0, 1 - margin))
            # the svm fits stop at a KKT tolerance of 1e-5, on different row orders
            np.testing.assert_allclose(cv.scores[r, k], want, rtol=2e-4, atol=1e-6)


# --------------------------------------------------------------------------- #
# pooling and alignment
# --------------------------------------------------------------------------- #


def test_conv_acts_are_max_or_mean_pooled():
    rng = np.random.default_rng(2)
    t = (rng.uniform(size=120) < 0.5).astype(np.int32)
    conv = rng.normal(size=(120, 3, 4, 6)).astype(np.float32)
    conv[t == 1, 0, 0, :2] += 3.0  # a local artifact: strong under max, diluted under mean
    for pool, ref in (("max", conv.max(axis=(1, 2))), ("mean", conv.mean(axis=(1, 2)))):
        np.testing.assert_allclose(pool_acts(conv, pool), ref, atol=1e-6)
        for method, reg in (("signal", None), ("ridge", 1e-2)):
            np.testing.assert_allclose(
                fit_cav(conv, t, method=method, reg=reg, pool=pool),
                fit_cav(ref, t, method=method, reg=reg),
                atol=1e-6,
            )
    assert _cos(fit_cav(conv, t, pool="max"), fit_cav(conv, t, pool="mean")) < 0.999


def _alignment_loop(h, delta):
    h = np.asarray(h, np.float64)
    delta = np.asarray(delta, np.float64)
    cos = [
        (h @ row) / (np.linalg.norm(h) * np.linalg.norm(row)) if np.linalg.norm(row) > 0 else 0.0
        for row in delta
    ]
    mean = delta.mean(0)
    return float(np.mean(cos)), float(h @ mean / (np.linalg.norm(h) * np.linalg.norm(mean)))


def test_alignment_against_numpy():
    rng = np.random.default_rng(3)
    h = rng.normal(size=8).astype(np.float32)
    delta = (rng.normal(size=(50, 8)) + 2 * h).astype(np.float32)
    delta[7] = 0  # the artifact left this sample unchanged: cos counted as 0, not NaN
    ind, overall = alignment(3.0 * h, delta)  # the CAV's scale is irrelevant
    ref = _alignment_loop(h, delta)
    np.testing.assert_allclose([ind, overall], ref, atol=1e-6)
    assert 0 < ind < overall < 1  # averaging first removes the per-sample noise
    # conv changes: reduced over H, W like the activations
    conv = rng.normal(size=(20, 2, 3, 8)).astype(np.float32)
    for pool, red in (("max", conv.max(axis=(1, 2))), ("mean", conv.mean(axis=(1, 2)))):
        np.testing.assert_allclose(alignment(h, conv, pool=pool), _alignment_loop(h, red), atol=1e-6)


def test_alignment_of_the_true_direction_is_one():
    h = np.array([1.0, -2.0, 0.5], np.float32)
    delta = np.outer(np.linspace(0.5, 2, 10), h).astype(np.float32)
    np.testing.assert_allclose(alignment(h, delta), (1.0, 1.0), atol=1e-6)
    np.testing.assert_allclose(alignment(-h, delta), (-1.0, -1.0), atol=1e-6)


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #


def _bad_cases():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(20, 4)).astype(np.float32)
    t = np.array([0, 1] * 10, np.int32)
    nan = a.copy()
    nan[3, 1] = np.nan
    inf = a.copy()
    inf[0, 0] = np.inf
    return [
        ("single class", lambda: fit_cav(a, np.ones(20, np.int32)), r"labels has a single class.*all concept"),
        ("single class 0", lambda: fit_cav(a, np.zeros(20, bool)), r"single class.*no concept"),
        ("single class row", lambda: fit_cavs(a, np.stack([t, np.zeros(20, int)])), r"labels\[1\] has a single class"),
        ("nan acts", lambda: fit_cav(nan, t), r"acts has 1 NaN/inf"),
        ("inf acts", lambda: fit_cav(inf, t, method="ridge", reg=1.0), r"acts has 1 NaN/inf"),
        ("acts rank 1", lambda: fit_cav(a[:, 0], t), r"acts must have shape \(N, m\).*rank 1"),
        ("acts rank 3", lambda: fit_cav(a.reshape(20, 2, 2), t), r"acts must have shape.*rank 3"),
        ("int acts", lambda: fit_cav(a.astype(np.int32), t), r"acts must have a floating dtype.*int32"),
        ("length mismatch", lambda: fit_cav(a, t[:-1]), r"labels has shape \(19,\) but acts has 20 rows"),
        ("labels rank 2 in fit_cav", lambda: fit_cav(a, t[None]), r"labels must have shape \(20,\)"),
        ("non-binary", lambda: fit_cav(a, t * 2), r"labels must be binary.*\[2\]"),
        ("float labels", lambda: fit_cav(a, t.astype(np.float32)), r"bool or integer dtype; got dtype float32"),
        ("unknown method", lambda: fit_cav(a, t, method="pca"), r"method must be one of .*'pca'"),
        ("unknown pool", lambda: fit_cav(a, t, pool="sum"), r"pool must be one of"),
        ("negative reg", lambda: fit_cav(a, t, method="ridge", reg=-1.0), r"reg must be finite and non-negative"),
        ("nan reg", lambda: fit_cav(a, t, method="svm", reg=float("nan")), r"reg must be finite and non-negative"),
        ("string reg", lambda: fit_cav(a, t, method="svm", reg="auto"), r"reg must be a non-negative number"),
        ("negative regs", lambda: fit_cavs(a, t, method="lasso", regs=[1.0, -1e-3]), r"regs must be finite and non-negative"),
        ("regs rank 2", lambda: fit_cavs(a, t, method="lasso", regs=[[1.0]]), r"regs must be a scalar or a 1-D"),
        ("missing regs", lambda: fit_cavs(a, t, method="ridge"), r"needs regs"),
        ("reg for signal", lambda: fit_cav(a, t, reg=1.0), r"'signal' has no regularisation"),
        ("cv for signal", lambda: select_reg(a, t, method="signal"), r"no regularisation to select"),
        ("bad balanced", lambda: fit_cav(a, t, balanced="yes"), r"balanced must be a bool"),
        ("bad n_iter", lambda: fit_cav(a, t, method="svm", reg=1.0, n_iter=0), r"n_iter must be a positive int"),
        ("too few per class", lambda: select_reg(a, np.eye(20, dtype=int)[0] + np.eye(20, dtype=int)[1], method="ridge"), r"only 2 samples of one class"),
        ("bad n_folds", lambda: select_reg(a, t, method="ridge", n_folds=1), r"n_folds must be an int ≥ 2"),
        ("bad scoring", lambda: select_reg(a, t, method="ridge", scoring="f1"), r"scoring must be one of"),
        ("lasso above lambda_max", lambda: fit_cav(a, t, method="lasso", reg=1e4), r"zero vector.*λ_max"),
        ("alignment cav shape", lambda: alignment(np.ones(3, np.float32), a), r"cav must be a floating vector of shape \(4,\)"),
        ("alignment zero cav", lambda: alignment(np.zeros(4, np.float32), a), r"cav is the zero vector"),
        ("alignment nan delta", lambda: alignment(np.ones(4, np.float32), nan), r"delta_acts has 1 NaN/inf"),
        ("alignment delta rank", lambda: alignment(np.ones(4, np.float32), a[0]), r"delta_acts must have shape"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_raises(case):
    _, call, match = case
    with pytest.raises(ValueError, match=match):
        call()


def test_lasso_grid_keeps_zero_solutions_finite(data):
    acts, t = data
    out = np.asarray(fit_cavs(acts, t, method="lasso", regs=np.array([1e-2, 1e4])))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out[0]), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out[1], 0.0)


def test_zero_reg_is_allowed_and_finite(data):
    acts, t = data
    for method in REG_METHODS:
        h = np.asarray(fit_cav(acts, t, method=method, reg=0.0))
        assert np.all(np.isfinite(h)) and abs(np.linalg.norm(h) - 1) < 1e-5
    # λ = 0 ridge is least squares
    tstar = 2.0 * t - 1
    w = np.where(t == 1, 0.5 / t.sum(), 0.5 / (N - t.sum()))
    ls = np.linalg.solve(acts.T.astype(np.float64) @ (w[:, None] * acts), acts.T @ (w * tstar))
    assert _cos(fit_cav(acts, t, method="ridge", reg=0.0), ls) > 0.9999
