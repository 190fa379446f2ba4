"""The chunked EnD experiment (Biased Fashion-MNIST config on a tiny IDX folder): the α/β search runs first on the
validation set only, the EnD cells use its best, cells are appended / skipped / refused like the other chunked
experiments."""
import json

import numpy as np
import pytest


@pytest.fixture
def tiny(idx_folder, load_experiment, monkeypatch):
    folder = idx_folder(40, 320)  # 320 train, 80 test
    mod = load_experiment("end_biased_mnist")
    cfg = {**mod.CONFIGS["fashion"], "data_dir": str(folder), "validation": 200, "rhos": [0.99], "seeds": [0],
           "epochs": 1, "batch_size": 64, "channels": [4, 8, 16, 32],
           "search": {"rhos": [0.99], "seed": 0, "grid": [[0.1, 0.1], [5.0, 1.0]]}}
    monkeypatch.setitem(mod.CONFIGS, "fashion", cfg)
    return mod


@pytest.mark.slow  # ~40 s on 2 shared cores (4 runs of 1 epoch on 320 images)
def test_search_then_cells_append_skip_and_refuse(tmp_path, tiny, capsys):
    mod = tiny
    out = tmp_path / "out"
    common = ["--config", "fashion", "--out", str(out), "--workroot", str(tmp_path / "runs"), "--no-progress"]
    jsonl = out / "results_fashion.jsonl"
    assert mod.main([*common, "--budget-minutes", "0"]) == 0  # over before the first cell: nothing run
    assert not jsonl.exists() and "4 cells left" in capsys.readouterr().out

    assert mod.main(common) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["model"] for r in rows] == ["search rho=0.99 alpha=0.1 beta=0.1", "search rho=0.99 alpha=5.0 beta=1.0",
                                          "rho=0.99 Vanilla", "rho=0.99 EnD"]
    best = max(rows[:2], key=lambda r: r["val"])  # chosen on the validation set, never on a test set
    assert rows[3]["hparams"] == best["hparams"] and rows[2]["hparams"] == {}
    assert all(0 <= r[k] <= 1 for r in rows for k in ("val", "biased", "unbiased", "conflicting"))
    md = (out / "results_fashion.md").read_text()
    assert "foreground `grey`" in md and "| 0.99 | EnD | 1 |" in md and "α, β search" in md
    capsys.readouterr()

    assert mod.main(common) == 0  # everything there: nothing run again
    assert "all 4 cells" in capsys.readouterr().out and len(jsonl.read_text().splitlines()) == 4
    with pytest.raises(SystemExit, match="other settings"):
        mod.main([*common, "--epochs", "2"])


def test_paired_gain_against_the_seed_spread(load_experiment):
    mod = load_experiment("end_biased_mnist")
    cfg = {"rhos": [0.99, 0.997]}
    van, end = [0.10, 0.12, 0.14], [0.20, 0.19, 0.24]  # unbiased accuracies of seeds 0..2 at ρ 0.99
    rows = [{"rho": 0.99, "seed": s, "method": m, "unbiased": a, "conflicting": a / 2}
            for m, accs in (("vanilla", van), ("end", end)) for s, a in enumerate(accs)]
    rows.append({"rho": 0.997, "seed": 0, "method": "end", "unbiased": 0.3, "conflicting": 0.2})  # no Vanilla pair
    out = mod._paired(cfg, rows)
    assert [(r["ρ"], r["test"]) for r in out] == [("0.99", "unbiased"), ("0.99", "bias-conflicting")]
    gain = 100 * (np.array(end) - np.array(van))  # +10, +7, +10
    spread = 100 * max(np.std(van, ddof=1), np.std(end, ddof=1))  # 2.6 (EnD's)
    assert out[0]["EnD − Vanilla"] == f"{gain.mean():+.1f} ± {gain.std(ddof=1):.1f}"
    assert out[0]["per seed"] == "+10.0 / +7.0 / +10.0" and out[0]["seed spread"] == f"{spread:.1f}"
    assert out[0]["beyond the spread"] == "yes"
    # Vanilla 8.5 points higher: gains +1.5 / -1.5 / +1.5, a mean of 0.5 inside the spread of 2.6
    rows = [dict(r, unbiased=r["unbiased"] + (0.0 if r["method"] == "end" else 0.085)) for r in rows]
    assert mod._paired(cfg, rows)[0]["beyond the spread"] == "no"
