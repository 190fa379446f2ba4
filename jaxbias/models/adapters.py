"""Your own network, unmodified, under the contract every method uses.

The methods call a model as ``model(params, x, *, perturb=None, edit=None) ->
ModelOutput(logits, acts, state)`` (:func:`jaxbias.models.bind`), built from a
Linen module whose ``__call__(x, *, train, perturb, edit)`` returns ``(logits,
acts)``. The bundled networks record their layers with
:func:`jaxbias.models.layers.tap`; a network written elsewhere does not, and
need not be edited:

``from_linen(module, layers=("layer4",))`` wraps any Linen module,
``from_nnx(model, layers=(...))`` any ``flax.nnx`` model, and
``from_functions(features, head, params)`` any other JAX model written as
functions of its parameters (equinox, a haiku ``apply``, plain ``jnp``): the
features' output is the layer ``"features"`` (or each named stage's). The named
submodules are tapped where their ``__call__`` returns (Linen: through
:func:`flax.linen.intercept_methods`; NNX: on the model merged for each call
from its pure state, ``nnx.split``/``nnx.merge``): their outputs appear in ``acts``,
``edit[name]`` replaces one and ``perturb[name]`` is added to it, exactly as
``tap`` does inside a bundled network, and the rest of the forward pass sees the
changed value. The network's parameters are the wrapper's own (Linen: the two
share one scope; NNX: its ``nnx.Param`` state as a nested dict, list indices as
``"0"``, ``"1"``…; its ``nnx.BatchStat`` state in ``batch_stats``), so weights
saved for the unwrapped network load unchanged.

Layer names are submodule paths below the network, ``/``-separated
(``"layer4"``, ``"backbone/stage3/block2"``, ``"blocks/0"``), as in the
network's parameter tree. What cannot be tapped, and why:

- a plain function call inside ``__call__`` (``nn.relu(x)``, ``x.mean(...)``)
  is not a submodule: tap the submodule whose output it changes, or wrap it in
  a module;
- a submodule called more than once in one forward pass (a shared block):
  which call ``perturb`` should change is ambiguous;
- a submodule whose ``__call__`` returns something other than one array;
- layers inside ``nn.scan``/``nn.remat_scan`` stacks: their calls happen once
  per step of a lifted loop, under one traced body, so one layer's output is
  not one array of the forward pass.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
from flax import nnx
from flax.core import unfreeze

from jaxbias.models.layers import check_hooks, tap

__all__ = ["MODE_ARGS", "FunctionTapped", "NNXTapped", "Tapped", "from_functions", "from_linen", "from_nnx",
           "intercept_nnx", "nnx_replaced"]

#: How a network hears train/eval mode, by the keyword its ``__call__`` takes: ``train=True`` in training,
#: ``deterministic=False`` / ``use_running_average=False`` (the flags of Dropout and BatchNorm), or nothing.
MODE_ARGS: dict[str | None, Callable[[bool], dict[str, bool]]] = {
    "train": lambda train: {"train": train},
    "training": lambda train: {"training": train},
    "is_training": lambda train: {"is_training": train},
    "deterministic": lambda train: {"deterministic": not train},
    "use_running_average": lambda train: {"use_running_average": not train},
    None: lambda train: {},
}


class _Taps:
    """What one forward pass records: each tapped layer's output (through :func:`tap`), and which
    submodules were called, how often (for the errors)."""

    def __init__(self, layers: Sequence[str], perturb, edit):
        self.wanted, self.perturb, self.edit = set(layers), perturb, edit
        self.acts: dict[str, jax.Array] = {}
        self.called: dict[str, int] = {}

    def returned(self, path: str, out: Any) -> Any:
        """A submodule at ``path`` returned ``out``: tapped if wanted, else passed on."""
        self.called[path] = self.called.get(path, 0) + 1
        if path not in self.wanted:
            return out
        if self.called[path] > 1:
            raise ValueError(f"layer {path!r} is called more than once in one forward pass (a shared submodule, "
                             "or a layer inside a lifted loop such as nn.scan, whose body runs once per step): which "
                             "call to tap is ambiguous; tap a submodule called once (a scanned stack: the module "
                             "around the nn.scan)")
        if not isinstance(out, jax.Array):
            raise ValueError(f"layer {path!r} returns {type(out).__name__}, not one array: it cannot be "
                             "tapped; tap a submodule that returns an array")
        return tap(path, out, self.acts, self.perturb, self.edit)

    def finish(self, network: Any, out: Any, output: Callable[[Any], jax.Array] | None, submodules: Sequence[str]):
        """The ``(logits, acts)`` of the pass, the logits tapped as ``"logits"``; missing layers refused."""
        missing = sorted(self.wanted - set(self.acts))
        if missing:
            raise ValueError(f"layers {missing} are not submodules called by {type(network).__name__} (a "
                             f"plain function call is not a layer); its submodules: {list(submodules)}")
        logits = out if output is None else output(out)
        if not (isinstance(logits, jax.Array) and logits.ndim == 2):
            raise ValueError(f"{type(network).__name__} returns {_describe(logits)}; expected logits (B, k): "
                             "pass output= to pick them from what it returns")
        logits = tap("logits", logits, self.acts, self.perturb, self.edit)
        check_hooks(self.acts, self.perturb, self.edit)
        return logits, self.acts


class Tapped(nn.Module):
    """A Linen network with named submodules tapped (see the module's docstring); build it with :func:`from_linen`.

    Attributes:
      network: the unmodified Linen module (its parameters are this module's: one shared scope).
      layers: the tapped submodule paths, ``/``-separated below ``network``.
      mode: the keyword by which ``network`` hears train/eval mode (a key of :data:`MODE_ARGS`), or a
        function ``train -> keyword arguments``.
      output: picks the logits from what ``network`` returns (default: it returns the logits).
      num_classes: the network's classes (read by the run layer's label checks); ``None``: not checked.
    """

    network: nn.Module
    layers: tuple[str, ...]
    mode: Any = "train"
    output: Callable[[Any], jax.Array] | None = None
    num_classes: int | None = None

    def setup(self):
        nn.share_scope(self, self.network)  # the network's parameter tree is this module's, unchanged

    def __call__(self, x, *, train: bool, perturb: Mapping[str, jax.Array] | None = None,
                 edit: Mapping[str, Callable[[jax.Array], jax.Array]] | None = None):
        taps = _Taps(self.layers, perturb, edit)
        root = len(self.network.path)

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            path = "/".join(context.module.path[root:])
            if context.method_name != "__call__" or not path:  # the network's own call: its logits, tapped below
                return out
            return taps.returned(path, out)

        with nn.intercept_methods(interceptor):
            out = self.network(x, **self._mode_args(train))
        return taps.finish(self.network, out, self.output, taps.called)

    def _mode_args(self, train: bool) -> dict[str, Any]:
        if callable(self.mode):
            return dict(self.mode(train))
        return MODE_ARGS[self.mode](train)


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    kind = "an array" if isinstance(value, jax.Array) else type(value).__name__
    return f"{kind} of shape {tuple(shape)}" if shape is not None else kind


def from_linen(network: nn.Module, *, layers: Sequence[str], mode: Any = "train",
               output: Callable[[Any], jax.Array] | None = None, num_classes: int | None = None) -> Tapped:
    """``network`` (any Linen module, unmodified) with ``layers`` tapped: a module every method accepts.

    Args:
      network: a Linen module whose ``__call__(x, **mode)`` returns the logits (or see ``output``).
      layers: submodule paths to tap, ``/``-separated below ``network`` (``"layer4"``,
        ``"backbone/stage3/block2"``): the names of ``--layer`` and of the methods' ``layer`` settings.
      mode: how ``network`` hears train/eval mode: ``"train"`` (``train=True`` while training),
        ``"deterministic"``, ``"use_running_average"`` (``False`` while training), ``None`` (no keyword),
        or a function ``train -> keyword arguments``.
      output: a function picking the logits ``(B, k)`` from what ``network`` returns (a tuple, a dict).
      num_classes: the classes the network predicts (default: its ``num_classes`` attribute, if any).

    The result's parameters (``Tapped.init``) are ``network``'s own, tree and names unchanged.
    """
    if isinstance(layers, str) or not all(isinstance(n, str) and n for n in layers):
        raise ValueError(f"layers must be a sequence of submodule paths such as ('layer4',); got {layers!r}")
    if len(set(layers)) != len(layers) or "logits" in layers:
        raise ValueError(f"layers must be distinct and not 'logits' (the output's own name); got {list(layers)}")
    if not isinstance(network, nn.Module):
        raise ValueError(f"from_linen needs a flax.linen.Module; got {type(network).__name__}")
    if not (callable(mode) or mode in MODE_ARGS):
        raise ValueError(f"mode must be one of {[k for k in MODE_ARGS if k]}, None or a function train -> kwargs; "
                         f"got {mode!r}")
    if num_classes is None:
        num_classes = getattr(network, "num_classes", None)
    return Tapped(network=network, layers=tuple(layers), mode=mode, output=output, num_classes=num_classes)


def _text_keys(tree: Any) -> Any:
    """A pure state dict with text keys (Linen's collections need them; NNX lists index by int)."""
    return {str(k): _text_keys(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def _keys_like(template: Any, tree: Any) -> Any:
    """``tree`` (text keys) with the keys of ``template`` (NNX's own: ints for list items)."""
    if isinstance(template, Mapping):
        return {k: _keys_like(v, tree[str(k)]) for k, v in template.items()}
    return tree


def _filled(template: Any, pure: Any) -> Any:
    """A fresh copy of the ``nnx.State`` ``template`` holding the values of the pure dict ``pure``."""
    state = jax.tree.map(lambda v: v, template)
    nnx.replace_by_pure_dict(state, _keys_like(nnx.to_pure_dict(template), pure))
    return state


def nnx_replaced(module: Any, values: Mapping[str, Any]) -> Any:
    """A fresh copy of the NNX ``module`` whose top-level variables named in ``values`` hold those arrays
    (``{"kernel": k}``); ``module`` itself is unchanged (its copy shares no variable with it)."""
    graphdef, state = nnx.split(module)
    pure = nnx.to_pure_dict(state)
    unknown = sorted(set(values) - set(pure))
    if unknown:
        raise ValueError(f"{type(module).__name__} has no variables {unknown}; it has {sorted(pure)}")
    return nnx.merge(graphdef, _filled(state, {**pure, **values}))


def _step(obj: Any, part: str) -> Any:
    return obj[int(part)] if part.isdigit() and not hasattr(obj, part) else getattr(obj, part)


def _put(obj: Any, part: str, value: Any) -> None:
    if part.isdigit() and not hasattr(obj, part):
        obj[int(part)] = value
    else:
        setattr(obj, part, value)


def _place(model: Any, path: str) -> tuple[Any, str]:
    """The object holding the submodule at ``path`` (a module, or a list of them) and its name there."""
    *parents, last = path.split("/")
    parent = model
    for part in parents:
        parent = _step(parent, part)
    return parent, last


class _Proxy:
    """Stands in for one NNX submodule during a pass: calls it and hands its output to the recorder."""

    def __init__(self, inner: Any, path: str, taps: _Taps):
        self._inner, self._path, self._taps = inner, path, taps

    def __call__(self, *args, **kwargs):
        return self._taps.returned(self._path, self._inner(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


#: The interceptors :func:`intercept_nnx` has installed, outermost first.
_NNX_INTERCEPTORS: list[Callable[..., Any]] = []


@contextlib.contextmanager
def intercept_nnx(interceptor: Callable[..., Any]) -> Iterator[None]:
    """Within the block, every submodule call of an NNX model in a :class:`NNXTapped` forward pass goes through
    ``interceptor(next_fun, args, kwargs, path, module)`` (``path`` ``/``-separated, ``module`` the NNX
    submodule; ``next_fun(*args, **kwargs)`` calls it): what :func:`flax.linen.intercept_methods` is to Linen
    modules, for the NNX model the wrapper merges at each call (LRP's rules are applied this way)."""
    _NNX_INTERCEPTORS.append(interceptor)
    try:
        yield
    finally:
        _NNX_INTERCEPTORS.remove(interceptor)


class _Intercepted:
    """Stands in for one NNX submodule during a pass under :func:`intercept_nnx`: its call goes through the
    interceptors (the innermost sees the submodule's own call)."""

    def __init__(self, inner: Any, path: str, interceptors: Sequence[Callable[..., Any]]):
        self._inner, self._path, self._interceptors = inner, path, tuple(interceptors)

    def __call__(self, *args, **kwargs):
        call = self._inner
        for interceptor in reversed(self._interceptors):
            call = (lambda f, i: lambda *a, **k: i(f, a, k, self._path, self._inner))(call, interceptor)
        return call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class NNXTapped(nn.Module):
    """A ``flax.nnx`` model with named submodules tapped, as a Linen module of the house contract; build it with
    :func:`from_nnx`.

    Attributes:
      graphdef: the model's ``nnx.GraphDef`` (its structure, static).
      templates: its ``(nnx.Param, nnx.BatchStat, rest)`` states at wrapping time: the initial values (the
        weights the model held), and the structure the Linen collections are read back into.
      layers: the tapped submodule paths, ``/``-separated (list items by index: ``"blocks/0"``).
      mode: ``"train"`` (the model's ``train()``/``eval()``: Dropout and BatchNorm follow), ``None`` (left as
        it is), or a function ``(model, train) -> None`` that sets it.
      output: picks the logits from what the model returns (default: it returns the logits).
      num_classes: the classes it predicts (the run layer's label checks); ``None``: not checked.
    """

    graphdef: Any
    templates: Any
    layers: tuple[str, ...]
    mode: Any = "train"
    output: Callable[[Any], jax.Array] | None = None
    num_classes: int | None = None

    @nn.compact
    def __call__(self, x, *, train: bool, perturb: Mapping[str, jax.Array] | None = None,
                 edit: Mapping[str, Callable[[jax.Array], jax.Array]] | None = None):
        p0, s0, rest = self.templates
        params = {k: self.param(k, lambda _key, v=v: v) for k, v in _text_keys(nnx.to_pure_dict(p0)).items()}
        stats = {k: self.variable("batch_stats", k, lambda v=v: v) for k, v in _text_keys(nnx.to_pure_dict(s0)).items()}
        model = nnx.merge(self.graphdef, _filled(p0, params), _filled(s0, {k: v.value for k, v in stats.items()}),
                          rest)
        if self.mode == "train":
            model.train() if train else model.eval()
        elif callable(self.mode):
            self.mode(model, train)
        if train and self.has_rng("dropout"):  # a fresh stream per step (its Rngs as wrapped would repeat one mask)
            streams = sorted({v.tag for _, v in nnx.to_flat_state(nnx.state(model, nnx.RngKey))})
            if streams:
                key = self.make_rng("dropout")
                nnx.reseed(model, **{tag: jax.random.fold_in(key, i) for i, tag in enumerate(streams)})
        taps = _Taps(self.layers, perturb, edit)
        found = {"/".join(map(str, path)): module for path, module in nnx.iter_modules(model) if path}
        stand_ins: dict[str, Any] = {}
        if _NNX_INTERCEPTORS:
            stand_ins = {path: _Intercepted(module, path, _NNX_INTERCEPTORS) for path, module in found.items()}
        for path in self.layers:  # a layer not found is refused by finish(), with the list of what can be tapped
            if path in found:
                stand_ins[path] = _Proxy(stand_ins.get(path, found[path]), path, taps)
        places = [(*_place(model, path), path) for path in stand_ins]  # found before any stand-in is put in
        for parent, last, path in places:
            _put(parent, last, stand_ins[path])
        try:
            out = model(x)
        finally:
            for parent, last, path in places:
                _put(parent, last, found[path])
        if self.is_mutable_collection("batch_stats"):
            new = _text_keys(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
            for k, var in stats.items():
                var.value = new[k]
        return taps.finish(model, out, self.output, list(found))


def from_nnx(model: Any, *, layers: Sequence[str], mode: Any = "train",
             output: Callable[[Any], jax.Array] | None = None, num_classes: int | None = None) -> NNXTapped:
    """``model`` (any ``flax.nnx.Module``, unmodified) with ``layers`` tapped: a module every method accepts.

    The model is made pure once (``nnx.split``): its ``nnx.Param`` values become the ``params`` collection
    (the weights it holds now are the initial ones, whatever seed the run layer is given), its
    ``nnx.BatchStat`` values ``batch_stats``; each call merges a fresh model from them, sets its mode
    (``train()``/``eval()``), taps ``layers`` and hands the updated batch statistics back. Its ``nnx.Rngs``
    streams (``Dropout``) are reseeded in training from the ``"dropout"`` rng the run layer gives each step
    (:func:`jaxbias.models.bind`'s ``key``): a fresh mask per step, the same for the same step.

    Args:
      model: an ``nnx.Module`` whose ``__call__(x)`` returns the logits (or see ``output``).
      layers: submodule paths, ``/``-separated (``"conv2"``, ``"blocks/0"``).
      mode: ``"train"`` (default), ``None``, or a function ``(model, train) -> None``.
      output: a function picking the logits ``(B, k)`` from what the model returns.
      num_classes: the classes the model predicts (default: its ``num_classes`` attribute, if any).
    """
    if not isinstance(model, nnx.Module):
        raise ValueError(f"from_nnx needs a flax.nnx.Module; got {type(model).__name__}")
    if isinstance(layers, str) or not all(isinstance(n, str) and n for n in layers):
        raise ValueError(f"layers must be a sequence of submodule paths such as ('conv2',); got {layers!r}")
    if len(set(layers)) != len(layers) or "logits" in layers:
        raise ValueError(f"layers must be distinct and not 'logits' (the output's own name); got {list(layers)}")
    if not (mode in ("train", None) or callable(mode)):
        raise ValueError(f"mode must be 'train', None or a function (model, train) -> None; got {mode!r}")
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
    return NNXTapped(graphdef=graphdef, templates=(params, stats, rest), layers=tuple(layers), mode=mode,
                     output=output, num_classes=num_classes)


#: The collection of a function model's state (``from_functions(..., state=...)``): Linen's name for running statistics.
FUNCTION_STATE = "batch_stats"


def _groups(tree: Any) -> dict[str, Any]:
    """A parameter or state tree as named groups: a mapping's own keys, another pytree as one group (plain dicts
    again: a Linen module's attributes hold their dicts frozen)."""
    if isinstance(tree, Mapping):
        return {str(k): unfreeze(v) for k, v in tree.items()}
    return {"weights": unfreeze(tree)}


def _ungroup(template: Any, groups: Mapping[str, Any]) -> Any:
    """The tree the functions take, from the groups (:func:`_groups`'s inverse)."""
    if isinstance(template, Mapping):
        return {k: groups[str(k)] for k in template}
    return groups["weights"]


class FunctionTapped(nn.Module):
    """A model written as functions of its parameters, its stages tapped, as a Linen module of the house contract;
    build it with :func:`from_functions`.

    Attributes:
      stages: ``(name, function)`` pairs run in order; each stage's output is the layer ``name`` and the next
        stage's input; the last stage is the head, whose output (the logits) is tapped as ``"logits"``.
      params: the initial parameters (the weights the functions are called with at the start).
      state: the initial non-trainable state (running statistics), or ``None``: a stateless model.
      keyed: each function also takes a random key (its dropout), ``None`` in evaluation mode.
      num_classes: the classes it predicts (the run layer's label checks); ``None``: not checked.
    """

    stages: tuple[tuple[str, Callable[..., Any]], ...]
    params: Any
    state: Any = None
    keyed: bool = False
    num_classes: int | None = None

    @nn.compact
    def __call__(self, x, *, train: bool, perturb: Mapping[str, jax.Array] | None = None,
                 edit: Mapping[str, Callable[[jax.Array], jax.Array]] | None = None):
        params = _ungroup(self.params, {k: self.param(k, lambda _key, v=v: v) for k, v in _groups(self.params).items()})
        stats = None
        if self.state is not None:
            stats = {k: self.variable(FUNCTION_STATE, k, lambda v=v: v) for k, v in _groups(self.state).items()}
            state = _ungroup(self.state, {k: v.value for k, v in stats.items()})
        acts: dict[str, jax.Array] = {}
        key = self.make_rng("dropout") if self.keyed and train and self.has_rng("dropout") else None
        h = x
        for i, (name, fn) in enumerate(self.stages):
            more = (None if key is None else jax.random.fold_in(key, i),) if self.keyed else ()
            if self.state is None:
                h = fn(params, h, train, *more)
            else:
                h, state = _stateful(name, fn(params, state, h, train, *more))
            last = i == len(self.stages) - 1
            if not isinstance(h, jax.Array) or (last and h.ndim != 2):
                raise ValueError(f"stage {name!r} returns {_describe(h)}; expected "
                                 f"{'logits (B, k)' if last else 'one array'}")
            h = tap("logits" if last else name, h, acts, perturb, edit)
        if stats is not None and self.is_mutable_collection(FUNCTION_STATE):
            for k, v in _groups(state).items():
                stats[k].value = v
        check_hooks(acts, perturb, edit)
        return h, acts


def _stateful(name: str, out: Any) -> tuple[Any, Any]:
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(f"stage {name!r} returns {_describe(out)}; a model with state= returns (output, new state)")
    return out


def from_functions(features: Callable[..., Any] | Sequence[tuple[str, Callable[..., Any]]],
                   head: Callable[..., Any], params: Any, *, state: Any = None, keyed: bool = False,
                   layer: str = "features", num_classes: int | None = None) -> FunctionTapped:
    """A model written as plain functions of its parameters, its features tapped: a module every method accepts.

    Args:
      features: ``features(params, x, train) -> h`` (the layer ``layer``), or a sequence of ``(name, function)``
        stages, each taking the previous stage's output, for more than one tapped layer.
      head: ``head(params, h, train) -> logits (B, k)``.
      params: the model's parameters, any pytree (a mapping's top-level keys are the groups that ``trainable``
        and FMD's block choose among; another pytree is one group, ``"weights"``). Every function receives
        the whole tree.
      state: non-trainable state (batch-norm statistics), or ``None``. With state, each function is called
        ``fn(params, state, h, train)`` and returns ``(output, new_state)``; the new state is kept in training
        mode and dropped in evaluation mode, as the run layer does with batch statistics.
      keyed: each function also takes a last argument ``key``: a random key for its dropout, fresh each
        training step (from the run layer's ``"dropout"`` stream, one per stage), ``None`` in evaluation mode.
      layer: the name of ``features``' output when it is one function.
      num_classes: the classes the model predicts.

    An equinox model ``m`` becomes ``params, static = eqx.partition(m, eqx.is_array)`` with
    ``features = lambda p, x, train: eqx.combine(p, static).features(x)``; a haiku ``apply`` is called with
    its ``params`` as they are. The functions must be pure; randomness comes only through ``keyed``.
    """
    stages = [(layer, features)] if callable(features) else list(features)
    if not stages or not all(isinstance(s, tuple) and len(s) == 2 and isinstance(s[0], str) and s[0]
                             and callable(s[1]) for s in stages):
        raise ValueError("features must be a function features(params, x, train) or a sequence of (name, function) "
                         f"stages; got {features!r}")
    names = [n for n, _ in stages]
    if len(set(names)) != len(names) or "logits" in names:
        raise ValueError(f"the stages' names must be distinct and not 'logits' (the head's); got {names}")
    if not callable(head):
        raise ValueError(f"head must be a function head(params, h, train) -> logits; got {head!r}")
    if not jax.tree.leaves(params):
        raise ValueError("params holds no arrays: pass the model's parameters (a pytree of arrays)")
    return FunctionTapped(stages=tuple(stages) + (("logits", head),), params=params, state=state, keyed=bool(keyed),
                          num_classes=num_classes)
