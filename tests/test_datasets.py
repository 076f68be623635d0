"""Dataset adapters on the real sample data: ids, labels, splits, problems."""
import shutil

import pytest

from pipeline.datasets import list_dataset, read_clip_table, write_listing
from pipeline.datasets.adapters import parse_ravdess_name


def test_ravdess_names_parse():
    m = parse_ravdess_name("03-01-05-01-02-01-12")
    assert m == {"modality": "03", "vocal_channel": "01", "emotion": "angry", "intensity": "normal",
                 "statement": "Dogs are sitting by the door", "repetition": 1, "actor": 12}
    with pytest.raises(ValueError, match="not a RAVDESS file name"):
        parse_ravdess_name("hello")


def test_ravdess_actor_disjoint_split_and_stable_ids(make_config, shared_data):
    cfg = make_config(datasets={"rav": {"adapter": "ravdess", "root": str(shared_data / "ravdess_subset"),
                                        "split": {"method": "group", "val": 0.0, "test": 0.5, "seed": 0}}})
    a = list_dataset(cfg, "rav")
    assert len(a.clips) == 120 and not a.problems
    assert a.labels == ["angry", "calm", "disgust", "fearful", "happy", "neutral", "sad", "surprised"]
    groups = {s: {c.group for c in a.clips if c.split == s} for s in ("train", "test")}
    assert groups["train"] and groups["test"] and not groups["train"] & groups["test"]
    b = list_dataset(cfg, "rav")
    assert [c.clip_id for c in a.clips] == [c.clip_id for c in b.clips]
    assert [c.split for c in a.clips] == [c.split for c in b.clips]
    assert len({c.clip_id for c in a.clips}) == 120


def test_ravdess_group_by_annotation_repetition_disjoint(make_config, shared_data):
    """split.group_by names a clip annotation: by repetition, each split holds one take of every
    (actor, emotion, intensity, statement) and both actors; by actor it matches the adapter's actor groups."""
    def listing(group_by):
        cfg = make_config(datasets={"rav": {"adapter": "ravdess", "root": str(shared_data / "ravdess_subset"),
                                            "split": {"method": "group", "group_by": group_by, "val": 0.0,
                                                      "test": 0.5, "seed": 0}}})
        return list_dataset(cfg, "rav")

    rep = listing("repetition")
    by_split = {s: [c for c in rep.clips if c.split == s] for s in ("train", "test")}
    assert len(by_split["train"]) == len(by_split["test"]) == 60
    for s, clips in by_split.items():
        assert len({c.annotation["repetition"] for c in clips}) == 1        # one repetition per split
        assert {c.annotation["actor"] for c in clips} == {1, 2}             # both speakers in each split
    take = lambda c: (c.annotation["actor"], c.labels[0], c.annotation["intensity"], c.text["transcript"])
    assert sorted(map(take, by_split["train"])) == sorted(map(take, by_split["test"]))
    actor = listing("actor")
    for s in ("train", "test"):
        assert len({c.group for c in actor.clips if c.split == s}) == 1
    assert [c.split for c in actor.clips] == [c.split for c in listing(None).clips]
    with pytest.raises(ValueError, match="group_by is 'take'.*has: actor, intensity, repetition"):
        listing("take")


def test_ravdess_group_by_statement_and_repetition_cells(make_config, shared_data):
    """group_by as a list keeps the cells of the keys' combination together: (statement, repetition) gives four
    cells of 30 clips; val 0.25 / test 0.25 put one cell in each, so val and test relate to train alike (each
    holds every (actor, emotion, intensity) once per statement it covers)."""
    cfg = make_config(datasets={"rav": {"adapter": "ravdess", "root": str(shared_data / "ravdess_subset"),
                                        "split": {"method": "group", "group_by": ["statement", "repetition"],
                                                  "val": 0.25, "test": 0.25, "seed": 0}}})
    clips = list_dataset(cfg, "rav").clips
    cells = {s: {(c.annotation["statement"], c.annotation["repetition"]) for c in clips if c.split == s}
             for s in ("train", "val", "test")}
    assert [len(cells[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    assert set().union(*cells.values()) == {(st, r) for st in ("Kids are talking by the door",
                                                               "Dogs are sitting by the door") for r in (1, 2)}
    assert sorted(sum(c.split == s for c in clips) for s in ("train", "val", "test")) == [30, 30, 60]
    with pytest.raises(ValueError, match=r"group_by is \['statement', 'take'\].*no annotation 'take'"):
        list_dataset(make_config(datasets={"rav": {"adapter": "ravdess", "root": str(shared_data / "ravdess_subset"),
                                                   "split": {"method": "group", "group_by": ["statement", "take"]}}}),
                     "rav")


def test_renamed_file_keeps_its_id_and_same_clip_in_two_datasets(make_config, shared_data, tmp_path):
    src = shared_data / "ravdess_subset" / "Actor_01" / "03-01-05-01-01-01-01.wav"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(src, tmp_path / "a" / "clip.wav")
    shutil.copy(src, tmp_path / "b" / "renamed.wav")
    (tmp_path / "a.csv").write_text("path,labels\nclip.wav,angry\n")
    (tmp_path / "b.csv").write_text("file\temo\nrenamed.wav\tangry\n")
    cfg = make_config(datasets={
        "a": {"adapter": "csv", "root": str(tmp_path / "a"), "manifest": str(tmp_path / "a.csv")},
        "b": {"adapter": "csv", "root": str(tmp_path / "b"), "manifest": str(tmp_path / "b.tsv"),
              "columns": {"path": "file", "labels": "emo"}}})
    (tmp_path / "b.tsv").write_text((tmp_path / "b.csv").read_text())
    ida = list_dataset(cfg, "a").clips[0].clip_id
    idb = list_dataset(cfg, "b").clips[0].clip_id
    assert ida == idb


def test_csv_multilabel_segments_text_and_problems(make_config, shared_data, tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    shutil.copy(shared_data / "face_recognition" / "short_hamilton_clip.mp4", root / "ham ilton é.mp4")
    (tmp_path / "m.csv").write_text(
        "video,t0,t1,emotions,film,fact,situ\n"
        "ham ilton é.mp4,0,4,joy|pride,f1,He sings.,On stage.\n"
        "ham ilton é.mp4,4,8,joy,f1,He sings.,On stage.\n"
        "ham ilton é.mp4,4,8,joy,f1,He sings.,On stage.\n"        # listed twice
        "../../etc/passwd,0,1,joy,f2,x,y\n"                       # outside the root
        "missing.mp4,0,1,,f3,x,y\n"
        "ham ilton é.mp4,5,2,joy,f1,x,y\n", encoding="utf-8")     # end before start
    cfg = make_config(datasets={"svc": {
        "adapter": "csv", "root": str(root), "manifest": str(tmp_path / "m.csv"), "label_sep": "|",
        "columns": {"path": "video", "start": "t0", "end": "t1", "labels": "emotions", "group": "film"},
        "text_fields": {"factual": "fact", "situational": "situ"},
        "split": {"method": "group", "val": 0.0, "test": 0.5}}})
    ls = list_dataset(cfg, "svc")
    assert ls.multilabel and ls.labels == ["joy", "pride"]
    assert [c.labels for c in ls.clips] == [["joy", "pride"], ["joy"]]
    assert ls.clips[0].clip_id != ls.clips[1].clip_id          # segment bounds enter the id
    assert ls.clips[0].text == {"factual": "He sings.", "situational": "On stage."}
    reasons = " ".join(p.reason for p in ls.problems)
    assert len(ls.problems) == 4
    assert "duplicate" in reasons and "outside the dataset root" in reasons
    assert "not found" in reasons and "not after start" in reasons
    table, summary = write_listing(cfg, ls)
    df, doc = read_clip_table(cfg, "svc")
    assert list(df["clip_id"]) == [c.clip_id for c in ls.clips] and doc["n_problems"] == 4
    assert df["end"].tolist() == [4.0, 8.0]


def test_meld_own_split_dialogue_groups(make_config, shared_data):
    cfg = make_config(datasets={"meld": {"adapter": "meld", "root": str(shared_data / "meld"),
                                         "split": {"method": "own"}}})
    ls = list_dataset(cfg, "meld")
    n = ls.summary()["n_per_split"]
    assert n == {"train": 9989, "val": 1109, "test": 2610}          # MELD's published sizes
    assert ls.labels == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    assert all(c.path is None and c.text["transcript"] is not None for c in ls.clips)
    assert {c.group.split("-")[0] for c in ls.clips if c.split == "val"} == {"dev"}


def test_folder_adapter_and_non_utf8_manifest(make_config, shared_data, tmp_path):
    for cls, f in [("joy", "pyfeat/single_face.mp4"), ("sad", "face_recognition/short_hamilton_clip.mp4")]:
        (tmp_path / "ve8" / cls).mkdir(parents=True)
        shutil.copy(shared_data / f, tmp_path / "ve8" / cls)
    cfg = make_config(datasets={"ve8": {"adapter": "folder", "root": str(tmp_path / "ve8"),
                                        "split": {"method": "random", "val": 0, "test": 0.5}},
                                "bad": {"adapter": "csv", "root": str(tmp_path), "manifest": str(tmp_path / "bad.csv")}})
    ls = list_dataset(cfg, "ve8")
    assert sorted(c.labels[0] for c in ls.clips) == ["joy", "sad"]
    (tmp_path / "bad.csv").write_bytes(b"path,labels\nx.mp4,caf\xe9\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: not valid UTF-8"):
        list_dataset(cfg, "bad")


def test_unknown_dataset_lists_known(make_config):
    cfg = make_config(datasets={"one": {"adapter": "folder", "root": "data"}})
    from pipeline.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="known datasets: one"):
        cfg.dataset("two")
