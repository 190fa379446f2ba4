"""FMD: measure bias on counterfactual pairs, find harmful samples by influence, unlearn by a Newton step.

Chen, Yang, Huang, Cheng, Zou, Tao. *Fast Model Debias with Machine
Unlearning.* NeurIPS 2023 (SPEC §5). Post-hoc: no training loss; the edit
changes a trained model's parameters.

Symbols → arguments:

=====================  ======================================================
paper                  here
=====================  ======================================================
``f_θ``                ``logits_fn(params, x) -> (B, k)`` logits
``(x, x̄)``             ``x``, ``x_cf`` (same labels ``y``; only the protected
                       attribute differs)
``B(θ)``               :func:`counterfactual_bias`
``L(z, θ)``            per-sample cross-entropy of ``z = (x, y)``
``H``                  Hessian of ``hessian_loss`` (mean training loss, or the
                       loss on the data at hand) on the parameter block
``θ`` block            ``subset``: top-level parameter groups (the last
                       layer(s)); the rest is frozen
``I(z_k)``             :func:`influence_on_bias`
=====================  ======================================================

Cost: one inverse HVP ``s = H⁻¹ ∇B`` serves every training sample, whose
influence ``−sᵀ ∇L(z_k)`` is the directional derivative of every per-sample
loss along ``s``: one JVP for the whole training set, no per-sample gradients;
the Newton-step edit is one more inverse HVP. The post-hoc entry point is
:func:`edit` (or :func:`debias`, which also reports), configured by
:class:`Hparams`.

Curvature: ``"hessian"`` is the paper's Hessian of the cross-entropy;
``"ggn"`` (default) its Gauss-Newton part, positive semi-definite for any
parameter block, identical for the last layer. The step scale ``s`` is chosen
on the counterfactual pairs when not given (the authors tune it): the
smallest bias on the pairs whose accuracy on their factual half stays within
``max_acc_drop`` of the model's.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
import warnings
from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxbias.batching import each_batch
from jaxbias.data.lazy import is_lazy
from jaxbias.methods import Kind
from jaxbias.influence import (METHODS, check_solution, ggn_matvec, hessian_matvec, inverse_ggn, inverse_hvp, merge,
                               select, solve_flat)

Array = jax.Array

log = logging.getLogger(__name__)

#: Post-hoc: :func:`edit` changes trained parameters; no training loss.
KIND = Kind(post_hoc=True)

#: Training samples the curvature of a ``"training"``-mode edit is taken on when the training set is streamed
#: (:class:`~jaxbias.data.lazy.LazyImages`): a seeded random subsample of at most this many, held in memory. The
#: influence of every training sample and the removed samples' gradients still use the whole set, read a batch
#: at a time.
STREAM_CURVATURE_SAMPLES = 1024
LogitsFn = Callable[[Any, Array], Array]

__all__ = ["KIND", "Hparams", "EditResult", "counterfactual_bias", "check_pair_labels", "per_sample_grads",
           "influence_on_bias", "resolve_subset", "unlearn_training", "unlearn_counterfactual", "debias", "edit", "pair_scores"]

MODES = ("counterfactual", "training")
CURVATURES = ("ggn", "hessian")
#: Step scales tried when ``Hparams.scale`` is ``None`` (log grid).
SCALE_GRID = tuple(float(v) for v in np.geomspace(1e-5, 1.0, 31))


@dataclasses.dataclass(frozen=True)
class Hparams:
    """FMD's edit.

    Attributes:
      mode: ``"counterfactual"`` — replace each external pair's factual sample
        by its counterfactual, no training data (the paper's external-set
        variant); ``"training"`` — rank the training samples by influence on
        the bias and unlearn the ``top_k`` most harmful (replaced by their
        counterfactuals when those are given).
      params: the parameter block that is edited: ``"last"`` (the output
        layer), ``"lastN"`` (the last N layers), ``"all"``, or a
        comma-separated list of top-level parameter groups.
      curvature: ``"ggn"`` or ``"hessian"`` (module docstring).
      solver: ``"cg"``, ``"exact"`` or ``"lissa"`` (:mod:`jaxbias.influence`).
      damping: ``λ`` added to the curvature's diagonal.
      scale: the step scale ``s``; ``None`` chooses it from :data:`SCALE_GRID`
        on the pairs (``"training"`` mode: ``None`` is also allowed, and
        ``1/n`` is the textbook value).
      max_acc_drop: largest loss of accuracy on the pairs that the scale
        search accepts (fraction, 0.03 = 3 points).
      accuracy_on: which accuracy the search keeps: ``"factual"`` (the
        pairs' factual samples: the biased, in-distribution view) or
        ``"both"`` (factual and counterfactual samples: a bias-balanced view,
        like an unbiased test set).
      top_k: ``"training"`` mode: how many harmful samples are unlearned.
      steps: Newton steps (``"counterfactual"`` mode). ``1`` is the paper's
        single step. Each further step re-linearises at the edited
        parameters: the replacement direction and the curvature are taken
        again there, solved, and its scale searched on the same grid; a step
        is kept only when it lowers ``B`` on the pairs while their accuracy
        stays within ``max_acc_drop`` of the *original* model's, so the
        accuracy budget is shared by all steps (else the parameters stay and
        the step's scale is reported as 0). The steps run inside the same
        compiled program.
    """

    mode: str = "counterfactual"
    params: str = "last"
    curvature: str = "ggn"
    solver: str = "cg"
    damping: float = 1e-2
    scale: float | None = None
    max_acc_drop: float = 0.03
    accuracy_on: str = "factual"
    top_k: int = 100
    steps: int = 1

    #: The fields that take one of a few values (``jaxbias unlearn`` offers them as choices).
    CHOICES: ClassVar[dict[str, tuple]] = {"mode": MODES, "curvature": CURVATURES, "solver": METHODS,
                                           "accuracy_on": ("factual", "both")}

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {self.mode!r}")
        if self.curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}; got {self.curvature!r}")
        if self.solver not in METHODS:
            raise ValueError(f"solver must be one of {METHODS}; got {self.solver!r}")
        if not (isinstance(self.damping, (int, float)) and self.damping >= 0):
            raise ValueError(f"damping must be a number >= 0; got {self.damping!r}")
        if self.scale is not None and not (isinstance(self.scale, (int, float)) and np.isfinite(self.scale)
                                           and self.scale > 0):
            raise ValueError(f"scale must be a positive number or None; got {self.scale!r}")
        if not (isinstance(self.max_acc_drop, (int, float)) and 0 <= self.max_acc_drop <= 1):
            raise ValueError(f"max_acc_drop must be in [0, 1]; got {self.max_acc_drop!r}")
        if self.accuracy_on not in ("factual", "both"):
            raise ValueError(f"accuracy_on must be 'factual' or 'both'; got {self.accuracy_on!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be a positive int; got {self.top_k!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive int (Newton steps); got {self.steps!r}")
        if self.steps > 1 and self.mode != "counterfactual":
            raise ValueError(f'steps={self.steps} needs mode="counterfactual": "training" mode unlearns its '
                             "top_k samples in one step")
        if not isinstance(self.params, str) or not self.params.strip():
            raise ValueError(f"params must be 'last', 'lastN', 'all' or comma-separated group names; got {self.params!r}")


def _check_pairs(x, x_cf, y):
    if jnp.shape(x) != jnp.shape(x_cf):
        raise ValueError(f"x_cf must have the shape of x {jnp.shape(x)}; got {jnp.shape(x_cf)}")
    if jnp.ndim(y) != 1 or jnp.shape(y)[0] != jnp.shape(x)[0]:
        raise ValueError(f"y must be (N,) = ({jnp.shape(x)[0]},) labels shared by each pair; got shape {jnp.shape(y)}")


def counterfactual_bias(logits_fn: LogitsFn, params: Any, x: Array, x_cf: Array, y: Array) -> Array:
    """``B(θ) = mean_n |p_θ(y_n | x_n) − p_θ(y_n | x̄_n)|`` over counterfactual pairs.

    Example:
      >>> counterfactual_bias(lambda p, x: model(p, x).logits, params, x, x_other_colour, y)
    """
    _check_pairs(x, x_cf, y)
    y = jnp.asarray(y)

    def p_true(xx):
        return jnp.take_along_axis(jax.nn.softmax(logits_fn(params, xx)), y[:, None], axis=1)[:, 0]

    return jnp.mean(jnp.abs(p_true(x) - p_true(x_cf)))


def check_pair_labels(y: Array, y_cf: Array) -> None:
    """Counterfactual pairs share their label; raise when they do not."""
    y, y_cf = np.asarray(y), np.asarray(y_cf)
    if y.shape != y_cf.shape or np.any(y != y_cf):
        bad = int(np.sum(y != y_cf)) if y.shape == y_cf.shape else "all"
        raise ValueError(f"counterfactual pairs must have the same label; {bad} pair(s) differ")


def per_sample_grads(logits_fn: LogitsFn, params: dict, x: Array, y: Array, *, subset: Sequence[str] | None):
    """``∇_θ L(z_n, θ)`` on the block for every sample: a pytree with a leading ``N`` axis (vmapped)."""
    block = select(params, subset)

    def loss(b, xi, yi):
        logits = logits_fn(merge(params, b), xi[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

    return jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(block, jnp.asarray(x), jnp.asarray(y))


def _summed_grad(logits_fn: LogitsFn, params: dict, x: Array, y: Array, subset) -> dict:
    """``Σ_n ∇_θ L(z_n, θ)`` on the block: one backward pass of the summed loss, not N per-sample ones."""
    block = select(params, subset)

    def total(b):
        logits = logits_fn(merge(params, b), jnp.asarray(x))
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)))

    return jax.grad(total)(block)



def _per_sample_losses(logits_fn: LogitsFn, params: dict, x: Array, y: Array):
    def losses(p):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, jnp.asarray(x)), jnp.asarray(y))

    return losses


def _ce_loss(logits_fn: LogitsFn, x: Array, y: Array) -> Callable[[dict], Array]:
    """The mean cross-entropy on ``(x, y)`` as a function of the full parameters."""
    def f(p):
        return jnp.mean(_per_sample_losses(logits_fn, p, x, y)(p))

    return f


def influence_on_bias(
    logits_fn: LogitsFn,
    params: dict,
    train_x: Array,
    train_y: Array,
    pairs: tuple[Array, Array, Array],
    *,
    hessian_loss: Callable[[dict], Array] | None = None,
    subset: Sequence[str] | None = None,
    damping: float = 0.0,
    method: str = "cg",
    curvature: str = "hessian",
) -> Array:
    """``I(z_k) = −∇_θ B(θ̂)ᵀ H⁻¹ ∇_θ L(z_k, θ̂)`` for every training sample, ``(N,)``.

    ``I > 0``: up-weighting ``z_k`` raises the bias (a harmful sample); removing
    it changes ``B`` by about ``−I(z_k)/n`` for a mean loss over ``n`` samples.
    All ``N`` values come from one JVP of the per-sample losses along
    ``s = H⁻¹ ∇B``.

    Args:
      pairs: ``(x, x_cf, y)`` counterfactual pairs defining ``B``.
      hessian_loss: scalar loss of the full parameters whose Hessian is ``H``
        (``curvature="hessian"``); ``None``: the mean cross-entropy on the
        training data.
      subset, damping, method: see :func:`jaxbias.influence.inverse_hvp`.
      curvature: ``"hessian"`` or ``"ggn"`` (Gauss-Newton on the training inputs).
    """
    _check_pairs(*pairs)
    solve = _solver(logits_fn, params, train_x, train_y, subset=subset, damping=damping, method=method,
                    curvature=curvature, hessian_loss=hessian_loss)
    s = solve(_bias_gradient(logits_fn, params, pairs, subset))
    return _influences(logits_fn, subset, params, s, train_x, train_y)


def _solver(logits_fn, params, x, y, *, subset, damping, method, curvature, hessian_loss=None):
    """``v ↦ (C + λI)⁻¹ v`` on the block, ``C`` the Hessian of the mean loss or the Gauss-Newton matrix on ``x``."""
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}; got {curvature!r}")
    if curvature == "ggn":
        return lambda v: inverse_ggn(logits_fn, params, x, v, method=method, damping=damping, subset=subset)
    f = hessian_loss if hessian_loss is not None else _ce_loss(logits_fn, x, y)
    return lambda v: inverse_hvp(f, params, v, method=method, damping=damping, subset=subset)


def _newton(params, direction, solve, subset, scale):
    step = solve(direction)
    block = select(params, subset)
    return merge(params, jax.tree.map(lambda p, d: p + scale * d, block, step))


def unlearn_training(
    logits_fn: LogitsFn,
    params: dict,
    x: Array,
    y: Array,
    *,
    n_train: int,
    hessian_loss: Callable[[dict], Array],
    subset: Sequence[str] | None = None,
    damping: float = 0.0,
    method: str = "cg",
) -> dict:
    """Remove the samples ``(x, y)`` (e.g. the top-K harmful) by one Newton step.

    ``θ_new = θ̂ + H⁻¹ Σ_k ∇L(z_k, θ̂) / n_train``.
    """
    total = _summed_grad(logits_fn, params, x, y, subset)
    solve = _solver(logits_fn, params, None, None, subset=subset, damping=damping, method=method,
                    curvature="hessian", hessian_loss=hessian_loss)
    return _newton(params, total, solve, subset, 1.0 / n_train)


def unlearn_counterfactual(
    logits_fn: LogitsFn,
    params: dict,
    pairs: tuple[Array, Array, Array],
    *,
    scale: float,
    hessian_loss: Callable[[dict], Array],
    subset: Sequence[str] | None = None,
    damping: float = 0.0,
    method: str = "cg",
) -> dict:
    """Replace each biased sample by its counterfactual, with no training data.

    ``θ_new = θ̂ + s · H⁻¹ Σ_k (∇L(z_k, θ̂) − ∇L(z̄_k, θ̂))``, ``s = scale``.
    """
    _check_pairs(*pairs)
    solve = _solver(logits_fn, params, None, None, subset=subset, damping=damping, method=method,
                    curvature="hessian", hessian_loss=hessian_loss)
    return _newton(params, _replacement_direction(logits_fn, params, pairs, subset), solve, subset, scale)


def _replacement_direction(logits_fn, params, pairs, subset):
    """``Σ_k ∇L(z_k) − ∇L(z̄_k)`` on the block (two summed backward passes)."""
    x, x_cf, y = pairs
    g = _summed_grad(logits_fn, params, x, y, subset)
    g_cf = _summed_grad(logits_fn, params, x_cf, y, subset)
    return jax.tree.map(jnp.subtract, g, g_cf)


_LAST_N = re.compile(r"^last(\d*)$")


def resolve_subset(spec: str, params: dict, *, order: Sequence[str] | None = None) -> tuple[str, ...] | None:
    """The parameter groups named by ``spec`` (``None`` for all).

    ``"last"``/``"lastN"`` count from the end of ``order``, the model's layers
    in forward order (default: the order of ``params``, which is Flax's call
    order after ``init``).

    Example:
      >>> resolve_subset("last2", {"fc1": ..., "fc2": ..., "out": ...})
      ('fc2', 'out')
    """
    if not isinstance(spec, str):
        raise ValueError(f"params must be a string ('last', 'lastN', 'all' or group names); got {spec!r}")
    groups = list(order) if order is not None else list(params)
    unknown = sorted(set(groups) - set(params))
    if unknown:
        raise ValueError(f"order names {unknown}, which are not parameter groups {sorted(params)}")
    spec = spec.strip()
    if spec == "all":
        return None
    m = _LAST_N.match(spec)
    if m:
        n = int(m.group(1) or 1)
        if not 1 <= n <= len(groups):
            raise ValueError(f"params={spec!r} asks for the last {n} of {len(groups)} parameter groups {groups}")
        return tuple(groups[-n:])
    names = tuple(t.strip() for t in spec.split(",") if t.strip())
    select(params, names)  # raises for names that match nothing
    return names


class EditResult(NamedTuple):
    """What :func:`debias` did.

    ``params``: the edited parameters; ``subset``: the groups changed
    (``None``: all); ``scale``: the step scale used; ``seconds``: wall-clock
    time of the edit (gradients, solve, scale search; results on the host);
    ``bias_before``/``bias_after`` and ``acc_before``/``acc_after``: ``B`` and
    the accuracy (``Hparams.accuracy_on``) on the pairs given; ``removed``: the
    indices of the unlearned training samples (``"training"`` mode);
    ``grid``: ``(scales, bias, accuracy)`` of the scale search (empty when the
    scale was given); ``feasible``: whether the searched scale kept the
    accuracy within ``max_acc_drop`` (when no grid point does, the smallest
    scale is used and a warning is issued); ``step_scales``: the scale of
    every Newton step (``Hparams.steps``; 0 for a step that was not taken).
    """

    params: dict
    subset: tuple[str, ...] | None
    scale: float
    seconds: float
    bias_before: float
    bias_after: float
    acc_before: float
    acc_after: float
    removed: np.ndarray | None
    grid: tuple[np.ndarray, np.ndarray, np.ndarray]
    feasible: bool = True
    step_scales: np.ndarray | None = None


def pair_scores(logits_fn, params, pairs, accuracy_on="factual"):
    """``(bias, accuracy)`` on counterfactual pairs ``(x, x_cf, y)``: the mean |p_y(x) − p_y(x_cf)| and the
    accuracy on the factual inputs (``accuracy_on="factual"``) or on both halves."""
    x, x_cf, y = pairs
    y = jnp.asarray(y)
    logits = logits_fn(params, jnp.concatenate([jnp.asarray(x), jnp.asarray(x_cf)]))
    p = jnp.take_along_axis(jax.nn.softmax(logits), jnp.concatenate([y, y])[:, None], axis=1)[:, 0]
    n = y.shape[0]
    hits = jnp.argmax(logits, axis=-1) == jnp.concatenate([y, y])
    acc = jnp.mean(hits[:n]) if accuracy_on == "factual" else jnp.mean(hits)
    return jnp.mean(jnp.abs(p[:n] - p[n:])), acc


def _flat_solver(logits_fn, params, x, y, subset, hp):
    """Traceable ``v ↦ ((C + λI)⁻¹ v, flat, diag)`` on the block for ``hp.curvature`` on ``(x, y)``."""
    flat0, unravel = ravel_pytree(select(params, subset))
    if hp.curvature == "ggn":
        curvature = ggn_matvec(logits_fn, params, unravel, flat0, x)
    else:
        curvature = hessian_matvec(_ce_loss(logits_fn, x, y), params, unravel, flat0)

    def solve(v):
        vflat = ravel_pytree(v)[0].astype(flat0.dtype)
        out, diag = solve_flat(curvature, vflat, method=hp.solver, damping=hp.damping)
        return unravel(out), out, diag

    return solve


def _scales(hp: Hparams, n_train: int | None) -> np.ndarray:
    if hp.scale is not None:
        return np.asarray([hp.scale], np.float32)
    if hp.mode == "counterfactual":
        return np.asarray(SCALE_GRID, np.float32)
    return (np.geomspace(1e-2, 1e2, 21) / n_train).astype(np.float32)  # around the textbook 1/n


def _bias_gradient(logits_fn, params, pairs, subset):
    """``∇_θ B`` on the block."""
    return jax.grad(lambda b: counterfactual_bias(logits_fn, merge(params, b), *pairs))(select(params, subset))


def _influences(logits_fn, subset, params, s, x, y):
    """``I(z_k) = −∇L(z_k)·s`` of the rows ``(x, y)``: one JVP of their per-sample losses along ``s``."""
    losses = _per_sample_losses(logits_fn, params, x, y)
    return -jax.jvp(lambda b: losses(merge(params, b)), (select(params, subset),), (s,))[1]


@functools.lru_cache(maxsize=32)
def _influence_fn(logits_fn, subset):
    """:func:`_influences` as one function object per ``(logits_fn, subset)``: its batches compile once."""
    return functools.partial(_influences, logits_fn, subset)


@functools.partial(jax.jit, static_argnames=("logits_fn", "hp", "subset"))
def _bias_solution(logits_fn, params, pairs, curvature_data, *, hp, subset):
    """``(s, s_flat, diag)``: ``s = (C + λI)⁻¹ ∇B`` with the curvature on ``curvature_data = (x, y)``."""
    return _flat_solver(logits_fn, params, *curvature_data, subset, hp)(
        _bias_gradient(logits_fn, params, pairs, subset))


@functools.partial(jax.jit, static_argnames=("logits_fn", "hp", "subset", "n_train"))
def _debias_core(logits_fn, params, pairs, train, train_cf, *, hp, subset, gone=None, n_train=None):
    """The whole edit as one compiled program: gradients, solve(s), influences, scale search.

    ``gone = (x, y, x_cf or None)``: the removed training samples, already chosen (a streamed training set,
    :func:`_streamed_removal`; ``n_train`` its size); ``train`` is then only the curvature's data."""
    block = select(params, subset)
    diags = []
    removed = None
    if hp.mode == "counterfactual":
        cx = jnp.concatenate([pairs[0], pairs[1]])
        cy = jnp.concatenate([pairs[2], pairs[2]])
        solve = _flat_solver(logits_fn, params, cx, cy, subset, hp)
        direction = _replacement_direction(logits_fn, params, pairs, subset)
    else:
        tx, ty = train  # the curvature's data: the training set (a streamed one's subsample, with gone given)
        solve = _flat_solver(logits_fn, params, tx, ty, subset, hp)
        if gone is None:
            n_train = tx.shape[0]
            s, s_flat, d0 = solve(_bias_gradient(logits_fn, params, pairs, subset))
            diags.append((d0, s_flat))
            infl = _influences(logits_fn, subset, params, s, tx, ty)
            removed = jax.lax.top_k(infl, min(hp.top_k, n_train))[1]
            gone = (tx[removed], ty[removed], None if train_cf is None else train_cf[removed])
        direction = _summed_grad(logits_fn, params, gone[0], gone[1], subset)
        if gone[2] is not None:
            g_cf = _summed_grad(logits_fn, params, gone[2], gone[1], subset)
            direction = jax.tree.map(jnp.subtract, direction, g_cf)
    step, step_flat, d1 = solve(direction)
    diags.append((d1, step_flat))
    scales = jnp.asarray(_scales(hp, n_train))

    b0, a0 = pair_scores(logits_fn, params, pairs, hp.accuracy_on)

    def search(cur, step, b_cur=None):
        """``B`` and accuracy of ``cur + s·step`` over the grid; the best scale within the accuracy budget."""
        def at(s):
            return pair_scores(logits_fn, merge(params, jax.tree.map(lambda p, d: p + s * d, cur, step)),
                                pairs, hp.accuracy_on)

        bias, acc = jax.lax.map(at, scales)
        ok = (acc >= a0 - hp.max_acc_drop - 1e-6) & jnp.isfinite(bias)
        if b_cur is not None:  # later Newton steps: only an improvement is taken
            ok = ok & (bias < b_cur)
        return bias, acc, ok, jnp.argmin(jnp.where(ok, bias, jnp.inf))

    bias, acc, ok, best = search(block, step)
    scale = scales[best]
    moved = jax.tree.map(lambda p, d: p + scale * d, block, step)
    after = (bias[best], acc[best])
    step_scales = scale[None]
    if hp.steps > 1:  # counterfactual mode (Hparams checks): cx, cy are the pairs' curvature data

        def newton(carry, _):
            cur, b_cur, a_cur = carry
            here = merge(params, cur)
            step, step_flat, d = _flat_solver(logits_fn, here, cx, cy, subset, hp)(
                _replacement_direction(logits_fn, here, pairs, subset))
            bias_k, acc_k, ok_k, k = search(cur, step, b_cur)
            take = jnp.any(ok_k)
            s_k = jnp.where(take, scales[k], 0.0)
            nxt = jax.tree.map(lambda p, v: p + s_k * v, cur, step)
            return (nxt, jnp.where(take, bias_k[k], b_cur), jnp.where(take, acc_k[k], a_cur)), (s_k, d, step_flat)

        (moved, b_end, a_end), (more, d_k, flat_k) = jax.lax.scan(newton, (moved, *after), None,
                                                                  length=hp.steps - 1)
        after = (b_end, a_end)
        step_scales = jnp.concatenate([step_scales, more])
        diags.append((d_k, flat_k))
    new = merge(params, moved)
    return {"params": new, "scale": scale, "grid": (scales, bias, acc), "before": (b0, a0), "after": after,
            "removed": removed, "diags": diags, "feasible": jnp.any(ok), "step_scales": step_scales}


def _streamed_removal(logits_fn, params, pairs, train, train_cf, *, hp, subset, batch_size):
    """:func:`debias`'s ``"training"`` mode on a streamed training set, up to the choice of the removed samples:
    ``(curvature_data, gone, removed, (diag, s_flat))``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    tx, ty = train[0], np.asarray(train[1])
    n = ty.shape[0]
    rows = np.arange(n)
    if n > STREAM_CURVATURE_SAMPLES:
        rows = np.sort(np.random.default_rng(0).choice(n, STREAM_CURVATURE_SAMPLES, replace=False))
        log.info("FMD on a streamed training set: curvature on a random subsample of %d of the %d training samples "
                 "(STREAM_CURVATURE_SAMPLES); influences over all of them", rows.size, n)
    curvature_data = (jnp.asarray(tx[rows]), jnp.asarray(ty[rows]))
    s, s_flat, diag = _bias_solution(logits_fn, params, pairs, curvature_data, hp=hp, subset=subset)
    infl = np.concatenate([out for _, out in each_batch(_influence_fn(logits_fn, subset), tx, ty,
                                                         args=(params, s), batch_size=batch_size)])
    removed = np.argsort(-infl, kind="stable")[:min(hp.top_k, n)]  # lax.top_k's order: ties by lower index
    gone = (jnp.asarray(tx[removed]), jnp.asarray(ty[removed]),
            None if train_cf is None else jnp.asarray(train_cf[removed]))
    return curvature_data, gone, removed, (diag, s_flat)


def debias(
    logits_fn: LogitsFn,
    params: dict,
    pairs: tuple[Array, Array, Array],
    *,
    hp: Hparams = Hparams(),
    train: tuple[Array, Array] | None = None,
    train_cf: Array | None = None,
    order: Sequence[str] | None = None,
    y_cf: Array | None = None,
    batch_size: int = 256,
) -> EditResult:
    """FMD's post-hoc edit of a trained model, with a report.

    The edit is one compiled program per ``(logits_fn, hp, shapes)``: call it
    again with the same model function (e.g. another checkpoint or other
    pairs of the same size) and nothing recompiles.

    Args:
      logits_fn: ``(params, x) -> (B, k)`` logits in evaluation mode (hashable:
        keep the same function object across calls to reuse the compilation).
      params: the trained parameters (a dict of top-level groups).
      pairs: ``(x, x_cf, y)`` counterfactual pairs; they define ``B`` and, in
        ``"counterfactual"`` mode, are the only data the edit uses (the
        curvature is taken on ``x`` and ``x_cf`` together).
      hp: :class:`Hparams`.
      train: ``(x, y)`` training data (``"training"`` mode; curvature, influence).
      train_cf: counterfactual versions of ``train``'s inputs (``"training"``
        mode, optional): the removed samples are then replaced by these.
      order: the model's parameter groups in forward order (for ``"last"``).
      y_cf: labels of ``x_cf`` when they come separately; they must equal ``y``.
      batch_size: images per batch of a streamed training set (``train[0]`` or ``train_cf`` a
        :class:`~jaxbias.data.lazy.LazyImages`). Such a set is never read whole: the curvature is taken on a
        seeded subsample of at most :data:`STREAM_CURVATURE_SAMPLES` training samples (all of them when there
        are fewer; the log says so otherwise), the influence of every sample is computed ``batch_size`` at a
        time, and only the ``top_k`` removed samples are gathered. The edit is then three compiled programs
        (the bias solve, the batched influences, the rest) instead of one.

    Returns:
      :class:`EditResult`.

    Raises:
      ValueError: pairs whose labels differ, a ``params`` block that matches
        nothing, missing training data in ``"training"`` mode, or a curvature
        that is not positive definite at this damping (never NaN).

    Example:
      >>> res = debias(logits_fn, params, (x, x_cf, y), hp=Hparams(params="last"))
      >>> res.bias_before, res.bias_after, res.seconds
    """
    if not isinstance(hp, Hparams):
        raise ValueError(f"hp must be fmd.Hparams; got {type(hp).__name__}")
    x, x_cf, y = pairs
    _check_pairs(x, x_cf, y)
    if y_cf is not None:
        check_pair_labels(y, y_cf)
    if jnp.shape(x)[0] == 0:
        raise ValueError("pairs must hold at least one counterfactual pair")
    subset = resolve_subset(hp.params, params, order=order)
    t0 = time.perf_counter()
    pairs = (jnp.asarray(x), jnp.asarray(x_cf), jnp.asarray(y))
    streamed = None
    if hp.mode == "training":
        if train is None:
            raise ValueError('mode="training" needs train=(x, y), the training data')
        if np.ndim(train[1]) != 1 or np.shape(train[0])[0] != np.shape(train[1])[0]:
            raise ValueError(f"train must be (x, y) with y of shape (N,) = ({np.shape(train[0])[0]},); "
                             f"got {np.shape(train[1])}")
        if train_cf is not None and tuple(np.shape(train_cf)) != tuple(np.shape(train[0])):
            raise ValueError(f"train_cf must have the shape of train x {tuple(np.shape(train[0]))}; got "
                             f"{tuple(np.shape(train_cf))}")
        if is_lazy(train[0]) or is_lazy(train_cf):
            streamed = _streamed_removal(logits_fn, params, pairs, train, train_cf, hp=hp, subset=subset,
                                         batch_size=batch_size)
        else:
            train = (jnp.asarray(train[0]), jnp.asarray(train[1]))
            train_cf = None if train_cf is None else jnp.asarray(train_cf)
    else:
        train = train_cf = None
    if streamed is None:
        out = _debias_core(logits_fn, params, pairs, train, train_cf, hp=hp, subset=subset)
    else:
        curvature_data, gone, removed, first = streamed
        out = _debias_core(logits_fn, params, pairs, curvature_data, None, hp=hp, subset=subset, gone=gone,
                           n_train=int(np.shape(train[1])[0]))
        out = {**out, "removed": removed, "diags": [first, *out["diags"]]}
    out = jax.block_until_ready(out)
    seconds = time.perf_counter() - t0
    for diag, sol in out["diags"]:
        if jnp.ndim(diag) == 0:
            check_solution(hp.solver, sol, diag, hp.damping)
        else:  # the later Newton steps, stacked
            for d_i, sol_i in zip(diag, sol):
                check_solution(hp.solver, sol_i, d_i, hp.damping)
    if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(select(out["params"], subset))):
        raise ValueError("the edit produced non-finite parameters; increase damping or give a smaller scale")
    grid = tuple(np.asarray(g) for g in out["grid"]) if hp.scale is None else (np.zeros(0),) * 3
    removed = None if out["removed"] is None else np.asarray(out["removed"])
    feasible = hp.scale is not None or bool(out["feasible"])
    if not feasible:
        warnings.warn(f"FMD: no step scale on the grid kept the accuracy on the pairs within max_acc_drop="
                      f"{hp.max_acc_drop}; used the smallest, {float(out['scale']):.3g} (raise damping or give scale=)",
                      stacklevel=2)
    return EditResult(out["params"], subset, float(out["scale"]), seconds, float(out["before"][0]),
                      float(out["after"][0]), float(out["before"][1]), float(out["after"][1]), removed, grid, feasible,
                      np.asarray(out["step_scales"]))


def edit(logits_fn: LogitsFn, params: dict, pairs: tuple[Array, Array, Array], *, hp: Hparams = Hparams(),
         **kwargs) -> dict:
    """The post-hoc method contract: the edited parameters of :func:`debias`."""
    return debias(logits_fn, params, pairs, hp=hp, **kwargs).params
