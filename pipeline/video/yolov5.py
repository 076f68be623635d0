"""The original YOLOv5 (v6.x-v7.0) detector, rebuilt: ultralytics' own YOLOv5 config and modules for layers
0-23, a small anchor-based Detect head of ours for the last layer, and the original pre/post-processing.

Matches ultralytics/yolov5 v7.0 `detect.py`: letterbox to `imgsz` (minimal padding to a stride multiple,
grey 114, cv2 INTER_LINEAR), RGB / 255, decode xy = (2 sigmoid - 0.5 + grid) * stride,
wh = (2 sigmoid)^2 * anchor, score = objectness x class probability (best class per box), class-aware NMS,
boxes scaled back to the image and clipped. NMS is torchvision's.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

LETTERBOX_FILL = 114           # grey the original pads with
SCALE_NAMES = "nsmlx"          # ultralytics' yolov5.yaml scales


class AnchorDetect(nn.Module):
    """YOLOv5's anchor-based head: per level a 1x1 conv to na x (5 + nc) channels, decoded to input pixels.

    Parameter names (m.0.weight, ..., anchors) are the original's, so its state dict loads as is."""

    def __init__(self, nc: int, anchors: torch.Tensor, stride: torch.Tensor, ch: Sequence[int]) -> None:
        super().__init__()
        self.nc, self.no = nc, nc + 5
        self.nl, self.na = anchors.shape[:2]
        self.register_buffer("anchors", anchors.float().clone())        # (nl, na, 2) in stride units
        self.register_buffer("stride", stride.float().clone(), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self._grids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _grid(self, i: int, nx: int, ny: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (i, nx, ny, like.device, like.dtype)
        if key not in self._grids:
            y, x = torch.arange(ny, device=like.device), torch.arange(nx, device=like.device)
            yv, xv = torch.meshgrid(y, x, indexing="ij")
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).to(like.dtype) - 0.5
            anchor_grid = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2).to(like.dtype)
            self._grids[key] = (grid, anchor_grid)
        return self._grids[key]

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """Feature maps -> (B, sum na*ny*nx, 5 + nc) [cx, cy, w, h, objectness, class probs...]."""
        out = []
        for i, x in enumerate(xs):
            x = self.m[i](x)
            b, _, ny, nx = x.shape
            x = x.view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()
            grid, anchor_grid = self._grid(i, nx, ny, x)
            xy = (x[..., :2] * 2 + grid) * self.stride[i]
            wh = (x[..., 2:4] * 2) ** 2 * anchor_grid
            out.append(torch.cat((xy, wh, x[..., 4:]), -1).view(b, -1, self.no))
        return torch.cat(out, 1)


class YoloV5Net(nn.Module):
    """Layers 0-23 from ultralytics' yolov5.yaml at the checkpoint's scale, then AnchorDetect."""

    def __init__(self, conv: dict[str, Any]) -> None:
        super().__init__()
        from ultralytics.nn.tasks import parse_model, yaml_model_load

        scale = model_scale(conv)
        cfg = {**yaml_model_load("yolov5.yaml"), "scale": scale, "nc": conv["nc"]}
        layers, save = parse_model(cfg, ch=3, verbose=False)
        head_from = list(layers[-1].f)
        if conv["from"] and conv["from"] != head_from:
            raise ValueError(f"the checkpoint's Detect reads layers {conv['from']}, yolov5.yaml's {head_from}")
        ch = [conv["state_dict"][f"model.24.m.{i}.weight"].shape[1] for i in range(len(head_from))]
        anchors = conv["state_dict"]["model.24.anchors"]
        head = AnchorDetect(conv["nc"], anchors, conv["stride"], ch)
        head.i, head.f = len(layers) - 1, head_from
        self.model = nn.Sequential(*list(layers)[:-1], head)
        self.save = set(save)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: list[Optional[torch.Tensor]] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


def model_scale(conv: dict[str, Any]) -> str:
    """The ultralytics scale letter whose depth/width multiples are the checkpoint's."""
    from ultralytics.nn.tasks import yaml_model_load

    scales = yaml_model_load("yolov5.yaml")["scales"]
    want = (round(conv["depth_multiple"], 2), round(conv["width_multiple"], 2))
    for name in SCALE_NAMES:
        if (round(scales[name][0], 2), round(scales[name][1], 2)) == want:
            return name
    raise ValueError(f"depth/width multiples {want} match no YOLOv5 scale ({scales})")


def build_network(conv: dict[str, Any], source: str) -> YoloV5Net:
    """The network with the converted state dict loaded strictly (every tensor by name and shape)."""
    from pipeline.video.yolov5_checkpoint import CheckpointError

    if conv.get("n_layers") != 25 or len(conv["stride"]) != 3:
        raise CheckpointError(f"{source}: {conv.get('n_layers')} layers / {len(conv['stride'])} output levels: "
                              f"only the P3-P5 YOLOv5 models (yolov5n/s/m/l/x.pt) are supported")
    try:
        net = YoloV5Net(conv)
        net.load_state_dict({k: v.float() for k, v in conv["state_dict"].items()}, strict=True)
        apply_layer_settings(net, conv.get("layer_settings", {}))
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{source}: its tensors do not fit the YOLOv5 network: {str(e).splitlines()[0]}"
                              ) from None
    return net.eval()


def apply_layer_settings(net: nn.Module, settings: dict[str, dict[str, Any]]) -> None:
    """Take the checkpoint's BatchNorm eps (the original trains with 1e-3, torch's default is 1e-5) and check
    that every conv/pool/upsample has the original's geometry."""
    mods = dict(net.named_modules())
    for name, s in settings.items():
        m = mods.get(name)
        if m is None:
            continue   # a layer without tensors here (e.g. the original head's own bookkeeping)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and "eps" in s:
            m.eps = float(s["eps"])
        for k in ("stride", "padding", "dilation", "groups", "kernel_size", "scale_factor", "mode"):
            if k in s and hasattr(m, k):
                ours, theirs = getattr(m, k), s[k]
                norm = (lambda v: list(v) if isinstance(v, (tuple, list)) else v)
                if norm(ours) != norm(theirs) and not (isinstance(theirs, list) and len(set(theirs)) == 1
                                                       and norm(ours) == theirs[0]):
                    raise ValueError(f"layer {name}: {k} {ours!r} here, {theirs!r} in the checkpoint")


# ---------------------------------------------------------------- pre / post-processing (as the original)
def letterbox_geometry(h: int, w: int, imgsz: int, stride: int) -> tuple[float, tuple[int, int], tuple[float, float]]:
    """(ratio, (new_w, new_h) unpadded, (dw, dh) padding per side) of the original letterbox(auto=True)."""
    r = min(imgsz / h, imgsz / w)
    new_unpad = int(round(w * r)), int(round(h * r))
    dw, dh = np.mod(imgsz - new_unpad[0], stride) / 2, np.mod(imgsz - new_unpad[1], stride) / 2
    return r, new_unpad, (float(dw), float(dh))


def letterbox(im: np.ndarray, imgsz: int, stride: int) -> np.ndarray:
    import cv2

    h, w = im.shape[:2]
    _, new_unpad, (dw, dh) = letterbox_geometry(h, w, imgsz, stride)
    if (w, h) != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(LETTERBOX_FILL,) * 3)


def nms(pred: torch.Tensor, conf: float, iou: float, classes: Optional[torch.Tensor], max_det: int,
        max_nms: int) -> list[torch.Tensor]:
    """(B, N, 5 + nc) decoded -> B tensors (K, 6) [x1, y1, x2, y2, score, class] in letterboxed pixels."""
    import torchvision

    out = []
    for x in pred.float():
        x = x[x[:, 4] > conf]
        scores = x[:, 5:] * x[:, 4:5]
        best, cls = scores.max(1)
        xy, half = x[:, :2], x[:, 2:4] / 2
        d = torch.cat((xy - half, xy + half, best[:, None], cls[:, None].float()), 1)[best > conf]
        if classes is not None:
            d = d[(d[:, 5:6] == classes.to(d.device)).any(1)]
        d = d[d[:, 4].argsort(descending=True)[:max_nms]]
        keep = torchvision.ops.batched_nms(d[:, :4], d[:, 4], d[:, 5].long(), iou)[:max_det]
        out.append(d[keep])
    return out


def scale_back(d: torch.Tensor, h: int, w: int, imgsz: int, stride: int) -> np.ndarray:
    """Boxes from letterboxed pixels to the image's own, clipped: the original's scale_boxes, which takes
    gain and padding from the padded shape (not the letterbox ratio)."""
    _, (nw, nh), (dw, dh) = letterbox_geometry(h, w, imgsz, stride)
    ph = nh + int(round(dh - 0.1)) + int(round(dh + 0.1))
    pw = nw + int(round(dw - 0.1)) + int(round(dw + 0.1))
    gain = min(ph / h, pw / w)
    pad_x, pad_y = (pw - w * gain) / 2, (ph - h * gain) / 2
    d = d.cpu().numpy().astype(np.float32)
    d[:, [0, 2]] = ((d[:, [0, 2]] - pad_x) / gain).clip(0, w)
    d[:, [1, 3]] = ((d[:, [1, 3]] - pad_y) / gain).clip(0, h)
    return d
