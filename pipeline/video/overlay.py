"""Draw track boxes, ids and the target on decoded frames, and write them as an H.264 MP4 (ffmpeg)."""
from __future__ import annotations

import os
import subprocess

import numpy as np

TARGET_COLOR = (255, 40, 40)           # RGB: the target person
BOX_THICKNESS, TARGET_THICKNESS = 1, 3
FONT_SCALE = 0.5


def _color(track_id: int) -> tuple[int, int, int]:
    """A fixed, well-spread colour per track id (golden-ratio hue steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((track_id * 0.618033988749895) % 1.0, 0.8, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_tracks(frames: np.ndarray, rows: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Copies of `frames` with each track row's box and id drawn; the target's boxes thick and labelled."""
    import cv2

    out = frames.copy()
    for (fi, tid, x1, y1, x2, y2, _), is_target in zip(rows, target):
        im = out[int(fi)]
        color = TARGET_COLOR if is_target else _color(int(tid))
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(im, p1, p2, color, TARGET_THICKNESS if is_target else BOX_THICKNESS)
        label = f"{int(tid)} target" if is_target else str(int(tid))
        cv2.putText(im, label, (p1[0] + 2, max(p1[1] - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, color, 1,
                    cv2.LINE_AA)
    return out


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, timeout: float = 600.0) -> None:
    """RGB uint8 frames (N, H, W, 3) -> H.264 MP4 (yuv420p, plays everywhere) through the bundled ffmpeg."""
    from pipeline.media import MediaError, ffmpeg_exe

    n, h, w = frames.shape[:3]
    args = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo",
            "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "pipe:", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)]
    proc = subprocess.run(args, input=np.ascontiguousarray(frames).tobytes(), capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise MediaError(f"{path}: ffmpeg could not write the overlay video: "
                         f"{proc.stderr.decode('utf-8', 'replace').strip()[-300:]}")
