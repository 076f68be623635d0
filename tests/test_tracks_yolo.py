"""Tracking for real: the real yolov5n + DeepSORT on vtest.avi and the Hamilton clip, `detector.kind: auto`,
the MOTChallenge round trip, and the `emocache detect` / `emocache tracks` commands.

Needs the real yolov5n.pt in ../shared/weights (AGPL-3.0, never copied into the repo); skips elsewhere."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from emocache.config import Config, _deep_merge
from pipeline.extractors.base import ClipInput, build_extractor
from pipeline.media import decode_frames
from pipeline.video.boxes import iou

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
VTEST_FPS, VTEST_SECONDS = 5, 16          # 80 frames: enough walkers, affordable on 2 CPU cores
HAMILTON_FPS = 5


@pytest.fixture(scope="module")
def cfg_of(tmp_path_factory, shared_weights):
    tmp = tmp_path_factory.mktemp("tracks_yolo")

    def _make(weights_dir=None, **overrides):
        raw = {"base_dir": str(REPO_ROOT), "store": {"dir": str(tmp / "cache"), "tables_dir": str(tmp / "t")},
               "weights": {"dir": str(weights_dir or shared_weights)},
               "runtime": {"device": "cpu", "num_threads": 1},
               "extractors": {"video": {"detector": {"converted_dir": str(tmp / "converted")}}}}
        return Config.model_validate(_deep_merge(raw, overrides))

    return _make


@pytest.fixture(scope="module")
def tracks_ext(cfg_of):
    ext = build_extractor(cfg_of(), "tracks")      # detector.kind: auto (the default)
    ext.load()
    return ext


@pytest.fixture(scope="module")
def vtest(tracks_ext, shared_data):
    path = shared_data / "opencv_samples" / "vtest.avi"
    frames, times = decode_frames(path, VTEST_FPS, 640, end=VTEST_SECONDS)
    clip = ClipInput("vtest", path=str(path), frames=frames, frame_times=times)
    return clip, tracks_ext.extract_batch([clip])[0]


# ---------------------------------------------------------------- auto
def test_auto_picks_yolo_when_the_file_resolves(cfg_of, tracks_ext, tmp_path):
    assert tracks_ext.vcfg.detector.kind == "auto"
    kind, why = tracks_ext.detector_choice()
    assert kind == "yolo" and "yolov5n.pt found" in why
    assert type(tracks_ext.detector).__name__ == "YoloPersonDetector"
    meta = tracks_ext.metadata()
    assert meta["detector"] == {"configured": "auto", "kind": "yolo", "why": why}
    assert meta["params"]["detector"]["kind"] == "yolo" and meta["params"]["detector"]["classes"] == ["person"]
    empty = build_extractor(cfg_of(weights_dir=tmp_path), "tracks")           # no yolov5n.pt there
    assert empty.detector_choice() == ("face", "auto: yolov5n.pt not found in the weights dirs")
    assert empty.params()["detector"]["kind"] == "face"
    assert empty.params() != tracks_ext.params()                              # the choice re-keys the cache


def test_status_and_doctor_show_the_choice(cfg_of, tracks_ext, tmp_path):
    from emocache.doctor import run_doctor
    from emocache.status import collect_status
    from pipeline.store import FeatureStore

    cfg = cfg_of(store={"dir": str(tmp_path / "cache"), "tables_dir": str(tmp_path / "tables")},
                 datasets={"d": {"adapter": "csv", "root": str(tmp_path), "manifest": str(tmp_path / "m.csv"),
                                 "extractors": ["tracks"]}})
    (tmp_path / "m.csv").write_text("path,label\n")
    import pandas as pd

    (tmp_path / "tables").mkdir()
    pd.DataFrame({"clip_id": ["a"], "split": ["train"], "start": ["0"], "end": [""]}).to_csv(
        tmp_path / "tables" / "d.csv", index=False)
    (tmp_path / "tables" / "d.json").write_text(json.dumps({"labels": [], "label_counts": {}}))
    st = FeatureStore.for_family(cfg.store, tmp_path, "video")
    ext = build_extractor(cfg, "tracks")
    ext.detector, ext.embedder, ext.weights = tracks_ext.detector, tracks_ext.embedder, tracks_ext.weights
    st.set_current("tracks", ext.fingerprint(), ext.metadata())
    assert st.meta("tracks")["detector"]["kind"] == "yolo"
    lines = collect_status(cfg)
    assert any("tracks" in ln and "detector yolo (auto: " in ln for ln in lines), lines
    out: list[str] = []
    run_doctor(cfg, out.append)
    assert any("person detector: yolo (auto: " in ln for ln in out), out


# ---------------------------------------------------------------- vtest.avi: many walkers, fixed camera
@pytest.mark.slow
def test_vtest_tracks(vtest, tracks_ext):
    clip, out = vtest
    f = out.arrays["features"]
    ids = np.unique(f[:, 1])
    assert len(ids) >= 8, f"only {len(ids)} person tracks"
    assert out.attrs["detector"] == "yolo" and out.attrs["shot_starts"] == []
    assert len({(a, b) for a, b in f[:, :2]}) == len(f)                      # one row per (frame, id)
    # ids are stable: from one frame to the next a track's box stays on the same walker. At 5 fps a walker
    # moves well under half his height per frame; a jump to another person would move the box further.
    shifts, overlaps = [], []
    for i in ids:
        r = f[f[:, 1] == i]
        r = r[np.argsort(r[:, 0])]
        for a, b in zip(r, r[1:]):
            if b[0] == a[0] + 1:
                ca, cb = (a[2:4] + a[4:6]) / 2, (b[2:4] + b[4:6]) / 2
                shifts.append(np.hypot(*(ca - cb)) / max(a[5] - a[3], b[5] - b[3]))
                overlaps.append(iou(a[2:6], b[None, 2:6])[0])
    assert len(shifts) >= 100
    assert max(shifts) < 0.5 and min(overlaps) > 0, (max(shifts), min(overlaps))
    assert np.mean(np.asarray(overlaps) > 0.3) >= 0.9, np.percentile(overlaps, [1, 5, 50])
    # several people are followed for long: >= 8 tracks seen on >= 10 frames
    assert sum((f[:, 1] == i).sum() >= 10 for i in ids) >= 8
    # each row's box is one of that frame's detections (the detector's own box, not the Kalman prediction)
    dets = tracks_ext.detector.detect(clip.frames)
    for fi, _, x1, y1, x2, y2, score in f:
        d = dets[int(fi)]
        j = int(np.argmax(iou(np.array([x1, y1, x2, y2]), d[:, :4])))
        assert iou(np.array([x1, y1, x2, y2]), d[j:j + 1, :4])[0] > 0.99 and abs(d[j, 4] - score) < 1e-3


@pytest.mark.slow
def test_mot_round_trip(vtest, tmp_path):
    from pipeline.video.mot import read_mot_csv, write_mot_csv

    _, out = vtest
    f = out.arrays["features"]
    n = write_mot_csv(tmp_path / "vtest.txt", f)
    back = read_mot_csv(tmp_path / "vtest.txt")
    assert n == len(back) == len(f) > 0
    rows = f[np.lexsort((f[:, 1], f[:, 0]))]
    np.testing.assert_array_equal(back[:, :2], rows[:, :2])
    np.testing.assert_allclose(back[:, 2:6], rows[:, 2:6], atol=0.011)        # written to 0.01 px
    np.testing.assert_allclose(back[:, 6], rows[:, 6], atol=1e-4)             # scores to 4 decimals


# ---------------------------------------------------------------- Hamilton: cuts between stage and audience
# Hand-labelled from looking at the decoded frames (5 fps): per shot, a point on the performer's torso, or
# None where he is not in the shot. Shots start at decoded frames 0, 8, 18, 39.
PERFORMER = [(0, (500, 150)), (8, (600, 90)), (18, (200, 250)), (39, None)]


@pytest.mark.slow
def test_hamilton_target_is_the_performer(tracks_ext, shared_data):
    path = shared_data / "face_recognition" / "short_hamilton_clip.mp4"
    frames, times = decode_frames(path, HAMILTON_FPS, 640)
    out = tracks_ext.extract_batch([ClipInput("ham", path=str(path), frames=frames, frame_times=times)])[0]
    f, tgt = out.arrays["features"], out.arrays["target"]
    cuts = out.attrs["shot_starts"]
    assert cuts == [s for s, _ in PERFORMER[1:]], cuts
    bounds = [0, *cuts, len(frames)]
    shot_of = np.searchsorted(bounds, f[:, 0], side="right") - 1
    for i in np.unique(f[:, 1]):                                              # cuts end every track
        assert len(np.unique(shot_of[f[:, 1] == i])) == 1
    assert out.attrs["target_by"] == "rule:longest" and tgt.sum() >= 10
    on_performer = []
    for (fi, _, x1, y1, x2, y2, _), s in zip(f[tgt], shot_of[tgt]):
        p = PERFORMER[s][1]
        on_performer.append(p is not None and x1 <= p[0] <= x2 and y1 <= p[1] <= y2)
    assert np.mean(on_performer) > 0.8, on_performer


# ---------------------------------------------------------------- nobody there
def test_video_without_people(tracks_ext):
    frames = np.full((3, 96, 128, 3), 80, np.uint8)
    out = tracks_ext.extract_batch([ClipInput("empty", frames=frames, frame_times=np.arange(3) / 10)])[0]
    assert out.n_rows == 0 and out.arrays["features"].shape == (0, 7)
    assert out.attrs["reason"] == "no_person" and out.attrs["target_id"] == -1


# ---------------------------------------------------------------- the commands
def test_detect_command_on_reference_images(shared_data, shared_weights, tmp_path, cfg_of):
    """`emocache detect` on the reference images: the person detections the original makes at conf 0.4."""
    from emocache.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"weights": {"dir": str(tmp_path / "none")}, "runtime": {"device": "cpu"},
                                  "extractors": {"video": {"detector": {
                                      "converted_dir": str(tmp_path / "conv")}}}}))
    img = str(shared_data / "opencv_samples" / "basketball1.png")
    res = CliRunner().invoke(app, ["detect", img, "--params", str(params), "--weights",
                                   str(shared_weights / "yolov5n.pt"), "--json", str(tmp_path / "d.json")])
    assert res.exit_code == 0, res.output
    assert "detector yolo (set in params)" in res.output
    got = json.loads((tmp_path / "d.json").read_text())
    ref = json.loads((shared_weights / "yolov5n_reference_detections.json").read_text())
    want = [d for d in ref["opencv_samples/basketball1.png"] if d[0] == "person" and d[1] >= 0.4]
    assert [d[0] for d in got[img]] == ["person"] * len(want)
    for (c, s, b), (_, rs, rb) in zip(got[img], want):
        assert abs(s - rs) <= 0.01 and iou(np.array(b), np.array([rb]))[0] >= 0.9
    bad = CliRunner().invoke(app, ["detect", str(tmp_path / "nope.jpg"), "--params", str(params)])
    assert bad.exit_code == 2 and "nope.jpg" in bad.output


def test_detect_command_on_video_frames(shared_data, shared_weights, tmp_path):
    from emocache.cli import app
    from pipeline.media import probe

    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"runtime": {"device": "cpu"},
                                  "extractors": {"video": {"detector": {"converted_dir": str(tmp_path / "c")}}}}))
    clip = tmp_path / "two.avi"
    src = shared_data / "opencv_samples" / "vtest.avi"
    import subprocess

    from pipeline.media import ffmpeg_exe

    # the first 3 frames of vtest.avi, losslessly (MJPEG-free raw copy of the same stream)
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(src), "-frames:v", "3", "-c:v", "copy",
                    str(clip)], check=True)
    res = CliRunner().invoke(app, ["detect", str(clip), "--params", str(params), "--weights",
                                   str(shared_weights / "yolov5n.pt"), "--json", str(tmp_path / "v.json")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "v.json").read_text())
    assert list(got) == [f"{clip}#frame{i}" for i in range(3)]
    ref = json.loads((shared_weights / "yolov5n_reference_detections.json").read_text())["vtest.avi#frame0"]
    want = [d for d in ref if d[0] == "person" and d[1] >= 0.4]
    info = probe(clip)
    assert (info.width, info.height) == (768, 576)
    frame0 = got[f"{clip}#frame0"]
    assert len(frame0) == len(want)
    for c, s, b in frame0:                                                    # the file's own pixels
        assert max(iou(np.array(b), np.array([w[2] for w in want]))) >= 0.9


@pytest.mark.slow
def test_tracks_command(shared_data, shared_weights, tmp_path):
    from emocache.cli import app
    from pipeline.media import probe
    from pipeline.video.mot import read_mot_csv

    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"runtime": {"device": "cpu"}, "media": {"decode_fps": 5},
                                  "extractors": {"video": {"detector": {"converted_dir": str(tmp_path / "c")}}}}))
    clip = tmp_path / "vtest4s.avi"
    import subprocess

    from pipeline.media import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(shared_data / "opencv_samples" / "vtest.avi"),
                    "-t", "4", "-c:v", "copy", str(clip)], check=True)
    res = CliRunner().invoke(app, ["tracks", str(clip), "--params", str(params), "--weights",
                                   str(shared_weights / "yolov5n.pt"), "--csv", str(tmp_path / "t.txt"),
                                   "--overlay", str(tmp_path / "t.mp4")])
    assert res.exit_code == 0, res.output
    assert "detector yolo" in res.output and "tracks" in res.output
    rows = read_mot_csv(tmp_path / "t.txt")
    assert len(rows) > 0 and len(np.unique(rows[:, 1])) >= 3
    info = probe(tmp_path / "t.mp4")
    assert info.has_video and (info.width, info.height) == (640, 480)
    frames, _ = decode_frames(tmp_path / "t.mp4", 5, 640)
    assert len(frames) == 20


def test_detection_batched_across_clips(tracks_ext, shared_data, monkeypatch):
    """Two clips (two frame sizes) in one extract_batch: one detector call for all their frames, and each
    clip's tracks are what it gets alone."""
    clips = []
    for name, sub in [("vtest.avi", "opencv_samples"), ("short_hamilton_clip.mp4", "face_recognition")]:
        frames, times = decode_frames(shared_data / sub / name, 10, 640, end=0.4)
        clips.append(ClipInput(name, frames=frames, frame_times=times))
    alone = [tracks_ext.extract_batch([c])[0] for c in clips]
    calls = []
    detect = tracks_ext.detector.detect
    monkeypatch.setattr(tracks_ext.detector, "detect", lambda frames: calls.append(len(frames)) or detect(frames))
    together = tracks_ext.extract_batch(clips)
    assert calls == [sum(len(c.frames) for c in clips)]
    for a, t in zip(alone, together):
        np.testing.assert_allclose(t.arrays["features"], a.arrays["features"], atol=1e-3)
        assert t.attrs["n_detections"] == a.attrs["n_detections"] > 0
