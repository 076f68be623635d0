"""The VGGish log-mel front end in torch, batched across clips, on the GPU when there is one.

Reproduces the reference maths (AudioSet `mel_features.py` / `vggish_input.py`):
  frames of `window` samples every `hop` samples, no padding (a partial last frame is dropped);
  periodic Hann window; |rfft| with `fft_size` points; a triangular mel matrix built in the HTK mel domain
  (1127 ln(1 + f/700)) without area normalisation and with the DC bin zeroed; log(mel + log_offset);
  then `example_frames`-frame examples every `example_hop_frames` frames (the reference: 96 and 96).

Long files: frames are computed in chunks of at most `chunk_seconds` worth of frames. Each chunk is cut at a
frame boundary and reads exactly the samples its frames need, so the result is the same as unchunked.
Frames of several clips share a chunk, so a batch of short clips costs one FFT call. `example_blocks` goes one
step further for the extractor: it yields the examples a chunk at a time (each block cut at an example
boundary, reading exactly the frames its examples need), so the log-mel of a whole long clip never exists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from pipeline.config import VGGishConfig

# The spectrogram is computed in float64: with log(mel + 0.01), float32 FFT round-off on loud frames would show
# up as ~1e-3 errors in quiet mel bands; float64 keeps the front end within 1e-5 of the NumPy reference.
COMPUTE_DTYPE = torch.float64
MEL_BREAK_HZ = 700.0          # HTK mel scale: 1127 ln(1 + f / 700)
MEL_HIGH_Q = 1127.0


def hertz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return MEL_HIGH_Q * torch.log1p(f / MEL_BREAK_HZ)


def periodic_hann(length: int, dtype=COMPUTE_DTYPE) -> torch.Tensor:
    """0.5 - 0.5 cos(2 pi n / N): the 'periodic' Hann of the reference (not the symmetric one)."""
    n = torch.arange(length, dtype=dtype)
    return 0.5 - 0.5 * torch.cos(2.0 * math.pi * n / length)


def mel_matrix(n_spectrogram_bins: int, sample_rate: int, n_mels: int, fmin: float, fmax: float,
               dtype=COMPUTE_DTYPE) -> torch.Tensor:
    """(n_spectrogram_bins, n_mels) triangles with unit peaks, interpolated in the mel domain; DC row zeroed."""
    if not 0.0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"mel band edges must satisfy 0 <= fmin < fmax <= Nyquist; got {fmin}, {fmax}, sr {sample_rate}")
    bins_mel = hertz_to_mel(torch.linspace(0.0, sample_rate / 2, n_spectrogram_bins, dtype=dtype))
    edges = torch.linspace(float(hertz_to_mel(torch.tensor(fmin, dtype=dtype))),
                           float(hertz_to_mel(torch.tensor(fmax, dtype=dtype))), n_mels + 2, dtype=dtype)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights[0, :] = 0.0   # the reference zeroes DC so a signal offset never leaks into the lowest band
    return weights


@dataclass
class Examples:
    """One clip's VGGish input: (E, example_frames, n_mels) float32 and each example's [start, end] seconds."""

    data: torch.Tensor
    times: np.ndarray


class LogMelFrontend:
    def __init__(self, cfg: VGGishConfig, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.window_samples = int(round(cfg.sample_rate * cfg.window_s))
        self.hop_samples = int(round(cfg.sample_rate * cfg.hop_s))
        if cfg.fft_size < self.window_samples:
            raise ValueError(f"vggish.fft_size {cfg.fft_size} is shorter than the window ({self.window_samples} samples)")
        if cfg.example_hop_frames < 1 or cfg.example_frames < 1:
            raise ValueError("vggish.example_frames and example_hop_frames must be >= 1")
        self.window = periodic_hann(self.window_samples).to(self.device)
        self.mel = mel_matrix(cfg.fft_size // 2 + 1, cfg.sample_rate, cfg.n_mels, cfg.fmin, cfg.fmax).to(self.device)
        self.chunk_frames = max(1, int(cfg.chunk_seconds * cfg.sample_rate) // self.hop_samples)

    # ------------------------------------------------------------------ frames -> log-mel
    def n_frames(self, n_samples: int) -> int:
        if n_samples < self.window_samples:
            return 0
        return 1 + (n_samples - self.window_samples) // self.hop_samples

    def _log_mel_rows(self, frames: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft(frames * self.window, n=self.cfg.fft_size, dim=-1).abs()
        return torch.log(spectrum @ self.mel + self.cfg.log_offset).to(torch.float32)

    def log_mel(self, waveforms: list[np.ndarray]) -> list[torch.Tensor]:
        """(F_i, n_mels) float32 log-mel per waveform; frames of all clips are packed into bounded chunks."""
        parts: list[list[torch.Tensor]] = [[] for _ in waveforms]
        pending: list[tuple[int, torch.Tensor]] = []   # (clip index, its frames in this chunk)
        pending_rows = 0

        def flush() -> None:
            nonlocal pending, pending_rows
            if not pending:
                return
            rows = self._log_mel_rows(torch.cat([f for _, f in pending]))
            for (i, _), block in zip(pending, torch.split(rows, [f.shape[0] for _, f in pending])):
                parts[i].append(block)
            pending, pending_rows = [], 0

        for i, wave in enumerate(waveforms):
            total = self.n_frames(len(wave))
            f0 = 0
            while f0 < total:
                take = min(total - f0, self.chunk_frames - pending_rows)
                s0 = f0 * self.hop_samples
                s1 = (f0 + take - 1) * self.hop_samples + self.window_samples   # exactly the samples these frames read
                seg = torch.as_tensor(np.ascontiguousarray(wave[s0:s1])).to(self.device, COMPUTE_DTYPE)
                pending.append((i, seg.unfold(0, self.window_samples, self.hop_samples)))
                pending_rows += take
                f0 += take
                if pending_rows >= self.chunk_frames:
                    flush()
        flush()
        return [torch.cat(p) if p else torch.zeros((0, self.cfg.n_mels), dtype=torch.float32, device=self.device)
                for p in parts]

    # ------------------------------------------------------------------ log-mel -> examples
    def examples(self, log_mel: torch.Tensor) -> Examples:
        """Examples of `example_frames` frames every `example_hop_frames`; fewer frames than one example -> 0 rows.

        times: [start, start + example_frames * hop] seconds from the clip start (the nominal 0.96 s span of the
        reference; the last frame's window reaches 15 ms further)."""
        size, step = self.cfg.example_frames, self.cfg.example_hop_frames
        n = 0 if log_mel.shape[0] < size else 1 + (log_mel.shape[0] - size) // step
        if n == 0:
            data = log_mel.new_zeros((0, size, self.cfg.n_mels))
        else:
            data = log_mel[: (n - 1) * step + size].unfold(0, size, step).transpose(1, 2)   # (n, size, n_mels)
        frame_s = self.hop_samples / self.cfg.sample_rate
        starts = np.arange(n, dtype=np.float64) * step * frame_s
        return Examples(data, np.stack([starts, starts + size * frame_s], axis=1))

    def n_examples(self, n_samples: int) -> int:
        size, step = self.cfg.example_frames, self.cfg.example_hop_frames
        frames = self.n_frames(n_samples)
        return 0 if frames < size else 1 + (frames - size) // step

    def example_times(self, n: int) -> np.ndarray:
        """(n, 2) [start, end] seconds of a clip's first n examples (as `examples` gives them)."""
        frame_s = self.hop_samples / self.cfg.sample_rate
        starts = np.arange(n, dtype=np.float64) * self.cfg.example_hop_frames * frame_s
        return np.stack([starts, starts + self.cfg.example_frames * frame_s], axis=1)

    def example_blocks(self, waveforms: list[np.ndarray]) -> Iterator[torch.Tensor]:
        """The examples of every waveform, in order (clip by clip), as a stream of (E_k, example_frames, n_mels)
        blocks of about `chunk_seconds` each: the same examples as `__call__`, in bounded memory. A block
        reads exactly the samples its examples' frames need; blocks of short clips are computed together."""
        size, step = self.cfg.example_frames, self.cfg.example_hop_frames
        per_block = max(1, (self.chunk_frames - size) // step + 1)    # examples per block
        group: list[np.ndarray] = []
        group_frames = 0
        for wave in waveforms:
            n = self.n_examples(len(wave))
            for e0 in range(0, n, per_block):
                e1 = min(n, e0 + per_block)
                f0, n_f = e0 * step, (e1 - 1 - e0) * step + size
                s0 = f0 * self.hop_samples
                group.append(wave[s0:s0 + (n_f - 1) * self.hop_samples + self.window_samples])
                group_frames += n_f
                if group_frames >= self.chunk_frames:
                    yield from (ex.data for ex in self(group))
                    group, group_frames = [], 0
        if group:
            yield from (ex.data for ex in self(group))

    def __call__(self, waveforms: list[np.ndarray]) -> list[Examples]:
        return [self.examples(lm) for lm in self.log_mel(waveforms)]
