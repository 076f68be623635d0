"""The executor interface the orchestrator (pipeline/extract.py) drives.

    with executor:                      # close() on the way out, whatever happened
        described = executor.start()    # load the extractors where they run; their fingerprints
        ...                             # the orchestrator plans against a StoreView of `described`
        outcome = executor.run(todo, view, show_progress)
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from pipeline.config import PipelineConfig
from pipeline.store_view import StoreView
from pipeline.worker import ClipRecord, Outcome


class Executor(ABC):
    def __init__(self, cfg: PipelineConfig, specs: list[str], run_id: str):
        self.cfg, self.specs, self.run_id = cfg, specs, run_id
        self.holder = f"run {run_id}"   # who holds the stores' writer locks while this run plans and writes

    @abstractmethod
    def start(self) -> dict:
        """Load the extractors wherever they run. Returns plain data:
        {"order": keys in dependency order, "extractors": key -> Worker.describe()'s entry (spec order),
         "workers": [{"writer", "host", "pid", ...} per worker]}. Raises a load error as is."""

    @abstractmethod
    def run(self, todo: list[ClipRecord], view: StoreView, show_progress: bool = True) -> Outcome:
        """Extract the planned clips (their `missing` extractors); every clip is committed or in the
        outcome's failures when this returns. `view` is the store view the plan was made against."""

    def close(self) -> None:
        """Release what start() took (actors, a cluster connection)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
