"""Settings dataclasses as text: their field docs, types in words, values parsed from flags and files.

Every group of settings in jaxbias is a frozen dataclass whose docstring
documents its fields under ``Attributes:`` (a method's ``Hparams``, a
dataset's ``Settings``, :class:`jaxbias.runs.RegionConfig`). The helpers
here read such a class, so that the CLI's flags, config files and error
messages follow the class, with nothing copied by hand.
"""
from __future__ import annotations

import dataclasses
import numbers
import re
import typing
from typing import Any, Mapping

import numpy as np


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> its one-paragraph description in ``cls``'s docstring ``Attributes:`` section
    (``a, b: text`` documents both)."""
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


def plain(text: str) -> str:
    """Docstring text for ``--help``: Sphinx roles as plain names, no double backquotes."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def base_type(hint: Any) -> tuple[Any, bool]:
    """(the non-None type of a hint, whether None is allowed)."""
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def parse_text(hint: Any, text: str) -> Any:
    """``text`` as a value of the type ``hint`` (``bool``, ``int``, ``float``, ``str``, a tuple of them, optionally
    ``| None``): ``"none"`` is ``None`` where allowed, tuples are comma-separated. ``ValueError`` otherwise."""
    base, optional = base_type(hint)
    if optional and text.strip().lower() == "none":
        return None
    if base is bool:
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"expected {type_words(hint)}; got {text!r}")
        return text.lower() in ("1", "true", "yes")
    if base in (int, float, str):
        return base(text)
    if typing.get_origin(base) is tuple:
        (item, *_) = typing.get_args(base) or (str,)
        parts = [s.strip() for s in text.split(",")] if text.strip() else []
        if "" in parts:  # 16,,8 is a typo, not (16, 8)
            raise ValueError(f"expected {type_words(hint)} without an empty element; got {text!r}")
        return tuple(item(s) for s in parts)
    return text


def type_words(hint: Any) -> str:
    """A type hint in words (for ``--help`` and error messages)."""
    base, optional = base_type(hint)
    if typing.get_origin(base) is tuple:
        (item, *_) = typing.get_args(base) or (str,)
        text = f"comma-separated {item.__name__}s"
    else:
        text = getattr(base, "__name__", str(base))
    return f"{text} or none" if optional else text


def coerce(hint: Any, value: Any) -> Any:
    """A value from a config file (JSON/TOML types), a flag's text or NumPy, as the type ``hint``."""
    if isinstance(value, str) and base_type(hint)[0] is not str:
        return parse_text(hint, value)
    base, _ = base_type(hint)
    if typing.get_origin(base) is tuple and isinstance(value, list):
        return tuple(value)
    if base is float and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def build(cls: type, values: Mapping[str, Any] | None, *, what: str) -> Any:
    """``cls(**values)`` with each value coerced to its field's type; unknown keys and values the type
    cannot take are refused naming ``what`` (e.g. ``"settings of dataset 'adult'"``)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = dict(values or {})
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; expected some of {names}")
    kwargs = {}
    for k, v in values.items():
        try:
            kwargs[k] = coerce(hints[k], v)
        except ValueError:
            raise ValueError(f"{k} ({what}) expects {type_words(hints[k])}; got {v!r}") from None
    return cls(**kwargs)


def resolve(cls: type, values: Any, *, owner: str) -> Any:
    """``cls`` settings from ``None`` (the defaults), a mapping (:func:`build`) or already a ``cls`` value; each
    field's type and ``CHOICES`` checked (:func:`check`). ``owner`` names whose settings they are in the errors
    (``"dataset 'adult'"``, ``"model 'mlp'"``); another settings class is refused."""
    if not isinstance(values, cls):
        if dataclasses.is_dataclass(values) and not isinstance(values, type):
            raise ValueError(f"settings {type(values).__module__}.{type(values).__qualname__} are not those of "
                             f"{owner} ({cls.__module__}.{cls.__qualname__})")
        if values is not None and not isinstance(values, Mapping):
            raise ValueError(f"settings of {owner} must be a mapping or its Settings; got {values!r}")
        values = build(cls, values, what=f"settings of {owner}")
    check(values)
    return values


def as_dict(value: Any) -> dict[str, Any]:
    """A settings dataclass as JSON-able values (tuples as lists); a mapping as a dict, ``None`` as ``{}``."""
    if not dataclasses.is_dataclass(value):
        return dict(value or {})
    return {f.name: (list(v) if isinstance(v := getattr(value, f.name), tuple) else v)
            for f in dataclasses.fields(value)}


def _fits(base: Any, v: Any) -> bool:
    if base is bool:
        return isinstance(v, (bool, np.bool_))
    if base is int:
        return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
    if base is float:
        return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and np.isfinite(v)
    if base is str:
        return isinstance(v, str)
    if typing.get_origin(base) is tuple:
        (item, *_) = typing.get_args(base) or (Any,)
        return isinstance(v, tuple) and (item is Any or all(_fits(item, i) for i in v))
    return True


def check(value: Any) -> None:
    """Refuse a field of the settings dataclass ``value`` whose value is not of its type (``float``: finite)
    or not among its ``CHOICES``: one line naming the field, what it expects and what it got."""
    cls = type(value)
    hints = typing.get_type_hints(cls)
    choices = getattr(cls, "CHOICES", {})
    for f in dataclasses.fields(cls):
        v = getattr(value, f.name)
        base, optional = base_type(hints[f.name])
        if v is None and optional:
            continue
        if not _fits(base, v):
            raise ValueError(f"{f.name} must be {type_words(hints[f.name])}; got {v!r}")
        if f.name in choices and v not in choices[f.name]:
            raise ValueError(f"{f.name} must be one of {tuple(choices[f.name])}; got {v!r}")


def need(ok: bool, value: Any, field: str, expected: str) -> None:
    """Refuse ``value.<field>`` unless ``ok``: ``field must be <expected>; got <its value>``."""
    if not ok:
        raise ValueError(f"{field} must be {expected}; got {getattr(value, field)!r}")
