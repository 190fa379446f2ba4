"""Region (patch) attribution: which image regions carry a confounding attribute (SPEC §6).

De Coninck, Leroux, Simoens. *Mitigating Bias Using Model-Agnostic Data
Attribution.* CVPR Workshops 2024, arXiv:2405.05031.

- :mod:`~jaxbias.attribution.network`: the region classifier, a ResNet of
  basic blocks with a learned position-embedding channel (:func:`resnet18`,
  :func:`small`).
- :mod:`~jaxbias.attribution.classifier`: training (one random patch per image
  per step, label smoothing 0.1, through the project's train step), patch
  probabilities, calibration (ECE, reliability bins over all patches).
- :mod:`~jaxbias.attribution.maps`: the patch grid, confidence measures,
  :func:`pixel_map`, specific and general maps, all patches of a batch of
  images in one compiled call, the top-``q`` region and IoU.

Training that keeps a model from the mapped region is the method
:mod:`jaxbias.methods.targeted_noise`.
"""
from jaxbias.attribution.classifier import (
    RegionClassifier,
    calibration,
    init_variables,
    make_probability_fn,
    make_specific_map_fn,
    map_set,
    patch_probabilities,
    region_loss,
    sample_patches,
    specific_maps,
    train_region_classifier,
)
from jaxbias.attribution.maps import (
    MEASURES,
    confidence,
    default_chunk,
    extract_patches,
    general_map,
    grid_locations,
    grid_shape,
    image_hw,
    iou,
    make_map_fn,
    maps_in_batches,
    minmax,
    patch_logits,
    pixel_map,
    top_region,
)
from jaxbias.attribution.network import BasicBlock, RegionResNet, resnet18, small

__all__ = [
    "MEASURES",
    "BasicBlock",
    "RegionClassifier",
    "RegionResNet",
    "calibration",
    "confidence",
    "default_chunk",
    "extract_patches",
    "general_map",
    "grid_locations",
    "grid_shape",
    "image_hw",
    "init_variables",
    "iou",
    "make_map_fn",
    "make_probability_fn",
    "make_specific_map_fn",
    "map_set",
    "maps_in_batches",
    "minmax",
    "patch_logits",
    "patch_probabilities",
    "pixel_map",
    "region_loss",
    "resnet18",
    "sample_patches",
    "small",
    "specific_maps",
    "top_region",
    "train_region_classifier",
]
