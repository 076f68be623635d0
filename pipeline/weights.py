"""Find weight files offline, verify them, and say clearly what is missing and where it goes."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from pipeline.config import ExtractorSettings
from pipeline.errors import WeightsError
from pipeline.weights_catalog import entry_for_file, fetch_command, torch_hub_checkpoint_dir


class MissingWeightsError(WeightsError, FileNotFoundError):
    """A required weight file is not on this machine (nothing is downloaded at run time)."""


class WeightsHashMismatch(WeightsError, ValueError):
    """A weight file whose sha256 is not the one pinned in params (weights.sha256)."""


@dataclass
class WeightsInfo:
    """Which weights an extractor runs with; enters its fingerprint and every output's metadata."""

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


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def candidate_dirs(settings: ExtractorSettings, extra: Iterable[Path] = ()) -> list[Path]:
    return [settings.path(settings.weights.resolved_dir()), *extra, torch_hub_checkpoint_dir()]


def find_weights(settings: ExtractorSettings, filename: str, extra_dirs: Iterable[Path] = ()) -> Optional[Path]:
    """First existing `filename` in: the weights dir, any extra dirs, the torch hub cache. Absolute paths as given."""
    p = Path(filename)
    if p.is_absolute():
        return p if p.exists() else None
    for d in candidate_dirs(settings, extra_dirs):
        if (d / filename).exists():
            return d / filename
    return None


def verify(settings: ExtractorSettings, path: Path) -> str:
    """sha256 of `path`; raises if params.yaml pins a different hash for this file name."""
    digest = sha256_file(path)
    expected = settings.weights.sha256.get(path.name)
    if expected and expected.lower() != digest:
        raise WeightsHashMismatch(f"{path}: sha256 {digest} does not match weights.sha256[{path.name!r}] = {expected}")
    return digest


def missing_message(settings: ExtractorSettings, extractor: str, filename: str, how_to_get: str = "") -> str:
    dirs = "\n".join(f"  - {d}" for d in candidate_dirs(settings))
    msg = (f"{extractor}: weight file {filename!r} not found. Looked in:\n{dirs}\n"
           f"Put the file in the weights directory (params.yaml weights.dir, or env EMOCACHE_WEIGHTS).")
    known = entry_for_file(filename)
    if known is not None:   # the one command that gets it, on a machine with internet
        msg += f"\nOn a machine with internet: `{fetch_command(known)}` (source {known.source}, {known.pin_text()})."
    if how_to_get:
        msg += f"\n{how_to_get}"
    msg += (f"\nTo run {extractor} with random (untrained) weights instead, add it to weights.allow_untrained "
            f"in params.yaml; every output is then marked pretrained: false.")
    return msg


def untrained_allowed(settings: ExtractorSettings, extractor: str) -> bool:
    return extractor in settings.weights.allow_untrained
