"""Find weight files offline, verify them, and say clearly what is missing and where it goes."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Optional

from emocache.config import Config
from pipeline.weights_catalog import entry_for_file, fetch_command, torch_hub_checkpoint_dir


class MissingWeightsError(FileNotFoundError):
    """A required weight file is not on this machine (nothing is downloaded at run time)."""


class WeightsHashMismatch(ValueError):
    pass


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def candidate_dirs(cfg: Config, extra: Iterable[Path] = ()) -> list[Path]:
    return [cfg.path(cfg.weights.resolved_dir()), *extra, torch_hub_checkpoint_dir()]


def find_weights(cfg: Config, filename: str, extra_dirs: Iterable[Path] = ()) -> Optional[Path]:
    """First existing `filename` in: the weights dir, any extra dirs, the torch hub cache. Absolute paths as given."""
    p = Path(filename)
    if p.is_absolute():
        return p if p.exists() else None
    for d in candidate_dirs(cfg, extra_dirs):
        if (d / filename).exists():
            return d / filename
    return None


def verify(cfg: Config, path: Path) -> str:
    """sha256 of `path`; raises if params.yaml pins a different hash for this file name."""
    digest = sha256_file(path)
    expected = cfg.weights.sha256.get(path.name)
    if expected and expected.lower() != digest:
        raise WeightsHashMismatch(f"{path}: sha256 {digest} does not match weights.sha256[{path.name!r}] = {expected}")
    return digest


def missing_message(cfg: Config, extractor: str, filename: str, how_to_get: str = "") -> str:
    dirs = "\n".join(f"  - {d}" for d in candidate_dirs(cfg))
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


def untrained_allowed(cfg: Config, extractor: str) -> bool:
    return extractor in cfg.weights.allow_untrained
