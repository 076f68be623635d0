"""MOTChallenge export of track rows: frame,id,bb_left,bb_top,bb_width,bb_height,conf,-1,-1,-1 (1-based frames)."""
from __future__ import annotations

import csv
import os
from typing import Optional

import numpy as np


def mot_rows(features: np.ndarray, target: Optional[np.ndarray] = None) -> list[list]:
    """Track rows (R, 7) [frame_index, track_id, x1, y1, x2, y2, score] -> MOT rows sorted by frame, id."""
    f = np.asarray(features, dtype=np.float64).reshape(-1, 7)
    if target is not None:
        f = f[np.asarray(target, dtype=bool)]
    f = f[np.lexsort((f[:, 1], f[:, 0]))]
    out = []
    for fi, tid, x1, y1, x2, y2, score in f:
        conf = -1.0 if np.isnan(score) else round(float(score), 4)
        out.append([int(fi) + 1, int(tid), round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2),
                    conf, -1, -1, -1])
    return out


def write_mot_csv(path: str | os.PathLike, features: np.ndarray, target: Optional[np.ndarray] = None) -> int:
    """Write one clip's tracks (all, or only the target's rows) as a MOTChallenge text file; returns rows."""
    rows = mot_rows(features, target)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return len(rows)


def read_mot_csv(path: str | os.PathLike) -> np.ndarray:
    """A MOTChallenge text file back to track rows (R, 7) [frame_index (0-based), track_id, x1, y1, x2, y2, score];
    a score of -1 (none recorded) reads as NaN."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for n, r in enumerate(csv.reader(fh), 1):
            if not r:
                continue
            if len(r) < 7:
                raise ValueError(f"{path}: line {n}: {len(r)} fields, a MOTChallenge row has 10 "
                                 f"(frame,id,bb_left,bb_top,bb_width,bb_height,conf,x,y,z)")
            fi, tid, x, y, w, h, conf = (float(v) for v in r[:7])
            rows.append([fi - 1, tid, x, y, x + w, y + h, np.nan if conf == -1 else conf])
    return np.asarray(rows, dtype=np.float32).reshape(-1, 7)
