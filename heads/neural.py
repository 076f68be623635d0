"""Neural head kinds (heads/models.py networks) and the loop that trains them.

    fit_neural(kind, exp, data, keys, seed, device) -> Fit     one network, one seed (tune searches through it)
    LinearHead / MLPHead / EarlyFusionHead / NeXtVLADHead      the registry's neural kinds: each says how to
                                                               build its network, NeuralHead does the rest

Per fit: the schedule of the experiment's recipe (heads/schedule.py: sized to the training set, warm-up +
decay, early stopping on the validation score); when a val split exists the epoch with the best validation
score is kept (early model choice).
"""
from __future__ import annotations

import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from heads.config import ExperimentConfig, TrainConfig
from pipeline.progress import progress
from heads.data import HeadData
from heads.losses import build_loss
from heads.metrics import selection_score
from heads.models import (FusionHead, Inputs, input_stats, linear_probe, nextvlad_head, predict_logits,
                          probabilities, row_mlp)
from heads.registry import FitRecord, HeadKind, head_kind, known_kinds
from heads.schedule import EarlyStopper, Schedule, make_optimizer, make_scheduler, resolve_schedule
from heads.scoring import select_metric, truth


@dataclass
class Fit:
    model: FusionHead
    history: list[dict]
    best_epoch: int
    seconds: float
    schedule: Optional[Schedule] = None
    epochs_run: int = 0


def resolve_device(tc: TrainConfig) -> torch.device:
    if tc.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device")
    if tc.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(tc.device)


def minibatches(perm: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Chunks of `size`; a trailing chunk of one clip joins the previous one (BatchNorm needs two)."""
    chunks = list(torch.split(perm, size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def neural_kinds() -> list[str]:
    return [k for k in known_kinds() if issubclass(head_kind(k), NeuralHead)]


def build_head(kind: str, exp: ExperimentConfig, input_dims: dict[str, int], n_classes: int) -> FusionHead:
    """input_dims: {store key: feature width}, in the order the modalities are concatenated."""
    cls = head_kind(kind)
    if not issubclass(cls, NeuralHead):
        raise ValueError(f"build_head: {kind!r} is not a neural head ({', '.join(neural_kinds())})")
    return cls.build(exp, input_dims, n_classes)


def fit_neural(kind: str, exp: ExperimentConfig, data: HeadData, keys: list[str], seed: int,
               device: torch.device, on_eval=None, show_progress: bool = True, build=None) -> Fit:
    """on_eval(epoch, val_score), when given, is called after each validation pass (tuning prunes through it).
    build(): makes the model instead of build_head (finetune_top); it may bring its own input_stats and
    param_groups(lr)."""
    tc = exp.train
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    train_idx = data.splits["train"]
    model = build() if build is not None else build_head(kind, exp, {k: data.modalities[k].dim for k in keys},
                                                         data.n_classes)
    if tc.standardize:
        own = getattr(model, "input_stats", None)   # finetune_top: statistics of its rebuilt layers' output
        model.set_input_stats({k: own(*data.modalities[k].take(train_idx)) if own is not None
                               else data.input_stats(k, train_idx, tc.eval_batch_size) for k in keys})
    model.to(device)
    loss_fn = build_loss(tc, data.vocab, data.multilabel, data.y[train_idx]).to(device)
    schedule = resolve_schedule(tc, len(train_idx))
    groups = getattr(model, "param_groups", None)
    opt = make_optimizer(groups(schedule.lr) if groups is not None else model.parameters(), schedule)
    sched = make_scheduler(opt, schedule)
    stopper = EarlyStopper(schedule.early_stop_patience if data.has("val") else 0)
    epochs = schedule.epochs

    streamed = data.streamed(keys)   # a split larger than memory: minibatches come from the store
    inputs = {} if streamed else {k: tuple(t.to(device) for t in data.modalities[k].take(train_idx)) for k in keys}
    targets = data.targets(train_idx).to(device)
    has_val = data.has("val")
    if has_val:
        val_idx = data.splits["val"]
        val_inputs = None if streamed else data.inputs(val_idx, keys)   # streamed: read per eval batch
        val_targets = data.targets(val_idx).to(device)
        val_y = truth(data, "val")
        metric = select_metric(tc, data.multilabel)

    history, best_state, best_epoch, epoch = [], None, epochs, 0
    n = len(train_idx)
    t0 = time.perf_counter()
    desc = f"train {kind} {'+'.join(keys)} seed {seed}"
    with progress(total=epochs, desc=desc, unit="epoch", enabled=show_progress) as bar:   # log lines when not on a TTY
        for epoch in range(1, epochs + 1):
            model.train()
            total = torch.zeros((), device=device)
            batches = minibatches(torch.randperm(n, generator=order).to(device), schedule.batch_size)
            feed = (data.stream([train_idx[b.cpu()] for b in batches], keys) if streamed
                    else ({k: (x[b], l[b]) for k, (x, l) in inputs.items()} for b in batches))
            for b, batch in zip(batches, feed):
                if streamed:
                    batch = {k: (x.to(device), l.to(device)) for k, (x, l) in batch.items()}
                loss = loss_fn(model(batch), targets[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.detach() * len(b)   # no host sync per step
            row = {"epoch": epoch, "train_loss": float(total) / n}
            if has_val and (epoch % tc.eval_every == 0 or epoch == epochs):
                logits = (data.batched(lambda i: predict_logits(model, i, tc.eval_batch_size, device), val_idx, keys,
                                       tc.eval_batch_size) if streamed
                          else predict_logits(model, val_inputs, tc.eval_batch_size, device))
                val_loss = float(loss_fn(logits, val_targets))
                probs = probabilities(logits, data.multilabel).cpu().numpy()
                score = -val_loss if metric == "loss" else selection_score(metric, data.multilabel, val_y, probs,
                                                                          tc.threshold)
                row.update(val_loss=val_loss, val_score=score)
                if stopper.update(epoch, score):   # first epoch reaching the best score wins
                    best_epoch = epoch
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if on_eval is not None:
                    on_eval(epoch, score)
            history.append(row)
            bar.update(1)
            bar.set_postfix_str(f"loss {row['train_loss']:.4f}")
            if stopper.should_stop(epoch):
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return Fit(model, history, best_epoch, time.perf_counter() - t0, schedule, epoch)


class NeuralHead(HeadKind):
    """A FusionHead network trained by fit_neural; a subclass says only how to build it."""

    width_section = "mlp"

    def __init__(self, model: FusionHead, multilabel: bool, batch_size: int, device: Optional[torch.device] = None,
                 record: Optional[FitRecord] = None):
        self.model, self.multilabel, self.batch_size, self.device = model, multilabel, batch_size, device
        self.record = record or FitRecord()

    @classmethod
    @abstractmethod
    def build(cls, exp: ExperimentConfig, input_dims: dict[str, int], n_classes: int) -> FusionHead:
        """The untrained network for these modalities (input_dims: {store key: width}, in concatenation order)."""

    @classmethod
    def fit(cls, exp: ExperimentConfig, data: HeadData, keys: list[str], seed: int,
            device: torch.device) -> "NeuralHead":
        f = fit_neural(cls.name, exp, data, keys, seed, device)
        m = "+".join(keys)
        record = FitRecord([dict(h, seed=seed, modality=m) for h in f.history], {m: f.best_epoch}, {m: f.epochs_run},
                           f.seconds, f.schedule.as_dict())
        return cls(f.model, data.multilabel, exp.train.eval_batch_size, device, record)

    def predict_proba(self, inputs: Inputs) -> np.ndarray:
        logits = predict_logits(self.model, inputs, self.batch_size, self.device)
        return probabilities(logits, self.multilabel).cpu().numpy()

    def state(self) -> dict:
        return {"state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}

    @classmethod
    def load(cls, state: dict, exp: ExperimentConfig, input_dims: dict[str, int], n_classes: int,
             multilabel: bool) -> "NeuralHead":
        model = cls.build(exp, input_dims, n_classes)
        model.load_state_dict(state["state_dict"])
        return cls(model, multilabel, exp.train.eval_batch_size)

    @classmethod
    def search_kind(cls, n_modalities: int) -> Optional[str]:
        return cls.name


class LinearHead(NeuralHead):
    """A linear probe (several modalities: their row means concatenated)."""

    width_section = None   # no hidden layer

    @classmethod
    def build(cls, exp, input_dims, n_classes):
        return linear_probe(input_dims, n_classes)


class MLPHead(NeuralHead):
    """SVCEmotion: one modality's rows -> two fully connected layers."""

    @classmethod
    def build(cls, exp, input_dims, n_classes):
        if len(input_dims) != 1:
            raise ValueError(f"head 'mlp' takes one modality, got {list(input_dims)}; "
                             "use 'early_fusion' or 'late_fusion' to combine several")
        return row_mlp(input_dims, n_classes, exp.mlp)

    @classmethod
    def search_kind(cls, n_modalities: int) -> Optional[str]:
        return "early_fusion" if n_modalities > 1 else cls.name


class EarlyFusionHead(NeuralHead):
    """The MLP on the concatenated rows of several modalities."""

    @classmethod
    def build(cls, exp, input_dims, n_classes):
        return row_mlp(input_dims, n_classes, exp.mlp)


class NeXtVLADHead(NeuralHead):
    """Peng et al.: per modality Transformer encoder -> NeXtVLAD -> concatenation -> SE block -> MLP."""

    width_section = "nextvlad"

    @classmethod
    def build(cls, exp, input_dims, n_classes):
        return nextvlad_head(input_dims, n_classes, exp.nextvlad)
