"""Resampling to the extractors' rate, by the algorithm `media.resampler` names (it enters the audio
extractors' fingerprints: a different resampler is a different output).

- swr:     ffmpeg's default swresample (fast; its anti-alias filter rolls off near Nyquist earlier than
           resampy's, which moves VGGish's top mel band on 48 kHz input by up to ~0.7).
- soxr:    ffmpeg with libsoxr at its high-quality (20-bit) setting.
- resampy: resampy's `kaiser_best`, the resampler of the VGGish reference (AudioSet vggish_input.py and
           torchvggish), computed here without numba: ffmpeg decodes at the file's own rate, then the same
           windowed-sinc weights resampy would apply are laid out as one polyphase FIR and run by
           scipy's upfirdn (C; FFT convolution for integer down-sampling) -- for integer ratios (48 -> 16 kHz) the identical sums, for other rational
           ratios the same weights at the exact rational times (resampy accumulates the time in floats).
"""
from __future__ import annotations

import importlib.util
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np

RESAMPLERS = ("swr", "soxr", "resampy")
SOXR_HQ_PRECISION_BITS = 20        # libsoxr's "HQ" recipe (ffmpeg aresample precision option)
RESAMPY_FILTER = "kaiser_best"     # resampy's default, the one vggish_input.py uses


def ffmpeg_output_options(resampler: str, sample_rate: int) -> dict:
    """ffmpeg-python output kwargs that make ffmpeg itself resample (swr, soxr), or decode at the
    file's own rate for a resampler applied afterwards (resampy: no `ar`, see `decodes_native_rate`)."""
    check(resampler)
    if resampler == "swr":
        return {"ar": sample_rate}
    if resampler == "soxr":
        return {"ar": sample_rate, "af": f"aresample=resampler=soxr:precision={SOXR_HQ_PRECISION_BITS}"}
    return {}


def decodes_native_rate(resampler: str) -> bool:
    return check(resampler) == "resampy"


def check(resampler: str) -> str:
    if resampler not in RESAMPLERS:
        raise ValueError(f"media.resampler must be one of {', '.join(RESAMPLERS)}; got {resampler!r}")
    return resampler


# ---------------------------------------------------------------- resampy kaiser_best, as one polyphase FIR
@lru_cache(maxsize=1)
def _resampy_table() -> tuple[np.ndarray, int]:
    """(right wing of the interpolation window, table entries per zero crossing) from resampy's own data
    file, read without importing resampy (which would pull in numba)."""
    spec = importlib.util.find_spec("resampy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("media.resampler 'resampy' needs the resampy package for its filter table "
                           "(pip install resampy==0.4.3, pinned in requirements.txt), or set media.resampler: swr")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / f"{RESAMPY_FILTER}.npz"
    with np.load(path) as data:
        return np.asarray(data["half_window"], np.float64), int(data["precision"])


@lru_cache(maxsize=8)
def _polyphase_filter(sr_orig: int, sr_new: int) -> tuple[np.ndarray, int, int, int]:
    """(h, up, down, lead): upfirdn(h, x, up, down)[lead:] equals resampy.resample(x, sr_orig, sr_new).

    resampy's output t sits at input time t*down/up = n + r/up. It weights x[n - i] by the table value at
    offset(r) + i*step (left wing) and x[n + 1 + k] at offset'(r) + k*step (right wing), with linear
    interpolation between table entries. upfirdn weights x[m] by h[t*down - m*up]; that index is r + i*up on
    the left and r - (k+1)*up on the right, distinct for every (r, i) and (r, k), so each of resampy's
    weights gets its own slot in h."""
    ratio = Fraction(sr_new, sr_orig)
    up, down = ratio.numerator, ratio.denominator
    win, num_table = _resampy_table()
    sample_ratio = float(sr_new) / sr_orig
    if sample_ratio < 1:
        win = sample_ratio * win
    delta = np.diff(win, append=win[-1])
    scale = min(1.0, sample_ratio)
    step = int(scale * num_table)
    nwin = win.shape[0]

    def wing(frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index_frac = frac * num_table
        offset = index_frac.astype(np.int64)
        eta = index_frac - offset
        taps = (nwin - offset) // step
        return offset, eta, taps

    r = np.arange(up)
    frac_left = scale * (r / up)
    off_l, eta_l, taps_l = wing(frac_left)
    off_r, eta_r, taps_r = wing(scale - frac_left)
    n_left, n_right = int(taps_l.max()), int(taps_r.max())
    g = np.zeros((n_left + n_right) * up)             # g[j + n_right*up] = weight at upfirdn index j
    base = n_right * up
    for p in range(up):
        i = np.arange(taps_l[p])
        pos = off_l[p] + i * step
        g[base + p + i * up] = win[pos] + eta_l[p] * delta[pos]
        k = np.arange(taps_r[p])
        pos = off_r[p] + k * step
        g[base + p - (k + 1) * up] = win[pos] + eta_r[p] * delta[pos]
    # upfirdn counts h from index 0: shift by `base` plus zeros so the shift is a whole number of outputs
    pad = (-base) % down
    h = np.concatenate([np.zeros(pad), g])
    return h, up, down, (base + pad) // down


def resampy_kaiser_best(x: np.ndarray, sr_orig: int, sr_new: int) -> np.ndarray:
    """resampy.resample(x, sr_orig, sr_new) (filter kaiser_best) for mono x, as float32."""
    from scipy.signal import oaconvolve, upfirdn

    if sr_orig == sr_new:      # float32 input stays as it is (no float64 copy of a long clip)
        return np.asarray(x).astype(np.float32, copy=False)
    x = np.asarray(x, dtype=np.float64)
    n_out = int(x.shape[0] * float(sr_new) / float(sr_orig))
    if n_out < 1:
        raise ValueError(f"{x.shape[0]} samples at {sr_orig} Hz are too few to resample to {sr_new} Hz")
    h, up, down, lead = _polyphase_filter(int(sr_orig), int(sr_new))
    if up == 1:   # integer downsampling (48 -> 16 kHz): FFT convolution, then every down-th sample
        y = oaconvolve(x, h)[lead * down::down][:n_out]
    else:
        y = upfirdn(h, x, up, down)[lead:lead + n_out]
    if y.shape[0] < n_out:   # resampy's last outputs only see the zeros past the end on their right wing
        y = np.concatenate([y, np.zeros(n_out - y.shape[0])])
    return y.astype(np.float32)


def resampy_kaiser_best_blocks(x, sr_orig: int, sr_new: int, block_out: int):
    """resampy_kaiser_best for a long clip that is read a slice at a time (a SpilledAudio): yields float32
    output blocks of `block_out` samples, each from exactly the input samples its outputs weight.

    Every block is scipy's upfirdn on its input slice (started at a multiple of `down`, so the polyphase phases
    line up): the same sums, in the same order, as upfirdn over the whole clip. The in-memory path uses FFT
    convolution for integer down-sampling, so there the two agree to float rounding (tests/test_spilled_audio.py)."""
    from scipy.signal import upfirdn

    n_in = len(x)
    n_out = int(n_in * float(sr_new) / float(sr_orig))
    if n_out < 1:
        raise ValueError(f"{n_in} samples at {sr_orig} Hz are too few to resample to {sr_new} Hz")
    h, up, down, lead = _polyphase_filter(int(sr_orig), int(sr_new))
    taps = len(h)
    for j0 in range(0, n_out, max(1, int(block_out))):
        j1 = min(n_out, j0 + max(1, int(block_out)))
        i0, i1 = lead + j0, lead + j1                      # upfirdn's output indices of this block
        m_lo = max(0, -(-(i0 * down - (taps - 1)) // up))  # the first input an output of the block weights
        m_hi = min(n_in - 1, (i1 - 1) * down // up)        # and the last
        out = np.zeros(j1 - j0)
        if m_lo <= m_hi:
            m0 = m_lo // down * down
            y = upfirdn(h, np.asarray(x[m0:m_hi + 1], dtype=np.float64), up, down)
            k0 = i0 - m0 * up // down
            got = y[k0:k0 + (j1 - j0)]
            out[:len(got)] = got                           # past the reach of the last input: zeros, as resampy
        yield out.astype(np.float32)
