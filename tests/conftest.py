import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# CI lays shared/ beside the clone (../shared); sessions have it at /work/shared.
SHARED_DATA = next((p for p in [REPO.parent / "shared" / "data", Path("/work/shared/data")] if p.exists()),
                   REPO.parent / "shared" / "data")

# The real YOLOv5 checkpoint (AGPL-3.0: read from shared/, never copied into the repo).
SHARED_WEIGHTS = next((p for p in [REPO.parent / "shared" / "weights", Path("/work/shared/weights")] if p.exists()),
                      REPO.parent / "shared" / "weights")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"shared test data not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    """../shared/weights with the real yolov5n.pt; tests needing it skip (reason printed with -rs) elsewhere."""
    if not (SHARED_WEIGHTS / "yolov5n.pt").exists():
        pytest.skip(f"real YOLOv5 weights not found: {SHARED_WEIGHTS / 'yolov5n.pt'} (expected ../shared/weights "
                    f"beside the repo)")
    return SHARED_WEIGHTS


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def make_config(tmp_path):
    """Config with the store and weights under tmp_path; pass overrides as nested dicts."""
    from emocache.config import Config, _deep_merge

    def _make(**overrides):
        raw = {"base_dir": str(REPO),
               "store": {"dir": str(tmp_path / "cache"), "tables_dir": str(tmp_path / "cache" / "datasets")},
               "weights": {"dir": str(tmp_path / "weights")}}
        return Config.model_validate(_deep_merge(raw, overrides))

    return _make
