"""`emocache status`: what the cache holds per dataset and extractor."""
from __future__ import annotations

from pathlib import Path

from emocache.config import Config


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def collect_status(cfg: Config) -> list[str]:
    from pipeline.catalog import open_catalog
    from pipeline.datasets import read_clip_table
    from pipeline.extractors.base import weights_label
    from pipeline.provenance import version_changes

    lines = []
    cache = open_catalog(cfg.store, Path(cfg.base_dir))   # the catalog says which store holds each key
    for name, dcfg in cfg.datasets.items():
        try:
            df, _ = read_clip_table(cfg, name)
        except FileNotFoundError:
            lines.append(f"{name}: not listed yet (run `emocache datasets list {name}`)")
            continue
        ids = set(df["clip_id"])
        lines.append(f"{name}: {len(ids)} clips")
        for spec in dcfg.extractors:
            st = cache.get(spec)
            if st is None or spec not in st.keys():
                lines.append(f"  {spec:<18} cached 0/{len(ids)}")
                continue
            cur = st.current_fingerprint(spec)
            have = set(st.index(spec, cur)) & ids if cur else set()
            older = set()
            for fp in st.fingerprints(spec):
                if fp != cur:
                    older |= set(st.index(spec, fp)) & ids
            stale = older - have
            failed = {f["clip_id"] for f in st.failures() if f.get("extractor") == spec} & ids - have
            meta = st.meta(spec) if cur else {}
            learned = (meta.get("weights") or {}).get("learned", True)
            pre = "" if not meta or (meta.get("pretrained") and learned) else \
                "  " + weights_label(meta.get("pretrained"), learned)
            det = meta.get("detector")   # tracks: which person detector ran (detector.kind auto decides)
            det = f"  detector {det['kind']} ({det['why']})" if det else ""
            broken = st.broken.get((spec, cur), {}) if cur else {}
            bad = f"  broken segments {len(broken)} (re-extracted by the next run)" if broken else ""
            lines.append(f"  {spec:<18} cached {len(have)}/{len(ids)}  stale {len(stale)}  failed {len(failed)}"
                         f"  fingerprint {cur or '-'}{pre}{det}{bad}")
            changed = version_changes(meta["versions"]) if meta.get("versions") else {}
            if changed:   # same fingerprint, other packages: rerunning may not give the same features
                lines.append(f"  {'':<18} warning: made with " + ", ".join(
                    f"{p} {a} (running {b})" for p, (a, b) in changed.items()))
    for fam, st in cache.family_stores.items():
        size = st.size_bytes()
        lines.append(f"store {fam}: {st.root} ({_human(size) if size >= 0 else 'remote'})")
    return lines
