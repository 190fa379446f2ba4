"""Pure-JAX solvers behind :func:`jaxbias.concepts.fit_cav`: fixed shapes, bounded iteration counts.

Every fitter minimises, over ``h ∈ R^m`` and without an intercept,

    Σ_n ω_n ℓ(t*_n, a_n·h) + penalty_λ(h),      t*_n = 2 t_n − 1,  Σ_n ω_n = 1,

where ``ω`` are the normalised sample weights of :func:`sample_weights` (zero
for rows left out, e.g. the held-out fold of a cross-validation split). With
``ω_n = 1/N`` this is the ``(1/N) Σ_n`` of SPEC §1.

A method is two functions: ``prepare(a, t, ω) -> stats`` does the work that
does not depend on ``λ`` (a Gram matrix and its eigendecomposition), and
``solve(stats, λ, n_iter) -> h`` the rest, so a grid of ``λ`` is a ``vmap`` over
``solve`` only. ``h`` is returned unnormalised; the callers normalise. Iterative
solvers run a fixed number of steps (lasso, logistic) or a ``while_loop`` capped
at ``n_iter`` epochs (svm), so everything jits and vmaps.

No function here validates its input: :mod:`jaxbias.concepts.cav` does that at
the public boundary.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

# Full-precision matmuls: on accelerators a float32 matmul may run in TF32 or
# bf16 by default, which moves the solutions of ill-conditioned Gram systems.
_HI = jax.lax.Precision.HIGHEST


def _mm(x: Array, y: Array) -> Array:
    return jnp.matmul(x, y, precision=_HI)


def _safe_div(num: Array, den: Array) -> Array:
    """``num / den`` where ``den ≠ 0``, else 0 (empty class or all-zero input, no NaN)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def sample_weights(t: Array, mask: Array, balanced: bool) -> Array:
    """Normalised weights ``ω`` of the rows with ``mask = 1``; ``Σ_n ω_n = 1``.

    ``ω_n ∝ 1/n_pos`` for concept rows and ``∝ 1/n_neg`` for the others when
    ``balanced`` (each class carries half the total weight, so
    ``Σ_n ω_n ℓ_n = ½ (mean_pos ℓ + mean_neg ℓ)``), ``ω_n = 1/N`` otherwise.

    Args:
      t: ``(N,)`` concept labels in {0, 1} (floating).
      mask: ``(N,)`` 1 for the rows used, 0 for rows left out.
      balanced: class-balanced weights (a Python or traced bool).

    Returns:
      ``(N,)`` weights, zero where ``mask = 0``.
    """
    n_pos = jnp.sum(mask * t)
    n_neg = jnp.sum(mask * (1 - t))
    per_class = mask * (_safe_div(t, 2 * n_pos) + _safe_div(1 - t, 2 * n_neg))
    # A select, not a Python branch: `balanced` may be traced, so both
    # weightings share one compiled function.
    return jnp.where(balanced, per_class, _safe_div(mask, jnp.sum(mask)))


class Solver(NamedTuple):
    """``prepare(a, t, ω) -> stats`` and ``solve(stats, λ, n_iter) -> h`` of one method."""

    prepare: Callable
    solve: Callable
    uses_reg: bool
    default_n_iter: int


# --------------------------------------------------------------------------- #
# signal (pattern) CAV
# --------------------------------------------------------------------------- #


def _signal_prepare(a, t, w):
    a_bar = _mm(w, a)
    t_bar = jnp.dot(w, t)
    # h = Σ_n ω_n (a_n − ā)(t_n − t̄). With weights that are constant within a
    # class this is W₊W₋(μ₊ − μ₋) for any such weights (W± the class totals).
    return _mm((w * (t - t_bar)), a - a_bar)


def _signal_solve(h, lam, n_iter):
    del lam, n_iter
    return h


# --------------------------------------------------------------------------- #
# ridge: Σ ω (t* − a·h)² + λ||h||² — closed form through the eigenbasis of G
# --------------------------------------------------------------------------- #


class _Gram(NamedTuple):
    gram: Array  # G = Aᵀ diag(ω) A, (m, m)
    rhs: Array  # b = Aᵀ (ω t*), (m,)
    evals: Array  # eigenvalues of G, ascending, (m,)
    evecs: Array  # eigenvectors of G (columns), (m, m)


def _gram_prepare(a, t, w):
    ts = 2 * t - 1
    gram = _mm(a.T * w, a)
    gram = 0.5 * (gram + gram.T)  # exactly symmetric for eigh
    rhs = _mm(a.T, w * ts)
    evals, evecs = jnp.linalg.eigh(gram)
    return _Gram(gram, rhs, evals, evecs)


def _ridge_solve(s: _Gram, lam, n_iter):
    del n_iter
    # h = (G + λI)⁻¹ b = V diag(1/(s + λ)) Vᵀ b. One eigendecomposition serves
    # the whole λ grid. Directions with s + λ at round-off level are dropped,
    # so λ = 0 on a singular G gives the minimum-norm (pseudo-inverse) solution.
    den = s.evals + lam
    tol = jnp.finfo(den.dtype).eps * den.shape[0] * jnp.maximum(s.evals[-1], 0)
    inv = jnp.where(den > tol, 1 / jnp.where(den > tol, den, 1), 0)
    return _mm(s.evecs, inv * _mm(s.evecs.T, s.rhs))


# --------------------------------------------------------------------------- #
# lasso: Σ ω (t* − a·h)² + λ Σ|h_j| — FISTA with adaptive restart
# --------------------------------------------------------------------------- #


def _soft(x, thresh):
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - thresh, 0)


def _lasso_solve(s: _Gram, lam, n_iter):
    # Σ ω (t* − a·h)² = hᵀGh − 2bᵀh + const: every iteration is one m×m
    # matvec, independent of N. The gradient 2(Gh − b) is 2·s_max-Lipschitz.
    step = _safe_div(jnp.ones_like(s.evals[-1]), 2 * s.evals[-1])
    thresh = step * lam

    def body(_, carry):
        h, y, k = carry
        h_new = _soft(y - step * 2 * (_mm(s.gram, y) - s.rhs), thresh)
        # O'Donoghue & Candès gradient restart: drop the momentum when it points
        # uphill; keeps FISTA monotone-ish on ill-conditioned Gram matrices.
        restart = jnp.dot(y - h_new, h_new - h) > 0
        k = jnp.where(restart, 1.0, k)
        k_new = 0.5 * (1 + jnp.sqrt(1 + 4 * k * k))
        y_new = h_new + jnp.where(restart, 0.0, (k - 1) / k_new) * (h_new - h)
        return h_new, y_new, k_new

    h0 = jnp.zeros_like(s.rhs)
    h, _, _ = jax.lax.fori_loop(0, n_iter, body, (h0, h0, jnp.ones((), s.rhs.dtype)))
    return h


# --------------------------------------------------------------------------- #
# logistic: Σ ω log(1 + exp(−t* a·h)) + λ||h||² — damped Newton
# --------------------------------------------------------------------------- #

# Step sizes 1, ½, …, 2⁻¹⁹ tried at once (one vmapped objective): a backtracking
# line search without a data-dependent loop.
_N_STEPS = 20
_ARMIJO = 1e-4


class _Data(NamedTuple):
    a: Array  # (N, m)
    ts: Array  # t* = 2t − 1, (N,)
    w: Array  # ω, (N,)


def _data_prepare(a, t, w):
    return _Data(a, 2 * t - 1, w)


def _logistic_solve(d: _Data, lam, n_iter):
    def objective(h):
        return jnp.dot(d.w, jax.nn.softplus(-d.ts * _mm(d.a, h))) + lam * jnp.dot(h, h)

    eye = jnp.eye(d.a.shape[1], dtype=d.a.dtype)
    steps = 0.5 ** jnp.arange(_N_STEPS, dtype=d.a.dtype)

    def body(_, h):
        z = _mm(d.a, h)
        grad = -_mm(d.a.T, d.w * d.ts * jax.nn.sigmoid(-d.ts * z)) + 2 * lam * h
        curv = d.w * jax.nn.sigmoid(z) * jax.nn.sigmoid(-z)
        hess = _mm(d.a.T * curv, d.a) + 2 * lam * eye
        p = -jnp.linalg.solve(hess, grad)
        # λ = 0 on separable data makes the Hessian singular as h grows:
        # a non-finite direction means "stop here", never NaN.
        p = jnp.where(jnp.all(jnp.isfinite(p)), p, 0)
        f0 = objective(h)
        f = jax.vmap(lambda s: objective(h + s * p))(steps)
        # Near the optimum the decrease is below float32 resolution of f; the
        # round-off allowance lets the (then full, quadratically convergent)
        # Newton step through instead of stalling.
        slack = 8 * jnp.finfo(f0.dtype).eps * jnp.abs(f0)
        ok = f <= f0 + _ARMIJO * steps * jnp.dot(grad, p) + slack
        step = jnp.where(jnp.any(ok), steps[jnp.argmax(ok)], 0)
        return h + step * p

    return jax.lax.fori_loop(0, n_iter, body, jnp.zeros(d.a.shape[1], d.a.dtype))


# --------------------------------------------------------------------------- #
# svm: Σ ω max(0, 1 − t* a·h) + λ||h||² — dual coordinate ascent
# --------------------------------------------------------------------------- #


# Stop the dual ascent once every projected gradient is this small (in margin
# units, |t*_n a_n·h − 1| on free α_n): far tighter than liblinear's 1e-4 default
# tolerance, still above float32 round-off for moderate ||h||.
_SVM_TOL = 1e-5


def _svm_solve(d: _Data, lam, n_iter):
    # Dividing by 2λ gives the textbook form ½||h||² + Σ_n C_n max(0, 1 − t*_n a_n·h)
    # with C_n = ω_n / (2λ); its dual is max_α Σα − ½||Σ α_n t*_n a_n||², 0 ≤ α_n ≤ C_n,
    # and h = Σ α_n t*_n a_n. Coordinate ascent on α (Hsieh et al. 2008, the
    # liblinear solver) updates one α_n exactly per step, in a seeded random
    # order per epoch, for at most n_iter epochs. λ = 0 is the hard margin (C_n = ∞).
    upper = jnp.where(d.w > 0, d.w / (2 * lam), 0)
    active = upper > 0  # rows with ω_n = 0 (held out) keep α_n = 0 and never count
    q = jnp.sum(d.a * d.a, axis=1)
    n = d.a.shape[0]

    def sample(i, carry):
        alpha, h = carry
        x, y = d.a[i], d.ts[i]
        g = y * jnp.dot(x, h, precision=_HI) - 1
        new = jnp.clip(alpha[i] - _safe_div(g, q[i]), 0, upper[i])
        h = h + (new - alpha[i]) * y * x
        return alpha.at[i].set(new), h

    def violation(alpha, h):
        g = d.ts * _mm(d.a, h) - 1
        pg = jnp.where(alpha <= 0, jnp.minimum(g, 0), jnp.where(alpha >= upper, jnp.maximum(g, 0), g))
        return jnp.max(jnp.where(active & (q > 0), jnp.abs(pg), 0))

    def epoch(carry):
        e, alpha, h, _ = carry
        # A fresh order each epoch (fixed seed, so deterministic) converges much
        # faster than cycling, as in liblinear.
        order = jax.random.permutation(jax.random.fold_in(jax.random.key(0), e), n)
        alpha, _ = jax.lax.fori_loop(0, n, lambda j, c: sample(order[j], c), (alpha, h))
        # Rebuild h = Σ α_n t*_n a_n once per epoch: the N rank-one updates
        # accumulate float32 round-off otherwise.
        h = _mm(d.a.T, alpha * d.ts)
        return e + 1, alpha, h, violation(alpha, h)

    def running(carry):
        e, _, _, viol = carry
        return (e < n_iter) & (viol > _SVM_TOL)

    dtype = d.a.dtype
    init = (jnp.zeros((), jnp.int32), jnp.zeros(n, dtype), jnp.zeros(d.a.shape[1], dtype), jnp.array(jnp.inf, dtype))
    _, _, h, _ = jax.lax.while_loop(running, epoch, init)
    return h


# --------------------------------------------------------------------------- #
# data-fit terms ℓ (held-out loss for cross-validation)
# --------------------------------------------------------------------------- #


def data_loss(method: str, scores: Array, t: Array, w: Array) -> Array:
    """``Σ_n ω_n ℓ(t*_n, s_n)`` for the method's loss ``ℓ`` at scores ``s = a·h``."""
    ts = 2 * t - 1
    if method in ("ridge", "lasso"):
        per = (ts - scores) ** 2
    elif method == "logistic":
        per = jax.nn.softplus(-ts * scores)
    elif method == "svm":
        per = jnp.maximum(0, 1 - ts * scores)
    else:
        raise ValueError(f"method={method!r} has no data-fit loss")
    return jnp.dot(w, per)


SOLVERS: dict[str, Solver] = {
    "signal": Solver(_signal_prepare, _signal_solve, uses_reg=False, default_n_iter=0),
    "ridge": Solver(_gram_prepare, _ridge_solve, uses_reg=True, default_n_iter=0),
    "lasso": Solver(_gram_prepare, _lasso_solve, uses_reg=True, default_n_iter=2000),
    "logistic": Solver(_data_prepare, _logistic_solve, uses_reg=True, default_n_iter=50),
    "svm": Solver(_data_prepare, _svm_solve, uses_reg=True, default_n_iter=1000),
}
