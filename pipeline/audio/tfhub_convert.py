"""Convert TF-Hub / TF-slim VGGish variables to the torch (torchvggish-layout) state dict.

The TF path is an ISOLATED EXTRA with its own virtual environment: TensorFlow must never be installed in the
project's .venv (importing tensorflow before torchvision segfaults there). To use the official TF-Hub model:

    python -m venv .venv-tf && .venv-tf/bin/pip install tensorflow tensorflow_hub numpy
    .venv-tf/bin/python -c "from pipeline.audio.tfhub_convert import export_tfhub_npz; export_tfhub_npz('<hub dir>', 'vggish_tf.npz')"
    .venv/bin/python -c "from pipeline.audio.tfhub_convert import convert_npz; convert_npz('vggish_tf.npz', 'weights/vggish-10086976.pth')"

Only `export_tfhub_npz` touches tensorflow / tensorflow_hub (an optional import inside it); the converter itself
is NumPy + torch, so the main venv can turn the exported arrays into a checkpoint the extractor loads.

Variable names (TF-slim `vggish_slim.py`; TF-Hub prefixes `vggish/` and may append `:0`):
  conv1, conv2, conv3/conv3_1, conv3/conv3_2, conv4/conv4_1, conv4/conv4_2 : weights (3, 3, in, out) HWIO, biases
  fc1/fc1_1, fc1/fc1_2, fc2                                               : weights (in, out), biases
Conv kernels go HWIO -> OIHW; dense kernels (in, out) -> (out, in). fc1_1's input order is TF's channel-last
flatten, which `VGGish.forward` reproduces, so no row permutation is needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

# TF scope -> torchvggish module prefix
TF_TO_TORCH = {
    "conv1": "features.0",
    "conv2": "features.3",
    "conv3/conv3_1": "features.6",
    "conv3/conv3_2": "features.8",
    "conv4/conv4_1": "features.11",
    "conv4/conv4_2": "features.13",
    "fc1/fc1_1": "embeddings.0",
    "fc1/fc1_2": "embeddings.2",
    "fc2": "embeddings.4",
}


def _canonical(name: str) -> str:
    """'vggish/conv1/weights:0' -> 'conv1/weights'."""
    name = name.split(":", 1)[0]
    return name.removeprefix("vggish/")


def tf_variables_to_state_dict(variables: Mapping[str, np.ndarray]):
    """{TF variable name: ndarray} -> {torchvggish key: float32 torch tensor}. Raises on missing/unknown names."""
    import torch

    tf = {_canonical(k): np.asarray(v) for k, v in variables.items()}
    out: dict[str, "torch.Tensor"] = {}
    for scope, prefix in TF_TO_TORCH.items():
        for leaf in ("weights", "biases"):
            key = f"{scope}/{leaf}"
            if key not in tf:
                raise KeyError(f"TF VGGish variable {key!r} missing (have: {sorted(tf)})")
        kernel, bias = tf[f"{scope}/weights"], tf[f"{scope}/biases"]
        if kernel.ndim == 4:
            kernel = kernel.transpose(3, 2, 0, 1)     # HWIO -> OIHW
        elif kernel.ndim == 2:
            kernel = kernel.T                          # (in, out) -> (out, in)
        else:
            raise ValueError(f"{scope}/weights has unexpected rank {kernel.ndim}")
        out[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))
        out[f"{prefix}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    unknown = sorted(k for k in tf if k.rsplit("/", 1)[0] not in TF_TO_TORCH and not k.startswith("global_step"))
    if unknown:
        raise KeyError(f"unexpected TF VGGish variables: {unknown}")
    return out


def convert_npz(npz_path: str | Path, out_path: str | Path) -> Path:
    """Exported TF arrays (.npz, keys = TF variable names) -> a torch checkpoint in torchvggish layout."""
    import torch

    from pipeline.audio.vggish_net import check_state_dict

    with np.load(npz_path) as z:
        state = tf_variables_to_state_dict({k: z[k] for k in z.files})
    check_state_dict(state, str(npz_path))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out_path)
    return out_path


def export_tfhub_npz(hub_handle: str, npz_path: str | Path) -> Path:
    """Run in the separate TF venv only: load a TF-Hub VGGish (local dir) and save its variables to .npz."""
    try:
        import tensorflow_hub as hub  # optional: never installed in the project's .venv
    except ImportError as e:
        raise ImportError("export_tfhub_npz needs tensorflow + tensorflow_hub in a separate venv "
                          "(never in .venv: tensorflow before torchvision segfaults); see this module's docstring") from e
    model = hub.load(hub_handle)
    arrays = {v.name: v.numpy() for v in model.variables}
    np.savez(npz_path, **arrays)
    return Path(npz_path)
