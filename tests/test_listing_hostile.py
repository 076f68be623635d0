"""One bad row is one problem naming file:line, never the whole listing; empty datasets are a valid state;
a file swapped after listing is refused at open time. Media: tones generated with ffmpeg's sine source."""
from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest

from emocache.status import collect_status
from pipeline import media
from pipeline.datasets import list_dataset, write_listing
from pipeline.extract import extract


def _tone(p: Path, seconds: float = 1.0, f: int = 330) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([media.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=f={f}:sample_rate=16000:duration={seconds}", str(p)], check=True,
                   stdin=subprocess.DEVNULL, timeout=60)
    return p


def _csv_cfg(make_config, root: Path, manifest: Path, **ds):
    return make_config(datasets={"d": {"adapter": "csv", "root": str(root), "manifest": str(manifest),
                                       "text_fields": {"transcript": "transcript"},
                                       "split": {"method": "random", "val": 0.0, "test": 0.0},
                                       "extractors": ["egemaps"], **ds}})


def test_each_bad_row_is_its_own_problem(tmp_path, make_config):
    root = tmp_path / "media"
    _tone(root / "ok.wav")
    _tone(root / "ok2.wav", f=440)
    os.symlink("loop_b.wav", root / "loop_a.wav")
    os.symlink("loop_a.wav", root / "loop_b.wav")
    os.mkfifo(root / "fifo.wav")
    (root / "a_dir.wav").mkdir()
    lines = ["path,labels,transcript",
             "ok.wav,happy,fine",                                   # 2
             "loop_a.wav,happy,symlink loop",                       # 3
             "bad\x00name.wav,happy,NUL byte",                      # 4
             "ok2.wav,happy," + "x" * 140_000,                      # 5: over csv's 128 KB field limit
             "fifo.wav,happy,a FIFO",                               # 6
             "a_dir.wav,happy,a directory",                         # 7
             "nosuchdir/../ok.wav,happy,through a missing folder",  # 8
             'ok2.wav,sad,"unclosed quote',                         # 9: swallows 10 and 11
             "ok.wav,sad,eaten",                                    # 10
             "ok2.wav,sad,eaten too"]                               # 11
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    listing = list_dataset(_csv_cfg(make_config, root, manifest), "d")
    probs = {p.source: p.reason for p in listing.problems}
    at = lambda n: probs[f"{manifest}:{n}"]                          # noqa: E731
    assert [c.source for c in listing.clips] == [f"{manifest}:2"]
    assert "symlink loop" in at(3)
    assert "NUL byte" in at(4)
    assert "field larger than field limit" in at(5)
    assert "is a FIFO" in at(6) and "is a directory" in at(7)
    assert "goes through" in at(8) and "nosuchdir" in at(8)
    assert "unbalanced quote" in at(9) and "runs to line 11" in at(9) and "2 line(s)" in at(9)


def test_empty_datasets_are_a_valid_reported_state(tmp_path, make_config):
    root = tmp_path / "media"
    root.mkdir()
    header_only = tmp_path / "empty.csv"
    header_only.write_text("path,labels,transcript\n")
    all_refused = tmp_path / "refused.csv"
    all_refused.write_text("path,labels,transcript\nmissing.wav,happy,x\n../outside.wav,sad,y\n")
    for manifest in (header_only, all_refused):
        cfg = _csv_cfg(make_config, root, manifest)
        listing = list_dataset(cfg, "d")
        assert listing.clips == []
        write_listing(cfg, listing)
        s = extract(cfg, ["d"], show_progress=False)
        assert s.stats["egemaps"].done == 0 and s.failures == []
        lines = collect_status(cfg)
        assert "d: 0 clips" in lines and any("cached 0/0" in ln for ln in lines), lines


def test_folder_and_ravdess_names(tmp_path, make_config):
    root = tmp_path / "folder"
    _tone(root / "happy" / "a.wav")
    _tone(root / "happy" / "._a.wav")                               # macOS resource fork
    _tone(root / ".ipynb_checkpoints" / "b.wav")                    # not a class
    (root / "sad").mkdir()                                          # an empty class
    bad = os.fsencode(root / "happy") + b"/caf\xe9.wav"             # not valid UTF-8
    _tone(Path(os.fsdecode(bad)))
    cfg = make_config(datasets={"f": {"adapter": "folder", "root": str(root), "extractors": ["egemaps"],
                                      "split": {"method": "random", "val": 0.0, "test": 0.0}}})
    listing = list_dataset(cfg, "f")
    assert [c.path for c in listing.clips] == ["happy/a.wav"] and listing.labels == ["happy"]
    reasons = " | ".join(p.reason for p in listing.problems)
    assert "not valid UTF-8" in reasons and "'sad' holds no media" in reasons
    table, summary = write_listing(cfg, listing)                    # the bad name no longer breaks the write
    assert not list(table.parent.glob("*.tmp*"))
    rav = tmp_path / "rav"
    _tone(rav / "03-01-05-01-02-01-12.wav")
    _tone(Path(os.fsdecode(os.fsencode(rav) + b"/03-01-05-01-02-02-12\xff.wav")))
    cfg = make_config(datasets={"r": {"adapter": "ravdess", "root": str(rav), "extractors": ["egemaps"],
                                      "split": {"method": "random", "val": 0.0, "test": 0.0}}})
    listing = list_dataset(cfg, "r")
    assert len(listing.clips) == 1 and any("not valid UTF-8" in p.reason for p in listing.problems)
    write_listing(cfg, listing)


@pytest.mark.parametrize("swap", ["symlink out", "replaced", "same size, other content"])
def test_file_swapped_after_listing_is_refused_at_open(tmp_path, make_config, swap):
    root = tmp_path / "media"
    clip = _tone(root / "a.wav")
    secret = _tone(tmp_path / "outside" / "secret.wav", seconds=2.0, f=500)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,labels\na.wav,happy\n")
    cfg = _csv_cfg(make_config, root, manifest)
    write_listing(cfg, list_dataset(cfg, "d"))
    size0 = clip.stat().st_size
    clip.unlink()
    if swap == "symlink out":
        os.symlink(secret, clip)
    elif swap == "replaced":
        _tone(clip, seconds=1.5)
    else:   # same byte count: only the content check (sha256 via the hash cache) can tell
        _tone(clip, f=700)
        assert clip.stat().st_size == size0
    before = dict(media.DECODE_COUNTER)
    s = extract(cfg, ["d"], show_progress=False)
    assert media.DECODE_COUNTER == before, "the swapped file must not be decoded"
    (f,) = s.failures
    assert f["stage"] == "decode" and "a.wav: changed since listing" in f["error"]
    assert {"symlink out": "outside the dataset root", "replaced": "size differs",
            "same size, other content": "content (sha256) differs"}[swap] in f["error"]


def test_header_and_bound_mistakes_are_named(tmp_path, make_config):
    from pipeline.datasets import DatasetError

    root = tmp_path / "media"
    _tone(root / "ok.wav")
    dup = tmp_path / "dup.csv"
    dup.write_text("path,labels,labels,transcript\nok.wav,a,b,t\n")
    with pytest.raises(DatasetError, match=r"dup.csv:1: duplicated header column\(s\) \['labels'\]"):
        list_dataset(_csv_cfg(make_config, root, dup), "d")
    mapped = tmp_path / "mapped.csv"
    mapped.write_text("file,emotion,transcript\nok.wav,a,t\n")
    with pytest.raises(DatasetError, match=r"columns.labels -> 'label'"):
        list_dataset(_csv_cfg(make_config, root, mapped, columns={"path": "file", "labels": "label"}), "d")
    bounds = tmp_path / "bounds.csv"
    bounds.write_text("path,labels,transcript,start,end\n" + "".join(
        f"ok.wav,a,t,{s},{e}\n" for s, e in (("nan", ""), ("0", "inf"), ("-1", "0.5"), ("0", "0.5"))))
    listing = list_dataset(_csv_cfg(make_config, root, bounds), "d")
    assert len(listing.clips) == 1
    assert sum("must be a finite time >= 0 s" in p.reason for p in listing.problems) == 3


def test_a_label_holding_the_tables_separator_is_a_row_problem(tmp_path, make_config):
    # The clip table joins a clip's labels with '|': a label 'angry|loud' under another label_sep would come
    # back from the table as two labels (and crashed train). It is refused at listing, naming file:line.
    from heads.data import encode_labels

    root = tmp_path / "media"
    _tone(root / "ok.wav")
    _tone(root / "ok2.wav", f=440)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,labels,transcript\nok.wav,happy;sad,fine\nok2.wav,angry|loud;sad,odd label\n")
    cfg = _csv_cfg(make_config, root, manifest, label_sep=";", multilabel=True)
    listing = list_dataset(cfg, "d")
    assert [c.source for c in listing.clips] == [f"{manifest}:2"]
    (p,) = listing.problems
    assert p.source == f"{manifest}:3" and "['angry|loud']" in p.reason and "'|'" in p.reason
    table, _ = write_listing(cfg, listing)
    import pandas as pd

    df = pd.read_csv(table, dtype=str, keep_default_na=False)
    y = encode_labels(df["labels"], listing.labels, multilabel=True)
    assert listing.labels == ["happy", "sad"] and y.tolist() == [[1.0, 1.0]]
