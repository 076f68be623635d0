"""VGGish end to end: emocache vs the real torchvggish (harritaylor) per-file pipeline, same clips, same weights.

reference (torchvggish, re-implemented here step by step from its vggish_input.py / mel_features.py /
           vggish.py, since the package itself cannot be installed offline): for each file on its own,
           soundfile.read(dtype='int16') / 32768.0 -> mean over channels -> resampy.resample(x, sr, 16000)
           (kaiser_best, the real resampy) -> NumPy log-mel (as_strided 25 ms frames every 10 ms, periodic
           Hann, |rfft 512|, HTK mel matrix 125-7500 Hz, log(mel + 0.01)) -> 96-frame examples ->
           torch.tensor(examples, requires_grad=True)[:, None].float() -> VGG.forward (features; transpose
           to H, W, C; flatten; FC with the final ReLU of torchvggish) with autograd on, as model(file) runs it.
emocache:  the runner's path: ffmpeg decode (media.resampler, default 'resampy') of the next batch of clips
           in threads while the current batch runs; torch log-mel front end over the batch; one inference-mode
           channels-last (oneDNN) network pass over all its examples (relu_output true, so the output is the
           same quantity as torchvggish's).
Both use one seeded He-scaled random init of the exact architecture (VGGish weights are not available here),
or the real checkpoint with --weights-dir. Outputs must agree within --atol (the two resample with the same
kaiser_best sums; the front ends differ only in float64 round-off). Also checked: on 16 kHz input (no
resampling) the batched channels-last inference path gives the same embeddings as a plain NCHW forward
per clip within 1e-4. Runs are interleaved; medians reported. The network's FLOP rate is compared with a
large single-thread sgemm and conv (the machine's limit at 1 thread).

    .venv/bin/python benchmarks/audio_throughput.py --clips 32 --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SR = 16000


# ---------------------------------------------------------------- torchvggish, per file
def tv_frame(data: np.ndarray, window_length: int, hop_length: int) -> np.ndarray:
    num_samples = data.shape[0]
    num_frames = 1 + int(np.floor((num_samples - window_length) / hop_length))
    shape = (num_frames, window_length) + data.shape[1:]
    strides = (data.strides[0] * hop_length,) + data.strides
    return np.lib.stride_tricks.as_strided(data, shape=shape, strides=strides)


def tv_log_mel_examples(data: np.ndarray) -> np.ndarray:
    """mel_features.log_mel_spectrogram + frame into examples, with vggish_params' values."""
    window_length_samples = int(round(SR * 0.025))
    hop_length_samples = int(round(SR * 0.010))
    fft_length = 2 ** int(np.ceil(np.log(window_length_samples) / np.log(2.0)))
    frames = tv_frame(data, window_length_samples, hop_length_samples)
    window = 0.5 - (0.5 * np.cos(2 * np.pi / window_length_samples * np.arange(window_length_samples)))
    spectrogram = np.abs(np.fft.rfft(frames * window, int(fft_length)))
    num_spectrogram_bins = spectrogram.shape[1]
    nyquist_hertz = SR / 2.0
    spectrogram_bins_mel = 1127.0 * np.log(1.0 + np.linspace(0.0, nyquist_hertz, num_spectrogram_bins) / 700.0)
    band_edges_mel = np.linspace(1127.0 * np.log(1.0 + 125.0 / 700.0), 1127.0 * np.log(1.0 + 7500.0 / 700.0), 64 + 2)
    mel_weights_matrix = np.empty((num_spectrogram_bins, 64))
    for i in range(64):
        lower_edge_mel, center_mel, upper_edge_mel = band_edges_mel[i:i + 3]
        lower_slope = (spectrogram_bins_mel - lower_edge_mel) / (center_mel - lower_edge_mel)
        upper_slope = (upper_edge_mel - spectrogram_bins_mel) / (upper_edge_mel - center_mel)
        mel_weights_matrix[:, i] = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
    mel_weights_matrix[0, :] = 0.0
    log_mel = np.log(np.dot(spectrogram, mel_weights_matrix) + 0.01)
    example_window_length = int(round(0.96 * 100.0))
    return tv_frame(log_mel, example_window_length, example_window_length)


class TorchVGGish:
    """torchvggish's VGG: the same layers (emocache's VGGish with the final ReLU) and its forward()."""

    def __init__(self, state: dict):
        import torch

        from pipeline.audio.vggish_net import VGGish

        self.net = VGGish(relu_output=True)
        self.net.load_state_dict(state)
        self.torch = torch

    def forward_file(self, path: str) -> np.ndarray:
        import resampy
        import soundfile as sf

        torch = self.torch
        wav_data, sr = sf.read(path, dtype="int16")
        data = wav_data / 32768.0
        if len(data.shape) > 1:
            data = np.mean(data, axis=1)
        if sr != SR:
            data = resampy.resample(data, sr, SR)
        x = torch.tensor(tv_log_mel_examples(data), requires_grad=True)[:, None, :, :].float()
        net = self.net
        x = net.features(x)
        x = torch.transpose(x, 1, 3)
        x = torch.transpose(x, 1, 2)
        x = x.contiguous()
        x = x.view(x.size(0), -1)
        return net.embeddings(x).relu().detach().numpy()   # VGG.embeddings ends in nn.ReLU(True)


def run_reference(ref: TorchVGGish, paths) -> list[np.ndarray]:
    return [ref.forward_file(str(p)) for p in paths]


# ---------------------------------------------------------------- emocache
def run_emocache(extractor, paths, batch_clips, decode, decode_workers):
    from pipeline.extractors.base import ClipInput
    from pipeline.worker import prefetch_batches

    idx = list(range(len(paths)))
    batches = [idx[i:i + batch_clips] for i in range(0, len(idx), batch_clips)]
    out = []
    for batch, audio in prefetch_batches(batches, lambda i: decode(paths[i]), decode_workers):
        clips = [ClipInput(Path(paths[i]).stem, path=str(paths[i]), audio=a) for i, a in zip(batch, audio)]
        out += [f.arrays["features"] for f in extractor.extract_batch(clips)]
    return out


def he_init(model, seed: int = 0) -> None:
    """Seeded He-scaled random weights (torch's default init shrinks VGGish outputs to ~0.01)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.parameters():
            std = (2.0 / w[0].numel()) ** 0.5 if w.dim() > 1 else 0.01
            w.copy_(torch.randn(w.shape, generator=g) * std)


def vggish_flops_per_example() -> float:
    """Multiply-adds x 2 of the convs and FC layers for one 96 x 64 example."""
    from pipeline.audio.vggish_net import CONV_PLAN, FC_HIDDEN, FLAT_SIZE, EMBEDDING_SIZE

    h, w, c, flops = 96, 64, 1, 0.0
    for v in CONV_PLAN:
        if v == "M":
            h, w = h // 2, w // 2
        else:
            flops += 2.0 * h * w * c * v * 9
            c = v
    return flops + 2.0 * (FLAT_SIZE * FC_HIDDEN + FC_HIDDEN * FC_HIDDEN + FC_HIDDEN * EMBEDDING_SIZE)


def machine_limit(repeats: int = 3) -> dict:
    """GFLOP/s of one big sgemm and one VGGish-sized conv (channels-last) at the current thread count."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.randn(64, 256, 24, 16).contiguous(memory_format=torch.channels_last)
    out = {}
    with torch.inference_mode():
        for name, fn, flops in [("sgemm_2048", lambda: a @ b, 2.0 * 2048 ** 3),
                                ("conv3x3_256", lambda: conv(x), 2.0 * 64 * 24 * 16 * 256 * 256 * 9)]:
            fn()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            out[name] = flops / min(ts) / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="shared data dir (default ../shared/data beside the repo)")
    ap.add_argument("--clips", type=int, default=32, help="RAVDESS clips (48 kHz wav) to process")
    ap.add_argument("--batch-clips", type=int, default=None, help="clips per extract_batch (default runtime.batch_clips)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both pipelines")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed runs of each pipeline (median)")
    ap.add_argument("--weights-dir", default=None, help="dir holding vggish-10086976.pth (else random init)")
    ap.add_argument("--atol", type=float, default=1e-3, help="emocache vs torchvggish on 48 kHz files")
    args = ap.parse_args()

    import torch

    from emocache.config import Config
    from pipeline import media
    from pipeline.extractors.base import build_extractor
    from pipeline.threads import for_extraction

    data = Path(args.data) if args.data else next(
        p for p in [REPO.parent / "shared" / "data", Path("/work/shared/data")] if p.exists())
    paths = sorted((data / "ravdess_subset").glob("Actor_*/*.wav"))[: args.clips]
    if not paths:
        sys.exit(f"no RAVDESS clips under {data / 'ravdess_subset'}")
    weights = {"allow_untrained": ["vggish"]}
    if args.weights_dir:
        weights["dir"] = args.weights_dir
    cfg = Config.model_validate({"base_dir": str(REPO), "weights": weights,
                                 "runtime": {"device": "cpu", "num_threads": args.threads},
                                 "extractors": {"vggish": {"relu_output": True}}})
    plan = for_extraction(cfg)
    batch_clips = args.batch_clips or cfg.runtime.batch_clips
    extractor = build_extractor(cfg, "vggish")
    info = extractor.load()
    if not info.pretrained:
        he_init(extractor.model)
    ref = TorchVGGish({k: v.detach().clone() for k, v in extractor.model.state_dict().items()})
    m = cfg.media

    def decode(p):
        return media.decode_audio(p, SR, timeout=m.ffmpeg_timeout_s, resampler=m.resampler)

    print(f"weights: {'pretrained ' + str(info.path) if info.pretrained else 'random init (seeded, He-scaled), same in both'}")
    print(f"clips: {len(paths)} RAVDESS 48 kHz wav; torch threads {torch.get_num_threads()} ({plan.describe()}); "
          f"batch_clips {batch_clips}; resampler {m.resampler}; decode workers {m.decode_workers}")
    run_reference(ref, paths[:2])                                     # warm-up (resampy's numba JIT too)
    run_emocache(extractor, paths[:2], batch_clips, decode, m.decode_workers)

    times: dict[str, list[float]] = {"reference": [], "emocache": []}
    for r in range(args.repeats):   # interleaved, alternating who goes first
        for name in (["emocache", "reference"] if r % 2 == 0 else ["reference", "emocache"]):
            t0 = time.perf_counter()
            result = (run_reference(ref, paths) if name == "reference"
                      else run_emocache(extractor, paths, batch_clips, decode, m.decode_workers))
            times[name].append(time.perf_counter() - t0)
            if r == 0:
                outs = {**locals().get("outs", {}), name: result}

    # network alone: all examples of the clips in emocache's batches vs per file (as the reference)
    decoded = [decode(p) for p in paths]
    per_clip = extractor.frontend(decoded)
    examples = torch.cat([e.data for e in per_clip])
    n_ex = examples.shape[0]
    net_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for s in range(0, len(per_clip), batch_clips):
            extractor.embed(torch.cat([e.data for e in per_clip[s:s + batch_clips]]))
        net_times.append(time.perf_counter() - t0)
    t_net = statistics.median(net_times)
    # 16 kHz input, outputs unchanged: the batched channels-last inference path vs a plain NCHW per-clip forward
    with torch.no_grad():
        plain = torch.cat([extractor.model(e.data.unsqueeze(1).contiguous()) for e in per_clip]).numpy()
    unchanged = float(np.abs(extractor.embed(examples) - plain).max())
    limit = machine_limit()

    a, b = outs["reference"], outs["emocache"]
    assert all(x.shape == y.shape for x, y in zip(a, b)), "row counts differ between pipelines"
    worst = max(float(np.abs(x - y).max()) for x, y in zip(a, b) if x.size)
    scale = max(float(np.abs(x).max()) for x in a if x.size)
    med = {k: statistics.median(v) for k, v in times.items()}
    gflops = vggish_flops_per_example() * n_ex / t_net / 1e9
    ratio = med["reference"] / med["emocache"]
    print(f"examples: {n_ex}; max abs diff vs torchvggish {worst:.2e} (<= {args.atol}; outputs up to {scale:.3g}); "
          f"16 kHz path vs plain per-clip forward {unchanged:.2e} (<= 1e-4)")
    for k, label in [("reference", "torchvggish per file (resampy, NumPy mel, autograd)"),
                     ("emocache", "emocache (decode overlapped, batched, channels-last)")]:
        print(f"  {label:<54} median {med[k]:6.2f} s ({len(paths) / med[k]:5.2f} clips/s)   runs "
              f"{' '.join('%.2f' % t for t in times[k])}")
    print(f"  network alone: {t_net:.2f} s for {n_ex} examples = {gflops:.1f} GFLOP/s; machine limit at "
          f"{torch.get_num_threads()} thread(s): sgemm {limit['sgemm_2048']:.1f}, conv {limit['conv3x3_256']:.1f} GFLOP/s "
          f"-> {gflops / max(limit.values()):.0%} of the best")
    print(f"speed ratio emocache / torchvggish (end to end, median): {ratio:.2f}x")
    print(json.dumps({"bench": "vggish", "ratio": round(ratio, 3), "max_abs_diff": worst, "unchanged_16k": unchanged,
                      "net_gflops": round(gflops, 2), "limit_gflops": {k: round(v, 2) for k, v in limit.items()},
                      "median_s": med}))
    assert worst <= args.atol, f"outputs differ from torchvggish: {worst:.3g} > {args.atol}"
    assert unchanged <= 1e-4, f"batched path changed the 16 kHz outputs: {unchanged:.3g}"


if __name__ == "__main__":
    main()
