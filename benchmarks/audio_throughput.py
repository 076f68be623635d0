"""VGGish throughput: emocache's batched path vs a per-file reference pipeline in the style of torchvggish.

emocache:  decode each clip once (ffmpeg, 16 kHz mono) -> torch log-mel front end for a batch of clips ->
           one network pass over all their examples (chunks of batch_examples) -> split back per clip.
reference: per file: decode (same ffmpeg call, so inputs are identical) -> NumPy front end written here from
           the published algorithm (mel_features.py style: framing, periodic Hann, |rfft|, HTK mel matrix,
           log(mel + 0.01), 96-frame examples) -> one forward pass per file, as torchvggish's forward(file).
Both use the same weights: the real checkpoint when present, else one seeded random init (said in the output).
Outputs must agree within --atol; the script prints times, clips/s and the speed ratio.

    .venv/bin/python benchmarks/audio_throughput.py --clips 48 --threads 1
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------- reference (torchvggish style, NumPy front end)
def reference_examples(x: np.ndarray, sr: int = 16000) -> np.ndarray:
    win, hop, nfft, n_mels, lo_hz, hi_hz, offset, ex_frames = 400, 160, 512, 64, 125.0, 7500.0, 0.01, 96
    n = 1 + (len(x) - win) // hop
    if n < ex_frames:
        return np.zeros((0, ex_frames, n_mels))
    frames = np.lib.stride_tricks.as_strided(x.astype(np.float64), shape=(n, win),
                                             strides=(hop * 8, 8))
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    spec = np.abs(np.fft.rfft(frames * hann, nfft))

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    bins = mel(np.linspace(0, sr / 2, nfft // 2 + 1))
    edges = np.linspace(mel(lo_hz), mel(hi_hz), n_mels + 2)
    weights = np.empty((nfft // 2 + 1, n_mels))
    for i in range(n_mels):
        lo, c, hi = edges[i:i + 3]
        weights[:, i] = np.maximum(0.0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    weights[0, :] = 0.0
    log_mel = np.log(spec @ weights + offset)
    n_ex = 1 + (len(log_mel) - ex_frames) // ex_frames
    return np.stack([log_mel[i * ex_frames:(i + 1) * ex_frames] for i in range(n_ex)])


def reference_forward(model, audio, sr):
    import torch

    x = torch.from_numpy(reference_examples(audio, sr)).float().to(next(model.parameters()).device)
    with torch.no_grad():
        return model(x).float().cpu().numpy()      # one file per forward pass


def run_reference(model, paths, sr, decoded=None):
    """Per file: decode (unless `decoded` given) -> NumPy front end -> forward."""
    from pipeline.media import decode_audio

    return [reference_forward(model, decoded[i] if decoded else decode_audio(p, sr), sr) for i, p in enumerate(paths)]


def run_emocache(extractor, paths, sr, batch_clips, decoded=None, decode_workers=2):
    """As the runner: batches of clips, the next batch decoding (runner.prefetch_batches) while the
    network runs on the current one; one extract_batch call per batch."""
    from pipeline.extractors.base import ClipInput
    from pipeline.media import decode_audio
    from pipeline.runner import prefetch_batches

    idx = list(range(len(paths)))
    batches = [idx[i:i + batch_clips] for i in range(0, len(idx), batch_clips)]
    decode = (lambda i: decoded[i]) if decoded else (lambda i: decode_audio(paths[i], sr))
    out = []
    for batch, audio in prefetch_batches(batches, decode, decode_workers):
        clips = [ClipInput(Path(paths[i]).stem, path=str(paths[i]), audio=a) for i, a in zip(batch, audio)]
        out += [f.arrays["features"] for f in extractor.extract_batch(clips)]
    return out


def he_init(model, seed: int = 0) -> None:
    """Seeded He-scaled random weights (torch's default init shrinks VGGish outputs to ~0.01)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in model.named_parameters():
            fan_in = w[0].numel() if w.dim() > 1 else 1
            std = (2.0 / fan_in) ** 0.5 if w.dim() > 1 else 0.01
            w.copy_(torch.randn(w.shape, generator=g) * std)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="shared data dir (default ../shared/data beside the repo)")
    ap.add_argument("--clips", type=int, default=48, help="RAVDESS clips to process")
    ap.add_argument("--batch-clips", type=int, default=None, help="clips per extract_batch (default runtime.batch_clips)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both pipelines")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each pipeline (best is reported)")
    ap.add_argument("--weights-dir", default=None, help="dir holding vggish-10086976.pth (else weights.dir / hub cache)")
    ap.add_argument("--atol", type=float, default=1e-4)
    args = ap.parse_args()

    import torch

    from emocache.config import Config
    from pipeline.audio.vggish_net import VGGish
    from pipeline.extractors.base import build_extractor

    torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else next(
        p for p in [REPO.parent / "shared" / "data", Path("/work/shared/data")] if p.exists())
    paths = sorted((data / "ravdess_subset").glob("Actor_*/*.wav"))[: args.clips]
    if not paths:
        sys.exit(f"no RAVDESS clips under {data / 'ravdess_subset'}")

    weights = {"allow_untrained": ["vggish"]}
    if args.weights_dir:
        weights["dir"] = args.weights_dir
    cfg = Config.model_validate({"base_dir": str(REPO), "weights": weights, "runtime": {"device": args.device}})
    sr = cfg.extractors.vggish.sample_rate
    batch_clips = args.batch_clips or cfg.runtime.batch_clips
    extractor = build_extractor(cfg, "vggish")
    info = extractor.load()
    if not info.pretrained:
        he_init(extractor.model)   # outputs of O(1), so the equality check below means something
    reference_model = VGGish(relu_output=cfg.extractors.vggish.relu_output)
    reference_model.load_state_dict({k: v.cpu() for k, v in extractor.model.state_dict().items()})
    reference_model.eval()
    reference_model.to(extractor.device)   # same device: the comparison is about batching, not hardware

    print(f"weights: {'pretrained ' + str(info.path) if info.pretrained else 'random init (seeded, He-scaled), same in both'}")
    print(f"clips: {len(paths)} RAVDESS wav from {data / 'ravdess_subset'}; threads {args.threads}; "
          f"device {extractor.device}; batch_clips {batch_clips}; batch_examples {cfg.extractors.vggish.batch_examples}")
    run_reference(reference_model, paths[:2], sr)   # warm-up
    run_emocache(extractor, paths[:2], sr, batch_clips)

    from pipeline.media import decode_audio

    t0 = time.perf_counter()
    decoded = [decode_audio(p, sr) for p in paths]
    t_decode = time.perf_counter() - t0

    times = {k: [] for k in ("ref", "emo", "ref_compute", "emo_compute")}
    for _ in range(args.repeats):   # interleaved so background load hits both alike
        for key, fn in [("ref", lambda: run_reference(reference_model, paths, sr)),
                        ("emo", lambda: run_emocache(extractor, paths, sr, batch_clips)),
                        ("ref_compute", lambda: run_reference(reference_model, paths, sr, decoded)),
                        ("emo_compute", lambda: run_emocache(extractor, paths, sr, batch_clips, decoded))]:
            t0 = time.perf_counter()
            result = fn()
            times[key].append(time.perf_counter() - t0)
            if key == "ref":
                ref = result
            elif key == "emo":
                emo = result

    assert all(a.shape == b.shape for a, b in zip(ref, emo)), "row counts differ between pipelines"
    n_examples = sum(r.shape[0] for r in ref)
    worst = max((float(np.abs(a - b).max()) for a, b in zip(ref, emo) if a.size), default=0.0)
    scale = max((float(np.abs(a).max()) for a in ref if a.size), default=0.0)
    assert worst <= args.atol, f"outputs differ: max abs diff {worst:.3g} > {args.atol}"
    best = {k: min(v) for k, v in times.items()}
    n = len(paths)
    print(f"examples: {n_examples} ({n_examples * 0.96:.0f} s of audio); max abs diff {worst:.2e} (<= {args.atol}; "
          f"outputs up to {scale:.3g})")
    print(f"decode alone (ffmpeg, both pipelines pay it): {t_decode:.2f} s")
    for label, key in [("reference (per file, NumPy front end)", "ref"), ("emocache  (batched, torch front end) ", "emo")]:
        print(f"{label}: end-to-end {best[key]:6.2f} s ({n / best[key]:5.1f} clips/s)   "
              f"compute only {best[key + '_compute']:6.2f} s   runs {['%.2f' % t for t in times[key]]}")
    print(f"speed ratio emocache / reference: end-to-end {best['ref'] / best['emo']:.2f}x, "
          f"compute only (front end + network) {best['ref_compute'] / best['emo_compute']:.2f}x")


if __name__ == "__main__":
    main()
