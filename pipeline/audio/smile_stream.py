"""openSMILE fed a long signal in chunks, with bounded memory and the same output as `Smile.process_signal`.

`process_signal` hands openSMILE the whole clip at once, after a float32 copy, an int16 copy and a bytes copy,
and its external-source config keeps the whole wave level inside openSMILE (a growing buffer): about 1 GB per
hour of 16 kHz audio. Here the same int16 samples (x * 32768, cast as opensmile does) are written chunk by
chunk into an external source whose wave level is a ring buffer (smile_input.conf.inc), while `run()` works
in a thread. openSMILE is a streaming engine: its frames and functionals do not depend on how the input
arrives, so the rows are those of `process_signal` (tests/test_egemaps.py compares them).

The feature set computes its whole-clip functionals in both modes, and the levels they read grow with the clip
(BufferMode.conf.inc). For LLD output those levels become ring buffers and the (unused) functionals read short
windows, so LLD extraction is flat in clip length but for its own rows. For functionals of a long clip the
frame-level work runs the same way and the functionals run in a second pass over the spilled frames
(smile_functionals.py): the same row, with openSMILE holding the frames' values only. A short clip takes one
pass with those levels whole, sized for the clip up front (not 1000 frames doubled: that overshoots and holds
old and new buffers while copying); one pass costs openSMILE ~2.5 KB per 10 ms frame, ~0.9 GB per hour.
"""
from __future__ import annotations

import math
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.audio import smile_functionals
from pipeline.spilled_audio import as_signal

INPUT_CONFIG = Path(__file__).with_name("smile_input.conf.inc")
LLD_BUFFERS_CONFIG = Path(__file__).with_name("smile_lld_buffers.conf.inc")
LLD_FUNCTIONALS_CONFIG = Path(__file__).with_name("smile_lld_functionals.conf.inc")
INT16_SCALE = 32768          # opensmile's own float -> 16-bit conversion (Smile._extract)
WRITE_RETRY_S = 0.001        # the ring buffer is full: wait this long for openSMILE to read from it
LLD_HOP_S = 0.010            # the frame step of the levels the GeMAPS family's functionals keep whole
WHOLE_LEVEL_MIN_FRAMES = 1000   # BufferMode.conf.inc's own start size; also the margin over the estimate


@dataclass
class SmileRows:
    """openSMILE's output rows: (T, F) float32 values and (T, 2) [start, end] seconds (first start 0, last end
    the signal's duration, as process_signal sets them)."""

    values: np.ndarray
    times: np.ndarray


class _Rows:
    """The sink callback's rows in one growing float32 array (not a small array per 10 ms frame)."""

    def __init__(self, n_features: int) -> None:
        self.values = np.empty((0, n_features), np.float32)
        self.times = np.empty((0, 2), np.float64)
        self.n = 0

    def add(self, data: np.ndarray, meta) -> None:
        if self.n == len(self.values):
            grow = max(1, len(self.values))
            self.values = np.concatenate([self.values, np.empty((grow, self.values.shape[1]), np.float32)])
            self.times = np.concatenate([self.times, np.empty((grow, 2), np.float64)])
        self.values[self.n] = data
        self.times[self.n] = (meta.time, meta.time + meta.lengthSec)
        self.n += 1


def process_chunked(smile, signal: np.ndarray, sample_rate: int, chunk_samples: int,
                    two_pass_samples: int | None = None) -> SmileRows:
    """Run `smile` (an opensmile.Smile) over mono float32 `signal`, writing `chunk_samples` at a time. A clip of
    at least `two_pass_samples` (None: never) computes whole-clip functionals in two passes (smile_functionals.py)."""
    signal = as_signal(signal)            # a spilled long clip stays on disk: only chunks are read
    if signal.ndim != 1:
        signal = signal.reshape(-1)
    chunk_samples = max(1, int(chunk_samples))
    lld = getattr(smile.feature_level, "name", smile.feature_level) == "LowLevelDescriptors"
    options = _input_options(smile, sample_rate, chunk_samples)
    if lld:
        rows = _lld_pass(smile, options, signal, chunk_samples, smile.num_features)
        return _finish_times(rows.values[:rows.n], rows.times[:rows.n], signal, sample_rate)
    part = None
    if two_pass_samples is not None and len(signal) >= max(1, two_pass_samples):
        part = smile_functionals.split(Path(smile.config_path), options["sinkLevel"])
    if part is not None:
        with smile_functionals.temp_dir() as tmp:
            values = _two_passes(smile, options, part, Path(tmp), signal, chunk_samples)
        if values is not None:      # whole-clip rows: their bounds are the clip's (_finish_times)
            return _finish_times(values, np.zeros((len(values), 2)), signal, sample_rate)
    # one pass with the functionals' levels kept whole: a short clip, or a config without whole-clip functionals
    with tempfile.TemporaryDirectory(prefix="emocache-smile-") as tmp:
        options["bufferModeConf"] = str(whole_level_buffers(Path(tmp) / "buffer_mode.conf.inc",
                                                            len(signal), sample_rate))
        engine = smile._smile(options=options)   # reads the config, includes and all, here
    rows = _Rows(smile.num_features)
    _feed(engine, {_opensmile_names().EXTERNAL_OUTPUT_COMPONENT: rows.add}, signal, chunk_samples)
    return _finish_times(rows.values[:rows.n], rows.times[:rows.n], signal, sample_rate)


def _input_options(smile, sample_rate: int, chunk_samples: int) -> dict:
    """opensmile's own option set (config file, sink level, buffer includes), with our ring-buffer source."""
    options = smile._options()
    options.update({"source": str(INPUT_CONFIG), "sampleRate": sample_rate, "nBits": 16,
                    "waveBufferSamples": 2 * chunk_samples})
    return options


def _opensmile_names():
    from opensmile.core.config import config

    return config


def _frame_level(smile, options: dict):
    """An engine for the frame-level work: the levels only whole-clip functionals read become ring buffers and
    those functionals read short windows (their output is not used), so openSMILE's memory is flat in clip
    length."""
    return smile._smile(options={**options, "bufferModeConf": str(LLD_BUFFERS_CONFIG),
                                 "frameModeFunctionalsConf": str(LLD_FUNCTIONALS_CONFIG)})


def _lld_pass(smile, options: dict, signal: np.ndarray, chunk_samples: int, n_features: int) -> "_Rows":
    rows = _Rows(n_features)
    _feed(_frame_level(smile, options), {_opensmile_names().EXTERNAL_OUTPUT_COMPONENT: rows.add}, signal,
          chunk_samples)
    return rows


def _two_passes(smile, options: dict, part, tmp: Path, signal, chunk_samples: int) -> np.ndarray | None:
    """The whole-clip functionals' rows from a frame-level pass spilled to `tmp` (smile_functionals.py); None
    when the clip gave the second pass nothing to read (no marker, or a level without frames)."""
    levels = [smile_functionals.Level(name, tmp / f"level{i}.f32") for i, name in enumerate(part.levels)]
    spills = smile_functionals.Spills(levels)
    options = {**options, "sink": str(smile_functionals.sinks_include(tmp / "sinks.conf.inc", part.levels))}
    try:
        engine = _feed(_frame_level(smile, options), spills.callbacks(), signal, chunk_samples, keep=True)
    finally:
        spills.close()
    try:
        for i, lv in enumerate(levels):
            name = f"{smile_functionals.SINK_PREFIX}{i}"
            lv.fields = smile_functionals.fields_of([engine.external_sink_get_element_name(name, k)
                                                     for k in range(engine.external_sink_get_num_elements(name))])
    finally:
        engine.free()
    if any(not lv.seen for lv in levels):
        return None
    out = smile_functionals.run_functionals(part, levels, options["sinkLevel"], options, tmp,
                                            {"loglevel": smile.loglevel, "log_file": smile.logfile,
                                             "debug": smile.verbose})
    return out.rows


def _feed(engine, callbacks: dict, signal: np.ndarray, chunk_samples: int, keep: bool = False):
    """Write `signal` into the engine's ring-buffer source while it runs in a thread, collecting its sinks'
    frames through `callbacks` (sink component -> callback). The engine is freed unless `keep`."""
    for name, cb in callbacks.items():
        engine.external_sink_set_callback_ex(name, cb)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            engine.run()
        except BaseException as e:    # re-raised in the caller's thread
            failure.append(e)

    runner = threading.Thread(target=run, name="opensmile", daemon=True)
    runner.start()
    source = _opensmile_names().EXTERNAL_SOURCE_COMPONENT
    written = 0
    try:
        for s0 in range(0, len(signal), chunk_samples):
            block = np.array(signal[s0:s0 + chunk_samples], dtype=np.float32)
            block *= INT16_SCALE
            data = block.astype(np.int16).tobytes()
            while not engine.external_audio_source_write_data(source, data):
                if not runner.is_alive():
                    break
                time.sleep(WRITE_RETRY_S)
            else:
                written = s0 + len(block)
                continue
            break                     # openSMILE stopped before taking everything
        engine.external_audio_source_set_eoi(source)
        runner.join()
        if failure:
            raise failure[0]
        if written < len(signal):
            raise RuntimeError(f"openSMILE stopped after {written} of {len(signal)} samples")
    except BaseException:
        # An interrupt or a failed write: end the input, let openSMILE finish what it holds, then re-raise.
        # Not engine.abort(): called while run() is starting it corrupts openSMILE's heap (double free).
        try:
            engine.external_audio_source_set_eoi(source)
        except Exception:             # the engine already stopped: nothing left to end
            pass
        runner.join()
        engine.free()
        raise
    if not keep:
        engine.free()
    return engine


def _finish_times(values: np.ndarray, times: np.ndarray, signal, sample_rate: int) -> SmileRows:
    """process_signal's timestamps go through pandas Timedelta (ns) and it pins the clip's own bounds."""
    import pandas as pd

    if len(values):
        times = pd.to_timedelta(times.reshape(-1), unit="s").total_seconds().to_numpy().reshape(-1, 2).copy()
        times[0, 0] = 0.0
        times[-1, 1] = pd.to_timedelta(len(signal) / sample_rate, unit="s").total_seconds()
    return SmileRows(values, times)


def whole_level_buffers(path: Path, n_samples: int, sample_rate: int) -> Path:
    """A BufferMode include sizing the whole-clip levels for `n_samples` of audio (plus a margin). They may still
    grow (growDyn) if a level holds more frames than estimated, so the output never depends on the estimate."""
    frames = math.ceil(n_samples / sample_rate / LLD_HOP_S) + WHOLE_LEVEL_MIN_FRAMES
    path.write_text("// emocache (pipeline/audio/smile_stream.py): BufferMode.conf.inc sized for this clip\n"
                    f"writer.levelconf.growDyn = 1\nwriter.levelconf.isRb = 0\nwriter.levelconf.nT = {frames}\n")
    return path
