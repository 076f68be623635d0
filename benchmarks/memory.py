"""Peak memory of extracting one long clip, against its length: must be flat (goal: within 1.2x, 1 to 60 min).

    .venv/bin/python benchmarks/memory.py                  # 1/10/60 min 720p video and audio, and the baseline
    .venv/bin/python benchmarks/memory.py --minutes 1 10   # shorter
    .venv/bin/python benchmarks/memory.py --audio-only     # the audio rows only
    .venv/bin/python benchmarks/memory.py --audio-only --audio-extractors vggish --vggish-batch 64 256
                                                           # one audio extractor, at several VGGish batches
    .venv/bin/python benchmarks/memory.py --audio-only --audio-format aac48
                                                           # 48 kHz stereo AAC: ffmpeg + resampy decode path

The media are generated with ffmpeg's lavfi sources into a temp dir (nothing is committed): one minute of
1280x720 testsrc video (MPEG-4, 5 fps), looped by stream copy to 10 and 60 minutes, and 16 kHz tone (WAV)
of each audio length (--audio-format aac48: a 48 kHz stereo AAC tone, as films carry, decoded by ffmpeg and
resampled by resampy). Each extraction is a fresh `pipeline.extract.extract` process on a one-clip dataset; its peak RSS is
the child's ru_maxrss. Video: the `mobilenet` frame encoder (decode at media.decode_fps, T sampled frames),
with media.max_frames as in params; the baseline is the same run with max_frames off (every frame at
decode_fps decoded and held, as before), measured in the same run at 1 and 3 minutes (more would not fit
a shared machine). Audio: egemaps + VGGish (untrained allowed: same cost) on 1, 10 and 60 minutes, or the
extractors named by --audio-extractors, once per VGGish batch size in --vggish-batch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def ffmpeg(*args: str) -> None:
    from pipeline.media import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True,
                   stdin=subprocess.DEVNULL, timeout=1800)


AUDIO_FORMATS = {   # name -> (file suffix, lavfi source, encoder options)
    "wav16": (".wav", "sine=f=220:sample_rate=16000", ["-c:a", "pcm_s16le"]),
    "aac48": (".m4a", "sine=f=220:sample_rate=48000", ["-ac", "2", "-c:a", "aac", "-b:a", "96k"]),
}


def make_media(d: Path, minutes: list[float], audio_minutes: list[float], audio_format: str = "wav16") -> dict:
    out = {}
    suffix, source, encode = AUDIO_FORMATS[audio_format]
    for m in audio_minutes:
        out[f"audio_{m:g}"] = d / f"audio_{m:g}min{suffix}"
        ffmpeg("-f", "lavfi", "-i", source, "-t", str(60 * m), *encode, str(out[f"audio_{m:g}"]))
    if not minutes:
        return out
    one = d / "video_1min.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=1280x720:rate=5", "-t", "60", "-c:v", "mpeg4", "-q:v", "31",
           "-g", "250", str(one))
    for m in sorted(set(minutes) | {1, 3}):
        p = one if m == 1 else d / f"video_{m:g}min.mp4"
        if m != 1:   # loop the minute by stream copy: long files without encoding them
            ffmpeg("-stream_loop", str(int(m) - 1), "-i", str(one), "-c", "copy", "-t", str(60 * m), str(p))
        out[f"video_{m:g}"] = p
    return out


def child(kind: str, media: str, work: str, max_frames: int, audio: dict) -> None:
    """One extraction (in its own process, so ru_maxrss is this run's peak)."""
    import csv

    from emocache.config import Config
    from pipeline.extract import extract

    w = Path(work)
    w.mkdir(parents=True, exist_ok=True)
    with open(w / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "labels"], [Path(media).name, "x"]])
    exts = ["mobilenet"] if kind == "video" else audio["extractors"]
    cfg = Config.model_validate({
        "base_dir": str(w), "store": {"dir": str(w / "cache"), "tables_dir": str(w / "tables")},
        "weights": {"dir": str(w / "weights"), "allow_untrained": ["vggish"]},
        "runtime": {"device": "cpu", "num_threads": 2},
        "media": {"max_frames": max_frames, "max_clip_seconds": 4 * 3600},
        "extractors": {"video": {"frames_per_clip": 16},
                       **({"vggish": {"batch_examples": audio["vggish_batch"]}} if audio.get("vggish_batch") else {})},
        "datasets": {"bench": {"adapter": "csv", "root": str(Path(media).parent), "manifest": str(w / "manifest.csv"),
                               "split": {"method": "random", "val": 0.0, "test": 0.0}, "extractors": exts}}})
    s = extract(cfg, ["bench"], show_progress=False)
    assert not s.failures, s.failures
    print(json.dumps({k: v.done for k, v in s.stats.items()}))


def measure(kind: str, media: Path, work: Path, max_frames: int, audio: Optional[dict] = None) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one extraction process."""
    t0 = time.perf_counter()
    log = work.with_suffix(".log")
    work.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, __file__, "--child", kind, str(media), str(work), str(max_frames),
                                 json.dumps(audio or {})],
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
                                stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)     # this child's own rusage (ru_maxrss: its peak)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"extraction failed ({kind} {media.name}):\n{log.read_text(errors='replace')[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    ap.add_argument("--audio-minutes", type=float, nargs="*", default=[1, 10, 60])
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--audio-only", action="store_true", help="skip the video rows (and their baseline)")
    ap.add_argument("--audio-extractors", nargs="+", default=["egemaps", "vggish"], choices=["egemaps", "vggish"])
    ap.add_argument("--vggish-batch", type=int, nargs="+", default=[0],
                    help="extractors.vggish.batch_examples for the audio rows, one set of rows each (0: params default)")
    ap.add_argument("--audio-format", choices=sorted(AUDIO_FORMATS), default="wav16",
                    help="wav16: 16 kHz mono WAV (libsndfile); aac48: 48 kHz stereo AAC (ffmpeg, then resampy)")
    ap.add_argument("--child", nargs=5, metavar=("KIND", "MEDIA", "WORK", "MAX_FRAMES", "AUDIO"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, media, work, mf, audio = args.child
        return child(kind, media, work, int(mf), json.loads(audio))
    from emocache.config import MediaConfig

    max_frames = MediaConfig().max_frames
    if args.audio_only:
        args.minutes, args.no_baseline = [], True
    with tempfile.TemporaryDirectory(prefix="emocache-mem-") as tmp:
        d = Path(tmp)
        files = make_media(d, args.minutes, args.audio_minutes, args.audio_format)
        rows = []
        for m in args.minutes:
            rss, secs = measure("video", files[f"video_{m:g}"], d / f"w_v{m:g}", max_frames)
            rows.append({"what": f"video {m:g} min 720p", "max_frames": max_frames, "peak_rss_mb": round(rss), "s": round(secs, 1)})
            print(f"video {m:>4g} min 720p  max_frames {max_frames}: peak RSS {rss:7.0f} MB  ({secs:.0f} s)", flush=True)
        if not args.no_baseline:
            for m in (1, 3):
                rss, secs = measure("video", files[f"video_{m:g}"], d / f"w_b{m:g}", 0)
                rows.append({"what": f"video {m:g} min 720p (baseline: max_frames off)", "max_frames": 0,
                             "peak_rss_mb": round(rss), "s": round(secs, 1)})
                print(f"video {m:>4g} min 720p  baseline (all frames): peak RSS {rss:7.0f} MB  ({secs:.0f} s)", flush=True)
        series = {"video": [r["peak_rss_mb"] for r in rows if r.get("max_frames") == max_frames]}
        names = " + ".join(args.audio_extractors)
        for batch in args.vggish_batch:
            label = names + (f", vggish batch {batch}" if batch and "vggish" in args.audio_extractors else "")
            label += "" if args.audio_format == "wav16" else f", {args.audio_format}"
            audio = {"extractors": args.audio_extractors, "vggish_batch": batch}
            for m in args.audio_minutes:
                rss, secs = measure("audio", files[f"audio_{m:g}"], d / f"w_a{m:g}_{batch}", max_frames, audio)
                rows.append({"what": f"audio {m:g} min ({label})", "peak_rss_mb": round(rss), "s": round(secs, 1)})
                series.setdefault(f"audio ({label})", []).append(round(rss))
                print(f"audio {m:>4g} min ({label}): peak RSS {rss:7.0f} MB  ({secs:.0f} s)", flush=True)
        for kind, peaks in series.items():
            if len(peaks) > 1:   # rows in the order of --minutes / --audio-minutes: last over first
                print(f"{kind} peak RSS, longest / shortest: {peaks[-1] / peaks[0]:.2f}x (goal <= 1.2x)")
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
