"""The HTML report escapes every user string: file names, run/experiment names, classes, notes, problems.
Hostile strings also carry '$' (matplotlib mathtext) so plot titles and tick labels must take them as text."""
from __future__ import annotations

import re

from emocache.config import Config
from emocache.report import Figures, experiment_section, prediction_section, table

EVIL = "<img src=x onerror=alert(1)>$\\frac{'\"&"


def _assert_clean(html: str) -> None:
    assert "<img src=x" not in html and "onerror=alert(1)>" not in html
    # every <img> left is one of ours: an inline PNG plot
    assert all(t.startswith('<img class="plot"') for t in re.findall(r"<img[^>]*>", html))
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_prediction_section_escapes_every_field(tmp_path):
    classes = [f"{EVIL}a", f"{EVIL}b"]
    seg = {"index": 0, "start": 0.0, "end": 1.0, "scores": {classes[0]: 0.7, classes[1]: 0.3}, "top": classes[0],
           "above_threshold": [classes[0]], "note": EVIL}
    doc = {"video": f"/data/{EVIL}.wav", "duration_s": 2.0, "vad_note": EVIL, "all_pretrained": False,
           "head": {"run": EVIL, "kind": EVIL, "modalities": [EVIL], "classes": classes,
                    "thresholds": {c: 0.5 for c in classes}, "thresholds_source": EVIL},
           "segments": [seg, {"index": 1, "start": 1.0, "end": 2.0, "note": EVIL}],
           "video_level": {"whole_clip": {"scores": seg["scores"], "top": classes[1], "above_threshold": [],
                                          "note": EVIL}}}
    _assert_clean(prediction_section(doc, Figures(Config())))


def test_experiment_section_and_tables_escape(tmp_path):
    doc = {"head": EVIL, "modalities": [EVIL], "dataset": EVIL, "eval_split": EVIL, "seeds": [EVIL],
           "all_pretrained": False, "pretrained": {EVIL: False}, "metrics": {EVIL: {"mean": 0.5, "std": 0.1}},
           "classes": [EVIL], "per_class_ap": {EVIL: {"mean": 0.5, "std": 0.0}}}
    _assert_clean(experiment_section(Config(), EVIL, doc, tmp_path, Figures(Config())))
    _assert_clean(table([EVIL], [[EVIL]]))
