"""A long clip's decoded audio kept in a temp file and read a slice at a time, so its samples are never all in
memory (an hour of 16 kHz float32 is 230 MB; at 48 kHz in float64 before resampling, 1.4 GB).

`SpilledAudio` stands in for the (S,) array the audio extractors read: len(), shape, ndim, dtype and slices
`a[s0:s1]` (an ndarray read from the file). The extractors only ever slice (VGGish's frontend a chunk of
frames at a time, openSMILE a chunk of samples at a time), so their output is the same as from the array.
`np.asarray(a)` reads it all, for code that needs the whole clip. The file is removed when the object is
closed or collected; a killed process leaves it in the temp dir (prefix `emocache-audio-`).
"""
from __future__ import annotations

import os
import tempfile
import weakref

import numpy as np

SPILL_PREFIX = "emocache-audio-"


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class SpilledAudio:
    ndim = 1
    nbytes = 0      # resident bytes: none (the decode-ahead cap counts memory, not disk)

    def __init__(self, path: str, n: int, dtype=np.float32) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self._n = int(n)
        self._finalizer = weakref.finalize(self, remove_file, path)

    def __len__(self) -> int:
        return self._n

    @property
    def shape(self) -> tuple[int]:
        return (self._n,)

    @property
    def size(self) -> int:
        return self._n

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("SpilledAudio reads slices (a[s0:s1]), not single samples")
        start, stop, step = key.indices(self._n)
        if step != 1:
            raise ValueError("SpilledAudio reads contiguous slices only")
        count = max(0, stop - start)
        if count == 0:
            return np.zeros(0, self.dtype)
        with open(self.path, "rb") as f:
            f.seek(start * self.dtype.itemsize)
            out = np.fromfile(f, self.dtype, count)
        if len(out) != count:
            raise OSError(f"{self.path}: spilled audio is short ({len(out)} of {count} samples at {start})")
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[0:self._n]
        return out if dtype is None else out.astype(dtype, copy=False)

    def close(self) -> None:
        self._finalizer()

    def __repr__(self) -> str:
        return f"SpilledAudio({self._n} samples, {self.dtype}, {self.path})"


class SpillWriter:
    """Appends sample blocks to a new temp file; `finish()` gives the SpilledAudio, `discard()` removes it."""

    def __init__(self, dtype=np.float32) -> None:
        self.dtype = np.dtype(dtype)
        fd, self.path = tempfile.mkstemp(prefix=SPILL_PREFIX, suffix=".raw")
        self.file = os.fdopen(fd, "wb")
        self.n = 0

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype).reshape(-1)
        self.file.write(block.tobytes())
        self.n += len(block)

    def finish(self) -> SpilledAudio:
        self.file.close()
        return SpilledAudio(self.path, self.n, self.dtype)

    def discard(self) -> None:
        self.file.close()
        remove_file(self.path)

    def __enter__(self) -> "SpillWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()


def as_signal(audio) -> "np.ndarray | SpilledAudio":
    """What an extractor reads: a spilled clip as it is (sliced on demand), anything else as a float32 array."""
    return audio if isinstance(audio, SpilledAudio) else np.asarray(audio, dtype=np.float32)
