"""Token states for cached fine-tuning: the hidden states after encoder layer L, one row per real token.

Key 'text_states.<field>' (its own family and store, so frozen sentence vectors and token states keep separate
fingerprints). Only the embeddings and layers 1..L run; head finetune_top (heads/finetune.py) rebuilds the
layers above L with their pretrained weights and trains them on these rows, so the bottom of the network runs
once per clip. No padding is stored: a clip's row count is its token count, which is its attention mask.
Model, fields, max_length and pair_mode are those of extractors.text; layer and dtype come from
extractors.text_states.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from pipeline.config import ExtractorSettings, TextConfig, TextStatesConfig
from pipeline.extractors.base import ClipFeatures, ClipInput, WeightsInfo, register
from pipeline.extractors.text import COMBINED, TextExtractor, clip_duration

STORE_DTYPES = {"fp16": np.float16, "fp32": np.float32}


def encoder_layers(model):
    """The transformer blocks of a BERT-family model (BERT, RoBERTa, MiniLM, ...): model.encoder.layer."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(f"text_states: {type(model).__name__} has no encoder.layer list; cached fine-tuning "
                         f"supports BERT-family encoders")
    return layers


def additive_mask(attention_mask, dtype):
    """(B, T) 1/0 mask -> the (B, 1, 1, T) additive mask a BERT layer adds to its attention scores."""
    import torch

    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def run_layers(layers, hidden, mask4d):
    for layer in layers:
        out = layer(hidden, mask4d)
        hidden = out[0] if isinstance(out, tuple) else out   # older transformers return a tuple
    return hidden


@register
class TextStatesExtractor(TextExtractor):
    name = "text_states"
    family = "text_states"
    needs = frozenset({"text"})
    version = "1"

    @classmethod
    def section_of(cls, extractors) -> tuple[TextConfig, TextStatesConfig]:
        return extractors.text, extractors.text_states   # the model and fields are extractors.text's

    def __init__(self, sections: tuple[TextConfig, TextStatesConfig], settings: ExtractorSettings,
                 variant: Optional[str] = None) -> None:
        text, self.sc = sections
        super().__init__(text, settings, variant)

    def params(self) -> dict:
        # Pooling is not here: the states do not depend on it (finetune_top pools with extractors.text's).
        p = {"field": self.variant, "model": self.model_name or self.tc.model, "layer": self.sc.layer,
             "max_length": self.tc.max_length, "dtype": self.sc.dtype}
        if self.variant == COMBINED:
            p["pair_mode"] = self.tc.pair_mode
        return p

    def load(self) -> WeightsInfo:
        info = super().load()
        n_layers = len(encoder_layers(self.model))
        if not 0 <= self.sc.layer < n_layers:
            raise ValueError(f"extractors.text_states.layer={self.sc.layer}: {self.tc.model!r} has {n_layers} "
                             f"layers; cache after layer 0..{n_layers - 1} so at least one layer is left to train")
        return info

    def extract_batch(self, clips: list[ClipInput]) -> list[ClipFeatures]:
        if self.weights is None:
            raise RuntimeError(f"{self.key}: call load() before extract_batch()")
        inputs = [self._inputs(c) for c in clips]
        todo = [i for i, x in enumerate(inputs) if x is not None]
        states, full_lengths = self._states([inputs[i] for i in todo])
        dim = self.model.config.hidden_size
        dtype = STORE_DTYPES[self.sc.dtype]
        out = [ClipFeatures(arrays={"features": np.zeros((0, dim), dtype)}, times=np.zeros((0, 2)),
                            attrs={"empty": True, "truncated": False, "n_tokens": 0}) for _ in clips]
        for row, i in enumerate(todo):
            truncated = full_lengths[row] > self.tc.max_length
            self.truncated_total += int(truncated)
            tokens = states[row]
            # every token row spans the whole clip: tokens carry no timing of their own
            out[i] = ClipFeatures(arrays={"features": tokens},
                                  times=np.tile([0.0, clip_duration(clips[i])], (len(tokens), 1)),
                                  attrs={"empty": False, "truncated": bool(truncated),
                                         "n_tokens": int(full_lengths[row])})
        return out

    def _states(self, pairs: list[tuple[str, Optional[str]]]) -> tuple[list[np.ndarray], list[int]]:
        """Per input: its (T, D) states after layer L (T = tokens after truncation), and its untruncated count."""
        import torch

        from pipeline.device import autocast

        if not pairs:
            return [], []
        ids, full_lengths = self._tokenize_all(pairs)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i][0]))   # length buckets, as TextExtractor
        out: list = [None] * len(ids)
        dtype = STORE_DTYPES[self.sc.dtype]
        layers = encoder_layers(self.model)[: self.sc.layer]
        with torch.inference_mode():
            for start in range(0, len(order), self.tc.batch_size):
                chunk = order[start:start + self.tc.batch_size]
                batch = {k: v.to(self.device) for k, v in self._pad([ids[i] for i in chunk]).items()}
                with autocast(self.device, self.settings.runtime.precision):
                    hidden = self.model.embeddings(input_ids=batch["input_ids"],
                                                   token_type_ids=batch.get("token_type_ids"))
                    hidden = run_layers(layers, hidden, additive_mask(batch["attention_mask"], hidden.dtype))
                hidden = hidden.float().cpu().numpy()
                mask = batch["attention_mask"].bool().cpu().numpy()
                for r, i in enumerate(chunk):
                    out[i] = hidden[r][mask[r]].astype(dtype)
        return out, full_lengths
