"""Person detectors: frames in, per-frame (K, 5) float32 [x1, y1, x2, y2, score] in frame pixels out.

- "yolo": YOLO (detector.classes, person by default), weights file from the weights dir; never downloaded.
  Original YOLOv5 release checkpoints run on pipeline.video.yolov5 (no yolov5 repository code, allow-listed
  unpickling); ultralytics-format ones through ultralytics.YOLO.
- "auto": yolo when the YOLO weights file resolves, else face (resolve_kind says which and why).
- "hog": OpenCV's HOG + linear SVM people detector (Dalal & Triggs); its SVM ships inside OpenCV, so it
  needs no weight file. Much weaker than YOLO, and trained on full-body pedestrians: it misses close-ups.
- "face": a person box estimated around each face BlazeFace (full range, bundled in mediapipe) finds:
  detector.face_box_* face sizes wide/above/below, clipped to the frame. Not a body detection: it suits the
  close and medium shots of film/interview clips, and misses people whose face is not visible.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np

from pipeline.config import DetectorConfig, ExtractorSettings
from pipeline.weights import WeightsInfo
from pipeline.video.boxes import nms
from pipeline.weights import MissingWeightsError, find_weights, missing_message, verify

EMPTY = np.zeros((0, 5), dtype=np.float32)
EMPTY_LABELED = np.zeros((0, 6), dtype=np.float32)
MIN_STRIDE = 32                                  # the original letterboxes to multiples of max(stride, 32)
YOLO_HOW_TO_GET = ("Get an original YOLOv5 release checkpoint (yolov5n/s/m/l/x.pt, github.com/ultralytics/yolov5 "
                   "releases v6.1-v7.0, AGPL-3.0) or an ultralytics one (e.g. yolov5su.pt) on a machine with "
                   "internet and copy it there; or, with no weight file, set extractors.video.detector.kind: hog "
                   "(OpenCV's built-in full-body people detector) or face (person boxes around "
                   "BlazeFace faces, for close and medium shots).")


class PersonDetector(Protocol):
    weights: WeightsInfo

    def detect(self, frames: np.ndarray) -> list[np.ndarray]:
        """frames (N, H, W, 3) uint8 RGB -> N arrays (K, 5) float32 [x1, y1, x2, y2, score]."""


class HogPersonDetector:
    def __init__(self, cfg: DetectorConfig) -> None:
        import cv2

        self.cfg = cfg
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.weights = WeightsInfo(pretrained=True, path=None, sha256=None,
                                   source=f"OpenCV {cv2.__version__} built-in HOG people SVM")

    def detect_one(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        c = self.cfg
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)  # HOG uses gradients only; gray is cheaper
        if c.hog_upscale != 1.0:
            gray = cv2.resize(gray, None, fx=c.hog_upscale, fy=c.hog_upscale, interpolation=cv2.INTER_LINEAR)
        rects, weights = self.hog.detectMultiScale(
            gray, hitThreshold=c.hog_hit_threshold, winStride=(c.hog_win_stride, c.hog_win_stride),
            padding=(8, 8), scale=c.hog_scale)
        if len(rects) == 0:
            return EMPTY
        r = np.asarray(rects, dtype=np.float32) / c.hog_upscale
        boxes = np.column_stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]])
        scores = np.asarray(weights, dtype=np.float32).reshape(-1)
        # HOG's own grouping leaves nested boxes; the same IoU NMS as YOLO's removes them.
        keep = nms(boxes, scores, c.iou)
        return np.column_stack([boxes[keep], scores[keep]]).astype(np.float32)

    def detect(self, frames: np.ndarray) -> list[np.ndarray]:
        return [self.detect_one(f) for f in frames]


class FaceAnchoredPersonDetector:
    def __init__(self, cfg: DetectorConfig) -> None:
        import mediapipe as mp

        from pipeline.video.faces import FACE_MODEL_FILES, mediapipe_module_file
        from pipeline.weights import sha256_file

        self.cfg = cfg
        full_range = 1  # several faces, near and far (up to ~5 m), in one frame
        path = mediapipe_module_file("face_detection", FACE_MODEL_FILES[full_range])
        self.detector = mp.solutions.face_detection.FaceDetection(model_selection=full_range,
                                                                  min_detection_confidence=cfg.conf)
        self.weights = WeightsInfo(pretrained=True, path=str(path), sha256=sha256_file(path),
                                   source=f"wheel (mediapipe {mp.__version__}), person box from face box")

    def detect_one(self, frame: np.ndarray) -> np.ndarray:
        c = self.cfg
        h, w = frame.shape[:2]
        res = self.detector.process(np.ascontiguousarray(frame))
        out = []
        for d in res.detections or []:
            rb = d.location_data.relative_bounding_box
            fx, fy, fw, fh = rb.xmin * w, rb.ymin * h, rb.width * w, rb.height * h
            if fw <= 0 or fh <= 0:
                continue
            cx = fx + fw / 2
            box = [cx - fw * c.face_box_width / 2, fy - fh * c.face_box_above,
                   cx + fw * c.face_box_width / 2, fy + fh * (1 + c.face_box_below)]
            out.append([min(max(box[0], 0), w), min(max(box[1], 0), h), min(max(box[2], 0), w),
                        min(max(box[3], 0), h), float(d.score[0])])
        return np.asarray(out, dtype=np.float32).reshape(-1, 5)

    def detect(self, frames: np.ndarray) -> list[np.ndarray]:
        return [self.detect_one(f) for f in frames]


def resolve_kind(d: DetectorConfig, settings: ExtractorSettings) -> tuple[str, str]:
    """(detector kind that runs, why): `auto` is yolo when the YOLO weights file resolves, else face."""
    if d.kind != "auto":
        return d.kind, "set in params"
    path = find_weights(settings, d.weights_file)
    if path is not None:
        return "yolo", f"auto: {path} found"
    return "face", f"auto: {d.weights_file} not found in the weights dirs"


class _OriginalYoloV5:
    """An original YOLOv5 release checkpoint on our rebuilt network (pipeline.video.yolov5)."""

    def __init__(self, path: Path, digest: str, dcfg: DetectorConfig, settings: ExtractorSettings, device) -> None:
        from pipeline.video.yolov5 import build_network
        from pipeline.video.yolov5_checkpoint import load_converted

        conv, cached = load_converted(path, digest, settings.path(dcfg.converted_dir))
        self.names = list(conv["names"])
        self.stride = int(max(conv["stride"].max().item(), MIN_STRIDE))
        if dcfg.imgsz % self.stride:
            raise ValueError(f"{path}: detector.imgsz {dcfg.imgsz} is not a multiple of the model's stride "
                             f"{self.stride}")
        self.half = device.type == "cuda" and dcfg.half
        self.net = build_network(conv, str(path)).to(device)
        if self.half:
            self.net.half()
        self.device = device
        self.source = f"weights dir (original YOLOv5{', converted copy reused' if cached else ', converted now'})"

    def predict(self, frames: list[np.ndarray], c: DetectorConfig, class_ids: Optional[list[int]]) -> list[np.ndarray]:
        """Same-size RGB frames -> (K, 6) [x1, y1, x2, y2, score, class] in frame pixels each."""
        import torch

        from pipeline.video.yolov5 import letterbox, nms, scale_back

        h, w = frames[0].shape[:2]
        x = torch.from_numpy(np.stack([letterbox(f, c.imgsz, self.stride) for f in frames])).to(self.device)
        x = x.permute(0, 3, 1, 2).contiguous()
        x = (x.half() if self.half else x.float()) / 255
        classes = torch.tensor(class_ids, dtype=torch.float32) if class_ids is not None else None
        with torch.inference_mode():
            pred = self.net(x)
        return [scale_back(d, h, w, c.imgsz, self.stride)
                for d in nms(pred, c.conf, c.iou, classes, c.max_det, c.max_nms)]


class _UltralyticsYolo:
    """An ultralytics-format checkpoint (yolov5su.pt, yolov8n.pt, ...): ultralytics loads and runs it."""

    def __init__(self, path: Path, dcfg: DetectorConfig, device) -> None:
        from ultralytics import YOLO

        self.model = YOLO(str(path))
        names = self.model.names
        self.names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
        self.half = device.type == "cuda" and dcfg.half
        self.device = device
        self.source = "weights dir (ultralytics)"

    def predict(self, frames: list[np.ndarray], c: DetectorConfig, class_ids: Optional[list[int]]) -> list[np.ndarray]:
        chunk = [np.ascontiguousarray(f[:, :, ::-1]) for f in frames]  # ultralytics wants BGR
        results = self.model.predict(chunk, classes=class_ids, conf=c.conf, iou=c.iou, imgsz=c.imgsz,
                                     max_det=c.max_det, device=self.device,
                                     quantize="fp16" if self.half else "fp32", verbose=False)
        out = []
        for r in results:
            b = r.boxes
            if b is None or len(b) == 0:
                out.append(EMPTY_LABELED)
                continue
            out.append(np.concatenate([b.xyxy.cpu().numpy(), b.conf.cpu().numpy().reshape(-1, 1),
                                       b.cls.cpu().numpy().reshape(-1, 1)], axis=1).astype(np.float32))
        return out


class YoloPersonDetector:
    """YOLO on frames: original YOLOv5 release checkpoints on our network, ultralytics ones via ultralytics.

    Frames of one size (one clip, or several clips of the same size) go through in batch_frames batches."""

    def __init__(self, dcfg: DetectorConfig, settings: ExtractorSettings, device) -> None:
        from pipeline.video.yolov5_checkpoint import CheckpointError, checkpoint_format, converted_path

        path = find_weights(settings, dcfg.weights_file)
        if path is None:
            # A randomly initialised detector finds no people, so there is no untrained fallback here.
            raise MissingWeightsError(missing_message(settings, "tracks (YOLO person detector)", dcfg.weights_file,
                                                      YOLO_HOW_TO_GET))
        digest = verify(settings, path)   # a pinned sha256 is checked before the file is parsed
        self.cfg = dcfg
        if converted_path(settings.path(dcfg.converted_dir), digest).exists() or checkpoint_format(path) == "yolov5":
            self.backend = _OriginalYoloV5(path, digest, dcfg, settings, device)
        else:
            self.backend = _UltralyticsYolo(path, dcfg, device)
        self.names = self.backend.names
        if dcfg.classes is None:
            self.class_ids = None
        else:
            unknown = [n for n in dcfg.classes if n not in self.names]
            if unknown:
                raise CheckpointError(f"{path}: detector.classes names {unknown} which this checkpoint does not "
                                      f"have; its {len(self.names)} classes: {', '.join(self.names)}")
            self.class_ids = [self.names.index(n) for n in dcfg.classes]
        self.weights = WeightsInfo(pretrained=True, path=str(path), sha256=digest, source=self.backend.source)

    def detect_labeled(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """RGB frames (any sizes) -> (K, 6) float32 [x1, y1, x2, y2, score, class index] each."""
        out: list[Optional[np.ndarray]] = [None] * len(frames)
        by_size: dict[tuple, list[int]] = {}
        for i, f in enumerate(frames):
            by_size.setdefault(f.shape[:2], []).append(i)
        for idx in by_size.values():   # one letterbox shape per batch, so batching changes no output
            for j in range(0, len(idx), self.cfg.batch_frames):
                part = idx[j:j + self.cfg.batch_frames]
                for i, d in zip(part, self.backend.predict([frames[i] for i in part], self.cfg, self.class_ids)):
                    out[i] = d.astype(np.float32).reshape(-1, 6)
        return out

    def detect(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [d[:, :5] for d in self.detect_labeled(frames)]


def labeled(detector: PersonDetector, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(K, 6) detections with class index from any detector (hog/face boxes are all class 0, person)."""
    if hasattr(detector, "detect_labeled"):
        return detector.detect_labeled(frames)
    return [np.column_stack([d, np.zeros(len(d), np.float32)]) for d in detector.detect(frames)]


def class_names(detector: PersonDetector) -> list[str]:
    return list(getattr(detector, "names", ["person"]))


def build_detector(dcfg: DetectorConfig, settings: ExtractorSettings, device) -> PersonDetector:
    kind, _ = resolve_kind(dcfg, settings)
    if kind == "hog":
        return HogPersonDetector(dcfg)
    if kind == "face":
        return FaceAnchoredPersonDetector(dcfg)
    return YoloPersonDetector(dcfg, settings, device)
