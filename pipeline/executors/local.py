"""The local executor: one Worker in this process runs every planned clip."""
from __future__ import annotations

from pipeline.executors.base import Executor
from pipeline.store_view import StoreView
from pipeline.worker import ClipRecord, Outcome, Worker


class LocalExecutor(Executor):
    worker: Worker

    def start(self) -> dict:
        self.worker = Worker(self.cfg, self.specs, run_id=self.run_id)
        self.holder = f"{self.worker.writer} run {self.run_id}"
        d = self.worker.describe()
        return {"order": d["order"], "extractors": d["extractors"], "workers": [d["worker"]]}

    def run(self, todo: list[ClipRecord], view: StoreView, show_progress: bool = True) -> Outcome:
        return self.worker.process(todo, show_progress=show_progress)
