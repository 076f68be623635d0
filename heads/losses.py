"""Training losses: BCE with per-class pos_weight (multi-label, SVCEmotion), cross-entropy, EP-CE (Wu et al.)."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from heads.config import TrainConfig

# Emotion name -> polarity (+1 positive, 0 neutral, -1 negative) for EP-CE when params give none.
# Surprise/anticipation/trust count as positive, as in the Plutchik-wheel polarity split of VideoEmotion-8.
POLARITY_LEXICON: dict[str, int] = {
    **dict.fromkeys(["neutral", "calm", "none", "other"], 0),
    **dict.fromkeys(["joy", "happy", "happiness", "excitement", "excitation", "excited", "relaxation", "relaxed",
                     "surprise", "surprised", "amusement", "admiration", "approval", "caring", "confidence",
                     "gratitude", "love", "optimism", "pride", "relief", "desire", "anticipation", "trust",
                     "contentment", "satisfaction", "enthusiasm", "hope", "interest", "curiosity", "positive"], 1),
    **dict.fromkeys(["anger", "angry", "sadness", "sad", "fear", "fearful", "disgust", "disgusted", "tension",
                     "frustration", "contempt", "annoyance", "disappointment", "disapproval", "embarrassment",
                     "grief", "nervousness", "remorse", "boredom", "confusion", "anxiety", "shame", "guilt",
                     "jealousy", "loneliness", "worry", "pain", "negative"], -1),
}
POLARITY_NAMES = {1: "positive", 0: "neutral", -1: "negative"}


def pos_weight(y: torch.Tensor) -> torch.Tensor:
    """Per class: negatives / positives in the training labels (1 for a class with no positives)."""
    pos = y.sum(0)
    neg = y.shape[0] - pos
    return torch.where(pos > 0, neg / pos.clamp_min(1), torch.ones_like(pos))


def class_polarity(vocab: list[str], overrides: Mapping[str, int]) -> list[int]:
    out, unknown = [], []
    for name in vocab:
        if name in overrides:
            out.append(int(overrides[name]))
        elif name.lower() in POLARITY_LEXICON:
            out.append(POLARITY_LEXICON[name.lower()])
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"ep_ce: no polarity for classes {unknown}; set train.polarity in params.yaml "
                         "(class -> 1 positive, 0 neutral, -1 negative)")
    bad = [p for p in out if p not in POLARITY_NAMES]
    if bad:
        raise ValueError(f"ep_ce: polarities must be -1, 0 or 1, got {bad}")
    return out


class EPCELoss(nn.Module):
    """Wu et al. eq. 9: L = mean_i (1 + γ_ep(y_i) · s_i) · CE_i, with s_i = 1 when the predicted class's polarity
    differs from the true class's polarity. The penalty is a weight, so no gradient flows through argmax."""

    def __init__(self, polarity: list[int], gamma: Mapping[str, float]):
        super().__init__()
        missing = [POLARITY_NAMES[p] for p in set(polarity) if POLARITY_NAMES[p] not in gamma]
        if missing:
            raise ValueError(f"ep_ce_gamma lacks {sorted(missing)}")
        self.register_buffer("polarity", torch.tensor(polarity, dtype=torch.long))
        self.register_buffer("gamma", torch.tensor([float(gamma[POLARITY_NAMES[p]]) for p in polarity]))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, reduction="none")
        wrong_polarity = (self.polarity[target] != self.polarity[logits.argmax(1)]).to(ce.dtype)
        return ((1 + self.gamma[target] * wrong_polarity) * ce).mean()


def loss_kind(cfg: TrainConfig, multilabel: bool) -> str:
    kind = cfg.loss if cfg.loss != "auto" else ("bce" if multilabel else "ce")
    if multilabel and kind != "bce":
        raise ValueError(f"loss {kind!r} is single-label; multi-label experiments use 'bce'")
    if not multilabel and kind == "bce":
        raise ValueError("loss 'bce' is for multi-label experiments; use 'ce' or 'ep_ce'")
    return kind


def class_weights(y: torch.Tensor) -> torch.Tensor:
    """Per class: inverse training frequency, scaled so the average clip weight is 1 (a class with no clip: 1)."""
    count = y.sum(0)
    w = torch.where(count > 0, y.shape[0] / (y.shape[1] * count.clamp_min(1)), torch.ones_like(count))
    return w / (w * count).sum() * count.sum()


def build_loss(cfg: TrainConfig, vocab: list[str], multilabel: bool, y_train: torch.Tensor) -> nn.Module:
    """y_train: (N, C) multi-hot labels of the training split (pos_weight / class weights come from them)."""
    kind = loss_kind(cfg, multilabel)
    balance = cfg.class_balance if cfg.class_balance != "auto" else ("inverse" if kind == "bce" else "none")
    power = {"none": 0.0, "sqrt": 0.5, "inverse": 1.0}[balance]
    if kind == "bce":
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight(y_train.float()) ** power if power else None)
    if kind == "ce":
        return nn.CrossEntropyLoss(weight=class_weights(y_train.float()) ** power if power else None)
    if power:
        raise ValueError(f"train.class_balance {balance!r} does not combine with loss 'ep_ce' (use 'none' or 'auto')")
    return EPCELoss(class_polarity(vocab, cfg.polarity), cfg.ep_ce_gamma)
