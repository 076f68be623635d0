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


# ---------------------------------------------------------------- what ffmpeg opens (strace)
class FfmpegTrace:
    """Every file an ffmpeg process started by pipeline.media opened or tried to open (strace -f)."""

    SYSTEM = ("/lib", "/usr/", "/etc/ld.so", "/proc/", "/sys/", "/dev/")

    def __init__(self, log_dir: Path, real: str):
        self.log_dir = log_dir
        self.real = real          # the ffmpeg binary being traced

    def _paths(self, syscalls: tuple[str, ...]) -> list[str]:
        import re

        out = []
        pat = re.compile(r"\b(" + "|".join(syscalls) + r")\((?:AT_FDCWD, )?\"((?:\\x[0-9a-f]{2})*)\"")
        for log in sorted(self.log_dir.glob("trace.*")):
            for line in log.read_text(errors="replace").splitlines():
                m = pat.search(line)
                if m:
                    out.append(os.fsdecode(bytes.fromhex(m[2].replace("\\x", ""))))
        return out

    def opened(self) -> list[str]:
        """Non-system paths passed to open/openat/creat (successful or not)."""
        import re

        shared_lib = re.compile(r"\.so(\.\d+)*$")   # the dynamic loader's search (LD_LIBRARY_PATH entries)
        return [p for p in self._paths(("open", "openat", "openat2", "creat"))
                if not p.startswith(self.SYSTEM) and not shared_lib.search(p)]

    def executed(self) -> list[str]:
        return self._paths(("execve",))

    def calls(self) -> int:
        return len(list(self.log_dir.glob("trace.*")))

    def reset(self) -> None:
        for log in self.log_dir.glob("trace.*"):
            log.unlink()


def start_ffmpeg_trace(log_dir: Path):
    """(FfmpegTrace with .wrapper to use as pipeline.media's ffmpeg, None) or (None, why strace cannot be used)."""
    import shutil
    import subprocess

    from pipeline import media

    strace = shutil.which("strace")
    if not strace:
        return None, "strace not installed: cannot trace what ffmpeg opens"
    probe = subprocess.run([strace, "-qq", "-o", os.devnull, "true"], capture_output=True, stdin=subprocess.DEVNULL)
    if probe.returncode != 0:
        return None, f"strace cannot trace here (ptrace not permitted?): {probe.stderr.decode()[-200:]}"
    log_dir.mkdir(parents=True, exist_ok=True)
    real = media.ffmpeg_exe()
    wrapper = log_dir / "ffmpeg-traced"
    wrapper.write_text("#!/bin/sh\n"
                       f"exec '{strace}' -f -qq -xx -s 4096 -e trace=open,openat,openat2,creat,execve "
                       f"-o '{log_dir}/trace.'$$ '{real}' \"$@\"\n")
    wrapper.chmod(0o755)
    trace = FfmpegTrace(log_dir, real)
    trace.wrapper = str(wrapper)
    return trace, None


@pytest.fixture
def ffmpeg_trace(tmp_path, monkeypatch):
    """Route pipeline.media's ffmpeg through `strace -f`; skipped (with the reason) where strace cannot trace."""
    from pipeline import media

    trace, why = start_ffmpeg_trace(tmp_path / "ffmpeg_traces")
    if trace is None:
        pytest.skip(why)
    monkeypatch.setattr(media, "ffmpeg_exe", lambda: trace.wrapper)
    return trace


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 (a real HTTP endpoint, like MinIO); stopped afterwards."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def speechlike(seconds: float, seed: int = 0, sample_rate: int = 16000):
    """A gliding, amplitude-modulated tone plus noise: voiced-looking frames that openSMILE measures."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * (150 + 50 * np.sin(t)) * t) * (1 + np.sin(3 * t)) / 2
    return (tone + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
