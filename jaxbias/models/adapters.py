"""Your own network, unmodified, under the contract every method uses.

The methods call a model as ``model(params, x, *, perturb=None, edit=None) ->
ModelOutput(logits, acts, state)`` (:func:`jaxbias.models.bind`), built from a
Linen module whose ``__call__(x, *, train, perturb, edit)`` returns ``(logits,
acts)``. The bundled networks record their layers with
:func:`jaxbias.models.layers.tap`; a network written elsewhere does not, and
need not be edited:

``from_linen(module, layers=("layer4",))`` wraps any Linen module. The named
submodules are tapped where their ``__call__`` returns, through
:func:`flax.linen.intercept_methods`: their outputs appear in ``acts``,
``edit[name]`` replaces one and ``perturb[name]`` is added to it, exactly as
``tap`` does inside a bundled network, and the rest of the forward pass sees the
changed value. The network's parameters are the wrapper's own (the two share
one scope), so weights saved for the unwrapped network load unchanged.

Layer names are submodule paths below the network, ``/``-separated
(``"layer4"``, ``"backbone/stage3/block2"``), as in the network's parameter
tree. What cannot be tapped, and why:

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

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax

from jaxbias.models.layers import check_hooks, tap

__all__ = ["Tapped", "from_linen", "MODE_ARGS"]

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
        wanted = set(self.layers)
        acts: dict[str, jax.Array] = {}
        called: dict[str, int] = {}
        root = len(self.network.path)

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name != "__call__":
                return out
            path = "/".join(context.module.path[root:])
            if not path:  # the network's own call: its output is the logits, tapped below
                return out
            called[path] = called.get(path, 0) + 1
            if path not in wanted:
                return out
            if called[path] > 1:
                raise ValueError(f"layer {path!r} is called more than once in one forward pass (a shared "
                                 "submodule): which call to tap is ambiguous; tap a submodule called once")
            if not isinstance(out, jax.Array):
                raise ValueError(f"layer {path!r} returns {type(out).__name__}, not one array: it cannot be "
                                 "tapped; tap a submodule that returns an array")
            return tap(path, out, acts, perturb, edit)

        with nn.intercept_methods(interceptor):
            out = self.network(x, **self._mode_args(train))
        missing = sorted(wanted - set(acts))
        if missing:
            raise ValueError(f"layers {missing} are not submodules called by {type(self.network).__name__} (a "
                             f"plain function call is not a layer); its submodules, in call order: {list(called)}")
        logits = out if self.output is None else self.output(out)
        if not (isinstance(logits, jax.Array) and logits.ndim == 2):
            raise ValueError(f"{type(self.network).__name__} returns {_describe(logits)}; expected logits (B, k): "
                             "pass output= to pick them from what it returns")
        logits = tap("logits", logits, acts, perturb, edit)
        check_hooks(acts, perturb, edit)
        return logits, acts

    def _mode_args(self, train: bool) -> dict[str, Any]:
        if callable(self.mode):
            return dict(self.mode(train))
        return MODE_ARGS[self.mode](train)


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else type(value).__name__


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
