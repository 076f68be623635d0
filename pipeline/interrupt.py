"""Ctrl-C during extraction: nothing of an interrupted clip is committed, and the interrupt is re-raised.

A SIGINT that raises KeyboardInterrupt inside a native callback (openSMILE calls back into Python) is
swallowed there: the extractor returns short or empty rows as if nothing happened, and the run would commit
them ("too short") and exit 0. So while a Worker runs, the first SIGINT only sets a flag; the Worker checks
it before every commit and every failure record and raises `Interrupted` instead. Rows computed after the
signal are never written; a second SIGINT raises at once (the flag stays set, so nothing is committed either).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Interrupted(KeyboardInterrupt):
    """The run was interrupted (SIGINT); clips committed before the signal are complete and exact."""


class InterruptFlag:
    def __init__(self) -> None:
        self.hit = False

    def check(self) -> None:
        if self.hit:
            raise Interrupted("interrupted (SIGINT): nothing of the clips in progress was committed")


@contextmanager
def deferred_sigint() -> Iterator[InterruptFlag]:
    """Defer SIGINT to the next `flag.check()`. Only the main thread can take signals (Ray actors do not
    run there); elsewhere the flag simply never fires and signals behave as before."""
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.hit:                      # asked twice: stop now (the flag keeps commits off anyway)
            raise Interrupted("interrupted twice (SIGINT)")
        flag.hit = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
        flag.check()                      # a signal during the final flush still ends as an interrupt
    finally:
        signal.signal(signal.SIGINT, previous)
