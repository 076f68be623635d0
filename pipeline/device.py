"""Device and precision choice, in one place."""
from __future__ import annotations

import contextlib

from pipeline.config import RuntimeConfig


def pick_device(runtime: RuntimeConfig):
    import torch

    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but torch sees no CUDA device (set runtime.device: auto or cpu)")
    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(runtime.device)


def autocast(device, precision: str):
    """fp16/bf16 autocast on GPU; CPU runs fp32 so outputs match the reference exactly."""
    import torch

    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda", dtype=dtype)


def set_threads(runtime: RuntimeConfig) -> None:
    """Extract-stage threads from runtime.num_threads (pipeline/threads.py decides)."""
    from pipeline.threads import apply, plan_threads

    apply(plan_threads(runtime.num_threads, "extract"))
