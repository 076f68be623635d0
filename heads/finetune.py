"""Head finetune_top: cached fine-tuning of a text encoder's top layers (or of VGGish's fully connected block).

The store holds each clip's token states after layer L (pipeline/extractors/text_states.py). This head
rebuilds the same checkpoint's layers L+1..N with their pretrained weights, pools their output as
extractors.text does (cls / mean / the checkpoint's own pooling), and trains the top `layers_trainable` of
them together with the MLP of the `mlp` head (backbone lr separate and small). The bottom of the network never
runs again. With no layer trainable the pooled vector is the frozen extractor's (up to the fp16 cache), the
MLP is the same module trained by the same loop (heads.train.fit_neural), so it reproduces head `mlp` on
`text.<field>`. On `vggish_states` (the FC block's 12288-d input per 0.96 s example) the FC block
12288-4096-4096-128 is rebuilt instead, its top `layers_trainable` Linear layers train, and each row's
embedding goes to the `mlp` head's row encoder, so with nothing trainable it is head `mlp` on `vggish`.

    registry kind `finetune_top`: FinetuneTopHead.prepare(cfg, stores, exp) loads the backbone once,
    .fit / .predict_proba / .state / .load as every head kind.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from heads.config import ExperimentConfig, HeadsConfig
from heads.models import ConcatFusion, FusionHead, MLPClassifier, RowEncoder, input_stats, valid_mask
from heads.neural import NeuralHead
from heads.registry import FitRecord
from pipeline.extractors.text import pool_tokens
from pipeline.extractors.text_states import additive_mask, encoder_layers, run_layers

KIND = "finetune_top"
STATES_EXTRACTOR = "text_states"
VGGISH_STATES = "vggish_states"


# ---------------------------------------------------------------- the backbone's top, as extracted
@dataclass
class Backbone:
    """The layers above the cached one, with their (pretrained) weights, and how their output is pooled."""
    config_json: str                    # HF config of the rebuilt stack (num_hidden_layers = its layer count)
    layer: int                          # the cached states are after this layer
    pooling: str                        # cls | mean | max
    normalize: bool
    layers: nn.Module                   # text: ModuleList of encoder layers; vggish: the FC Sequential
    kind: str = "text"                  # text | vggish
    relu_output: bool = False           # vggish: the final ReLU of extractors.vggish.relu_output

    @property
    def n_layers(self) -> int:
        return len(self.layers) if self.kind == "text" else sum(isinstance(m, nn.Linear) for m in self.layers)

    @classmethod
    def from_store(cls, cfg: HeadsConfig, store, key: str, exp: ExperimentConfig) -> "Backbone":
        """Load the checkpoint the store's states were made with (same fingerprint: same weights, layer, params)."""
        from pipeline.extractors.base import build_extractor

        if key.partition(".")[0] not in (STATES_EXTRACTOR, VGGISH_STATES):
            raise ValueError(f"head {KIND} trains on token states ({STATES_EXTRACTOR}.<field>) or VGGish FC inputs "
                             f"({VGGISH_STATES}), not {key!r}")
        stored = store.current_fingerprint(key)
        if stored is None:
            raise ValueError(f"head {KIND}: {store.root} holds no {key!r}; run `emocache extract` first")
        ext = build_extractor(cfg, key)
        ext.load()
        if ext.fingerprint() != stored:
            raise ValueError(f"head {KIND}: the {key!r} states in {store.root} (fingerprint {stored}) were made with "
                             f"other params or weights than params.yaml says now ({ext.fingerprint()}: "
                             f"{ext.params()}); rerun `emocache extract` or restore the params")
        if key == VGGISH_STATES:
            return cls._vggish(ext)
        if exp.max_frames < ext.tc.max_length:
            raise ValueError(f"head {KIND}: max_frames={exp.max_frames} would subsample the tokens of clips longer "
                             f"than that; set the experiment's max_frames >= extractors.text.max_length "
                             f"({ext.tc.max_length})")
        top = copy.deepcopy(encoder_layers(ext.model)[ext.sc.layer:]).cpu()
        conf = copy.deepcopy(ext.model.config)
        conf.num_hidden_layers = len(top)
        mode, normalize = ext.tc.pooling, ext.tc.normalize
        if ext.pool_spec is not None:   # pooling 'model': the checkpoint's own (all-MiniLM: mean + L2 normalise)
            mode, normalize = ext.pool_spec["mode"], ext.pool_spec["normalize"] or normalize
        return cls(conf.to_json_string(), ext.sc.layer, mode, bool(normalize), top)

    @classmethod
    def _vggish(cls, ext) -> "Backbone":
        from pipeline.audio.vggish_net import EMBEDDING_SIZE

        if ext.vcfg.postprocess:
            raise ValueError(f"head {KIND} on {VGGISH_STATES}: extractors.vggish.postprocess (PCA + 8-bit "
                             f"quantisation) cannot be trained through; set it to false")
        conf = json.dumps({"model_type": "vggish", "hidden_size": EMBEDDING_SIZE})
        return cls(conf, 0, "rows", False, copy.deepcopy(ext.model.embeddings).cpu(), "vggish",
                   bool(ext.vcfg.relu_output))

    def doc(self) -> dict:
        return {"config_json": self.config_json, "layer": self.layer, "pooling": self.pooling,
                "normalize": self.normalize, "kind": self.kind, "relu_output": self.relu_output}

    @classmethod
    def from_doc(cls, doc: dict) -> "Backbone":
        """The architecture only (weights come with the head's state_dict)."""
        if doc.get("kind") == "vggish":
            from pipeline.audio.vggish_net import VGGish

            return cls(doc["config_json"], int(doc["layer"]), doc["pooling"], bool(doc["normalize"]),
                       VGGish().embeddings, "vggish", bool(doc["relu_output"]))
        from transformers import AutoConfig, AutoModel

        conf_dict = json.loads(doc["config_json"])
        conf = AutoConfig.for_model(conf_dict.pop("model_type"), **conf_dict)
        layers = encoder_layers(AutoModel.from_config(conf))
        return cls(doc["config_json"], int(doc["layer"]), doc["pooling"], bool(doc["normalize"]), layers)


# ---------------------------------------------------------------- modules
class TopLayers(nn.Module):
    """(B, T, D) cached states + lengths (B,) -> (B, D) pooled output of the rebuilt layers.

    The lower len - n_trainable layers stay frozen (eval mode, no gradient). A batch runs as `chunks` groups
    of similar length, each padded to its own longest clip; clips without text pool to 0."""

    per_row = False

    def __init__(self, backbone: Backbone, n_trainable: int, chunks: int):
        super().__init__()
        self.layers = backbone.layers
        self.n_frozen = len(self.layers) - n_trainable
        self.pooling, self.normalize, self.chunks = backbone.pooling, backbone.normalize, max(1, chunks)
        for p in self.layers[: self.n_frozen].parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "TopLayers":
        super().train(mode)
        for layer in self.layers[: self.n_frozen]:
            layer.eval()   # frozen layers: no dropout, so they compute exactly what the extractor would
        return self

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], x.shape[-1])
        real = torch.nonzero(lengths > 0).flatten()
        order = real[torch.argsort(lengths[real], stable=True)]
        for chunk in torch.tensor_split(order, min(self.chunks, max(1, len(order)))):
            if not len(chunk):
                continue
            t = int(lengths[chunk].max())
            h, mask = x[chunk, :t], valid_mask(lengths[chunk], t)
            add = additive_mask(mask, h.dtype)
            with torch.no_grad():
                h = run_layers(self.layers[: self.n_frozen], h, add)
            h = run_layers(self.layers[self.n_frozen:], h, add)
            out = out.index_copy(0, chunk, pool_tokens(h, mask, self.pooling, self.normalize))
        return out


class FCTop(nn.Module):
    """(B, T, 12288) cached VGGish FC inputs + lengths -> (B, T, 128) embeddings of the rebuilt FC block; its
    lower Linear layers (all but the top n_trainable) stay frozen. Padding rows stay 0."""

    per_row = True

    def __init__(self, backbone: Backbone, n_trainable: int):
        super().__init__()
        self.layers = backbone.layers
        linear = [i for i, m in enumerate(self.layers) if isinstance(m, nn.Linear)]
        n_frozen = len(linear) - n_trainable
        self.split = linear[n_frozen] if n_frozen < len(linear) else len(self.layers)
        self.relu_output = backbone.relu_output
        for p in self.layers[: self.split].parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = valid_mask(lengths, x.shape[1])
        with torch.no_grad():
            h = self.layers[: self.split](x[mask])
        h = self.layers[self.split:](h)
        if self.relu_output:
            h = torch.relu(h)
        return h.new_zeros(*mask.shape, h.shape[-1]).index_put((mask,), h)


class TopEncoder(nn.Module):
    """Rebuilt layers (+ pooling for text), then exactly the `mlp` head's RowEncoder: on the one pooled row per
    clip (text) or on each clip's embedding rows (vggish)."""

    def __init__(self, top: TopLayers, dim: int):
        super().__init__()
        self.top = top
        self.rows = RowEncoder(dim)
        self.out_dim = dim

    @property
    def norm(self):   # FusionHead.set_input_stats sets the z-score statistics here
        return self.rows.norm

    def features(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the row encoder reads: (B, T', D) rows + their lengths."""
        if self.top.per_row:
            return self.top(x, lengths), lengths
        return self.top(x, lengths)[:, None], (lengths > 0).long()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.rows(*self.features(x, lengths))


class FinetuneTopModel(FusionHead):
    """A FusionHead, so heads.train.fit_neural trains it like any neural head; two extras it looks for:
    input_stats (z-score statistics of the pooled vectors, not of the token rows) and param_groups."""

    def __init__(self, key: str, backbone: Backbone, exp: ExperimentConfig, n_classes: int):
        dim = json.loads(backbone.config_json)["hidden_size"]
        k = exp.finetune.layers_trainable
        n_top = backbone.n_layers
        n_trainable = n_top if k == "all" else int(k)
        if not 0 <= n_trainable <= n_top:
            raise ValueError(f"finetune.layers_trainable={k}: {n_top} layers are rebuilt above the cache; "
                             f"use 0..{n_top} or 'all'")
        top = (FCTop(backbone, n_trainable) if backbone.kind == "vggish"
               else TopLayers(backbone, n_trainable, exp.finetune.length_chunks))
        super().__init__({key: TopEncoder(top, dim)}, ConcatFusion(dim),
                         MLPClassifier(dim, exp.mlp.hidden, n_classes, exp.mlp.dropout))
        self.backbone_lr = exp.finetune.backbone_lr
        self.eval_batch_size = exp.train.eval_batch_size

    @torch.no_grad()
    def input_stats(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z-score statistics of what the row encoder reads (pooled vectors / embeddings), train split."""
        enc = self.encoder(self.keys[0])
        was = enc.top.training
        enc.top.eval()
        parts = [enc.features(x[s:s + self.eval_batch_size], lengths[s:s + self.eval_batch_size])
                 for s in range(0, len(x), self.eval_batch_size)]
        enc.top.train(was)
        return input_stats(torch.cat([r for r, _ in parts]), torch.cat([n for _, n in parts]))

    def param_groups(self, lr: float) -> list[dict]:
        layers = self.encoder(self.keys[0]).top.layers
        backbone = {id(p) for p in layers.parameters()}
        groups = [{"params": [p for p in self.parameters() if id(p) not in backbone], "lr": lr},
                  {"params": [p for p in layers.parameters() if p.requires_grad], "lr": self.backbone_lr}]
        return [g for g in groups if g["params"]]


# ---------------------------------------------------------------- the head kind
class FinetuneTopHead(NeuralHead):
    """The registry's `finetune_top`: a FinetuneTopModel trained by fit_neural like every neural kind; the
    backbone it rebuilds comes from the store's extractor metadata (prepare), and travels in the checkpoint."""

    BACKBONE = "finetune_backbone"   # its entry in HeadData.meta, set by prepare()
    backbone: Backbone

    @classmethod
    def prepare(cls, cfg: HeadsConfig, stores: dict, exp: ExperimentConfig) -> dict:
        _one_modality(exp.modalities)
        key = exp.modalities[0]
        return {cls.BACKBONE: Backbone.from_store(cfg, stores[key], key, exp)}

    @classmethod
    def build(cls, exp, input_dims, n_classes):
        raise TypeError(f"head {KIND} is built from its backbone (prepare / load), not from input widths alone")

    @classmethod
    def fit(cls, exp: ExperimentConfig, data, keys: list[str], seed: int, device: torch.device) -> "FinetuneTopHead":
        from heads.neural import fit_neural

        _one_modality(keys)
        backbone = data.meta.get(cls.BACKBONE)
        if backbone is None:
            raise ValueError(f"head {KIND}: no backbone in the training data (train it through run_experiment, "
                             f"which asks FinetuneTopHead.prepare for it)")
        f = fit_neural(KIND, exp, data, keys, seed, device, build=lambda: _fresh(keys[0], backbone, exp, data.n_classes))
        m = "+".join(keys)
        record = FitRecord([dict(h, seed=seed, modality=m) for h in f.history], {m: f.best_epoch}, {m: f.epochs_run},
                           f.seconds, f.schedule.as_dict())
        head = cls(f.model, data.multilabel, exp.train.eval_batch_size, device, record)
        head.backbone = backbone
        return head

    def state(self) -> dict:
        return {**super().state(), "finetune": self.backbone.doc()}

    @classmethod
    def load(cls, state: dict, exp: ExperimentConfig, input_dims: dict[str, int], n_classes: int,
             multilabel: bool) -> "FinetuneTopHead":
        backbone = Backbone.from_doc(state["finetune"])
        model = FinetuneTopModel(exp.modalities[0], backbone, exp, n_classes)
        model.load_state_dict(state["state_dict"])
        model.eval()
        head = cls(model, multilabel, exp.train.eval_batch_size)
        head.backbone = backbone
        return head

    @classmethod
    def search_kind(cls, n_modalities: int) -> Optional[str]:
        return None   # `tune` does not search the backbone's layers


def _one_modality(keys: list[str]) -> None:
    if len(keys) != 1:
        raise ValueError(f"head {KIND} takes one modality ({STATES_EXTRACTOR}.<field> or {VGGISH_STATES}), got {keys}")


def _fresh(key: str, backbone: Backbone, exp: ExperimentConfig, n_classes: int) -> FinetuneTopModel:
    """A new model: the rebuilt layers start from the backbone's pretrained weights every seed; the MLP is
    drawn from the RNG as build_head('mlp') draws it (fit_neural seeds it just before)."""
    fresh = Backbone(backbone.config_json, backbone.layer, backbone.pooling, backbone.normalize,
                     copy.deepcopy(backbone.layers), backbone.kind, backbone.relu_output)
    return FinetuneTopModel(key, fresh, exp, n_classes)
