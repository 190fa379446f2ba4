"""Weights you already have (``.npz``, ``.safetensors``, an orbax checkpoint) as a model's ``(params, state)``.

:func:`load_weights` reads a file and checks it, key by key, against the
variables :func:`jaxbias.models.init` would create for the module (found with
``jax.eval_shape``: nothing is initialised), so a run (``RunConfig.weights``,
``jaxbias train --weights FILE``) starts from exactly these values or is
refused in one line. :func:`save_weights` writes the layout it reads.

Formats, chosen by the path:

- ``*.npz`` (``numpy.savez``): one array per key;
- ``*.safetensors`` (the format PyTorch / Hugging Face weights ship in, read by
  ``safetensors.numpy.load_file``): one tensor per key;
- a directory: an orbax checkpoint of a nested dict (``ocp.StandardCheckpointer().save(path, tree)`` or
  ``PyTreeCheckpointer``), either ``{"params": ..., "batch_stats": ...}`` or the params tree alone; its
  nested keys are joined with ``/`` and read like the files' keys.

Key layout: the path of a leaf in the model's variables, ``/``-separated, below
its collection: ``params/stem/conv/kernel``, ``batch_stats/stem/bn/mean``
(any collection of the model's state names itself the same way). A key whose
first part is no collection of the model is a parameter (``stem/conv/kernel``
is ``params/stem/conv/kernel``). In a ``.safetensors`` file whose keys contain
no ``/``, ``.`` separates the parts (``stem.conv.kernel``). An NNX network
wrapped by :func:`~jaxbias.models.from_nnx` has its list indices as parts
(``blocks/0/linear/kernel``).

Checks (each a one-line ``ValueError`` naming the file): the file exists and
its format is known; every key is a variable of the model and every variable
has a key; each array has the variable's shape exactly (nothing is broadcast);
a float variable gets a float array (cast to the variable's dtype), any other
variable an array of its own kind.

Example::

    save_weights("net.npz", params, model_state)          # {"batch_stats": ...}
    params, model_state = load_weights("net.npz", module, x[:1])
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from safetensors.numpy import load_file, save_file

__all__ = ["FORMATS", "load_weights", "save_weights"]

#: The file formats by extension (a directory is an orbax checkpoint).
FORMATS = (".npz", ".safetensors")
PARAMS = "params"


def _key_text(key: Any) -> str:
    for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _flat(tree: Any) -> dict[str, Any]:
    """``{"a/b/c": leaf}`` of a nested tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_text(k) for k in path): leaf for path, leaf in leaves}


def _listed(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def _read(path: str) -> dict[str, np.ndarray]:
    """The file's arrays by key, as written."""
    if os.path.isdir(path):
        try:
            with warnings.catch_warnings():  # a single-host restore: the saved sharding is the one we want
                warnings.filterwarnings("ignore", message="Sharding info not provided")
                tree = ocp.PyTreeCheckpointer().restore(os.path.abspath(path))
        except Exception as e:  # noqa: BLE001 - orbax reports a folder it cannot read in many ways
            first = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"weights {path!r}: a directory but not a readable orbax checkpoint of a nested dict "
                             f"({type(e).__name__}: {first})") from None
        return {k: np.asarray(v) for k, v in _flat(tree).items()}
    if not os.path.exists(path):
        raise ValueError(f"weights {path!r} not found; expected a .npz or .safetensors file or an orbax checkpoint "
                         "directory")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (ValueError, OSError) as e:
            raise ValueError(f"weights {path!r}: not a readable .npz file of arrays ({e})") from None
    if path.endswith(".safetensors"):
        try:
            arrays = load_file(path)
        except Exception as e:  # noqa: BLE001 - safetensors' own header/dtype checks (SafetensorError, OSError)
            first = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"weights {path!r}: not a readable .safetensors file ({first})") from None
        if not any("/" in k for k in arrays):
            arrays = {k.replace(".", "/"): v for k, v in arrays.items()}
        return arrays
    raise ValueError(f"weights {path!r}: unknown format; expected a .npz or .safetensors file or an orbax checkpoint "
                     "directory")


def load_weights(path: str | os.PathLike, module: Any, sample_x: Any) -> tuple[Any, Any]:
    """``(params, model_state)`` for ``module`` read from ``path`` (the formats and keys: the module's docstring).

    Args:
      path: a ``.npz`` / ``.safetensors`` file or an orbax checkpoint directory.
      module: the Linen module (a bundled model, or a network wrapped by ``from_linen`` / ``from_nnx``).
      sample_x: one sample batch (an array or a ``jax.ShapeDtypeStruct``; only its shape and dtype are used).

    Returns:
      ``(params, model_state)`` with exactly the tree structure of ``models.init(module, key, sample_x)``,
      each array of the variable's dtype.

    Raises:
      ValueError: one line naming the file: missing, unknown format, keys the model lacks, variables the file
      lacks, a shape or dtype-kind mismatch.
    """
    path = os.fspath(path)

    def init(x):  # jaxbias.models.init (this module sits below it: no import cycle)
        variables = dict(module.init(jax.random.key(0), x, train=False))
        return variables.pop(PARAMS), variables

    template = jax.eval_shape(init, sample_x)
    params_t, state_t = template
    collections = {PARAMS, *state_t}
    wanted = {**{f"{PARAMS}/{k}": v for k, v in _flat(params_t).items()},
              **{f"{c}/{k}": v for c in state_t for k, v in _flat(state_t[c]).items()}}
    arrays = {}
    for key, value in _read(path).items():
        full = key if key.split("/", 1)[0] in collections and "/" in key else f"{PARAMS}/{key}"
        if full in arrays:
            raise ValueError(f"weights {path!r}: {key!r} and {full!r} name the same variable; keep one")
        arrays[full] = value
    extra = sorted(set(arrays) - set(wanted))
    if extra:
        raise ValueError(f"weights {path!r}: {len(extra)} key(s) the model lacks: {_listed(extra)}; the model's keys "
                         f"are like {_listed(sorted(wanted), 3)}")
    missing = sorted(set(wanted) - set(arrays))
    if missing:
        raise ValueError(f"weights {path!r}: {len(missing)} model variable(s) the file lacks: {_listed(missing)} "
                         f"(the file has {len(arrays)} of the model's {len(wanted)})")
    out = {}
    for key, spec in wanted.items():
        value = arrays[key]
        if tuple(value.shape) != tuple(spec.shape):
            raise ValueError(f"weights {path!r}: {key} has shape {tuple(value.shape)} in the file but "
                             f"{tuple(spec.shape)} in the model")
        floating = jnp.issubdtype(spec.dtype, jnp.floating)
        same_kind = (jnp.issubdtype(value.dtype, jnp.floating) if floating
                     else jnp.issubdtype(value.dtype, spec.dtype) or np.dtype(value.dtype).kind == np.dtype(spec.dtype).kind)
        if not same_kind:
            raise ValueError(f"weights {path!r}: {key} is {value.dtype} in the file but the model's variable is "
                             f"{spec.dtype}; expected a {'float' if floating else str(spec.dtype)} array")
        out[key] = jnp.asarray(value, dtype=spec.dtype)

    def rebuild(tree: Any, prefix: str) -> Any:
        paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
        leaves = [out["/".join([prefix, *(_key_text(k) for k in p)])] for p, _ in paths]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    params = rebuild(params_t, PARAMS)
    state = type(state_t)({c: rebuild(state_t[c], c) for c in state_t}) if isinstance(state_t, Mapping) else state_t
    return params, state


def save_weights(path: str | os.PathLike, params: Any, model_state: Mapping[str, Any] | None = None) -> None:
    """Write ``params`` (and the state's collections, e.g. ``batch_stats``) to a ``.npz`` or ``.safetensors`` file
    in the key layout :func:`load_weights` reads (``params/...``, ``batch_stats/...``).

    Example::

        save_weights("run.safetensors", run.state.params, run.state.model_state)
    """
    path = os.fspath(path)
    arrays = {f"{PARAMS}/{k}": v for k, v in _flat(params).items()}
    for c, tree in dict(model_state or {}).items():
        arrays.update({f"{c}/{k}": v for k, v in _flat(tree).items()})
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in arrays.items()}
    if path.endswith(".npz"):
        with open(path, "wb") as f:  # a file object: numpy.savez would append .npz to a path without it
            np.savez(f, **arrays)
    elif path.endswith(".safetensors"):
        save_file(arrays, path)
    else:
        raise ValueError(f"weights {path!r}: unknown format; expected a path ending in .npz or .safetensors (an orbax "
                         "checkpoint: orbax.checkpoint.StandardCheckpointer().save(path, tree))")
