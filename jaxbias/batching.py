"""One batched-inference helper: a function of a batch, applied to a whole array in fixed-size batches.

Used for predictions, activations, relevance maps and influence terms alike
(:func:`map_batches`); :func:`each_batch` hands the batches' outputs over one
at a time, for reductions that must not hold a per-sample array of the whole
set (a streamed dataset).
Every batch has the same shape (the last one is padded and its padding
dropped), so one compilation serves a whole array. Called with concrete
inputs the batches run one after another from the host and the result is a
NumPy array (data larger than the device's memory is fine); called under a
trace (``jit``, ``eval_shape``, ``vmap``) it is one ``lax.map`` over the
batches, so callers stay traceable.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(tree: Any) -> bool:
    """Whether any leaf of ``tree`` is a tracer (inside jit, vmap, grad, eval_shape)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def pad_rows(a: Any, size: int) -> Any:
    """``a`` with its first row repeated up to ``size`` rows: finite padding, so a short batch keeps one compiled
    shape (NumPy in, NumPy out; JAX in, JAX out)."""
    m = a.shape[0]
    if m == size:
        return a
    # repeat the first row: padding that keeps every value finite (zeros could be out of range for a model)
    rows = np.repeat(np.asarray(a[:1]), size - m, axis=0) if isinstance(a, np.ndarray) else jnp.repeat(a[:1], size - m, 0)
    return (np.concatenate if isinstance(a, np.ndarray) else jnp.concatenate)([a, rows])


_JITTED: "weakref.WeakKeyDictionary[Callable, Callable]" = weakref.WeakKeyDictionary()


def _jitted(fn: Callable) -> Callable:
    """One ``jax.jit`` per function: a second call with the same ``fn`` reuses its compilation."""
    try:
        return _JITTED[fn]
    except (KeyError, TypeError):  # TypeError: not weak-referenceable; jit it every time then
        out = jax.jit(fn)
        try:
            _JITTED[fn] = out
        except TypeError:
            pass
        return out


def _rows(xs: tuple, batch_size: Any, caller: str) -> int:
    """The common leading length of ``xs``, after checking ``batch_size`` and the arrays (one line per mistake)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if not xs:
        raise ValueError(f"{caller} needs at least one array to split into batches")
    n = int(np.shape(xs[0])[0]) if np.ndim(xs[0]) else 0
    for i, x in enumerate(xs):
        if np.ndim(x) == 0 or np.shape(x)[0] != n:
            raise ValueError(f"xs[{i}] has shape {np.shape(x)}; every array needs the leading length {n} of xs[0]")
    return n


def map_batches(fn: Callable[..., Any], *xs: Any, args: tuple = (), batch_size: int = 512) -> Any:
    """``fn(*args, *batch)`` over the leading axis of ``xs``, ``batch_size`` rows at a time.

    ``fn`` returns a pytree of arrays whose leading axis is the batch;
    ``args`` (e.g. the parameters) are passed whole to every call. Returns the
    outputs concatenated along the leading axis: NumPy arrays for concrete
    inputs, JAX arrays under a trace. Pass the same ``fn`` object again (not a
    fresh lambda) and its compilation is reused: this is what keeps an
    evaluation per epoch from compiling per epoch.

    Example:
      >>> logits = map_batches(predict, test_x, args=(params, model_state), batch_size=512)
    """
    n = _rows(xs, batch_size, "map_batches")
    if n == 0:
        raise ValueError("the arrays are empty: nothing to compute")
    size = min(batch_size, n)
    if is_traced((args, xs)):
        nb = -(-n // size)
        stacked = [pad_rows(jnp.asarray(x), nb * size).reshape(nb, size, *jnp.shape(x)[1:]) for x in xs]
        out = jax.lax.map(lambda b: fn(*args, *b), stacked)
        return jax.tree.map(lambda o: o.reshape(nb * size, *o.shape[2:])[:n], out)
    chunks = [out for _, out in _each(fn, xs, args, size, n)]
    return jax.tree.map(lambda *cs: np.concatenate(cs), *chunks)


def each_batch(fn: Callable[..., Any], *xs: Any, args: tuple = (), batch_size: int = 512) -> Iterator[tuple[slice, Any]]:
    """``(rows, fn(*args, *batch))`` for each batch of :func:`map_batches`, one after another, as NumPy arrays with
    the padding dropped (``rows``: the batch's slice of the leading axis).

    For a reduction over data larger than memory (a streamed :class:`jaxbias.data.lazy.LazyImages`): only one
    batch of ``xs`` is read, and one batch of outputs held, at a time; whoever iterates keeps what it needs
    (running sums, counts). Concrete inputs only (it runs on the host).

    Example:
      >>> total = sum(float(out.sum()) for _, out in each_batch(predict, test_x, args=(params,), batch_size=256))
    """
    n = _rows(xs, batch_size, "each_batch")
    if is_traced((args, xs)):
        raise ValueError("each_batch runs batches from the host and needs concrete inputs; under a trace use "
                         "map_batches")
    return _each(fn, xs, args, min(batch_size, max(n, 1)), n)


def _each(fn: Callable[..., Any], xs: tuple, args: tuple, size: int, n: int) -> Iterator[tuple[slice, Any]]:
    step = _jitted(fn)
    for start in range(0, n, size):
        batch = [pad_rows(x[start:start + size], size) for x in xs]
        m = min(size, n - start)
        yield slice(start, start + m), jax.tree.map(lambda o, m=m: np.asarray(o)[:m], step(*args, *batch))
