"""Swin-T for per-frame features (pooled 768-d); pipeline.video.frame_encoder batches it.

Weights, offline only, first found wins:
1. weights dir / torch hub cache: `swin.weights_file`, a state dict in timm naming (also the original
   Microsoft checkpoint, {'model': ...}, which timm's filter converts) or torchvision naming (swin_t);
2. the Hugging Face cache, if timm's own weights (e.g. timm/swin_tiny_patch4_window7_224.ms_in1k) are there;
3. random init, only when params allow it ('swin' in weights.allow_untrained): pretrained: false.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.config import ExtractorSettings, SwinConfig
from pipeline.weights import WeightsInfo
from pipeline.weights import MissingWeightsError, find_weights, missing_message, untrained_allowed, verify

RANDOM_INIT_SEED = 0        # random-init runs are reproducible, so their cache stays consistent
SWIN_HOW_TO_GET = ("Save a timm or torchvision Swin-T state dict there, e.g. on a machine with internet: "
                   "torch.save(timm.create_model('swin_tiny_patch4_window7_224', pretrained=True).state_dict(), "
                   "'swin_tiny_patch4_window7_224.pth').")


def _unwrap(sd: dict) -> dict:
    for key in ("model", "state_dict", "model_state"):
        if key in sd and isinstance(sd[key], dict):
            return sd[key]
    return sd


def _hf_cached_weights(hf_hub_id: Optional[str]) -> Optional[Path]:
    if not hf_hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for fname in ("model.safetensors", "pytorch_model.bin"):
        p = try_to_load_from_cache(hf_hub_id, fname)
        if isinstance(p, str) and Path(p).exists():
            return Path(p)
    return None


def _load_file(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return _unwrap(torch.load(path, map_location="cpu", weights_only=True))


def build_swin(scfg: SwinConfig, settings: ExtractorSettings):
    """(model returning pooled features (N, 768), WeightsInfo)."""
    import timm
    import torch

    path = find_weights(settings, scfg.weights_file)
    source = "weights dir"
    if path is None:
        pretrained_cfg = timm.models.get_pretrained_cfg(scfg.model)
        path = _hf_cached_weights(pretrained_cfg.hf_hub_id if pretrained_cfg else None)
        source = "Hugging Face cache"
    if path is None:
        if not untrained_allowed(settings, "swin"):
            raise MissingWeightsError(missing_message(settings, "swin", scfg.weights_file, SWIN_HOW_TO_GET))
        torch.manual_seed(RANDOM_INIT_SEED)
        model = timm.create_model(scfg.model, pretrained=False, num_classes=0)
        return model.eval(), WeightsInfo(pretrained=False, source="random init (allowed in params)")
    digest = verify(settings, path)
    model = timm.create_model(scfg.model, pretrained=False, num_classes=0)
    sd = _load_file(path)
    if any(k.startswith("features.") for k in sd):  # torchvision naming: use torchvision's own Swin-T
        import torchvision

        if scfg.model != "swin_tiny_patch4_window7_224":
            raise ValueError(f"swin: {path} is a torchvision state dict; only swin_t (tiny) is supported that way")
        model = torchvision.models.swin_t(weights=None)
        model.head = torch.nn.Identity()
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    else:
        from timm.models.swin_transformer import checkpoint_filter_fn

        sd = {k: v for k, v in checkpoint_filter_fn(sd, model).items() if not k.startswith("head.")}
    model.load_state_dict(sd, strict=True)
    return model.eval(), WeightsInfo(pretrained=True, path=str(path), sha256=digest, source=source)
