"""`emocache weights list | fetch`: the catalog of known models, and the one command that downloads them."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from emocache.config import Config
from pipeline import weights_catalog as catalog
from pipeline.errors import UsageError


def weights_dir(cfg: Config) -> Path:
    return cfg.path(cfg.weights.resolved_dir())


def _partial_note(cfg: Config, e: catalog.ModelFile) -> str:
    n = catalog.partial_bytes(e, weights_dir(cfg))
    return f" (partial download {n:,} B in {catalog.partial_path(e, weights_dir(cfg))}; fetch resumes it)" if n else ""


def status_text(cfg: Config, e: catalog.ModelFile) -> tuple[bool, str]:
    """(present, 'present: PATH' | 'missing: emocache weights fetch NAME [partial ...]')."""
    here = catalog.location(e, weights_dir(cfg))
    if here is not None:
        return True, f"present: {here}"
    return False, f"missing: {catalog.fetch_command(e)}{_partial_note(cfg, e)}"


def list_lines(cfg: Config) -> list[str]:
    used = set(e.name for e in catalog.required(cfg))
    wdir = weights_dir(cfg)
    lines = [f"weights dir: {wdir}  (hub repos: the Hugging Face cache)"]
    for e in catalog.CATALOG:
        _, state = status_text(cfg, e)
        mark = "  [used by these params]" if e.name in used else ""
        lines += [f"{e.name}  ({e.extractor}){mark}",
                  f"    {state}",
                  f"    source  {e.source}" + (f" ({', '.join(e.hf_files)})" if e.kind == "hf" else ""),
                  f"    size {e.size_text()}; licence {e.licence}; {e.pin_text()}"
                  + (f" [{e.pin_note}]" if e.pin_note else "")]
    return lines


def list_json(cfg: Config) -> list[dict]:
    used = set(e.name for e in catalog.required(cfg))
    out = []
    for e in catalog.CATALOG:
        here = catalog.location(e, weights_dir(cfg))
        out.append({"name": e.name, "extractor": e.extractor, "kind": e.kind, "source": e.source,
                    "files": list(e.hf_files) or [e.name], "size": e.size, "size_note": e.size_note,
                    "sha256": e.sha256, "sha256_prefix": e.sha256_prefix, "pin_note": e.pin_note,
                    "licence": e.licence, "present": here is not None, "path": str(here) if here else None,
                    "partial_bytes": catalog.partial_bytes(e, weights_dir(cfg)), "used_by_params": e.name in used,
                    "fetch": catalog.fetch_command(e)})
    return out


def select(cfg: Config, names: list[str], missing: bool, all_: bool) -> list[catalog.ModelFile]:
    """NAME... | --missing (what these params use and this machine lacks) | --all (the whole catalog)."""
    if sum(bool(x) for x in (names, missing, all_)) != 1:
        raise UsageError("give model names, or --missing, or --all (one of them)")
    if all_:
        return list(catalog.CATALOG)
    if missing:
        return [e for e in catalog.required(cfg) if not status_text(cfg, e)[0]]
    return [catalog.entry(n) for n in names]


def fetch_options(cfg: Config, mirror: Optional[str], dry_run: bool, log: Callable[[str], None]):
    from pipeline.weights_fetch import FetchOptions, resolve_mirror

    f = cfg.weights.fetch
    return FetchOptions(weights_dir=weights_dir(cfg), mirror=resolve_mirror(mirror, f.mirror), timeout_s=f.timeout_s,
                        retries=f.retries, backoff_s=f.backoff_s, chunk_bytes=f.chunk_kb * 1024,
                        progress_every_percent=f.progress_every_percent, dry_run=dry_run, log=log)


def doctor_lines(cfg: Config) -> list[str]:
    """One line per catalog model: OK (path) or MISSING with the exact fetch command."""
    used = set(e.name for e in catalog.required(cfg))
    lines, used_missing = [], 0
    for e in catalog.CATALOG:
        here = catalog.location(e, weights_dir(cfg))
        state = f"OK       {here}" if here else f"MISSING  {catalog.fetch_command(e)}{_partial_note(cfg, e)}"
        used_missing += here is None and e.name in used
        lines.append(f"  {e.name:<32} {'used' if e.name in used else '    '}  {state}")
    if used_missing:
        lines.append(f"  {used_missing} model(s) these params use are missing; all of them: "
                     f"emocache weights fetch --missing")
    return lines
