"""Concept activation vectors (CAVs): unit directions of a concept in a layer's activations.

SPEC §1; RR-ClArC: Dreyer, Pahde, Anders, Samek, Lapuschkin, *From Hope to
Safety: Unlearning Biases of Deep Models via Gradient Penalization in Latent
Space*, AAAI 2024 (arXiv:2308.09437).

Symbols → arguments:

==============  ==============================================================
paper           here
==============  ==============================================================
``a_n``         ``acts[n]`` (conv activations ``(N, H, W, m)`` are pooled over
                ``H, W`` first: ``a_i = max_{v,q} a_{i,v,q}``, or the mean)
``t_n``         ``labels[n] ∈ {0, 1}`` (1 = the sample carries the concept)
``t*_n``        ``2 t_n − 1``
``λ``           ``reg`` (``regs`` for a grid)
``h``           the returned CAV, ``h / ||h||``
``ω_n``         sample weights: ``∝ 1/n_pos``, ``1/n_neg`` when ``balanced``,
                normalised to ``Σ_n ω_n = 1`` (``1/N`` when not balanced)
==============  ==============================================================

Objectives (no intercept; ``Σ_n ω_n`` is SPEC's ``(1/N) Σ_n`` with weights):

- ``"signal"``:   ``h = Σ_n ω_n (a_n − ā)(t_n − t̄)``, ``ā = Σ ω a``, ``t̄ = Σ ω t``
- ``"ridge"``:    ``min_h Σ_n ω_n (t*_n − a_n·h)² + λ||h||²``
- ``"lasso"``:    ``min_h Σ_n ω_n (t*_n − a_n·h)² + λ Σ_j |h_j|``
- ``"logistic"``: ``min_h Σ_n ω_n log(1 + exp(−t*_n a_n·h)) + λ||h||²``
- ``"svm"``:      ``min_h Σ_n ω_n max(0, 1 − t*_n a_n·h) + λ||h||²``

Equivalent scikit-learn estimators (``fit_intercept=False``, ``N`` rows,
``sample_weight`` = ``ω·N``, i.e. ``class_weight="balanced"`` when balanced):
``Ridge(alpha=N·λ)``, ``Lasso(alpha=λ/2)``, ``LogisticRegression(C=1/(2Nλ))``,
``LinearSVC(loss="hinge", C=1/(2Nλ))``.

The signal CAV is a covariance, so for binary ``t`` it is ``W₊W₋ (μ₊ − μ₋)``
(class means ``μ±``, class weights ``W±``) for any weights that are constant
within a class: ``balanced`` does not change its direction.
"""
from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbias.concepts import _checks
from jaxbias.concepts._checks import POOLS
from jaxbias.concepts.solvers import SOLVERS, data_loss, sample_weights

Array = jax.Array

METHODS = tuple(SOLVERS)
#: λ grid of the reference protocol: one value per decade, 1e-5 … 1e4.
DEFAULT_REGS = tuple(float(10.0**e) for e in range(-5, 5))
SCORINGS = ("auc", "accuracy", "loss")


# --------------------------------------------------------------------------- #
# pooling
# --------------------------------------------------------------------------- #


def _pool(acts: Array, pool: str) -> Array:
    acts = acts.astype(jnp.promote_types(acts.dtype, jnp.float32))
    if acts.ndim == 2:
        return acts
    return jnp.max(acts, axis=(1, 2)) if pool == "max" else jnp.mean(acts, axis=(1, 2))


def pool_acts(acts: Array, pool: str = "max") -> Array:
    """Activations as used for CAVs: conv maps pooled over the spatial axes.

    ``a_i(x) = max_{v,q} a_{i,v,q}(x)`` (``pool="max"``, SPEC §1) or
    ``mean_{v,q} a_{i,v,q}(x)`` (``pool="mean"``); ``(N, m)`` input is returned as is.

    Args:
      acts: ``(N, m)`` or channels-last conv activations ``(N, H, W, m)``, finite floats.
      pool: ``"max"`` or ``"mean"``.

    Returns:
      ``(N, m)`` activations, at least float32.

    Example:
      >>> pool_acts(jnp.ones((8, 4, 4, 16)), "mean").shape
      (8, 16)
    """
    _checks.check_choice("pool", pool, POOLS)
    return _pool(_checks.check_acts("acts", acts), pool)


# --------------------------------------------------------------------------- #
# fitting a batch of concepts × λ in one compiled call
# --------------------------------------------------------------------------- #


@jax.jit
def _unit(h: Array) -> Array:
    norm = jnp.linalg.norm(h, axis=-1, keepdims=True)
    return jnp.where(norm > 0, h / jnp.where(norm > 0, norm, 1), 0)


def _fit_grid(a, t, mask, regs, *, method, balanced, n_iter):
    """Unnormalised ``h`` of shape ``(C, R, m)`` for ``t, mask`` of shape ``(C, N)``, ``regs`` ``(R,)``."""
    solver = SOLVERS[method]

    def one_concept(t1, m1):
        stats = solver.prepare(a, t1, sample_weights(t1, m1, balanced))
        return jax.vmap(lambda lam: solver.solve(stats, lam, n_iter))(regs)

    return jax.vmap(one_concept)(t, mask)


@partial(jax.jit, static_argnames=("method", "n_iter", "pool"))
def _fit_cavs(acts, labels, regs, balanced, *, method, n_iter, pool):
    a = _pool(acts, pool)
    n = a.shape[0]
    t = labels.reshape(-1, n).astype(a.dtype)
    h = _fit_grid(a, t, jnp.ones_like(t), regs.reshape(-1).astype(a.dtype),
                  method=method, balanced=balanced, n_iter=n_iter)
    return h.reshape(labels.shape[:-1] + regs.shape + h.shape[-1:])


def _n_iter(method: str, n_iter: int | None) -> int:
    return SOLVERS[method].default_n_iter if n_iter is None else int(n_iter)


def fit_cavs(
    acts: Array,
    labels: Array,
    *,
    method: str = "signal",
    regs: Any = None,
    balanced: bool = True,
    pool: str = "max",
    n_iter: int | None = None,
    normalize: bool = True,
) -> Array:
    """CAVs of many concepts and many ``λ`` at once: one jitted, vmapped call.

    Solves the method's objective (module docstring) for every row of
    ``labels`` and every ``λ`` in ``regs``; ``λ``-independent work (Gram matrix,
    its eigendecomposition) is shared by the whole grid.

    Args:
      acts: ``(N, m)`` or ``(N, H, W, m)`` finite float activations.
      labels: ``(N,)`` or ``(n_concepts, N)`` binary labels (bool or int 0/1),
        both classes present in every row (e.g. hundreds of random splits for
        a TCAV significance test).
      method: ``"signal"``, ``"ridge"``, ``"lasso"``, ``"logistic"`` or ``"svm"``.
      regs: ``λ ≥ 0``, a scalar or a 1-D grid ``(R,)``; must be ``None`` for
        ``"signal"`` (it has no ``λ``) and given for the others.
      balanced: class-balanced sample weights ``ω ∝ 1/n_pos, 1/n_neg``.
      pool: spatial pooling of conv activations, ``"max"`` (SPEC) or ``"mean"``.
      n_iter: iterations of the iterative solvers (``None``: the default):
        FISTA steps for lasso (2000), damped Newton steps for logistic (50),
        at most this many epochs of dual coordinate ascent for svm (1000;
        it stops earlier once the KKT violation is below 1e-5); unused by
        the closed forms (signal, ridge).
      normalize: return ``h / ||h||`` (default) or the raw minimiser ``h``.

    Returns:
      ``labels.shape[:-1] + regs.shape + (m,)``. A solution that is exactly
      zero (lasso with ``λ ≥ λ_max = 2 max_j |Σ_n ω_n t*_n a_nj|``) stays the
      zero vector rather than ``0/0``.

    Example:
      >>> labels = jax.random.bernoulli(key, 0.5, (100, acts.shape[0]))  # 100 random concepts
      >>> fit_cavs(acts, labels, method="ridge", regs=jnp.logspace(-5, 4, 10)).shape
      (100, 10, m)
    """
    _checks.check_choice("method", method, METHODS)
    _checks.check_choice("pool", pool, POOLS)
    _checks.check_n_iter(n_iter)
    _checks.check_bool("balanced", balanced)
    acts = _checks.check_acts("acts", acts)
    _checks.check_acts_vary("acts", acts, pool)
    labels = _checks.check_concept_labels("labels", labels, acts.shape[0], matrix_ok=True)
    if SOLVERS[method].uses_reg:
        if regs is None:
            raise ValueError(f"method={method!r} needs regs (λ ≥ 0, a scalar or a 1-D grid); got None")
        regs = _checks.check_regs("regs", regs, ranks=(0, 1))
        regs = regs.astype(jnp.promote_types(regs.dtype, jnp.float32))
    else:
        if regs is not None:
            raise ValueError(f"method={method!r} has no regularisation; regs must be None, got {regs!r}")
        regs = jnp.zeros((), jnp.float32)
    h = _fit_cavs(acts, labels, regs, jnp.asarray(balanced, bool), method=method,
                  n_iter=_n_iter(method, n_iter), pool=pool)
    return _unit(h) if normalize else h


# --------------------------------------------------------------------------- #
# the signal CAV from running sums (data seen one batch at a time)
# --------------------------------------------------------------------------- #


#: Concept samples a regularised CAV fitter (ridge, lasso, logistic, svm) is fitted on when the concept set is
#: streamed: a seeded, class-stratified subsample of at most this many (the signal CAV uses every sample).
STREAM_CAV_SAMPLES = 2048


def stratified_subsample(labels: Any, size: int, *, seed: int = 0) -> np.ndarray:
    """Bool ``(N,)``: ``min(size, N)`` rows, each class's share kept (rounded; every class keeps at least
    ``max(1, size // 20)`` rows, or all of its rows), drawn with ``np.random.default_rng(seed)``."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape[0], bool)
    if labels.shape[0] <= size:
        out[:] = True
        return out
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    sizes = np.array([int(np.sum(labels == c)) for c in classes])
    want = np.minimum(sizes, max(1, size // 20))
    want = np.minimum(sizes, want + sizes * (size - want.sum()) // labels.shape[0])
    for i in np.argsort(-sizes):  # what the rounding left: to the largest classes first
        want[i] += min(sizes[i] - want[i], size - want.sum())
    for c, k in zip(classes, want):
        out[rng.permutation(np.flatnonzero(labels == c))[:k]] = True
    return out


class SignalSums:
    """The balanced signal CAV of data seen one batch at a time: per concept and concept class, the count and the
    sum of the pooled activations (float64), and each feature's smallest and largest value.

    Balanced signal is ``h ∝ W₊W₋(μ₊ − μ₋)`` (module docstring), so these sums give the same unit CAV as
    :func:`fit_cav` (``method="signal"``, ``balanced=True``) on all the rows at once, up to float32 rounding,
    with memory that does not grow with the number of rows; the class means also give the mean projections
    ``h·μ±`` (ClArC's ``⟨z±⟩``). Labels ``(B,)`` make one concept; labels ``(K, B)`` make ``K`` concepts of the
    same activations at once (e.g. a TCAV test's random splits: one ``(K, B) @ (B, m)`` product per batch), and
    :meth:`means` and :meth:`cav` then have a leading ``K`` axis.

    Example:
      >>> sums = SignalSums()
      >>> for rows, a in layer_acts_batches(model, params, x, "block4", pool="max"):  # doctest: +SKIP
      ...     sums.add(a, labels[rows])
      >>> h = sums.cav()  # doctest: +SKIP
    """

    def __init__(self, pool: str = "max"):
        _checks.check_choice("pool", pool, POOLS)
        self.pool = pool
        self.single: bool | None = None  # labels (B,) rather than (K, B)
        self.count: np.ndarray | None = None  # (K, 2): clean, concept
        self.sums: np.ndarray | None = None  # (K, 2, m)
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None

    def add(self, acts: Any, labels: Any) -> None:
        """Add a batch: ``acts`` ``(B, m)`` (or ``(B, H, W, m)``, pooled with ``pool``), ``labels`` 0/1 ``(B,)`` or
        ``(K, B)`` (the same shape at every call)."""
        a = np.asarray(pool_acts(jnp.asarray(acts), self.pool) if np.ndim(acts) == 4 else acts, np.float64)
        t = np.asarray(labels)
        if a.ndim != 2 or t.ndim not in (1, 2) or t.shape[-1] != a.shape[0]:
            raise ValueError(f"acts must be (B, m) with labels (B,) or (K, B); got acts {a.shape}, labels {t.shape}")
        if not np.isin(t, (0, 1)).all():
            raise ValueError(f"labels must be binary concept labels (0 or 1); got values {np.unique(t)[:10]}")
        if not np.isfinite(a).all():
            raise ValueError("acts has non-finite values (NaN or inf): no CAV can be fitted on them")
        rows = t.reshape(-1, a.shape[0]).astype(np.float64)  # (K, B)
        if self.sums is None:
            self.single = t.ndim == 1
            self.count = np.zeros((rows.shape[0], 2), np.int64)
            self.sums = np.zeros((rows.shape[0], 2, a.shape[1]))
        elif a.shape[1] != self.sums.shape[2] or rows.shape[0] != self.sums.shape[0] or self.single != (t.ndim == 1):
            raise ValueError(f"acts {a.shape} with labels {t.shape} do not match the earlier batches' "
                             f"{self.sums.shape[2]} features and {'(B,)' if self.single else (self.sums.shape[0], 'B')} labels")
        if a.shape[0] == 0:
            return
        self.low = a.min(0) if self.low is None else np.minimum(self.low, a.min(0))
        self.high = a.max(0) if self.high is None else np.maximum(self.high, a.max(0))
        concept = rows @ a  # (K, m)
        self.sums[:, 1] += concept
        self.sums[:, 0] += a.sum(0) - concept
        ones = rows.sum(1).astype(np.int64)
        self.count[:, 1] += ones
        self.count[:, 0] += a.shape[0] - ones

    def means(self) -> np.ndarray:
        """``(2, m)`` (``(K, 2, m)``): the mean pooled activation of the clean (0) and the concept (1) rows."""
        if self.sums is None or self.count.min() == 0:
            k = 0 if self.count is None else int(np.argmin(self.count.min(1)))
            got = (0, 0) if self.count is None else self.count[k]
            raise ValueError(f"labels need both concept classes; got {int(got[1])} concept and {int(got[0])} clean "
                             f"samples" + ("" if self.single in (None, True) else f" in concept row {k}"))
        mu = self.sums / self.count[:, :, None]
        return mu[0] if self.single else mu

    def cav(self) -> np.ndarray:
        """The unit signal CAV ``(m,)`` (``(K, m)``, float32), refused as :func:`fit_cav` refuses it (constant
        activations, a zero vector)."""
        mu = self.means()
        _checks.check_range_varies("acts", self.low, self.high, int(self.count[0].sum()))
        h = mu[..., 1, :] - mu[..., 0, :]
        norm = np.linalg.norm(h, axis=-1, keepdims=True)
        if np.any(norm == 0.0):
            raise ValueError("the fitted CAV is the zero vector (method='signal'): the two classes have the same "
                             "mean activation; choose another layer")
        return (h / norm).astype(np.float32)


# --------------------------------------------------------------------------- #
# cross-validation of λ
# --------------------------------------------------------------------------- #


def _auc(scores: Array, t: Array, weights: Array) -> Array:
    """Weighted ROC AUC ``P(s₊ > s₋) + ½ P(s₊ = s₋)`` with a sort instead of all pairs."""
    pos = weights * t
    neg = weights * (1 - t)
    order = jnp.argsort(scores)
    s_sorted = scores[order]
    cum = jnp.concatenate([jnp.zeros(1, pos.dtype), jnp.cumsum(pos[order])])
    below = cum[jnp.searchsorted(s_sorted, scores, side="left")]  # positive weight with s < s_j
    upto = cum[jnp.searchsorted(s_sorted, scores, side="right")]  # … with s ≤ s_j
    total_pos = cum[-1]
    wins = (total_pos - upto) + 0.5 * (upto - below)
    return jnp.dot(neg, wins) / (total_pos * jnp.sum(neg))


def _score(scoring, method, s, t, heldout, balanced):
    w = sample_weights(t, heldout, balanced)
    if scoring == "auc":
        return _auc(s, t, heldout)
    if scoring == "accuracy":
        ts = 2 * t - 1
        return jnp.dot(w, jnp.where(s == 0, 0.5, (ts * s > 0).astype(s.dtype)))
    return -data_loss(method, s, t, w)


@partial(jax.jit, static_argnames=("method", "n_iter", "n_folds", "scoring"))
def _cv_scores(a, t, folds, regs, balanced, *, method, n_iter, n_folds, scoring):
    """Held-out scores ``(R, F)``: every fold × λ fitted in one vmapped call."""
    train = (folds[None, :] != jnp.arange(n_folds)[:, None]).astype(a.dtype)
    tt = jnp.broadcast_to(t, train.shape)
    h = _fit_grid(a, tt, train, regs, method=method, balanced=balanced, n_iter=n_iter)  # (F, R, m)
    s = jnp.einsum("frm,nm->frn", h, a, precision=jax.lax.Precision.HIGHEST)
    score = jax.vmap(  # over folds
        jax.vmap(lambda s1, held: _score(scoring, method, s1, t, held, balanced), in_axes=(0, None)),
    )(s, 1 - train)
    return score.T


def stratified_folds(labels: Any, n_folds: int, key: Any = 0) -> np.ndarray:
    """Fold index of every sample: a seeded shuffle, then each class dealt round-robin.

    Every fold gets ``⌊n_c/k⌋`` or ``⌈n_c/k⌉`` samples of class ``c``; the
    negatives' dealing continues where the positives' stopped, so fold sizes
    differ by at most one. Deterministic for a given ``key``.

    Args:
      labels: ``(N,)`` binary labels.
      n_folds: number of folds ``k ≥ 2``.
      key: ``jax.random.key`` or an int seed.

    Returns:
      ``(N,)`` int array with values in ``[0, k)``.

    Example:
      >>> stratified_folds(np.array([0, 1] * 5), 5, key=0)
    """
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an int ≥ 2; got {n_folds!r}")
    t = np.asarray(labels)
    if t.ndim != 1 or not np.isin(t, (0, 1)).all():
        raise ValueError(f"labels must be a 1-D array of binary labels; got shape {t.shape}, dtype {t.dtype}")
    t = t.astype(np.int64)
    key = jax.random.key(key) if isinstance(key, (int, np.integer)) else key
    perm = np.asarray(jax.random.permutation(key, t.shape[0]))
    folds = np.empty(t.shape[0], np.int64)
    offset = 0
    for cls in (1, 0):
        members = perm[t[perm] == cls]
        folds[members] = (offset + np.arange(members.size)) % n_folds
        offset += members.size
    return folds


class CVResult(NamedTuple):
    """Result of :func:`select_reg`."""

    reg: float  # the chosen λ
    regs: np.ndarray  # (R,) the grid
    scores: np.ndarray  # (R, k) held-out score of every λ on every fold
    mean: np.ndarray  # (R,) mean over folds
    folds: np.ndarray  # (N,) fold index of every sample


def select_reg(
    acts: Array,
    labels: Array,
    *,
    method: str,
    regs: Any = DEFAULT_REGS,
    n_folds: int = 5,
    key: Any = 0,
    balanced: bool = True,
    pool: str = "max",
    scoring: str = "auc",
    n_iter: int | None = None,
) -> CVResult:
    """Choose ``λ`` by stratified k-fold cross-validation (all folds × grid in one call).

    ``λ̂ = argmax_λ (1/k) Σ_f score(h_λ^{(−f)}; fold f)``, where ``h_λ^{(−f)}`` is
    fitted on the other folds (with class-balanced weights recomputed on them)
    and scored on fold ``f``. Ties go to the largest ``λ`` (the most
    regularised fit).

    Scores on the held-out rows, higher is better:

    - ``"auc"`` (default): ROC AUC of the projections ``a·h`` — needs no
      threshold or intercept, ignores the scale of ``h``, and is already
      normalised per class (so ``balanced`` does not change it);
    - ``"accuracy"``: (class-balanced if ``balanced``) accuracy of ``sign(a·h)``
      against ``t*``, like scikit-learn's default for classifiers without intercept;
    - ``"loss"``: minus the (balanced) mean data-fit term of the method.

    Args:
      acts: ``(N, m)`` or ``(N, H, W, m)`` finite float activations.
      labels: ``(N,)`` binary labels with at least ``n_folds`` samples per class.
      method: ``"ridge"``, ``"lasso"``, ``"logistic"`` or ``"svm"``.
      regs: 1-D grid of ``λ ≥ 0`` (default ``1e-5 … 1e4``, one per decade).
      n_folds: ``k ≥ 2``.
      key: ``jax.random.key`` or int seed for the fold assignment.
      balanced, pool, n_iter: as in :func:`fit_cavs`.
      scoring: ``"auc"``, ``"accuracy"`` or ``"loss"``.

    Returns:
      :class:`CVResult` with the chosen ``reg``, the grid, per-fold and mean
      scores, and the folds.

    Example:
      >>> cv = select_reg(acts, labels, method="ridge")
      >>> h = fit_cav(acts, labels, method="ridge", reg=cv.reg)
    """
    _checks.check_choice("method", method, METHODS)
    if not SOLVERS[method].uses_reg:
        raise ValueError(f"method={method!r} has no regularisation to select; use ridge, lasso, logistic or svm")
    _checks.check_choice("pool", pool, POOLS)
    _checks.check_choice("scoring", scoring, SCORINGS)
    _checks.check_n_iter(n_iter)
    _checks.check_bool("balanced", balanced)
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an int ≥ 2; got {n_folds!r}")
    if _checks.is_traced(acts) or _checks.is_traced(labels):
        raise ValueError("select_reg needs concrete acts and labels (the folds are built on the host); call it outside jax.jit")
    acts = _checks.check_acts("acts", acts)
    labels = _checks.check_concept_labels("labels", labels, acts.shape[0], matrix_ok=False)
    grid = _checks.check_regs("regs", regs, ranks=(1,))
    t = np.asarray(labels).astype(np.int64)
    smallest = int(min(t.sum(), t.size - t.sum()))
    if smallest < n_folds:
        raise ValueError(
            f"labels has only {smallest} samples of one class; n_folds={n_folds} "
            "stratified folds need at least n_folds of each class"
        )
    folds = stratified_folds(t, int(n_folds), key)
    a = _pool(acts, pool)
    scores = _cv_scores(a, jnp.asarray(t, a.dtype), jnp.asarray(folds), grid.astype(a.dtype),
                        jnp.asarray(balanced, bool), method=method, n_iter=_n_iter(method, n_iter),
                        n_folds=int(n_folds), scoring=scoring)
    scores = np.asarray(scores, np.float64)
    mean = scores.mean(axis=1)
    grid_np = np.asarray(regs, np.float64)  # the caller's values, not their float32 copies
    best = float(np.max(grid_np[mean == mean.max()]))
    return CVResult(best, grid_np, scores, mean, folds)


# --------------------------------------------------------------------------- #
# the public fitter
# --------------------------------------------------------------------------- #


def fit_cav(
    acts: Array,
    labels: Array,
    *,
    method: str = "signal",
    reg: float | str | None = None,
    balanced: bool = True,
    pool: str = "max",
    n_iter: int | None = None,
    regs: Any = DEFAULT_REGS,
    n_folds: int = 5,
    key: Any = 0,
    scoring: str = "auc",
) -> Array:
    """Unit concept activation vector ``h/||h||`` of one concept (SPEC §1).

    ``"signal"`` (default): ``h = Σ_n ω_n (a_n − ā)(t_n − t̄)``, closed form.
    Otherwise ``h = argmin_h Σ_n ω_n ℓ(t*_n, a_n·h) + λ·penalty(h)`` for the
    squared (ridge, lasso), logistic or hinge (svm) loss; see the module
    docstring for the formulas and the equivalent scikit-learn settings.

    Args:
      acts: ``(N, m)`` activations ``a_n``, or ``(N, H, W, m)`` conv activations
        pooled with ``pool``; finite floats.
      labels: ``(N,)`` concept labels ``t_n``, bool or int 0/1, both classes present.
      method: ``"signal"``, ``"ridge"``, ``"lasso"``, ``"logistic"`` or ``"svm"``.
      reg: ``λ ≥ 0``; ``None`` or ``"cv"`` chooses it by :func:`select_reg` over
        ``regs`` (the reference protocol). Must be ``None`` for ``"signal"``.
      balanced: sample weights ``∝ 1/n_pos`` and ``1/n_neg``.
      pool: ``"max"`` (SPEC) or ``"mean"`` pooling of conv activations.
      n_iter: iterations of the lasso/logistic/svm solvers (see :func:`fit_cavs`).
      regs, n_folds, key, scoring: the cross-validation's grid, folds, seed and
        score (see :func:`select_reg`); used only when ``λ`` is chosen by CV.

    Returns:
      ``(m,)`` unit vector.

    Raises:
      ValueError: for bad shapes/dtypes, non-finite activations, non-binary or
        single-class labels, an unknown method/pool, a negative ``reg``, or a
        zero solution (e.g. lasso with ``λ`` above ``λ_max``).

    Example:
      >>> h = fit_cav(acts, has_artifact)                        # signal CAV, max-pooled
      >>> h = fit_cav(acts, has_artifact, method="svm", reg=1e-3)
    """
    _checks.check_choice("method", method, METHODS)
    uses_reg = SOLVERS[method].uses_reg
    if not uses_reg and reg is not None:
        raise ValueError(f"method={method!r} has no regularisation; reg must be None, got {reg!r}")
    acts = _checks.check_acts("acts", acts)
    labels = _checks.check_concept_labels("labels", labels, acts.shape[0], matrix_ok=False)
    if uses_reg and (reg is None or (isinstance(reg, str) and reg == "cv")):
        reg = select_reg(acts, labels, method=method, regs=regs, n_folds=n_folds, key=key,
                         balanced=balanced, pool=pool, scoring=scoring, n_iter=n_iter).reg
    elif uses_reg:
        _checks.check_regs("reg", reg, ranks=(0,))
    h = fit_cavs(acts, labels, method=method, regs=reg, balanced=balanced, pool=pool, n_iter=n_iter)
    if not _checks.is_traced(h) and not bool(jnp.any(h != 0)):
        raise ValueError(
            f"the fitted CAV is the zero vector (method={method!r}, reg={reg!r}); for lasso "
            "λ is at or above λ_max = 2·max_j |Σ_n ω_n t*_n a_nj|, otherwise the two classes "
            "have the same mean activation: choose a smaller reg or another layer"
        )
    return h
