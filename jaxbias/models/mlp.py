"""A multilayer perceptron with named layers (FMD's Colored-MNIST/Adult models)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbias import settings as settings_lib
from jaxbias.models.layers import check_hooks, tap
from jaxbias.models.registry import register

Array = jax.Array


class MLP(nn.Module):
    """Flatten → [Dense → ReLU] × len(hidden) → Dense.

    Layers: ``dense1`` … ``denseL`` (after ReLU), ``features`` (the last hidden
    layer, same array as ``denseL``), ``logits``.
    FMD's Colored-MNIST model is ``MLP(hidden=(100, 100, 100))`` on 3·28·28 inputs.
    """

    num_classes: int = 10
    hidden: Sequence[int] = (100, 100, 100)

    @nn.compact
    def __call__(
        self,
        x: Array,
        *,
        train: bool,
        perturb: Mapping[str, Array] | None = None,
        edit: Mapping[str, Callable[[Array], Array]] | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        del train  # no train-time behaviour; kept for the shared signature
        if x.ndim < 2:
            raise ValueError(f"x must have a batch axis, got shape {x.shape}")
        if not self.hidden:
            raise ValueError("hidden must name at least one hidden layer")
        acts: dict[str, Array] = {}
        h = jnp.reshape(x, (x.shape[0], -1))
        for i, width in enumerate(self.hidden):
            h = tap(f"dense{i + 1}", nn.relu(nn.Dense(width, name=f"fc{i + 1}")(h)), acts, perturb, edit)
        h = tap("features", h, acts, perturb, edit)
        logits = tap("logits", nn.Dense(self.num_classes, name="out")(h), acts, perturb, edit)
        check_hooks(acts, perturb, edit)
        return logits, acts


@dataclasses.dataclass(frozen=True)
class Settings:
    """The run layer's MLP (``--model mlp``).

    Attributes:
      hidden: widths of the hidden layers (FMD's Colored-MNIST model: 100,100,100).
    """

    hidden: tuple[int, ...] = (100, 100, 100)

    def __post_init__(self):
        settings_lib.check(self)
        settings_lib.need(len(self.hidden) >= 1 and min(self.hidden) >= 1, self, "hidden",
                          "positive ints, one per hidden layer")


register("mlp", MLP, Settings)
