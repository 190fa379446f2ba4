"""The chunked controlled-artifact experiment: cells appended to a .jsonl, skipped when present, a budget that stops
cleanly (the fashion config on a tiny IDX folder, 1 epoch each)."""
import json

import pytest



@pytest.fixture
def tiny_idx(idx_folder):
    """40 offline MNIST digits per class as the four IDX files (320 train, 80 test)."""
    return idx_folder(40, 320)


@pytest.mark.slow  # ~60 s on 2 shared cores (4 base / correction runs of 1 epoch on 320 digits)
def test_chunks_append_skip_and_stop_on_budget(tmp_path, tiny_idx, load_experiment, capsys):
    mod = load_experiment("clarc_controlled")
    out = tmp_path / "out"
    common = ["--config", "fashion", "--out", str(out), "--workroot", str(tmp_path / "runs"), "--data-dir",
              str(tiny_idx), "--seeds", "1", "--base-epochs", "1", "--epochs", "1", "--only", "RR-ClArC,P-ClArC",
              "--no-progress"]
    jsonl = out / "results_fashion.jsonl"
    # budget 0: nothing started, no base trained, exit 0
    assert mod.main([*common, "--budget-minutes", "0"]) == 0
    assert not jsonl.exists() and not (tmp_path / "runs").exists()
    assert "3 cells left" in capsys.readouterr().out

    assert mod.main(common) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(r["seed"], r["model"]) for r in rows] == [(0, "uncorrected"), (0, "P-ClArC"), (0, "RR-ClArC")]
    assert all(0 <= r["clean"] <= 1 and r["tcav_sens"] >= 0 for r in rows)
    md = (out / "results_fashion.md").read_text()
    assert "Fashion-MNIST" in md and "| RR-ClArC | 1 |" in md and "--config fashion" in md
    assert len(json.loads((out / "results_fashion.json").read_text())["runs"]) == 3
    capsys.readouterr()

    # a second call skips every finished cell; a second seed then adds its cells under the same settings
    assert mod.main(common) == 0
    assert "3 cells already" in capsys.readouterr().out and len(jsonl.read_text().splitlines()) == 3
    two = [*common, "--seeds", "2", "--only", "P-ClArC"]
    assert mod.main(two) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(r["seed"], r["model"]) for r in rows[3:]] == [(1, "uncorrected"), (1, "P-ClArC")]
    assert "| P-ClArC | 2 |" in (out / "results_fashion.md").read_text() and " ± " in (out / "results_fashion.md").read_text()

    # other settings on the same file are refused, not mixed in
    with pytest.raises(SystemExit, match="other settings"):
        mod.main([*common, "--epochs", "2"])
