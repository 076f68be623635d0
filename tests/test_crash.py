"""SIGKILL a real extraction at random moments; the store must never show a half clip, and the
rerun must equal an uninterrupted run (same clip ids, identical arrays).

The killed runs are real `emocache extract` processes; the reruns run in this process (the same
runner code, without paying interpreter start-up and imports twenty more times)."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from pipeline.store import FeatureStore

KEYS = ["egemaps", "egemaps_lld"]


N_CLIPS = 16


def _write_params(tmp_path, shared_data, name, n_clips: int = N_CLIPS) -> str:
    d = tmp_path / name
    d.mkdir()
    media = tmp_path / "media"
    if not media.exists():
        media.mkdir()
        for f in sorted((shared_data / "ravdess_subset" / "Actor_02").glob("*.wav"))[:n_clips]:
            (media / f.name).write_bytes(f.read_bytes())
    params = {"store": {"dir": "cache", "flush_clips": 2},
              "runtime": {"batch_clips": 2},
              "datasets": {"rav": {"adapter": "ravdess", "root": str(media),
                                   "split": {"method": "group", "val": 0, "test": 0.5},
                                   "extractors": KEYS}}}
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    return str(d / "params.yaml")


def _cmd(params):
    return [sys.executable, "-m", "emocache.cli", "extract", "--family", "audio", "--params", params]


def _rerun(params) -> None:
    from emocache.config import load_config
    from pipeline.extract import extract

    summary = extract(load_config(params), family="audio", show_progress=False)
    assert not summary.failures, summary.failures


def _snapshot(params) -> dict:
    st = FeatureStore(os.path.join(os.path.dirname(params), "cache", "audio.zarr"))
    out = {}
    for key in KEYS:
        try:
            idx = st.index(key, refresh=True)
        except LookupError:
            continue
        rows = st.read(key, sorted(idx))
        out[key] = {cid: r for cid, r in zip(sorted(idx), rows)}
    return out


def _assert_subset_equal(part: dict, ref: dict) -> int:
    n = 0
    for key, clips in part.items():
        for cid, r in clips.items():
            assert cid in ref[key], f"{key}: unknown clip {cid}"
            for name, a in ref[key][cid].arrays.items():
                np.testing.assert_array_equal(r.arrays[name], a, err_msg=f"{key}/{cid}/{name}")
            np.testing.assert_array_equal(r.times, ref[key][cid].times)
            n += 1
    return n


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_equals_uninterrupted(tmp_path, shared_data, repo):
    env = {**os.environ, "PYTHONPATH": str(repo)}
    ref_params = _write_params(tmp_path, shared_data, "ref")
    t0 = time.perf_counter()
    subprocess.run(_cmd(ref_params), check=True, env=env, capture_output=True, cwd=repo)
    full_run_s = time.perf_counter() - t0
    ref = _snapshot(ref_params)
    assert all(len(ref[k]) == N_CLIPS for k in KEYS)

    rng = np.random.default_rng(1234)
    trials, partial_counts = 20, []
    for trial in range(trials):
        params = _write_params(tmp_path, shared_data, f"killed{trial}")
        proc = subprocess.Popen(_cmd(params), env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, full_run_s))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # whatever is visible after the kill is complete and exact
        partial_counts.append(_assert_subset_equal(_snapshot(params), ref))
        _rerun(params)
        final = _snapshot(params)
        assert {k: sorted(v) for k, v in final.items()} == {k: sorted(v) for k, v in ref.items()}
        assert _assert_subset_equal(final, ref) == N_CLIPS * len(KEYS)
        # no duplicate rows and no leftovers: every committed clip appears once, no uncommitted segment
        st = FeatureStore(os.path.join(os.path.dirname(params), "cache", "audio.zarr"))
        for key in KEYS:
            committed, pending = st.segments(key, st.current_fingerprint(key))
            ids = [c for doc in committed.values() for c in doc["clip_ids"]]
            assert len(ids) == len(set(ids)) == N_CLIPS, f"trial {trial} {key}: duplicate clips in committed segments"
            assert pending == []
    assert max(partial_counts) > 0                                # some kills landed after commits ...
    assert any(c < N_CLIPS * len(KEYS) for c in partial_counts)   # ... and some before the end
    print(f"\ncrash test: {trials} SIGKILLs + reruns; rows visible after each kill: {partial_counts}; "
          f"uninterrupted run {full_run_s:.1f} s; every rerun equals the uninterrupted run")
