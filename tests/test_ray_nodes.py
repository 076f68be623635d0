"""A real second Ray node: a head and a worker node started with `ray start` as separate processes
(loopback only, one CPU each, so one extraction actor lands on each; the second node advertises a GPU, as
`--num-gpus 1` does without CUDA: its actor asks for it, the head's does not, and the GPU actor says it runs on
the CPU), the driver a third process, like
an operator's `emocache extract` with RAY_ADDRESS set. Extraction runs across both nodes into one store
(a local directory, then moto's s3:// server); the second node's raylet and its workers are killed mid-run (SIGKILL: the
node is lost with its actor). The run loses only the dead node's uncommitted clips, recorded in the
failure table; after the node rejoins, the rerun extracts just those, and the store equals a
single-process run with no clip twice."""
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from emocache.config import Config  # noqa: E402
from pipeline.extract import extract  # noqa: E402
from pipeline.executors.ray_cluster import LOST  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
KEYS = ["egemaps"]        # cheap on 2 busy cores; the executor path is the same for every extractor
N_CLIPS = 12
FLUSH = 2                 # clips per segment = per Ray chunk: the lost node's chunk in flight is uncommitted
NODE_TIMEOUT_S = 90
# Loopback, but not 127.0.0.1: Ray rewrites that one to the host's network address; every Ray process
# binds to its node address, so nothing here listens beyond the loopback interface.
LOOPBACK = "127.0.0.2"

# The driver: connects, waits until both nodes are alive, extracts, prints what happened as JSON.
DRIVER = """
import json, sys, time
import ray
from emocache.config import Config
from pipeline.extract import extract
cfg = Config.model_validate(json.load(open(sys.argv[1])))
ray.init(address=cfg.runtime.ray_address, logging_level="ERROR", log_to_driver=False, _node_ip_address=sys.argv[3])
deadline = time.monotonic() + float(sys.argv[2])
while sum(n["Alive"] for n in ray.nodes()) < 2 and time.monotonic() < deadline:
    time.sleep(0.2)
if sum(n["Alive"] for n in ray.nodes()) < 2:   # fail now, not after the actors' start timeout
    sys.exit(f"only {sum(n['Alive'] for n in ray.nodes())} Ray node(s) alive after {sys.argv[2]} s")
nodes = {n["NodeID"]: n["NodeManagerPort"] for n in ray.nodes() if n["Alive"]}
s = extract(cfg, show_progress=False)
open(sys.argv[4], "w").write(json.dumps({"nodes": nodes, "failures": s.failures,
                                         "workers": s.workers, "stats": {k: vars(v) for k, v in s.stats.items()}}))
ray.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class TwoNodeCluster:
    """`ray start --head` and `ray start --address` on the loopback interface, each in its own process group, with
    its own ports and resources; stopped by killing exactly the processes they started."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = _free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(REPO),
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,   # this cluster's own token
                    "RAY_USAGE_STATS_ENABLED": "0",
                    # a lost node is declared dead within ~2 s, not Ray's default half a minute
                    "RAY_health_check_initial_delay_ms": "500", "RAY_health_check_period_ms": "500",
                    "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
        self.procs: list[subprocess.Popen] = []
        self.second: subprocess.Popen | None = None
        self.second_port = 0
        self._start(["--head", f"--port={self.port}", f"--temp-dir={tmp}", "--include-dashboard=false",
                     f"--dashboard-port={_free_port()}"], {"emocache_node_a": 1}, "head")

    def _start(self, args: list[str], resources: dict, name: str, gpus: int = 0) -> tuple[subprocess.Popen, int]:
        manager_port = _free_port()
        worker_ports = _free_port()
        cmd = [str(RAY), "start", *args, f"--node-ip-address={LOOPBACK}", "--num-cpus=1", f"--num-gpus={gpus}",
               f"--resources={json.dumps(resources)}", "--object-store-memory=80000000",
               f"--node-manager-port={manager_port}", f"--object-manager-port={_free_port()}",
               f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
               f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
               f"--min-worker-port={worker_ports}", f"--max-worker-port={worker_ports + 20}",
               "--disable-usage-stats", "--block"]
        log = open(self.tmp / f"{name}-{len(self.procs)}.log", "w")
        p = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p, manager_port

    def start_second(self) -> None:
        self.second, self.second_port = self._start([f"--address={self.address}"], {"emocache_node_b": 1}, "second",
                                                    gpus=1)   # advertised; this machine need not have CUDA

    def kill_second_raylet(self) -> int:
        """SIGKILL the second node's raylet and its worker processes at once, as when the machine is lost: the
        node, its actor and whatever it had not committed are gone. (With the raylet alone killed, its worker
        can outlive it long enough to commit the chunk it held.)"""
        raylets = [c for c in psutil.Process(self.second.pid).children(recursive=True) if c.name() == "raylet"]
        assert len(raylets) == 1, raylets
        workers = raylets[0].children(recursive=True)
        for p in [raylets[0], *workers]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return raylets[0].pid

    def drive(self, raw_cfg: dict, name: str) -> dict:
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(raw_cfg))
        p = subprocess.Popen([sys.executable, "-c", DRIVER, str(path), str(NODE_TIMEOUT_S), LOOPBACK,
                              str(path.with_suffix(".out"))], env=self.env, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        return {"proc": p, "out": path.with_suffix(".out"), "logs": sorted(self.tmp.glob("*.log"))}

    def stop(self) -> None:
        mine = set()
        for p in self.procs:
            try:
                mine |= {c.pid for c in psutil.Process(p.pid).children(recursive=True)} | {p.pid}
            except psutil.NoSuchProcess:
                pass
        for proc in psutil.process_iter(["cmdline"]):   # any left over from a node that died (reparented)
            if any(str(self.tmp) in c for c in (proc.info["cmdline"] or [])):
                mine.add(proc.pid)
        for pid in mine:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for p in self.procs:
            p.wait(timeout=30)


def _result(run: dict, timeout: float = 180) -> dict:
    out, err = run["proc"].communicate(timeout=timeout)
    nodes = "".join(f"\n--- {p.name}:\n{p.read_text()[-1500:]}" for p in run["logs"])   # why a node is missing
    assert run["proc"].returncode == 0, f"driver failed:\n{out}\n{err[-4000:]}{nodes}"
    return json.loads(run["out"].read_text())


@pytest.fixture(scope="module")
def cluster():
    tmp = Path(tempfile.mkdtemp(prefix="ecray", dir="/tmp"))   # short: Ray's unix socket paths must fit
    c = TwoNodeCluster(tmp)
    try:
        c.start_second()
        yield c
    finally:
        c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_data) -> Path:
    d = tmp_path_factory.mktemp("nodes")
    (d / "media").mkdir()
    for f in sorted((shared_data / "ravdess_subset" / "Actor_01").glob("*.wav"))[:N_CLIPS]:
        shutil.copy(f, d / "media")
    return d


def _raw(work: Path, store_dir: str, executor: str, base_dir: Path, address: str = "",
         storage_options: dict | None = None) -> dict:
    return {"base_dir": str(base_dir),
            "store": {"dir": store_dir, "flush_clips": FLUSH, "storage_options": storage_options or {},
                      "tables_dir": str(work / "tables"), "remote_gc_age_s": 1.0},
            "weights": {"dir": str(work / "weights")},
            "runtime": {"device": "auto", "batch_clips": FLUSH, "num_threads": 1, "executor": executor,
                        "ray_workers": 2, "ray_address": address or None},
            "datasets": {"rav": {"adapter": "ravdess", "root": str(work / "media"),
                                 "split": {"method": "group", "val": 0, "test": 0.5}, "extractors": KEYS}}}


@pytest.fixture(scope="module")
def reference(work) -> FeatureStore:
    """A single-process (local executor) run: what the two-node runs must reproduce."""
    s = extract(Config.model_validate(_raw(work, str(work / "local"), "local", REPO)), show_progress=False)
    assert s.failures == [] and s.stats["egemaps"].done == N_CLIPS
    return FeatureStore(work / "local" / "audio.zarr")


def _committed(st: FeatureStore, key: str) -> dict[str, list[str]]:
    """Committed segment -> its clip ids."""
    fp = st.current_fingerprint(key)
    if fp is None:
        return {}
    committed, _ = st.segments(key, fp)
    return {seg: doc["clip_ids"] for seg, doc in committed.items()}


def _writer(segment: str) -> str:
    return segment.split("-")[1]      # <time>-<writer>-<random>


@pytest.mark.slow
@pytest.mark.parametrize("where", ["dir", "s3"])
def test_second_node_lost_mid_run_loses_only_its_uncommitted_clips(cluster, work, reference, where, request):
    base = work / f"base-{where}"       # the driver's clip tables live beside its params
    if where == "s3":
        import boto3

        endpoint = request.getfixturevalue("s3_endpoint")
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="nodes")
        opts = {"key": "testing", "secret": "testing", "endpoint_url": endpoint,
                "client_kwargs": {"region_name": "us-east-1"}}
        raw = _raw(work, "s3://nodes/emocache/cache", "ray", base, cluster.address, opts)
    else:
        raw = _raw(work, str(work / "two-nodes"), "ray", base, cluster.address)
    cfg = Config.model_validate(raw)
    st = FeatureStore.for_family(cfg.store, base, "audio")
    if cluster.second is None or cluster.second.poll() is not None:
        cluster.start_second()          # the previous case killed it

    run = cluster.drive(raw, f"run-{where}")
    killed, lost_port, deadline = None, cluster.second_port, time.monotonic() + 150
    while run["proc"].poll() is None and time.monotonic() < deadline:
        writers = {_writer(s) for s in _committed(st, "egemaps")}
        if writers == {"ray0", "ray1"}:     # both nodes have committed work: now lose the second one
            killed = cluster.kill_second_raylet()
            break
        time.sleep(0.02)
    if killed:
        # The node comes back (a fresh raylet) while the run finishes without it: this run's actors were all
        # placed at its start (none is restarted), so the new node only serves the rerun below.
        cluster.start_second()
    first = _result(run)
    assert killed, f"the run ended before both nodes had committed: {first}"
    node_of = {w["writer"]: first["nodes"][w["node"]] for w in first["workers"]}   # writer -> node manager port
    assert len(set(node_of.values())) == 2 and lost_port in node_of.values(), node_of   # one per node
    lost_writer = next(w for w, port in node_of.items() if port == lost_port)
    # GPU per node: the second node's actor asks the GPU that node advertises, the head's (no GPU) asks none
    import torch

    cuda = torch.cuda.is_available()
    for w in first["workers"]:
        on_gpu_node = w["writer"] == lost_writer
        assert w["resources"] == {"num_cpus": 1.0, "num_gpus": 1.0 if on_gpu_node else 0}, w
        assert w["gpu_ids"] == (["0"] if on_gpu_node else []), w
        if on_gpu_node and not cuda:   # given a GPU torch cannot use: told so, extracts on the CPU
            assert w["device"] == "cpu" and "torch sees no CUDA device" in w["note"], w
        elif not on_gpu_node:
            assert w["device"] == "cpu" and w["note"] == "", w   # no GPU given: told cpu explicitly

    lost = [f for f in first["failures"] if f["stage"] == LOST]
    # Usually the lost node holds a chunk when it dies. Under load it can die between two chunks: then the
    # driver hands the rest to the head's actor and nothing is lost, which the counts below still check.
    assert len(lost) == len(first["failures"]) and all("died" in f["error"] for f in lost), first
    assert len(lost) <= FLUSH                   # at most the chunk the lost node held
    table = {(f["clip_id"], f["extractor"]) for f in st.failures() if f["stage"] == LOST}
    assert table == {(f["clip_id"], f["extractor"]) for f in lost}   # recorded in the failure table
    segs = _committed(st, "egemaps")
    have = [c for ids in segs.values() for c in ids]
    assert len(have) == len(set(have)) and set(have).isdisjoint(f["clip_id"] for f in lost)
    assert len(have) + len(lost) == N_CLIPS == first["stats"]["egemaps"]["done"] + first["stats"]["egemaps"]["failed"]
    by_writer = collections.Counter(_writer(s) for s in segs)
    assert by_writer[lost_writer] >= 1 and sum(by_writer.values()) > by_writer[lost_writer]   # both nodes worked

    again = _result(cluster.drive(raw, f"rerun-{where}"))   # waits until the node has rejoined: both again
    assert again["failures"] == []
    assert again["stats"]["egemaps"]["done"] == len(lost) and again["stats"]["egemaps"]["skipped"] == N_CLIPS - len(lost)

    ids = sorted(reference.index("egemaps", refresh=True))
    committed = [c for c in sum(_committed(st, "egemaps").values(), [])]
    assert sorted(committed) == ids, f"duplicates: {collections.Counter(committed).most_common(2)}"
    assert st.segments("egemaps", st.current_fingerprint("egemaps"))[1] == []   # the lost node's leftovers are gone
    assert st.current_fingerprint("egemaps") == reference.current_fingerprint("egemaps")
    for cid, a, b in zip(ids, st.read("egemaps", ids), reference.read("egemaps", ids)):
        assert a.arrays["features"].shape[0] > 0 and sorted(a.arrays) == sorted(b.arrays)
        for name in b.arrays:
            np.testing.assert_allclose(a.arrays[name], b.arrays[name], rtol=0, atol=1e-5, err_msg=cid)
        np.testing.assert_allclose(a.times, b.times, atol=1e-9)
        assert a.attrs == b.attrs
