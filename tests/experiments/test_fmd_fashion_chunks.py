"""The chunked FMD experiment (issue 39): cells appended to a .jsonl, skipped when present, a budget that stops
cleanly, rows of other settings refused (the fashion config on a tiny IDX folder, 1 base epoch)."""
import json

import pytest

from jaxbias.runs.chunks import read_rows


@pytest.fixture
def tiny_idx(idx_folder):
    """50 offline MNIST digits per class as the four IDX files (300 train, 200 test: > 100 external pairs)."""
    return idx_folder(50, 300)


def test_read_rows_drops_a_torn_line(tmp_path):
    p = tmp_path / "r.jsonl"
    assert read_rows(str(p)) == []
    p.write_text('{"seed": 0, "model": "a"}\n{"seed": 1, "mo')
    assert read_rows(str(p)) == [{"seed": 0, "model": "a"}]


@pytest.mark.slow  # ~1 min on 2 shared cores
def test_fmd_chunks_append_skip_and_refuse(tmp_path, tiny_idx, load_experiment, capsys):
    mod = load_experiment("fmd")
    out = tmp_path / "out"
    common = ["--config", "fashion", "--out", str(out), "--workroot", str(tmp_path / "runs"), "--data-dir",
              str(tiny_idx), "--seeds", "1", "--base-epochs", "1", "--no-progress",
              "--variants", "FMD last layer, 1 Newton step", "fine-tune last layer (same pairs)"]
    jsonl = out / "results_fashion.jsonl"
    assert mod.main([*common, "--budget-minutes", "0"]) == 0  # nothing started, no base trained
    assert not jsonl.exists() and not (tmp_path / "runs").exists()
    assert "3 cells left" in capsys.readouterr().out

    assert mod.main(common) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(r["seed"], r["model"]) for r in rows] == [
        (0, "biased model"), (0, "FMD last layer, 1 Newton step"), (0, "fine-tune last layer (same pairs)")]
    base, edit, tuned = rows
    assert base["pairs"] == 100 and base["eval_pairs"] == 9 * 100 and base["conflicting_train"] == 10
    assert edit["B_base"] == base["B"] and edit["block"] == ["out"] and edit["seconds"] > 0
    assert tuned["steps"] >= 0 and isinstance(edit["criterion"], bool)
    md = (out / "results_fashion.md").read_text()
    assert "600 bias-conflicting" in md and "| FMD last layer, 1 Newton step | 1 |" in md and "--config fashion" in md
    capsys.readouterr()

    assert mod.main(common) == 0  # every finished cell skipped
    assert "3 cells already" in capsys.readouterr().out and len(jsonl.read_text().splitlines()) == 3
    with pytest.raises(SystemExit, match="other settings"):
        mod.main([*common, "--base-epochs", "2"])
