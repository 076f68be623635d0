"""`emocache detect` and `emocache tracks`: see what the tracker sees.

Both build the `tracks` extractor exactly as the extract stage does (build_extractor + load) and run its own
detector / extract_batch, so what they show is what the cache gets.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from emocache.config import Config
from pipeline.errors import UsageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
DECIMALS = 4                             # confidences and box coordinates in the JSON


def tracks_extractor(cfg: Config):
    from pipeline.extractors.base import build_extractor

    ext = build_extractor(cfg, "tracks")
    ext.load()
    return ext


def _as_json(dets: np.ndarray, names: list[str], scale: tuple[float, float] = (1.0, 1.0)) -> list:
    sx, sy = scale
    return [[names[int(c)], round(float(s), DECIMALS),
             [round(float(x1) * sx, 2), round(float(y1) * sy, 2), round(float(x2) * sx, 2), round(float(y2) * sy, 2)]]
            for x1, y1, x2, y2, s, c in dets]


def detect_files(cfg: Config, files: list[str]) -> tuple[dict[str, list], Any]:
    """{file: [[class, confidence, [x1, y1, x2, y2]], ...]} in each file's own pixels; a video gives one
    entry per frame, 'file#frameN' (N = 0-based frame index, every frame at the file's own rate)."""
    import cv2

    from pipeline.media import decode_frames, probe
    from pipeline.video.detectors import class_names, labeled

    for f in files:   # bad input is reported before any model loads
        if not Path(f).is_file():
            raise UsageError(f"{f}: no such file")
    ext = tracks_extractor(cfg)
    det = ext.detector
    names = class_names(det)
    out: dict[str, list] = {}
    for f in files:
        if Path(f).suffix.lower() in IMAGE_SUFFIXES:
            bgr = cv2.imread(f)
            if bgr is None:
                raise UsageError(f"{f}: cannot read the image")
            out[f] = _as_json(labeled(det, [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)])[0], names)
            continue
        info = probe(f)
        if not info.has_video or not info.fps:
            raise UsageError(f"{f}: no video stream with a frame rate")
        frames, _ = decode_frames(f, info.fps, max(info.width, info.height), info=info,
                                  timeout=cfg.media.ffmpeg_timeout_s)
        # decoded sizes are rounded to even numbers: scale boxes back to the file's own pixels
        scale = (info.width / frames.shape[2], info.height / frames.shape[1])
        for i, d in enumerate(labeled(det, frames)):
            out[f"{f}#frame{i}"] = _as_json(d, names, scale)
    return out, ext


def track_video(cfg: Config, video: str, csv_out: Optional[str], overlay: Optional[str]) -> dict[str, Any]:
    """The tracks stage on one video (decoded at media.decode_fps / max_side, as the extract stage does);
    writes MOTChallenge rows (1-based decoded-frame numbers, decoded-frame pixels) and an overlay video."""
    from pipeline.extractors.base import ClipInput
    from pipeline.media import decode_frames
    from pipeline.video.mot import write_mot_csv
    from pipeline.video.overlay import draw_tracks, write_video

    if not Path(video).is_file():
        raise UsageError(f"{video}: no such file")
    ext = tracks_extractor(cfg)
    frames, times = decode_frames(video, cfg.media.decode_fps, cfg.media.max_side, timeout=cfg.media.ffmpeg_timeout_s)
    out = ext.extract_batch([ClipInput(Path(video).stem, path=video, frames=frames, frame_times=times)])[0]
    rows, target = out.arrays["features"], out.arrays["target"]
    if csv_out:
        Path(csv_out).parent.mkdir(parents=True, exist_ok=True)
        write_mot_csv(csv_out, rows)
    if overlay:
        Path(overlay).parent.mkdir(parents=True, exist_ok=True)
        write_video(overlay, draw_tracks(frames, rows, target), cfg.media.decode_fps)
    kind, why = ext.detector_choice()
    return {"video": video, "frames": int(len(frames)), "fps": cfg.media.decode_fps,
            "frame_size": out.attrs["frame_size"], "rows": int(len(rows)), "tracks": out.attrs["n_tracks"],
            "target_id": out.attrs["target_id"], "target_by": out.attrs["target_by"],
            "reason": out.attrs.get("reason"), "shot_starts": out.attrs["shot_starts"],
            "detector": kind, "detector_why": why, "csv": csv_out, "overlay": overlay}
