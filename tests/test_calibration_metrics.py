"""ECE and reliability bins against a direct NumPy loop; reliability diagrams; subgroup accuracies."""
import numpy as np
import pytest

from jaxbias import metrics, report


def numpy_ece(probs, labels, n_bins):
    """ECE = Σ_i (n_i / N) |acc_i − conf_i| over bins (i/M, (i+1)/M], written out as a loop."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for i in range(n_bins):
        lo, hi = edges[i], edges[i + 1]
        inside = (conf > lo) & (conf <= hi) if i > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


def _probs(n, k, seed, temp=2.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=temp, size=(n, k))
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), rng.integers(0, k, n)


@pytest.mark.parametrize("k,n_bins", [(2, 15), (3, 10), (10, 1), (4, 7)])
def test_ece_equals_a_direct_numpy_computation(k, n_bins):
    probs, labels = _probs(5000, k, seed=k + n_bins)
    assert metrics.ece(probs, labels, n_bins=n_bins) == pytest.approx(numpy_ece(probs, labels, n_bins), abs=1e-12)
    bins = metrics.reliability_bins(probs, labels, n_bins=n_bins)
    assert sum(bins["count"]) == 5000 and len(bins["edges"]) == n_bins + 1


def test_ece_at_bin_edges_and_known_values():
    # confidences exactly on edges belong to the lower bin: (0.4, 0.6] with M = 5
    probs = np.array([[0.6, 0.4], [0.4, 0.6], [0.8, 0.2], [1.0, 0.0]])
    labels = np.array([0, 0, 0, 0])
    assert metrics.reliability_bins(probs, labels, n_bins=5)["count"] == [0, 0, 2, 1, 1]
    assert metrics.ece(probs, labels, n_bins=5) == pytest.approx(numpy_ece(probs, labels, 5))
    assert metrics.ece(np.eye(3), np.arange(3)) == 0.0  # confident and right
    assert metrics.ece(np.eye(3), np.array([1, 2, 0])) == 1.0  # confident and wrong


@pytest.mark.parametrize("probs,labels,match", [
    (np.array([[0.5, 0.6]]), np.array([0]), "each row summing to 1"),
    (np.array([[1.5, -0.5]]), np.array([0]), "each in"),
    (np.array([0.5, 0.5]), np.array([0]), r"probs must be \(N, K\)"),
    (np.array([[0.5, 0.5]]), np.array([2]), r"class indices in \[0, 1\]"),
    (np.array([[0.5, 0.5]]), np.array([0, 1]), "labels has 2 entries"),
    (np.array([[np.nan, 0.5]]), np.array([0]), "NaN"),
    (np.array([[1, 0]]), np.array([0]), "float array"),
])
def test_ece_bad_input(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        metrics.ece(probs, labels)


def test_ece_bad_bins():
    with pytest.raises(ValueError, match="n_bins must be an int ≥ 1"):
        metrics.ece(np.eye(2), np.arange(2), n_bins=0)


def test_reliability_diagram_is_written(tmp_path):
    probs, labels = _probs(500, 2, seed=0)
    bins = metrics.reliability_bins(probs, labels)
    path = report.reliability_diagram(tmp_path / "rel.png", bins, ece=metrics.ece(probs, labels), title="test")
    data = (tmp_path / "rel.png").read_bytes()
    assert path.endswith("rel.png") and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="bins must hold 'count'"):
        report.reliability_diagram(tmp_path / "x.png", {"edges": [0, 1]})


def test_attribution_maps_figure_is_written(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 16, 16, 3))
    m = rng.uniform(size=(3, 16, 16))
    region = np.zeros((16, 16), bool)
    region[:4] = True
    report.attribution_maps(tmp_path / "maps.png", x, m, general=m.mean(0), region=region)
    assert (tmp_path / "maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="general has shape"):
        report.attribution_maps(tmp_path / "bad.png", x, m, general=np.ones((8, 8)))


def test_subgroup_report_against_hand_counts():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    conf = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    pred = np.array([1, 1, 0, 1, 0, 1, 0, 0])
    rep = metrics.subgroup_report(pred, labels, conf)
    assert rep["accuracy"] == 6 / 8
    assert rep["by_target"] == {"t0": {"accuracy": 0.75, "count": 4}, "t1": {"accuracy": 0.75, "count": 4}}
    assert rep["groups"]["t1_c1"] == {"accuracy": 0.5, "count": 2}
    assert rep["groups"]["t0_c0"] == {"accuracy": 0.5, "count": 2}
    assert rep["gap"] == 0.0 and rep["group_gap"] == 0.5 and rep["worst_group"] == 0.5
    with pytest.raises(ValueError, match="confounder has 3 entries"):
        metrics.subgroup_report(pred, labels, conf[:3])
