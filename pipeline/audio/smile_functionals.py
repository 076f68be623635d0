"""A feature set's whole-clip functionals in two openSMILE passes, so a long clip's memory is its numbers only.

In one pass, openSMILE keeps every 10 ms frame of each level its whole-clip functionals read, with per-frame
time metadata and at several stages: about 0.9 GB per hour of audio (benchmarks/smile_memory.py). Here:

1. the frame-level part of the config runs over the signal as LLD extraction does (ring-buffer levels, flat
   in clip length); an external sink on each level the functionals read spills its frames to a file;
2. the functionals part (every component from those levels to the output level, as the config defines them)
   runs over those frames, fed through external sources (which store values only): each whole-clip
   functional in its own openSMILE instance, then the components that combine their rows.

Both passes are openSMILE's own components with the feature set's own settings, on the same float32 frames,
so the row is the one-pass row (tests/test_smile_functionals.py compares them bit for bit with `process_signal`).
"""
from __future__ import annotations

import ctypes
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.audio import smile_config

FUNCTIONALS_TYPE = "cFunctionals"
SINK_PREFIX = "emocache_level"
SOURCE_PREFIX = "emocache_source"
MARKER = "emocache_eoi_marker"
OUTPUT_SINK = "emocache_output"
WRITE_BLOCK_FRAMES = 4096      # frames handed to an external source per call (the result does not depend on it)


@dataclass
class Split:
    """Where a config divides: `levels` (read by the functionals part, written by the frame-level part); the
    whole-clip functionals reading them, and the components that combine the functionals' rows (selectors,
    vector operations, the output concat), each in the config's order."""

    levels: list[str]
    functionals: list[smile_config.Component]
    downstream: list[smile_config.Component]


def split(config_path: Path, sink_level: str) -> Split | None:
    """The split of the config feeding `sink_level`; None when no whole-clip functionals feed it."""
    comps = smile_config.parse(Path(config_path))
    writer_of = {c.writes: c for c in comps.values() if c.writes}
    needed: dict[str, smile_config.Component] = {}
    todo = [sink_level]
    while todo:                                   # every component the output level depends on
        c = writer_of.get(todo.pop())
        if c is not None and c.name not in needed:
            needed[c.name] = c
            todo.extend(c.reads)
    part: dict[str, smile_config.Component] = {}
    changed = True
    while changed:                                # the functionals and everything computed only from them
        changed = False
        written = {c.writes for c in part.values()}
        for c in needed.values():
            if c.name not in part and (c.type == FUNCTIONALS_TYPE or (c.reads and set(c.reads) <= written)):
                part[c.name] = c
                changed = True
    if not any(c.type == FUNCTIONALS_TYPE for c in part.values()) or sink_level not in {c.writes for c in part.values()}:
        return None
    order = [c for c in comps.values() if c.name in part]
    functionals = [c for c in order if c.type == FUNCTIONALS_TYPE]
    downstream = [c for c in order if c.type != FUNCTIONALS_TYPE]
    if any(set(c.reads) - {d.writes for d in order} for c in downstream):
        return None                               # a combining step that reads frames too: not split here
    levels = list(dict.fromkeys(lv for c in functionals for lv in c.reads))
    return Split(levels, functionals, downstream)


def sinks_include(path: Path, levels: list[str]) -> Path:
    """The pass-1 sink include: an external sink per level the functionals read, and the marker (below)."""
    lines = ["// emocache (pipeline/audio/smile_functionals.py): the frame-level pass's sinks and its EOI marker",
             "[componentInstances:cComponentManager]"]
    lines += [f"instance[{SINK_PREFIX}{i}].type=cExternalSink" for i in range(len(levels))]
    lines += [f"instance[{MARKER}_copy].type=cVectorConcat", f"instance[{MARKER}_functional].type=cFunctionals",
              f"instance[{MARKER}].type=cExternalSink"]
    for i, level in enumerate(levels):
        lines += [f"[{SINK_PREFIX}{i}:cExternalSink]", f"reader.dmLevel = {level}", "blocksize = 1"]
    # The marker: a whole-input functional over a copy of the (windowed, 2 rows/s) output level, declared after
    # the sinks, so its one row reaches Python in the first end-of-input tick, after the sinks' frames of it.
    lines += [f"[{MARKER}_copy:cVectorConcat]", "reader.dmLevel = \\cm[sinkLevel{func}:the feature set's output level]",
              f"writer.dmLevel = {MARKER}_in", "writer.levelconf.growDyn = 1", "writer.levelconf.isRb = 0",
              "writer.levelconf.nT = 100", "includeSingleElementFields = 1",
              f"[{MARKER}_functional:cFunctionals]", f"reader.dmLevel = {MARKER}_in", f"writer.dmLevel = {MARKER}_out",
              "frameMode = full", "frameSize = 0", "frameStep = 0", "functionalsEnabled = Means", "Means.amean = 1",
              *(f"Means.{k} = 0" for k in ("posamean", "absmean", "qmean", "nzamean", "nzabsmean", "nzqmean",
                                           "nzgmean", "nnz")),
              f"[{MARKER}:cExternalSink]", f"reader.dmLevel = {MARKER}_out", "blocksize = 1"]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Level:
    """One level's frames from pass 1, spilled to `path` as float32 rows of `n` values; `seen` of them are
    what openSMILE's whole-clip functionals read in one pass (set by `Spills.mark`). A functional's output
    rows are held in `rows` instead (a row or two)."""

    name: str
    path: Path | None = None
    rows: np.ndarray | None = None
    n: int = 0
    frames: int = 0
    seen: int | None = None
    period: float = 0.0
    fields: list[tuple[str, int]] | None = None


class Spill:
    """An external sink callback appending each frame to the level's file (nothing of the clip kept in memory)."""

    def __init__(self, level: Level) -> None:
        self.level = level
        self.file = open(level.path, "wb")

    def add(self, data: np.ndarray, meta) -> None:
        if self.level.frames == 0:
            self.level.n = data.shape[1]
            self.level.period = meta.period
        self.file.write(np.ascontiguousarray(data, dtype=np.float32).tobytes())
        self.level.frames += data.shape[0]

    def close(self) -> None:
        self.file.close()


class Spills:
    """Pass 1's sinks (component name -> callback) and the marker that fixes how many frames of each level
    the functionals see.

    Why a marker: openSMILE computes whole-clip functionals in the first tick after it sets end-of-input, from
    the frames present then; frames that components flush later (a smoother's last frame, ...) are stored and
    output as LLDs but never reach the functionals. In that tick each sink (blocksize 1) takes the frame its
    level got before the functionals ran, and the marker's row comes right after: the counts at the marker are
    the frames the one-pass functionals read (tests/test_smile_functionals.py checks the rows bit for bit)."""

    def __init__(self, levels: list[Level]) -> None:
        self.levels = levels
        self.spills = [Spill(lv) for lv in levels]

    def callbacks(self) -> dict:
        out = {f"{SINK_PREFIX}{i}": sp.add for i, sp in enumerate(self.spills)}
        out[MARKER] = self.mark
        return out

    def mark(self, data: np.ndarray, meta) -> None:
        for lv in self.levels:
            if lv.seen is None:           # the first end of input only (later ones repeat the functionals)
                lv.seen = lv.frames

    def close(self) -> None:
        for sp in self.spills:
            sp.close()


def fields_of(names: list[str]) -> list[tuple[str, int]]:
    """Element names as a sink reports them ('mfcc_sma3[1]', ...) -> (field, size) pairs, arrays folded back."""
    out: list[tuple[str, int]] = []
    for name in names:
        base = name.split("[", 1)[0] if name.endswith("]") else name
        if out and name.endswith("]") and out[-1][0] == base:
            out[-1] = (base, out[-1][1] + 1)
        else:
            out.append((base, 1))
    return out


def engine_config(path: Path, inputs: list[Level], components: list[smile_config.Component], sink_level: str,
                  options: dict) -> Path:
    """A second-pass config: an external source per input level (values only, whole, sized for the clip),
    the given components' own sections (their option includes resolved from `options`: the file takes no
    options), and an external sink on `sink_level`."""
    lines = ["// emocache (pipeline/audio/smile_functionals.py): a functionals pass",
             "[componentInstances:cComponentManager]", "instance[dataMemory].type=cDataMemory"]
    lines += [f"instance[{SOURCE_PREFIX}{i}].type=cExternalSource" for i in range(len(inputs))]
    lines += [f"instance[{c.name}].type={c.type}" for c in components]
    lines += [f"instance[{OUTPUT_SINK}].type=cExternalSink"]
    for i, lv in enumerate(inputs):
        lines += [f"[{SOURCE_PREFIX}{i}:cExternalSource]", f"writer.dmLevel = {lv.name}",
                  "writer.levelconf.growDyn = 1", "writer.levelconf.isRb = 0",
                  f"writer.levelconf.nT = {max(1, lv.seen or 0)}", f"period = {lv.period!r}",
                  f"blocksize = {WRITE_BLOCK_FRAMES}"]
        for j, (name, size) in enumerate(lv.fields or []):
            lines += [f"fieldNames[{j}] = {name}", f"fieldSizes[{j}] = {size}"]
    for c in components:
        lines += [f"[{c.name}:{c.type}]", *smile_config.section_body(c.lines, options)]
    lines += [f"[{OUTPUT_SINK}:cExternalSink]", f"reader.dmLevel = {sink_level}", "blocksize = 1"]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_functionals(part: Split, levels: list[Level], sink_level: str, options: dict, tmp: Path,
                    log: dict) -> Level:
    """The second pass: each whole-clip functional in its own openSMILE instance (so only one holds its
    input's whole-clip copy at a time: a reader's copy carries ~80 bytes of time data per frame), then the
    combining components over their rows. Returns the `sink_level` rows."""
    by_name = {lv.name: lv for lv in levels}
    rows: dict[str, Level] = {}
    for k, comp in enumerate(part.functionals):
        conf = engine_config(tmp / f"functional{k}.conf", [by_name[n] for n in comp.reads], [comp], comp.writes,
                             options)
        rows[comp.writes] = _run(conf, [by_name[n] for n in comp.reads], comp.writes, log)
    if not part.downstream:
        return rows[sink_level]
    inputs = [rows[n] for n in dict.fromkeys(n for c in part.downstream for n in c.reads) if n in rows]
    conf = engine_config(tmp / "combine.conf", inputs, part.downstream, sink_level, options)
    return _run(conf, inputs, sink_level, log)


def _run(conf: Path, inputs: list[Level], out_level: str, log: dict) -> Level:
    """Run one second-pass instance over `inputs`; its sink's rows, with their field names."""
    from opensmile.core.lib import OpenSMILE

    engine = OpenSMILE()
    out: list[np.ndarray] = []
    period = [0.0]

    def add(data: np.ndarray, meta) -> None:
        out.append(np.array(data, dtype=np.float32))
        period[0] = meta.period

    try:
        engine.initialize(config_file=str(conf), options={}, **log)
        engine.external_sink_set_callback_ex(OUTPUT_SINK, add)
        for i, lv in enumerate(inputs):
            write_level(engine, f"{SOURCE_PREFIX}{i}", lv)
        engine.run()          # every frame is in and end of input set: this computes the rows and returns
        names = [engine.external_sink_get_element_name(OUTPUT_SINK, k)
                 for k in range(engine.external_sink_get_num_elements(OUTPUT_SINK))]
    finally:
        engine.free()
    data = np.concatenate(out) if out else np.zeros((0, len(names)), np.float32)
    return Level(out_level, rows=data, n=len(names), frames=len(data), seen=len(data), period=period[0],
                 fields=fields_of(names))


def write_level(engine, source: str, level: Level) -> None:
    """Hand a level's first `seen` frames to its external source, a block at a time (the opensmile wrapper's
    external_source_write_data takes one frame only: it passes the element count as the frame count)."""
    from opensmile.core.lib import smileapi

    def write(block: np.ndarray, frames: int) -> None:
        block = np.ascontiguousarray(block, dtype=np.float32)
        ptr = block.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        engine._check_smile_result(smileapi.smile_extsource_write_data(
            engine._smileobj, source.encode("ascii"), ptr, frames))

    left = level.seen or 0
    if level.rows is not None:
        for f0 in range(0, left, WRITE_BLOCK_FRAMES):
            block = level.rows[f0:min(left, f0 + WRITE_BLOCK_FRAMES)]
            write(block, len(block))
    else:
        with open(level.path, "rb") as f:
            while left > 0:
                frames = min(WRITE_BLOCK_FRAMES, left)
                block = np.fromfile(f, np.float32, frames * level.n)
                if block.size != frames * level.n:
                    raise RuntimeError(f"openSMILE level {level.name}: spilled frames missing ({level.path})")
                write(block, frames)
                left -= frames
    engine.external_source_set_eoi(source)


def temp_dir():
    return tempfile.TemporaryDirectory(prefix="emocache-smile-")
