"""Importing torchvision state dicts (.npz and torch.save files, read without torch).

The always-run tests build files themselves: random arrays in torchvision's
key/shape table, written with ``save_npz`` / ``save_pth``. The last tests need
torchvision and compare our logits with torchvision's on the same weights; they
skip where torch is not installed.
"""
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import models
from jaxbias.models import torchvision_weights as tvw
from jaxbias.models.torch_pickle import read_state_dict, save_pth

NAMES = ["vgg16", "resnet18", "efficientnet_b0"]
# len(torchvision.models.<name>().state_dict()), num_batches_tracked included
N_KEYS = {"vgg16": 32, "resnet18": 122, "efficientnet_b0": 360}


def _random_torch_state(name, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in tvw.torchvision_shapes(name, num_classes=num_classes).items():
        if k.endswith("num_batches_tracked"):
            out[k] = np.array(rng.integers(0, 1000), np.int64)
        elif k.endswith("running_var"):
            out[k] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            out[k] = rng.normal(0, 0.1, shape).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def resnet_state():
    return _random_torch_state("resnet18", 10)


def _assert_same_state(a, b):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_key_table_matches_torchvision():
    vgg = tvw.torchvision_shapes("vgg16")
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    chans = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    want = {}
    for i, cin, cout in zip(convs, chans[:-1], chans[1:]):
        want[f"features.{i}.weight"], want[f"features.{i}.bias"] = (cout, cin, 3, 3), (cout,)
    for i, (cin, cout) in zip((0, 3, 6), ((25088, 4096), (4096, 4096), (4096, 1000))):
        want[f"classifier.{i}.weight"], want[f"classifier.{i}.bias"] = (cout, cin), (cout,)
    assert vgg == want
    rn = tvw.torchvision_shapes("resnet18", num_classes=10)
    assert len(rn) == N_KEYS["resnet18"]
    assert rn["layer2.0.downsample.0.weight"] == (128, 64, 1, 1) and rn["fc.weight"] == (10, 512)
    assert "layer1.0.downsample.0.weight" not in rn and rn["bn1.num_batches_tracked"] == ()
    ef = tvw.torchvision_shapes("efficientnet_b0")
    assert len(ef) == N_KEYS["efficientnet_b0"]
    assert ef["features.1.0.block.1.fc1.weight"] == (8, 32, 1, 1)  # squeeze = in_channels // 4
    assert ef["features.2.0.block.1.0.weight"] == (96, 1, 3, 3)  # depthwise
    assert ef["features.6.3.block.3.1.running_var"] == (192,)
    assert ef["features.8.0.weight"] == (1280, 320, 1, 1) and ef["classifier.1.weight"] == (1000, 1280)


@pytest.mark.parametrize("fmt", ["npz", "pth", "pth-legacy"])
def test_round_trip_through_files(tmp_path, resnet_state, fmt):
    path = tmp_path / f"w.{fmt.split('-')[0]}"
    if fmt == "npz":
        tvw.save_npz(path, resnet_state)
    else:
        save_pth(path, resnet_state, legacy_format=fmt == "pth-legacy")
        _assert_same_state(read_state_dict(path), resnet_state)
    params, state = tvw.load_torchvision("resnet18", path)
    assert params["fc"]["kernel"].shape == (512, 10)
    np.testing.assert_array_equal(params["conv1"]["kernel"], resnet_state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        state["batch_stats"]["layer3_0"]["downsample_bn"]["var"], resnet_state["layer3.0.downsample.1.running_var"]
    )
    back = tvw.to_torchvision_state("resnet18", params, state)
    for k in back:
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[k], resnet_state[k], err_msg=k)
    assert set(back) == set(resnet_state)


def test_efficientnet_round_trip(tmp_path):
    sd = _random_torch_state("efficientnet_b0", 1000, seed=1)
    del sd["features.0.1.num_batches_tracked"]  # optional
    save_pth(tmp_path / "e.pth", sd)
    params, state = tvw.load_torchvision("efficientnet_b0", tmp_path / "e.pth")
    dw = params["stage2_0"]["dw_conv"]["kernel"]
    assert dw.shape == (3, 3, 1, 96)
    np.testing.assert_array_equal(dw[:, :, 0, 5], sd["features.2.0.block.1.0.weight"][5, 0])
    se = sd["features.1.0.block.1.fc1.weight"]
    np.testing.assert_array_equal(params["stage1_0"]["se_fc1"]["kernel"], se[:, :, 0, 0].T)
    back = tvw.to_torchvision_state("efficientnet_b0", params, state)
    for k in sd:
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    m = models.EfficientNetB0()
    x = jnp.zeros((1, 32, 32, 3))
    logits, _ = jax.eval_shape(lambda v: m.apply(v, x, train=False), {"params": params, **state})
    assert logits.shape == (1, 1000)


def test_vgg_classifier_rows_follow_the_flatten_order():
    # torch flattens the pooled (C, 7, 7) map channel-first; VGG16 flattens (7, 7, C)
    layout = tvw._vgg_fc1_layout(hw=2, c=3)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3 * 2 * 2)).astype(np.float32)  # torch (out, C·h·w)
    pooled = rng.normal(size=(4, 2, 2, 3)).astype(np.float32)  # NHWC
    torch_out = pooled.transpose(0, 3, 1, 2).reshape(4, -1) @ w.T
    ours = pooled.reshape(4, -1) @ layout.to_flax(w)
    np.testing.assert_allclose(ours, torch_out, rtol=1e-5)
    np.testing.assert_array_equal(layout.to_torch(layout.to_flax(w)), w)


def test_float16_and_int64_storages(tmp_path):
    sd = {"a": np.arange(6, dtype=np.float16).reshape(2, 3), "n": np.array(7, np.int64), "d": np.ones(3)}
    save_pth(tmp_path / "x.pth", sd)
    back = read_state_dict(tmp_path / "x.pth")
    assert back["a"].dtype == np.float16 and back["n"].shape == () and int(back["n"]) == 7
    _assert_same_state(back, sd)
    rs = _random_torch_state("resnet18", 10)
    rs = {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in rs.items()}
    save_pth(tmp_path / "h.pth", rs)
    params, _ = tvw.load_torchvision("resnet18", tmp_path / "h.pth")
    assert params["fc"]["kernel"].dtype == jnp.float32
    np.testing.assert_array_equal(params["fc"]["bias"], rs["fc.bias"].astype(np.float32))


def test_shape_mismatch_names_key_and_shapes(resnet_state):
    bad = dict(resnet_state)
    bad["layer1.0.conv1.weight"] = np.zeros((64, 64, 3, 2), np.float32)
    with pytest.raises(ValueError, match=r"'layer1\.0\.conv1\.weight'.*\(64, 64, 3, 2\).*\(64, 64, 3, 3\)"):
        tvw.from_torchvision_state("resnet18", bad)
    with pytest.raises(ValueError, match=r"'fc\.weight'.*\(10, 512\).*\(5, 512\)"):
        tvw.from_torchvision_state("resnet18", resnet_state, num_classes=5)


def test_missing_unexpected_and_unknown(tmp_path, resnet_state):
    missing = {k: v for k, v in resnet_state.items() if k != "layer4.1.bn2.running_mean"}
    with pytest.raises(ValueError, match=r"missing key.*'layer4\.1\.bn2\.running_mean'"):
        tvw.from_torchvision_state("resnet18", missing)
    with pytest.raises(ValueError, match=r"missing key.*'features\.0\.weight'.* and 24 more"):
        tvw.from_torchvision_state("vgg16", {})
    extra = {**resnet_state, "module.fc.weight": np.zeros((10, 512), np.float32)}
    with pytest.raises(ValueError, match=r"unexpected key.*'module\.fc\.weight'"):
        tvw.from_torchvision_state("resnet18", extra)
    with pytest.raises(ValueError, match=r"unknown.*'efficientnet_b0', 'resnet18', 'vgg16'"):
        tvw.load_torchvision("resnet50", tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="not a file"):
        tvw.load_torchvision("resnet18", tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="no entry"):
        params, state = tvw.from_torchvision_state("resnet18", resnet_state)
        tvw.to_torchvision_state("resnet18", params, {})


def _zip_with_pickle(path, payload):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)


def test_reader_refuses_code_and_unsupported_storages(tmp_path):
    _zip_with_pickle(tmp_path / "evil.pth", pickle.dumps({"a": os.getcwd}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to unpickle \w+\.getcwd"):
        read_state_dict(tmp_path / "evil.pth")
    # a bfloat16 storage: rename the storage type inside a valid file's pickle
    save_pth(tmp_path / "h.pth", {"a": np.ones(3, np.float16)})
    with zipfile.ZipFile(tmp_path / "h.pth") as zf:
        body = zf.read("archive/data.pkl").replace(b"HalfStorage", b"BFloat16Storage")
    _zip_with_pickle(tmp_path / "b.pth", body)
    with pytest.raises(ValueError, match="BFloat16Storage is not supported"):
        read_state_dict(tmp_path / "b.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="neither a zip nor a legacy torch.save file"):
        read_state_dict(tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="dtype int32"):
        save_pth(tmp_path / "i.pth", {"a": np.ones(2, np.int32)})


# --- against torchvision itself (skipped without torch) -----------------------


def _torchvision_model(name, torch):
    import torchvision

    torch.manual_seed(0)
    tm = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():  # non-trivial batch-norm so that eval mode is checked
        for mod in tm.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.2)
                mod.running_mean.normal_(0, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return tm.eval()


@pytest.mark.parametrize("name,hw", [("vgg16", (64, 64)), ("vgg16", (97, 75)), ("resnet18", (64, 64)),
                                     ("resnet18", (75, 66)), ("efficientnet_b0", (64, 64)),
                                     ("efficientnet_b0", (83, 70))])
def test_logits_equal_torchvision(tmp_path, name, hw):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    tm = _torchvision_model(name, torch)
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = tm(x).numpy()
    torch.save(tm.state_dict(), tmp_path / "w.pth")
    params, state = tvw.load_torchvision(name, tmp_path / "w.pth")
    m = models.create(name)
    forward = jax.jit(lambda v, x: m.apply(v, x, train=False)[0])
    ours = forward({"params": params, **state}, x.numpy().transpose(0, 2, 3, 1))
    err = np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max()
    assert err < 1e-4, err


def test_training_mode_and_file_formats_against_torch(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    tm = _torchvision_model("resnet18", torch)
    torch.save(tm.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    params, state = tvw.load_torchvision("resnet18", tmp_path / "legacy.pth")
    # our writer's files load in torch, strictly and with weights_only=True
    back = tvw.to_torchvision_state("resnet18", params, state)
    for legacy in (False, True):
        save_pth(tmp_path / "ours.pth", back, legacy_format=legacy)
        loaded = torch.load(tmp_path / "ours.pth", weights_only=True)
        tm.load_state_dict(loaded, strict=True)
        for k, v in tm.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                np.testing.assert_array_equal(v.numpy(), back[k], err_msg=k)
    # training mode: batch statistics in the forward pass, running means updated with momentum 0.1
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    tm.train()
    with torch.no_grad():
        ref = tm(x).numpy()
    out = jax.jit(models.bind(models.create("resnet18"), state, train=True))(params, x.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(out.logits, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(
        out.state["batch_stats"]["layer2_1"]["bn1"]["mean"], tm.layer2[1].bn1.running_mean.numpy(), rtol=1e-4, atol=1e-5
    )
    # non-contiguous and shared storages written by torch
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"t": base.t(), "row": base[1], "h": base.half()}, tmp_path / "views.pth")
    sd = read_state_dict(tmp_path / "views.pth")
    np.testing.assert_array_equal(sd["t"], base.numpy().T)
    np.testing.assert_array_equal(sd["row"], base.numpy()[1])
    assert sd["h"].dtype == np.float16
