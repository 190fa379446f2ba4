"""The controlled-artifact correction experiment runs end to end on a tiny budget."""
import json

import pytest


@pytest.mark.usefixtures("fewer_digits")
def test_offline_mode_writes_its_table(tmp_path, load_experiment):
    mod = load_experiment("clarc_controlled")
    argv = ["--config", "offline", "--out", str(tmp_path), "--workroot", str(tmp_path / "runs"), "--seeds", "1", "--base-epochs", "1",
            "--epochs", "1", "--only", "RR-ClArC", "--no-progress"]  # P-ClArC: test_correct's CLI run
    assert mod.main(argv) == 0
    saved = json.loads((tmp_path / "results_offline.json").read_text())
    assert [r["model"] for r in saved["runs"]] == ["uncorrected", "RR-ClArC"]
    for r in saved["runs"]:
        assert 0.0 <= r["clean"] <= 1.0 and 0.0 <= r["tcav"] <= 1.0 and r["tcav_sens"] >= 0
    md = (tmp_path / "results_offline.md").read_text()
    assert "| uncorrected |" in md and "| RR-ClArC |" in md and "| P-ClArC |" not in md
