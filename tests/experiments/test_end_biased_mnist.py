"""The EnD Biased-MNIST experiment script runs end to end on a tiny budget."""
import json

import pytest


def test_configs_follow_the_paper_protocol(load_experiment):
    mod = load_experiment("end_biased_mnist")
    full = mod.CONFIGS["full"]
    assert full["rhos"] == [0.999, 0.997, 0.995, 0.990]
    assert (full["lr"], full["weight_decay"], full["batch_size"], full["epochs"], full["decay_every"]) == (
        1e-3, 1e-4, 256, 80, 20,
    )
    assert full["channels"] == [16, 32, 64, 128] and full["source"] == "tfds"
    assert set(mod.CONFIGS["offline"]["methods"]) == {"vanilla", "end"}


@pytest.mark.usefixtures("fewer_digits")
def test_offline_mode_writes_its_table(tmp_path, load_experiment):
    mod = load_experiment("end_biased_mnist")
    argv = ["--config", "offline", "--out", str(tmp_path), "--seeds", "1", "--epochs", "1",
            "--rhos", "0.99", "--alpha", "2", "--no-progress"]
    assert mod.main(argv) == 0
    saved = json.loads((tmp_path / "results_offline.json").read_text())
    assert saved["config"]["methods"]["end"] == {"alpha": 2.0, "beta": 1.0}
    assert [(r["method"], r["rho"], r["seed"]) for r in saved["runs"]] == [("vanilla", 0.99, 0), ("end", 0.99, 0)]
    for r in saved["runs"]:
        assert 0.0 <= r["unbiased"] <= 1.0 and 0.0 <= r["biased"] <= 1.0
    md = (tmp_path / "results_offline.md").read_text()
    assert "| 0.990 | Vanilla |" in md and "| 0.990 | EnD |" in md
