"""Prefetch: the next minibatches are read on a thread while the caller trains on the current one. Used for
splits larger than memory (heads.data.HeadData.stream, chosen by size); reads release the GIL (preadv, zarr's
I/O), so reading overlaps compute."""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()


def prefetched(items: Iterable[T], read: Callable[[T], R], depth: int) -> Iterator[R]:
    """read(item) for every item, in order, with up to `depth` results read ahead on one thread. An error in
    read is raised in the caller at that item; closing the iterator early stops the thread."""
    if depth <= 0:
        yield from (read(i) for i in items)
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((read(item), None))
        except BaseException as e:   # handed to the consumer, raised there
            q.put((None, e))
            return
        q.put((_DONE, None))

    t = threading.Thread(target=work, name="emocache-prefetch", daemon=True)
    t.start()
    try:
        while True:
            value, err = q.get()
            if err is not None:
                raise err
            if value is _DONE:
                return
            yield value
    finally:
        stop.set()
        while t.is_alive():   # unblock a worker waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.01)
