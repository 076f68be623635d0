"""Where openSMILE's memory goes on a long clip: eGeMAPSv02 fed in chunks (pipeline/audio/smile_stream.py).

    .venv/bin/python benchmarks/smile_memory.py                 # 10 and 60 minutes
    .venv/bin/python benchmarks/smile_memory.py --minutes 10

Four runs per length, each a fresh process (peak RSS = ru_maxrss over what it held before openSMILE started):
  lld          LLD output as extracted (the levels only the functionals read are ring buffers)
  lld_whole    LLD output, but those levels kept whole, as the functionals need them: what the levels cost
  one_pass     the functionals in one pass (whole levels + the functionals reading the whole clip), as
               clips under extractors.egemaps.two_pass_seconds are extracted
  two_pass     the functionals in two passes (pipeline/audio/smile_functionals.py), as longer clips are
The signal is a 220 Hz tone with a 0.5 Hz amplitude swing plus a little noise, 16 kHz, generated a block at a
time so no temporary of the whole clip inflates the baseline.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE_RATE = 16000
CHUNK_SECONDS = 10          # = extractors.egemaps.chunk_seconds in params.yaml
TONE_HZ, SWING_HZ, NOISE = 220.0, 0.5, 0.01
MODES = ("lld", "lld_whole", "one_pass", "two_pass")
FRAMES_PER_SECOND = 100    # eGeMAPS LLD frames every 10 ms


def signal(minutes: float):
    import numpy as np

    n = int(minutes * 60 * SAMPLE_RATE)
    out = np.empty(n, np.float32)
    rng = np.random.default_rng(0)
    for s0 in range(0, n, SAMPLE_RATE * CHUNK_SECONDS):
        t = np.arange(s0, min(n, s0 + SAMPLE_RATE * CHUNK_SECONDS)) / SAMPLE_RATE
        out[s0:s0 + len(t)] = (0.3 * np.sin(2 * np.pi * TONE_HZ * t) * (1 + 0.5 * np.sin(2 * np.pi * SWING_HZ * t))
                               + rng.normal(0, NOISE, len(t)))
    return out


def child(mode: str, minutes: float) -> dict:
    import opensmile

    from pipeline.audio import smile_stream

    sig = signal(minutes)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    level = opensmile.FeatureLevel.LowLevelDescriptors if mode.startswith("lld") else opensmile.FeatureLevel.Functionals
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=level)
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "lld_whole":   # the whole-clip level sizing the functionals get, under LLD output
            smile_stream.LLD_BUFFERS_CONFIG = smile_stream.whole_level_buffers(Path(tmp) / "whole.conf.inc",
                                                                               len(sig), SAMPLE_RATE)
        t0 = time.perf_counter()
        rows = smile_stream.process_chunked(smile, sig, SAMPLE_RATE, CHUNK_SECONDS * SAMPLE_RATE,
                                            two_pass_samples=0 if mode == "two_pass" else None)
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "minutes": minutes, "before_mb": round(before), "peak_mb": round(peak),
            "openSMILE_mb": round(peak - before), "rows": int(len(rows.values)), "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    ap.add_argument("--child", nargs=2, metavar=("MODE", "MINUTES"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], float(a.child[1]))))
        return
    rows = []
    print(f"{'minutes':>8} {'mode':>12} {'openSMILE MB':>13} {'rows':>8} {'s':>6}")
    for m in a.minutes:
        for mode in MODES:
            r = subprocess.run([sys.executable, __file__, "--child", mode, str(m)], capture_output=True, text=True,
                               check=True, stdin=subprocess.DEVNULL)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"{m:>8g} {mode:>12} {row['openSMILE_mb']:>13} {row['rows']:>8} {row['seconds']:>6}", flush=True)
    lo, hi = min(a.minutes), max(a.minutes)
    if hi > lo:   # growth with length, net of what does not grow: MB per hour and bytes per 10 ms frame
        print(f"growth from {lo:g} to {hi:g} min:")
        for mode in MODES:
            mb = {r["minutes"]: r["openSMILE_mb"] for r in rows if r["mode"] == mode}
            per_hour = (mb[hi] - mb[lo]) / (hi - lo) * 60
            per_frame = (mb[hi] - mb[lo]) * 2 ** 20 / ((hi - lo) * 60 * FRAMES_PER_SECOND)
            print(f"{mode:>12}: {per_hour:6.0f} MB per hour, {per_frame:6.0f} bytes per frame")


if __name__ == "__main__":
    main()
