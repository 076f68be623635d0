"""`emocache weights list/fetch` against a local HTTP server on 127.0.0.1 (no test touches the internet).

The server serves small fixture files under the real catalog names (and the real yolov5n.pt from
../shared/weights) and can 404, drop a connection mid-file, be slow, or ignore Range. Each case checks the
weights dir afterwards (the states documented in pipeline/weights_fetch.py) and what `doctor` prints.
"""
from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from emocache.cli import app
from emocache.weights import doctor_lines, list_json
from pipeline import weights_catalog as catalog
from pipeline.weights_catalog import ModelFile
from pipeline.weights_fetch import FetchOptions, WeightsFetchError, fetch_one

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = next((p for p in [REPO.parent / "shared" / "weights", Path("/work/shared/weights")]
                       if (p / "yolov5n.pt").exists()), None)

FIXTURE = bytes(range(256)) * 64          # 16 KiB: several chunks at the tests' chunk size
CHUNK = 1024


@dataclass
class Behaviour:
    status: int = 200
    drop_at: int | None = None      # close the connection once the body reaches this absolute offset
    drop_times: int = 1_000_000     # ... on this many responses, then serve normally
    delay_s: float = 0.0            # sleep after the headers, before the body
    ignore_range: bool = False


@dataclass
class Server:
    base: str
    files: dict = field(default_factory=dict)       # url path -> bytes
    behaviour: dict = field(default_factory=dict)   # url path -> Behaviour
    headers: dict = field(default_factory=dict)     # url path -> extra response headers (hub layout)
    requests: list = field(default_factory=list)    # (method, path, Range header)


def _handler(state: Server):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool):
            self.path = self.path.split("?")[0]
            state.requests.append((self.command, self.path, self.headers.get("Range")))
            b = state.behaviour.get(self.path, Behaviour())
            data = state.files.get(self.path)
            if data is None or b.status != 200:
                self.send_response(404 if data is None else b.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            rng = self.headers.get("Range")
            if rng and not b.ignore_range:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            for k, v in state.headers.get(self.path, {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            try:
                if b.delay_s:
                    self.wfile.flush()
                    time.sleep(b.delay_s)
                end = len(data)
                if b.drop_at is not None and b.drop_times > 0:
                    b.drop_times -= 1
                    end = max(start, min(b.drop_at, len(data)))
                self.wfile.write(data[start:end])
                self.wfile.flush()
                if end < len(data):        # drop the connection mid-file
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
            except (BrokenPipeError, ConnectionResetError, OSError):
                self.close_connection = True

    return Handler


@pytest.fixture
def server():
    state = Server(base="")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    httpd.block_on_close = False   # a slow handler must not hold up teardown
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    t.join(timeout=5)


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """The torch hub cache must not make a file look present; nothing reads the real one."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("EMOCACHE_WEIGHTS_MIRROR", raising=False)
    monkeypatch.delenv("EMOCACHE_WEIGHTS", raising=False)


def fixture_entry(server: Server, name="vggish-10086976.pth", data=FIXTURE, pin="full", path=None) -> ModelFile:
    """A catalog entry under a real name, pinned to the fixture's bytes, served by the local server."""
    path = path or f"/official/{name}"
    server.files[path] = data
    digest = hashlib.sha256(data).hexdigest()
    return ModelFile(name, "vggish (weights_file)", "url", server.base + path, "test fixture",
                     size=len(data), sha256=digest if pin == "full" else None,
                     sha256_prefix=digest[:8] if pin == "prefix" else None)


def options(tmp_path, **kw) -> FetchOptions:
    logs = kw.pop("logs", [])
    base = dict(weights_dir=tmp_path / "weights", timeout_s=2.0, retries=0, backoff_s=0.01, chunk_bytes=CHUNK,
                progress=False, log=logs.append)
    base.update(kw)
    return FetchOptions(**base)


def dir_state(wdir: Path) -> list[str]:
    return sorted(p.name for p in wdir.iterdir()) if wdir.exists() else []


def use_catalog(monkeypatch, *entries: ModelFile) -> None:
    monkeypatch.setattr(catalog, "CATALOG", tuple(entries))


def doctor_for(make_config, tmp_path, e: ModelFile) -> str:
    cfg = make_config(weights={"dir": str(tmp_path / "weights")})
    return next(line for line in doctor_lines(cfg) if e.name in line)


# ---------------------------------------------------------------- outcomes
@pytest.mark.parametrize("pin", ["full", "prefix"])
def test_good_download_is_verified_and_renamed(server, tmp_path, make_config, monkeypatch, pin):
    e = fixture_entry(server, pin=pin)
    use_catalog(monkeypatch, e)
    assert "MISS" in doctor_for(make_config, tmp_path, e) and f"emocache weights fetch {e.name}" in \
        doctor_for(make_config, tmp_path, e)
    logs = []
    path = fetch_one(e, options(tmp_path, logs=logs, progress_every_percent=25))
    assert path == tmp_path / "weights" / e.name
    assert path.read_bytes() == FIXTURE
    assert dir_state(tmp_path / "weights") == [e.name]            # no .part, no pooch temporary file
    assert any("100%" in m for m in logs) and any("25%" in m for m in logs)   # plain progress lines, no TTY
    assert "OK" in doctor_for(make_config, tmp_path, e) and str(path) in doctor_for(make_config, tmp_path, e)
    # present and verified: a second fetch does not download
    n = len(server.requests)
    fetch_one(e, options(tmp_path))
    assert len(server.requests) == n


def test_progress_bar_on_a_tty(server, tmp_path, capsys):
    e = fixture_entry(server)
    server.behaviour[f"/official/{e.name}"] = Behaviour(drop_at=len(FIXTURE) // 2, drop_times=1)
    logs = []
    fetch_one(e, options(tmp_path, progress=True, retries=1, logs=logs))
    err = capsys.readouterr().err
    assert e.name in err and "100%" in err and "16.4k" in err       # tqdm bar, resumed part included
    assert not any("%" in m for m in logs)                          # no plain progress lines besides the bar


def test_interrupted_transfer_resumes(server, tmp_path, make_config, monkeypatch):
    e = fixture_entry(server)
    use_catalog(monkeypatch, e)
    half = len(FIXTURE) // 2
    server.behaviour[f"/official/{e.name}"] = Behaviour(drop_at=half, drop_times=1)
    with pytest.raises(WeightsFetchError, match="dropped") as err:
        fetch_one(e, options(tmp_path))
    part = tmp_path / "weights" / (e.name + ".part")
    assert "again to resume" in str(err.value)
    assert dir_state(tmp_path / "weights") == [part.name] and 0 < part.stat().st_size <= half
    line = doctor_for(make_config, tmp_path, e)
    assert "MISS" in line and "partial download" in line and f"emocache weights fetch {e.name}" in line
    kept = part.stat().st_size
    fetch_one(e, options(tmp_path))
    assert server.requests[-1][2] == f"bytes={kept}-"              # only the rest was asked for
    assert (tmp_path / "weights" / e.name).read_bytes() == FIXTURE
    assert dir_state(tmp_path / "weights") == [e.name]
    assert "OK" in doctor_for(make_config, tmp_path, e)


def test_retry_with_backoff_resumes_in_one_command(server, tmp_path, monkeypatch):
    e = fixture_entry(server)
    server.behaviour[f"/official/{e.name}"] = Behaviour(drop_at=len(FIXTURE) // 3, drop_times=1)
    logs = []
    fetch_one(e, options(tmp_path, retries=2, logs=logs))
    assert (tmp_path / "weights" / e.name).read_bytes() == FIXTURE
    assert any("retry 1/2" in m for m in logs)
    assert [r[2] for r in server.requests if r[0] == "GET"][1].startswith("bytes=")


def test_404_leaves_nothing(server, tmp_path, make_config, monkeypatch):
    e = fixture_entry(server)
    use_catalog(monkeypatch, e)
    del server.files[f"/official/{e.name}"]
    with pytest.raises(WeightsFetchError, match="HTTP 404"):
        fetch_one(e, options(tmp_path, retries=3))
    assert [r[0] for r in server.requests] == ["GET"]                 # a 404 is not retried
    assert dir_state(tmp_path / "weights") == []
    assert "MISS" in doctor_for(make_config, tmp_path, e)


@pytest.mark.parametrize("pin", ["full", "prefix"])
def test_wrong_hash_leaves_no_file_and_says_expected_vs_got(server, tmp_path, make_config, monkeypatch, pin):
    e = fixture_entry(server, pin=pin)
    server.files[f"/official/{e.name}"] = FIXTURE[::-1]              # same size, other bytes
    use_catalog(monkeypatch, e)
    with pytest.raises(WeightsFetchError) as err:
        fetch_one(e, options(tmp_path, retries=2))
    got = hashlib.sha256(FIXTURE[::-1]).hexdigest()
    assert "expected" in str(err.value) and got in str(err.value)
    assert (e.sha256 or e.sha256_prefix) in str(err.value)
    assert len([r for r in server.requests if r[0] == "GET"]) == 1   # a wrong hash is not retried
    assert dir_state(tmp_path / "weights") == []                      # nothing under the real name, no .part
    assert "MISS" in doctor_for(make_config, tmp_path, e)


def test_connection_dropped_mid_file_keeps_part_only(server, tmp_path, make_config, monkeypatch):
    e = fixture_entry(server)
    use_catalog(monkeypatch, e)
    server.behaviour[f"/official/{e.name}"] = Behaviour(drop_at=len(FIXTURE) // 4)   # every response drops there
    with pytest.raises(WeightsFetchError, match="connection failed or dropped"):
        fetch_one(e, options(tmp_path, retries=2))
    assert len([r for r in server.requests if r[0] == "GET"]) == 3   # first try + 2 retries
    assert dir_state(tmp_path / "weights") == [e.name + ".part"]
    assert not (tmp_path / "weights" / e.name).exists()
    assert "partial download" in doctor_for(make_config, tmp_path, e)


def test_server_slower_than_timeout(server, tmp_path, make_config, monkeypatch):
    e = fixture_entry(server)
    use_catalog(monkeypatch, e)
    server.behaviour[f"/official/{e.name}"] = Behaviour(delay_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(WeightsFetchError, match="timed out"):
        fetch_one(e, options(tmp_path, timeout_s=0.2))
    assert time.monotonic() - t0 < 1.0
    assert not (tmp_path / "weights" / e.name).exists()
    assert [p for p in dir_state(tmp_path / "weights") if not p.endswith(".part")] == []
    assert "MISS" in doctor_for(make_config, tmp_path, e)


def test_present_file_that_fails_its_pin_is_left_alone(server, tmp_path):
    e = fixture_entry(server, pin="prefix")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / e.name).write_bytes(b"someone else's file")
    with pytest.raises(WeightsFetchError, match="present but does not match") as err:
        fetch_one(e, options(tmp_path))
    assert "expected a sha256 starting with" in str(err.value)
    assert (tmp_path / "weights" / e.name).read_bytes() == b"someone else's file" and server.requests == []


def test_server_ignoring_range_restarts_the_part(server, tmp_path, monkeypatch):
    e = fixture_entry(server)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / (e.name + ".part")).write_bytes(b"stale bytes")
    server.behaviour[f"/official/{e.name}"] = Behaviour(ignore_range=True)
    fetch_one(e, options(tmp_path))
    assert (tmp_path / "weights" / e.name).read_bytes() == FIXTURE
    assert dir_state(tmp_path / "weights") == [e.name]


def test_complete_part_is_verified_without_refetching_the_body(server, tmp_path, monkeypatch):
    e = fixture_entry(server)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / (e.name + ".part")).write_bytes(FIXTURE)   # a fetch that died before the rename
    fetch_one(e, options(tmp_path))
    assert (tmp_path / "weights" / e.name).read_bytes() == FIXTURE
    assert dir_state(tmp_path / "weights") == [e.name]


# ---------------------------------------------------------------- CLI: mirror, dry run, the real yolov5n.pt
def write_params(tmp_path, **fetch) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"weights": {"dir": str(tmp_path / "weights"),
                                             "fetch": {"timeout_s": 2.0, "retries": 0, "backoff_s": 0.01,
                                                       "chunk_kb": 1, **fetch}}}))
    return p


def test_mirror_override_cli_env_and_param(server, tmp_path, monkeypatch):
    e = fixture_entry(server)                                      # official URL on the server ...
    server.behaviour[f"/official/{e.name}"] = Behaviour(status=404)   # ... is down
    server.files[f"/mirror/{e.name}"] = FIXTURE
    server.files[f"/envmirror/{e.name}"] = FIXTURE
    use_catalog(monkeypatch, e)
    runner = CliRunner()
    params = write_params(tmp_path)
    r = runner.invoke(app, ["weights", "fetch", e.name, "-p", str(params)])
    assert r.exit_code == 1 and "HTTP 404" in r.output
    assert dir_state(tmp_path / "weights") == []

    # params field
    params = write_params(tmp_path, mirror=server.base + "/mirror/")
    r = runner.invoke(app, ["weights", "fetch", e.name, "-p", str(params)])
    assert r.exit_code == 0, r.output
    assert server.requests[-1][1] == f"/mirror/{e.name}"
    (tmp_path / "weights" / e.name).unlink()
    # env beats the param, --mirror beats env
    monkeypatch.setenv("EMOCACHE_WEIGHTS_MIRROR", server.base + "/envmirror")
    assert runner.invoke(app, ["weights", "fetch", e.name, "-p", str(params)]).exit_code == 0
    assert server.requests[-1][1] == f"/envmirror/{e.name}"
    (tmp_path / "weights" / e.name).unlink()
    r = runner.invoke(app, ["weights", "fetch", e.name, "-p", str(params), "--mirror", server.base + "/mirror"])
    assert r.exit_code == 0 and server.requests[-1][1] == f"/mirror/{e.name}"
    # the mirror's copy is held to the same pin
    server.files[f"/mirror/{e.name}"] = FIXTURE[::-1]
    (tmp_path / "weights" / e.name).unlink()
    r = runner.invoke(app, ["weights", "fetch", e.name, "-p", str(params), "--mirror", server.base + "/mirror"])
    assert r.exit_code == 1 and "expected sha256" in r.output and dir_state(tmp_path / "weights") == []


def test_fetch_missing_gets_only_what_the_params_use(server, tmp_path, make_config, monkeypatch):
    used = fixture_entry(server, name="vggish-10086976.pth")
    other = fixture_entry(server, name="yolov5n.pt")
    server.files[f"/mirror/{used.name}"] = FIXTURE
    use_catalog(monkeypatch, used, other)
    params = write_params(tmp_path)
    raw = yaml.safe_load(params.read_text())
    raw["datasets"] = {"d": {"adapter": "folder", "root": str(tmp_path), "extractors": ["vggish", "egemaps"]}}
    params.write_text(yaml.safe_dump(raw))
    cfg = make_config(weights={"dir": str(tmp_path / "weights")}, datasets=raw["datasets"])
    assert any("emocache weights fetch --missing" in line for line in doctor_lines(cfg))
    runner = CliRunner()
    r = runner.invoke(app, ["weights", "fetch", "--missing", "-p", str(params), "--mirror", server.base + "/mirror"])
    assert r.exit_code == 0, r.output
    assert dir_state(tmp_path / "weights") == [used.name]
    assert not any("--missing" in line for line in doctor_lines(cfg))
    r = runner.invoke(app, ["weights", "fetch", "--missing", "-p", str(params)])
    assert r.exit_code == 0 and "nothing to fetch" in r.output


def test_dry_run_fetches_nothing(server, tmp_path, monkeypatch):
    e = fixture_entry(server)
    use_catalog(monkeypatch, e)
    r = CliRunner().invoke(app, ["weights", "fetch", "--all", "--dry-run", "-p", str(write_params(tmp_path))])
    assert r.exit_code == 0 and "would fetch" in r.output and e.source in r.output
    assert server.requests == [] and dir_state(tmp_path / "weights") == []


def test_selection_errors(tmp_path):
    runner = CliRunner()
    params = str(write_params(tmp_path))
    r = runner.invoke(app, ["weights", "fetch", "no-such-model", "-p", params])
    assert r.exit_code == 2 and "unknown model" in r.output and "yolov5n.pt" in r.output
    assert runner.invoke(app, ["weights", "fetch", "-p", params]).exit_code == 2
    assert runner.invoke(app, ["weights", "fetch", "yolov5n.pt", "--all", "-p", params]).exit_code == 2


@pytest.mark.skipif(SHARED_WEIGHTS is None, reason="real yolov5n.pt not found in ../shared/weights")
def test_real_yolov5n_through_a_mirror_with_its_real_pin(server, tmp_path, make_config):
    """The catalog's own yolov5n.pt entry (official pin), served as <mirror>/yolov5n.pt, resumed once."""
    data = (SHARED_WEIGHTS / "yolov5n.pt").read_bytes()
    server.files["/mirror/yolov5n.pt"] = data
    server.behaviour["/mirror/yolov5n.pt"] = Behaviour(drop_at=len(data) // 2, drop_times=1)
    params = write_params(tmp_path, retries=1, chunk_kb=256)
    r = CliRunner().invoke(app, ["weights", "fetch", "yolov5n.pt", "-p", str(params),
                                 "--mirror", server.base + "/mirror"])
    assert r.exit_code == 0, r.output
    assert "resuming at" in r.output and any(rng for _, _, rng in server.requests)   # it did drop and resume
    got = tmp_path / "weights" / "yolov5n.pt"
    assert hashlib.sha256(got.read_bytes()).hexdigest() == catalog.entry("yolov5n.pt").sha256
    assert dir_state(tmp_path / "weights") == ["yolov5n.pt"]
    rows = {row["name"]: row for row in list_json(make_config(weights={"dir": str(tmp_path / "weights")}))}
    assert rows["yolov5n.pt"]["present"] and rows["yolov5n.pt"]["path"] == str(got)
    assert not rows["yolov5s.pt"]["present"]


# ---------------------------------------------------------------- list / doctor / extractor messages
def test_list_shows_every_catalog_field(tmp_path):
    r = CliRunner().invoke(app, ["weights", "list", "-p", str(write_params(tmp_path))])
    assert r.exit_code == 0
    for e in catalog.CATALOG:
        assert e.name in r.output and e.source in r.output and e.licence in r.output
        assert f"emocache weights fetch {e.name}" in r.output        # all missing in an empty weights dir
    assert "4f180cf23ba0717ada0badd6c685026d73d48f184d00fc159c2641284b2ac0a3" in r.output
    assert "sha256 prefix 10086976" in r.output


def test_missing_selects_what_the_params_use(make_config, tmp_path):
    from emocache.weights import select

    cfg = make_config(datasets={"d": {"adapter": "folder", "root": str(tmp_path),
                                      "extractors": ["vggish", "tracks", "text.transcript"]}},
                      extractors={"video": {"detector": {"kind": "yolo", "weights_file": "yolov5n.pt"}},
                                  "text": {"model": "bert-base-uncased"}})
    names = [e.name for e in select(cfg, [], missing=True, all_=False)]
    assert names == ["vggish-10086976.pth", "yolov5n.pt", "bert-base-uncased"]
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "yolov5n.pt").write_bytes(b"x")
    assert "yolov5n.pt" not in [e.name for e in select(cfg, [], missing=True, all_=False)]


def test_swin_state_dict_in_the_weights_dir_counts_as_present(make_config, tmp_path):
    e = catalog.entry("swin_tiny_patch4_window7_224")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "swin_tiny_patch4_window7_224.pth").write_bytes(b"state dict")
    assert catalog.location(e, tmp_path / "weights") == tmp_path / "weights" / "swin_tiny_patch4_window7_224.pth"
    cfg = make_config(datasets={"d": {"adapter": "folder", "root": str(tmp_path), "extractors": ["swin"]}})
    from emocache.weights import select

    assert select(cfg, [], missing=True, all_=False) == []


def test_missing_weights_error_names_the_fetch_command(make_config):
    from pipeline.weights import missing_message

    msg = missing_message(make_config(), "vggish", "vggish-10086976.pth")
    assert "emocache weights fetch vggish-10086976.pth" in msg
    assert "emocache weights fetch swin_tiny_patch4_window7_224" in missing_message(
        make_config(), "swin", "swin_tiny_patch4_window7_224.pth")


def test_catalog_is_importable_without_emocache():
    """Pipeline code may use the catalog; it must not import the CLI layer."""
    import subprocess
    import sys

    code = ("import sys, pipeline.weights_catalog as c; c.names(); "
            "bad = [m for m in sys.modules if m.startswith('emocache')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow   # importing timm (and torch) alone takes ~30 s on a busy 2-core machine
def test_swin_entry_matches_timm_pretrained_cfg():
    """swin.py looks in the HF cache under timm's hf_hub_id: the catalog must fetch exactly that repo."""
    import timm

    cfg = timm.models.get_pretrained_cfg("swin_tiny_patch4_window7_224")
    assert catalog.entry("swin_tiny_patch4_window7_224").source == cfg.hf_hub_id


# ---------------------------------------------------------------- hub repos (huggingface_hub against a local endpoint)
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_entry(server: Server, etag: str | None = None, pin: str | None = None) -> ModelFile:
    """A two-file hub repo served by the local server under the hub's URL layout (the mirror = hub endpoint)."""
    repo = "timm/swin_tiny_patch4_window7_224.ms_in1k"
    files = {"model.safetensors": FIXTURE, "config.json": b'{"architecture": "swin"}'}
    for name, data in files.items():
        path = f"/{repo}/resolve/main/{name}"
        server.files[path] = data
        tag = hashlib.sha256(data).hexdigest() if name == "model.safetensors" else hashlib.sha1(data).hexdigest()
        server.headers[path] = {"X-Repo-Commit": HUB_COMMIT,
                                "ETag": f'"{etag if etag and name == "model.safetensors" else tag}"'}
    return ModelFile("swin_tiny_patch4_window7_224", "swin", "hf", repo, "MIT", hf_files=tuple(files),
                     pin_file="model.safetensors", sha256=pin)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_hub_repo_through_a_mirror_endpoint(server, tmp_path, hub_cache, monkeypatch):
    e = hub_entry(server)
    use_catalog(monkeypatch, e)
    assert catalog.location(e, tmp_path / "weights") is None
    path = fetch_one(e, options(tmp_path, mirror=server.base))
    assert path.read_bytes() == FIXTURE and str(hub_cache) in str(path)
    assert catalog.location(e, tmp_path / "weights") == path      # what swin.py and `list` look up, offline
    assert {p for _, p, _ in server.requests} == {f"/{e.source}/resolve/main/{f}" for f in e.hf_files}
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE                                # fetch lifted offline mode for itself only


def test_hub_repo_etag_mismatch_leaves_nothing(server, tmp_path, hub_cache, monkeypatch):
    e = hub_entry(server, etag="f" * 64)
    with pytest.raises(WeightsFetchError, match="expected sha256 f{64}"):
        fetch_one(e, options(tmp_path, mirror=server.base))
    assert catalog.location(e, tmp_path / "weights") is None
    assert catalog.hf_cached_file(e.source, "model.safetensors") is None


def test_hub_repo_pin_mismatch(server, tmp_path, hub_cache):
    e = hub_entry(server, pin="0" * 64)
    with pytest.raises(WeightsFetchError, match="expected sha256 0{64} but got"):
        fetch_one(e, options(tmp_path, mirror=server.base))
    assert catalog.location(e, tmp_path / "weights") is None


def test_hub_repo_slower_than_timeout(server, tmp_path, hub_cache):
    """~6 s: huggingface_hub itself retries a stalled download 5 times (1 s apart, resuming) before it fails."""
    e = hub_entry(server)
    server.behaviour[f"/{e.source}/resolve/main/model.safetensors"] = Behaviour(delay_s=1.0)
    with pytest.raises(WeightsFetchError, match="timed out"):
        fetch_one(e, options(tmp_path, mirror=server.base, timeout_s=0.2))
    assert catalog.location(e, tmp_path / "weights") is None


def test_only_weights_fetch_uses_the_network():
    """Extraction resolves weights offline: no other module calls a downloader (hub reads are local-only)."""
    import re

    net = re.compile(r"import pooch|hf_hub_download|snapshot_download\((?!.*local_files_only=True)|requests\.(get|head)"
                     r"|urlopen|urllib\.request|load_state_dict_from_url|download_url_to_file|hub\.load\(")
    # the fetch command itself; the TF-Hub converter is a separate tool run by hand in its own venv (tfhub extra)
    allowed = {"weights_fetch.py", "tfhub_convert.py"}
    hits = [f"{p.relative_to(REPO)}:{i}: {line.strip()}"
            for d in ("pipeline", "heads", "emocache") for p in sorted((REPO / d).rglob("*.py"))
            if p.name not in allowed
            for i, line in enumerate(p.read_text().splitlines(), 1) if net.search(line)]
    assert hits == []
