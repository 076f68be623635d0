"""How many clips each extract_batch call gets: sized for the extractor, not for the decoder.

`runtime.batch_clips` bounds how many clips are decoded (audio, frames) and held in memory at once.
Extractors that decode nothing (text) are not held to it: they get `runtime.decode_free_batch_clips`
clips per call, so their own batching (text: length buckets of `text.batch_size`) sorts and packs
across many clips, as sentence-transformers' `encode` does over its whole input.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import RuntimeConfig
    from pipeline.extractors.base import Extractor

DECODED_INPUTS = frozenset({"audio", "frames"})   # inputs that cost an ffmpeg decode and memory per clip


def decode_free_keys(extractors: dict[str, "Extractor"]) -> set[str]:
    """Extractors that need no decoded media and take part in no dependency (so they can run in a pass
    of their own, before the others, without either waiting on the other's rows)."""
    depended_on = {d for e in extractors.values() for d in e.depends_on}
    return {k for k, e in extractors.items()
            if not (e.needs & DECODED_INPUTS) and not e.depends_on and k not in depended_on}


def plan_passes(clips: list, extractors: dict[str, "Extractor"], runtime: "RuntimeConfig") -> list[tuple[list, int]]:
    """[(clips, clips per call), ...]: a decode-free pass (large calls) then a decoding pass
    (`batch_clips` per call). Each clip appears in a pass only with that pass's missing extractors."""
    free = decode_free_keys(extractors)
    passes = []
    for keep, size in ((lambda k: k in free, runtime.decode_free_batch_clips),
                       (lambda k: k not in free, runtime.batch_clips)):
        recs = [replace(r, missing=[k for k in r.missing if keep(k)]) for r in clips]
        recs = [r for r in recs if r.missing]
        if recs:
            passes.append((recs, max(1, size)))
    return passes


def chunks(items: list, size: int) -> list[list]:
    return [items[i: i + size] for i in range(0, len(items), size)]
