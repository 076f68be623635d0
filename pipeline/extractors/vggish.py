"""VGGish audio embeddings (SVCEmotion): 16 kHz mono -> log-mel 96 x 64 examples -> 128-d per example.

Rows: one per example (0.96 s, non-overlapping by default; `example_hop_frames` < 96 overlaps them), each with its
[start, end] seconds from the clip start. Arrays: `features` (T, 128) float32 embeddings, pre-activation unless
`relu_output`; with `postprocess` the PCA + 8-bit quantised (T, 128) uint8 form of the TF postprocessor.
Empty output (0 rows) is documented, not an error: a clip whose audio is shorter than one example.
A clip without an audio stream (audio=None) raises a ValueError naming the clip (the runner records it).

Weights: `vggish-10086976.pth` (torchvggish release) from the weights dir or the torch hub cache. Missing ->
MissingWeightsError, unless params allow untrained VGGish (then seeded random init, pretrained: false).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from pipeline.config import ExtractorSettings, VGGishConfig
from pipeline.extractors.base import ClipFeatures, ClipInput, Extractor, WeightsInfo, register
from pipeline.spilled_audio import as_signal
from pipeline.weights import (MissingWeightsError, find_weights, missing_message, torch_hub_checkpoint_dir,
                              untrained_allowed, verify)

WEIGHTS_URL_HINT = ("Get it from the torchvggish release: "
                    "https://github.com/harritaylor/torchvggish/releases/download/v0.1/{file} "
                    "(or convert the TF-Hub model with pipeline/audio/tfhub_convert.py).")
UNTRAINED_SOURCE = "random init (allowed in params)"


@register
class VGGishExtractor(Extractor):
    name = "vggish"
    family = "audio"
    needs = frozenset({"audio"})
    version = "1"

    def __init__(self, section: VGGishConfig, settings: ExtractorSettings, variant: Optional[str] = None) -> None:
        super().__init__(section, settings, variant)
        self.vcfg = section
        self.device = None
        self.model = None
        self.frontend = None
        self.postprocessor = None

    def params(self) -> dict:
        # batch_examples / chunk_seconds / file names do not change the output (weights enter via sha256)
        keep = {k: v for k, v in self.vcfg.model_dump().items()
                if k not in ("batch_examples", "chunk_seconds", "weights_file", "pca_file")}
        if self.weights is not None and self.weights.pretrained:
            keep.pop("init_seed", None)
        keep["precision"] = self._precision()
        return keep

    def _precision(self) -> str:
        """Autocast only applies on GPU; CPU output is fp32 whatever params.yaml says."""
        on_gpu = self.device is not None and self.device.type == "cuda"
        return self.settings.runtime.precision if on_gpu else "fp32"

    # ------------------------------------------------------------------ load
    def _resolve(self, filename: str):
        path = find_weights(self.settings, filename)
        if path is None and not untrained_allowed(self.settings, self.name):
            raise MissingWeightsError(missing_message(self.settings, self.name, filename,
                                                      WEIGHTS_URL_HINT.format(file=filename)))
        return path

    def load(self) -> WeightsInfo:
        import hashlib

        import torch

        from pipeline.audio.frontend import LogMelFrontend
        from pipeline.audio.postprocess import Postprocessor, load_pca_file
        from pipeline.audio.vggish_net import EMBEDDING_SIZE, build_vggish, load_state_dict_file
        from pipeline.device import pick_device

        self.device = pick_device(self.settings.runtime)
        weights_path = self._resolve(self.vcfg.weights_file)
        pca_path = self._resolve(self.vcfg.pca_file) if self.vcfg.postprocess else None
        if self.vcfg.postprocess and (weights_path is None) != (pca_path is None):
            # never mix a trained net with a fake PCA (or the reverse) behind one pretrained flag
            raise MissingWeightsError(missing_message(
                self.settings, self.name, self.vcfg.pca_file if pca_path is None else self.vcfg.weights_file,
                "VGGish with postprocess needs both the network and the PCA file (or neither, when untrained is allowed)."))

        if weights_path is not None:
            digest = verify(self.settings, weights_path)
            state = load_state_dict_file(weights_path)
            model = build_vggish(state, self.vcfg.relu_output, origin=str(weights_path))
            if pca_path is not None:
                pca_digest = verify(self.settings, pca_path)
                self.postprocessor = Postprocessor(*load_pca_file(pca_path))
                digest = hashlib.sha256(f"{digest}:{pca_digest}".encode()).hexdigest()
            source = "torch hub cache" if weights_path.parent == torch_hub_checkpoint_dir() else "weights dir"
            self.weights = WeightsInfo(pretrained=True, path=str(weights_path), sha256=digest, source=source)
        else:
            model = build_vggish(None, self.vcfg.relu_output, seed=self.vcfg.init_seed)
            if self.vcfg.postprocess:
                self.postprocessor = Postprocessor.identity(EMBEDDING_SIZE)
            self.weights = WeightsInfo(pretrained=False, path=None, sha256=None, source=UNTRAINED_SOURCE)
        # NHWC conv kernels (oneDNN on CPU, cuDNN tensor cores on GPU) run this conv stack ~1.5x faster
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.frontend = LogMelFrontend(self.vcfg, self.device)
        return self.weights

    # ------------------------------------------------------------------ work
    def _check(self, clip: ClipInput) -> None:
        if clip.audio is None:
            raise ValueError(f"vggish: clip {clip.clip_id!r} ({clip.path}) has no audio (no audio stream decoded)")
        if clip.sample_rate != self.vcfg.sample_rate:
            raise ValueError(f"vggish: clip {clip.clip_id!r} audio is {clip.sample_rate} Hz; VGGish needs "
                             f"{self.vcfg.sample_rate} Hz (decode with media.sample_rate = {self.vcfg.sample_rate})")
        if as_signal(clip.audio).ndim != 1:
            raise ValueError(f"vggish: clip {clip.clip_id!r} audio must be mono (S,), got shape {clip.audio.shape}")

    def embed(self, examples) -> "np.ndarray":
        """(E, 96, 64) tensor on the device -> (E, 128) float32, in chunks of batch_examples (bounded memory)."""
        import torch

        from pipeline.device import autocast

        out = []
        if examples.shape[0] == 0:   # every clip of the batch shorter than one example
            return np.zeros((0, self.model.embeddings[-1].out_features), np.float32)
        with torch.inference_mode(), autocast(self.device, self.settings.runtime.precision):
            for chunk in torch.split(examples, max(1, self.vcfg.batch_examples)):
                x = chunk.unsqueeze(1).contiguous(memory_format=torch.channels_last)
                out.append(self.model(x).float().cpu())
        return torch.cat(out).numpy()

    def _embed_stream(self, blocks) -> np.ndarray:
        """`embed` over a stream of example blocks (every clip of the batch, in order), batch_examples at a time:
        the network sees the same batches as on the concatenation of all examples, and only the outputs of
        the whole clip are kept, never its log-mel examples."""
        import torch

        batch = max(1, self.vcfg.batch_examples)
        pending: list = []
        n_pending = 0
        out = []
        for block in blocks:
            pending.append(block)
            n_pending += block.shape[0]
            if n_pending >= batch:
                x = torch.cat(pending)
                full = n_pending // batch * batch
                out.append(self.embed(x[:full]))
                pending, n_pending = ([x[full:]], n_pending - full) if full < n_pending else ([], 0)
        if n_pending or not out:      # the last partial batch; or no example at all (0 rows of the right width)
            empty = torch.zeros((0, self.vcfg.example_frames, self.vcfg.n_mels), device=self.device)
            out.append(self.embed(torch.cat(pending) if pending else empty))
        return np.concatenate(out)

    def extract_batch(self, clips: list[ClipInput]) -> list[ClipFeatures]:
        if self.model is None:
            raise RuntimeError("vggish: call load() before extract_batch()")
        for clip in clips:
            self._check(clip)
        waves = [as_signal(c.audio) for c in clips]      # a spilled long clip is read a chunk at a time
        counts = [self.frontend.n_examples(len(w)) for w in waves]
        embeddings = self._embed_stream(self.frontend.example_blocks(waves))
        if self.postprocessor is not None:
            embeddings = self.postprocessor(embeddings)
        results = []
        for clip, n, emb in zip(clips, counts, np.split(embeddings, np.cumsum(counts)[:-1])):
            attrs = {"pretrained": bool(self.weights.pretrained), "n_examples": int(n),
                     "postprocessed": self.postprocessor is not None,
                     "audio_seconds": round(len(clip.audio) / clip.sample_rate, 4)}
            if n == 0:
                attrs["empty_reason"] = (f"audio shorter than one {self.vcfg.example_frames}-frame example "
                                         f"({len(clip.audio)} samples)")
            results.append(ClipFeatures({"features": emb}, self.frontend.example_times(n), attrs))
        return results
