"""One module per method, each with ``KIND``, ``Hparams``, ``State``, ``init`` and ``loss``/``edit``.

:func:`get` finds a method by name without a registry: a new file in this
package (or in a folder added to this package's ``__path__``) is a new method.

Every method module declares what it is as ``KIND`` (a :class:`Kind`), so
callers never guess from which functions it happens to define:

- a *training* method has ``loss(params, state, batch, key, *, model, hp)``;
- a *post-hoc* method has ``edit(logits_fn, params, data, *, hp) -> params``;
- ``fits_on_model``: ``init`` fits the state on a trained model (a CAV), so
  the method corrects a trained model rather than training one from scratch;
- ``corrects_inference``: ``corrected(model, state, hp)`` is the model to use
  at inference (P-ClArC's projection).

Every ``init`` has one signature, ``init(model, params, data, *, hp) -> State``
(``model`` bound in evaluation mode), and is traceable: the state's structure
is ``jax.eval_shape`` of it (:func:`state_template`).
"""
from __future__ import annotations

import dataclasses
import importlib
import numbers
import pkgutil
import re
import typing
from types import ModuleType
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Kind:
    """What a method is; each method module sets ``KIND = Kind(...)``."""

    post_hoc: bool = False
    fits_on_model: bool = False
    corrects_inference: bool = False


def static(default: Any) -> Any:
    """An ``Hparams`` field that selects code paths or shapes: fixed per compiled step, never swept."""
    return dataclasses.field(default=default, metadata={"static": True})


def available() -> list[str]:
    """Names of the method modules in this package."""
    return sorted({m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")})


def get(name: str) -> ModuleType:
    """The method module ``jaxbias.methods.<name>``."""
    names = available()
    if name not in names:
        raise ValueError(f"method {name!r} is unknown; expected one of {names}")
    mod = importlib.import_module(f"{__name__}.{name}")
    if not isinstance(getattr(mod, "KIND", None), Kind):
        raise ValueError(f"method module {mod.__name__} does not declare KIND = jaxbias.methods.Kind(...)")
    return mod


def kind(method: str | ModuleType) -> Kind:
    """The declared :class:`Kind` of a method (by name or module)."""
    mod = get(method) if isinstance(method, str) else method
    k = getattr(mod, "KIND", None)
    if not isinstance(k, Kind):
        raise ValueError(f"method module {mod.__name__} does not declare KIND = jaxbias.methods.Kind(...)")
    return k


def name_of(method: ModuleType) -> str:
    return method.__name__.rsplit(".", 1)[-1]


def training() -> list[str]:
    """Names of the training methods (those with a ``loss``)."""
    return [n for n in available() if not kind(n).post_hoc]


def post_hoc() -> list[str]:
    """Names of the post-hoc methods (those with an ``edit``)."""
    return [n for n in available() if kind(n).post_hoc]


def state_template(method: ModuleType, model: Any, params: Any, data: Any, *, hp: Any) -> Any:
    """The method state's structure (``ShapeDtypeStruct`` leaves): ``jax.eval_shape`` of ``init``.

    ``params`` and ``data`` may themselves be ``ShapeDtypeStruct`` trees; the
    state is never fitted (no data is read, no CAV solver runs).
    """
    import jax

    return jax.eval_shape(lambda p, d: method.init(model, p, d, hp=hp), params, data)


# ----------------------------------------------------------------------------- hyperparameters as text


def fields(method: ModuleType) -> list[dataclasses.Field]:
    """The ``Hparams`` fields of a method."""
    return list(dataclasses.fields(method.Hparams))


def field_types(method: ModuleType) -> dict[str, Any]:
    """``Hparams`` field name -> its resolved type hint."""
    return typing.get_type_hints(method.Hparams)


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> its one-paragraph description in ``cls``'s docstring ``Attributes:`` section
    (``a, b: text`` documents both); for any settings dataclass, method ``Hparams`` among them."""
    doc = (cls.__doc__ or "").split("Attributes:", 1)
    out: dict[str, str] = {}
    current: list[str] = []
    for line in doc[1].splitlines() if len(doc) == 2 else []:
        m = re.match(r"^\s{4,}([\w, ]+):\s*(.*)$", line)
        if m and all(n.strip().isidentifier() for n in m.group(1).split(",")):
            current = [n.strip() for n in m.group(1).split(",")]
            for n in current:
                out[n] = m.group(2).strip()
        elif current and line.strip():
            for n in current:
                out[n] += " " + line.strip()
        elif not line.strip():
            current = []
    return out


def field_docs(method: ModuleType) -> dict[str, str]:
    """``Hparams`` field name -> its one-paragraph description from the class docstring's ``Attributes:``."""
    names = {f.name for f in fields(method)}
    return {k: v for k, v in attribute_docs(method.Hparams).items() if k in names}


def _base_types(hint: Any) -> tuple[Any, bool]:
    """(the non-None type of a hint, whether None is allowed)."""
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def is_numeric(method: ModuleType, name: str) -> bool:
    """Whether a field holds a number (``int``/``float``, not ``bool``)."""
    base, _ = _base_types(field_types(method)[name])
    return base in (int, float)


def sweepable(method: ModuleType) -> list[str]:
    """Numeric fields not marked :func:`static`: the ones a sweep may vmap over."""
    return [f.name for f in fields(method) if is_numeric(method, f.name) and not f.metadata.get("static")]


def parse_value(method: ModuleType, name: str, text: str) -> Any:
    """A field's value from text (a flag, a config file), cast to the field's type.

    ``"none"`` is ``None`` where the field allows it; tuples are comma-separated.
    """
    hints = field_types(method)
    if name not in hints:
        known = [f.name for f in fields(method)]
        raise ValueError(f"{name!r} is not a hyperparameter of method {name_of(method)!r} "
                         + (f"(its hyperparameters: {', '.join(known)})" if known else "(it has none)"))
    try:
        return parse_text(hints[name], text)
    except ValueError:
        raise ValueError(f"hyperparameter {name!r} of method {name_of(method)!r} expects "
                         f"{_type_name(hints[name])}; got {text!r}") from None


def parse_text(hint: Any, text: str) -> Any:
    """``text`` as a value of the type ``hint`` (``bool``, ``int``, ``float``, ``str``, a tuple of them, optionally
    ``| None``): ``"none"`` is ``None`` where allowed, tuples are comma-separated. ``ValueError`` otherwise."""
    base, optional = _base_types(hint)
    if optional and text.strip().lower() == "none":
        return None
    if base is bool:
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"expected {_type_name(hint)}; got {text!r}")
        return text.lower() in ("1", "true", "yes")
    if base in (int, float, str):
        return base(text)
    if typing.get_origin(base) is tuple:
        (item, *_) = typing.get_args(base) or (str,)
        return tuple(item(s.strip()) for s in text.split(",") if s.strip())
    return text


def type_words(hint: Any) -> str:
    """A type hint in words (for ``--help`` and error messages)."""
    return _type_name(hint)


def coerce(method: ModuleType, name: str, value: Any) -> Any:
    """A value from a config file (JSON/TOML types) or a flag, as the field's type."""
    if isinstance(value, str):
        return parse_value(method, name, value)
    base, _ = _base_types(field_types(method).get(name, Any))
    if typing.get_origin(base) is tuple and isinstance(value, list):
        return tuple(value)
    if base is float and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _type_name(hint: Any) -> str:
    base, optional = _base_types(hint)
    if typing.get_origin(base) is tuple:
        (item, *_) = typing.get_args(base) or (str,)
        text = f"comma-separated {item.__name__}s"
    else:
        text = getattr(base, "__name__", str(base))
    return f"{text} or none" if optional else text


def type_name(method: ModuleType, name: str) -> str:
    """A field's type in words (for ``--help``)."""
    return _type_name(field_types(method)[name])


def make_hparams(method: str | ModuleType, overrides: dict[str, Any] | None = None) -> Any:
    """The method's ``Hparams`` with ``overrides`` (text or values) cast to each field's type."""
    mod = get(method) if isinstance(method, str) else method
    names = [f.name for f in fields(mod)]
    kwargs = {}
    for k, v in (overrides or {}).items():
        if k not in names:
            raise ValueError(f"hyperparameter {k!r} is not one of method {name_of(mod)!r}'s: {sorted(names)}")
        kwargs[k] = coerce(mod, k, v)
    return mod.Hparams(**kwargs)
