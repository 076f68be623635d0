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

from emocache.config import Config


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


@dataclass
class WeightsInfo:
    pretrained: bool
    path: Optional[str] = None
    sha256: Optional[str] = None
    source: str = ""                         # e.g. 'weights dir', 'torch hub cache', 'wheel', 'random init (allowed in params)'
    learned: bool = True                     # False: nothing to learn (eGeMAPS is fixed formulas), so "pretrained" says nothing

    def as_dict(self) -> dict:
        return {"pretrained": self.pretrained, "path": self.path, "sha256": self.sha256, "source": self.source,
                "learned": self.learned}

    @property
    def label(self) -> str:
        return weights_label(self.pretrained, self.learned)


def weights_label(pretrained: Optional[bool], learned: Optional[bool] = True) -> str:
    """How people are told what an extractor's weights are: pretrained, random init, or none at all."""
    if learned is False:
        return "no learned weights"
    return {True: "pretrained", False: "pretrained: false (random init)"}.get(pretrained, "-")


class Extractor(ABC):
    name: ClassVar[str]                      # registry name, as listed in a dataset's `extractors`
    family: ClassVar[str]                    # 'audio' | 'text' | 'video': which store it writes
    needs: ClassVar[frozenset[str]]          # subset of {'audio', 'frames', 'text'}
    version: ClassVar[str] = "1"             # bump when code changes what the output is
    depends_on: ClassVar[tuple[str, ...]] = ()   # store keys whose rows this extractor consumes (e.g. tracks)

    def __init__(self, cfg: Config, variant: Optional[str] = None) -> None:
        self.cfg = cfg
        self.variant = variant               # e.g. the text field for 'text'
        self.weights: Optional[WeightsInfo] = None

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
            p["resampler"] = self.cfg.media.resampler
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


def build_extractor(cfg: Config, spec: str) -> Extractor:
    """`spec` is a registry name, optionally with a variant: 'vggish', 'text.transcript'."""
    from pipeline.extractors import load_all  # registers the built-in extractors

    load_all()
    name, _, variant = spec.partition(".")
    if name not in EXTRACTORS:
        raise KeyError(f"unknown extractor {spec!r}; known: {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[name](cfg, variant or None)
