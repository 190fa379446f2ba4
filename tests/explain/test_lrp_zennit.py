"""LRP against zennit's EpsilonPlusFlat (the composite the RR-ClArC evaluation uses) on the same SimpleConvNet.

Optional: runs where torch and zennit are installed (``pip install torch zennit``), skipped otherwise.
The torch network is built layer by layer from the Flax weights (NHWC → NCHW), batch-norm in evaluation
mode and merged into the convolutions by zennit's own canonizer; the explained output relevance is the
target logit (jaxbias's convention), so zennit gets ``one_hot · logits`` as its output gradient.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
zennit = pytest.importorskip("zennit")

from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import EpsilonPlusFlat  # noqa: E402

from jaxbias import explain, models  # noqa: E402


def _torch_twin(module, params, stats):
    layers = []
    pad = module.kernel_size // 2
    for i in range(1, len(module.channels) + 1):
        kernel = np.asarray(params[f"conv{i}"]["kernel"])  # (kh, kw, cin, cout)
        conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[0], padding=pad,
                               bias="bias" in params[f"conv{i}"])
        conv.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()).double()
        if conv.bias is not None:
            conv.bias.data = torch.from_numpy(np.asarray(params[f"conv{i}"]["bias"]).copy()).double()
        bn = torch.nn.BatchNorm2d(kernel.shape[3], eps=1e-5)
        bn.weight.data = torch.from_numpy(np.asarray(params[f"bn{i}"]["scale"]).copy()).double()
        bn.bias.data = torch.from_numpy(np.asarray(params[f"bn{i}"]["bias"]).copy()).double()
        bn.running_mean = torch.from_numpy(np.asarray(stats[f"bn{i}"]["mean"]).copy()).double()
        bn.running_var = torch.from_numpy(np.asarray(stats[f"bn{i}"]["var"]).copy()).double()
        layers += [conv, bn, torch.nn.ReLU()]
    fc = torch.nn.Linear(*np.asarray(params["fc"]["kernel"]).shape)
    fc.weight.data = torch.from_numpy(np.asarray(params["fc"]["kernel"]).T.copy()).double()
    fc.bias.data = torch.from_numpy(np.asarray(params["fc"]["bias"]).copy()).double()
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), fc]
    return torch.nn.Sequential(*layers).double().eval()


def test_epsilon_plus_flat_equals_zennit_on_simple_conv_net():
    with jax.enable_x64(True):
        module = models.create("simple_conv", channels=(4, 6, 8, 8), kernel_size=3, num_classes=5)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 1, size=(3, 12, 12, 3))
        params, state = models.init(module, jax.random.key(0), jnp.asarray(x, jnp.float32))
        stats = state["batch_stats"]
        params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
        # batch-norm statistics away from (0, 1), biases that are not all zero: z⁺'s bias term matters
        stats = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64) + 0.2 * jnp.abs(
            jnp.asarray(rng.normal(size=v.shape))), stats)
        for i in range(1, 5):
            params[f"bn{i}"]["bias"] = jnp.asarray(rng.normal(0, 0.3, size=params[f"bn{i}"]["bias"].shape))
        variables = {"params": params, "batch_stats": stats}
        target = np.array([0, 3, 4])
        ours = np.asarray(explain.lrp(explain.to_graph(module, variables), jnp.asarray(x), target=jnp.asarray(target)))
        nobias = np.asarray(explain.lrp(explain.to_graph(module, variables), jnp.asarray(x),
                                        target=jnp.asarray(target), zplus_bias=False))
        our_logits = np.asarray(explain.forward(explain.to_graph(module, variables), jnp.asarray(x)))
        # LRP by interception (jaxbias.explain.intercept) on the module itself, no layer graph
        intercepted = np.asarray(explain.lrp_model(module, variables, jnp.asarray(x), target=jnp.asarray(target)))

    net = _torch_twin(module, params, stats)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    with torch.no_grad():
        logits = net(xt)
    np.testing.assert_allclose(logits.numpy(), our_logits, rtol=1e-9, atol=1e-12)
    onehot = torch.eye(5, dtype=torch.float64)[torch.from_numpy(target)]
    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    with Gradient(model=net, composite=composite) as attributor:
        _, rel = attributor(xt, onehot * logits)
    theirs = rel.detach().numpy().transpose(0, 2, 3, 1)
    scale = np.abs(theirs).max()
    print(f"zennit: max |ours - theirs| / max |theirs| = {np.abs(ours - theirs).max() / scale:.2e}; "
          f"bias-free z+: {np.abs(nobias - theirs).max() / scale:.2e}")
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=5e-5 * scale)  # measured 9e-6 (float64, 2-core Xeon)
    print(f"zennit vs interception: {np.abs(intercepted - theirs).max() / scale:.2e}")
    np.testing.assert_allclose(intercepted, theirs, rtol=0, atol=5e-5 * scale)
    # the bias-free reading is measurably different on the same network
    assert np.abs(nobias - theirs).max() > 1e-3 * scale
