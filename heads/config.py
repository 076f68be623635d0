"""The heads' part of params.yaml: experiments, training recipes and per-head sections.

`HeadsConfig` = the pipeline's sections (the heads read the cache the pipeline wrote) plus the experiments.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from pipeline.config import PipelineConfig, Strict


class RecipeConfig(Strict):
    """A named training recipe: what a TrainConfig field left unset (None) takes.
    'auto' sizes batch and epochs from the training-set size (see AdaptiveConfig)."""
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: Optional[int] = None        # None = adaptive (from the number of training clips)
    epochs: Optional[int] = None            # None = adaptive
    lr_schedule: Literal["constant", "multistep", "cosine", "linear"] = "cosine"
    lr_milestones: list[int] = Field(default_factory=list)   # multistep: epochs where lr *= lr_gamma
    warmup: float = 0.05                    # fraction of all optimizer steps spent warming lr up from 0
    early_stop_patience: Optional[int] = None   # epochs without a better val score; None = adaptive, 0 = off


def _default_recipes() -> dict[str, RecipeConfig]:
    return {
        "auto": RecipeConfig(),
        # SVCEmotion: Adam lr 1e-4, batch 6, 300 epochs, wd 1e-5, lr/10 at epochs 150 and 230
        "svcemotion": RecipeConfig(optimizer="adam", lr=1e-4, weight_decay=1e-5, batch_size=6, epochs=300,
                                   lr_schedule="multistep", lr_milestones=[150, 230], warmup=0.0,
                                   early_stop_patience=0),
        # Peng et al. (NeXtVLAD): Adam lr 1e-4, batch 16, 100 epochs, no decay stated
        "peng": RecipeConfig(optimizer="adam", lr=1e-4, weight_decay=0.0, batch_size=16, epochs=100,
                             lr_schedule="constant", warmup=0.0, early_stop_patience=0),
    }


class AdaptiveConfig(Strict):
    """How the 'auto' recipe sizes a run from N training clips: batch = N / clips_per_batch rounded to a power
    of two within [min_batch, max_batch]; epochs = target_steps / steps per epoch within [min_epochs, max_epochs];
    early-stop patience = max(min_patience, patience_frac x epochs)."""
    clips_per_batch: float = 100.0
    min_batch: int = 16
    max_batch: int = 256
    target_steps: int = 3000
    min_epochs: int = 10
    max_epochs: int = 300
    patience_frac: float = 0.25
    min_patience: int = 5


class TrainConfig(Strict):
    # Unset fields (None) come from the recipe; a value set here wins over the recipe.
    recipe: str = "auto"                    # a key of `recipes`: auto | svcemotion | peng | your own
    recipes: dict[str, RecipeConfig] = Field(default_factory=_default_recipes)
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig)
    optimizer: Optional[Literal["adam", "adamw"]] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    batch_size: Optional[int] = None
    epochs: Optional[int] = None
    lr_schedule: Optional[Literal["constant", "multistep", "cosine", "linear"]] = None
    lr_milestones: Optional[list[int]] = None
    lr_gamma: float = 0.1
    warmup: Optional[float] = None
    early_stop_patience: Optional[int] = None
    # Without a val split in the clip table, this fraction of train (chosen by clip-id hash, so the same clips
    # every run) is held out for early stopping, model choice and thresholds. 0 = train on all, keep the last epoch.
    val_carve: float = 0.1
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    loss: Literal["auto", "bce", "ce", "ep_ce"] = "auto"   # auto: bce for multi-label, ce otherwise
    # Class weights: bce pos_weight (negatives/positives per class) or ce class weights (inverse frequency);
    # sqrt = their square root; auto = inverse for bce (SVCEmotion), none for ce.
    class_balance: Literal["auto", "none", "inverse", "sqrt"] = "auto"
    # EP-CE (Wu et al., eq. 9): extra weight when predicted polarity != true polarity; 0.5 each was best (Tab. 9)
    ep_ce_gamma: dict[str, float] = Field(default_factory=lambda: {"positive": 0.5, "neutral": 0.5, "negative": 0.5})
    polarity: dict[str, int] = Field(default_factory=dict)  # class -> +1/0/-1 for ep_ce; empty = built-in lexicon
    standardize: bool = True                # z-score each modality with train-split statistics
    select_metric: Literal["auto", "mean", "map", "accuracy", "f1_weighted", "f1_macro", "loss"] = "auto"
    eval_every: int = 1                     # epochs between validation passes (early model choice)
    eval_batch_size: int = 256
    threshold: float = 0.5                  # fixed multi-label decision threshold (RA, F1)
    tune_thresholds: bool = True            # also report per-class thresholds tuned on val for F1 (the real-world MER system)
    pr_curve_points: int = 200              # max points per class written for PR-curve plots
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # 1: these small heads train faster on one thread (no sync overhead, measured 9x on a loaded 2-core box)
    # and their numbers then do not depend on the machine's core count; 0 = torch default
    num_threads: int = 1

    @model_validator(mode="after")
    def _recipe_known(self) -> "TrainConfig":
        if self.recipe not in self.recipes:
            raise ValueError(f"train.recipe {self.recipe!r} is not in train.recipes ({sorted(self.recipes)})")
        return self


class NeXtVLADConfig(Strict):
    transformer_heads: int = 4
    transformer_layers: int = 1
    transformer_ff_mult: int = 2            # feed-forward width = this x model width
    expansion: int = 2
    groups: int = 8
    clusters: int = 4
    se_dim: int = 512                       # SE output = classifier input (Peng et al.: 512-d)
    se_reduction: int = 4
    hidden: int = 256
    dropout: float = 0.1


class MLPConfig(Strict):
    hidden: int = 256
    dropout: float = 0.2


class LogRegConfig(Strict):
    c: float = 1.0                          # inverse L2 strength (sklearn C)
    max_iter: int = 1000


class FinetuneConfig(Strict):
    """Head finetune_top: the backbone's layers above the cached text_states layer, rebuilt with their
    pretrained weights, then the extractors.text pooling and the MLP of `mlp`; trained on the cached states."""
    layers_trainable: Union[int, Literal["all"]] = "all"   # top k of the rebuilt layers learn; 0 = all frozen
    backbone_lr: float = 5e-5               # lr of the rebuilt layers (small: pretrained); the MLP uses train.lr
    # A minibatch runs its layers as this many chunks of similar token counts, each padded only to its own
    # longest clip (random batches of utterances are mostly padding otherwise); the result is the same.
    length_chunks: int = 4


class TuneConfig(Strict):
    """`emocache tune`: the Optuna search space (validation split only) and how the search runs."""
    trials: int = 30
    seed: int = 0                           # sampler seed and the one training seed each trial uses
    # own = the experiment's head; logreg = the registry's sklearn kind (only its C is searched)
    heads: list[str] = Field(default_factory=lambda: ["linear", "mlp", "logreg", "own"])
    lr: tuple[float, float] = (1e-4, 3e-3)              # log-uniform
    weight_decay: tuple[float, float] = (1e-6, 1e-1)    # log-uniform
    hidden: list[int] = Field(default_factory=lambda: [128, 256, 512, 1024])
    dropout: tuple[float, float] = (0.0, 0.5)
    epochs_scale: tuple[float, float] = (0.5, 2.0)      # x the recipe's epochs (log-uniform)
    class_balance: list[str] = Field(default_factory=lambda: ["none", "sqrt", "inverse"])
    logreg_c: tuple[float, float] = (1e-3, 1e2)         # logreg's C (log-uniform)
    # A val split this small scores noise (12 clips for 8 classes): below cv_below_clips val clips each trial is
    # scored instead by cv_folds-fold cross-validation over train + val (test rows are still never read).
    cv_folds: int = 5                       # < 2 = never cross-validate
    cv_below_clips: int = 200
    prune: bool = True                      # stop hopeless trials early (Optuna median pruner on val scores)
    prune_startup_trials: int = 5
    prune_warmup_epochs: int = 5


class ExperimentConfig(Strict):
    dataset: str
    about: str = ""                         # one line for `emocache results`: what the experiment shows
    modalities: list[str]                   # store keys, e.g. ['vggish', 'text.transcript']
    head: str = "mlp"                       # a kind in heads/registry.py (known_kinds())
    late_fusion_weights: Optional[list[float]] = None   # None = tuned on validation
    late_fusion_grid_step: float = 0.05     # simplex grid step when tuning late-fusion weights
    max_frames: int = 100                   # longer clips are subsampled uniformly to this many rows
    train: TrainConfig = Field(default_factory=TrainConfig)
    mlp: MLPConfig = Field(default_factory=MLPConfig)
    nextvlad: NeXtVLADConfig = Field(default_factory=NeXtVLADConfig)
    logreg: LogRegConfig = Field(default_factory=LogRegConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)

    @field_validator("head")
    @classmethod
    def _head_is_a_known_kind(cls, v: str) -> str:
        from heads.registry import known_kinds   # names only: imports no torch

        if v not in known_kinds():
            raise ValueError(f"unknown head {v!r}; known kinds: {', '.join(known_kinds())}")
        return v


class HeadsConfig(PipelineConfig):
    experiments: dict[str, ExperimentConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _experiments_name_known_datasets(self) -> "HeadsConfig":
        for name, exp in self.experiments.items():
            if exp.dataset not in self.datasets:
                raise ValueError(
                    f"experiment {name!r} names dataset {exp.dataset!r}; known datasets: {sorted(self.datasets)}"
                )
        return self
