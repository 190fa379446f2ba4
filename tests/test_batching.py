"""One batched-inference helper (jaxbias.batching.map_batches) against a plain loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbias.batching import map_batches


def _fn(w, x, t):
    return {"z": jnp.tanh(x @ w), "pick": x[jnp.arange(x.shape[0]), t]}


def test_equals_one_call_on_everything_with_a_ragged_last_batch_and_one_compilation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 5)).astype(np.float32)
    t = rng.integers(0, 5, 23).astype(np.int32)
    w = rng.normal(size=(5, 3)).astype(np.float32)
    traces = []

    def counted(w, x, t):
        traces.append(x.shape)
        return _fn(w, x, t)

    out = map_batches(counted, x, t, args=(w,), batch_size=10)  # batches of 10, 10, 3 (padded to 10)
    assert traces == [(10, 5)]  # one shape: one compilation
    map_batches(counted, x[:7], t[:7], args=(w * 2,), batch_size=10)  # a short array: batch 7, one more
    map_batches(counted, x, t, args=(w * 2,), batch_size=10)  # the same fn again: its compilation is reused
    assert traces == [(10, 5), (7, 5)]
    assert isinstance(out["z"], np.ndarray) and out["z"].shape == (23, 3)
    np.testing.assert_allclose(out["z"], np.tanh(x @ w), rtol=1e-6)
    np.testing.assert_array_equal(out["pick"], x[np.arange(23), t])
    # under a trace: one lax.map, same numbers, and the result stays traceable
    jitted = jax.jit(lambda w: map_batches(_fn, x, t, args=(w,), batch_size=10)["z"].sum())(w)
    np.testing.assert_allclose(float(jitted), float(np.tanh(x @ w).sum()), rtol=1e-5)
    shape = jax.eval_shape(lambda w: map_batches(_fn, x, t, args=(w,), batch_size=4), w)
    assert shape["z"].shape == (23, 3)


def test_bad_input():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        map_batches(lambda b: b, x, batch_size=0)
    with pytest.raises(ValueError, match=r"xs\[1\] has shape \(3,\)"):
        map_batches(lambda b, c: b, x, np.zeros(3), batch_size=2)
    with pytest.raises(ValueError, match="empty"):
        map_batches(lambda b: b, x[:0], batch_size=2)
