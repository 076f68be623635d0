"""Download catalog models on request (`emocache weights fetch`): the only code in emocache that uses the network.

URL files go through pooch: it streams into a temporary file beside the target, checks the sha256 pin and only
then renames it to the real name (a mismatch deletes the download; its error says expected vs got). The
downloader below adds resume: bytes arrive in `<name>.part`, a later fetch asks for the rest with an HTTP
Range request. Torch-hub-style files (only a hash prefix in the name) are checked against that prefix before
pooch may rename them. Hub repos go through huggingface_hub, which itself downloads to `.incomplete` blobs
and resumes them; the hub's ETag (sha256 of an LFS file) and our pin are checked afterwards.

Outcomes (the weights dir afterwards):
- ok: `<dir>/<name>` (verified); no `.part`, no temporary file;
- HTTP error (404 ...): nothing under the real name and no new `.part`;
- wrong hash: nothing under the real name and no `.part` (a mismatching download is not kept: the next fetch
  starts over);
- connection dropped / timed out (after the retries): nothing under the real name; `<name>.part` holds the
  bytes received and the next fetch resumes from there.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from pipeline.weights import sha256_file
from pipeline.weights_catalog import ModelFile, location, partial_path
from pipeline.errors import EmocacheError

MIRROR_ENV = "EMOCACHE_WEIGHTS_MIRROR"
HUB_ENDPOINT = "https://huggingface.co"


class WeightsFetchError(EmocacheError, RuntimeError):
    """A download failed; the message names the model, the URL and what to do."""


@dataclass
class FetchOptions:
    weights_dir: Path
    mirror: Optional[str] = None            # `<mirror>/<file name>` instead of the official URL
    timeout_s: float = 60.0                 # connect and per-read timeout
    retries: int = 3                        # extra attempts after a network failure (not after 4xx / wrong hash)
    backoff_s: float = 2.0                  # wait before retry k: backoff_s * 2**k
    chunk_bytes: int = 1 << 20
    progress_every_percent: float = 10.0    # plain log lines (not a TTY): one per this much of the file
    progress: Optional[bool] = None         # progress bar; None = when stderr is a TTY
    dry_run: bool = False
    log: Callable[[str], None] = print


def resolve_mirror(cli: Optional[str], param: Optional[str]) -> Optional[str]:
    """--mirror wins over EMOCACHE_WEIGHTS_MIRROR, which wins over params weights.fetch.mirror."""
    m = cli or os.environ.get(MIRROR_ENV) or param
    return m.rstrip("/") if m else None


def source_url(e: ModelFile, mirror: Optional[str]) -> str:
    """URL files: `<mirror>/<file name>`. Hub repos: the mirror is a hub endpoint (hub URL layout)."""
    if e.kind == "url":
        return f"{mirror}/{e.file_name}" if mirror else e.source
    return f"{mirror or HUB_ENDPOINT}/{e.source}/resolve/{e.revision}/{e.file_name}"


def check_pin(e: ModelFile, path: Path) -> Optional[str]:
    """None when `path` matches the entry's pin (or it has none); else 'expected ... got ...'."""
    if not (e.sha256 or e.sha256_prefix):
        return None
    got = sha256_file(path)
    if e.sha256 and got != e.sha256.lower():
        return f"expected sha256 {e.sha256} but got {got}"
    if e.sha256_prefix and not got.startswith(e.sha256_prefix.lower()):
        return f"expected a sha256 starting with {e.sha256_prefix} (the file name's hash prefix) but got {got}"
    return None


# ---------------------------------------------------------------- progress
class _Progress:
    """The progress object pooch drives (total, update, reset, close): a tqdm bar on a TTY, else log lines."""

    def __init__(self, name: str, offset: int, opts: FetchOptions) -> None:
        self.name, self.offset, self.opts = name, offset, opts
        self.done = 0
        self._total = 0
        self._next_pct = opts.progress_every_percent
        self._finishing = False
        tty = sys.stderr.isatty() if opts.progress is None else opts.progress
        self.bar = None
        if tty:
            from tqdm import tqdm

            self.bar = tqdm(desc=name, initial=offset, unit="B", unit_scale=True, leave=True, file=sys.stderr)

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, remaining: int) -> None:   # pooch sets the response's content-length (the rest, when resuming)
        self._total = self.offset + remaining if remaining else 0
        if self.bar is not None:
            self.bar.total = self._total or None
            self.bar.refresh()

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            if self._finishing:    # pooch's final update: show the true total instead of counted chunks
                self.bar.n = self._total or self.bar.n
                self.bar.refresh()
            else:
                self.bar.update(n)
            return
        if self._total and self.opts.progress_every_percent > 0:
            pct = 100.0 * min(self.offset + self.done, self._total) / self._total
            if pct >= self._next_pct:
                self.opts.log(f"  {self.name}: {pct:.0f}% of {self._total:,} B")
                while self._next_pct <= pct:
                    self._next_pct += self.opts.progress_every_percent

    def reset(self) -> None:      # pooch: reset + update(total) at the end, to fill the bar
        self._finishing = True
        self.done = 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- URL files (pooch)
class ResumingDownloader:
    """A pooch downloader that keeps received bytes in `<name>.part` and asks for the rest with a Range header.

    pooch.HTTPDownloader does the request and the streaming; this class only chooses the Range, appends to
    the .part file, and hands the complete file to pooch's temporary name (pooch then verifies and renames).
    """

    def __init__(self, e: ModelFile, opts: FetchOptions) -> None:
        self.e, self.opts = e, opts
        self.part = partial_path(e, opts.weights_dir)

    def __call__(self, url: str, output_file: str, pooch_obj, check_only: bool = False):
        import pooch
        import requests

        offset = self.part.stat().st_size if self.part.exists() else 0
        if offset:
            self.opts.log(f"  {self.e.name}: resuming at {offset:,} B ({self.part.name})")
        with open(self.part, "ab") as f:
            def restart_if_range_ignored(response, *args, **kwargs):
                # A server that ignores Range answers 200 with the whole file: start the .part over.
                if offset and response.status_code == 200:
                    f.seek(0)
                    f.truncate()
                    progress.offset = 0
                return response

            progress = _Progress(self.e.name, offset, self.opts)
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            http = pooch.HTTPDownloader(progressbar=progress, chunk_size=self.opts.chunk_bytes,
                                        timeout=self.opts.timeout_s, headers=headers,
                                        hooks={"response": restart_if_range_ignored})
            try:
                http(url, f, pooch_obj)
            except requests.HTTPError as err:
                # 416: the .part already holds the whole file (a fetch that died before the rename)
                if not (offset and err.response is not None and err.response.status_code == 416):
                    raise
            finally:
                progress.close()
        mismatch = check_pin(self.e, self.part) if not self.e.sha256 else None
        if mismatch:   # prefix-only pin: pooch cannot check it, so it is checked here, before the rename
            self.part.unlink()
            raise ValueError(f"{mismatch}. Deleted the download.")
        os.replace(self.part, output_file)


def _fetch_url(e: ModelFile, url: str, opts: FetchOptions) -> Path:
    import pooch

    pooch.get_logger().setLevel("WARNING")   # our own log lines say what is fetched
    known = f"sha256:{e.sha256}" if e.sha256 else None
    path = pooch.retrieve(url, known_hash=known, fname=e.name, path=str(opts.weights_dir),
                          downloader=ResumingDownloader(e, opts))
    return Path(path)


# ---------------------------------------------------------------- hub repos (huggingface_hub)
@contextlib.contextmanager
def _hub_online(timeout_s: float, progress: bool):
    """This command is the explicit request to download: lift HF_HUB_OFFLINE (and set the hub client's
    download timeout and progress bars) for its duration only; every other run stays offline."""
    from huggingface_hub import constants
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    saved = constants.HF_HUB_OFFLINE, constants.HF_HUB_DOWNLOAD_TIMEOUT, are_progress_bars_disabled()
    constants.HF_HUB_OFFLINE, constants.HF_HUB_DOWNLOAD_TIMEOUT = False, timeout_s
    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, constants.HF_HUB_DOWNLOAD_TIMEOUT = saved[0], saved[1]
        (disable_progress_bars if saved[2] else enable_progress_bars)()


def _fetch_hf(e: ModelFile, mirror: Optional[str], opts: FetchOptions) -> Path:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    tty = sys.stderr.isatty() if opts.progress is None else opts.progress
    with _hub_online(opts.timeout_s, tty):
        target = None
        for fname in e.hf_files:
            opts.log(f"  {e.name}: {e.source}/{fname}")
            p = Path(hf_hub_download(e.source, fname, revision=e.revision, endpoint=mirror,
                                     etag_timeout=opts.timeout_s))
            if fname == e.file_name:
                target = p
                meta = get_hf_file_metadata(hf_hub_url(e.source, fname, revision=e.revision, endpoint=mirror),
                                            timeout=opts.timeout_s)
                etag = (meta.etag or "").strip('"')
                got = sha256_file(p)
                problem = check_pin(e, p)
                if problem is None and len(etag) == 64 and etag != got:
                    problem = f"expected sha256 {etag} (the hub's ETag) but got {got}"
                if problem:
                    _remove_hf_file(p)
                    raise ValueError(f"{fname}: {problem}. Deleted the download.")
    return target


def _remove_hf_file(snapshot_path: Path) -> None:
    blob = snapshot_path.resolve()
    snapshot_path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


# ---------------------------------------------------------------- driver
def _status(err: BaseException) -> Optional[int]:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None) if response is not None else None


def _network_errors() -> tuple:
    """Transport failures of requests (pooch) and of the hub client (httpx2 in huggingface_hub 2.x)."""
    import requests

    errs = [requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError]
    with contextlib.suppress(ImportError):
        import httpx2

        errs.append(httpx2.TransportError)
    return tuple(errs)


def _retryable(err: BaseException) -> bool:
    code = _status(err)
    if code is not None:
        return code >= 500 or code == 429
    return isinstance(err, _network_errors())


def _describe(err: BaseException, e: ModelFile, url: str, opts: FetchOptions, final: bool = True) -> str:
    part = partial_path(e, opts.weights_dir)
    kept = (f". Kept {part.stat().st_size:,} B in {part}; run `emocache weights fetch {e.name}` again to resume"
            if final and e.kind == "url" and part.exists() and part.stat().st_size else "")
    code = _status(err)
    if code is not None:
        reason = getattr(err.response, "reason", None) or getattr(err.response, "reason_phrase", "")
        return f"{e.name}: {url}: HTTP {code} {reason}".rstrip()
    if "timed out" in str(err).lower() or "timeout" in type(err).__name__.lower():
        return f"{e.name}: {url}: timed out (no data for {opts.timeout_s:g} s, weights.fetch.timeout_s){kept}"
    if isinstance(err, _network_errors()):
        return f"{e.name}: {url}: connection failed or dropped ({type(err).__name__}: {err}){kept}"
    return f"{e.name}: {url}: {type(err).__name__}: {err}"


def fetch_one(e: ModelFile, opts: FetchOptions) -> Optional[Path]:
    """Download one entry unless it is already here and verified; returns its path (None on a dry run)."""
    here = location(e, opts.weights_dir)
    if here is not None:
        problem = check_pin(e, here)
        if problem is None:
            opts.log(f"{e.name}: present, {e.pin_text()}: {here}")
            return here
        # never overwrite or delete a file we did not write: the user decides what it is
        raise WeightsFetchError(f"{e.name}: {here} is present but does not match the catalog pin ({problem}). "
                                f"Move it away, then run `emocache weights fetch {e.name}` again.")
    url = source_url(e, opts.mirror)
    dest = opts.weights_dir / e.name if e.kind == "url" else "the Hugging Face cache"
    if opts.dry_run:
        opts.log(f"{e.name}: would fetch {url} ({e.size_text()}, {e.pin_text()}) -> {dest}")
        return None
    opts.log(f"{e.name}: fetching {url} ({e.size_text()}) -> {dest}")
    if e.kind == "url":
        opts.weights_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(opts.retries + 1):
        try:
            path = _fetch_url(e, url, opts) if e.kind == "url" else _fetch_hf(e, opts.mirror, opts)
            opts.log(f"{e.name}: ok, {e.pin_text()}: {path}")
            return path
        except ValueError as err:        # pooch or our pin check: wrong hash; the download is deleted
            partial_path(e, opts.weights_dir).unlink(missing_ok=True)
            raise WeightsFetchError(f"{e.name}: {url}: {err}") from err
        except Exception as err:
            if attempt < opts.retries and _retryable(err):
                wait = opts.backoff_s * 2 ** attempt
                opts.log(f"{_describe(err, e, url, opts, final=False)}; retry {attempt + 1}/{opts.retries} "
                         f"in {wait:g} s")
                time.sleep(wait)
                continue
            part = partial_path(e, opts.weights_dir)
            if part.exists() and part.stat().st_size == 0:
                part.unlink()
            raise WeightsFetchError(_describe(err, e, url, opts)) from err
    raise AssertionError("unreachable")


def fetch(entries: Iterable[ModelFile], opts: FetchOptions) -> tuple[list[Path], list[str]]:
    """Fetch each entry; go on after a failure. (paths fetched or present, error messages)."""
    done, errors = [], []
    for e in entries:
        try:
            p = fetch_one(e, opts)
            if p is not None:
                done.append(p)
        except WeightsFetchError as err:
            errors.append(str(err))
            opts.log(f"error: {err}")
    return done, errors
