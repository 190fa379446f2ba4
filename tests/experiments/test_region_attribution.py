"""The region-attribution experiment runs end to end on a tiny budget."""
import json


def test_region_attribution_offline_tiny(tmp_path, load_experiment):
    mod = load_experiment("region_attribution")
    argv = ["--config", "offline", "--out", str(tmp_path), "--seeds", "1", "--epochs", "1", "--region-epochs", "1",
            "--limit", "64", "--variants", "specific mask", "--no-progress"]
    assert mod.main(argv) == 0
    saved = json.loads((tmp_path / "results_offline.json").read_text())
    assert [r["model"] for r in saved["runs"]] == ["baseline", "specific mask"]
    assert 0.0 <= saved["runs"][1]["treated_accuracy"] <= 1.0
    for r in saved["runs"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["gap"] == abs(r["acc_t1"] - r["acc_t0"])
    att = saved["attribution"][0]
    assert 0.0 <= att["iou"] <= 1.0 and 0.0 <= att["ece"] <= 1.0
    md = (tmp_path / "results_offline.md").read_text()
    assert "| baseline |" in md and "| specific mask |" in md and "| region classifier |" in md
    for png in ("maps_offline.png", "reliability_offline.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
