"""Face crops with BlazeFace (mediapipe's bundled face_detection models), searched inside the target person.

Both BlazeFace models ship in the mediapipe wheel (checked offline): model_selection 0 = short range
(faces within ~2 m, i.e. large in the image, which a person crop makes them), 1 = full range (sparse).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.config import FacesConfig
from pipeline.weights import WeightsInfo
from pipeline.video.boxes import crop_padded, search_region, square_around

FACE_MODEL_FILES = {0: "face_detection_short_range.tflite", 1: "face_detection_full_range_sparse.tflite"}
MIN_REGION_SIDE = 16                   # px; mediapipe cannot find a face in a smaller search region


def mediapipe_module_file(module: str, filename: str) -> Path:
    import mediapipe

    return Path(mediapipe.__file__).parent / "modules" / module / filename


class FaceCropper:
    def __init__(self, fcfg: FacesConfig, person_margin: float) -> None:
        import mediapipe as mp

        from pipeline.weights import sha256_file

        self.cfg, self.person_margin = fcfg, person_margin
        path = mediapipe_module_file("face_detection", FACE_MODEL_FILES[fcfg.model_selection])
        self.detector = mp.solutions.face_detection.FaceDetection(
            model_selection=fcfg.model_selection, min_detection_confidence=fcfg.min_confidence)
        self.weights = WeightsInfo(pretrained=True, path=str(path), sha256=sha256_file(path),
                                   source=f"wheel (mediapipe {mp.__version__})")

    def close(self) -> None:
        self.detector.close()

    def not_found(self):
        s = self.cfg.crop_size
        return np.zeros((s, s, 3), np.uint8), np.zeros(4, np.float32), 0.0, False

    def crop(self, frame: np.ndarray, person_box: Optional[np.ndarray]):
        """-> (crop (S, S, 3) uint8, face box (4,) float32 frame px, score, found); zeros when no face.
        person_box None: search the whole frame."""
        import cv2

        s = self.cfg.crop_size
        h, w = frame.shape[:2]
        none = self.not_found()
        region = search_region(frame.shape, person_box, self.person_margin, MIN_REGION_SIDE)
        if region is None:
            return none
        x1, y1, x2, y2 = region
        res = self.detector.process(np.ascontiguousarray(frame[y1:y2, x1:x2]))
        if not res.detections:
            return none
        best = max(res.detections, key=lambda d: d.score[0])
        rb = best.location_data.relative_bounding_box
        rw, rh = x2 - x1, y2 - y1
        box = np.array([x1 + rb.xmin * rw, y1 + rb.ymin * rh,
                        x1 + (rb.xmin + rb.width) * rw, y1 + (rb.ymin + rb.height) * rh])
        box[[0, 2]] = np.clip(box[[0, 2]], 0, w)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, h)
        if box[2] <= box[0] or box[3] <= box[1]:
            return none
        patch = crop_padded(frame, square_around(box, self.cfg.margin))
        interp = cv2.INTER_AREA if patch.shape[0] > s else cv2.INTER_LINEAR
        crop = cv2.resize(patch, (s, s), interpolation=interp)
        return crop, box.astype(np.float32), float(best.score[0]), True
