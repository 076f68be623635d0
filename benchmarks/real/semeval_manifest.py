"""SemEval-2018 Task 1 E-c (English) -> one emocache csv manifest: text, labels ('a|b'), split.

The official test file has no gold labels, so dev is the test split (as in ../shared/data/MANIFEST.md);
validation is carved out of train by the heads (train.val_carve), never out of dev.

    python semeval_manifest.py ../../../shared/data/semeval2018_ec cache/semeval2018_ec.csv
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

LABELS = ["anger", "anticipation", "disgust", "fear", "joy", "love", "optimism", "pessimism", "sadness",
          "surprise", "trust"]
FILES = {"train": "2018-E-c-En-train.txt", "test": "2018-E-c-En-dev.txt"}


def read_split(path: Path) -> list[dict]:
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)   # tweets hold bare quotes
        missing = [c for c in ("ID", "Tweet", *LABELS) if c not in (reader.fieldnames or [])]
        if missing:
            raise SystemExit(f"{path}: missing columns {missing}")
        for line, r in enumerate(reader, start=2):
            bad = [c for c in LABELS if r[c] not in ("0", "1")]
            if bad:
                raise SystemExit(f"{path}:{line}: label columns {bad} are not 0/1")
            rows.append({"id": r["ID"], "text": r["Tweet"], "labels": "|".join(c for c in LABELS if r[c] == "1")})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    n = {}
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "text", "labels", "split"])
        w.writeheader()
        for split, name in FILES.items():
            rows = read_split(args.src / name)
            n[split] = len(rows)
            w.writerows(dict(r, split=split) for r in rows)
    print(f"wrote {args.out}: train {n['train']}, test (= dev) {n['test']} tweets, {len(LABELS)} labels")


if __name__ == "__main__":
    main()
