"""The video family through the runner: one decode per video feeds all four consumers; a rerun decodes nothing."""
import shutil

import numpy as np
import pytest

from pipeline.extract import extract
from pipeline.store import FeatureStore


@pytest.mark.slow
def test_one_decode_per_video_for_all_consumers(make_config, tmp_path, shared_data):
    root = tmp_path / "videos"
    root.mkdir()
    shutil.copy(shared_data / "pyfeat/single_face.mp4", root)
    shutil.copy(shared_data / "face_recognition/short_hamilton_clip.mp4", root)
    (tmp_path / "m.csv").write_text("path,start,end\nsingle_face.mp4,0,\nshort_hamilton_clip.mp4,0,3\n")
    cfg = make_config(
        datasets={"v": {"adapter": "csv", "root": str(root), "manifest": str(tmp_path / "m.csv"),
                        "split": {"method": "random", "val": 0, "test": 0.5},
                        "extractors": ["tracks", "faces", "swin", "pose"]}},
        weights={"allow_untrained": ["swin"]}, media={"decode_fps": 5.0, "max_side": 320},
        extractors={"video": {"frames_per_clip": 4, "detector": {"kind": "face"}}})
    s1 = extract(cfg, ["v"], family="video", show_progress=False)
    assert s1.decodes == {"audio": 0, "frames": 2}, s1.decodes
    for key in ("tracks", "faces", "swin", "pose"):
        assert s1.stats[key].done == 2 and s1.stats[key].failed == 0, (key, s1.failures)
    assert s1.stats["swin"].pretrained is False
    st = FeatureStore(str(tmp_path / "cache" / "video.zarr"))
    ids = sorted(st.index("swin"))
    x, lengths = st.read_padded("swin", ids)
    assert x.shape == (2, 4, 768) and lengths.tolist() == [4, 4] and np.isfinite(x).all()
    assert st.meta("swin")["pretrained"] is False
    pose = st.read("pose", ids)
    assert all(r.arrays["features"].shape == (4, 99) for r in pose)
    s2 = extract(cfg, ["v"], family="video", show_progress=False)
    assert s2.decodes["frames"] == 0 and all(s.done == 0 and s.skipped == 2 for s in s2.stats.values())
