"""Cached fine-tuning: the text_states extractor (token states after layer L) and head finetune_top.

One module-scoped project on a tiny generated text dataset (48 sentences, 3 classes, own splits), extracted
once through the CLI with the bundled MiniLM (frozen sentence vectors and layer-4 token states). Checks: the
states' fingerprint and append-only store, that finetune_top with its layers frozen reproduces the frozen
MiniLM + MLP head (pooled vectors and predictions), a random-weights BERT round trip with trained layers,
`emocache train` / `evaluate` / `predict` on a finetune_top experiment, and the VGGish variant (its FC block on
the cached FC input: frozen = head mlp on vggish; only the top Linear layer trains).
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from emocache.cli import app  # noqa: E402
from emocache.config import load_config  # noqa: E402

WORDS = {"joy": ["happy", "glad", "delighted", "cheerful"], "sadness": ["sad", "unhappy", "gloomy", "down"],
         "anger": ["angry", "furious", "mad", "annoyed"]}
FRAME = ["I am so {} today.", "She was really {} about it.", "He felt {} after the call.", "We are {}!"]
TINY = {"epochs": 3, "seeds": [0], "num_threads": 1, "device": "cpu", "batch_size": 8, "lr": 3e-3}


def run(*args, ok: bool = True):
    res = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, f"{args}: exit {res.exit_code}\n{res.stdout}\n{res.stderr}\n{res.exception!r}"
    return res


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    d = tmp_path_factory.mktemp("finetune_project")
    rows, i = [], 0
    for label, words in WORDS.items():
        for w in words:
            for frame in FRAME:
                split = ("train", "train", "val", "test")[i % 4]
                rows.append([f"u{i:03d}", frame.format(w), label, split])
                i += 1
    with open(d / "toy.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "labels", "split"])
        w.writerows(rows)
    params = {
        "store": {"dir": "cache"}, "weights": {"dir": "weights"}, "runtime": {"device": "cpu", "num_threads": 1},
        "datasets": {"toy": {"adapter": "csv", "root": str(d), "manifest": str(d / "toy.csv"),
                             "columns": {"labels": "labels", "split": "split"}, "text_fields": {"transcript": "text"},
                             "split": {"method": "own"},
                             "extractors": ["text.transcript", "text_states.transcript"]}},
        "extractors": {"text": {"model": "minilm-bundled", "pooling": "model", "max_length": 32},
                       "text_states": {"layer": 4, "dtype": "fp16"}},
        "experiments": {
            "frozen_mlp": {"dataset": "toy", "modalities": ["text.transcript"], "head": "mlp", "train": TINY},
            "ft_frozen": {"dataset": "toy", "modalities": ["text_states.transcript"], "head": "finetune_top",
                          "max_frames": 32, "train": TINY, "finetune": {"layers_trainable": 0}},
            "ft_top1": {"dataset": "toy", "modalities": ["text_states.transcript"], "head": "finetune_top",
                        "max_frames": 32, "train": TINY, "finetune": {"layers_trainable": 1, "backbone_lr": 1e-4}},
        },
    }
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = d / "params.yaml"
    run("datasets", "list", "toy", "--params", p)
    run("extract", "--family", "text", "--params", p)
    run("extract", "--family", "text_states", "--params", p, "--summary-json", d / "extract_states.json")
    return d


def stores(cfg):
    from heads.data import open_stores

    return open_stores(cfg, ["text.transcript", "text_states.transcript"])


def clip_ids(cfg) -> dict[str, str]:
    """text -> clip id (the csv adapter names clips by a hash)."""
    from pipeline.datasets import read_clip_table

    table, _ = read_clip_table(cfg, "toy")
    return dict(zip(table["text_transcript"].fillna(""), table["clip_id"]))


# ---------------------------------------------------------------- the states extractor
def test_states_are_one_fp16_row_per_token_in_their_own_store(project):
    cfg = load_config(project / "params.yaml")
    st = stores(cfg)
    assert st["text_states.transcript"].root != st["text.transcript"].root
    store = st["text_states.transcript"]
    ids = clip_ids(cfg)
    rows = store.read("text_states.transcript", [ids["I am so happy today."]])
    meta = store.meta("text_states.transcript")
    assert meta["params"] == {"field": "transcript", "model": "sentence-transformers/all-MiniLM-L6-v2", "layer": 4,
                              "max_length": 32, "dtype": "fp16"} and meta["pretrained"] is True
    feats = rows[0].arrays["features"]
    assert feats.dtype == np.float16 and feats.shape == (rows[0].attrs["n_tokens"], 384)
    assert len(rows[0].times) == feats.shape[0]


def test_states_fingerprint_is_separate_and_the_store_append_only(project, make_config):
    from pipeline.extractors.base import build_extractor

    def fp(spec, **over):
        cfg = make_config(runtime={"device": "cpu"}, extractors={"text": {"model": "minilm-bundled"}, **over})
        e = build_extractor(cfg, spec)
        e.load()
        return e.fingerprint()

    base = fp("text_states.transcript")
    assert len({base, fp("text.transcript"), fp("text_states.transcript", text_states={"layer": 3}),
                fp("text_states.transcript", text_states={"dtype": "fp32"})}) == 4
    # pooling changes the sentence vectors, not the token states
    assert fp("text_states.transcript", text={"model": "minilm-bundled", "pooling": "mean"}) == base

    p = project / "params.yaml"
    first = json.loads((project / "extract_states.json").read_text())["extractors"]["text_states.transcript"]
    assert first["done"] == 48 and first["failed"] == 0
    run("extract", "--family", "text_states", "--params", p, "--summary-json", project / "again.json")
    again = json.loads((project / "again.json").read_text())["extractors"]["text_states.transcript"]
    assert again["done"] == 0 and again["skipped"] == 48


def test_states_equal_the_models_hidden_states_after_layer_l(project):
    from pipeline.extractors.base import ClipInput, build_extractor

    cfg = load_config(project / "params.yaml")
    e = build_extractor(cfg, "text_states.transcript")
    e.load()
    texts = ["I am so happy today.", "She was really furious about it."]
    blank = e.extract_batch([ClipInput(clip_id="x", text={"transcript": " "})])[0]
    assert blank.arrays["features"].shape == (0, 384) and blank.attrs["empty"]
    tok = e.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = e.model(**tok, output_hidden_states=True).hidden_states[4]
    st = stores(cfg)["text_states.transcript"]
    ids = clip_ids(cfg)
    got = st.read("text_states.transcript", [ids[t] for t in texts])
    for r in range(len(texts)):
        n = int(tok["attention_mask"][r].sum())
        assert got[r].arrays["features"].shape == (n, 384)
        np.testing.assert_allclose(got[r].arrays["features"].astype(np.float32), ref[r, :n].numpy(),
                                   atol=2e-2, rtol=1e-2)   # fp16


# ---------------------------------------------------------------- frozen layers = the frozen-feature head
def test_frozen_finetune_top_reproduces_the_frozen_mlp(project):
    from heads.data import load_head_data
    from heads.finetune import Backbone, TopLayers
    from heads.train import run_experiment
    from pipeline.datasets import read_clip_table

    cfg = load_config(project / "params.yaml")
    st = stores(cfg)
    table, summary = read_clip_table(cfg, "toy")
    exp = cfg.experiments["ft_frozen"]
    backbone = Backbone.from_store(cfg, st["text_states.transcript"], "text_states.transcript", exp)
    assert len(backbone.layers) == 2 and (backbone.pooling, backbone.normalize) == ("mean", True)
    data = load_head_data(table, summary["labels"], False, st, exp.max_frames)
    top = TopLayers(backbone, 0, chunks=3).eval()
    x, lengths = data.modalities["text_states.transcript"].take(slice(None))
    with torch.no_grad():
        pooled = top(x, lengths)
        one_chunk = TopLayers(backbone, 0, chunks=1).eval()(x, lengths)
        missing = top(x[:3], torch.tensor([0, int(lengths[1]), 0]))   # a clip without text pools to 0
    frozen = data.modalities["text.transcript"]
    np.testing.assert_allclose(pooled.numpy(), frozen.x[:, 0].numpy(), atol=2e-3)   # fp16 cache
    np.testing.assert_allclose(pooled.numpy(), one_chunk.numpy(), atol=1e-5)      # chunking changes nothing
    assert (missing[[0, 2]] == 0).all() and torch.allclose(missing[1], pooled[1], atol=1e-5)

    runs = {}
    for name in ("frozen_mlp", "ft_frozen"):
        runs[name] = run_experiment(cfg, name, st, table, summary["labels"], False, project / "direct" / name)
    a, b = (runs[n]["metrics"] for n in ("frozen_mlp", "ft_frozen"))
    assert a["f1_weighted"]["mean"] == pytest.approx(b["f1_weighted"]["mean"], abs=1e-6)
    assert [list(e.values()) for e in runs["ft_frozen"]["best_epoch"]] == \
        [list(e.values()) for e in runs["frozen_mlp"]["best_epoch"]]

    from heads.checkpoint import load_checkpoint

    idx = data.splits["test"]
    pa = load_checkpoint(project / "direct/frozen_mlp/model.pt").predict_proba(data.inputs(idx, ["text.transcript"]))
    pb = load_checkpoint(project / "direct/ft_frozen/model.pt").predict_proba(
        data.inputs(idx, ["text_states.transcript"]))
    np.testing.assert_allclose(pa, pb, atol=2e-3)
    assert (pa.argmax(1) == pb.argmax(1)).all()


# ---------------------------------------------------------------- random-weights BERT, trained layers
def test_random_bert_trains_its_top_layer_and_round_trips(tmp_path, make_config):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from heads.checkpoint import load_checkpoint
    from heads.data import load_head_data
    from heads.finetune import Backbone, FinetuneTopHead
    from heads.train import run_experiment
    from pipeline.datasets import list_dataset, read_clip_table, write_listing
    from pipeline.extract import extract

    model_dir = tmp_path / "tiny-bert"
    model_dir.mkdir()
    sentences = [(label, frame.format(w)) for label, ws in WORDS.items() for w in ws for frame in FRAME]
    words = sorted({t for _, text in sentences for t in text.lower().replace(".", " ").replace("!", " ").split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "!", *words]
    (model_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(model_dir / "vocab.txt"), do_lower_case=True).save_pretrained(model_dir)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).eval().save_pretrained(model_dir)

    rows = [[f"r{i}", text, label, ("train", "train", "val", "test")[i % 4]] for i, (label, text) in enumerate(sentences)]
    with open(tmp_path / "toy.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "text", "labels", "split"], *rows])
    cfg = make_config(
        runtime={"device": "cpu"},
        datasets={"toy": {"adapter": "csv", "root": str(tmp_path), "manifest": str(tmp_path / "toy.csv"),
                          "columns": {"labels": "labels", "split": "split"}, "text_fields": {"transcript": "text"},
                          "split": {"method": "own"}, "extractors": ["text_states.transcript"]}},
        extractors={"text": {"model": str(model_dir), "pooling": "cls", "max_length": 16},
                    "text_states": {"layer": 1, "dtype": "fp32"}},
        experiments={"ft": {"dataset": "toy", "modalities": ["text_states.transcript"], "head": "finetune_top",
                            "max_frames": 16, "train": {**TINY, "epochs": 4},
                            "finetune": {"layers_trainable": 1, "backbone_lr": 1e-2, "length_chunks": 2}}})
    write_listing(cfg, list_dataset(cfg, "toy"))
    extract(cfg, ["toy"], "text_states")
    from heads.data import open_stores

    st = open_stores(cfg, ["text_states.transcript"])
    table, summary = read_clip_table(cfg, "toy")
    exp = cfg.experiments["ft"]
    before = Backbone.from_store(cfg, st["text_states.transcript"], "text_states.transcript", exp).layers
    assert len(before) == 2
    r = run_experiment(cfg, "ft", st, table, summary["labels"], False, tmp_path / "out")

    head = load_checkpoint(tmp_path / "out" / "model.pt")
    layers = head.model.model.encoder("text_states.transcript").top.layers
    changed = [any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
               for a, b in zip(before, layers)]
    assert changed == [False, True]   # the frozen lower layer kept its weights, the top one trained
    data = load_head_data(table, summary["labels"], False, st, exp.max_frames)
    test_inputs = data.inputs(data.splits["test"], ["text_states.transcript"])
    probs = head.predict_proba(test_inputs)
    doc = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    own = FinetuneTopHead.load(doc, exp, doc["input_dims"], len(doc["vocab"]), doc["multilabel"])
    np.testing.assert_allclose(own.predict_proba(test_inputs), probs, atol=1e-6)
    m = r["metrics"]["accuracy"]["mean"]
    assert np.mean(probs.argmax(1) == data.targets(data.splits["test"]).numpy()) == pytest.approx(m)
    assert r["head"] == "finetune_top" and r["pretrained"] == {"text_states.transcript": True}


def test_finetune_top_refuses_frozen_vectors_and_subsampled_tokens(project):
    from heads.finetune import Backbone

    cfg = load_config(project / "params.yaml")
    st = stores(cfg)
    exp = cfg.experiments["ft_frozen"]
    with pytest.raises(ValueError, match="token states"):
        Backbone.from_store(cfg, st["text.transcript"], "text.transcript", exp)
    with pytest.raises(ValueError, match="max_frames=8"):
        Backbone.from_store(cfg, st["text_states.transcript"], "text_states.transcript",
                            exp.model_copy(update={"max_frames": 8}))
    other = load_config(project / "params.yaml", {"extractors": {"text_states": {"layer": 3}}})
    with pytest.raises(ValueError, match="rerun `emocache extract`"):
        Backbone.from_store(other, stores(other)["text_states.transcript"], "text_states.transcript", exp)


# ---------------------------------------------------------------- the CLI
def test_cli_train_and_evaluate_finetune_top(project):
    p = project / "params.yaml"
    res = run("train", "ft_top1", "--params", p, "--out", project / "models", "--metrics-dir", project / "metrics")
    assert "finetune_top on text_states.transcript" in res.stdout
    doc = json.loads((project / "metrics" / "ft_top1.json").read_text())
    assert doc["head"] == "finetune_top" and doc["n_clips"] == {"train": 24, "val": 12, "test": 12}
    ev = run("evaluate", "ft_top1", "--params", p, "--models", project / "models", "--split", "test",
             "--out", project / "eval.json")
    assert ev.exit_code == 0
    got = json.loads((project / "eval.json").read_text())
    assert got["metrics"]["f1_weighted"] == pytest.approx(doc["metrics"]["f1_weighted"]["mean"], abs=1e-9)


def test_cli_predict_with_a_finetune_top_head(project, tmp_path, repo):
    p = project / "params.yaml"
    if not (project / "models" / "ft_top1" / "model.pt").is_file():
        run("train", "ft_top1", "--params", p, "--out", project / "models", "--metrics-dir", project / "metrics")
    video = repo / "data/sample/videos/short_hamilton_clip.mp4"
    run("predict", video, "--head", "ft_top1", "--params", p, "--models", project / "models", "--out", tmp_path,
        "--transcript", "Tonight we were glad and cheerful.")
    doc = json.loads((tmp_path / "short_hamilton_clip_ft_top1.json").read_text())
    assert doc["extraction"]["computed"]["text_states.transcript"] == 1   # the transcript's tokens, not the video
    whole = doc["video_level"]["whole_clip"]["scores"]
    assert set(whole) == {"anger", "joy", "sadness"} and sum(whole.values()) == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------- VGGish: the FC block on its cached input
@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """24 two-second tone clips, 3 classes by pitch, own splits; VGGish with random weights (allowed)."""
    import soundfile as sf

    d = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    rows, t = [], np.arange(32000) / 16000
    for i in range(24):
        label, hz = [("low", 220.0), ("mid", 880.0), ("high", 3520.0)][i % 3]
        wave = 0.3 * np.sin(2 * np.pi * hz * (1 + 0.05 * rng.standard_normal()) * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(d / f"t{i:02d}.wav", wave.astype(np.float32), 16000)
        rows.append([f"t{i:02d}.wav", label, ("train", "train", "val", "test")[(i // 3) % 4]])
    with open(d / "tones.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "labels", "split"], *rows])
    return d


def tone_config(make_config, tones, **ft):
    exp = {"dataset": "tones", "train": {**TINY, "epochs": 2}}
    return make_config(
        runtime={"device": "cpu"}, weights={"allow_untrained": ["vggish", "vggish_states"]},
        datasets={"tones": {"adapter": "csv", "root": str(tones), "manifest": str(tones / "tones.csv"),
                            "split": {"method": "own"}, "extractors": ["vggish", "vggish_states"]}},
        experiments={"mlp": {**exp, "modalities": ["vggish"], "head": "mlp"},
                     "ft": {**exp, "modalities": ["vggish_states"], "head": "finetune_top", "finetune": ft}})


@pytest.mark.slow   # the FC block is 67M parameters: ~30 s of CPU
def test_vggish_fc_block_frozen_reproduces_the_mlp_and_trains_its_top(tmp_path, make_config, tones):
    from heads.checkpoint import load_checkpoint
    from heads.data import load_head_data, open_stores
    from heads.finetune import Backbone
    from heads.train import run_experiment
    from pipeline.datasets import list_dataset, read_clip_table, write_listing
    from pipeline.extract import extract

    cfg = tone_config(make_config, tones, layers_trainable=0)
    write_listing(cfg, list_dataset(cfg, "tones"))
    for fam in ("audio", "audio_states"):
        extract(cfg, ["tones"], fam)
    st = open_stores(cfg, ["vggish", "vggish_states"])
    rows = st["vggish_states"].read("vggish_states", list(st["vggish_states"].index("vggish_states"))[:1])[0]
    assert rows.arrays["features"].shape == (2, 12288) and rows.arrays["features"].dtype == np.float16
    table, summary = read_clip_table(cfg, "tones")
    r = {n: run_experiment(cfg, n, st, table, summary["labels"], False, tmp_path / n) for n in ("mlp", "ft")}
    assert r["ft"]["metrics"]["f1_weighted"]["mean"] == pytest.approx(r["mlp"]["metrics"]["f1_weighted"]["mean"])
    data = load_head_data(table, summary["labels"], False, st, 100)
    idx = data.splits["test"]
    pa = load_checkpoint(tmp_path / "mlp/model.pt").predict_proba(data.inputs(idx, ["vggish"]))
    pb = load_checkpoint(tmp_path / "ft/model.pt").predict_proba(data.inputs(idx, ["vggish_states"]))
    np.testing.assert_allclose(pa, pb, atol=5e-3)   # fp16 FC inputs

    cfg = tone_config(make_config, tones, layers_trainable=1, backbone_lr=1e-3)
    before = Backbone.from_store(cfg, st["vggish_states"], "vggish_states", cfg.experiments["ft"]).layers
    run_experiment(cfg, "ft", st, table, summary["labels"], False, tmp_path / "ft1")
    after = load_checkpoint(tmp_path / "ft1/model.pt").model.model.encoder("vggish_states").top.layers
    linear = [i for i, m in enumerate(before) if isinstance(m, torch.nn.Linear)]
    changed = [not torch.equal(before[i].weight, after[i].weight) for i in linear]
    assert changed == [False, False, True]   # only the top Linear layer trained
