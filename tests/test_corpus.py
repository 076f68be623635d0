"""Bad-input corpus (tests/corpus/make_corpus.py) through real listing and real extraction.

Every manifest row must end in exactly one documented way (the table in docs/SECURITY.md, built
from the same CASES): processed (rows, or 0 rows with a stated reason), recorded in the failure
table naming the file, or refused at listing as a dataset problem naming the manifest line.
Never a crash of the run, never a half row, never a file opened outside the dataset root.
The extractors are the offline ones: VGGish (untrained, allowed), eGeMAPS, MiniLM text, and
tracks (face-anchored detector) + faces + pose with 8 frames per clip.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from emocache.config import Config
from pipeline.datasets import list_dataset, read_clip_table
from pipeline.extract import extract
from pipeline.spilled_audio import SPILL_PREFIX
from pipeline.store import FeatureStore

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_corpus", REPO / "tests" / "corpus" / "make_corpus.py")
mc = importlib.util.module_from_spec(_spec)
sys.modules["make_corpus"] = mc          # dataclasses look their module up while the class is built
_spec.loader.exec_module(mc)

# ~25 s of CPU (six extractors on 20 clips, twice): slow on a shared 2-core machine; still in `make test`
pytestmark = pytest.mark.slow

FAMILY = {**{k: "audio" for k in mc.AUDIO}, **{k: "text" for k in mc.TEXT}, **{k: "video" for k in mc.VIDEO}}
VGGISH_EXAMPLE_S = 0.96

# ---------------------------------------------------------------- "never opened": an audit hook
# Records every file open and every subprocess while armed. Installed when the corpus run starts (audit
# hooks cannot be removed), it then records only while `_AUDIT` is a list.
_AUDIT: list | None = None


def _audit(event: str, args) -> None:
    if _AUDIT is None:
        return
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _AUDIT.append(("open", os.fsdecode(args[0])))
    elif event == "subprocess.Popen":
        _AUDIT.append(("exec", " ".join(os.fsdecode(a) for a in (args[1] or []))))


_HOOKED: list = []


def _arm_audit() -> None:
    global _AUDIT
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED.append(True)
    _AUDIT = []


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("corpus")
    manifest = mc.build_corpus(out, shared_data)
    return out, manifest


@pytest.fixture(scope="module")
def run(corpus):
    """List the corpus and extract it once (the expensive part, shared by the tests below)."""
    global _AUDIT
    out, manifest = corpus
    cfg = Config.model_validate({
        "base_dir": str(out), "store": {"dir": str(out / "cache"), "flush_clips": 4},
        "weights": {"dir": str(out / "weights"), "allow_untrained": ["vggish", "swin"]},
        "runtime": {"device": "cpu", "num_threads": 1, "batch_clips": 4},
        "media": {"decode_fps": 5.0, "max_side": 320, "max_clip_seconds": 30, "spill_audio_seconds": 15},
        "extractors": {"text": {"model": "minilm-bundled"}, "egemaps": {"two_pass_seconds": 15},
                       "video": {"frames_per_clip": 8, "detector": {"kind": "face"}}},
        "datasets": {"corpus": {
            "adapter": "csv", "root": str(out / "media"), "manifest": str(manifest), "labels": mc.LABELS,
            "text_fields": {"transcript": "transcript"}, "split": {"method": "random", "val": 0.0, "test": 0.3},
            "extractors": list(mc.EXTRACTORS)}}})
    from conftest import start_ffmpeg_trace
    from pipeline import media

    trace, no_trace = start_ffmpeg_trace(out / "ffmpeg_traces")   # what every ffmpeg process opened
    private_tmp = out / "tmp"            # the run's temp files (spills), apart from other processes'
    private_tmp.mkdir(exist_ok=True)
    _arm_audit()
    crashes = []
    try:
        with pytest.MonkeyPatch.context() as mp:
            if trace is not None:
                mp.setattr(media, "ffmpeg_exe", lambda: trace.wrapper)
            mp.setattr(tempfile, "tempdir", str(private_tmp))
            listing = list_dataset(cfg, "corpus")
            summary = extract(cfg, ["corpus"], show_progress=False)
    except Exception as e:  # a crash of the run: reported by the tests, not raised from the fixture
        crashes.append(f"{type(e).__name__}: {e}")
        listing = summary = None
    finally:
        audit, _AUDIT = _AUDIT, None
    return {"cfg": cfg, "out": out, "manifest": manifest, "listing": listing, "summary": summary,
            "audit": audit, "crashes": crashes, "trace": trace, "no_trace": no_trace,
            "spills_left": {p.name for p in private_tmp.glob(SPILL_PREFIX + "*")}}


def _stores(cfg: Config) -> dict[str, FeatureStore]:
    return {fam: FeatureStore.for_family(cfg.store, Path(cfg.base_dir), fam) for fam in ("audio", "text", "video")}


def _source(run, case) -> str:
    return f"{run['manifest']}:{mc.manifest_line(case)}"


def _table_source(run, case) -> str:
    """The same row as the clip table names it: relative to the project (no checkout path in a DVC output)."""
    return f"{Path(run['manifest']).relative_to(run['cfg'].base_dir)}:{mc.manifest_line(case)}"


def _outcomes(run) -> dict[str, dict[str, str]]:
    """case name -> extractor -> observed outcome (rows | empty | failed | skipped | BOTH | MISSING)."""
    cfg = run["cfg"]
    df, _ = read_clip_table(cfg, "corpus")
    by_source = dict(zip(df["source"], df["clip_id"]))
    stores = _stores(cfg)
    failed = {(f["extractor"], f["clip_id"]) for st in stores.values() for f in st.failures()}
    out = {}
    for case in mc.CASES:
        cid = by_source.get(_table_source(run, case))
        obs = {}
        for key in mc.EXTRACTORS:
            if cid is None:
                obs[key] = "skipped"
                continue
            st = stores[FAMILY[key]]
            committed = cid in st.index(key, refresh=True)
            if committed and (key, cid) in failed:
                obs[key] = "BOTH"
            elif (key, cid) in failed:
                obs[key] = "failed"
            elif committed:
                rows = st.read(key, [cid])[0]
                obs[key] = "rows" if rows.times.shape[0] else ("empty" if rows.attrs else "EMPTY WITHOUT REASON")
            else:
                obs[key] = "MISSING"
        out[case.name] = obs
    return out


# ---------------------------------------------------------------- the tests
def test_the_run_does_not_crash(run):
    assert run["crashes"] == [], run["crashes"]


def test_listing_refuses_bad_rows_naming_the_line(run):
    listing = run["listing"]
    problems = {p.source: p.reason for p in listing.problems}
    for case in mc.CASES:
        src = _source(run, case)
        listed = any(c.source == src for c in listing.clips)
        assert listed == case.listed, f"{case.name}: listed={listed}"
        if case.problem:
            assert case.problem in problems.get(src, ""), f"{case.name}: problems at {src}: {problems.get(src)}"
        if not case.listed and case.path and (os.path.normpath(case.path).startswith("..") or case.path.startswith("/")):
            assert "outside the dataset root" in problems[src]
    dup = next(c for c in mc.CASES if c.make is mc._dup)
    first, second = _source(run, dup), f"{run['manifest']}:{mc.manifest_line(dup) + 1}"
    assert problems[second] == f"duplicate of {first} (same content and bounds): listed once"
    # every listed clip is unique and the NaN label became "no label", not a class called 'NaN'
    assert len({c.clip_id for c in listing.clips}) == len(listing.clips)
    nan_case = next(c for c in mc.CASES if c.labels == "NaN")
    assert next(c for c in listing.clips if c.source == _source(run, nan_case)).labels == []
    assert listing.labels == mc.LABELS


def test_each_input_ends_as_documented(run):
    observed = _outcomes(run)
    wrong = {name: {k: (case_exp, observed[name][k]) for k, case_exp in case.expect.items()
                    if observed[name][k] != case_exp}
             for name, case in ((c.name, c) for c in mc.CASES)}
    assert not {n: w for n, w in wrong.items() if w}, "expected vs observed: " + repr({n: w for n, w in wrong.items() if w})


def test_failures_name_the_file_and_stage(run):
    for st in _stores(run["cfg"]).values():
        for f in st.failures():
            assert f["stage"] in {"decode", "extract", "upstream"}
            assert f["path"] and Path(f["path"]).name in f["error"], f
    # summary failures == store failure table (nothing recorded in one place only)
    stored = {(f["extractor"], f["clip_id"]) for st in _stores(run["cfg"]).values() for f in st.failures()}
    assert stored == {(f["extractor"], f["clip_id"]) for f in run["summary"].failures}


def _corrupted(cfg: Config) -> tuple[int, int]:
    """(committed clip rows checked, clips whose rows are inconsistent or unreadable)."""
    checked = bad = 0
    for fam, st in _stores(cfg).items():
        for key in st.keys():
            fp = st.current_fingerprint(key)
            committed, pending = st.segments(key, fp)
            bad += len(pending)                      # a half-written segment left behind
            ids = [c for doc in committed.values() for c in doc["clip_ids"]]
            bad += len(ids) - len(set(ids))          # a clip committed twice
            for cid, rows in zip(ids, st.read(key, ids)):
                checked += 1
                t = rows.times
                ok = t.ndim == 2 and t.shape[1] == 2 and np.isfinite(t).all() and (t[:, 1] >= t[:, 0]).all()
                for a in rows.arrays.values():
                    ok &= a.shape[0] == t.shape[0] or (t.shape[0] == 0 and a.size == 0)
                    if a.dtype.kind == "f":
                        ok &= bool(np.isfinite(a).all())
                bad += int(not ok)
    return checked, bad


def test_no_half_rows_and_audio_rows_match_duration(run):
    checked, bad = _corrupted(run["cfg"])
    assert checked > 0 and bad == 0
    st = _stores(run["cfg"])["audio"]
    idx = st.index("vggish", refresh=True)
    for rows in st.read("vggish", list(idx)):
        secs = rows.attrs.get("audio_seconds")
        if secs is not None:   # 16 kHz mono after resampling: one row per whole 0.96 s example
            assert rows.times.shape[0] == math.floor(secs / VGGISH_EXAMPLE_S + 1e-6), rows.attrs
    df, _ = read_clip_table(run["cfg"], "corpus")
    by_path = {p: c for p, c, e in zip(df["path"], df["clip_id"], df["end"]) if e is None}   # whole files
    sr_cases = {"stereo_8k.wav": 1.06, "stereo_48k.wav": 2.5,   # the 8 kHz prompt is 1.06 s long
                "long_audio_20s.m4a": 20.0}                     # spilled: decoded into a temp file, read in slices
    for path, secs in sr_cases.items():
        attrs = st.read("vggish", [by_path[path]])[0].attrs
        assert abs(attrs["audio_seconds"] - secs) < 0.02, (path, attrs)


def test_spilled_audio_leaves_no_temp_file(run):
    assert run["spills_left"] == set()


def test_long_text_is_truncated_and_says_so(run):
    cfg = run["cfg"]
    df, _ = read_clip_table(cfg, "corpus")
    case = next(c for c in mc.CASES if c.transcript == mc.LONG_TEXT)
    cid = dict(zip(df["source"], df["clip_id"]))[_table_source(run, case)]
    rows = _stores(cfg)["text"].read("text.transcript", [cid])[0]
    assert rows.arrays["features"].shape == (1, 384)
    assert rows.attrs["truncated"] is True and rows.attrs["n_tokens"] > 10_000 > cfg.extractors.text.max_length


def test_nothing_outside_the_root_was_opened(run):
    out = run["out"]
    forbidden = [str((out / "outside" / "secret.wav").resolve()), "/etc/passwd"]
    touched = [(kind, what) for kind, what in run["audit"] if any(f in what for f in forbidden)
               or (kind == "open" and os.path.realpath(what) in forbidden)]
    assert touched == []
    # the audit saw the real work (so an empty list above means something)
    assert any(kind == "exec" and "ffmpeg" in what for kind, what in run["audit"])
    assert any(kind == "open" and what.endswith("manifest.csv") for kind, what in run["audit"])


def test_ffmpeg_opened_only_listed_media_inside_the_root(run):
    """Playlists, manifests and concat lists must not make ffmpeg open anything else (strace of every call)."""
    if run["trace"] is None:
        pytest.skip(run["no_trace"])
    root = run["out"] / "media"
    listed = {os.path.realpath(root / c.path) for c in run["listing"].clips if c.path}
    opened = {os.path.realpath(p) for p in run["trace"].opened()}
    assert opened, "the trace saw no ffmpeg open at all"
    assert opened <= listed, f"ffmpeg opened files that are not listed media: {sorted(opened - listed)}"
    assert not any("outside" in os.path.relpath(os.path.realpath(p), run["out"]) for p in opened)


def test_docs_table_matches_the_corpus(repo):
    doc = (repo / "docs" / "SECURITY.md").read_text(encoding="utf-8")
    assert mc.markdown_table() in doc, "docs/SECURITY.md: paste the table from `python tests/corpus/make_corpus.py --table`"


def test_summary_line(run, capsys):
    """Counts over manifest rows; prints the line the issue asks for (to the terminal, even without -s)."""
    observed = _outcomes(run)
    rows_tried = len(mc.CASES) + 1                                   # + the second listing of the duplicate
    failed_cleanly = sum(1 for c in mc.CASES if "failed" in observed[c.name].values() or not c.listed)
    handled = rows_tried - failed_cleanly                            # processed (rows or stated-empty); duplicate deduped
    crashes = len(run["crashes"]) + sum(v in {"BOTH", "MISSING", "EMPTY WITHOUT REASON"}
                                        for o in observed.values() for v in o.values())
    _, corrupted = _corrupted(run["cfg"])
    line = (f"corpus: inputs tried {rows_tried}, handled {handled}, failed cleanly {failed_cleanly}, "
            f"crashes {crashes}, corrupted clips {corrupted}")
    with capsys.disabled():
        print("\n" + line)
    assert crashes == 0 and corrupted == 0 and handled + failed_cleanly == rows_tried
    assert handled >= 10 and failed_cleanly >= 8


def test_rerun_only_retries_failures(run):
    """A second run computes nothing new; only failed clips are tried again (and fail the same way)."""
    first = run["summary"]
    second = extract(run["cfg"], ["corpus"], show_progress=False)
    for key, s in second.stats.items():
        assert s.done == 0, key
        assert s.failed == first.stats[key].failed, key
        assert s.skipped == first.stats[key].done, key
    assert _corrupted(run["cfg"])[1] == 0
