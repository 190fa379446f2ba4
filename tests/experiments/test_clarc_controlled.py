"""The controlled-artifact correction experiment runs end to end on a tiny budget."""
import importlib.util
import json
import sys
from pathlib import Path

EXP = Path(__file__).resolve().parents[2] / "experiments" / "clarc_controlled"


def _load_main():
    sys.path.insert(0, str(EXP))
    sys.modules.pop("configs", None)  # each experiment folder has its own configs.py
    try:
        spec = importlib.util.spec_from_file_location("clarc_controlled_main", EXP / "main.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(EXP))
        sys.modules.pop("configs", None)


def test_offline_mode_writes_its_table(tmp_path):
    mod = _load_main()
    argv = ["--config", "offline", "--out", str(tmp_path), "--workroot", str(tmp_path / "runs"), "--base-epochs", "1",
            "--epochs", "1", "--only", "RR-ClArC,P-ClArC", "--no-progress"]
    assert mod.main(argv) == 0
    saved = json.loads((tmp_path / "results_offline.json").read_text())
    assert [r["model"] for r in saved["runs"]] == ["uncorrected", "P-ClArC", "RR-ClArC"]
    for r in saved["runs"]:
        assert 0.0 <= r["clean"] <= 1.0 and 0.0 <= r["tcav"] <= 1.0 and r["tcav_sens"] >= 0
    md = (tmp_path / "results_offline.md").read_text()
    assert "| uncorrected |" in md and "| RR-ClArC |" in md and "| P-ClArC |" in md
