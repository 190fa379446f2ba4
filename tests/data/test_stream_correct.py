"""What `jaxbias correct` computes on a streamed folder, computed a batch at a time: the CAV fit (signal from
running sums, other fitters on a bounded subsample), the artifact report and R_bias; the same numbers as in
memory, and never more rows decoded by one index than the batch size."""
import logging

import jax
import numpy as np
import pytest

from jaxbias import models as models_lib
from jaxbias.concepts import SignalSums, fit_cav, layer_acts
from jaxbias.data.lazy import is_lazy
from jaxbias.datasets import folder
from jaxbias.evaluation import artifact_report, lrp_r_bias
from jaxbias.methods import _clarc

from test_folder import write_csv, write_folder

SIZE = 20  # the stamp's text needs 19 + 1 pixels
BATCH = 4  # smaller than every set below: a whole-set read would gather more rows than this


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream_correct") / "photos"
    rows = write_folder(root, per_class=15)
    return root, write_csv(root / "meta.csv", rows)


def load(table, **kw):
    root, meta = table
    settings = {"split_column": "split", "image_size": SIZE, "artifact": "stamp", "artifact_class": 0, "p": 0.5, **kw}
    return folder.load(folder.Settings(root=str(root), metadata=str(meta), **settings), seed=0)


@pytest.fixture(scope="module")
def model():
    module = models_lib.build("simple_conv", {"channels": [2, 2, 2, 2]}, num_classes=3)
    params, state = models_lib.init(module, jax.random.key(0), np.zeros((1, SIZE, SIZE, 3), np.float32))
    return module, params, state, models_lib.bind(module, state, train=False)


def test_signal_sums_equal_the_in_memory_signal_cav():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(37, 5, 5, 6)).astype(np.float32)
    t = (rng.random(37) < 0.3).astype(np.int32)
    t[:2] = (0, 1)
    sums = SignalSums("max")
    for start in range(0, 37, 5):
        sums.add(a[start:start + 5], t[start:start + 5])
    np.testing.assert_allclose(sums.cav(), np.asarray(fit_cav(a, t, method="signal")), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="both concept classes") as info:
        only = SignalSums()
        only.add(a[:3, 0, 0], np.zeros(3))
        only.cav()
    assert "\n" not in str(info.value)


def test_streamed_cav_fit_equals_in_memory(table, model, gathered):
    _, params, _, bound = model
    mem, lazy = load(table), load(table, stream=True)
    gathered[0] = 0
    assert is_lazy(lazy.concept.x) and len(lazy.concept.y) > BATCH
    kw = {"layer": "block4", "cav": "signal", "cav_reg": None, "pool": "max", "batch_size": BATCH}
    a = _clarc.fit_state(bound, params, mem.concept, **kw)
    b = _clarc.fit_state(bound, params, lazy.concept, **kw)
    for u, v in zip(a, b):
        np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=1e-4, atol=1e-6)
    assert 0 < gathered[0] <= BATCH


def test_streamed_regularised_cav_on_a_bounded_subsample(table, model, gathered, monkeypatch, caplog):
    _, params, _, bound = model
    mem, lazy = load(table), load(table, stream=True)
    gathered[0] = 0
    kw = {"layer": "block4", "cav": "ridge", "cav_reg": 1e-2, "pool": "max", "batch_size": BATCH}
    a = _clarc.fit_state(bound, params, mem.concept, **kw)
    b = _clarc.fit_state(bound, params, lazy.concept, **kw)  # every sample fits under the cap: the same fit
    np.testing.assert_allclose(np.asarray(b.cav), np.asarray(a.cav), rtol=1e-4, atol=1e-5)
    n = len(lazy.concept.y)
    monkeypatch.setattr(_clarc, "STREAM_CAV_SAMPLES", n - 2)
    with caplog.at_level(logging.INFO, logger="jaxbias.methods._clarc"):
        c = _clarc.fit_state(bound, params, lazy.concept, **kw)
    assert f"subsample of {n - 2} of the {n} samples" in caplog.text
    assert np.isclose(np.linalg.norm(np.asarray(c.cav)), 1.0, atol=1e-5)
    assert 0 < gathered[0] <= BATCH
    keep = _clarc.stratified_subsample(np.asarray(lazy.concept.bias), 5)
    assert keep.sum() <= 5 and set(np.asarray(lazy.concept.bias)[keep].tolist()) == {0, 1}


def test_report_and_r_bias_streamed_as_in_memory_a_batch_at_a_time(table, model, gathered):
    module, params, state, bound = model
    mem, lazy = load(table), load(table, stream=True)
    gathered[0] = 0
    cav = np.asarray(layer_acts(bound, params, mem.concept.x[:2], "block4", pool="max")[0])
    cav = cav / np.linalg.norm(cav) if np.linalg.norm(cav) else np.ones_like(cav) / np.sqrt(cav.size)
    assert len(lazy.evals["artifact"].y) > BATCH and len(lazy.evals["clean"].y) > BATCH
    reports = {}
    for name, data in (("mem", mem), ("lazy", lazy)):
        rep = artifact_report(bound, params, data.evals, cav=cav, layer="block4", target_class=0, batch_size=BATCH)
        rep.update(lrp_r_bias(module, {"params": params, **state}, data.evals["artifact"], target_class=0,
                              batch_size=BATCH))
        reports[name] = rep
    assert 0 < gathered[0] <= BATCH
    assert reports["mem"].keys() == reports["lazy"].keys()
    for k, v in reports["mem"].items():
        assert reports["lazy"][k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
