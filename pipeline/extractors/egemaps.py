"""openSMILE eGeMAPSv02 acoustic parameters (offline `opensmile` wheel; no learned weights).

"egemaps":     the 88 functionals of the clip, one row spanning [0, clip duration].
"egemaps_lld": the 25 low-level descriptors per 10 ms frame, each row with its frame's [start, end] seconds.
Array `features` is float32; the column names are in the extractor metadata (`columns`).
Empty output (0 rows) is documented, not an error: audio too short for openSMILE to measure anything
(it would return an all-NaN row). A clip without audio (audio=None) raises a ValueError naming the clip.
"""
from __future__ import annotations

import hashlib
from typing import ClassVar, Optional

import numpy as np

from pipeline.audio.smile_stream import process_chunked
from pipeline.config import EGeMAPSConfig, ExtractorSettings
from pipeline.extractors.base import ClipFeatures, ClipInput, Extractor, WeightsInfo, register
from pipeline.spilled_audio import as_signal


class _OpenSmileExtractor(Extractor):
    family = "audio"
    needs = frozenset({"audio"})
    version = "1"
    feature_level: ClassVar[str]          # opensmile.FeatureLevel member name

    config_section = "egemaps"

    def __init__(self, section: EGeMAPSConfig, settings: ExtractorSettings, variant: Optional[str] = None) -> None:
        super().__init__(section, settings, variant)
        self.smile = None
        self.columns: list[str] = []
        self.opensmile_version = ""

    def params(self) -> dict:
        return {"feature_set": self.section.feature_set, "feature_level": self.feature_level,
                "opensmile": self.opensmile_version}

    def load(self) -> WeightsInfo:
        import opensmile

        fs = self.section.feature_set
        try:
            feature_set = opensmile.FeatureSet[fs]
        except KeyError:
            raise ValueError(f"{self.name}: unknown openSMILE feature set {fs!r}; "
                             f"known: {[m.name for m in opensmile.FeatureSet]}") from None
        self.smile = opensmile.Smile(feature_set=feature_set,
                                     feature_level=opensmile.FeatureLevel[self.feature_level])
        self.columns = list(self.smile.feature_names)
        self.opensmile_version = opensmile.__version__
        ident = f"{fs}:{self.feature_level}:opensmile {self.opensmile_version}"
        self.weights = WeightsInfo(pretrained=True, path=None, sha256=hashlib.sha256(ident.encode()).hexdigest(),
                                   source=f"opensmile {self.opensmile_version} (no weights)", learned=False)
        return self.weights

    def metadata(self) -> dict:
        return {**super().metadata(), "columns": self.columns}

    def _one(self, clip: ClipInput) -> ClipFeatures:
        if clip.audio is None:
            raise ValueError(f"{self.name}: clip {clip.clip_id!r} ({clip.path}) has no audio (no audio stream decoded)")
        audio = as_signal(clip.audio)      # a spilled long clip is read a chunk at a time
        if audio.ndim != 1:
            raise ValueError(f"{self.name}: clip {clip.clip_id!r} audio must be mono (S,), got shape {audio.shape}")
        # in chunks, not process_signal: that holds several copies of the whole clip (smile_stream.py)
        rows = process_chunked(self.smile, audio, clip.sample_rate,
                               int(round(self.section.chunk_seconds * clip.sample_rate)),
                               two_pass_samples=int(round(self.section.two_pass_seconds * clip.sample_rate)))
        measured = ~np.isnan(rows.values).all(axis=1)   # openSMILE measured nothing (process_signal: all-NaN)
        attrs = {"pretrained": True, "audio_seconds": round(len(audio) / clip.sample_rate, 4)}
        if not measured.any():
            attrs["empty_reason"] = f"audio too short for openSMILE ({len(audio)} samples)"
        return ClipFeatures({"features": rows.values[measured]}, rows.times[measured], attrs)

    def extract_batch(self, clips: list[ClipInput]) -> list[ClipFeatures]:
        if self.smile is None:
            raise RuntimeError(f"{self.name}: call load() before extract_batch()")
        return [self._one(c) for c in clips]


@register
class EGeMAPSFunctionals(_OpenSmileExtractor):
    name = "egemaps"
    feature_level = "Functionals"


@register
class EGeMAPSLowLevel(_OpenSmileExtractor):
    name = "egemaps_lld"
    feature_level = "LowLevelDescriptors"
