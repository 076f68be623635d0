"""Scale-out: the Ray executor writes the same store as the local one; the store works on S3
(a moto server on 127.0.0.1) with concurrent writers; DVC pushes and pulls it through an S3
remote; a Ray worker killed mid-run loses only its uncommitted clips, which the rerun redoes."""
import collections
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from emocache.config import Config  # noqa: E402
from pipeline.extractors.base import ClipFeatures  # noqa: E402
from pipeline.extract import extract  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEYS = ["egemaps", "vggish"]
N_CLIPS = 12
FAKE_CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU Ray cluster (this machine has 2 cores): 2 extraction actors of 1 CPU each."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_data) -> Path:
    d = tmp_path_factory.mktemp("scaleout")
    media = d / "media"
    media.mkdir()
    for f in sorted((shared_data / "ravdess_subset" / "Actor_01").glob("*.wav"))[:N_CLIPS]:
        shutil.copy(f, media)
    return d


def _config(work: Path, store_dir: str, executor: str = "local", flush_clips: int = 4,
            storage_options: dict | None = None, base_dir: Path = REPO) -> Config:
    raw = {"base_dir": str(base_dir),
           "store": {"dir": store_dir, "flush_clips": flush_clips, "storage_options": storage_options or {},
                     "tables_dir": str(work / "tables")},
           "weights": {"dir": str(work / "weights"), "allow_untrained": ["vggish"]},
           "runtime": {"device": "cpu", "batch_clips": 2, "num_threads": 1, "executor": executor, "ray_workers": 2},
           "datasets": {"rav": {"adapter": "ravdess", "root": str(work / "media"),
                                "split": {"method": "group", "val": 0, "test": 0.5}, "extractors": KEYS}}}
    return Config.model_validate(raw)


@pytest.fixture(scope="module")
def reference(work) -> FeatureStore:
    """The local executor's store: what every other executor / storage must reproduce."""
    summary = extract(_config(work, str(work / "local")), show_progress=False)
    assert summary.failures == [] and all(summary.stats[k].done == N_CLIPS for k in KEYS)
    return FeatureStore(work / "local" / "audio.zarr")


def _assert_same_store(st: FeatureStore, ref: FeatureStore) -> None:
    for key in KEYS:
        ids = sorted(ref.index(key, refresh=True))
        assert sorted(st.index(key, refresh=True)) == ids, key
        assert st.current_fingerprint(key) == ref.current_fingerprint(key), key
        for cid, a, b in zip(ids, st.read(key, ids), ref.read(key, ids)):
            assert sorted(a.arrays) == sorted(b.arrays) and a.arrays["features"].shape[0] > 0
            for name in b.arrays:
                np.testing.assert_allclose(a.arrays[name], b.arrays[name], rtol=0, atol=1e-5, err_msg=f"{key}/{cid}")
            np.testing.assert_allclose(a.times, b.times, atol=1e-9)
            assert a.attrs == b.attrs


def _committed_ids(st: FeatureStore, key: str) -> list[str]:
    committed, _ = st.segments(key, st.current_fingerprint(key))
    return [c for doc in committed.values() for c in doc["clip_ids"]]


def _bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=name)


def _s3_options(endpoint: str) -> dict:
    return {"key": "testing", "secret": "testing", "endpoint_url": endpoint, "client_kwargs": {"region_name": "us-east-1"}}


# ---------------------------------------------------------------- Ray executor == local executor
@pytest.mark.slow
def test_ray_executor_equals_local(ray_cluster, work, reference):
    cfg = _config(work, str(work / "ray"), executor="ray")
    summary = extract(cfg, show_progress=False)
    assert summary.failures == []
    assert {k: (s.done, s.skipped, s.failed) for k, s in summary.stats.items()} == {k: (N_CLIPS, 0, 0) for k in KEYS}
    assert summary.stats["vggish"].pretrained is False and summary.stats["egemaps"].pretrained is True
    assert summary.decodes["audio"] == N_CLIPS        # each clip decoded once, by whichever worker got it
    st = FeatureStore(work / "ray" / "audio.zarr")
    _assert_same_store(st, reference)
    for key in KEYS:  # both workers wrote (distinct writer names in the segment names), no clip twice
        committed, pending = st.segments(key, st.current_fingerprint(key))
        assert {s.split("-")[1] for s in committed} == {"ray0", "ray1"} and pending == []
        ids = _committed_ids(st, key)
        assert len(ids) == len(set(ids)) == N_CLIPS
    again = extract(cfg, show_progress=False)       # the driver's plan: nothing is missing
    assert {k: (s.done, s.skipped) for k, s in again.stats.items()} == {k: (0, N_CLIPS) for k in KEYS}
    assert again.decodes["audio"] == 0


# ---------------------------------------------------------------- the store on S3
def test_s3_store_concurrent_writers_and_committed_only_reader(ray_cluster, s3_endpoint):
    _bucket(s3_endpoint, "concurrent")
    url, opts = "s3://concurrent/cache/audio.zarr", _s3_options(s3_endpoint)
    st = FeatureStore(url, storage_options=opts)
    st.set_current("k", "fp", {"extractor": "k"})
    # Four writers in four Ray worker processes append to the same key at the same time.
    # (defined here so Ray ships it by value: the workers cannot import this test module)
    def _write_segments(url: str, options: dict, writer: str, n: int) -> list[str]:
        st = FeatureStore(url, storage_options=options)
        ids = []
        for i in range(n):
            cid = f"{writer}-{i}"
            t = 1 + i % 4   # ragged rows
            x = np.full((t, 3), float(i), np.float32) + np.arange(t, dtype=np.float32)[:, None]
            st.write_segment("k", "fp", [(cid, ClipFeatures({"features": x}, np.stack([np.arange(t), np.arange(t) + 1], 1)))],
                             writer=writer)
            ids.append(cid)
        return ids

    write = ray.remote(num_cpus=0.5)(_write_segments)
    ids = sum(ray.get([write.remote(url, opts, f"w{i}", 3) for i in range(4)]), [])
    # A writer killed mid-segment: rows on storage, no index (the commit is the attrs written last).
    st.backend.write_segment("k/fp/20990101T000000-dead-0000000000",
                             {"features": np.ones((2, 3), np.float32), "times": np.zeros((2, 2))}, {})
    reader = FeatureStore(url, storage_options=opts)
    assert sorted(reader.has("k", "fp")) == sorted(ids)
    committed, pending = reader.segments("k", "fp")
    assert len(committed) == 12 and pending == ["20990101T000000-dead-0000000000"]
    for cid, rows in zip(ids, reader.read("k", ids)):
        i = int(cid.split("-")[1])
        t = rows.arrays["features"].shape[0]
        np.testing.assert_array_equal(rows.arrays["features"], i + np.arange(t, dtype=np.float32)[:, None].repeat(3, 1))
    assert reader.gc_uncommitted("k", "fp") == 1 and reader.segments("k", "fp")[1] == []


@pytest.mark.slow
def test_ray_extract_into_s3_store_equals_local(ray_cluster, work, reference, s3_endpoint, tmp_path):
    _bucket(s3_endpoint, "features")
    opts = _s3_options(s3_endpoint)
    # base_dir: where the dataset clip tables go (they stay on local disk beside the params)
    cfg = _config(work, "s3://features/emocache/cache", executor="ray", storage_options=opts, base_dir=tmp_path)
    summary = extract(cfg, show_progress=False)
    assert summary.failures == [] and all(summary.stats[k].done == N_CLIPS for k in KEYS)
    st = FeatureStore.for_family(cfg.store, tmp_path, "audio")
    assert st.root == "s3://features/emocache/cache/audio.zarr"
    _assert_same_store(st, reference)


# ---------------------------------------------------------------- DVC remote on S3
def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.mark.slow
def test_dvc_push_pull_store_through_s3_remote(work, reference, s3_endpoint, tmp_path):
    """Machine A pushes the store and a model; machine B clones, pulls and reads, extracting nothing."""
    _bucket(s3_endpoint, "dvc-remote")
    env = {**os.environ, **FAKE_CREDS, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    dvc = [sys.executable, "-m", "dvc"]
    a = tmp_path / "machine_a"
    (a / "cache").mkdir(parents=True)
    shutil.copytree(reference.root, a / "cache" / "audio.zarr")
    (a / "models").mkdir()
    (a / "models" / "head.npz").write_bytes(b"model-bytes" * 100)
    _run(["git", "init", "-q"], a, env)
    _run(dvc + ["init", "-q"], a, env)
    _run(dvc + ["add", "-q", "cache/audio.zarr", "models"], a, env)
    _run(dvc + ["remote", "add", "-d", "store", "s3://dvc-remote/emocache"], a, env)
    _run(dvc + ["remote", "modify", "store", "endpointurl", s3_endpoint], a, env)
    _run(dvc + ["remote", "modify", "store", "region", "us-east-1"], a, env)
    _run(["git", "add", "-A"], a, env)
    _run(["git", "commit", "-q", "-m", "store"], a, env)
    _run(dvc + ["push", "-q"], a, env)

    b = tmp_path / "machine_b"
    _run(["git", "clone", "-q", str(a), str(b)], tmp_path, env)
    assert not (b / "cache" / "audio.zarr").exists()
    _run(dvc + ["pull", "-q"], b, env)
    assert (b / "models" / "head.npz").read_bytes() == (a / "models" / "head.npz").read_bytes()
    _assert_same_store(FeatureStore(b / "cache" / "audio.zarr"), reference)
    assert "in sync" in _run(dvc + ["status", "-c"], b, env)


# ---------------------------------------------------------------- a worker killed mid-run
@pytest.mark.slow
def test_killed_ray_worker_loses_only_uncommitted_clips_and_rerun_completes(ray_cluster, work, reference):
    from pipeline.executors.ray_cluster import LOST, named_actors

    cfg = _config(work, str(work / "killed"), executor="ray", flush_clips=1)  # one clip per segment
    st = FeatureStore(work / "killed" / "audio.zarr")
    result: dict = {}
    earlier = set(named_actors())  # actors of earlier tests may still be shutting down
    run = threading.Thread(target=lambda: result.setdefault("summary", extract(cfg, show_progress=False)))
    run.start()
    killed = None
    deadline = time.monotonic() + 120
    while run.is_alive() and time.monotonic() < deadline:
        actors = set(named_actors()) - earlier
        fp = st.current_fingerprint("vggish")
        if len(actors) == 2 and fp and st.segments("vggish", fp)[0]:  # the first clip has committed
            killed = sorted(actors)[-1]
            ray.kill(ray.get_actor(killed))  # like SIGKILL: no cleanup, whatever it was writing stays uncommitted
            break
        time.sleep(0.02)
    run.join(timeout=180)
    assert killed, "the run ended before a worker could be killed"
    first = result["summary"]
    lost = [f for f in first.failures if f["stage"] == LOST]
    assert lost and all("died" in f["error"] for f in lost) and len(lost) == len(first.failures)
    table = {(f["clip_id"], f["extractor"]) for f in st.failures() if f["stage"] == LOST}
    assert table == {(f["clip_id"], f["extractor"]) for f in lost}   # the failure table has them too
    for key in KEYS:  # exactly the lost clips are missing; the rest is complete and exact
        have = st.has(key, st.current_fingerprint(key))
        assert have.isdisjoint({f["clip_id"] for f in lost if f["extractor"] == key})
        assert len(have) + sum(f["extractor"] == key for f in lost) == N_CLIPS
        assert first.stats[key].done + first.stats[key].failed == N_CLIPS
    assert len(set(f["clip_id"] for f in lost)) < N_CLIPS   # the surviving worker carried on
    leftovers = sum(len(st.segments(k, st.current_fingerprint(k))[1]) for k in KEYS)
    print(f"\nkilled {killed}: {len(lost)} (clip, extractor) rows lost, {leftovers} uncommitted segment(s) left")

    again = extract(cfg, show_progress=False)
    assert again.failures == []
    assert {k: s.done for k, s in again.stats.items()} == {k: sum(f["extractor"] == k for f in lost) for k in KEYS}
    _assert_same_store(st, reference)
    for key in KEYS:
        ids = _committed_ids(st, key)
        assert len(ids) == len(set(ids)) == N_CLIPS, f"{key}: duplicate clips {collections.Counter(ids).most_common(2)}"
        assert st.segments(key, st.current_fingerprint(key))[1] == []  # the dead worker's leftovers are gone


def test_gpu_actors_request_gpus_only_on_nodes_that_have_them(work):
    """plan_actors: on a mixed cluster the actors on GPU nodes ask a GPU and those on CPU-only nodes do not;
    each node takes as many actors as its resources hold; device: cpu never asks a GPU, device: cuda uses the
    GPU nodes only. (tests/test_ray_nodes.py checks the same on a real two-node cluster.)"""
    from pipeline.executors.ray_cluster import actor_device, actor_resources, plan_actors

    def cfg(device, workers=4):
        c = _config(work, str(work / "unused"), executor="ray")
        return c.model_copy(update={"runtime": c.runtime.model_copy(update={
            "device": device, "ray_gpus_per_worker": 0.5, "ray_cpus_per_worker": 2.0, "ray_workers": workers})})

    gpu_node = {"NodeID": "b-gpu", "Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}
    cpu_node = {"NodeID": "a-cpu", "Alive": True, "Resources": {"CPU": 4.0}}
    dead = {"NodeID": "0-dead", "Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}
    mixed = [cpu_node, dead, gpu_node]
    assert actor_resources(cfg("auto"), cpu_node["Resources"]) == {"num_cpus": 2.0, "num_gpus": 0}
    assert actor_resources(cfg("auto"), gpu_node["Resources"]) == {"num_cpus": 2.0, "num_gpus": 0.5}
    assert actor_resources(cfg("cpu"), gpu_node["Resources"]) == {"num_cpus": 2.0, "num_gpus": 0}
    gpu, cpu = ("b-gpu", {"num_cpus": 2.0, "num_gpus": 0.5}), ("a-cpu", {"num_cpus": 2.0, "num_gpus": 0})
    # GPU node first, then round-robin; the GPU node holds 2 GPU actors (0.5 each), the CPU node 2 (CPU 4 / 2)
    assert plan_actors(cfg("auto"), mixed) == [gpu, cpu, gpu, cpu]
    assert plan_actors(cfg("auto", 3), mixed) == [gpu, cpu, gpu]
    # device: cpu: no GPU asked anywhere, the GPU node's CPUs hold 4 actors
    plain = ("b-gpu", {"num_cpus": 2.0, "num_gpus": 0})
    assert plan_actors(cfg("cpu", 6), mixed) == [plain, cpu, plain, cpu, plain, plain]
    assert plan_actors(cfg("cuda", 2), mixed) == [gpu, gpu]
    # more than the cluster holds: the rest is not pinned (Ray keeps it pending; the start timeout reports it)
    assert plan_actors(cfg("auto", 6), mixed) == [gpu, cpu, gpu, cpu, (None, gpu[1]), (None, cpu[1])]
    # an actor given a GPU without CUDA (here: torch has none) runs on the CPU and says so; none given: cpu
    import torch

    if not torch.cuda.is_available():
        dev, note = actor_device("auto", 0.5)
        assert dev == "cpu" and "torch sees no CUDA device" in note
        assert actor_device("cuda", 0.5) == ("cuda", "")   # required: the Worker fails naming runtime.device
    assert actor_device("auto", 0) == ("cpu", "") and actor_device("cpu", 1) == ("cpu", "")


def test_ray_load_error_is_the_local_one(ray_cluster, work):
    """Missing weights on a worker raise the same MissingWeightsError (with its how-to) as locally."""
    from pipeline.weights import MissingWeightsError

    cfg = _config(work, str(work / "noweights"), executor="ray")
    cfg = cfg.model_copy(update={"weights": cfg.weights.model_copy(update={"allow_untrained": []})})
    with pytest.raises(MissingWeightsError, match="allow_untrained"):
        extract(cfg, show_progress=False)
    from pipeline.executors.ray_cluster import named_actors

    deadline = time.monotonic() + 10   # ray.kill is asynchronous
    while named_actors() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert named_actors() == []   # the actors that failed to load were released


def test_more_actors_than_the_cluster_can_place_fail_after_the_start_timeout(ray_cluster, work):
    """3 CPUs per actor on a 2-CPU cluster: never placeable. Ray would wait forever; the run fails after
    runtime.ray_start_timeout_s, naming what each actor asks and what the cluster has, and frees the actors."""
    from pipeline.errors import UsageError
    from pipeline.executors.ray_cluster import RayStartTimeout, named_actors

    c = _config(work, str(work / "unplaceable"), executor="ray")
    cfg = c.model_copy(update={"runtime": c.runtime.model_copy(update={"ray_cpus_per_worker": 3.0,
                                                                        "ray_start_timeout_s": 2.0})})
    t0 = time.monotonic()
    with pytest.raises(RayStartTimeout) as err:
        extract(cfg, show_progress=False)
    assert time.monotonic() - t0 < 60
    msg = str(err.value)
    assert isinstance(err.value, UsageError)
    assert "2 of 2 Ray worker(s) did not start within runtime.ray_start_timeout_s = 2 s" in msg
    assert "each asks CPU 3, GPU 0" in msg and "the cluster has CPU 2" in msg, msg
    deadline = time.monotonic() + 10   # ray.kill is asynchronous
    while named_actors() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert named_actors() == []
