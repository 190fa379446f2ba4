"""The FMD experiment runs end to end on a tiny budget."""
import json


def test_fmd_experiment_offline_tiny(tmp_path, load_experiment):
    mod = load_experiment("fmd")
    argv = ["--config", "offline", "--out", str(tmp_path), "--workroot", str(tmp_path / "runs"), "--seeds", "1",
            "--base-epochs", "1", "--datasets", "colored_mnist", "--variants", "FMD last layer", "--no-progress"]
    assert mod.main(argv) == 0
    saved = json.loads((tmp_path / "results_offline.json").read_text())
    assert [r["model"] for r in saved["runs"]] == ["biased model", "FMD last layer", "fine-tune baseline (out)"]
    md = (tmp_path / "results_offline.md").read_text()
    assert "| FMD last layer |" in md and "## colored_mnist" in md
