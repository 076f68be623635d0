"""Body keypoints with BlazePose (mediapipe.solutions.pose), on the target-person crop.

Only model_complexity=1 (pose_landmark_full.tflite) ships in the mediapipe wheel; complexity 0 (lite) and
2 (heavy) are downloaded by mediapipe at first use, which emocache never does, so they are refused unless
their file is already in place. Landmarks are mapped back to full-frame normalised coordinates:
x, y in 0..1 of the frame width/height; z on the same scale as x (mediapipe's convention), hip-centred.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from pipeline.config import PoseConfig
from pipeline.weights import WeightsInfo
from pipeline.video.boxes import search_region
from pipeline.video.faces import mediapipe_module_file
from pipeline.weights import MissingWeightsError

POSE_MODEL_FILES = {0: "pose_landmark_lite.tflite", 1: "pose_landmark_full.tflite", 2: "pose_landmark_heavy.tflite"}
N_LANDMARKS = 33
MIN_REGION_SIDE = 16                   # px; a smaller person crop holds no usable pose


class PoseEstimator:
    def __init__(self, pcfg: PoseConfig, person_margin: float) -> None:
        if pcfg.model_complexity not in POSE_MODEL_FILES:
            raise ValueError(f"pose: model_complexity must be 0, 1 or 2, got {pcfg.model_complexity}")
        path = mediapipe_module_file("pose_landmark", POSE_MODEL_FILES[pcfg.model_complexity])
        if not path.exists():
            raise MissingWeightsError(
                f"pose: model_complexity={pcfg.model_complexity} needs {path.name}, which the mediapipe wheel "
                f"does not ship (mediapipe would download it at run time; emocache never downloads). "
                f"Use extractors.video.pose.model_complexity: 1 (bundled), or place the file at {path}.")
        import mediapipe as mp

        from pipeline.weights import sha256_file

        self.cfg, self.person_margin = pcfg, person_margin
        # static_image_mode: sampled frames are far apart (and crops move), so no cross-frame tracking
        self.pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=pcfg.model_complexity,
                                           smooth_landmarks=False, enable_segmentation=False,
                                           min_detection_confidence=pcfg.min_detection_confidence)
        self.weights = WeightsInfo(pretrained=True, path=str(path), sha256=sha256_file(path),
                                   source=f"wheel (mediapipe {mp.__version__})")

    def close(self) -> None:
        self.pose.close()

    @staticmethod
    def not_found():
        return np.zeros((N_LANDMARKS, 3), np.float32), np.zeros(N_LANDMARKS, np.float32), False

    def estimate(self, frame: np.ndarray, person_box: Optional[np.ndarray]):
        """-> (xyz (33, 3) float32 full-frame normalised, visibility (33,) float32, found).
        person_box None: the whole frame."""
        h, w = frame.shape[:2]
        none = self.not_found()
        region = search_region(frame.shape, person_box, self.person_margin, MIN_REGION_SIDE)
        if region is None:
            return none
        x1, y1, x2, y2 = region
        cw, ch = x2 - x1, y2 - y1
        res = self.pose.process(np.ascontiguousarray(frame[y1:y2, x1:x2]))
        if res.pose_landmarks is None:
            return none
        lm = np.array([[p.x, p.y, p.z, p.visibility] for p in res.pose_landmarks.landmark], dtype=np.float64)
        xyz = np.column_stack([(x1 + lm[:, 0] * cw) / w, (y1 + lm[:, 1] * ch) / h, lm[:, 2] * cw / w])
        return xyz.astype(np.float32), lm[:, 3].astype(np.float32), True
