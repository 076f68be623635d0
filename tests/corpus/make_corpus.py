"""Generate the bad-input corpus: media cut from the real shared test data with ffmpeg, plus a manifest.

Nothing here is a hand-edited binary: every file is made by ffmpeg (argument lists, no shell) from
the public files in shared/data, or is a byte-level damage of such a file (truncation, zero bytes),
so the corpus can be rebuilt anywhere:

    python tests/corpus/make_corpus.py OUT_DIR [SHARED_DATA_DIR]
    python tests/corpus/make_corpus.py --table      # the behaviour table of docs/SECURITY.md

Layout written under OUT_DIR:
    media/            the dataset root (every manifest path is relative to it)
    outside/          files OUTSIDE the root that manifest rows try to reach; must never be read
    manifest.csv      one row per case (CASES below), plus a row with non-UTF-8 bytes

Each case names what the pipeline must do with it, per extractor:
    rows     committed with >= 1 row
    empty    committed with 0 rows and a reason in its attrs (a documented empty modality)
    failed   in the store's failure table, the reason naming the file; the run goes on
    skipped  refused at listing time: a dataset problem naming the manifest line; never decoded
"""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

AUDIO = ("vggish", "egemaps")
TEXT = ("text.transcript",)
VIDEO = ("tracks", "faces", "pose")
EXTRACTORS = AUDIO + TEXT + VIDEO
LABELS = ["happy", "sad", "neutral"]            # the dataset's label vocabulary (others are 'unknown')

# Sources in shared/data (see its MANIFEST.md): real faces, real voices.
HAMILTON = "face_recognition/short_hamilton_clip.mp4"   # 10 s, 640x360, AAC stereo voice, one performer
SINGLE_FACE = "pyfeat/single_face.mp4"                   # 2.4 s, 640x360, one smiling face
JFK = "speech/jfk.flac"                                  # 11 s speech, 44.1 kHz stereo
PROMPT_8K = "asterisk_prompts_en/activated.wav"          # 8 kHz mono voice prompt


@dataclass
class Case:
    name: str
    path: Optional[str]                 # manifest path (relative to media/), None = text-only row
    expect: dict[str, str]              # extractor -> rows | empty | failed | skipped
    why: str                            # the behaviour, in words (goes into docs/SECURITY.md)
    make: Optional[Callable[[Path, Path, Path], None]] = None   # (media_root, outside_dir, shared) -> None
    start: str = ""
    end: str = ""
    labels: str = "happy"
    transcript: Optional[str] = "a short line"
    raw_row: Optional[bytes] = None     # written as-is instead of a csv row (non-UTF-8 bytes)
    listed: bool = True                 # False: must not appear in the clip table
    problem: Optional[str] = None       # substring of the dataset problem it must raise


def _all(audio: str, text: str, video: str, **over: str) -> dict[str, str]:
    out = {**{k: audio for k in AUDIO}, **{k: text for k in TEXT}, **{k: video for k in VIDEO}}
    out.update({k.replace("_", "."): v for k, v in over.items()})
    return out


SKIPPED = _all("skipped", "skipped", "skipped")


# ---------------------------------------------------------------- ffmpeg helpers
def ffmpeg(*args: str) -> None:
    from pipeline.media import ffmpeg_exe

    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"corpus: ffmpeg failed: {cmd}\n{proc.stderr.decode('utf-8', 'replace')[-2000:]}")


VIDEO_ENC = ["-c:v", "mpeg4", "-q:v", "6", "-vf", "scale=320:-2"]   # small, fast, in every ffmpeg build
AUDIO_ENC = ["-c:a", "aac", "-b:a", "64k"]


def cut_av(src: Path, dst: Path, start: float, dur: float, extra: tuple[str, ...] = (), fmt: str = "mp4") -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg("-ss", str(start), "-t", str(dur), "-i", str(src), *VIDEO_ENC, *AUDIO_ENC, *extra, "-f", fmt, str(dst))


def _truncated(keep: float, faststart: bool, start: float) -> Callable:
    def make(root: Path, outside: Path, shared: Path) -> None:
        tmp = root / f".full{start}.mp4"
        cut_av(shared / HAMILTON, tmp, start, 2.0, ("-movflags", "+faststart") if faststart else ())
        data = tmp.read_bytes()
        tmp.unlink()
        name = "truncated_tail.mp4" if faststart else "truncated.mp4"
        (root / name).write_bytes(data[: int(len(data) * keep)])
    return make


def _ok_av(root, outside, shared):
    cut_av(shared / HAMILTON, root / "ok_av.mp4", 0.0, 2.0)


def _zero(root, outside, shared):
    (root / "zero_bytes.mp4").write_bytes(b"")


def _no_audio(root, outside, shared):
    ffmpeg("-i", str(shared / SINGLE_FACE), "-t", "2", *VIDEO_ENC, "-an", str(root / "video_no_audio.mp4"))


def _audio_only(root, outside, shared):
    ffmpeg("-ss", "0", "-t", "3", "-i", str(shared / JFK), "-vn", *AUDIO_ENC, str(root / "audio_only.m4a"))


def _stereo_8k(root, outside, shared):
    ffmpeg("-i", str(shared / PROMPT_8K), "-ar", "8000", "-ac", "2", "-c:a", "pcm_s16le", str(root / "stereo_8k.wav"))


def _stereo_48k(root, outside, shared):
    ffmpeg("-ss", "3", "-t", "2.5", "-i", str(shared / JFK), "-ar", "48000", "-ac", "2", "-c:a", "pcm_s16le",
           str(root / "stereo_48k.wav"))


def _one_frame(root, outside, shared):
    ffmpeg("-ss", "1", "-i", str(shared / SINGLE_FACE), "-frames:v", "1", *VIDEO_ENC, "-an", str(root / "one_frame.mp4"))


def _half_second(root, outside, shared):
    cut_av(shared / HAMILTON, root / "half_second.mp4", 4.0, 0.5)


def _wrong_ext(root, outside, shared):
    cut_av(shared / HAMILTON, root / "really_an_mp4.wav", 6.0, 2.0)   # MP4 bytes behind a .wav name


def _not_media(root, outside, shared):
    (root / "not_media.mp4").write_text("this is a text file with a video extension\n" * 20)


def _unicode(root, outside, shared):
    cut_av(shared / HAMILTON, root / "sub dir ü" / "clip é 日本 (1).mp4", 8.0, 2.0)


def _outside(root, outside, shared):
    outside.mkdir(parents=True, exist_ok=True)
    ffmpeg("-ss", "5", "-t", "1.5", "-i", str(shared / JFK), "-ar", "16000", "-ac", "1", str(outside / "secret.wav"))


def _symlink(root, outside, shared):
    _outside(root, outside, shared)
    os.symlink(os.path.relpath(outside / "secret.wav", root), root / "link_to_outside.wav")


def _secret_ts(outside: Path, shared: Path) -> str:
    """Real media OUTSIDE the root in a container every playlist format accepts; returns its name."""
    outside.mkdir(parents=True, exist_ok=True)
    if not (outside / "secret.ts").exists():
        ffmpeg("-ss", "2", "-t", "2", "-i", str(shared / HAMILTON), "-c:v", "mpeg2video", "-vf", "scale=320:-2",
               "-c:a", "mp2", "-f", "mpegts", str(outside / "secret.ts"))
    return "secret.ts"


_HLS = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{}\n#EXT-X-ENDLIST\n"


def _hls(root, outside, shared):
    (root / "playlist.m3u8").write_text(_HLS.format(f"../outside/{_secret_ts(outside, shared)}"))


def _dash(root, outside, shared):
    (root / "manifest.mpd").write_text(
        '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        'mediaPresentationDuration="PT2S" minBufferTime="PT1S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">'
        '<Period><AdaptationSet mimeType="video/mp2t"><Representation id="1" bandwidth="1000">'
        f'<BaseURL>../outside/{_secret_ts(outside, shared)}</BaseURL></Representation></AdaptationSet></Period></MPD>\n')


def _ffconcat(root, outside, shared):
    # concat's own "safe" mode refuses '..' but not a plain name that is a symlink leading out
    os.symlink(outside / _secret_ts(outside, shared), root / "inner_link.ts")
    (root / "list.ffconcat").write_text("ffconcat version 1.0\nfile 'inner_link.ts'\n")


def _fifo_playlist(root, outside, shared):
    outside.mkdir(parents=True, exist_ok=True)
    if not (outside / "fifo.ts").exists():
        os.mkfifo(outside / "fifo.ts")     # ffmpeg opening it would block until media.ffmpeg_timeout_s
    (root / "fifo.m3u8").write_text(_HLS.format("../outside/fifo.ts"))


def _rotated(root, outside, shared):
    """Pixels stored turned 90 degrees clockwise, a display matrix turning them back (a phone video)."""
    turned = root / ".turned.mp4"
    ffmpeg("-i", str(shared / SINGLE_FACE), "-t", "2", "-c:v", "mpeg4", "-q:v", "6",
           "-vf", "scale=320:-2,transpose=clock", "-an", str(turned))
    ffmpeg("-display_rotation", "90", "-i", str(turned), "-c", "copy", str(root / "rotated.mp4"))
    turned.unlink()


def _long(root, outside, shared):
    # 40 s by looping the 10 s clip with stream copy; the corpus run sets media.max_clip_seconds to 30
    ffmpeg("-stream_loop", "3", "-i", str(shared / HAMILTON), "-c", "copy", "-t", "40", str(root / "long_40s.mp4"))


def _long_audio(root, outside, shared):
    # 20 s of real speech (the 11 s recording looped), 48 kHz stereo AAC; the corpus run spills audio from 15 s
    ffmpeg("-stream_loop", "1", "-i", str(shared / JFK), "-t", "20", "-ar", "48000", "-ac", "2", "-vn", *AUDIO_ENC,
           str(root / "long_audio_20s.m4a"))


def _symlink_loop(root, outside, shared):
    if not (root / "loop_a.mp4").is_symlink():
        os.symlink("loop_b.mp4", root / "loop_a.mp4")
        os.symlink("loop_a.mp4", root / "loop_b.mp4")


def _fifo_in_root(root, outside, shared):
    if not (root / "fifo.wav").exists():
        os.mkfifo(root / "fifo.wav")


def _past_end(root, outside, shared):
    cut_av(shared / SINGLE_FACE, root / "segment_past_end.mp4", 0.5, 1.5)


def _dup(root, outside, shared):
    ffmpeg("-ss", "7", "-t", "2", "-i", str(shared / JFK), "-c:a", "flac", str(root / "listed_twice.flac"))


LONG_TEXT = " ".join(f"word{i % 997}" for i in range(10_000))
OK = _all("rows", "rows", "rows")

CASES: list[Case] = [
    Case("reference clip (voice + face)", "ok_av.mp4", OK, "processed", _ok_av),
    Case("truncated MP4 (index at the end, cut at 50%)", "truncated.mp4",
         _all("failed", "rows", "failed"),
         "audio and video fail at decode (ffmpeg: moov atom not found), recorded per extractor; the transcript "
         "is still encoded", _truncated(0.5, faststart=False, start=2.0)),
    Case("truncated MP4 (index first, cut at 60%)", "truncated_tail.mp4", OK,
         "decodes up to the cut: rows cover the part that is there", _truncated(0.6, faststart=True, start=6.0)),
    Case("zero-byte file", "zero_bytes.mp4", _all("failed", "rows", "failed"),
         "audio and video fail at decode ('file is empty (0 bytes)'); the transcript is still encoded", _zero),
    Case("video without audio", "video_no_audio.mp4", _all("empty", "rows", "rows"),
         "audio extractors commit 0 rows with reason 'no audio stream'; video processed", _no_audio),
    Case("audio-only file", "audio_only.m4a", _all("rows", "rows", "empty"),
         "video extractors commit 0 rows with reason 'no video stream'; audio processed", _audio_only),
    Case("8 kHz stereo audio", "stereo_8k.wav", _all("rows", "rows", "empty"),
         "read by libsndfile, channels averaged, resampled to 16 kHz (media.resampler resampy, as the VGGish reference); processed", _stereo_8k),
    Case("48 kHz stereo audio", "stereo_48k.wav", _all("rows", "rows", "empty"),
         "read by libsndfile, channels averaged, resampled to 16 kHz (media.resampler resampy, as the VGGish reference); processed", _stereo_48k),
    Case("1-frame video", "one_frame.mp4", _all("empty", "rows", "rows", tracks="empty"),
         "the frame is decoded (repeated to frames_per_clip); DeepSORT confirms a track only after n_init frames, so "
         "tracks commits 0 rows (target_by: none) and faces/pose search the whole frame; no audio stream: audio empty",
         _one_frame),
    Case("0.5 s clip (shorter than one VGGish example)", "half_second.mp4", _all("rows", "rows", "rows", vggish="empty"),
         "VGGish commits 0 rows with an 'empty_reason' (needs 0.96 s); eGeMAPS and video processed", _half_second),
    Case("wrong extension (MP4 named .wav)", "really_an_mp4.wav", OK,
         "ffmpeg reads the content, not the name: processed", _wrong_ext),
    Case("text file named .mp4", "not_media.mp4", _all("failed", "rows", "failed"),
         "audio and video fail at decode ('cannot read media' / ffmpeg's reason); transcript still encoded", _not_media),
    Case("path with spaces and unicode", "sub dir ü/clip é 日本 (1).mp4", OK, "processed", _unicode),
    Case("segment past the end of the file", "segment_past_end.mp4", _all("failed", "rows", "failed"),
         "start 30 s in a 1.5 s file: decode yields nothing and fails naming the file", _past_end,
         start="30", end="32"),
    Case("manifest row ../../etc/passwd", "../../etc/passwd", SKIPPED,
         "refused at listing: 'resolves outside the dataset root'; never opened", listed=False,
         problem="outside the dataset root"),
    Case("absolute path in the manifest", "/etc/passwd", SKIPPED,
         "refused at listing: 'resolves outside the dataset root'; never opened", listed=False,
         problem="outside the dataset root"),
    Case("manifest row to a real file outside the root", "../outside/secret.wav", SKIPPED,
         "refused at listing: 'resolves outside the dataset root'; never opened", _outside, listed=False,
         problem="outside the dataset root"),
    Case("symlink inside the root pointing outside", "link_to_outside.wav", SKIPPED,
         "the link is resolved first, then refused: 'resolves outside the dataset root'; never opened",
         _symlink, listed=False, problem="outside the dataset root"),
    Case("missing file", "not_there.mp4", SKIPPED, "refused at listing: 'media file not found'",
         listed=False, problem="media file not found"),
    Case("non-UTF-8 bytes in a manifest row", "stereo_8k.wav", SKIPPED,
         "that row is refused at listing ('not valid UTF-8', file:line); the other rows are listed", listed=False,
         raw_row=b"stereo_8k.wav,,,happy,caf\xe9 cr\xe8me\n", problem="not valid UTF-8"),
    Case("10,000-word transcript (text-only row)", None, _all("empty", "rows", "empty"),
         "encoded from its first text.max_length tokens; attrs say truncated: true and the full token count; "
         "no media: audio and video commit 0 rows ('text-only clip')", transcript=LONG_TEXT),
    Case("NaN label", "stereo_48k.wav", _all("rows", "rows", "empty"),
         "kept unlabelled (labels [], not a class called 'NaN'); its features are extracted",
         start="0", end="1.5", labels="NaN"),
    Case("unknown label", "stereo_48k.wav", _all("rows", "rows", "empty"),
         "dataset problem 'unknown label(s)' naming the line; the clip is kept without that label",
         start="1", end="2.4", labels="ecstatic", problem="unknown label"),
    Case("the same clip listed twice", "listed_twice.flac", _all("rows", "rows", "empty"),
         "listed once (dataset problem 'duplicate of <first line>'), extracted once", _dup),
    Case("HLS playlist (.m3u8) pointing outside the root", "playlist.m3u8", _all("failed", "rows", "failed"),
         "ffmpeg runs with `-protocol_whitelist file` and a container demuxer whitelist: the playlist is refused "
         "('not a plain media container'); the file it names is never opened (strace test)", _hls),
    Case("DASH manifest (.mpd) pointing outside the root", "manifest.mpd", _all("failed", "rows", "failed"),
         "refused by the demuxer whitelist ('not a plain media container'); nothing it names is opened", _dash),
    Case("ffconcat list naming a symlink that leads out", "list.ffconcat", _all("failed", "rows", "failed"),
         "refused by the demuxer whitelist ('not a plain media container'); nothing it names is opened", _ffconcat),
    Case("playlist pointing at a FIFO", "fifo.m3u8", _all("failed", "rows", "failed"),
         "refused at once by the demuxer whitelist; the FIFO is never opened, so nothing blocks until the timeout",
         _fifo_playlist),
    Case("rotated video (display matrix, 90 degrees)", "rotated.mp4", _all("empty", "rows", "rows"),
         "decoded upright at its displayed size (ffmpeg auto-rotates; the probe reads the display matrix), not "
         "squashed; no audio stream: audio empty", _rotated),
    Case("clip longer than media.max_clip_seconds (40 s, limit 30 s)", "long_40s.mp4",
         _all("failed", "rows", "failed"),
         "recorded as failed ('over media.max_clip_seconds'), nothing decoded; a film cannot take the run down",
         _long),
    Case("audio over media.spill_audio_seconds (20 s, 48 kHz stereo AAC; limit 15 s)", "long_audio_20s.m4a",
         _all("rows", "rows", "empty"),
         "streamed from ffmpeg's pipe into a temp file, resampled in blocks and read in slices (the same samples as "
         "in memory); eGeMAPS functionals in two passes (two_pass_seconds 15 in the corpus run); the temp file is "
         "removed", _long_audio),
    Case("symlink loop", "loop_a.mp4", SKIPPED, "refused at listing: 'is a symlink loop' (file:line)",
         _symlink_loop, listed=False, problem="symlink loop"),
    Case("FIFO named like media", "fifo.wav", SKIPPED, "refused at listing: 'is a FIFO, not a media file'",
         _fifo_in_root, listed=False, problem="is a FIFO"),
    Case("NUL byte in a path", None, SKIPPED, "refused at listing: 'contains a NUL byte' (file:line)",
         raw_row=b"ok\x00av.mp4,,,happy,nul\n", listed=False, problem="NUL byte"),
    Case("text field over 128 KB", None, SKIPPED,
         "that row is refused at listing ('field larger than field limit', file:line); the other rows are listed",
         raw_row=b"stereo_48k.wav,,,happy," + b"y" * 140_000 + b"\n", listed=False, problem="field larger"),
    Case("path through a folder that does not exist", "nosuchdir/../ok_av.mp4", SKIPPED,
         "refused at listing: 'goes through .../nosuchdir, which does not exist'", listed=False,
         problem="which does not exist"),
    Case("row with neither media nor text", None, SKIPPED,
         "refused at listing: 'clip has neither a media path nor any text'", transcript="", listed=False,
         problem="neither a media path nor any text"),
]
# An unclosed quote: its row swallows the next line. Last, so the line numbers of the cases above hold.
CASES.append(Case("unbalanced quote (swallows the next row)", None, SKIPPED,
                  "detected: the row holding lines that look like rows is refused ('unbalanced quote', file:line, "
                  "the lines it ran to); nothing is merged silently",
                  raw_row=b'ok_av.mp4,,,happy,"unclosed quote\nstereo_8k.wav,,,sad,swallowed\n', listed=False,
                  problem="unbalanced quote"))
# The second listing of 'listed_twice.flac': a dataset problem, not a second clip.
DUPLICATE_ROW = {"path": "listed_twice.flac", "start": "", "end": "", "labels": "sad", "transcript": "a short line"}


def build_corpus(out: Path, shared: Path) -> Path:
    """Write media/, outside/ and manifest.csv under `out`. Returns the manifest path."""
    root, outside = out / "media", out / "outside"
    root.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        if case.make is not None and not _made(case, root, outside):
            case.make(root, outside, shared)
    manifest = out / "manifest.csv"
    cols = ["path", "start", "end", "labels", "transcript"]
    with open(manifest, "wb") as f:
        f.write((",".join(cols) + "\n").encode())
        for case in CASES:
            if case.raw_row is not None:
                f.write(case.raw_row)
                continue
            row = {"path": case.path or "", "start": case.start, "end": case.end, "labels": case.labels,
                   "transcript": case.transcript or ""}
            f.write(_csv_line(row, cols))
            if case.make is _dup:
                f.write(_csv_line(DUPLICATE_ROW, cols))
    return manifest


def _made(case: Case, root: Path, outside: Path) -> bool:
    return case.path is not None and (root / case.path).exists() and case.make is not _outside


def _csv_line(row: dict, cols: list[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([row[c] for c in cols])
    return buf.getvalue().encode("utf-8")


def manifest_line(case: Case) -> int:
    """1-based line of the case's row in manifest.csv (the header is line 1)."""
    line = 2
    for c in CASES:
        if c is case:
            return line
        line += 1 + int(c.make is _dup)
    raise ValueError(case.name)


def markdown_table() -> str:
    """The behaviour table of docs/SECURITY.md (the corpus test checks the doc holds exactly this)."""
    head = "| input | " + " | ".join(EXTRACTORS) + " | behaviour |"
    sep = "|" + "---|" * (len(EXTRACTORS) + 2)
    rows = [f"| {c.name} | " + " | ".join(c.expect[k] for k in EXTRACTORS) + f" | {c.why} |" for c in CASES]
    return "\n".join([head, sep, *rows])


if __name__ == "__main__":
    if sys.argv[1:] == ["--table"]:          # the docs/SECURITY.md table, to paste after changing CASES
        print(markdown_table())
        sys.exit(0)
    repo = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(repo))
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("corpus_out")
    shared_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else next(
        p for p in [repo.parent / "shared" / "data", Path("/work/shared/data")] if p.exists())
    print(build_corpus(target, shared_dir))
