"""How long the heads take to train, next to what extracting the same clips costs.

  MLP (SVCEmotion):       --mlp-clips clips of VGGish-shaped rows (T ~ 10 x 128), 28 labels multi-label,
                        --mlp-epochs epochs at the params.yaml defaults (batch 6, Adam, MultiStepLR, val each epoch).
  NeXtVLAD + SE (002):  --nv-clips clips x T=100 of swin 768 + vggish 128 + pose 99, 8 classes single-label,
                        --nv-epochs epochs at batch 16 (Peng et al.). With --nv-run-epochs smaller, that many
                        epochs are timed and the full run is extrapolated (said in the output).
Inputs are synthetic tensors (timing only; no accuracy is reported). One seed each.

Extraction time per clip: --extract-seconds-per-clip, or measured here by running the pipeline's VGGish
extractor (random init unless real weights are installed) on a few real RAVDESS clips from ../shared/data:
ffmpeg decode to 16 kHz + extract_batch, one batch of runtime.batch_clips clips after a warm-up batch.
The ratio printed is head-training time / (extraction time per clip x the same number of clips); the goal is
<= 1% for the MLP.

    .venv/bin/python benchmarks/heads_speed.py --threads 1
    .venv/bin/python benchmarks/heads_speed.py --thread-effect    # the thread plan vs torch's default
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def shared_data() -> Path:
    for p in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if p.exists():
            return p
    raise FileNotFoundError("../shared/data not found; pass --extract-seconds-per-clip")


def measure_vggish_extraction(n_clips: int, device: str) -> dict:
    """Seconds per clip for decode + VGGish extract_batch on real RAVDESS clips."""
    from emocache.config import Config
    from pipeline.extractors.base import ClipInput, build_extractor
    from pipeline.media import decode_audio

    paths = sorted((shared_data() / "ravdess_subset").glob("Actor_*/*.wav"))[: 2 * n_clips]
    if len(paths) < 2 * n_clips:
        raise FileNotFoundError(f"need {2 * n_clips} RAVDESS clips, found {len(paths)}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config.model_validate({"base_dir": str(REPO), "weights": {"dir": tmp, "allow_untrained": ["vggish"]},
                                     "runtime": {"device": device}})
        ext = build_extractor(cfg, "vggish")
        info = ext.load()
        sr = cfg.media.sample_rate

        def batch(ps):
            t0 = time.perf_counter()
            clips = [ClipInput(clip_id=p.stem, path=str(p), audio=decode_audio(p, sr), sample_rate=sr) for p in ps]
            t1 = time.perf_counter()
            out = ext.extract_batch(clips)
            t2 = time.perf_counter()
            seconds_audio = sum(len(c.audio) / sr for c in clips)
            return t1 - t0, t2 - t1, seconds_audio, sum(o.n_rows for o in out)

        batch(paths[:n_clips])                                   # warm-up (lazy init, allocator)
        decode_s, extract_s, audio_s, rows = batch(paths[n_clips:])
    return {"clips": n_clips, "decode_s_per_clip": decode_s / n_clips, "extract_s_per_clip": extract_s / n_clips,
            "total_s_per_clip": (decode_s + extract_s) / n_clips, "audio_s_per_clip": audio_s / n_clips,
            "rows_per_clip": rows / n_clips, "pretrained": info.pretrained, "device": device}


def measure_full_extraction(device: str) -> dict:
    """The SVCEmotion / Peng et al. pipeline on one real 10 s video (data/sample/videos/short_hamilton_clip.mp4): VGGish,
    eGeMAPS, person tracks, face crops, Swin (T=100) and BlazePose, through the real runner into a temp store.
    Per-clip cost = the extractors' own time (model loading and decoding excluded, so the ratio is conservative)."""
    import tempfile

    from emocache.config import Config
    from pipeline.extract import extract

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "m.csv").write_text("path\nshort_hamilton_clip.mp4\n")
        cfg = Config.model_validate({
            "base_dir": str(REPO), "store": {"dir": str(d / "cache"), "tables_dir": str(d / "tables")},
            "weights": {"allow_untrained": ["vggish", "swin"]}, "runtime": {"device": device},
            "datasets": {"bench": {"adapter": "csv", "root": str(REPO / "data/sample/videos"), "manifest": str(d / "m.csv"),
                                   "split": {"method": "random", "val": 0, "test": 0},
                                   "extractors": ["vggish", "egemaps", "tracks", "faces", "swin", "pose"]}},
            "extractors": {"video": {"detector": {"kind": "face"}, "frames_per_clip": 100}}})
        summary = extract(cfg, ["bench"], show_progress=False)
    per = {k: s.seconds for k, s in summary.stats.items()}
    return {"total_s_per_clip": sum(per.values()), "per_extractor_s": per,
            "pretrained": {k: s.pretrained for k, s in summary.stats.items()}}


def time_head(kind: str, n_clips: int, shapes: dict, n_classes: int, multilabel: bool, epochs: int,
              run_epochs: int, batch_size: int, device, min_rows: int) -> dict:
    import torch

    from emocache.config import ExperimentConfig
    from heads.synthetic import make_synthetic
    from heads.neural import fit_neural

    data = make_synthetic(n_clips, shapes, n_classes, multilabel, signal=0.3, min_rows=min_rows)
    # the paper recipe (SVCEmotion: Adam, lr/10 at 150 and 230 of 300 epochs); no early stop, no warm-up
    base = ExperimentConfig(dataset="bench", modalities=list(shapes), head=kind, train={"recipe": "svcemotion"})
    scale = run_epochs / epochs   # milestones keep their place in a shortened run
    paper = base.train.recipes["svcemotion"]
    exp = base.model_copy(update={"train": base.train.model_copy(update={
        "epochs": run_epochs, "batch_size": batch_size, "seeds": [0],
        "lr_milestones": [max(1, round(m * scale)) for m in paper.lr_milestones]})})
    t0 = time.perf_counter()
    fit = fit_neural(kind, exp, data, list(shapes), seed=0, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    n_train = len(data.splits["train"])
    steps = run_epochs * -(-n_train // batch_size)
    return {"head": kind, "clips": n_clips, "train_clips": n_train, "epochs_run": run_epochs,
            "epochs_target": epochs, "batch_size": batch_size, "seconds_run": seconds,
            "seconds_per_step": seconds / steps,
            "seconds_target": seconds * epochs / run_epochs, "extrapolated": run_epochs != epochs,
            "params": sum(p.numel() for p in fit.model.parameters())}


def thread_effect(clips: int, epochs: int, repeats: int, batch_size: int, device) -> dict:
    """MLP step time with the thread plan's setting (pipeline/threads.py: train stage) vs torch's default
    (one thread per core), interleaved; medians."""
    import statistics

    import torch

    from pipeline.threads import available_cpus, plan_threads

    settings = {"plan": plan_threads(0, "train").torch, "torch default": available_cpus()}
    per_step: dict[str, list[float]] = {k: [] for k in settings}
    for r in range(repeats):
        for name in (list(settings) if r % 2 == 0 else list(settings)[::-1]):
            torch.set_num_threads(settings[name])
            res = time_head("mlp", clips, {"vggish": (12, 128)}, 28, True, epochs, epochs, batch_size, device, min_rows=8)
            per_step[name].append(res["seconds_per_step"])
    med = {k: statistics.median(v) for k, v in per_step.items()}
    return {"threads": settings, "median_s_per_step": med, "runs_s_per_step": per_step,
            "ratio_default_over_plan": med["torch default"] / med["plan"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extract-seconds-per-clip", type=float, default=None)
    ap.add_argument("--extract", choices=["vggish", "full"], default="full",
                    help="what 'extracting a clip' means: VGGish alone on RAVDESS clips, or the full audio+video "
                         "pipeline (VGGish, eGeMAPS, tracks, faces, Swin, pose) on one real 10 s video")
    ap.add_argument("--extract-clips", type=int, default=8, help="RAVDESS clips per timed extraction batch")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--mlp-clips", type=int, default=1200)
    ap.add_argument("--mlp-epochs", type=int, default=300)
    ap.add_argument("--mlp-batch", type=int, default=None, help="default: the svcemotion recipe batch (6, SVCEmotion)")
    ap.add_argument("--nv-clips", type=int, default=1100)
    ap.add_argument("--nv-epochs", type=int, default=100)
    ap.add_argument("--nv-run-epochs", type=int, default=None, help="epochs actually timed (default: all)")
    ap.add_argument("--nv-batch", type=int, default=16)
    ap.add_argument("--nv-frames", type=int, default=100)
    ap.add_argument("--skip-nv", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--thread-effect", action="store_true",
                    help="only compare MLP step time at the thread plan's setting vs torch's default, then exit")
    ap.add_argument("--thread-clips", type=int, default=300)
    ap.add_argument("--thread-epochs", type=int, default=5)
    ap.add_argument("--thread-repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from emocache.config import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    out: dict = {"device": str(device), "torch_threads": torch.get_num_threads()}
    if args.thread_effect:
        eff = thread_effect(args.thread_clips, args.thread_epochs, args.thread_repeats,
                            args.mlp_batch or TrainConfig().batch_size, device)
        m = eff["median_s_per_step"]
        print(f"MLP step, {args.thread_clips} clips x {args.thread_epochs} epochs, {args.thread_repeats} interleaved runs: "
              f"thread plan ({eff['threads']['plan']} thread) {m['plan'] * 1e3:.2f} ms, torch default "
              f"({eff['threads']['torch default']} threads) {m['torch default'] * 1e3:.2f} ms")
        print(f"speed ratio thread plan / torch default: {eff['ratio_default_over_plan']:.2f}x")
        print(json.dumps({"bench": "heads_threads", **eff}))
        return

    if args.extract_seconds_per_clip is not None:
        extract = {"total_s_per_clip": args.extract_seconds_per_clip, "source": "--extract-seconds-per-clip"}
    elif args.extract == "full":
        extract = measure_full_extraction(str(device.type))
        extract["source"] = ("measured: full pipeline on data/sample/videos/short_hamilton_clip.mp4 "
                             f"({', '.join(f'{k} {v:.2f} s' for k, v in extract['per_extractor_s'].items())})")
    else:
        try:
            extract = measure_vggish_extraction(args.extract_clips, str(device.type))
            extract["source"] = "measured: RAVDESS decode + VGGish extract_batch"
        except (ImportError, KeyError, FileNotFoundError) as e:
            sys.exit(f"cannot measure VGGish extraction ({e}); pass --extract-seconds-per-clip")
    out["extraction"] = extract
    per_clip = extract["total_s_per_clip"]
    print(f"extraction: {per_clip:.4f} s/clip ({extract['source']})")
    if "extract_s_per_clip" in extract:
        print(f"  decode {extract['decode_s_per_clip']:.4f} + VGGish {extract['extract_s_per_clip']:.4f} s/clip; "
              f"{extract['audio_s_per_clip']:.2f} s audio, {extract['rows_per_clip']:.1f} rows per clip; "
              f"pretrained={extract['pretrained']}")

    mlp_batch = args.mlp_batch or TrainConfig().recipes["svcemotion"].batch_size
    mlp = time_head("mlp", args.mlp_clips, {"vggish": (12, 128)}, 28, True, args.mlp_epochs, args.mlp_epochs,
                    mlp_batch, device, min_rows=8)
    mlp["ratio_to_extraction"] = mlp["seconds_target"] / (per_clip * args.mlp_clips)
    # VGGish-shaped rows are ~10 s of audio; RAVDESS clips are shorter, so also scale extraction by audio length
    if "audio_s_per_clip" in extract:
        scaled = per_clip * 10 * 0.96 / extract["audio_s_per_clip"]
        mlp["ratio_to_extraction_10s_clips"] = mlp["seconds_target"] / (scaled * args.mlp_clips)
    out["mlp"] = mlp
    print(f"MLP: {args.mlp_clips} clips, {args.mlp_epochs} epochs, batch {mlp_batch}: {mlp['seconds_run']:.1f} s "
          f"({mlp['seconds_per_step'] * 1e6:.0f} us/step); ratio to extraction {mlp['ratio_to_extraction']:.2%}"
          + (f" ({mlp['ratio_to_extraction_10s_clips']:.2%} against ~10 s clips)" if "audio_s_per_clip" in extract else ""))

    if not args.skip_nv:
        t = args.nv_frames
        nv = time_head("nextvlad", args.nv_clips, {"swin": (t, 768), "vggish": (t, 128), "pose": (t, 99)}, 8, False,
                       args.nv_epochs, args.nv_run_epochs or args.nv_epochs, args.nv_batch, device, min_rows=t)
        nv["ratio_to_extraction"] = nv["seconds_target"] / (per_clip * args.nv_clips)
        out["nextvlad"] = nv
        how = f"extrapolated from {nv['epochs_run']} epoch(s)" if nv["extrapolated"] else "measured"
        print(f"NeXtVLAD+SE: {args.nv_clips} clips x T={t}, {args.nv_epochs} epochs, batch {args.nv_batch}: "
              f"{nv['seconds_target']:.1f} s ({how}; {nv['seconds_per_step'] * 1e3:.1f} ms/step); "
              f"ratio to extraction {nv['ratio_to_extraction']:.2%}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
