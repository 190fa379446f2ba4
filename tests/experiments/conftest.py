"""Load an experiment's ``main.py`` as a module (each folder has its own ``configs.py``)."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "experiments"


def _load(name: str):
    folder = ROOT / name
    sys.path.insert(0, str(folder))
    sys.modules.pop("configs", None)
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_main", folder / "main.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("configs", None)


@pytest.fixture
def load_experiment():
    return _load
