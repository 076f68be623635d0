"""VGGish states for cached fine-tuning: per 0.96 s example, the input of the fully connected block.

Key 'vggish_states' (family and store 'audio_states'): the conv stack's (512, 6, 4) map flattened channel-last
(12288-d, as the FC layers consume it), fp16 by default. Head finetune_top (heads/finetune.py) rebuilds the FC
block 12288-4096-4096-128 with the same weights and trains its top layers on these rows; the conv stack and the
log-mel front end never run again. Rows and times are those of 'vggish'. relu_output and postprocess act after
the FC block, so they are not part of this output (the head applies relu_output; it refuses postprocess).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from pipeline.config import ExtractorSettings, VGGishConfig, VGGishStatesConfig
from pipeline.extractors.base import WeightsInfo, register
from pipeline.extractors.text_states import STORE_DTYPES
from pipeline.extractors.vggish import VGGishExtractor


@register
class VGGishStatesExtractor(VGGishExtractor):
    name = "vggish_states"
    family = "audio_states"
    version = "1"

    @classmethod
    def section_of(cls, extractors) -> tuple[VGGishConfig, VGGishStatesConfig]:
        return extractors.vggish, extractors.vggish_states   # the network and front end are extractors.vggish's

    def __init__(self, sections: tuple[VGGishConfig, VGGishStatesConfig], settings: ExtractorSettings,
                 variant: Optional[str] = None) -> None:
        vggish, self.sc = sections
        super().__init__(vggish, settings, variant)

    def params(self) -> dict:
        p = {k: v for k, v in super().params().items() if k not in ("relu_output", "postprocess")}
        p["dtype"] = self.sc.dtype
        return p

    def load(self) -> WeightsInfo:
        info = super().load()
        self.postprocessor = None   # PCA acts on 128-d embeddings, not on the FC input
        return info

    def embed(self, examples) -> np.ndarray:
        """(E, 96, 64) -> (E, 12288) FC-block inputs, in chunks of batch_examples."""
        import torch

        from pipeline.audio.vggish_net import FLAT_SIZE
        from pipeline.device import autocast

        dtype = STORE_DTYPES[self.sc.dtype]
        if examples.shape[0] == 0:
            return np.zeros((0, FLAT_SIZE), dtype)
        out = []
        with torch.inference_mode(), autocast(self.device, self.settings.runtime.precision):
            for chunk in torch.split(examples, max(1, self.vcfg.batch_examples)):
                x = self.model.features(chunk.unsqueeze(1).contiguous(memory_format=torch.channels_last))
                out.append(x.permute(0, 2, 3, 1).flatten(1).float().cpu())   # channel-last, as VGGish.forward
        return torch.cat(out).numpy().astype(dtype)
