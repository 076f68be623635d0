"""The one interface every extractor implements: configure, load weights, batch in, tensors out.

An extractor never touches the store or ffmpeg: the runner decodes each clip once,
hands decoded inputs for a batch of clips to `extract_batch`, and commits what comes back.
If `extract_batch` raises, the runner retries clip by clip so one bad clip is recorded
in the failure table and the others still land.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np

from pipeline.config import ExtractorSettings, PipelineConfig
from pipeline.errors import UnknownNameError
from pipeline.weights import WeightsInfo, weights_label  # noqa: F401  (extractors import them from here)


@dataclass
class ClipInput:
    """Everything decoded for one clip; an extractor reads the parts named in its `needs`."""

    clip_id: str
    path: Optional[str] = None
    start: float = 0.0                       # segment start in the media file (s); times below are clip-relative
    end: Optional[float] = None
    audio: Optional[np.ndarray] = None       # (S,) float32 mono at `sample_rate`
    sample_rate: int = 16000
    frames: Optional[np.ndarray] = None      # (N, H, W, 3) uint8 RGB
    frame_times: Optional[np.ndarray] = None # (N,) seconds from clip start
    text: dict[str, Optional[str]] = field(default_factory=dict)
    annotation: dict[str, Any] = field(default_factory=dict)   # e.g. target box/time from the dataset
    upstream: dict[str, "ClipFeatures"] = field(default_factory=dict)  # outputs of extractors this one depends on


@dataclass
class ClipFeatures:
    """One clip's output: named arrays sharing the first (row) dimension T, and each row's time span."""

    arrays: dict[str, np.ndarray]
    times: np.ndarray                        # (T, 2) float64 start/end seconds from clip start
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.times = np.asarray(self.times, dtype=np.float64).reshape(-1, 2)
        t = self.times.shape[0]
        for name, a in self.arrays.items():
            if a.shape[0] != t:
                raise ValueError(f"array {name!r} has {a.shape[0]} rows but times has {t}")

    @property
    def n_rows(self) -> int:
        return int(self.times.shape[0])


class Extractor(ABC):
    name: ClassVar[str]                      # registry name, as listed in a dataset's `extractors`
    family: ClassVar[str]                    # 'audio' | 'text' | 'video': which store it writes
    needs: ClassVar[frozenset[str]]          # subset of {'audio', 'frames', 'text'}
    version: ClassVar[str] = "1"             # bump when code changes what the output is
    depends_on: ClassVar[tuple[str, ...]] = ()   # store keys whose rows this extractor consumes (e.g. tracks)
    config_section: ClassVar[Optional[str]] = None   # its `extractors.<section>` in params.yaml; None = `name`

    def __init__(self, section: Any, settings: ExtractorSettings, variant: Optional[str] = None) -> None:
        self.section = section               # its own params section only, never the whole config
        self.settings = settings
        self.variant = variant               # e.g. the text field for 'text'
        self.weights: Optional[WeightsInfo] = None

    @classmethod
    def section_of(cls, extractors: Any) -> Any:
        """What of params' `extractors:` this extractor reads: its own section, unless a subclass says more."""
        return getattr(extractors, cls.config_section or cls.name, None)

    # -- identity
    @property
    def key(self) -> str:
        """Store key: the name, plus the variant where one extractor class serves several outputs."""
        return f"{self.name}.{self.variant}" if self.variant else self.name

    @abstractmethod
    def params(self) -> dict:
        """The params that change the output (they enter the fingerprint)."""

    def output_params(self) -> dict:
        """params() plus the decode settings that change this extractor's input: the resampler for audio."""
        p = dict(self.params())
        if "audio" in self.needs:
            p["resampler"] = self.settings.media.resampler
        return p

    def fingerprint(self) -> str:
        if self.weights is None:
            raise RuntimeError(f"{self.key}: call load() before fingerprint()")
        blob = json.dumps(
            {"name": self.key, "version": self.version, "params": self.output_params(),
             "weights_sha256": self.weights.sha256, "pretrained": self.weights.pretrained},
            sort_keys=True, default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def metadata(self) -> dict:
        """What the store records beside the rows."""
        from pipeline.provenance import package_versions

        return {"extractor": self.key, "version": self.version, "params": self.output_params(),
                "weights": self.weights.as_dict() if self.weights else None,
                "pretrained": bool(self.weights and self.weights.pretrained),
                "fingerprint": self.fingerprint(),
                "versions": package_versions()}   # the runner keeps the versions the first rows were made with

    # -- work
    @abstractmethod
    def load(self) -> WeightsInfo:
        """Load models/weights once; set and return self.weights."""

    @abstractmethod
    def extract_batch(self, clips: list[ClipInput]) -> list[ClipFeatures]:
        """One ClipFeatures per input clip, in order. Raise on a bad clip."""


EXTRACTORS: dict[str, type[Extractor]] = {}


def register(cls: type[Extractor]) -> type[Extractor]:
    EXTRACTORS[cls.name] = cls
    return cls


def build_extractor(cfg: PipelineConfig, spec: str) -> Extractor:
    """`spec` is a registry name, optionally with a variant: 'vggish', 'text.transcript'."""
    from pipeline.extractors import load_all  # registers the built-in extractors

    load_all()
    name, _, variant = spec.partition(".")
    if name not in EXTRACTORS:
        raise UnknownNameError(f"unknown extractor {spec!r}; known: {', '.join(sorted(EXTRACTORS))}")
    cls = EXTRACTORS[name]
    return cls(cls.section_of(cfg.extractors), cfg.extractor_settings(), variant or None)
