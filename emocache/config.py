"""The one typed view of params.yaml, composed from each layer's own section types.

`pipeline.config` owns store, weights, runtime, media, datasets and extractors; `heads.config` owns
experiments, training and the heads; this module adds the user-facing commands (predict, report) and
loads params.yaml. Every tunable number lives in params.yaml; code reads it only through `Config`.
Unknown keys are errors (a typo in params.yaml must not be silently ignored).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import yaml
from pydantic import Field

from heads.config import *  # noqa: F401,F403  (one import site for callers: the whole typed config)
from heads.config import HeadsConfig
from pipeline.config import *  # noqa: F401,F403
from pipeline.config import Strict


# ---------------------------------------------------------------- predict / report (user-facing commands)
class VADConfig(Strict):
    """Silero VAD (the real-world MER system segments utterances with it); names follow silero's get_speech_timestamps."""
    threshold: float = 0.5                  # speech probability above which a 32 ms window is speech
    min_speech_ms: int = 250                # shorter speech bursts are dropped
    min_silence_ms: int = 100               # shorter pauses do not split an utterance
    speech_pad_ms: int = 30                 # each segment is padded by this on both sides
    max_segment_s: float = 30.0             # longer speech is split (silero max_speech_duration_s)


class PredictConfig(Strict):
    vad: VADConfig = Field(default_factory=VADConfig)
    # VAD segments shorter than this are widened around their centre: VGGish needs 0.96 s for one row
    min_segment_s: float = 1.0
    out_dir: str = "predictions"            # `emocache predict` writes <video>_<run>.json/.csv here


class ReportConfig(Strict):
    out: str = "report.html"
    dpi: int = 90                           # PNG resolution of the inline plots
    figure_width_in: float = 7.0
    max_pr_classes: int = 12                # PR curves of at most this many classes per experiment
    dvc_timeout_s: float = 120.0            # `dvc metrics diff` subprocess limit


class Config(HeadsConfig):
    predict: PredictConfig = Field(default_factory=PredictConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)


def load_config(path: str | os.PathLike = "params.yaml", overrides: Optional[dict] = None) -> Config:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"params file not found: {path} (run from the project root or pass --params)")
    raw = yaml.safe_load(path.read_text()) or {}
    if overrides:
        raw = _deep_merge(raw, overrides)
    raw.setdefault("base_dir", str(path.resolve().parent))
    return Config.model_validate(raw)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
