"""One module per method, each with ``Hparams``, ``State``, ``init`` and ``loss``/``edit``.

:func:`get` finds a method by name without a registry: a new file in this
package is a new method.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def available() -> list[str]:
    """Names of the method modules in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> ModuleType:
    """The method module ``jaxbias.methods.<name>``."""
    names = available()
    if name not in names:
        raise ValueError(f"method {name!r} is unknown; expected one of {names}")
    return importlib.import_module(f"{__name__}.{name}")
