import numpy as np
import pytest

from jaxbias import metrics


def _loop_report(pred, y, b, nb):
    groups = {}
    for p, t, c in zip(pred, y, b):
        groups.setdefault((t, c), []).append(p == t)
    accs = {k: np.mean(v) for k, v in groups.items()}
    conf = [p == t for p, t, c in zip(pred, y, b) if t != c]
    alig = [p == t for p, t, c in zip(pred, y, b) if t == c]
    return accs, np.mean(conf), np.mean(alig)


def test_bias_report_against_loop():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    b = np.where(rng.uniform(size=300) < 0.7, y, rng.integers(0, 4, 300))
    pred = np.where(rng.uniform(size=300) < 0.6, y, rng.integers(0, 4, 300))
    rep = metrics.bias_report(pred, y, b, num_biases=4)
    accs, conf, alig = _loop_report(pred, y, b, 4)
    assert rep["accuracy"] == pytest.approx(np.mean(pred == y))
    assert rep["conflicting"] == pytest.approx(conf)
    assert rep["aligned"] == pytest.approx(alig)
    assert rep["group_mean"] == pytest.approx(np.mean(list(accs.values())))
    assert rep["worst_group"] == pytest.approx(min(accs.values()))
    assert rep["gap"] == pytest.approx(max(accs.values()) - min(accs.values()))
    for (t, c), a in accs.items():
        assert rep["groups"][f"t{t}_b{c}"]["accuracy"] == pytest.approx(a)


def test_empty_groups_are_absent_not_nan():
    rep = metrics.bias_report(np.array([0, 1]), np.array([0, 1]), np.array([0, 1]), num_biases=3)
    assert "conflicting" not in rep
    assert set(rep["groups"]) == {"t0_b0", "t1_b1"}
    assert all(np.isfinite(v) for v in (rep["group_mean"], rep["worst_group"], rep["gap"]))


def test_by_group():
    out = metrics.by_group(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]))
    assert out["by_group"]["0"]["accuracy"] == 0.5 and out["by_group"]["1"]["accuracy"] == 1.0
    assert out["worst_group"] == 0.5 and out["gap"] == 0.5


@pytest.mark.parametrize(
    "pred,labels,match",
    [
        (np.zeros((2, 2), int), np.zeros(2, int), "pred"),
        (np.zeros(3, int), np.zeros(2, int), "labels"),
        (np.zeros(2, int), np.array([0.0, 1.0]), "labels"),
        (np.zeros(2, int), np.array([0, -1]), "labels"),
        (np.zeros(0, int), np.zeros(0, int), "empty"),
    ],
)
def test_bad_input(pred, labels, match):
    with pytest.raises(ValueError, match=match):
        metrics.accuracy(pred, labels)


def test_tcav_scores_against_loops():
    from jaxbias.metrics import tcav, tcav_sens

    s = np.random.default_rng(0).normal(size=(7, 3, 3))
    flat = s.ravel().tolist()
    assert tcav(s) == sum(1 for v in flat if v > 0) / len(flat)
    assert abs(tcav_sens(s) - sum(abs(v) for v in flat) / len(flat)) < 1e-12
    assert tcav(np.zeros(4)) == 0.0  # zero derivative is not a positive influence
    # with zeros (dead units, a ReLU cut off): the release's pos / (pos + neg + 1e-8), loop by loop
    z = s.copy()
    z[:, 0, :] = 0.0
    pos = neg = 0
    for v in z.ravel().tolist():
        pos += v > 0
        neg += v < 0
    assert tcav(z) == pytest.approx(pos / (pos + neg + 1e-8), abs=1e-9)
    assert tcav(z, zeros="count") == sum(1 for v in z.ravel().tolist() if v > 0) / z.size
    assert tcav(z) > tcav(z, zeros="count")  # a third of the positions are zero
    assert tcav(np.zeros(4), zeros="count") == 0.0
    with pytest.raises(ValueError, match="zeros must be"):
        tcav(s, zeros="drop")
    for bad in (np.array([]), np.array([0.1, np.nan])):
        with pytest.raises(ValueError, match="s"):
            tcav(bad)


def test_tcav_significance_welch_statistic():
    from jaxbias.metrics import tcav_significance

    rng = np.random.default_rng(1)
    c, r = rng.uniform(0.7, 0.9, 6), rng.uniform(0.4, 0.6, 30)
    out = tcav_significance(c, r)
    se = np.sqrt(c.var(ddof=1) / c.size + r.var(ddof=1) / r.size)
    assert abs(out["t"] - (c.mean() - r.mean()) / se) < 1e-9
    assert out["p_value"] < 1e-4
    same = tcav_significance(rng.uniform(0.4, 0.6, 30), r)
    assert same["p_value"] > 0.01
    one = tcav_significance(0.8, r)
    assert abs(one["t"] - (0.8 - r.mean()) / (r.std(ddof=1) / np.sqrt(r.size))) < 1e-9
    with pytest.raises(ValueError, match="random_scores"):
        tcav_significance(0.8, [0.5])


def test_mean_std_rows_against_numpy():
    from jaxbias.report import mean_std_rows

    runs = [{"m": "a", "x": 0.1, "y": 1.0}, {"m": "b", "x": 0.5}, {"m": "a", "x": 0.3, "y": None},
            {"m": "a", "x": 0.8, "y": 3.0}]
    rows = mean_std_rows(runs, by="m", columns=["x", "y", "z"], scale={"x": 100.0}, digits={"x": 1, "y": 2})
    assert [r["m"] for r in rows] == ["a", "b"]
    xs = np.array([10.0, 30.0, 80.0])
    assert rows[0]["x"] == f"{xs.mean():.1f} ± {xs.std():.1f}"
    assert rows[0]["y"] == f"{2.0:.2f} ± {1.0:.2f}"  # the None run is left out
    assert rows[1]["x"] == "50.0" and rows[1]["y"] == "–" and rows[0]["z"] == "–"


def test_bar_chart_groups_do_not_overlap(tmp_path):
    """Every bar sits inside its own slot: no two bars share horizontal space, and
    each category's bars are centred on that category's tick."""
    from jaxbias.report import bar_chart

    series = {f"m{i}": [0.9 - 0.1 * i, 0.5 + 0.05 * i] for i in range(5)}
    extents = bar_chart(tmp_path / "bars.png", ["clean", "stamped"], series)
    assert (tmp_path / "bars.png").stat().st_size > 0
    assert len(extents) == 10
    ordered = sorted(extents)
    for (l0, r0), (l1, r1) in zip(ordered, ordered[1:]):
        assert r0 <= l1 + 1e-9, f"bars overlap: {(l0, r0)} and {(l1, r1)}"
    for c in range(2):
        group = extents[c::2]
        centre = (min(l for l, _ in group) + max(r for _, r in group)) / 2
        assert abs(centre - c) < 1e-9
