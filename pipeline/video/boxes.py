"""Box arithmetic in frame pixels: (x1, y1, x2, y2), x to the right, y down."""
from __future__ import annotations

import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box `a` (4,) against boxes `b` (K, 4) -> (K,)."""
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    a = np.asarray(a, dtype=np.float64)
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    area_a = max(a[2] - a[0], 0) * max(a[3] - a[1], 0)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def grow(box, margin: float, width: int, height: int) -> np.ndarray:
    """Box grown by `margin` x its size on every side, clipped to the frame; integer pixels."""
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    out = np.array([np.floor(x1 - dx), np.floor(y1 - dy), np.ceil(x2 + dx), np.ceil(y2 + dy)])
    out[[0, 2]] = np.clip(out[[0, 2]], 0, width)
    out[[1, 3]] = np.clip(out[[1, 3]], 0, height)
    return out.astype(np.int64)


def search_region(frame_shape: tuple, person_box, margin: float, min_side: int):
    """(x1, y1, x2, y2) ints where a per-frame model looks: the person box grown by `margin` (whole frame
    when there is no person box); None when that region is smaller than `min_side` on a side."""
    h, w = frame_shape[:2]
    region = np.array([0, 0, w, h]) if person_box is None else grow(person_box, margin, w, h)
    x1, y1, x2, y2 = (int(v) for v in region)
    if x2 - x1 < min_side or y2 - y1 < min_side:
        return None
    return x1, y1, x2, y2


def square_around(box, margin: float) -> np.ndarray:
    """Square box centred on `box`, side = longer side x (1 + 2*margin); may extend past the frame."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(x2 - x1, y2 - y1) * (1 + 2 * margin) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half])


def crop_padded(frame: np.ndarray, box) -> np.ndarray:
    """Pixels of `frame` inside integer `box`; parts outside the frame are black (keeps the crop's geometry)."""
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    out = np.zeros((max(y2 - y1, 1), max(x2 - x1, 1), frame.shape[2]), dtype=frame.dtype)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = frame[sy1:sy2, sx1:sx2]
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best score first."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[iou(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
