"""Input checks of the concepts package: ``ValueError`` naming the argument, its shape/dtype and what was expected.

Value checks (finite, binary, non-negative) run only on concrete inputs; under
``jax.jit`` the shapes and dtypes are still checked and the values are trusted.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

POOLS = ("max", "mean")


def is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")
    return value


def check_acts(name: str, acts: Any) -> jax.Array:
    """``acts`` as a floating array of shape ``(N, m)`` or ``(N, H, W, m)`` with finite values."""
    acts = jnp.asarray(acts)
    shape, dtype = acts.shape, acts.dtype
    if acts.ndim not in (2, 4):
        raise ValueError(
            f"{name} must have shape (N, m) or conv activations (N, H, W, m); "
            f"got rank {acts.ndim}, shape {shape}"
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype; got dtype {dtype} (shape {shape})")
    if acts.size == 0:
        raise ValueError(f"{name} must be non-empty; got shape {shape}")
    # Reduced on the device: only one boolean comes back, not the activations.
    if not is_traced(acts) and not bool(jnp.all(jnp.isfinite(acts))):
        n_bad = int(jnp.sum(~jnp.isfinite(acts)))
        raise ValueError(
            f"{name} has {n_bad} NaN/inf entries (shape {shape}, dtype {dtype}); "
            "expected finite activations"
        )
    return acts


def check_acts_vary(name: str, acts: jax.Array, pool: str) -> None:
    """Refuse activations that are the same for every sample (up to float rounding) after pooling.

    A saturated or dead layer (tanh at ±1, ReLU all zero) gives such acts; any direction fitted on them
    is made of rounding noise, whose sign may flip with the constant.
    """
    if is_traced(acts):
        return
    a = acts if acts.ndim == 2 else (jnp.max(acts, axis=(1, 2)) if pool == "max" else jnp.mean(acts, axis=(1, 2)))
    check_range_varies(name, np.asarray(jnp.min(a, axis=0)), np.asarray(jnp.max(a, axis=0)), a.shape[0])


def check_range_varies(name: str, low: Any, high: Any, n: int) -> None:
    """:func:`check_acts_vary` from each feature's smallest and largest value over ``n`` samples (what a
    batch-by-batch fit keeps)."""
    spread = float(np.max(np.asarray(high) - np.asarray(low)))
    scale = float(np.max(np.maximum(np.abs(low), np.abs(high))))
    if spread <= 1e-6 * scale or scale == 0.0:
        raise ValueError(
            f"{name} are the same for all {n} samples (largest spread of a feature {spread:.3g}, "
            f"magnitude {scale:.3g}): a saturated or dead layer has no concept direction; choose another layer"
        )


def check_concept_labels(name: str, labels: Any, n: int, *, matrix_ok: bool) -> jax.Array:
    """Binary concept labels of shape ``(N,)`` (or ``(C, N)``), both classes in every row."""
    labels = jnp.asarray(labels)
    shape, dtype = labels.shape, labels.dtype
    ranks = (1, 2) if matrix_ok else (1,)
    expected = f"({n},) or (n_concepts, {n})" if matrix_ok else f"({n},)"
    if labels.ndim not in ranks:
        raise ValueError(f"{name} must have shape {expected}; got shape {shape}")
    if not (dtype == jnp.bool_ or jnp.issubdtype(dtype, jnp.integer)):
        raise ValueError(
            f"{name} must be binary concept labels with a bool or integer dtype; got dtype {dtype}"
        )
    if shape[-1] != n:
        raise ValueError(
            f"{name} has shape {shape} but acts has {n} rows; expected shape {expected}"
        )
    if is_traced(labels):
        return labels
    value = np.asarray(labels).astype(np.int64).reshape(-1, n)
    bad = ~np.isin(value, (0, 1))
    if bad.any():
        raise ValueError(
            f"{name} must be binary (0/1 or bool); got values {np.unique(value[bad])[:5].tolist()} "
            f"(shape {shape}, dtype {dtype})"
        )
    n_pos = value.sum(axis=1)
    single = np.nonzero((n_pos == 0) | (n_pos == n))[0]
    if single.size:
        row = f"{name}[{single[0]}]" if labels.ndim == 2 else name
        only = "1 (all concept)" if n_pos[single[0]] == n else "0 (no concept)"
        raise ValueError(
            f"{row} has a single class: every label is {only}; a CAV needs samples "
            "with and without the concept"
        )
    return labels


def check_regs(name: str, regs: Any, *, ranks: tuple[int, ...]) -> jax.Array:
    """Regularisation strength(s) ``λ``: real, finite, ``≥ 0``, of rank in ``ranks``."""
    if isinstance(regs, str):
        raise ValueError(f"{name} must be a non-negative number; got {regs!r}")
    arr = jnp.asarray(regs)
    if arr.ndim not in ranks or not (
        jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)
    ):
        kind = "a scalar" if ranks == (0,) else "a scalar or a 1-D array"
        raise ValueError(
            f"{name} must be {kind} of real numbers; got shape {arr.shape}, dtype {arr.dtype}"
        )
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty; got shape {arr.shape}")
    if not is_traced(arr):
        value = np.asarray(arr, np.float64)
        bad = ~(np.isfinite(value) & (value >= 0))
        if bad.any():
            raise ValueError(
                f"{name} must be finite and non-negative (λ ≥ 0); got {value[bad][:5].tolist()}"
            )
    return arr


def check_bool(name: str, value: Any) -> None:
    if not (isinstance(value, (bool, np.bool_)) or (is_traced(value) and jnp.result_type(value) == jnp.bool_)):
        raise ValueError(f"{name} must be a bool; got {value!r}")


def check_n_iter(n_iter: Any) -> None:
    if n_iter is not None and (
        isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 1
    ):
        raise ValueError(f"n_iter must be a positive int or None; got {n_iter!r}")
