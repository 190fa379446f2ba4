"""The model registry: a model is a name, a factory and the settings the factory takes.

``register(name, factory, Settings)`` makes a model known to the run layer,
the CLI (``--model NAME`` and one flag per settings field) and config files
(``model = "NAME"`` with its settings beside it or in ``config.json``'s
``"model"`` entry). The bundled models register themselves this way in their
own files; a model of yours is registered the same way, or named by where its
factory lives: ``package.module:factory`` (``--model mypkg.nets:resnet``) is
imported when asked for, and the network it returns is wrapped by
:func:`jaxbias.models.from_linen` / :func:`~jaxbias.models.from_nnx` with the
layers of its :class:`Imported` settings.

- ``factory(*, num_classes, **fields) -> module``: the classes count is a fact
  of the data; the other keyword arguments are the fields of ``Settings``
  (a Linen module class whose attributes they are is itself a factory);
- ``Settings``: a frozen dataclass documenting its fields under
  ``Attributes:`` (they become flags), an optional ``CHOICES`` class variable,
  each field's type and ``CHOICES`` checked by the registry (more in its
  ``__post_init__``); its defaults are the run layer's.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from typing import Any, Callable, ClassVar

import flax.linen as nn
from flax import nnx

from jaxbias import settings as settings_lib
from jaxbias.models import adapters


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """A model without settings of its own."""


@dataclasses.dataclass(frozen=True)
class Model:
    """A registered model.

    Attributes:
      name: its registry name.
      factory: ``factory(*, num_classes, **settings fields) -> module``.
      Settings: the frozen dataclass of its settings.
    """

    name: str
    factory: Callable[..., Any]
    Settings: type

    def build(self, settings: Any = None, *, num_classes: int) -> Any:
        """The module for these settings (see :func:`settings`) and this many classes."""
        values = self.settings(settings)
        return self.factory(num_classes=int(num_classes), **{f.name: getattr(values, f.name)
                                                             for f in dataclasses.fields(values)})

    def settings(self, values: Any = None) -> Any:
        """``Settings`` from ``None`` (the defaults), a mapping (text or values, cast to each field's type;
        unknown keys refused) or already a ``Settings`` value of this model."""
        return settings_lib.resolve(self.Settings, values, owner=f"model {self.name!r}")


_MODELS: dict[str, Model] = {}


def register(name: str, factory: Callable[..., Any], Settings: type = NoSettings, *, replace: bool = False) -> Model:
    """Make ``factory`` known as model ``name`` (see the module's docstring); returns the entry.

    A name already taken by another factory is refused unless ``replace`` (e.g. a notebook cell run again).
    """
    if not (isinstance(name, str) and name.isidentifier()):
        raise ValueError(f"a model name must be an identifier (it is a flag value and a config key); got {name!r}")
    if not callable(factory):
        raise ValueError(f"model {name!r}: factory must be callable; got {factory!r}")
    if not (isinstance(Settings, type) and dataclasses.is_dataclass(Settings)):
        raise ValueError(f"model {name!r}: Settings must be a dataclass; got {Settings!r}")
    if "num_classes" in {f.name for f in dataclasses.fields(Settings)}:
        raise ValueError(f"model {name!r}: num_classes comes from the data; take it out of {Settings.__qualname__}")
    old = _MODELS.get(name)
    if old is not None and old.factory is not factory and not replace:
        raise ValueError(f"model {name!r} is registered already ({old.factory!r}); pass replace=True to replace it")
    entry = Model(name, factory, Settings)
    _MODELS[name] = entry
    return entry


def available() -> list[str]:
    """The registered models' names."""
    return sorted(_MODELS)


def get(name: str) -> Model:
    """The registered model ``name``, or the factory ``package.module:factory`` names (see :class:`Imported`)."""
    if is_import(name):
        return _imported(name)
    if name not in _MODELS:
        raise ValueError(f"model {name!r} is unknown; expected one of {available()} (jaxbias.models.register adds one) "
                         "or package.module:factory")
    return _MODELS[name]


#: The owner of :class:`Imported`'s fields in flags and messages.
IMPORTED = "package.module:factory"


@dataclasses.dataclass(frozen=True)
class Imported:
    """A network returned by ``factory(num_classes=...)`` of your package (``--model package.module:factory``): a
    Linen or NNX module as written (wrapped by from_linen/from_nnx), or one already of the house's contract.

    Attributes:
      layers: its submodules to tap, comma-separated paths below it ('layer4', 'backbone/stage3'); default: the
        method's layer.
      train_keyword: the keyword by which a Linen network hears train/eval mode (train, training, is_training,
        deterministic, use_running_average) or none.
    """

    CHOICES: ClassVar[dict] = {"train_keyword": ("train", "training", "is_training", "deterministic",
                                                 "use_running_average", "none")}
    layers: tuple[str, ...] = ()
    train_keyword: str = "train"


def is_import(name: Any) -> bool:
    """Whether ``name`` names a factory by where it lives (``package.module:factory``)."""
    return isinstance(name, str) and ":" in name


@functools.lru_cache(maxsize=None)
def _imported(spec: str) -> Model:
    where, _, attr = spec.partition(":")
    if not (where and attr and all(p.isidentifier() for p in [*where.split("."), *attr.split(".")])):
        raise ValueError(f"model {spec!r}: expected package.module:factory (dotted names)")
    try:
        obj = importlib.import_module(where)
    except ImportError as e:
        raise ValueError(f"model {spec!r}: cannot import {where} ({type(e).__name__}: {e}); is its folder on "
                         "PYTHONPATH or the package installed?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model {spec!r}: {where} has no {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"model {spec!r}: {attr} is not callable; expected factory(num_classes=...) returning a "
                         "flax.linen or flax.nnx module")
    return Model(spec, functools.partial(_wrapped, spec, obj), Imported)


def _wrapped(spec: str, factory: Callable[..., Any], *, num_classes: int, layers: tuple[str, ...],
             train_keyword: str) -> nn.Module:
    """``factory``'s network under the house's contract: wrapped unless it already is (taps of its own)."""
    net = factory(num_classes=num_classes)
    if isinstance(net, (adapters.Tapped, adapters.NNXTapped, adapters.FunctionTapped)):
        return net
    if isinstance(net, nnx.Module):
        return adapters.from_nnx(net, layers=layers, num_classes=num_classes)
    if not isinstance(net, nn.Module):
        raise ValueError(f"model {spec!r} returned {type(net).__name__}; expected a flax.linen or flax.nnx module")
    if {"perturb", "edit"} <= set(inspect.signature(type(net).__call__).parameters):
        return net  # written with the house's taps (jaxbias.models.layers.tap)
    return adapters.from_linen(net, layers=layers, mode=None if train_keyword == "none" else train_keyword,
                               num_classes=num_classes)


def unregister(name: str) -> None:
    """Forget model ``name`` (a model registered for a while, e.g. in a test)."""
    get(name)
    del _MODELS[name]
