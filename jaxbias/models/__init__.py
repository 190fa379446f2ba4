"""Flax Linen models; each returns ``(logits, acts)`` and takes ``perturb``/``edit``.

:func:`init` creates ``(params, state)`` and :func:`bind` turns a module and its
non-trainable state into the plain function the methods call:
``model(params, x, *, perturb=None, edit=None) -> ModelOutput``.

The models the run layer and the CLI know are registered (:mod:`.registry`):
each bundled model's file calls :func:`register` with its factory and
``Settings``, as a model of yours does. A network written elsewhere joins
unmodified through :func:`from_linen`, :func:`from_nnx` or, written as plain
functions of its parameters, :func:`from_functions` (:mod:`.adapters`).
Weights you already have (``.npz``, ``.safetensors``, an orbax checkpoint) load,
checked against the module, with :func:`load_weights` (:mod:`.weights`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from jaxbias.models.adapters import FunctionTapped, NNXTapped, Tapped, from_functions, from_linen, from_nnx
from jaxbias.models.convnet import SimpleConvNet
from jaxbias.models.efficientnet import EfficientNetB0
from jaxbias.models.mlp import MLP
from jaxbias.models.resnet import ResNet18
from jaxbias.models.registry import IMPORTED, Imported, Model, NoSettings, available, get, is_import, register, unregister
from jaxbias.models.vgg import VGG16
from jaxbias.models.weights import load_weights, save_weights
from jaxbias.types import BoundModel, ModelOutput, ModelState, Params


def create(name: str, **kwargs: Any) -> nn.Module:
    """A registered model's factory called with ``kwargs`` (the module's own defaults for the rest).

    Bundled: ``"simple_conv"`` (Biased MNIST), ``"mlp"`` (FMD), and torchvision's
    ImageNet architectures ``"vgg16"``, ``"resnet18"``, ``"efficientnet_b0"``
    (their weights: :func:`jaxbias.models.torchvision_weights.load_torchvision`).
    The run layer builds from a model's ``Settings`` instead (:meth:`Model.build`).
    """
    return get(name).factory(**kwargs)


def settings(name: str, values: Any = None) -> Any:
    """Model ``name``'s ``Settings`` from ``None``, a mapping or a ``Settings`` value (:meth:`Model.settings`)."""
    return get(name).settings(values)


def build(name: str, values: Any = None, *, num_classes: int) -> nn.Module:
    """Model ``name``'s module for these settings and this many classes (:meth:`Model.build`)."""
    return get(name).build(values, num_classes=num_classes)


def init(module: nn.Module, key: jax.Array, sample_x: jax.Array) -> tuple[Params, ModelState]:
    """Initialise ``(params, state)`` from one sample batch (only its shape is used)."""
    variables = module.init(key, sample_x, train=False)
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables


def bind(module: nn.Module, state: ModelState, *, train: bool, key: jax.Array | None = None) -> BoundModel:
    """Close a module over its non-trainable state.

    In training mode the returned function updates the batch-norm statistics and
    hands them back in ``ModelOutput.state``; in evaluation mode it uses the
    running averages and returns ``state`` unchanged. ``key``: the random
    stream of the network's dropout (Linen's ``"dropout"`` rng; an NNX model's
    streams are reseeded from it), one per training step; a network without
    dropout ignores it.
    """
    mutable = list(state) if (train and state) else False
    rngs = {"dropout": key} if key is not None else None

    def model(params: Params, x: jax.Array, *, perturb=None, edit=None) -> ModelOutput:
        variables = {"params": params, **state}
        if mutable:
            (logits, acts), new_state = module.apply(
                variables, x, train=True, perturb=perturb, edit=edit, mutable=mutable, rngs=rngs
            )
            return ModelOutput(logits, acts, dict(new_state))
        logits, acts = module.apply(variables, x, train=train, perturb=perturb, edit=edit, rngs=rngs)
        return ModelOutput(logits, acts, state)

    return model


__all__ = ["SimpleConvNet", "MLP", "VGG16", "ResNet18", "EfficientNetB0", "IMPORTED", "Imported", "Model",
           "FunctionTapped", "NNXTapped", "NoSettings", "Tapped", "available", "bind", "build", "create", "from_functions",
           "from_linen", "from_nnx", "get", "init", "is_import", "load_weights", "register", "save_weights", "settings",
           "unregister"]
