"""Heads = per-modality encoders -> fusion -> classifier.

Every encoder maps one modality's padded rows (B, T, D) + lengths (B,) to one vector per clip;
a fusion module maps the concatenated vectors to one vector; a classifier maps that to logits.
A new network is an encoder or fusion class plus a builder here; heads/neural.py makes it a head kind.

- linear: RowEncoder -> one linear layer (the linear probe model selection compares against).
- mlp (SVCEmotion): RowEncoder (one random 0.96 s row per clip while training, mean of rows at eval)
  -> two fully connected layers.
- early_fusion: RowEncoder per modality -> concatenation -> the same classifier.
- nextvlad (Peng et al.): per modality Transformer encoder -> NeXtVLAD -> concatenation -> SE block -> MLP.
Late fusion (decision level) lives in heads/fusion.py; the logreg baseline in heads/baselines.py.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from heads.config import MLPConfig, NeXtVLADConfig

Inputs = dict[str, tuple[torch.Tensor, torch.Tensor]]   # key -> (x (B,T,D), lengths (B,))


def valid_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(B, T) True where a row is real, False where it is padding."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


class Standardize(nn.Module):
    """z-score with train-split statistics kept as buffers (they travel in the checkpoint)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class RowEncoder(nn.Module):
    """SVCEmotion: train on ONE random row per clip (a new one each time the clip is seen), evaluate on the
    mean of all rows. Single-row modalities (text, eGeMAPS) are thereby used as they are."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = Standardize(dim)
        self.out_dim = dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        present = (lengths > 0).to(x.dtype)[:, None]
        if self.training:
            row = (torch.rand(lengths.shape, device=x.device) * lengths.clamp_min(1)).long()
            picked = x[torch.arange(x.shape[0], device=x.device), row]
            return self.norm(picked) * present
        mask = valid_mask(lengths, x.shape[1]).to(x.dtype)
        mean = (x * mask[..., None]).sum(1) / lengths.clamp_min(1)[:, None].to(x.dtype)
        return self.norm(mean) * present


class NeXtVLAD(nn.Module):
    """NeXtVLAD (Lin et al. 2018): expand -> split into groups -> soft-assign each group-frame to clusters,
    gated by a per-group attention -> residuals to cluster centres summed over frames and groups.
    Padded frames get attention 0, so they add nothing to the aggregate."""

    def __init__(self, dim: int, expansion: int, groups: int, clusters: int):
        super().__init__()
        wide = expansion * dim
        if wide % groups:
            raise ValueError(f"NeXtVLAD: expansion*dim = {wide} is not divisible by groups = {groups}")
        self.groups, self.clusters, self.group_dim = groups, clusters, wide // groups
        self.expand = nn.Linear(dim, wide)
        self.attention = nn.Linear(wide, groups)
        self.assign = nn.Linear(wide, groups * clusters)
        self.centers = nn.Parameter(torch.randn(clusters, self.group_dim) / math.sqrt(self.group_dim))
        self.out_dim = clusters * self.group_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        wide = self.expand(x)                                                  # (B, T, λD)
        gate = torch.sigmoid(self.attention(wide)) * mask[..., None].to(x.dtype)  # (B, T, G)
        assign = F.softmax(self.assign(wide).view(b, t, self.groups, self.clusters), dim=-1)
        assign = (assign * gate[..., None]).reshape(b, t * self.groups, self.clusters)  # (B, T·G, K)
        frames = wide.reshape(b, t * self.groups, self.group_dim)               # (B, T·G, λD/G)
        vlad = assign.transpose(1, 2) @ frames - assign.sum(1)[..., None] * self.centers  # (B, K, λD/G)
        vlad = F.normalize(vlad, dim=2)                                         # intra-normalisation
        return vlad.flatten(1)


class SequenceEncoder(nn.Module):
    """Peng et al. per-modality branch: Transformer encoder (intra-modal relations) -> NeXtVLAD."""

    def __init__(self, dim: int, cfg: NeXtVLADConfig):
        super().__init__()
        self.norm = Standardize(dim)
        # The Transformer needs width % heads == 0 and NeXtVLAD needs (expansion*width) % groups == 0;
        # widths that break this (pose: 99) are projected up to the next multiple that works.
        step = math.lcm(cfg.transformer_heads, cfg.groups // math.gcd(cfg.groups, cfg.expansion))
        width = dim if dim % step == 0 else step * math.ceil(dim / step)
        self.project = nn.Identity() if width == dim else nn.Linear(dim, width)
        layer = nn.TransformerEncoderLayer(width, cfg.transformer_heads, cfg.transformer_ff_mult * width,
                                           cfg.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.transformer_layers, enable_nested_tensor=False)
        self.vlad = NeXtVLAD(width, cfg.expansion, cfg.groups, cfg.clusters)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out_dim = self.vlad.out_dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = valid_mask(lengths, x.shape[1])
        # A clip missing this modality has no valid key; let it attend to its zero rows (no NaN),
        # NeXtVLAD then masks every row and its vector is 0.
        pad = ~mask & (lengths > 0)[:, None]
        h = self.encoder(self.project(self.norm(x)), src_key_padding_mask=pad)
        return self.dropout(self.vlad(h, mask))


class ConcatFusion(nn.Module):
    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = in_dim

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f


class SEFusion(nn.Module):
    """Peng et al. eqs. 2-4: F1 = ReLU(BN(W1 F)); F2 = sigmoid(W3 BN(ReLU(W2 F1))); out = F1 * F2."""

    def __init__(self, in_dim: int, dim: int, reduction: int):
        super().__init__()
        self.w1, self.bn1 = nn.Linear(in_dim, dim), nn.BatchNorm1d(dim)
        self.w2, self.bn2 = nn.Linear(dim, dim // reduction), nn.BatchNorm1d(dim // reduction)
        self.w3 = nn.Linear(dim // reduction, dim)
        self.out_dim = dim

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f1 = F.relu(self.bn1(self.w1(f)))
        f2 = torch.sigmoid(self.w3(self.bn2(F.relu(self.w2(f1)))))
        return f1 * f2


class MLPClassifier(nn.Module):
    """Two fully connected layers (SVCEmotion)."""

    def __init__(self, in_dim: int, hidden: int, n_classes: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_classes))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


class FusionHead(nn.Module):
    def __init__(self, encoders: dict[str, nn.Module], fusion: nn.Module, classifier: nn.Module):
        super().__init__()
        self.keys = list(encoders)
        self.encoders = nn.ModuleDict({_safe(k): e for k, e in encoders.items()})
        self.fusion = fusion
        self.classifier = classifier

    def encoder(self, key: str) -> nn.Module:
        return self.encoders[_safe(key)]

    def forward(self, inputs: Inputs) -> torch.Tensor:
        f = torch.cat([self.encoder(k)(*inputs[k]) for k in self.keys], dim=1)
        return self.classifier(self.fusion(f))

    @torch.no_grad()
    def set_input_stats(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for k, (mean, std) in stats.items():
            self.encoder(k).norm.set_stats(mean, std)


def _safe(key: str) -> str:
    return key.replace(".", "__")   # ModuleDict keys may not contain '.'


# ---------------------------------------------------------------- builders (heads/neural.py names them as kinds)
def linear_probe(input_dims: dict[str, int], n_classes: int) -> FusionHead:
    """input_dims: {store key: feature width}, in the order the modalities are concatenated."""
    encoders = {k: RowEncoder(d) for k, d in input_dims.items()}
    fusion = ConcatFusion(sum(e.out_dim for e in encoders.values()))
    return FusionHead(encoders, fusion, nn.Linear(fusion.out_dim, n_classes))


def row_mlp(input_dims: dict[str, int], n_classes: int, cfg: MLPConfig) -> FusionHead:
    encoders = {k: RowEncoder(d) for k, d in input_dims.items()}
    fusion = ConcatFusion(sum(e.out_dim for e in encoders.values()))
    return FusionHead(encoders, fusion, MLPClassifier(fusion.out_dim, cfg.hidden, n_classes, cfg.dropout))


def nextvlad_head(input_dims: dict[str, int], n_classes: int, cfg: NeXtVLADConfig) -> FusionHead:
    encoders = {k: SequenceEncoder(d, cfg) for k, d in input_dims.items()}
    fusion = SEFusion(sum(e.out_dim for e in encoders.values()), cfg.se_dim, cfg.se_reduction)
    return FusionHead(encoders, fusion, MLPClassifier(fusion.out_dim, cfg.hidden, n_classes, cfg.dropout))


def input_stats(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean/std over the valid rows of one modality (train split)."""
    rows = x[valid_mask(lengths, x.shape[1])]
    if rows.shape[0] < 2:
        return torch.zeros(x.shape[-1]), torch.ones(x.shape[-1])
    return rows.mean(0), rows.std(0)


def probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: Inputs, batch_size: int, device: Optional[torch.device] = None) -> torch.Tensor:
    model.eval()
    n = next(iter(inputs.values()))[0].shape[0]
    out = []
    for s in range(0, n, batch_size):
        chunk = {k: (x[s:s + batch_size], l[s:s + batch_size]) for k, (x, l) in inputs.items()}
        if device is not None:
            chunk = {k: (x.to(device), l.to(device)) for k, (x, l) in chunk.items()}
        out.append(model(chunk).float())
    return torch.cat(out) if out else torch.zeros(0)
