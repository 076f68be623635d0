"""The original YOLOv5 checkpoint on our rebuilt network: equality with the original implementation's detections,
the allow-listed loader (what it refuses, and how), the converted tensors-only cache, batching, bad input.

Needs the real yolov5n.pt in ../shared/weights (AGPL-3.0, never copied into the repo); skips elsewhere."""
import argparse
import json
import os
import pickle

import numpy as np
import pytest

from emocache.config import Config, _deep_merge
from pipeline.video.boxes import iou

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
REF_IOU, REF_CONF_DIFF, REF_EXTRA_CONF = 0.9, 0.01, 0.3        # the equality criteria
REF_CONF, REF_NMS_IOU = 0.25, 0.45                              # settings the reference was computed with


@pytest.fixture(scope="module")
def yolo_cfg(tmp_path_factory, shared_weights):
    tmp = tmp_path_factory.mktemp("yolo")

    def _make(**detector):
        raw = {"base_dir": str(REPO_ROOT), "store": {"dir": str(tmp / "cache"), "tables_dir": str(tmp / "t")},
               "weights": {"dir": str(shared_weights)}, "runtime": {"device": "cpu", "num_threads": 1},
               "extractors": {"video": {"detector": {"kind": "yolo", "weights_file": "yolov5n.pt",
                                                     "converted_dir": str(tmp / "converted"), **detector}}}}
        return Config.model_validate(_deep_merge(raw, {}))

    return _make


def yolo(cfg):
    import torch

    from pipeline.video.detectors import YoloPersonDetector

    return YoloPersonDetector(cfg.extractors.video.detector, cfg.extractor_settings(), torch.device("cpu"))


@pytest.fixture(scope="module")
def all_classes(yolo_cfg):
    return yolo(yolo_cfg(conf=REF_CONF, iou=REF_NMS_IOU, classes=None))


@pytest.fixture(scope="module")
def reference_run(all_classes, shared_data, shared_weights):
    """(reference detections, {key: RGB image}, {key: our detections, one image per call})."""
    ref, images = reference_images(shared_data, shared_weights)
    return ref, dict(images), {key: all_classes.detect_labeled([img])[0] for key, img in images}


def reference_images(shared_data, shared_weights):
    """(key, RGB image) for every entry of the reference file; video frames read as the reference did."""
    import cv2

    ref = json.loads((shared_weights / "yolov5n_reference_detections.json").read_text())
    out = []
    for key in ref:
        if "#frame" in key:
            name, frame = key.split("#frame")
            cap = cv2.VideoCapture(str(shared_data / "opencv_samples" / name))
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(frame))
            ok, bgr = cap.read()
            cap.release()
            assert ok, key
        else:
            bgr = cv2.imread(str(shared_data / key))
        out.append((key, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return ref, out


def match_reference(ref_dets, ours, names):
    """(unmatched reference detections, our unmatched detections with conf >= REF_EXTRA_CONF)."""
    used, missing = set(), []
    for cls, conf, box in sorted(ref_dets, key=lambda d: -d[1]):
        best, best_j = 0.0, None
        for j, d in enumerate(ours):
            if j in used or names[int(d[5])] != cls or abs(float(d[4]) - conf) > REF_CONF_DIFF:
                continue
            v = float(iou(np.asarray(box, float), d[None, :4])[0])
            if v > best:
                best, best_j = v, j
        if best_j is None or best < REF_IOU:
            missing.append((cls, conf, box, best))
        else:
            used.add(best_j)
    extra = [(names[int(d[5])], float(d[4])) for j, d in enumerate(ours) if j not in used and d[4] >= REF_EXTRA_CONF]
    return missing, extra


# ---------------------------------------------------------------- equality with the original
@pytest.mark.slow
def test_equals_original_yolov5_detections(all_classes, reference_run, shared_weights):
    ref, images, results = reference_run
    names = json.loads((shared_weights / "coco80_names.json").read_text())
    assert all_classes.names == names
    assert len(images) == 7
    for key, ours in results.items():
        assert ours.shape[1] == 6 and ours.dtype == np.float32
        missing, extra = match_reference(ref[key], ours, names)
        assert not missing, f"{key}: reference detections not matched: {missing}"
        assert not extra, f"{key}: detections the original does not make: {extra}"
    assert sum(len(ref[k]) for k in results) == 52


@pytest.mark.slow
def test_batched_equals_one_at_a_time(all_classes, reference_run):
    """Frames of mixed sizes in one call: grouped by size (the 3 vtest frames form one batch); same outputs."""
    _, images, singles = reference_run
    keys = [k for k in images if "vtest" in k or "messi" in k]
    batched = all_classes.detect_labeled([images[k] for k in keys])
    for k, b in zip(keys, batched):
        assert singles[k].shape == b.shape, k
        np.testing.assert_allclose(singles[k], b, atol=1e-3)


def test_person_only_by_default(yolo_cfg, reference_run):
    det = yolo(yolo_cfg(conf=REF_CONF))
    assert det.class_ids == [0]
    import torch

    # the fp16 checkpoint runs in fp32 on CPU (half only applies on CUDA)
    assert not det.backend.half and {p.dtype for p in det.backend.net.parameters()} == {torch.float32}
    _, images, singles = reference_run
    key = "opencv_samples/messi5.jpg"
    people = det.detect(np.stack([images[key]]))
    everything = singles[key]
    assert len(people) == 1 and people[0].shape[1] == 5
    np.testing.assert_allclose(people[0], everything[everything[:, 5] == 0][:, :5], atol=1e-3)


# ---------------------------------------------------------------- converted tensors-only copy
def test_converted_copy_is_tensors_only_and_reused(yolo_cfg, monkeypatch, tmp_path):
    import torch

    from pipeline.video import yolov5_checkpoint as yc

    cfg = yolo_cfg(converted_dir=str(tmp_path / "conv"))
    first = yolo(cfg)
    assert first.weights.source.endswith("converted now)")
    files = list((tmp_path / "conv").iterdir())
    assert [f.name for f in files] == [f"yolov5-{first.weights.sha256}.pt"]
    conv = torch.load(files[0], weights_only=True)     # no safe_globals: tensors and plain values only
    assert conv["format"] == yc.CONVERTED_FORMAT and len(conv["state_dict"]) == 349 and conv["nc"] == 80

    def no_unpickling(*a, **k):
        raise AssertionError("the source checkpoint was unpickled again")

    monkeypatch.setattr(yc, "read_original_checkpoint", no_unpickling)
    again = yolo(cfg)
    assert again.weights.source.endswith("converted copy reused)")
    x = np.random.default_rng(0).integers(0, 255, (1, 96, 128, 3), dtype=np.uint8)
    np.testing.assert_array_equal(first.detect(x)[0], again.detect(x)[0])


def test_state_dict_equals_the_pickled_one(shared_weights):
    """Our placeholder tree gives the original tensors, every one, unchanged (fp16 as stored)."""
    import torch

    from pipeline.video.yolov5 import build_network
    from pipeline.video.yolov5_checkpoint import read_original_checkpoint

    conv = read_original_checkpoint(shared_weights / "yolov5n.pt")
    sd = conv["state_dict"]
    assert all(v.dtype in (torch.float16, torch.int64) for v in sd.values())
    net = build_network(conv, "yolov5n.pt")
    ours = net.state_dict()
    assert set(ours) == set(sd)                              # all 349 names, strict load
    for k, v in sd.items():
        torch.testing.assert_close(ours[k], v.to(ours[k].dtype), rtol=0, atol=0)
    assert {m.eps for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}   # the original's
    torch.testing.assert_close(net.model[-1].anchors[0] * 8, torch.tensor([[10., 13.], [16., 30.], [33., 23.]]))


# ---------------------------------------------------------------- the loader refuses
class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_a_disallowed_global_before_running_it(yolo_cfg, tmp_path):
    import torch

    from pipeline.video.yolov5_checkpoint import CheckpointError

    evil = _Evil()
    evil.marker = tmp_path / "ran"
    bad = tmp_path / "evil.pt"
    torch.save({"model": evil}, bad)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused.*'(posix|os|nt)\.system'"):
        yolo(yolo_cfg(weights_file=str(bad)))
    assert not evil.marker.exists()


def test_refuses_an_extra_global_in_a_real_checkpoint(yolo_cfg, shared_weights, tmp_path):
    """The real model tree plus one argparse.Namespace (as some training scripts store): refused by name."""
    from pipeline.video.yolov5_checkpoint import CheckpointError

    ckpt = load_tree(shared_weights / "yolov5n.pt")
    ckpt["opt"] = argparse.Namespace(epochs=300)
    bad = tmp_path / "yolov5n_opt.pt"
    save_tree(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"yolov5n_opt\.pt.*'argparse\.Namespace'"):
        yolo(yolo_cfg(weights_file=str(bad)))


@pytest.mark.parametrize("what", ["truncated", "text", "empty_zip"])
def test_refuses_broken_files(yolo_cfg, shared_weights, tmp_path, what):
    import zipfile

    from pipeline.video.yolov5_checkpoint import CheckpointError

    bad = tmp_path / f"{what}.pt"
    if what == "truncated":
        bad.write_bytes((shared_weights / "yolov5n.pt").read_bytes()[:1_000_000])
    elif what == "text":
        bad.write_text("not a checkpoint\n")
    else:
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("archive/readme.txt", "no pickle here")
    with pytest.raises(CheckpointError, match=f"{what}\\.pt"):
        yolo(yolo_cfg(weights_file=str(bad)))


def test_refuses_a_sha256_pin_mismatch_before_parsing(yolo_cfg, monkeypatch):
    from pipeline.video import yolov5_checkpoint as yc
    from pipeline.weights import WeightsHashMismatch

    cfg = yolo_cfg()
    cfg.weights.sha256["yolov5n.pt"] = "0" * 64
    monkeypatch.setattr(yc, "checkpoint_globals", lambda p: pytest.fail("parsed before the hash check"))
    with pytest.raises(WeightsHashMismatch, match=r"yolov5n\.pt.*does not match"):
        yolo(cfg)


def test_tracks_stage_refuses_before_any_frame(yolo_cfg, tmp_path):
    from pipeline.extractors.base import build_extractor
    from pipeline.video.yolov5_checkpoint import CheckpointError

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="bad.pt"):
        build_extractor(yolo_cfg(weights_file=str(bad)), "tracks").load()


def test_other_class_list(yolo_cfg, reference_run, shared_weights, tmp_path):
    """A 3-class checkpoint (the real one with its head cut to 3 classes): its own names are used, and
    `classes` must name one of them."""
    from pipeline.video.yolov5_checkpoint import CheckpointError

    ckpt = load_tree(shared_weights / "yolov5n.pt")
    model = ckpt["model"]
    detect = list(model._modules["model"]._modules.values())[-1]
    nc, na = 3, 3
    for conv in detect._modules["m"]._modules.values():
        w, b = conv._parameters["weight"], conv._parameters["bias"]
        conv._parameters["weight"] = w.view(na, 85, *w.shape[1:])[:, :5 + nc].reshape(na * (5 + nc), *w.shape[1:])
        conv._parameters["bias"] = b.view(na, 85)[:, :5 + nc].reshape(-1)
        conv.out_channels = na * (5 + nc)
    detect.nc, detect.no = nc, 5 + nc
    model.names, model.yaml = ["walker", "bike", "car"], {**model.yaml, "nc": nc}
    path = tmp_path / "three.pt"
    save_tree(ckpt, path)
    with pytest.raises(CheckpointError, match=r"three\.pt.*\['person'\].*walker, bike, car"):
        yolo(yolo_cfg(weights_file=str(path)))
    det = yolo(yolo_cfg(weights_file=str(path), classes=["walker"], conf=REF_CONF))
    assert det.names == ["walker", "bike", "car"] and det.class_ids == [0]
    _, images, singles = reference_run
    walkers = det.detect(np.stack([images["opencv_samples/basketball1.png"]]))[0]
    people = singles["opencv_samples/basketball1.png"]
    people = people[people[:, 5] == 0]
    assert len(walkers) >= 1
    # class 0 of the cut head is the original's person channel: the boxes are the person boxes
    for box in walkers[:, :4]:
        assert iou(box, people[:, :4]).max() > 0.9


# ---------------------------------------------------------------- helpers: the placeholder tree round trip
def load_tree(path):
    import torch

    from pipeline.video.yolov5_checkpoint import _placeholder, checkpoint_globals

    with torch.serialization.safe_globals([(_placeholder(n), n) for n in checkpoint_globals(path)]):
        return torch.load(str(path), map_location="cpu", weights_only=True)


class _TreePickler(pickle._Pickler):
    """Writes each placeholder class under the global it stood in for (the checkpoint's own names)."""

    def save_global(self, obj, name=None):
        src = getattr(obj, "_source_global", "")
        if isinstance(obj, type) and src:
            module, _, qual = src.rpartition(".")
            self.write(pickle.GLOBAL + f"{module}\n{qual}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


class _TreePickleModule:
    Pickler = _TreePickler


def save_tree(obj, path):
    import torch

    torch.save(obj, str(path), pickle_module=_TreePickleModule, pickle_protocol=2)


def test_fp16_on_cuda_equals_original(yolo_cfg, shared_data, shared_weights):
    """With a GPU: the same equality in fp16 (detector.half), batched."""
    import torch

    from pipeline.video.detectors import YoloPersonDetector

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: fp16 runs only on CUDA")
    cfg = yolo_cfg(conf=REF_CONF, iou=REF_NMS_IOU, classes=None)
    det = YoloPersonDetector(cfg.extractors.video.detector, cfg.extractor_settings(), torch.device("cuda"))
    assert det.backend.half and next(det.backend.net.parameters()).dtype == torch.float16
    ref, images = reference_images(shared_data, shared_weights)
    keys = [k for k, _ in images]
    for key, ours in zip(keys, det.detect_labeled([im for _, im in images])):
        missing, extra = match_reference(ref[key], ours, det.names)
        assert not missing and not extra, (key, missing, extra)
