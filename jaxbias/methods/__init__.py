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
  at inference (P-ClArC's projection), and ``edits(state, hp)`` what it
  changes there, ``{layer: function of its output}`` (what LRP explains it with).

Every ``init`` has one signature, ``init(model, params, data, *, hp) -> State``
(``model`` bound in evaluation mode), and is traceable: the state's structure
is ``jax.eval_shape`` of it (:func:`state_template`).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from types import ModuleType
from typing import Any

import jax

from jaxbias import settings


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
    return jax.eval_shape(lambda p, d: method.init(model, p, d, hp=hp), params, data)


# ----------------------------------------------------------------------------- hyperparameters as text


def fields(method: ModuleType) -> list[dataclasses.Field]:
    """The ``Hparams`` fields of a method."""
    return list(dataclasses.fields(method.Hparams))


def field_types(method: ModuleType) -> dict[str, Any]:
    """``Hparams`` field name -> its resolved type hint."""
    return typing.get_type_hints(method.Hparams)


def field_docs(method: ModuleType) -> dict[str, str]:
    """``Hparams`` field name -> its one-paragraph description from the class docstring's ``Attributes:``."""
    names = {f.name for f in fields(method)}
    return {k: v for k, v in settings.attribute_docs(method.Hparams).items() if k in names}


def is_numeric(method: ModuleType, name: str) -> bool:
    """Whether a field holds a number (``int``/``float``, not ``bool``)."""
    base, _ = settings.base_type(field_types(method)[name])
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
        return settings.parse_text(hints[name], text)
    except ValueError:
        raise ValueError(f"hyperparameter {name!r} of method {name_of(method)!r} expects "
                         f"{settings.type_words(hints[name])}; got {text!r}") from None


def coerce(method: ModuleType, name: str, value: Any) -> Any:
    """A value from a config file (JSON/TOML types) or a flag, as the field's type."""
    if isinstance(value, str):
        return parse_value(method, name, value)
    return settings.coerce(field_types(method).get(name, Any), value)


def type_name(method: ModuleType, name: str) -> str:
    """A field's type in words (for ``--help``)."""
    return settings.type_words(field_types(method)[name])


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
