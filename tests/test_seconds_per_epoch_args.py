"""benchmarks/seconds_per_epoch.py: the --data option's parsing and one clear error line for bad values."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

spe = pytest.importorskip("seconds_per_epoch")


def test_parse_data():
    assert spe.parse_data("synthetic") is None
    assert spe.parse_data("folder:/tmp/some photos") == Path("/tmp/some photos")
    for bad in ("folder:", "foo", "folder/tmp", "csv:/x"):
        with pytest.raises(SystemExit, match="--data: expected 'synthetic' or 'folder:PATH'"):
            spe.parse_data(bad)


def test_bad_settings_for_a_folder(tmp_path):
    with pytest.raises(SystemExit, match="224-px images in batches of 64"):
        spe.main(["--data", f"folder:{tmp_path}", "--resolution", "64", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--workers: at least 1"):
        spe.main(["--data", f"folder:{tmp_path}", "--workers", "0", "--out", str(tmp_path)])


def test_corner_mask_matches_synthetic_batches():
    b = spe.make_batches(1, 8, 32, 10)[0]
    np.testing.assert_array_equal(spe.corner_mask(b["bias"], 32), b["mask"])
