"""The named-layer hook shared by every bundled model."""
from __future__ import annotations

from typing import Callable, Mapping

import jax

Array = jax.Array


def tap(
    name: str,
    h: Array,
    acts: dict[str, Array],
    perturb: Mapping[str, Array] | None,
    edit: Mapping[str, Callable[[Array], Array]] | None,
) -> Array:
    """Apply ``edit[name]`` then add ``perturb[name]`` to a layer output and record it.

    ``perturb`` is what makes latent gradients cheap: the derivative of the
    output with respect to an added zero array equals the derivative with
    respect to the activation itself (RR-ClArC, TCAV), without splitting the
    network into two functions.
    """
    if edit is not None and name in edit:
        out = edit[name](h)
        if out.shape != h.shape:
            raise ValueError(
                f"edit[{name!r}] changed the layer shape from {h.shape} to {out.shape}; "
                "an edit must return an array of the same shape"
            )
        h = out
    if perturb is not None and name in perturb:
        p = perturb[name]
        if p.shape != h.shape:
            raise ValueError(
                f"perturb[{name!r}] has shape {p.shape}, expected the layer's shape {h.shape} "
                "(no broadcasting)"
            )
        h = h + p
    acts[name] = h
    return h


def check_hooks(
    acts: Mapping[str, Array],
    perturb: Mapping[str, Array] | None,
    edit: Mapping[str, object] | None,
) -> None:
    """Raise for a ``perturb``/``edit`` key that names no layer of the model."""
    for arg, hooks in (("perturb", perturb), ("edit", edit)):
        unknown = sorted(set(hooks or ()) - set(acts))
        if unknown:
            raise ValueError(
                f"{arg} names unknown layer(s) {unknown}; the model's layers are {sorted(acts)}"
            )
