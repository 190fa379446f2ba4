"""The benchmarks' hand-written PyTorch ResNet-18 has torchvision's layout (and jaxbias's resnet18 its size)."""
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from _torch_resnet import resnet18  # noqa: E402

#: torchvision's ``resnet18(num_classes=1000)``
TORCHVISION_PARAMS = 11_689_512


def test_parameter_count_and_shapes():
    model = resnet18(num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["layer4.1.conv2.weight"] == (512, 512, 3, 3)
    assert shapes["fc.weight"] == (1000, 512)
    assert "layer1.0.downsample.0.weight" not in shapes  # same width, stride 1: identity shortcut
    assert len(shapes) == 62  # torchvision's resnet18 has 62 parameter tensors
    x = torch.zeros(2, 3, 64, 64)
    assert tuple(model.eval()(x).shape) == (2, 1000)
    assert tuple(model.layer4(model.layer3(model.layer2(model.layer1(
        model.maxpool(model.relu(model.bn1(model.conv1(x)))))))).shape) == (2, 512, 2, 2)


def test_same_count_as_jaxbias_resnet18():
    import jax

    from jaxbias import models

    module = models.create("resnet18", num_classes=1000)
    params, _ = jax.eval_shape(lambda: models.init(module, jax.random.key(0), jax.numpy.zeros((1, 64, 64, 3))))
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == TORCHVISION_PARAMS
