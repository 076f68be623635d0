"""VGGish: front end vs an independent NumPy reference, weight loading, TF-Hub conversion, batching, edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.extractors.base import ClipInput
from pipeline.media import decode_audio
from pipeline.weights import MissingWeightsError, find_weights

torch.set_num_threads(1)
SR = 16000
WEIGHTS_FILE = "vggish-10086976.pth"
PCA_FILE = "vggish_pca_params-970ea276.pth"


# ---------------------------------------------------------------- independent NumPy reference (from the description)
def np_log_mel_examples(x: np.ndarray, sr: int = SR, example_hop: int = 96) -> np.ndarray:
    """16 kHz mono -> (E, 96, 64): 400-sample periodic-Hann frames every 160, |rfft 512|, HTK mel triangles
    in the mel domain (125-7500 Hz, unit peaks, DC bin zeroed), log(mel + 0.01), 96-frame examples."""
    win, hop, nfft, n_mels = 400, 160, 512, 64
    x = np.asarray(x, dtype=np.float64)
    n = 1 + (len(x) - win) // hop
    frames = np.stack([x[i * hop: i * hop + win] for i in range(n)])
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    spec = np.abs(np.fft.rfft(frames * hann, nfft))
    mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)
    bins = mel(np.linspace(0.0, sr / 2, nfft // 2 + 1))
    edges = np.linspace(mel(125.0), mel(7500.0), n_mels + 2)
    weights = np.zeros((nfft // 2 + 1, n_mels))
    for m in range(n_mels):
        lo, c, hi = edges[m: m + 3]
        weights[:, m] = np.maximum(0.0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    weights[0, :] = 0.0
    log_mel = np.log(spec @ weights + 0.01)
    n_ex = 0 if len(log_mel) < 96 else 1 + (len(log_mel) - 96) // example_hop
    return np.stack([log_mel[i * example_hop: i * example_hop + 96] for i in range(n_ex)])


def sine(seconds: float = 3.0, freq: float = 1000.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return np.sin(2 * np.pi * freq * t).astype(np.float32)


@pytest.fixture
def frontend(make_config):
    from pipeline.audio.frontend import LogMelFrontend

    return LogMelFrontend(make_config().extractors.vggish)


def _untrained(make_config, **vggish):
    from pipeline.extractors.base import build_extractor

    cfg = make_config(weights={"allow_untrained": ["vggish"]}, runtime={"device": "cpu"},
                      extractors={"vggish": vggish})
    ex = build_extractor(cfg, "vggish")
    ex.load()
    return ex


# ---------------------------------------------------------------- front end
def test_sine_gives_three_examples_matching_numpy(frontend):
    x = sine()
    ex = frontend([x])[0]
    ref = np_log_mel_examples(x)
    assert tuple(ex.data.shape) == (3, 96, 64) == ref.shape
    assert np.abs(ex.data.numpy() - ref).max() < 1e-4
    np.testing.assert_allclose(ex.times, [[0.0, 0.96], [0.96, 1.92], [1.92, 2.88]], atol=1e-9)


@pytest.mark.parametrize("rel", ["speech/jfk.flac",                                   # 44.1 kHz stereo
                                 "ravdess_subset/Actor_01/03-01-05-02-01-01-01.wav",  # 48 kHz
                                 "asterisk_prompts_en/all-circuits-busy-now.wav"])    # 8 kHz
def test_frontend_matches_numpy_on_real_speech(frontend, shared_data, rel):
    audio = decode_audio(shared_data / rel, SR)
    ex = frontend([audio])[0]
    ref = np_log_mel_examples(audio)
    assert ex.data.shape[0] == ref.shape[0] >= 1
    assert np.abs(ex.data.numpy() - ref).max() < 1e-4


def test_mel_matrix_shape_and_dc(frontend):
    mel = frontend.mel.numpy()
    assert mel.shape == (257, 64)
    assert np.all(mel[0] == 0) and mel.max() <= 1.0 + 1e-12 and np.all(mel.sum(axis=0) > 0)


def test_chunked_equals_unchunked_and_batched_equals_single(make_config, shared_data):
    from pipeline.audio.frontend import LogMelFrontend

    a = decode_audio(shared_data / "speech/jfk.flac", SR)
    b = decode_audio(shared_data / "asterisk_prompts_en/activated.wav", SR)
    whole = LogMelFrontend(make_config().extractors.vggish)
    chunked = LogMelFrontend(make_config(extractors={"vggish": {"chunk_seconds": 0.37}}).extractors.vggish)
    assert chunked.chunk_frames < 40
    ref = [whole.log_mel([a])[0], whole.log_mel([b])[0]]
    for got in (chunked.log_mel([a, b]), whole.log_mel([a, b])):
        for g, r in zip(got, ref):
            assert g.shape == r.shape
            assert torch.equal(g, r) or float((g - r).abs().max()) < 1e-6


def test_overlapping_examples_hop(make_config, frontend):
    from pipeline.audio.frontend import LogMelFrontend

    x = sine(2.5)
    half = LogMelFrontend(make_config(extractors={"vggish": {"example_hop_frames": 48}}).extractors.vggish)
    ex = half([x])[0]
    ref = np_log_mel_examples(x, example_hop=48)
    assert ex.data.shape[0] == ref.shape[0] == 1 + (frontend.n_frames(len(x)) - 96) // 48
    assert np.abs(ex.data.numpy() - ref).max() < 1e-4
    np.testing.assert_allclose(ex.times[:, 0], np.arange(len(ref)) * 0.48, atol=1e-9)


# ---------------------------------------------------------------- weights
def _random_torchvggish_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """Exact key names and shapes of the torchvggish checkpoint, random values."""
    shapes = {"features.0": (64, 1), "features.3": (128, 64), "features.6": (256, 128), "features.8": (256, 256),
              "features.11": (512, 256), "features.13": (512, 512)}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, (o, i) in shapes.items():
        state[f"{k}.weight"] = torch.randn(o, i, 3, 3, generator=g) * (2.0 / (9 * i)) ** 0.5
        state[f"{k}.bias"] = torch.randn(o, generator=g) * 0.01
    for k, (o, i) in {"embeddings.0": (4096, 12288), "embeddings.2": (4096, 4096), "embeddings.4": (128, 4096)}.items():
        state[f"{k}.weight"] = torch.randn(o, i, generator=g) * (2.0 / i) ** 0.5
        state[f"{k}.bias"] = torch.randn(o, generator=g) * 0.01
    return state


@pytest.fixture(scope="module")
def fake_weights_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    state = _random_torchvggish_state()
    torch.save(state, d / WEIGHTS_FILE)
    return d, state


def test_checkpoint_loads_via_real_path_with_weights_only(make_config, fake_weights_dir, monkeypatch):
    from pipeline.extractors.base import build_extractor
    from pipeline.weights import sha256_file

    d, state = fake_weights_dir
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    cfg = make_config(weights={"dir": str(d)}, runtime={"device": "cpu"})
    ex = build_extractor(cfg, "vggish")
    info = ex.load()
    assert calls and all(c is True for c in calls)
    assert info.pretrained and info.path == str(d / WEIGHTS_FILE) and info.sha256 == sha256_file(d / WEIGHTS_FILE)
    assert info.source == "weights dir"

    # by hand: the tensors straight into the torchvggish-layout module, the NumPy front end
    from pipeline.audio.vggish_net import VGGish

    by_hand = VGGish()
    by_hand.load_state_dict(real_load(d / WEIGHTS_FILE, weights_only=True))
    x = sine()
    with torch.no_grad():
        want = by_hand(torch.from_numpy(np_log_mel_examples(x)).float()).numpy()
    out = ex.extract_batch([ClipInput("sine", audio=x)])[0]
    assert out.arrays["features"].shape == (3, 128) and out.attrs["pretrained"] is True
    np.testing.assert_allclose(out.arrays["features"], want, atol=1e-4, rtol=0)
    assert np.abs(want).mean() > 1e-3   # non-trivial outputs


def test_wrong_checkpoint_is_refused_clearly(make_config, tmp_path):
    from pipeline.extractors.base import build_extractor

    d = tmp_path / "w"
    d.mkdir()
    torch.save({"features.0.weight": torch.zeros(3, 3)}, d / WEIGHTS_FILE)
    ex = build_extractor(make_config(weights={"dir": str(d)}, runtime={"device": "cpu"}), "vggish")
    with pytest.raises(ValueError, match="not a VGGish"):
        ex.load()


def test_missing_weights_names_file_and_release(make_config):
    from pipeline.extractors.base import build_extractor

    ex = build_extractor(make_config(runtime={"device": "cpu"}), "vggish")
    with pytest.raises(MissingWeightsError) as err:
        ex.load()
    msg = str(err.value)
    assert WEIGHTS_FILE in msg and "harritaylor/torchvggish/releases" in msg and "allow_untrained" in msg


def test_untrained_allowed_runs_and_says_so(make_config):
    ex = _untrained(make_config)
    assert ex.weights.pretrained is False and "random init" in ex.weights.source
    meta = ex.metadata()
    assert meta["pretrained"] is False and meta["weights"]["pretrained"] is False
    out = ex.extract_batch([ClipInput("sine", audio=sine())])[0]
    assert out.arrays["features"].shape == (3, 128) and out.arrays["features"].dtype == np.float32
    assert out.attrs["pretrained"] is False
    assert np.isfinite(out.arrays["features"]).all()
    # seeded: a second load gives the same random network
    again = _untrained(make_config).extract_batch([ClipInput("sine", audio=sine())])[0]
    np.testing.assert_array_equal(out.arrays["features"], again.arrays["features"])


def test_real_weights_sine_statistics(make_config, repo):
    import os

    wdir = os.environ.get("EMOCACHE_WEIGHTS", str(repo / "weights"))
    cfg = make_config(weights={"dir": wdir}, runtime={"device": "cpu"})
    if find_weights(cfg, WEIGHTS_FILE) is None:
        reason = f"real VGGish weights {WEIGHTS_FILE} not found (weights dir {wdir} or torch hub cache)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    from pipeline.extractors.base import build_extractor

    ex = build_extractor(cfg, "vggish")
    assert ex.load().pretrained
    emb = ex.extract_batch([ClipInput("sine", audio=sine())])[0].arrays["features"]
    assert emb.shape == (3, 128)
    assert abs(emb.mean() - 0.000657) < 0.01
    assert emb.std() == pytest.approx(0.343, rel=0.10)
    if find_weights(cfg, PCA_FILE) is None:
        print(f"SKIP post-processing part: {PCA_FILE} not found")
        return
    cfg_pp = make_config(weights={"dir": wdir}, runtime={"device": "cpu"}, extractors={"vggish": {"postprocess": True}})
    pp = build_extractor(cfg_pp, "vggish")
    pp.load()
    q = pp.extract_batch([ClipInput("sine", audio=sine())])[0].arrays["features"]
    assert q.dtype == np.uint8
    assert q.mean() == pytest.approx(126.0, rel=0.10) and q.std() == pytest.approx(89.3, rel=0.10)


# ---------------------------------------------------------------- post-processing
def test_postprocess_matches_tf_formula_and_numpy_pca_file_loads(tmp_path):
    from pipeline.audio.postprocess import Postprocessor, load_pca_file

    rng = np.random.default_rng(0)
    eigen, means = rng.normal(size=(128, 128)), rng.normal(size=128)
    torch.save({"pca_eigen_vectors": eigen, "pca_means": means.reshape(-1, 1)}, tmp_path / "np.pth")  # NumPy arrays
    torch.save({"pca_eigen_vectors": torch.from_numpy(eigen), "pca_means": torch.from_numpy(means)}, tmp_path / "t.pth")
    for f in ("np.pth", "t.pth"):
        e, m = load_pca_file(tmp_path / f)
        np.testing.assert_array_equal(e, eigen)
        np.testing.assert_array_equal(m, means)
    emb = rng.normal(size=(5, 128)) * 0.1
    got = Postprocessor(eigen, means)(emb)
    # TF postprocessor: dot(pca, (emb.T - means)).T, clip [-2, 2], round((x + 2) * 255 / 4), uint8
    want = np.round((np.clip(np.dot(eigen, emb.T - means[:, None]).T, -2, 2) + 2) * (255.0 / 4)).astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.uint8 and got.min() == 0 and got.max() == 255   # clipping exercised


def test_postprocess_untrained_is_uint8_and_marked(make_config):
    ex = _untrained(make_config, postprocess=True)
    out = ex.extract_batch([ClipInput("sine", audio=sine())])[0]
    assert out.arrays["features"].dtype == np.uint8 and out.attrs["postprocessed"] is True
    assert ex.weights.pretrained is False


# ---------------------------------------------------------------- batching and edge cases
def test_batch_invariance(make_config, shared_data):
    ex = _untrained(make_config, batch_examples=4)   # forces several network chunks across clip boundaries
    jfk = decode_audio(shared_data / "speech/jfk.flac", SR)
    rav = decode_audio(shared_data / "ravdess_subset/Actor_02/03-01-03-01-01-01-02.wav", SR)
    alone = ex.extract_batch([ClipInput("rav", audio=rav)])[0]
    batch = ex.extract_batch([ClipInput("jfk", audio=jfk), ClipInput("short", audio=jfk[:2000]),
                              ClipInput("rav", audio=rav), ClipInput("sine", audio=sine())])
    assert [b.n_rows for b in batch] == [11, 0, alone.n_rows, 3]
    np.testing.assert_allclose(batch[2].arrays["features"], alone.arrays["features"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(batch[2].times, alone.times)


@pytest.mark.parametrize("chunk_seconds,hop", [(0.37, 96), (2.0, 96), (2.0, 40)])
def test_streamed_examples_equal_whole_clip_path(make_config, chunk_seconds, hop):
    """Long audio is streamed: examples a chunk at a time through the network, only embeddings kept. Rows,
    times and embeddings equal the whole-clip path (all examples of the batch, then the network), with clips
    spanning several chunks, a clip under one example, and overlapping examples."""
    rng = np.random.default_rng(0)
    long = (0.5 * sine(11.3, 440.0) + 0.05 * rng.standard_normal(int(11.3 * SR))).astype(np.float32)
    clips = [ClipInput("long", audio=long), ClipInput("short", audio=long[:2000]),
             ClipInput("mid", audio=long[5000:5000 + int(4.1 * SR)])]
    ex = _untrained(make_config, batch_examples=4, chunk_seconds=chunk_seconds, example_hop_frames=hop)
    assert ex.frontend.chunk_frames < ex.frontend.n_frames(len(long)) // 4       # several chunks per clip
    got = ex.extract_batch(clips)
    whole = _untrained(make_config, batch_examples=4, chunk_seconds=60.0, example_hop_frames=hop)
    per_clip = whole.frontend([c.audio for c in clips])
    ref = np.split(whole.embed(torch.cat([e.data for e in per_clip])), np.cumsum([e.data.shape[0] for e in per_clip])[:-1])
    assert [g.n_rows for g in got] == [e.data.shape[0] for e in per_clip] and got[1].n_rows == 0
    for g, r, e in zip(got, ref, per_clip):
        np.testing.assert_array_equal(g.times, e.times)
        np.testing.assert_allclose(g.arrays["features"], r, atol=1e-5, rtol=0)


def test_short_audio_gives_zero_rows(make_config):
    ex = _untrained(make_config)
    out = ex.extract_batch([ClipInput("tiny", audio=np.zeros(300, np.float32)),
                            ClipInput("under-one-example", audio=sine(0.9))])
    for o in out:
        assert o.n_rows == 0 and o.arrays["features"].shape == (0, 128) and o.times.shape == (0, 2)
        assert "empty_reason" in o.attrs


def test_no_audio_stream_names_clip(make_config):
    ex = _untrained(make_config)
    with pytest.raises(ValueError, match="silent_movie"):
        ex.extract_batch([ClipInput("silent_movie", path="vtest.avi", audio=None)])


# ---------------------------------------------------------------- TF-Hub converter
TF_SHAPES = {
    "conv1": (3, 3, 1, 64), "conv2": (3, 3, 64, 128), "conv3/conv3_1": (3, 3, 128, 256),
    "conv3/conv3_2": (3, 3, 256, 256), "conv4/conv4_1": (3, 3, 256, 512), "conv4/conv4_2": (3, 3, 512, 512),
    "fc1/fc1_1": (12288, 4096), "fc1/fc1_2": (4096, 4096), "fc2": (4096, 128),
}


def _tf_forward_nhwc(tf: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """TF-slim VGGish in NumPy, channel-last: SAME 3x3 conv via im2col with HWIO kernels, 2x2 max-pool,
    flatten (H, W, C), dense (in, out); the last layer without activation."""
    def conv(h, scope):
        n, hh, ww, c = h.shape
        p = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        cols = np.stack([p[:, i:i + hh, j:j + ww, :] for i in range(3) for j in range(3)], axis=3)  # N,H,W,9,C
        k = tf[f"vggish/{scope}/weights:0"].reshape(9, c, -1)
        return np.maximum(np.einsum("nhwkc,kco->nhwo", cols, k, optimize=True) + tf[f"vggish/{scope}/biases:0"], 0)

    def pool(h):
        n, hh, ww, c = h.shape
        return h.reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))

    h = x[..., None]
    h = pool(conv(h, "conv1"))
    h = pool(conv(h, "conv2"))
    h = pool(conv(conv(h, "conv3/conv3_1"), "conv3/conv3_2"))
    h = pool(conv(conv(h, "conv4/conv4_1"), "conv4/conv4_2"))
    h = h.reshape(h.shape[0], -1)
    for scope in ("fc1/fc1_1", "fc1/fc1_2"):
        h = np.maximum(h @ tf[f"vggish/{scope}/weights:0"] + tf[f"vggish/{scope}/biases:0"], 0)
    return h @ tf["vggish/fc2/weights:0"] + tf["vggish/fc2/biases:0"]


def test_tfhub_converter_round_trip():
    from pipeline.audio.tfhub_convert import tf_variables_to_state_dict
    from pipeline.audio.vggish_net import build_vggish

    rng = np.random.default_rng(0)
    tf = {}
    for scope, shape in TF_SHAPES.items():
        fan_in = int(np.prod(shape[:-1]))
        tf[f"vggish/{scope}/weights:0"] = (rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / fan_in))
        tf[f"vggish/{scope}/biases:0"] = rng.standard_normal(shape[-1], dtype=np.float32) * 0.01
    x = np_log_mel_examples(sine(2.0, 440.0) + 0.1 * sine(2.0, 3000.0)).astype(np.float32)[:2]

    state = tf_variables_to_state_dict(tf)
    model = build_vggish(state, relu_output=False)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    want = _tf_forward_nhwc(tf, x)
    assert got.shape == want.shape == (2, 128)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    assert np.abs(want).max() > 1e-2

    # a missing variable is named
    tf.pop("vggish/fc2/biases:0")
    with pytest.raises(KeyError, match="fc2/biases"):
        tf_variables_to_state_dict(tf)


def test_tensorflow_not_in_venv():
    import importlib.util

    assert importlib.util.find_spec("tensorflow") is None, "tensorflow must stay out of .venv (segfaults with torchvision)"
