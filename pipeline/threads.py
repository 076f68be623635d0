"""How many threads each stage may use, decided in one place so extraction and head training never
oversubscribe the cores (on a loaded 2-core box torch's default of one thread per core made a small-MLP
step 7-11x slower than one thread: its OpenMP workers wait on each other whenever one is descheduled).

Budget: `num_threads` when > 0, else the CPUs this process may run on, split evenly over `workers`
processes sharing the machine (Ray actors, parallel runs). Then per stage:
  extract: torch intra-op = BLAS (NumPy/SciPy via threadpoolctl) = tokenizers = the budget; each of the
           `decode_workers` ffmpeg processes decoding ahead gets budget // decode_workers threads (>= 1).
  train:   the heads are small (an MLP step is ~1e5 FLOP per clip): one thread unless asked for more,
           since splitting such ops costs more in synchronisation than it gains.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Optional

Stage = Literal["extract", "train"]
SMALL_HEAD_THREADS = 1            # see the module docstring: train stage default

_APPLIED: Optional["ThreadPlan"] = None


@dataclass(frozen=True)
class ThreadPlan:
    stage: str
    torch: int                    # torch intra-op threads; BLAS and tokenizers get the same
    ffmpeg: int                   # threads per ffmpeg process (0 = ffmpeg's own choice)
    budget: int

    def describe(self) -> str:
        return (f"{self.stage}: torch/BLAS {self.torch}, ffmpeg {self.ffmpeg or 'auto'} per process, "
                f"budget {self.budget}")


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:        # not on Linux
        return max(1, os.cpu_count() or 1)


def plan_threads(num_threads: int, stage: Stage, workers: int = 1, decode_workers: int = 1,
                 cpus: Optional[int] = None) -> ThreadPlan:
    budget = num_threads if num_threads > 0 else max(1, (cpus or available_cpus()) // max(1, workers))
    if stage == "train":
        return ThreadPlan("train", num_threads if num_threads > 0 else SMALL_HEAD_THREADS, 1, budget)
    if stage != "extract":
        raise ValueError(f"unknown stage {stage!r} (extract | train)")
    return ThreadPlan("extract", budget, max(1, budget // max(1, decode_workers)), budget)


def apply(plan: ThreadPlan) -> ThreadPlan:
    """Make the plan this process's: torch, BLAS pools, the tokenizers' pool (if not started yet), ffmpeg."""
    global _APPLIED
    import torch

    torch.set_num_threads(plan.torch)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=plan.torch)   # NumPy/SciPy BLAS; stays in force (not used as a context)
    except ImportError:   # threadpoolctl comes with scikit-learn; without it BLAS keeps its own default
        pass
    os.environ.setdefault("RAYON_NUM_THREADS", str(plan.torch))   # HF tokenizers' pool, read when it starts
    _APPLIED = plan
    return plan


def for_extraction(cfg, workers: int = 1) -> ThreadPlan:
    """Apply the extract-stage plan from params: runtime.num_threads, media.decode_workers."""
    return apply(plan_threads(cfg.runtime.num_threads, "extract", workers, cfg.media.decode_workers))


def for_training(num_threads: int) -> ThreadPlan:
    """Apply the train-stage plan (train.num_threads, 0 = the small-head default)."""
    return apply(plan_threads(num_threads, "train"))


def ffmpeg_input_options() -> dict:
    """ffmpeg-python input kwargs for the applied plan: {'threads': n}, or {} when none was applied."""
    return {"threads": _APPLIED.ffmpeg} if _APPLIED is not None and _APPLIED.ffmpeg > 0 else {}
