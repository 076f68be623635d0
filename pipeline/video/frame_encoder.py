"""Run an image model over sampled frames (or person crops) of many clips at once.

Preprocessing is per image (resize to input_size, ImageNet normalisation), so an image's features do not
depend on which other images share its forward pass: clips can be concatenated and chunked freely.
"""
from __future__ import annotations

import numpy as np

from pipeline.weights import WeightsInfo

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_for_model(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    """uint8 RGB of any size -> (size, size, 3): 'squash' the whole image, or 'center_crop' after a short-side resize."""
    import cv2

    h, w = image.shape[:2]
    if mode == "center_crop":
        scale = size / min(h, w)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (nw, nh), interpolation=interp)
        x0, y0 = (nw - size) // 2, (nh - size) // 2
        return image[y0:y0 + size, x0:x0 + size]
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


class FrameEncoder:
    """`section` (SwinConfig / MobileNetConfig) gives batch_frames, input_size and resize."""

    def __init__(self, model, weights: WeightsInfo, section, device, precision: str) -> None:
        self.cfg, self.weights, self.device, self.precision = section, weights, device, precision
        self.model = model.eval().to(device)

    def encode(self, images: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 images (any sizes) -> (N, D) float32, in chunks of batch_frames."""
        import torch

        from pipeline.device import autocast

        if not images:
            raise ValueError("no images to encode")
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        out = []
        for i in range(0, len(images), self.cfg.batch_frames):
            x = np.stack([resize_for_model(im, self.cfg.input_size, self.cfg.resize)
                          for im in images[i:i + self.cfg.batch_frames]])
            t = torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2).float().div_(255)
            with torch.inference_mode(), autocast(self.device, self.precision):
                out.append(self.model((t - mean) / std).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)
