"""Minibatches streamed from the cache with prefetch: the next batches are read on a thread while the caller
trains on the current one. For splits larger than memory (heads/data.py picks it by size); reads release the
GIL (preadv, zarr's I/O), so reading overlaps compute."""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, Optional, TypeVar

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


def stream_padded(cache, keys: list[str], clip_ids: list[str], batches: Iterable[list[int]],
                  max_rows: Optional[int], pad_to: dict[str, int], dims: dict[str, int], depth: int,
                  name: str = "features"):
    """{key: Padded} per batch of positions into clip_ids, each padded to pad_to[key] rows (what slicing the
    in-memory split gives), read ahead `depth` batches."""
    def read(batch: list[int]):
        ids = [clip_ids[i] for i in batch]
        return cache.read(keys, ids, max_rows=max_rows, name=name, pad_to=pad_to, dims=dims, require_any=False)

    return prefetched(batches, read, depth)
