"""The VGGish network (Hershey et al. 2017), laid out like the torchvggish port so its checkpoint loads as is.

conv 64-M-128-M-256-256-M-512-512-M (3x3, pad 1, ReLU; 2x2 max-pool), then FC 12288-4096-4096-128.
Module/key names match torchvggish (`features.0` ... `features.13`, `embeddings.0/2/4`). Before the FC layers the
(N, 512, 6, 4) feature map is flattened channel-last (H, W, C) as TensorFlow does, so ported weights apply.
The TF reference returns the embedding before any activation; `relu_output=True` adds the final ReLU of the
torchvggish port.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

EXAMPLE_FRAMES = 96           # the input patch the FC sizes are built for: 96 frames x 64 mel bands
N_MELS = 64
EMBEDDING_SIZE = 128
CONV_PLAN = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")
FC_HIDDEN = 4096
FLAT_SIZE = 512 * (EXAMPLE_FRAMES // 16) * (N_MELS // 16)   # 512 x 6 x 4 = 12288 after four 2x2 pools

RELEASE_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"


def make_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 1
    for v in CONV_PLAN:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = v
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    def __init__(self, relu_output: bool = False) -> None:
        super().__init__()
        self.features = make_features()
        self.embeddings = nn.Sequential(
            nn.Linear(FLAT_SIZE, FC_HIDDEN), nn.ReLU(inplace=True),
            nn.Linear(FC_HIDDEN, FC_HIDDEN), nn.ReLU(inplace=True),
            nn.Linear(FC_HIDDEN, EMBEDDING_SIZE),
        )
        self.relu_output = relu_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 96, 64) or (N, 1, 96, 64) log-mel examples -> (N, 128) embeddings."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = self.features(x)
        x = x.permute(0, 2, 3, 1).flatten(1)   # channel-last (H, W, C) flatten, as TF
        x = self.embeddings(x)
        return torch.relu(x) if self.relu_output else x


def expected_shapes() -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in VGGish().state_dict().items()}


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A torchvggish-format checkpoint as {key: float32 tensor}; tensors only (weights_only=True)."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k.removeprefix("module."): torch.as_tensor(v, dtype=torch.float32) for k, v in state.items()}


def check_state_dict(state: dict[str, torch.Tensor], origin: str) -> None:
    """Clear error when a checkpoint is not VGGish (wrong keys or shapes) instead of a torch traceback."""
    want = expected_shapes()
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    wrong = [f"{k}: {tuple(state[k].shape)} != {want[k]}" for k in want if k in state and tuple(state[k].shape) != want[k]]
    if missing or extra or wrong:
        raise ValueError(f"{origin} is not a VGGish (torchvggish layout) state dict: missing {missing}, "
                         f"unexpected {extra}, wrong shapes {wrong}")


def build_vggish(state: dict[str, torch.Tensor] | None, relu_output: bool, seed: int = 0,
                 origin: str = "state dict") -> VGGish:
    """The network in eval mode with `state` loaded; `state=None` -> seeded random init (caller marks it untrained)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VGGish(relu_output=relu_output)
    if state is not None:
        check_state_dict(state, origin)
        model.load_state_dict(state, strict=True)
    return model.eval()
