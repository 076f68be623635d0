"""`emocache predict VIDEO --head RUN`: emotion scores for one new video, per speech segment and for the whole video.

The real-world MER system paper's design: voice-activity detection cuts the audio into utterances, the model scores each one, and the
video-level emotions are the average of the utterance scores (here weighted by duration), read against
per-emotion thresholds. Features come from the normal extractors through the runner's Worker, so they land in
the normal stores under content-hash clip ids: predicting the same video twice (or a video some dataset already
lists) extracts nothing the second time.

What gets scored:
  audio-only heads (vggish, egemaps, ...)  every VAD segment (its own clip with start/end bounds) + the whole clip
  heads with a text modality               the whole clip only, and only with --transcript (no speech-to-text here)
  heads with a video modality              the whole clip only (tracking a person per segment costs too much)
"""
from __future__ import annotations

import csv
import json
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from emocache.config import Config
from pipeline.errors import InputError

PREDICT_DATASET = "predict"   # the dataset name failure rows carry for clips extracted by `predict`


class PredictError(InputError, RuntimeError):
    """A prediction that cannot be made; the message says why and what to do."""


@dataclass
class Segment:
    start: float
    end: float
    vad_start: float          # the bounds VAD found (start/end may be widened to min_segment_s)
    vad_end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


# ---------------------------------------------------------------- the head
def resolve_head(cfg: Config, head: str, models_dir: str = "models") -> tuple[Path, str]:
    """(checkpoint path, run name). `head` is an experiment name (models/<name>/model.pt), a run folder or a .pt."""
    p = Path(head)
    candidates = [cfg.path(models_dir) / head / "model.pt", p / "model.pt", p]
    for c in candidates:
        if c.is_file():
            return c, (c.parent.name if c.name == "model.pt" else c.stem)
    trained = sorted(d.name for d in cfg.path(models_dir).glob("*") if (d / "model.pt").is_file()) \
        if cfg.path(models_dir).is_dir() else []
    raise PredictError(f"no checkpoint for --head {head!r}; looked at {', '.join(str(c) for c in candidates)}. "
                       f"Trained runs in {cfg.path(models_dir)}: {', '.join(trained) or '(none; run `emocache train`)'}")


TEXT_FAMILIES = ("text", "text_states")   # stores read from the transcript (text_states: finetune_top's tokens)


def _families(cfg: Config, keys: list[str]) -> dict[str, str]:
    from pipeline.extractors.base import build_extractor

    return {k: build_extractor(cfg, k).family for k in keys}


def _with_dependencies(cfg: Config, keys: list[str]) -> list[str]:
    """The keys plus every store key they consume (e.g. faces needs tracks), dependencies first."""
    from pipeline.extractors.base import build_extractor

    out: list[str] = []

    def add(k: str) -> None:
        if k in out:
            return
        for d in build_extractor(cfg, k).depends_on:
            add(d)
        out.append(k)

    for k in keys:
        add(k)
    return out


# ---------------------------------------------------------------- segmentation
def speech_segments(cfg: Config, audio: np.ndarray, duration: float) -> list[Segment]:
    """Silero VAD speech segments (seconds), each widened to at least predict.min_segment_s inside the video."""
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    v = cfg.predict.vad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # silero loads a TorchScript file: torch warns that jit.load is deprecated
        model = load_silero_vad()
    sr = cfg.media.sample_rate
    stamps = get_speech_timestamps(torch.from_numpy(audio), model, threshold=v.threshold, sampling_rate=sr,
                                   min_speech_duration_ms=v.min_speech_ms, min_silence_duration_ms=v.min_silence_ms,
                                   speech_pad_ms=v.speech_pad_ms, max_speech_duration_s=v.max_segment_s)
    out = []
    min_len = cfg.predict.min_segment_s
    for s in stamps:
        a, b = s["start"] / sr, min(s["end"] / sr, duration)
        start, end = a, b
        if end - start < min_len:   # widen around the centre, shifted to stay inside the video
            mid = (a + b) / 2
            start = min(max(0.0, mid - min_len / 2), max(0.0, duration - min_len))
            end = min(duration, start + min_len)
        if end - start <= 0:
            continue
        # clip ids hash the bounds at ms precision: round so the id and the extracted span agree
        out.append(Segment(round(start, 3), round(end, 3), round(a, 3), round(b, 3)))
    return out


# ---------------------------------------------------------------- extraction through the runner
def _extract(cfg: Config, specs: list[str], records: list) -> tuple[dict[str, str], dict, list[dict]]:
    """Run the Worker on the records (only what the stores lack). Returns (fingerprints, cache counts, failures)."""
    from pipeline.extract import plan
    from pipeline.worker import Worker

    worker = Worker(cfg, specs, run_id="predict-" + uuid.uuid4().hex[:8])
    with worker.view.locked(f"{worker.writer} run {worker.run_id}"):   # an `extract` on the store finishes first
        worker.view.prepare(gc=False)
        todo, skipped = plan(worker.view, records)
        computed = {k: sum(k in r.missing for r in todo) for k in worker.order}
        worker.run(todo, show_progress=len(todo) > 1)
    pretrained = {k: (e.weights.pretrained if e.weights else None) for k, e in worker.extractors.items()}
    return worker.fp, {"computed": computed, "cached": skipped, "pretrained": pretrained}, worker.failures


def _read_inputs(cfg: Config, keys: list[str], fp: dict[str, str], ids: dict[str, list[str]], max_frames: int,
                 input_dims: dict[str, int]):
    """Inputs for the head: key -> (x (N, T, D), lengths (N,)), read from the stores like training reads them."""
    import torch

    from pipeline.catalog import open_catalog

    cache = open_catalog(cfg.store, Path(cfg.base_dir))
    out = {}
    for k in keys:
        p = cache.read([k], ids[k], max_rows=max_frames, fingerprints=fp, dims=input_dims, missing_ok=False)[k]
        dim = input_dims[k]
        if p.x.shape[-1] != dim:
            raise PredictError(f"{k} features are {p.x.shape[-1]}-d but the head was trained on {dim}-d ones: "
                               f"were the extractor's params changed since training?")
        out[k] = (torch.from_numpy(p.x), torch.from_numpy(p.lengths))
    return out


# ---------------------------------------------------------------- the whole command
def predict_video(cfg: Config, video: str | Path, head: str, transcript: Optional[str] = None,
                  models_dir: str = "models") -> dict:
    """Scores for one video as a JSON-ready dict (see module doc)."""
    from heads.checkpoint import load_checkpoint
    from pipeline import media
    from pipeline.datasets.base import HASH_CACHE, HashCache, clip_id_for
    from pipeline.worker import ClipRecord

    t0 = time.perf_counter()
    video = Path(video).resolve()
    ckpt_path, run = resolve_head(cfg, head, models_dir)
    th = load_checkpoint(ckpt_path)
    keys = list(th.doc["modalities"])
    fams = _families(cfg, keys)
    text_keys = [k for k in keys if fams[k] in TEXT_FAMILIES]
    media_keys = [k for k in keys if fams[k] not in TEXT_FAMILIES]
    if text_keys and not transcript:
        raise PredictError(f"head {run!r} reads text ({', '.join(text_keys)}): pass --transcript \"...\" "
                           f"(this tool has no speech-to-text)")
    try:
        info = media.probe(video)
    except media.MediaError as e:
        raise PredictError(f"cannot read {video}: {e}") from None
    if info.duration is None:
        raise PredictError(f"{video}: unknown duration")
    per_segment = bool(media_keys) and all(fams[k] == "audio" for k in keys)

    sha = HashCache(cfg.path(HASH_CACHE))
    media_sha = sha.sha256(video)
    sha.save()
    whole_id = clip_id_for(media_sha, 0.0, None, {})

    segments: list[Segment] = []
    vad_note = None
    if info.has_audio:
        try:
            audio = media.decode_audio(video, cfg.media.sample_rate, timeout=cfg.media.ffmpeg_timeout_s,
                                       resampler=cfg.media.resampler)
            segments = speech_segments(cfg, audio, min(info.duration, len(audio) / cfg.media.sample_rate))
        except media.MediaError as e:
            vad_note = f"audio not decodable: {e}"
    else:
        vad_note = "no audio stream: no speech segments"
    if not per_segment and segments:
        vad_note = ("segments are not scored: the head reads "
                    + ", ".join(f"{k} ({fams[k]})" for k in keys if fams[k] != "audio")
                    + "; only the whole clip is")

    # one-clip records into the normal stores; a text-only record keyed by the transcript's own hash
    records = []
    media_specs = _with_dependencies(cfg, media_keys)
    if media_keys:
        records.append(ClipRecord(whole_id, PREDICT_DATASET, str(video), 0.0, None, {}, {},
                                  dataset_specs=media_specs))
        if per_segment:
            for s in segments:
                records.append(ClipRecord(clip_id_for(media_sha, s.start, s.end, {}), PREDICT_DATASET, str(video),
                                          s.start, s.end, {}, {}, dataset_specs=media_specs))
    text = {k.partition(".")[2] or cfg.extractors.text.fields[0]: transcript for k in text_keys}
    text_id = clip_id_for(None, 0.0, None, text) if text_keys else None
    if text_keys:
        records.append(ClipRecord(text_id, PREDICT_DATASET, None, 0.0, None, text, {}, dataset_specs=text_keys))
    specs = _with_dependencies(cfg, keys)
    fp, cache, failures = _extract(cfg, specs, records)
    whole_fail = [f for f in failures if f["clip_id"] in (whole_id, text_id)]
    if whole_fail:
        f = whole_fail[0]
        raise PredictError(f"{f['extractor']} failed on {f['path'] or 'the transcript'} ({f['stage']}): {f['error']}")
    failed_segments = {f["clip_id"]: f"{f['extractor']} ({f['stage']}): {f['error']}" for f in failures}

    # rows to score: the whole clip, then each segment that extracted cleanly
    row_ids = [{k: (text_id if fams[k] in TEXT_FAMILIES else whole_id) for k in keys}]
    seg_ids = [clip_id_for(media_sha, s.start, s.end, {}) for s in segments] if per_segment else []
    scored = [i for i, cid in enumerate(seg_ids) if cid not in failed_segments]
    row_ids += [{k: seg_ids[i] for k in keys} for i in scored]
    inputs = _read_inputs(cfg, keys, fp, {k: [r[k] for r in row_ids] for k in keys}, th.exp.max_frames,
                          th.doc["input_dims"])
    has_rows = np.stack([inputs[k][1].numpy() > 0 for k in keys]).any(0)
    probs = th.predict_proba(inputs)
    probs = np.asarray(probs, dtype=np.float64)

    vocab, thr = th.vocab, np.asarray(th.thresholds, dtype=np.float64)
    ml = bool(th.doc["multilabel"])

    def scores(p: np.ndarray) -> dict:
        return {"scores": {c: round(float(v), 6) for c, v in zip(vocab, p)},
                "above_threshold": [c for c, v, t in zip(vocab, p, thr) if v >= t],
                "top": vocab[int(np.argmax(p))]}

    seg_out = []
    for i, s in enumerate(segments):
        row = {"index": i, "start": s.start, "end": s.end, "duration": round(s.duration, 3),
               "vad_start": s.vad_start, "vad_end": s.vad_end}
        if per_segment and i in scored:
            r = 1 + scored.index(i)
            if has_rows[r]:
                row.update(scores(probs[r]))
            else:
                row["note"] = "no feature rows for this segment (too short for the extractor)"
        elif per_segment:
            row["note"] = "extraction failed: " + failed_segments[seg_ids[i]]
        seg_out.append(row)
    scored_rows = [(s, probs[1 + scored.index(i)]) for i, s in enumerate(segments)
                   if per_segment and i in scored and has_rows[1 + scored.index(i)]]
    video_level: dict = {}
    if has_rows[0]:
        video_level["whole_clip"] = scores(probs[0])
    else:
        video_level["whole_clip"] = {"note": "no feature rows for the whole clip"}
    if scored_rows:
        w = np.asarray([s.duration for s, _ in scored_rows])
        mean = (np.stack([p for _, p in scored_rows]) * w[:, None]).sum(0) / w.sum()
        video_level["segment_weighted_mean"] = {**scores(mean), "n_segments": len(scored_rows),
                                                "speech_seconds": round(float(w.sum()), 3)}
    pre = {k: cache["pretrained"].get(k) for k in keys}
    return {
        "video": str(video), "clip_id": whole_id, "text_clip_id": text_id, "duration_s": round(float(info.duration), 3),
        "has_audio": info.has_audio, "has_video": info.has_video,
        "head": {"run": run, "checkpoint": str(ckpt_path), "kind": th.doc["head"], "dataset": th.exp.dataset,
                 "modalities": keys, "multilabel": ml, "classes": vocab,
                 "thresholds": {c: round(float(t), 6) for c, t in zip(vocab, thr)},
                 "thresholds_source": "checkpoint (tuned on val)" if th.doc.get("thresholds") is not None
                 else f"default train.threshold {th.exp.train.threshold}"},
        "pretrained": pre, "all_pretrained": all(v is True for v in pre.values()),
        "transcript": transcript, "segments_scored": per_segment, "vad_note": vad_note,
        "vad": cfg.predict.vad.model_dump(), "min_segment_s": cfg.predict.min_segment_s,
        "segments": seg_out, "video_level": video_level,
        "extraction": {"computed": cache["computed"], "cached": cache["cached"], "fingerprints": fp,
                       "failures": failures},
        "seconds": round(time.perf_counter() - t0, 3),
    }


# ---------------------------------------------------------------- output files
def write_outputs(result: dict, out_dir: Path) -> tuple[Path, Path]:
    """<video>_<run>.json (everything) and .csv (one row per segment + the video-level rows + thresholds)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(result['video']).stem}_{result['head']['run']}"
    jpath, cpath = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
    jpath.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    classes = result["head"]["classes"]
    with open(cpath, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["scope", "start", "end", *classes, "above_threshold", "note"])
        w.writerow(["threshold", "", "", *[result["head"]["thresholds"][c] for c in classes], "", ""])
        for s in result["segments"]:
            sc = s.get("scores", {})
            w.writerow([f"segment {s['index']}", s["start"], s["end"], *[sc.get(c, "") for c in classes],
                        "|".join(s.get("above_threshold", [])), s.get("note", "")])
        for scope, v in result["video_level"].items():
            sc = v.get("scores", {})
            w.writerow([scope, 0.0 if scope == "whole_clip" else "", result["duration_s"] if scope == "whole_clip" else "",
                        *[sc.get(c, "") for c in classes], "|".join(v.get("above_threshold", [])), v.get("note", "")])
    return jpath, cpath


def summary_lines(result: dict) -> list[str]:
    """What the terminal shows: the top emotions per segment and for the video."""
    head = result["head"]
    lines = [f"{result['video']}: {result['duration_s']:.1f} s, head {head['run']} ({head['kind']} on "
             f"{'+'.join(head['modalities'])}), thresholds: {head['thresholds_source']}"]
    if not result["all_pretrained"]:
        lines.append("  note: features from untrained extractors (pretrained: false): "
                     + ", ".join(k for k, v in result["pretrained"].items() if v is not True))
    if result["vad_note"]:
        lines.append(f"  {result['vad_note']}")

    def top(v: dict) -> str:
        if "scores" not in v:
            return v.get("note", "(not scored)")
        best = sorted(v["scores"].items(), key=lambda kv: -kv[1])[:3]
        return "  ".join(f"{c} {p:.2f}" for c, p in best) + (
            f"   above threshold: {', '.join(v['above_threshold']) or '-'}")

    for s in result["segments"]:
        lines.append(f"  {s['start']:7.2f}-{s['end']:7.2f} s  {top(s)}")
    for scope, v in result["video_level"].items():
        lines.append(f"  {scope:<22}{top(v)}")
    ex = result["extraction"]
    lines.append("  extraction: " + ", ".join(f"{k} computed {ex['computed'].get(k, 0)} cached {ex['cached'].get(k, 0)}"
                                              for k in ex["fingerprints"]) + f"; {result['seconds']:.1f} s")
    return lines
