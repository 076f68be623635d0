"""Read an original YOLOv5 release checkpoint (yolov5n/s/m/l/x.pt, v6.x-v7.0) without its repository's code.

The file is a torch zip whose pickle holds a whole `models.yolo.Model`. It is read by torch's weights_only
unpickler with an allow-list: torch's own defaults (tensor/storage rebuilds, collections, plain builtins) plus
inert placeholders standing in for the checkpoint's module classes (`models.*` and `torch.nn.modules.*`).
A placeholder only records the state pickle hands it; nothing of the checkpoint's classes is imported or run.
Any other global refuses the file, naming the file and the global, before anything is unpickled.

From the placeholder tree we take the state dict, class names, anchors and strides, and keep them as a
tensors-only file keyed by the source's sha256 (loaded weights_only=True), so later runs never unpickle.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any
from pipeline.errors import UsageError

CONVERTED_FORMAT = "emocache-yolov5-anchor-v1"   # bump when the converted layout changes
PLACEHOLDER_PREFIXES = ("models.", "torch.nn.modules.")
ULTRALYTICS_PREFIX = "ultralytics."


class CheckpointError(UsageError, ValueError):
    """A weights file that cannot be used; the message names the file and what is wrong."""


class _Inert:
    """Stands in for one pickled class: records the state, runs nothing of the original."""

    _source_global = ""

    def __init__(self, *args, **kwargs) -> None:   # a REDUCE call on the class: keep the arguments only
        self.__dict__["_args"] = args

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:   # (dict, slots) form of pickle's BUILD
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state


def _placeholder(full_name: str) -> type:
    return type(full_name.rsplit(".", 1)[-1], (_Inert,), {"_source_global": full_name})


def checkpoint_globals(path: Path) -> list[str]:
    """Globals the checkpoint's pickle names beyond torch's weights_only defaults (static scan, no unpickling)."""
    import torch

    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception as e:   # not a zip, truncated, a TorchScript archive, ...
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None


def checkpoint_format(path: Path) -> str:
    """'yolov5' (original release format), 'ultralytics' (ultralytics-pickled), else CheckpointError."""
    names = checkpoint_globals(path)
    if any(n.startswith(ULTRALYTICS_PREFIX) for n in names):
        return "ultralytics"
    if any(n.startswith("models.yolo.") for n in names):
        return "yolov5"
    raise CheckpointError(f"{path}: refused: not a YOLO checkpoint (no models.yolo.* or ultralytics.* class in its "
                          f"pickle); it names global(s) {', '.join(repr(n) for n in names) or 'none beyond tensors'}")


def read_original_checkpoint(path: Path) -> dict[str, Any]:
    """Allow-listed unpickling of an original YOLOv5 checkpoint -> the tensors-only converted dict."""
    import torch

    names = checkpoint_globals(path)
    refused = [n for n in names if not n.startswith(PLACEHOLDER_PREFIXES)]
    if refused:
        raise CheckpointError(f"{path}: refused: its pickle names global {refused[0]!r}, which is not on the "
                              f"allow-list (torch tensors/storages, collections, builtins, models.* and "
                              f"torch.nn.modules.* as inert placeholders)"
                              + (f"; also {', '.join(refused[1:])}" if len(refused) > 1 else ""))
    placeholders = [(_placeholder(n), n) for n in names]
    try:
        with torch.serialization.safe_globals(placeholders):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        m = re.search(r"GLOBAL (\S+)", str(e))
        what = f"global {m[1]!r} is not allowed" if m else f"{type(e).__name__}: {str(e).splitlines()[0]}"
        raise CheckpointError(f"{path}: cannot read the checkpoint: {what}") from None
    return convert(path, ckpt)


def _state_dict(mod: _Inert, prefix: str = "") -> "OrderedDict[str, Any]":
    """nn.Module.state_dict() rebuilt from a placeholder's recorded _parameters/_buffers/_modules."""
    out: OrderedDict[str, Any] = OrderedDict()
    d = mod.__dict__
    skip = set(d.get("_non_persistent_buffers_set") or ())
    for name, p in (d.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach()
    for name, b in (d.get("_buffers") or {}).items():
        if b is not None and name not in skip:
            out[prefix + name] = b
    for name, child in (d.get("_modules") or {}).items():
        if isinstance(child, _Inert):
            out.update(_state_dict(child, f"{prefix}{name}."))
    return out


LAYER_HPARAMS = ("eps", "momentum", "stride", "padding", "dilation", "groups", "kernel_size", "scale_factor",
                 "mode")   # module settings pickled beside the tensors that change what a layer computes


def _layer_settings(mod: _Inert, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Per torch.nn layer of the tree: its settings (BatchNorm eps, conv stride/padding, ...) as plain values."""
    out: dict[str, dict[str, Any]] = {}
    d = mod.__dict__
    if mod._source_global.startswith("torch.nn.modules."):
        vals = {k: d[k] for k in LAYER_HPARAMS if isinstance(d.get(k), (int, float, str, tuple, list))}
        if vals:
            out[prefix.rstrip(".")] = {k: list(v) if isinstance(v, tuple) else v for k, v in vals.items()}
    for name, child in (d.get("_modules") or {}).items():
        if isinstance(child, _Inert):
            out.update(_layer_settings(child, f"{prefix}{name}."))
    return out


def convert(path: Path, ckpt: Any) -> dict[str, Any]:
    """The parts of the placeholder tree the network needs, as tensors and plain values only."""
    import torch

    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, _Inert) or model._source_global != "models.yolo.Model":
        raise CheckpointError(f"{path}: no models.yolo.Model under 'model'/'ema' in the checkpoint")
    seq = model.__dict__.get("_modules", {}).get("model")
    layers = list((seq.__dict__.get("_modules") or {}).values()) if isinstance(seq, _Inert) else []
    if not layers or layers[-1]._source_global != "models.yolo.Detect":
        raise CheckpointError(f"{path}: the model's last layer is not models.yolo.Detect "
                              f"(segmentation/classification checkpoints are not supported)")
    detect = layers[-1].__dict__
    yaml = model.__dict__.get("yaml") or {}
    names = model.__dict__.get("names")
    if isinstance(names, dict):   # some releases store {index: name}
        names = [names[k] for k in sorted(names)]
    nc = int(detect.get("nc", yaml.get("nc", 0)))
    if not isinstance(names, (list, tuple)) or len(names) != nc:
        raise CheckpointError(f"{path}: class names ({len(names) if names else 0}) do not match nc = {nc}")
    sd = _state_dict(model)
    stride = model.__dict__.get("stride")
    if stride is None:
        raise CheckpointError(f"{path}: the model has no stride")
    return {"format": CONVERTED_FORMAT, "state_dict": {k: v.contiguous() for k, v in sd.items()},
            "names": [str(n) for n in names], "nc": nc,
            "stride": torch.as_tensor(stride, dtype=torch.float32).clone(),
            "from": [int(i) for i in detect.get("f", [])],
            "depth_multiple": float(yaml.get("depth_multiple", 0.0)),
            "width_multiple": float(yaml.get("width_multiple", 0.0)),
            "n_layers": len(layers), "layer_settings": _layer_settings(model)}


def converted_path(converted_dir: Path, sha256: str) -> Path:
    return converted_dir / f"yolov5-{sha256}.pt"


def load_converted(path: Path, sha256: str, converted_dir: Path) -> tuple[dict[str, Any], bool]:
    """(converted dict, whether it came from the tensors-only cache). Only a cache miss unpickles the source."""
    import torch

    cached = converted_path(converted_dir, sha256)
    if cached.exists():
        try:
            d = torch.load(str(cached), map_location="cpu", weights_only=True)
            if isinstance(d, dict) and d.get("format") == CONVERTED_FORMAT:
                return d, True
        except Exception:   # a damaged cache file is rebuilt from the source below
            pass
    d = read_original_checkpoint(path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    torch.save(d, str(tmp))
    os.replace(tmp, cached)   # atomic: a reader never sees half a file
    return d, False

