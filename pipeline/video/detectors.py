"""Person detectors: frames in, per-frame (K, 5) float32 [x1, y1, x2, y2, score] in frame pixels out.

- "yolo": ultralytics YOLO (class 0 = person), weights file from the weights dir; never downloaded.
- "hog": OpenCV's HOG + linear SVM people detector (Dalal & Triggs); its SVM ships inside OpenCV, so it
  needs no weight file. Much weaker than YOLO, and trained on full-body pedestrians: it misses close-ups.
- "face": a person box estimated around each face BlazeFace (full range, bundled in mediapipe) finds:
  detector.face_box_* face sizes wide/above/below, clipped to the frame. Not a body detection: it suits the
  close and medium shots of film/interview clips, and misses people whose face is not visible.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from emocache.config import Config, DetectorConfig
from pipeline.extractors.base import WeightsInfo
from pipeline.video.boxes import nms
from pipeline.weights import MissingWeightsError, find_weights, missing_message, verify

EMPTY = np.zeros((0, 5), dtype=np.float32)
YOLO_HOW_TO_GET = ("Get it from the ultralytics assets release (e.g. yolov5su.pt) on a machine with internet "
                   "and copy it there; or, with no weight file, set extractors.video.detector.kind: hog "
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


class YoloPersonDetector:
    def __init__(self, cfg: Config, device) -> None:
        dcfg = cfg.extractors.video.detector
        path = find_weights(cfg, dcfg.weights_file)
        if path is None:
            # A randomly initialised detector finds no people, so there is no untrained fallback here.
            raise MissingWeightsError(missing_message(cfg, "tracks (YOLO person detector)", dcfg.weights_file,
                                                      YOLO_HOW_TO_GET))
        digest = verify(cfg, path)
        from ultralytics import YOLO  # ultralytics checkpoints are pickled modules: it loads them itself

        self.cfg = dcfg
        self.device = device
        self.model = YOLO(str(path))
        self.quantize = "fp16" if device.type == "cuda" and cfg.runtime.precision == "fp16" else "fp32"
        self.weights = WeightsInfo(pretrained=True, path=str(path), sha256=digest, source="weights dir")

    def detect(self, frames: np.ndarray) -> list[np.ndarray]:
        c = self.cfg
        out: list[np.ndarray] = []
        for i in range(0, len(frames), c.batch_frames):
            chunk = [np.ascontiguousarray(f[:, :, ::-1]) for f in frames[i:i + c.batch_frames]]  # YOLO wants BGR
            results = self.model.predict(chunk, classes=[0], conf=c.conf, iou=c.iou, imgsz=c.imgsz,
                                         device=self.device, quantize=self.quantize, verbose=False)
            for r in results:
                b = r.boxes
                if b is None or len(b) == 0:
                    out.append(EMPTY)
                    continue
                xyxy = b.xyxy.cpu().numpy().astype(np.float32)
                conf = b.conf.cpu().numpy().astype(np.float32).reshape(-1, 1)
                out.append(np.concatenate([xyxy, conf], axis=1))
        return out


def build_detector(cfg: Config, device) -> PersonDetector:
    kind = cfg.extractors.video.detector.kind
    if kind == "hog":
        return HogPersonDetector(cfg.extractors.video.detector)
    if kind == "face":
        return FaceAnchoredPersonDetector(cfg.extractors.video.detector)
    return YoloPersonDetector(cfg, device)
