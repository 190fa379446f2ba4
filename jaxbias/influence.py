"""Hessian-vector products and inverse-Hessian-vector products over parameter pytrees.

Influence functions (Koh & Liang 2017) and FMD's Newton-step unlearning
(SPEC §5) need ``(H + λI)⁻¹ v`` with ``H = ∇²_θ f(θ)`` the Hessian of a training
loss, usually on a small block of parameters (the last layer). Three solvers:

- ``"exact"``: the dense Hessian of the block (one HVP per basis vector,
  vmapped) and a Cholesky solve; for blocks up to a few thousand parameters.
- ``"cg"``: conjugate gradient on HVPs; ``H + λI`` must be positive definite.
- ``"lissa"``: the Neumann-series recursion ``x ← v + (I − A/s) x`` with
  ``A = H + λI`` and the scale ``s`` above ``A``'s largest eigenvalue (found by
  power iteration when not given); returns ``x / s``.

HVPs are forward-over-reverse (``jax.jvp`` of ``jax.grad``): one extra forward
pass per product, no Hessian materialised.

:func:`inverse_ggn` solves with the Gauss-Newton matrix of the cross-entropy
instead (``JᵀHJ``, one JVP + one VJP per product): positive semi-definite for
any block, equal to the Hessian for the last layer, and the usual choice when
the block has hidden layers and the model is not at a strict minimum.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

Array = jax.Array
PyTree = Any

METHODS = ("exact", "cg", "lissa")

__all__ = ["METHODS", "hvp", "ggn_vp", "hessian_matvec", "ggn_matvec", "inverse_hvp", "inverse_ggn", "select", "merge"]


def select(params: dict, names: Sequence[str] | None) -> dict:
    """The top-level groups ``names`` of ``params`` (all of them for ``None``)."""
    if names is None:
        return params
    names = list(names)
    unknown = sorted(set(names) - set(params))
    if not names or unknown:
        raise ValueError(f"params subset {names} must name top-level groups of {sorted(params)}; unknown {unknown}")
    return {k: params[k] for k in names}


def merge(params: dict, sub: dict) -> dict:
    """``params`` with the groups of ``sub`` replaced."""
    return {**params, **sub}


def hvp(f: Callable[[PyTree], Array], params: PyTree, v: PyTree) -> PyTree:
    """``∇²f(params) · v`` by forward-over-reverse differentiation (same structure as ``params``).

    Example:
      >>> hvp(lambda p: jnp.sum(p["w"] ** 4), {"w": jnp.ones(3)}, {"w": jnp.ones(3)})  # 12·w²·v
    """
    return jax.jvp(jax.grad(f), (params,), (v,))[1]


def _check(params, v, damping, method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if jax.tree.structure(params) != jax.tree.structure(v):
        raise ValueError(
            "v must have the structure of the (selected) parameters; got "
            f"{jax.tree.structure(v)} for parameters {jax.tree.structure(params)}"
        )
    for p, x in zip(jax.tree.leaves(params), jax.tree.leaves(v)):
        if jnp.shape(p) != jnp.shape(x):
            raise ValueError(f"v has a leaf of shape {jnp.shape(x)} where the parameters have {jnp.shape(p)}")
    if not (float(damping) >= 0):
        raise ValueError(f"damping must be a non-negative number; got {damping!r}")


def inverse_hvp(
    f: Callable[[PyTree], Array],
    params: dict,
    v: PyTree,
    *,
    method: str = "cg",
    damping: float = 0.0,
    subset: Sequence[str] | None = None,
    maxiter: int = 1000,
    tol: float = 1e-8,
    lissa_depth: int = 5000,
    lissa_scale: float | None = None,
) -> PyTree:
    """``(H + damping·I)⁻¹ v`` with ``H`` the Hessian of ``f`` at ``params`` (restricted to ``subset``).

    Args:
      f: scalar loss of the full parameter pytree (e.g. the mean training loss).
      params: a dict of parameter groups (Flax ``params``).
      v: the right-hand side, structured like ``select(params, subset)``.
      method: ``"exact"``, ``"cg"`` or ``"lissa"`` (module docstring).
      damping: ``λ ≥ 0`` added to the diagonal; needed when ``H`` is not
        positive definite (a network away from a strict minimum).
      subset: top-level parameter groups that form the block (``None``: all);
        the others are held fixed.
      maxiter, tol: CG iterations and relative residual tolerance.
      lissa_depth, lissa_scale: LiSSA iterations and scale ``s`` (``None``:
        1.1 × the largest eigenvalue of ``H + λI`` from 50 power iterations).

    Returns:
      ``x`` structured like ``v``.

    Raises:
      ValueError: for a ``v`` that does not match the block, an unknown
        subset, negative damping, or — instead of a silent wrong answer or NaN
        — when ``H + λI`` is not positive definite (``"exact"``: smallest
        eigenvalue ≤ 0; ``"cg"``/``"lissa"``: relative residual above 1e-3).

    Example:
      >>> x = inverse_hvp(loss, params, grad_bias, method="cg", damping=1e-3, subset=("fc",))
    """
    sub = select(params, subset)
    _check(sub, v, damping, method)
    flat0, unravel = ravel_pytree(sub)

    curvature = hessian_matvec(f, params, unravel, flat0)
    return _solve(curvature, flat0, unravel, v, method=method, damping=damping, maxiter=maxiter, tol=tol,
                  lissa_depth=lissa_depth, lissa_scale=lissa_scale)


def ggn_vp(logits_fn: Callable[[PyTree, Array], Array], params: dict, x: Array, v: PyTree, *,
           subset: Sequence[str] | None = None) -> PyTree:
    """Gauss-Newton product ``G v = (1/N) Σ_n J_nᵀ (diag(p_n) − p_n p_nᵀ) J_n v`` of the mean cross-entropy.

    ``J_n`` is the Jacobian of sample ``n``'s logits with respect to the block,
    ``p_n`` its softmax. ``G`` is the Hessian of the mean cross-entropy without
    the term of the network's own curvature: always positive semi-definite,
    and equal to the Hessian when the logits are linear in the block (the last
    layer). One JVP and one VJP per product.
    """
    sub = select(params, subset)
    _check(sub, v, 0.0, "cg")
    flat0, unravel = ravel_pytree(sub)
    vflat, _ = ravel_pytree(v)
    return unravel(ggn_matvec(logits_fn, params, unravel, flat0, x)(vflat.astype(flat0.dtype)))


def hessian_matvec(f, params, unravel, flat0):
    """``u ↦ H u`` on the flat parameter vector: the Hessian of ``f`` at ``flat0`` (forward-over-reverse JVP).

    ``params`` is the full tree, ``unravel`` maps a flat vector to the block that varies (:func:`merge`d in).
    """
    def f_flat(q):
        return f(merge(params, unravel(q)))

    def matvec(u):
        return jax.jvp(jax.grad(f_flat), (flat0,), (u,))[1]

    return matvec


def ggn_matvec(logits_fn, params, unravel, flat0, x):
    """``u ↦ G u``: the Gauss-Newton matrix of the mean cross-entropy on ``x`` at ``flat0``, ``Jᵀ (diag p − p pᵀ) J / n``
    (one JVP and one VJP per product; ``unravel`` as for :func:`hessian_matvec`)."""
    x = jnp.asarray(x)
    n = x.shape[0]

    def logits(q):
        return logits_fn(merge(params, unravel(q)), x)

    z, pullback = jax.vjp(logits, flat0)
    p = jax.nn.softmax(z)

    def matvec(u):
        jv = jax.jvp(logits, (flat0,), (u,))[1]
        hjv = p * jv - p * jnp.sum(p * jv, axis=-1, keepdims=True)
        return pullback(hjv / n)[0]

    return matvec


def inverse_ggn(
    logits_fn: Callable[[PyTree, Array], Array],
    params: dict,
    x: Array,
    v: PyTree,
    *,
    method: str = "cg",
    damping: float = 0.0,
    subset: Sequence[str] | None = None,
    maxiter: int = 1000,
    tol: float = 1e-8,
    lissa_depth: int = 5000,
    lissa_scale: float | None = None,
) -> PyTree:
    """``(G + damping·I)⁻¹ v`` with ``G`` the Gauss-Newton matrix of the mean cross-entropy on ``x`` (:func:`ggn_vp`).

    The positive semi-definite stand-in for the Hessian when the block has
    hidden layers (where the true Hessian is indefinite away from a minimum).
    Arguments and errors as :func:`inverse_hvp`; ``G`` has no zero-gradient
    assumption, so it is the same at any ``params``.
    """
    sub = select(params, subset)
    _check(sub, v, damping, method)
    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (N, ...); got shape {x.shape}")
    flat0, unravel = ravel_pytree(sub)
    curvature = ggn_matvec(logits_fn, params, unravel, flat0, x)
    return _solve(curvature, flat0, unravel, v, method=method, damping=damping, maxiter=maxiter, tol=tol,
                  lissa_depth=lissa_depth, lissa_scale=lissa_scale)


def _solve(curvature, flat0, unravel, v, *, method, damping, maxiter, tol, lissa_depth, lissa_scale):
    """``(C + damping·I)⁻¹ v`` for the flat matvec ``curvature``; residual/eigenvalue checks instead of NaN."""
    if lissa_scale is not None and not lissa_scale > 0:
        raise ValueError(f"lissa_scale must be positive; got {lissa_scale}")
    vflat, _ = ravel_pytree(v)
    x, diag = solve_flat(curvature, vflat.astype(jnp.promote_types(flat0.dtype, jnp.float32)), method=method,
                         damping=damping, maxiter=maxiter, tol=tol, lissa_depth=lissa_depth, lissa_scale=lissa_scale)
    check_solution(method, x, diag, damping)
    return unravel(x.astype(flat0.dtype))


def solve_flat(curvature, vflat, *, method, damping, maxiter=1000, tol=1e-8, lissa_depth=5000, lissa_scale=None):
    """``(C + damping·I)⁻¹ v`` on flat vectors, traceable (usable inside ``jax.jit``).

    Returns ``(x, diag)``: ``diag`` is the smallest eigenvalue of ``C + λI``
    for ``"exact"`` and the relative residual otherwise; pass both to
    :func:`check_solution`, which raises instead of returning a wrong answer.
    """
    dtype = vflat.dtype

    def matvec(x):
        return curvature(x) + damping * x

    if method == "exact":
        n = vflat.shape[0]
        h = jax.vmap(matvec)(jnp.eye(n, dtype=dtype))
        h = 0.5 * (h + h.T)
        lo = jnp.linalg.eigvalsh(h)[0]
        x = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(h), vflat)
        return x, lo
    if method == "cg":
        x = _cg(matvec, vflat, tol=tol, maxiter=maxiter)
    elif method == "lissa":
        scale = 1.1 * _top_eigenvalue(matvec, vflat) if lissa_scale is None else jnp.asarray(lissa_scale, dtype)

        def body(_, xx):
            return vflat + xx - matvec(xx) / scale

        x = jax.lax.fori_loop(0, lissa_depth, body, vflat) / scale
    else:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    res = jnp.linalg.norm(matvec(x) - vflat) / jnp.maximum(jnp.linalg.norm(vflat), 1e-30)
    return x, res


def _cg(matvec, b, *, tol, maxiter):
    """Conjugate gradient from 0 that stops at convergence, at ``maxiter``, or at a breakdown.

    The tolerance is raised to the dtype's reach (10 ulp relative residual)
    so float32 does not iterate on rounding noise; a non-positive or
    non-finite ``pᵀAp`` (an indefinite system, or an exact solution reached)
    ends the loop with the last finite iterate instead of a NaN, and the
    caller's residual check reports what happened.
    """
    tol = max(float(tol), 10 * float(jnp.finfo(b.dtype).eps))
    bb = jnp.vdot(b, b)
    thresh = tol * tol * bb

    def cond(state):
        _, _, _, rs, k, ok = state
        return ok & (rs > thresh) & (k < maxiter)

    def body(state):
        x, r, p, rs, k, _ = state
        ap = matvec(p)
        pap = jnp.vdot(p, ap)
        good = jnp.isfinite(pap) & (pap > 0)
        alpha = jnp.where(good, rs / jnp.where(good, pap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = jnp.vdot(r, r)
        p = r + jnp.where(good, rs_new / jnp.where(rs > 0, rs, 1.0), 0.0) * p
        return x, r, p, rs_new, k + 1, good

    init = (jnp.zeros_like(b), b, b, bb, 0, jnp.asarray(True))
    return jax.lax.while_loop(cond, body, init)[0]


def check_solution(method: str, x, diag, damping) -> None:
    """Raise ``ValueError`` when :func:`solve_flat` did not solve the system (indefinite, singular, diverged)."""
    diag = float(diag)
    if method == "exact" and not diag > 0:
        raise ValueError(
            f"H + damping·I is not positive definite (smallest eigenvalue {diag:.3g} with damping={damping}); "
            "increase damping"
        )
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{method} produced non-finite values: the curvature is singular or not finite; "
                         "increase damping")
    if method != "exact" and not diag <= 1e-3:
        raise ValueError(
            f"{method} did not solve (H + damping·I) x = v (relative residual {diag:.3g}); H + {damping}·I is "
            "probably not positive definite or badly conditioned: increase damping"
            + (", maxiter" if method == "cg" else ", lissa_depth")
        )


def _top_eigenvalue(mv: Callable[[Array], Array], v: Array, steps: int = 50) -> Array:
    x = v / jnp.maximum(jnp.linalg.norm(v), 1e-30)
    x = jnp.where(jnp.all(x == 0), jnp.ones_like(x) / jnp.sqrt(x.size), x)

    def body(_, x):
        y = mv(x)
        return y / jnp.maximum(jnp.linalg.norm(y), 1e-30)

    x = jax.lax.fori_loop(0, steps, body, x)
    return jnp.abs(x @ mv(x))
