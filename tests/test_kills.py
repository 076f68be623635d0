"""A clip that kills the process (SIGKILL while it is in flight, as the OOM killer does) is recorded, not
retried forever: real `extract` processes, SIGKILLed while a chosen clip is being extracted, twice.

- after the first death the rerun records the clips that were in flight (failure table, stage 'killed',
  naming the file and media.max_clip_seconds / max_frames) and retries them, the suspect on its own;
- that rerun dies on the same clip: the journal of this death names that clip alone;
- the third run skips it (media.max_kills_per_clip = 2) with a 'killed' failure and completes the rest,
  equal to an uninterrupted run."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from emocache.config import Config
from pipeline import inflight
from pipeline.extract import extract
from pipeline.store import FeatureStore

REPO = Path(__file__).resolve().parents[1]
KEY = "egemaps"
N_CLIPS = 6

# A real `extract` in its own process, whose eGeMAPS extractor hangs on the marker clip (standing in for a
# clip whose decode or extraction blows the memory up) after touching a file, so the test kills it then.
DRIVER = """
import json, sys, time
from pathlib import Path
from emocache.config import Config
from pipeline.extract import extract
from pipeline.extractors import egemaps
marker, reached = sys.argv[2], Path(sys.argv[3])
real = egemaps._OpenSmileExtractor.extract_batch
def hang_on_marker(self, clips):
    if any(c.clip_id == marker for c in clips):
        reached.write_text(json.dumps(sorted(c.clip_id for c in clips)))
        time.sleep(600)
    return real(self, clips)
egemaps._OpenSmileExtractor.extract_batch = hang_on_marker
extract(Config.model_validate(json.load(open(sys.argv[1]))), show_progress=False)
"""


def _raw(tmp: Path, shared_data: Path) -> dict:
    media = tmp / "media"
    if not media.exists():
        media.mkdir()
        for f in sorted((shared_data / "ravdess_subset" / "Actor_01").glob("*.wav"))[:N_CLIPS]:
            shutil.copy(f, media / f.name)
    return {"base_dir": str(tmp), "store": {"dir": str(tmp / "cache"), "flush_clips": 2},
            "weights": {"dir": str(tmp / "weights")},
            "runtime": {"device": "cpu", "batch_clips": 2, "num_threads": 1},
            "datasets": {"rav": {"adapter": "ravdess", "root": str(media),
                                 "split": {"method": "group", "val": 0, "test": 0.5}, "extractors": [KEY]}}}


def _killed_while_marker_in_flight(raw: dict, tmp: Path, marker: str, n: int) -> list[str]:
    """Run the driver until it reaches the marker clip; SIGKILL it. Returns the clips of that batch."""
    params, reached = tmp / f"run{n}.json", tmp / f"reached{n}.json"
    params.write_text(json.dumps(raw))
    p = subprocess.Popen([sys.executable, "-c", DRIVER, str(params), marker, str(reached)], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not reached.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not reached.exists():
        p.kill()
        pytest.fail(f"run {n} never reached {marker}:\n{p.communicate()[0][-3000:]}")
    p.send_signal(signal.SIGKILL)
    p.wait()
    return json.loads(reached.read_text())


def _table(st: FeatureStore) -> list[dict]:
    return [f for f in st.failures() if f["stage"] == inflight.STAGE]


@pytest.mark.slow
def test_a_clip_that_kills_the_run_twice_is_skipped_and_recorded(tmp_path, shared_data):
    clean = tmp_path / "clean"
    clean.mkdir()
    ref = extract(Config.model_validate(_raw(clean, shared_data)), show_progress=False)
    assert ref.failures == [] and ref.stats[KEY].done == N_CLIPS
    ref_st = FeatureStore(clean / "cache" / "audio.zarr")
    ids = sorted(ref_st.index(KEY))
    marker = ids[3]

    work = tmp_path / "killed"
    work.mkdir()
    raw = _raw(work, shared_data)
    st = FeatureStore(work / "cache" / "audio.zarr")

    first_batch = _killed_while_marker_in_flight(raw, work, marker, 1)
    assert marker in first_batch and len(first_batch) == 2
    journals = st.backend.children(inflight.JOURNALS)
    assert len(journals) == 1                       # the dead writer's journal stayed behind
    in_flight = {c["clip_id"] for c in st.backend.get_doc(f"{inflight.JOURNALS}/{journals[0]}")["clips"]}
    assert set(first_batch) <= in_flight            # the batch being extracted (and any decoded ahead)
    assert _table(st) == []                         # nothing is recorded until a run finds the journal

    # The second run finds the first death, records it, retries the suspects one by one: and dies again.
    second_batch = _killed_while_marker_in_flight(raw, work, marker, 2)
    assert second_batch == [marker]                  # retried on its own
    rows = _table(st)
    assert {r["clip_id"] for r in rows} == in_flight and all(r["extractor"] == KEY for r in rows)
    row = next(r for r in rows if r["clip_id"] == marker)
    assert row["path"].endswith(".wav") and row["path"] in row["error"]
    assert "media.max_clip_seconds" in row["error"] and "media.max_frames" in row["error"]
    kills = st.backend.get_doc(inflight.KILLS)["clips"]
    assert kills[marker]["count"] == 1
    journals = st.backend.children(inflight.JOURNALS)
    assert len(journals) == 1
    assert [c["clip_id"] for c in st.backend.get_doc(f"{inflight.JOURNALS}/{journals[0]}")["clips"]] == [marker]

    # The third run (the hang is gone, but it has killed two runs): skipped, recorded, the rest completes.
    third = extract(Config.model_validate(raw), show_progress=False)
    assert [(f["clip_id"], f["stage"]) for f in third.failures] == [(marker, inflight.STAGE)]
    assert "skipped" in third.failures[0]["error"] and "media.max_kills_per_clip = 2" in third.failures[0]["error"]
    assert third.stats[KEY].failed == 1 and third.stats[KEY].done + third.stats[KEY].skipped == N_CLIPS - 1
    table = _table(st)
    assert any(r["clip_id"] == marker and "skipped" in r["error"] for r in table)
    assert any(r["clip_id"] == marker and "death 2" in r["error"] for r in table)
    assert st.backend.children(inflight.JOURNALS) == []          # taken, and this run left none
    assert st.backend.get_doc(inflight.KILLS)["clips"].keys() == {marker}   # the others committed: forgotten
    have = sorted(st.index(KEY, refresh=True))
    assert have == [c for c in ids if c != marker]   # the other clips of the first death were retried normally
    committed, pending = st.segments(KEY, st.current_fingerprint(KEY))
    assert sorted(c for doc in committed.values() for c in doc["clip_ids"]) == have and pending == []
    for cid, a, b in zip(have, st.read(KEY, have), ref_st.read(KEY, have)):
        np.testing.assert_array_equal(a.arrays["features"], b.arrays["features"], err_msg=cid)

    # Raising the limit tries it again (and now it passes).
    raw["media"] = {"max_kills_per_clip": 3}
    again = extract(Config.model_validate(raw), show_progress=False)
    assert again.failures == [] and again.stats[KEY].done == 1
    assert st.backend.get_doc(inflight.KILLS)["clips"] == {}
