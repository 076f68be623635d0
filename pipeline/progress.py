"""Progress bars on a terminal (erased when done); plain periodic log lines elsewhere (CI, DVC, files) when
logging is verbose (`-v`: emocache.quiet.setup_logging calls set_log_lines)."""
from __future__ import annotations

import contextlib
import logging
import sys
import time

log = logging.getLogger("emocache")
_LOG_LINES = True


def set_log_lines(enabled: bool) -> None:
    """Whether a progress off a terminal writes its periodic log lines (quiet runs: no)."""
    global _LOG_LINES
    _LOG_LINES = enabled


class _LogProgress:
    """tqdm-like object that logs about every 10% (or every 30 s) instead of redrawing a bar."""

    def __init__(self, total: int, desc: str, unit: str):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.t0 = self.last = time.perf_counter()
        self.step = max(1, total // 10)
        self.next_mark = self.step

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.perf_counter()
        if self.n >= self.next_mark or now - self.last > 30 or self.n == self.total:
            rate = self.n / max(now - self.t0, 1e-9)
            log.info("%s: %d/%d %s (%.2f %s/s)", self.desc, self.n, self.total, self.unit, rate, self.unit)
            self.last = now
            while self.next_mark <= self.n:
                self.next_mark += self.step

    def set_postfix_str(self, s: str) -> None:
        pass


@contextlib.contextmanager
def progress(total: int, desc: str, unit: str = "it", enabled: bool = True):
    if not enabled or total == 0:
        yield _Null()
        return
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False) as bar:
            yield bar
    elif not _LOG_LINES:
        yield _Null()
    else:
        yield _LogProgress(total, desc, unit)


class _Null:
    def update(self, k: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass
