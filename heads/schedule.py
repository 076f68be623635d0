"""Training schedule: the recipe (auto / svcemotion / peng / your own) resolved against the training-set size.

    resolve_schedule(tc, n_train) -> Schedule      concrete numbers for one run, reported in the metrics JSON
    make_optimizer(params, s) / make_scheduler(opt, s)
    EarlyStopper(patience)

The 'auto' recipe (AdamW, lr 1e-3, linear warm-up then cosine decay to 0, per optimizer step) sizes batch and
epochs from N so that a run is about `adaptive.target_steps` optimizer steps for 100 to 100k clips, and stops
early when the validation score has not improved for `patience` epochs. The papers' recipes stay available as
named presets (SVCEmotion: Adam 1e-4, batch 6, 300 epochs, lr/10 at 150/230; Peng et al.: Adam 1e-4, batch 16,
100 epochs). A TrainConfig field set in params.yaml wins over the recipe's value.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from heads.config import TrainConfig


@dataclass(frozen=True)
class Schedule:
    recipe: str
    optimizer: str
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    lr_schedule: str
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    steps_per_epoch: int = 1
    early_stop_patience: int = 0            # 0 = off

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def as_dict(self) -> dict:
        return asdict(self)


def _pow2(x: float) -> int:
    return 2 ** max(0, round(math.log2(max(1.0, x))))


def adaptive_batch(tc: TrainConfig, n_train: int) -> int:
    a = tc.adaptive
    b = min(max(_pow2(n_train / a.clips_per_batch), a.min_batch), a.max_batch)
    return max(2, min(b, n_train // 2 or 2))   # at least two minibatches per epoch on tiny sets


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    full, rest = divmod(max(1, n_train), batch_size)
    # heads.train.minibatches folds a trailing 1-clip batch into the previous one
    return max(1, full + (1 if rest > 1 or (rest == 1 and full == 0) else 0))


def resolve_schedule(tc: TrainConfig, n_train: int, epochs_scale: float = 1.0) -> Schedule:
    """Concrete numbers for one run on `n_train` training clips. `epochs_scale` (tuning) multiplies the epochs."""
    r = tc.recipes[tc.recipe]
    pick = lambda name: getattr(tc, name) if getattr(tc, name) is not None else getattr(r, name)  # noqa: E731
    a = tc.adaptive
    batch = pick("batch_size") or adaptive_batch(tc, n_train)
    spe = steps_per_epoch(n_train, batch)
    epochs = pick("epochs")
    if epochs is None:
        epochs = min(max(math.ceil(a.target_steps / spe), a.min_epochs), a.max_epochs)
    epochs = max(1, round(epochs * epochs_scale))
    patience = pick("early_stop_patience")
    if patience is None:
        patience = max(a.min_patience, math.ceil(a.patience_frac * epochs))
    warmup = pick("warmup")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"train.warmup must be a fraction of the steps in [0, 1), got {warmup}")
    milestones = list(pick("lr_milestones") or [])
    lr_schedule = pick("lr_schedule")
    if tc.lr_milestones is not None and tc.lr_schedule is None:
        lr_schedule = "multistep"            # milestones set in params.yaml mean a step schedule
    return Schedule(recipe=tc.recipe, optimizer=pick("optimizer"), lr=float(pick("lr")),
                    weight_decay=float(pick("weight_decay")), batch_size=int(batch), epochs=int(epochs),
                    lr_schedule=lr_schedule, lr_milestones=milestones, lr_gamma=tc.lr_gamma,
                    warmup_steps=int(round(warmup * epochs * spe)), steps_per_epoch=spe,
                    early_stop_patience=int(patience))


def make_optimizer(params, s: Schedule, lr: float | None = None) -> torch.optim.Optimizer:
    """Adam(W); `params` may be parameter groups with their own 'lr'. Fused kernels where torch has them
    (about twice as cheap per step for these small heads)."""
    params = list(params)
    cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
    kw = {"lr": s.lr if lr is None else lr, "weight_decay": s.weight_decay}
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, TypeError):
        return cls(params, **kw)


def lr_factor(s: Schedule, step: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based)."""
    if s.warmup_steps and step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.lr_schedule == "multistep":
        epoch = step // s.steps_per_epoch
        return s.lr_gamma ** sum(epoch >= m for m in s.lr_milestones)
    if s.lr_schedule == "constant":
        return 1.0
    span = max(1, s.total_steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    if s.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress   # linear


def make_scheduler(opt: torch.optim.Optimizer, s: Schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(s, step))


class EarlyStopper:
    """Stop when the validation score has not improved for `patience` epochs (0 = never stop early)."""

    def __init__(self, patience: int):
        self.patience, self.best_epoch, self.best = patience, 0, None

    def update(self, epoch: int, score: float) -> bool:
        """Record one evaluation; True when this score is the best so far (first epoch reaching it wins)."""
        if self.best is None or score > self.best:
            self.best, self.best_epoch = score, epoch
            return True
        return False

    def should_stop(self, epoch: int) -> bool:
        return self.patience > 0 and self.best is not None and epoch - self.best_epoch >= self.patience
