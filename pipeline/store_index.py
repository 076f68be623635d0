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
{key, fingerprint, segments: {segment: {clip_ids, offsets, lengths, attrs, arrays}}}.
"""
from __future__ import annotations

import hashlib
import json
import time

INDEX_BLOB = "_index.json"      # under <key>/<fingerprint>/; the leading '_' keeps it out of segment listings
INDEX_FORMAT = "emocache-index"
INDEX_VERSION = 1
_DOC_LISTS = ("clip_ids", "offsets", "lengths", "attrs")


class IndexProblem(ValueError):
    """Why a consolidated index is not trusted (the message goes into the rebuild warning)."""


def encode_index(key: str, fingerprint: str, segments: dict[str, dict]) -> bytes:
    body = json.dumps({"key": key, "fingerprint": fingerprint, "segments": segments},
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
    segments = doc.get("segments")
    if not isinstance(segments, dict):
        raise IndexProblem("corrupted (no segment table)")
    for seg, d in segments.items():
        lists = [d.get(n) for n in _DOC_LISTS] if isinstance(d, dict) else [None]
        if not all(isinstance(v, list) for v in lists) or len({len(v) for v in lists}) != 1 \
                or not isinstance(d.get("arrays", []), list):
            raise IndexProblem(f"corrupted (malformed entry for segment {seg})")
    return segments
