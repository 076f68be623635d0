"""Filter what native libraries write straight to the stderr file descriptor: mediapipe's absl lines
("W0000 00:00:... inference_feedback_manager.cc:114] ...", "All log messages before absl::InitializeLog() ...")
and TF Lite's "INFO: Created TensorFlow Lite XNNPACK delegate". No environment variable turns those off in
mediapipe 0.10 and its graph threads write them at any time, so while installed fd 2 is a pipe whose lines go
to the real stderr unless they match NOISE. Python's own sys.stderr keeps writing to the real stderr directly
(a duplicate descriptor), so tracebacks, warnings and progress bars (isatty) are untouched.
"""
from __future__ import annotations

import atexit
import io
import os
import re
import sys
import threading
from typing import Optional

NOISE = re.compile(rb"^(?:[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\] "      # absl INFO/WARNING (not E/F)
                   rb"|INFO: Created TensorFlow Lite"
                   rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)")

_state: dict = {}


def install() -> None:
    """Idempotent. Does nothing unless sys.stderr is the process's fd 2 (not under a test runner's capture)."""
    if _state:
        return
    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):   # io.UnsupportedOperation is an OSError
        return
    try:
        real = os.dup(2)
    except OSError:
        return
    r, w = os.pipe()
    sys.stderr.flush()
    os.dup2(w, 2)
    os.close(w)
    py_err = io.TextIOWrapper(io.FileIO(os.dup(real), "w", closefd=True), encoding=sys.stderr.encoding or "utf-8",
                              errors="backslashreplace", line_buffering=True)
    old_stderr = sys.stderr
    sys.stderr = py_err
    t = threading.Thread(target=_pump, args=(r, real), name="native-stderr-filter", daemon=True)
    t.start()
    _state.update(real=real, thread=t, old=old_stderr)
    atexit.register(_at_exit)


def _at_exit() -> None:
    # fd 2 stays on the filter: mediapipe's threads still log while the interpreter shuts down
    try:
        sys.stderr.flush()
    except ValueError:
        pass


def _pump(r: int, real: int) -> None:
    buf = b""
    with os.fdopen(r, "rb", buffering=0) as f:
        while True:
            chunk = f.read(65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not NOISE.match(line):
                    os.write(real, line + b"\n")
    if buf and not NOISE.match(buf):
        os.write(real, buf)


def uninstall() -> None:
    """Put the real stderr back on fd 2 and forward what is still in the pipe."""
    if not _state:
        return
    real, t = _state["real"], _state["thread"]
    try:
        sys.stderr.flush()
    except ValueError:
        pass
    os.dup2(real, 2)            # closes the pipe's last write end: the pump sees EOF and ends
    t.join(timeout=5)
    sys.stderr = _state["old"]
    os.close(real)
    _state.clear()


def installed() -> Optional[bool]:
    return bool(_state)
