"""Input normalisation inside the model: the network's own parameters and layer names, its outputs on normalised
inputs, LRP's heatmaps unchanged, and a run (and a correction from it) that keeps it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias import models, runs
from jaxbias.explain.intercept import lrp_model
from jaxbias.models.normalize import NAMED, Normalized, normalized, parse_normalize
from jaxbias.runs import RunConfig

MEAN, STD = (0.2, 0.5, 0.7), (0.3, 0.25, 0.1)


def test_the_wrapper_is_the_network_on_normalised_inputs_with_its_own_parameter_tree():
    net = models.build("simple_conv", {"channels": (2, 2, 2, 2)}, num_classes=3)
    wrapped = Normalized(net, MEAN, STD)
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 3))
    v = net.init(jax.random.key(1), x, train=False)
    assert jax.tree.structure(wrapped.init(jax.random.key(1), x, train=False)) == jax.tree.structure(v)
    xn = (x - jnp.array(MEAN)) / jnp.array(STD)
    (lo, acts), (lo_w, acts_w) = net.apply(v, xn, train=False), wrapped.apply(v, x, train=False)
    np.testing.assert_allclose(lo_w, lo, rtol=1e-6)
    assert set(acts_w) == set(acts) and wrapped.num_classes == 3
    # the first layer's flat rule spreads relevance over positions: the heatmap is the network's own
    np.testing.assert_allclose(lrp_model(wrapped, v, x, target=0), lrp_model(net, v, xn, target=0), atol=1e-7)


def test_text_forms_and_refusals():
    assert parse_normalize("imagenet") == NAMED["imagenet"]
    assert parse_normalize("0.5/0.25") == ((0.5,), (0.25,))
    assert parse_normalize(None) is None
    for bad in ("imagenet2", "0.5", "0.5,0.4/0.25", "0.5/0", "a/b", "nan/1"):
        with pytest.raises(ValueError, match="normalize"):
            parse_normalize(bad)
    with pytest.raises(ValueError, match="gives 3 means .* the inputs have 1 channels"):
        normalized(models.build("mlp", None, num_classes=2), "imagenet", channels=1)
    with pytest.raises(ValueError, match="normalize must be one of"):
        RunConfig(normalize="zscore")


def test_a_run_keeps_its_normalisation_when_restored_and_corrected(tmp_path):
    cfg = RunConfig(dataset="artifact_mnist", model="mlp", model_settings={"hidden": (16,)}, epochs=1, batch_size=250,
                    normalize="0.1,0.1,0.1/0.3,0.3,0.3")
    run = runs.train(cfg, workdir=tmp_path / "base", progress=False)
    assert isinstance(run.module, Normalized) and run.record["normalize"] == "0.1,0.1,0.1/0.3,0.3,0.3"
    back = runs.restore(tmp_path / "base")
    assert isinstance(back.module, Normalized)
    x = np.asarray(run.config.load_data().evals["clean"].x[:8])
    def variables(r):
        params, state = r.variables
        return {"params": params, **state}

    out = run.module.apply(variables(run), x, train=False)[0]
    np.testing.assert_allclose(back.module.apply(variables(back), x, train=False)[0], out, rtol=1e-6)
    plain = models.build("mlp", {"hidden": (16,)}, num_classes=10)  # without the normalisation: other logits
    assert not np.allclose(plain.apply(variables(run), x, train=False)[0], out, rtol=1e-3)
    fixed = runs.train(cfg.replace(method="vanilla", init_from=tmp_path / "base", trainable=("out",), epochs=1,
                                   normalize=None), progress=False)
    assert isinstance(fixed.module, Normalized) and fixed.config.normalize == cfg.normalize  # the base's
