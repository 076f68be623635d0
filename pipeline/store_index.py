"""The consolidated index of one (key, fingerprint): every committed segment's index doc in one blob.

Opening a store used to read one commit doc (and the array shapes) per segment: thousands of metadata reads
for a 100k-clip store. The consolidated index holds the same docs, already checked against their arrays, so an
open is one directory listing plus one blob read; only segments the blob does not know yet are read one by one
(and then folded in). The segments stay the source of truth: the blob is a cache of them, replaced atomically,
and a blob that cannot be trusted is rebuilt from them with a warning saying why:

- unreadable or corrupted (bad header, checksum mismatch, malformed docs),
- written by a newer emocache (a format version this code does not know),
- disagreeing with the segments on disk (it lists a segment that is gone).

Layout: one JSON header line {format, version, sha256, bytes} then the JSON body
{key, fingerprint, segments: {segment: {n, ids, lengths, [offsets], attrs, arrays, [sig, files], [replaces]}}},
each segment's index doc in columns (`_pack`), so 100k clips decode in milliseconds rather than as 400k JSON
tokens. `sig` is the digest of the segment's files (listed in `files`) when its arrays were last checked: an open
compares it with one stat per file and re-checks only the segments whose files changed (an entry without one is
checked, as older emocache wrote them). `replaces`: the segments a compacted segment retires that are still on disk
(pipeline/store_compact.py).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time

import numpy as np

INDEX_BLOB = "_index.json"      # under <key>/<fingerprint>/; the leading '_' keeps it out of segment listings
INDEX_FORMAT = "emocache-index"
INDEX_VERSION = 1
_DOC_LISTS = ("clip_ids", "offsets", "lengths", "attrs")


class IndexProblem(ValueError):
    """Why a consolidated index is not trusted (the message goes into the rebuild warning)."""


def _pack(doc: dict) -> dict:
    """One segment's index doc in columns that decode without a JSON token per clip: ids joined by newlines,
    lengths (and offsets, unless they are the running sum of the lengths, as write_segment makes them) as
    base64 int64, and only the attrs that are not empty."""
    ids, lengths, offsets = doc["clip_ids"], np.asarray(doc["lengths"], "<i8"), np.asarray(doc["offsets"], "<i8")
    packed = {"arrays": doc.get("arrays", []), "n": len(ids),
              "ids": ids if any("\n" in c for c in ids) else "\n".join(ids),
              "lengths": base64.b64encode(lengths.tobytes()).decode(),
              "attrs": {str(i): a for i, a in enumerate(doc["attrs"]) if a}}
    if doc.get("sig"):   # the segment's files when it was checked (pipeline/segment_signature.py)
        packed["sig"] = doc["sig"]
        if doc.get("files"):
            packed["files"] = "\n".join(doc["files"])
    if doc.get("replaces"):   # a compacted segment: the ones it retires (pipeline/store_compact.py)
        packed["replaces"] = list(doc["replaces"])
    running = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(ids) else lengths
    if not np.array_equal(running, offsets):
        packed["offsets"] = base64.b64encode(offsets.tobytes()).decode()
    return packed


def _unpack(p: dict) -> dict:
    n = p["n"]
    ids = p["ids"] if isinstance(p["ids"], list) else (p["ids"].split("\n") if n else [])
    lengths = np.frombuffer(base64.b64decode(p["lengths"]), "<i8")
    offsets = np.frombuffer(base64.b64decode(p["offsets"]), "<i8") if "offsets" in p else \
        np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype("<i8") if n else lengths
    attrs = [{}] * n   # one shared empty dict (ClipIndex hands out copies); the few non-empty ones set below
    for i, a in p["attrs"].items():
        attrs[int(i)] = a
    # offsets and lengths stay int64 arrays: ClipIndex concatenates them without a Python int per clip
    doc = {"clip_ids": ids, "offsets": offsets, "lengths": lengths, "attrs": attrs, "arrays": list(p["arrays"])}
    if isinstance(p.get("sig"), str):
        doc["sig"] = p["sig"]
        if isinstance(p.get("files"), str):
            doc["files"] = p["files"].split("\n")
    if "replaces" in p:
        doc["replaces"] = [str(r) for r in p["replaces"]]
    return doc


def encode_index(key: str, fingerprint: str, segments: dict[str, dict]) -> bytes:
    body = json.dumps({"key": key, "fingerprint": fingerprint,
                       "segments": {seg: _pack(d) for seg, d in segments.items()}},
                      separators=(",", ":"), default=str).encode()
    header = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "sha256": hashlib.sha256(body).hexdigest(),
              "bytes": len(body), "written_at": time.time()}
    return json.dumps(header).encode() + b"\n" + body


def decode_index(data: bytes, key: str, fingerprint: str) -> dict[str, dict]:
    """Segment -> index doc, or IndexProblem naming what is wrong."""
    head, sep, body = data.partition(b"\n")
    try:
        header = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexProblem(f"corrupted (header unreadable: {e})") from None
    if not sep or not isinstance(header, dict) or header.get("format") != INDEX_FORMAT:
        raise IndexProblem("corrupted (not an emocache index header)")
    version = header.get("version")
    if not isinstance(version, int) or version > INDEX_VERSION:
        raise IndexProblem(f"written by a newer emocache (index version {version!r}; this version reads up to "
                           f"{INDEX_VERSION})")
    if header.get("bytes") != len(body) or header.get("sha256") != hashlib.sha256(body).hexdigest():
        raise IndexProblem(f"corrupted (checksum mismatch: {len(body)} body bytes, header says {header.get('bytes')})")
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexProblem(f"corrupted (body unreadable: {e})") from None
    if doc.get("key") != key or doc.get("fingerprint") != fingerprint:
        raise IndexProblem(f"belongs to {doc.get('key')!r}/{doc.get('fingerprint')!r}")
    packed = doc.get("segments")
    if not isinstance(packed, dict):
        raise IndexProblem("corrupted (no segment table)")
    segments = {}
    for seg, p in packed.items():
        try:
            d = _unpack(p)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, binascii.Error) as e:
            raise IndexProblem(f"corrupted (malformed entry for segment {seg}: {type(e).__name__})") from None
        if len({len(d[n]) for n in _DOC_LISTS}) != 1 or len(d["clip_ids"]) != p["n"]:
            raise IndexProblem(f"corrupted (malformed entry for segment {seg})")
        segments[seg] = d
    return segments
