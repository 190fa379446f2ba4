"""The FMD experiment runs end to end on a small budget and shows FMD's claim."""
import json

import pytest


@pytest.mark.usefixtures("fewer_digits")
def test_fmd_experiment_offline_cuts_the_bias(tmp_path, load_experiment):
    """Colored MNIST from 800 digits, 1 base epoch, seed 0: the biased model reads the colour (B = 0.67, unbiased test at
    chance); FMD's 5-step edit from 100 external pairs cuts B by ~44 % in a fraction of a second, keeping the
    biased-test accuracy within 3 points (measured: 1.00 -> 0.98)."""
    mod = load_experiment("fmd")
    label = "FMD last layer, 5 Newton steps"  # a label with a comma: --variants takes whole labels
    argv = ["--config", "offline", "--out", str(tmp_path), "--workroot", str(tmp_path / "runs"), "--seeds", "1",
            "--base-epochs", "1", "--datasets", "colored_mnist", "--variants", label, "--no-progress"]
    assert mod.main(argv) == 0
    saved = json.loads((tmp_path / "results_offline.json").read_text())
    base, edit, tuned = saved["runs"]
    assert [r["model"] for r in saved["runs"]] == ["biased model", label, "fine-tune baseline (out)"]
    assert base["acc_biased"] >= 0.95 and base["acc_unbiased"] <= 0.15 and base["B"] >= 0.5  # the shortcut
    assert edit["B_change_%"] <= -30.0 and edit["acc_biased"] >= base["acc_biased"] - 0.03
    assert edit["feasible"] and edit["pairs"] == 100 and edit["seconds"] < tuned["seconds"]
    assert tuned["B"] < base["B"]  # the baseline fine-tuned on the same pairs also moves B
    md = (tmp_path / "results_offline.md").read_text()
    assert f"| {label} |" in md and "## colored_mnist" in md
