"""openSMILE fed a long signal in chunks, with bounded memory and the same output as `Smile.process_signal`.

`process_signal` hands openSMILE the whole clip at once, after a float32 copy, an int16 copy and a bytes copy,
and its external-source config keeps the whole wave level inside openSMILE (a growing buffer): about 1 GB per
hour of 16 kHz audio. Here the same int16 samples (x * 32768, cast as opensmile does) are written chunk by
chunk into an external source whose wave level is a ring buffer (smile_input.conf.inc), while `run()` works
in a thread. openSMILE is a streaming engine: its frames and functionals do not depend on how the input
arrives, so the rows are those of `process_signal` (tests/test_egemaps.py compares them).

The feature set computes its whole-clip functionals in both modes, and the levels they read grow with the clip
(BufferMode.conf.inc). For LLD output those levels become ring buffers and the (unused) functionals read short
windows, so LLD extraction is flat in clip length but for its own rows. For functionals they must stay whole:
percentiles and the like need every frame of the clip. They are sized for the clip up front instead of
starting at 1000 frames and doubling (which overshoots and holds old and new buffers while copying: 60 min of
audio peaked 230 MB higher); what remains is openSMILE's own storage per 10 ms frame in each whole level, about
0.9 GB per hour of audio (~2.5 KB per frame, mostly per-frame metadata, not the LLD values).
"""
from __future__ import annotations

import math
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def process_chunked(smile, signal: np.ndarray, sample_rate: int, chunk_samples: int) -> SmileRows:
    """Run `smile` (an opensmile.Smile) over mono float32 `signal`, writing `chunk_samples` at a time."""
    import pandas as pd
    from opensmile.core.config import config as smile_config

    signal = np.asarray(signal, dtype=np.float32).reshape(-1)
    chunk_samples = max(1, int(chunk_samples))
    # opensmile's own option set (config file, sink level, buffer includes), with our ring-buffer source
    options = smile._options()
    options.update({"source": str(INPUT_CONFIG), "sampleRate": sample_rate, "nBits": 16,
                    "waveBufferSamples": 2 * chunk_samples})
    if getattr(smile.feature_level, "name", smile.feature_level) == "LowLevelDescriptors":
        # the feature set still computes its functionals; only the LLDs are output, so the whole-clip
        # levels the functionals read need not be kept
        options.update({"bufferModeConf": str(LLD_BUFFERS_CONFIG),
                        "frameModeFunctionalsConf": str(LLD_FUNCTIONALS_CONFIG)})
        engine = smile._smile(options=options)
    else:
        with tempfile.TemporaryDirectory(prefix="emocache-smile-") as tmp:
            options["bufferModeConf"] = str(whole_level_buffers(Path(tmp) / "buffer_mode.conf.inc",
                                                                len(signal), sample_rate))
            engine = smile._smile(options=options)   # reads the config, includes and all, here
    rows = _Rows(smile.num_features)
    engine.external_sink_set_callback_ex(smile_config.EXTERNAL_OUTPUT_COMPONENT, rows.add)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            engine.run()
        except BaseException as e:    # re-raised in the caller's thread
            failure.append(e)

    runner = threading.Thread(target=run, name="opensmile", daemon=True)
    runner.start()
    source = smile_config.EXTERNAL_SOURCE_COMPONENT
    written = 0
    try:
        for s0 in range(0, len(signal), chunk_samples):
            block = signal[s0:s0 + chunk_samples].copy()
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
    except BaseException:
        # An interrupt or a failed write: end the input, let openSMILE finish what it holds, then re-raise.
        # Not engine.abort(): called while run() is starting it corrupts openSMILE's heap (double free).
        try:
            engine.external_audio_source_set_eoi(source)
        except Exception:             # the engine already stopped: nothing left to end
            pass
        runner.join()
        raise
    finally:
        engine.free()
    if failure:
        raise failure[0]
    if written < len(signal):
        raise RuntimeError(f"openSMILE stopped after {written} of {len(signal)} samples")
    values, times = rows.values[:rows.n], rows.times[:rows.n]
    if rows.n:
        # process_signal's timestamps go through pandas Timedelta (ns) and it pins the clip's own bounds
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
