"""The run configuration: one frozen value from flags, a config file, or a run's ``config.json``.

``RunConfig`` holds everything a run depends on (data, model, method and
hyperparameters, optimiser, schedule, seed, devices, feed). It is built
from keyword arguments, from a TOML or JSON file (:meth:`RunConfig.load`,
the CLI's ``--config``; flags override it), and written as the run's
``config.json``, which reads back to the same value (:meth:`RunConfig.from_dict`):
a run's ``config.json`` is itself a config file that repeats the run.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import tomllib
import typing
from typing import Any, Mapping, Sequence

from jaxbias import datasets as datasets_lib
from jaxbias import methods
from jaxbias import models as models_lib
from jaxbias import settings as settings_lib
from jaxbias.datasets import Dataset
from jaxbias.models.normalize import parse_normalize
from jaxbias.models.normalize import text_of as normalize_text
from jaxbias.training.augment import Augment, parse_augment

#: Channels of the ReBias/EnD network; the offline demo uses a narrower one
#: because XLA:CPU trains 7×7 convolutions at 28×28 slowly (issue "CPU training speed").
FULL_CHANNELS = (16, 32, 64, 128)
DEMO_CHANNELS = (4, 8, 16, 32)
FEEDS = ("auto", "device", "host")

#: ``config.json`` keys that describe the data a run saw, written beside the configuration
#: (``data_file``: the file a file-backed dataset was read from, e.g. Adult's ``data_path`` or ``$JAXBIAS_ADULT``).
DERIVED = ("input_shape", "data_file")

#: The data settings that were flat ``RunConfig`` fields before datasets declared their own ``Settings``, with
#: the values they had when unused: a ``config.json`` written then names all of them, for every dataset.
_FLAT_DATA_DEFAULTS = {"rho": 0.99, "artifact": "stamp", "artifact_class": 0, "p": 0.5, "data_path": None,
                       "protected": "sex", "source": "offline", "data_dir": None, "image_size": None, "style": "mark",
                       "confounder": "Blond_Hair"}


class FrozenMap(Mapping):
    """A read-only, hashable mapping (``RunConfig.hparams`` and sweep members); equal to a dict of the same items."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] = ()):
        object.__setattr__(self, "_items", dict(items))

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __repr__(self) -> str:
        return repr(self._items)


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return FrozenMap({k: _freeze(v) for k, v in value.items()})
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run (or sweep) of the run layer; the fields are ``jaxbias train``'s flags.

    Attributes:
      dataset: a dataset of :mod:`jaxbias.datasets` (``biased_mnist``, ``artifact_mnist``, ``adult``,
        ``region_mnist``, ``celeba``, or one of your own files there).
      data: the dataset's ``Settings`` (its module's frozen dataclass): a mapping of some of its fields
        (the rest default) or the ``Settings`` value; ``None``: the defaults. :meth:`replace` and
        :meth:`from_dict` also take its fields by name (``rho=0.9``).
      data_seed: the data's seed (``None``: ``seed``).
      maps: per-image maps over the training images, put in the training batch's ``mask`` (what
        targeted noise hides): a workdir of ``jaxbias attribute`` on the same data, or a
        :class:`jaxbias.runs.Attribution` in memory; ``None``: the dataset's own masks.
      model: a registered model (:mod:`jaxbias.models.registry`): ``simple_conv``, ``mlp``, ``vgg16``,
        ``resnet18``, ``efficientnet_b0`` or one you registered; or ``package.module:factory``, a factory of
        your package whose network is wrapped (settings ``layers``, ``train_keyword``: ``models.Imported``).
      model_settings: the model's ``Settings`` (``simple_conv``: ``channels``, ``kernel_size``,
        ``last_activation``; ``mlp``: ``hidden``), as a mapping or the value, like ``data``; :meth:`replace`
        and :meth:`from_dict` also take its fields by name (``hidden=(64, 32)``).
      method, hparams: the training method and its hyperparameters (text or values).
      epochs, batch_size, lr, weight_decay, decay_every: Adam(W) with a step decay ×0.1 every ``decay_every`` epochs.
      seed: initialisation, data order and step keys.
      init_from: a workdir (or a :class:`jaxbias.runs.Run`) to start from; ``trainable``: only these groups train.
      weights: a file of weights to start from instead of the seed's initialisation: ``.npz``, ``.safetensors`` or
        an orbax checkpoint directory (keys ``params/...``, ``batch_stats/...``: :mod:`jaxbias.models.weights`),
        checked against the model before anything is written; not with ``init_from``.
      devices: data parallelism (a single run) or member sharding (a sweep) over this many devices.
      data_devices: a sweep: each member's batch over this many of them.
      feed: how batches reach the step (:mod:`jaxbias.training.loop`).
      members: a sweep's members (``lr``, ``seed`` and numeric hyperparameters); ``None`` for a single run.
      vectorize: a sweep: one vmapped step (``True``) or members taking turns.
      eval_every: evaluate every N epochs (and after the last).
      normalize: the model's inputs normalised per channel as its first operation, ``(x − mean) / std``
        (:mod:`jaxbias.models.normalize`): ``imagenet`` (torchvision's ImageNet mean and std, for ImageNet weights) or
        ``MEANS/STDS`` (``0.5/0.25``, ``0.49,0.48,0.45/0.25,0.24,0.26``); the data stay in [0, 1]; ``None``: none.
      augment: random transforms of each training batch inside the compiled step (images only): flip (left-right,
        probability 1/2), crop:P (pad P zero pixels per side, cut a random window of the original size), or both
        comma-separated (``flip,crop:4``); masks move with their images; ``None``: none
        (:mod:`jaxbias.training.augment`).
    """

    dataset: str = "biased_mnist"
    data: Any = None
    data_seed: int | None = None
    maps: Any = None
    model: str = "simple_conv"
    model_settings: Any = None
    method: str = "vanilla"
    hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    epochs: int = 80
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    decay_every: int | None = 20
    seed: int = 0
    init_from: Any = None
    weights: str | None = None
    trainable: tuple[str, ...] | None = None
    devices: int | None = None
    data_devices: int = 1
    feed: str = "auto"
    members: tuple[Mapping[str, Any], ...] | None = None
    vectorize: bool = True
    eval_every: int = 1
    normalize: str | None = None
    augment: str | None = None

    def __post_init__(self):
        for name in ("trainable", "members"):
            v = getattr(self, name)
            if isinstance(v, (list, tuple)):
                object.__setattr__(self, name, tuple(_freeze(m) if isinstance(m, Mapping) else m for m in v))
        object.__setattr__(self, "hparams", _freeze(dict(self.hparams or {})))
        if isinstance(self.weights, os.PathLike):
            object.__setattr__(self, "weights", os.fspath(self.weights))
        if isinstance(self.dataset, str) and ":" in self.dataset:  # folder:PATH, tfds:NAME
            name, named = datasets_lib.split_name(self.dataset)
            data = settings_lib.as_dict(self.data)
            for k, v in named.items():
                if k in data and data[k] is not None and str(data[k]) != v:
                    raise ValueError(f"dataset {self.dataset!r} gives {k}={v!r} but the data settings say "
                                     f"{k}={data[k]!r}: give it once")
            object.__setattr__(self, "dataset", name)
            object.__setattr__(self, "data", {**data, **named})
        if not (isinstance(self.dataset, str) and self.dataset in datasets_lib.available()):
            raise ValueError(f"dataset must be one of {datasets_lib.available()}; got {self.dataset!r}")
        object.__setattr__(self, "data", datasets_lib.settings(self.dataset, self.data))
        _check_model(self.model)
        object.__setattr__(self, "model_settings", models_lib.settings(self.model, self.model_settings))
        if self.decay_every == 0:
            object.__setattr__(self, "decay_every", None)
        self._check()

    # ------------------------------------------------------------------ checks
    def _check(self) -> None:
        def need(ok: bool, field: str, expected: str) -> None:
            settings_lib.need(ok, self, field, expected)

        def is_int(v) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

        need(self.method in methods.available(), "method", f"one of {methods.available()}")
        if methods.kind(self.method).post_hoc:
            raise ValueError(f"method {self.method!r} is post-hoc (it edits a trained model) and has no training "
                             "loss: use `jaxbias unlearn` / jaxbias.runs.unlearning")
        mod = methods.get(self.method)
        typed = {k: methods.coerce(mod, k, v) for k, v in self.hparams.items()}
        methods.make_hparams(mod, typed)  # names, types and values of the hyperparameters
        object.__setattr__(self, "hparams", _freeze(typed))
        need(is_int(self.epochs) and self.epochs >= 0, "epochs", "an int >= 0")
        need(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "a positive int")
        need(is_num(self.lr) and self.lr > 0, "lr", "a positive number")
        need(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0")
        need(self.decay_every is None or (is_int(self.decay_every) and self.decay_every > 0), "decay_every",
             "a positive int or None (0: never)")
        need(is_int(self.seed), "seed", "an int")
        need(self.data_seed is None or is_int(self.data_seed), "data_seed", "an int or None")
        need(self.feed in FEEDS, "feed", f"one of {FEEDS}")
        need(self.devices is None or (is_int(self.devices) and self.devices >= 1), "devices", "a positive int or None")
        need(is_int(self.data_devices) and self.data_devices >= 1, "data_devices", "a positive int")
        need(is_int(self.eval_every) and self.eval_every >= 1, "eval_every", "a positive int")
        need(self.augment is None or isinstance(self.augment, str), "augment", "flip, crop:P or both, or None")
        need(self.normalize is None or isinstance(self.normalize, str), "normalize", "imagenet, MEANS/STDS or None")
        spec = parse_normalize(self.normalize)  # checked, one line
        object.__setattr__(self, "normalize", None if spec is None else normalize_text(spec))
        augment = parse_augment(self.augment)  # its words checked, one line naming the bad one
        object.__setattr__(self, "augment", None if augment is None else str(augment))
        need(self.weights is None or (isinstance(self.weights, str) and self.weights != ""), "weights",
             "a path to a .npz / .safetensors file or an orbax checkpoint directory, or None")
        if self.weights is not None and self.init_from is not None:
            raise ValueError(f"weights ({self.weights!r}) and init_from both give the starting model: set one "
                             "(--weights FILE or --from WORKDIR)")
        if self.trainable is not None and self.init_from is None and self.weights is None:
            raise ValueError("trainable freezes layers of a trained model: set init_from (a workdir) or weights too")
        if self.init_from is None and methods.kind(self.method).fits_on_model:
            raise ValueError(
                f"method {self.method!r} corrects a trained model (it fits a CAV on it): train a base model first "
                "and set init_from=<its workdir> (CLI: jaxbias correct --from <workdir>)"
            )
        if self.members is not None and not self.members:
            raise ValueError("members is empty: a sweep needs at least one member")

    # ------------------------------------------------------------------ views
    @property
    def augmentation(self) -> Augment | None:
        """:attr:`augment` as the step's :class:`jaxbias.training.augment.Augment` (``None``: none)."""
        return parse_augment(self.augment)

    @property
    def resolved_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    def model_dict(self) -> dict[str, Any]:
        """The model as ``config.json`` stores it (without ``num_classes``, a fact of the data)."""
        return {"name": self.model, **settings_lib.as_dict(self.model_settings)}

    def replace(self, **changes: Any) -> "RunConfig":
        """This configuration with ``changes``; the dataset's and the model's settings may be given by name
        (``rho=0.9``, ``hidden=(64, 32)``), on top of this one's (or, with another ``dataset``/``model``, of
        its defaults)."""
        for kind, group, fields in (("dataset", "data", data_fields), ("model", "model_settings", model_fields)):
            name = changes.get(kind, getattr(self, kind))
            flat = {k: changes.pop(k) for k in list(changes) if k in fields(name)}
            if flat or (kind in changes and group not in changes):
                base = changes.get(group, getattr(self, group) if name == getattr(self, kind) else None)
                changes[group] = {**settings_lib.as_dict(base), **flat}
        return dataclasses.replace(self, **changes)

    def load_data(self, data: Any = None) -> Dataset:
        """``data`` (loaded already: a :class:`~jaxbias.datasets.Dataset` or the protocol's object) as this run's
        dataset, or, for ``None``, the dataset its settings load (with its data seed)."""
        if data is not None:
            return datasets_lib.view(self.dataset, data)
        return datasets_lib.load(self.dataset, self.data, seed=self.resolved_data_seed)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able; :meth:`from_dict` of it is this value again."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("init_from", "maps") and v is not None and not isinstance(v, (str, os.PathLike)):
                v = getattr(v, "workdir", None)  # a Run / Attribution passed in memory: its workdir, if it has one
            out[f.name] = _thaw(v)
        out["data"] = settings_lib.as_dict(self.data)
        out["data_seed"] = self.resolved_data_seed
        out["model"] = self.model_dict()
        del out["model_settings"]  # inside "model"
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "RunConfig":
        """A configuration from a mapping (a config file, a ``config.json``); ``overrides`` win.

        ``model`` may be a name (its settings in a ``model_settings`` table or beside the other keys:
        ``hidden = [64, 32]``) or ``config.json``'s ``{"name": ..., ...}``; ``data`` a table of the
        dataset's settings, which may also stand beside the other keys (``rho = 0.9``). Unknown keys are
        refused. The model settings of ``overrides`` go on top of the file's (unless they name another model).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in DERIVED}
        overrides = dict(overrides)
        file_model, file_settings = _model_part(d, cls.model, known)
        model, own = _model_part(overrides, file_model, known)
        d.update(overrides)  # the settings of the file's model stay under the flags' unless the model changes
        d["model"], d["model_settings"] = model, {**(file_settings if model == file_model else {}), **own}
        dataset = d.get("dataset", cls.dataset)
        if dataset not in datasets_lib.available():
            raise ValueError(f"dataset must be one of {datasets_lib.available()}; got {dataset!r}")
        mine = data_fields(dataset)
        data = d.pop("data", None)
        data = settings_lib.as_dict(data)
        for k in [k for k in d if k in mine or k in _FLAT_DATA_DEFAULTS]:
            v = d.pop(k)
            if k in mine:
                data[k] = v
            elif v != _FLAT_DATA_DEFAULTS[k]:
                owners = [n for n in datasets_lib.available() if k in data_fields(n)]
                raise ValueError(f"{k} is a setting of {', '.join(owners) or 'no dataset'}, not of dataset "
                                 f"{dataset!r} (its settings: {', '.join(mine) or 'none'})")
        hints = typing.get_type_hints(datasets_lib.get(dataset).Settings)
        for k in [k for k, v in data.items() if v is None and k in hints]:
            if not settings_lib.base_type(hints[k])[1]:
                del data[k]  # None for a field that takes none: its default (how older runs wrote image_size)
        d["data"] = data
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown run settings {unknown}; expected some of {sorted(known)}")
        hints = typing.get_type_hints(cls)
        for k, v in list(d.items()):
            if isinstance(v, int) and not isinstance(v, bool) and hints[k] in (float, "float"):
                d[k] = float(v)
        return cls(**d)

    @staticmethod
    def read(path: str | os.PathLike) -> dict[str, Any]:
        """The settings mapping of a TOML (``.toml``) or JSON file, as written (checked by :meth:`from_dict`)."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"config file {path!r} not found")
        if os.path.isdir(path):
            raise IsADirectoryError(f"config file {path!r} is a directory; expected a TOML (.toml) or JSON file of "
                                    "run settings")
        try:
            if path.endswith(".toml"):
                with open(path, "rb") as f:
                    data = tomllib.load(f)
            else:
                with open(path) as f:
                    data = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
            raise ValueError(f"config file {path!r} is not valid {'TOML' if path.endswith('.toml') else 'JSON'}: "
                             f"{e}") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"config file {path!r} must hold a table/object of run settings")
        return dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides: Any) -> "RunConfig":
        """A configuration from a TOML (``.toml``) or JSON file; ``overrides`` (e.g. flags) win.

        The file's ``hparams`` are checked against the method that results (an
        overriding ``method=`` included), not against the file's own.
        """
        data = cls.read(path)
        try:
            return cls.from_dict(data, **overrides)
        except (ValueError, TypeError) as e:
            raise ValueError(f"config file {os.fspath(path)!r}: {e}") from None


def _model_part(d: dict[str, Any], default: str, known: set[str]) -> tuple[str, dict[str, Any]]:
    """Pop the model's name and settings out of ``d`` (``model`` as a name or ``{"name": ..., **settings}``, a
    ``model_settings`` mapping, its fields by name beside the other keys); a field of another model is refused."""
    model = d.pop("model", default)
    settings = {}
    if isinstance(model, Mapping):
        settings = {k: v for k, v in model.items() if k not in ("name", "num_classes")}
        model = model.get("name", default)
    _check_model(model)
    settings.update(settings_lib.as_dict(d.pop("model_settings", None)))
    mine = model_fields(model)
    everyone = [*models_lib.available(), models_lib.IMPORTED]
    for k in [k for k in d if k not in known and any(k in model_fields(m) for m in everyone)]:
        if k not in mine:
            owners = [m for m in everyone if k in model_fields(m)]
            raise ValueError(f"{k} is a setting of model {', '.join(owners)}, not of model {model!r} (its settings: "
                             f"{', '.join(mine) or 'none'})")
        settings[k] = d.pop(k)
    return model, settings


def _check_model(model: Any) -> None:
    """Refuse a model that is neither registered nor ``package.module:factory`` (whose import is tried here)."""
    if not isinstance(model, str):
        raise ValueError(f"model must be a registered model's name or package.module:factory; got {model!r}")
    models_lib.get(model)


def data_fields(dataset: str) -> list[str]:
    """The settings fields of a dataset."""
    return [f.name for f in dataclasses.fields(datasets_lib.get(dataset).Settings)]


def model_fields(model: str) -> list[str]:
    """The settings fields of a registered model (of an imported one: :data:`jaxbias.models.IMPORTED`)."""
    if model == models_lib.IMPORTED or models_lib.is_import(model):
        return [f.name for f in dataclasses.fields(models_lib.Imported)]
    return [f.name for f in dataclasses.fields(models_lib.get(model).Settings)]


def settings_names() -> Sequence[str]:
    """The fields of :class:`RunConfig` and of every dataset's and model's settings (the names a run setting may
    have)."""
    names = [f.name for f in dataclasses.fields(RunConfig)]
    for fields in [data_fields(n) for n in datasets_lib.available()] + [model_fields(n) for n in
                                                                        [*models_lib.available(), models_lib.IMPORTED]]:
        names += [n for n in fields if n not in names]
    return names
