"""Decode media with ffmpeg (argument lists via ffmpeg-python, never a shell).

All resampling happens here, once: every audio consumer gets 16 kHz mono float32.
Frames come out as RGB uint8 at `media.decode_fps`, scaled so the long side is <= `media.max_side`.
No system ffmpeg is assumed: the imageio-ffmpeg wheel's static binary is used when none is on PATH.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import ffmpeg
import numpy as np

from pipeline import threads
from pipeline.errors import InputError
from pipeline.spilled_audio import SpilledAudio, SpillWriter


class MediaError(InputError, RuntimeError):
    """A media file could not be decoded; the message names the file and ffmpeg's reason."""


class NoStreamError(MediaError):
    """The file has no stream of the requested kind (e.g. a video without audio): an empty modality."""


class MediaChangedError(MediaError):
    """The file is not the one listed: it now resolves elsewhere, or its size/mtime changed since listing."""


class ClipTooLongError(MediaError):
    """The clip is longer than `media.max_clip_seconds`: recorded as a failure instead of decoded."""


# Counts decodes per process (tests prove decode-once); EMOCACHE_DECODE_LOG also logs them to a file.
DECODE_COUNTER: dict[str, int] = {"audio": 0, "frames": 0}


_COUNTER_LOCK = threading.Lock()   # the runner decodes in threads


def _log_decode(kind: str, path: str) -> None:
    with _COUNTER_LOCK:
        DECODE_COUNTER[kind] += 1
    log = os.environ.get("EMOCACHE_DECODE_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, "path": str(path)}) + "\n")


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_version() -> str:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


@dataclass
class MediaInfo:
    path: str
    duration: Optional[float]
    has_audio: bool
    has_video: bool
    width: int = 0
    height: int = 0
    fps: Optional[float] = None
    sample_rate: Optional[int] = None
    channels: Optional[int] = None
    rotation: float = 0.0     # display-matrix rotation (degrees); width/height are AFTER it, as decoded


def _displayed(info: "MediaInfo") -> "MediaInfo":
    """ffmpeg auto-rotates on decode: a 90/270-degree display matrix swaps the frame's width and height."""
    if round(abs(info.rotation)) % 180 == 90:
        info.width, info.height = info.height, info.width
    return info


# Container demuxers ffmpeg may use on dataset media. Playlist / manifest demuxers (hls, dash, concat,
# image2 patterns, ...) open further files named INSIDE the data, so they are not on the list, and the
# `file` protocol is the only one allowed: probe and decode read exactly the one file they are given.
DEMUXERS = ("mov", "matroska", "avi", "wav", "w64", "flac", "mp3", "ogg", "aac", "aiff", "asf", "flv",
            "mpegts", "mpeg")


def confine_options() -> dict[str, str]:
    """ffmpeg/ffprobe input options that confine it to the named local file (see DEMUXERS)."""
    return {"protocol_whitelist": "file", "format_whitelist": ",".join(DEMUXERS)}


def _url(p: Path) -> str:
    # 'file:' so that a name like 'concat:a|b' or 'subfile,,start,...' is never read as another protocol
    return f"file:{p}"


def _input(p: Path, **kw):
    """The ffmpeg-python input node for `p`, confined to that one file."""
    return ffmpeg.input(_url(p), **confine_options(), **kw)


def _ffmpeg(args: list[str], timeout: float, text: bool = False) -> subprocess.CompletedProcess:
    """Run ffmpeg; never with our stdin (a background job reading the tty is stopped by the shell)."""
    return subprocess.run(args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          **({"text": True, "errors": "surrogateescape"} if text else {}))


def _ffmpeg_pipe(args: list[str], timeout: float, capacity: int,
                 sink: Optional[Callable[[memoryview], None]] = None) -> subprocess.CompletedProcess:
    """Run ffmpeg and read its stdout straight into one buffer (no bytes object + copy, which doubled the
    peak). `capacity` is an upper bound, not a cost: pages never written are never resident. The result's
    stdout is a uint8 ndarray of exactly what ffmpeg wrote. With `sink`, the output is handed to it a block
    at a time instead and nothing of it is kept (stdout is then empty)."""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    killed: list[bool] = []
    timer = threading.Timer(timeout, lambda: (killed.append(True), proc.kill()))
    timer.start()
    buf = np.empty(max(1, capacity if sink is None else PIPE_BLOCK_BYTES), dtype=np.uint8)
    pos, extra = 0, []
    try:
        view = memoryview(buf)
        while True:
            if sink is not None:
                n = proc.stdout.readinto(view)
                if not n:
                    break
                sink(view[:n])
            elif pos < len(buf):
                n = proc.stdout.readinto(view[pos:])
                if not n:
                    break
                pos += n
            else:               # more than announced (a wrong duration in the header): keep it all
                chunk = proc.stdout.read(1 << 24)
                if not chunk:
                    break
                extra.append(chunk)
        view.release()
        proc.wait()
        reader.join()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if killed:
        raise subprocess.TimeoutExpired(args, timeout)
    out = np.concatenate([buf[:pos], *(np.frombuffer(c, np.uint8) for c in extra)]) if extra else buf[:pos]
    return subprocess.CompletedProcess(args, proc.returncode, out, b"".join(err))


# stdout read per call when ffmpeg's output is streamed to a sink (a spilled decode)
PIPE_BLOCK_BYTES = 1 << 20


def check_length(info: "MediaInfo", start: float, end: Optional[float], max_seconds: Optional[float]) -> None:
    """Refuse a clip longer than `max_seconds` (media.max_clip_seconds) before anything is decoded."""
    if not max_seconds or info.duration is None:
        return
    length = (min(end, info.duration) if end is not None else info.duration) - start
    if length > max_seconds:
        raise ClipTooLongError(f"{info.path}: clip is {length:.0f} s long{_segment_hint(start, end, info.duration)}, "
                               f"over media.max_clip_seconds = {max_seconds:g}: not decoded (raise the limit "
                               f"or cut the file into segments in the manifest)")


def _segment_length(info: Optional["MediaInfo"], start: float, end: Optional[float]) -> Optional[float]:
    if end is not None:
        return max(0.0, end - start)
    if info is not None and info.duration is not None:
        return max(0.0, info.duration - start)
    return None


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
# the size follows a ", " (a codec tag like '0x31637661' must not read as a size); 1x1 is a valid size
_VIDEO = re.compile(r"Stream #\S+.*?: Video: .*?, (\d{1,5})x(\d{1,5})\b")
_ROTATION = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees")
_FPS = re.compile(r"(\d+(?:\.\d+)?)\s*(?:fps|tbr)")
_AUDIO = re.compile(r"Stream #\S+.*?: Audio: [^,]+, (\d+) Hz, ([^,]+)")


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise MediaError(f"{p}: file not found") from None
    except OSError as e:
        raise MediaError(f"{p}: cannot open: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        # a FIFO would block ffmpeg until the timeout; a directory is no media
        raise MediaError(f"{p}: not a regular file ({_file_kind(st.st_mode)})")
    if st.st_size == 0:
        raise MediaError(f"{p}: file is empty (0 bytes)")
    return p


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a plain file"


def probe(path: str | os.PathLike) -> MediaInfo:
    """Streams and duration. ffprobe when installed; else ffmpeg's own header dump (the wheel has no ffprobe)."""
    p = _check_file(path)
    if shutil.which("ffprobe"):
        try:
            data = ffmpeg.probe(_url(p), cmd="ffprobe", **confine_options())
        except ffmpeg.Error as e:
            raise MediaError(f"{p}: cannot read media: {_tail(e.stderr)}") from None
        v = next((s for s in data["streams"] if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic")), None)
        a = next((s for s in data["streams"] if s.get("codec_type") == "audio"), None)
        dur = data.get("format", {}).get("duration")
        fps = None
        if v and v.get("avg_frame_rate", "0/0") != "0/0":
            num, den = v["avg_frame_rate"].split("/")
            fps = float(num) / float(den) if float(den) else None
        rot = next((float(sd["rotation"]) for sd in (v or {}).get("side_data_list", []) if "rotation" in sd), 0.0)
        return _displayed(MediaInfo(str(p), float(dur) if dur else None, a is not None, v is not None,
                                    int(v["width"]) if v else 0, int(v["height"]) if v else 0, fps,
                                    int(a["sample_rate"]) if a else None, int(a.get("channels", 0)) if a else None,
                                    rot))
    opts = [a for k, v in confine_options().items() for a in (f"-{k}", v)]
    proc = _ffmpeg([ffmpeg_exe(), "-nostdin", "-hide_banner", *opts, "-i", _url(p)], timeout=60, text=True)
    # ffmpeg echoes the file name in its header dump: take it out, so a name cannot fake a field
    err = proc.stderr.replace(_url(p), "<input>").replace(str(p), "<input>")
    if "Invalid data found" in err or "Duration" not in err:
        raise MediaError(f"{p}: cannot read media: {_tail(proc.stderr)}")
    m = _DURATION.search(err)
    dur = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else None
    vid = _VIDEO.search(err)
    aud = _AUDIO.search(err)
    fps, rot = None, 0.0
    if vid:
        line, _, rest = err[vid.start():].partition("\n")
        f = _FPS.search(line)
        fps = float(f[1]) if f else None
        r = _ROTATION.search(rest.split("Stream #", 1)[0])    # the video stream's own side data
        rot = float(r[1]) if r else 0.0
    return _displayed(MediaInfo(str(p), dur, aud is not None, vid is not None,
                                int(vid[1]) if vid else 0, int(vid[2]) if vid else 0, fps,
                                int(aud[1]) if aud else None, None, rot))


REFUSED_FORMAT = ("not a plain media container (a playlist, manifest or concat list would make ffmpeg "
                  "read other files; only these demuxers are allowed: " + ", ".join(DEMUXERS) + ")")


def _tail(stderr: bytes | str | None, n: int = 3) -> str:
    if stderr is None:
        return "(no message)"
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    if "Format not on whitelist" in stderr or "Protocol not on whitelist" in stderr:
        return REFUSED_FORMAT
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "(no message)"


def _seek(start: float, end: Optional[float]) -> dict:
    """Segment bounds as OUTPUT options: exact on the output clock. As input options they are cut short
    on files whose streams start at different times (seen on MP4/AVI with a late video stream)."""
    kw = {}
    if start:
        kw["ss"] = start
    if end is not None:
        kw["t"] = max(end - start, 0.0)
    return kw


def decode_audio(path: str | os.PathLike, sample_rate: int = 16000, start: float = 0.0,
                 end: Optional[float] = None, timeout: float = 600.0,
                 info: Optional["MediaInfo"] = None, resampler: str = "swr",
                 spill_seconds: Optional[float] = None):
    """Mono float32 at `sample_rate`, resampled by `resampler` (pipeline/resample.py). swr / soxr: ffmpeg
    downmixes and resamples. resampy: as the VGGish reference, the file's own rate is read (libsndfile
    in-process for plain audio files, else ffmpeg), channels are averaged, then resampy's kaiser_best.

    Audio of at least `spill_seconds` (None: never) is decoded block by block into a temp file and returned as
    a SpilledAudio (pipeline/spilled_audio.py): the same samples, never all in memory."""
    from pipeline import resample

    p = _check_file(path)
    native = resample.decodes_native_rate(resampler)   # then a WAV header tells the file's rate
    if native and p.suffix.lower() in SOUNDFILE_SUFFIXES:
        read = _read_soundfile(p, start, end, sample_rate, spill_seconds)
        if read is not None:
            _log_decode("audio", str(p))
            if read[1].size == 0 and (end is None or end > start):
                raise MediaError(f"{p}: decoded 0 audio samples{_segment_hint(start, end)}")
            return _resampled(read[1], read[0], sample_rate)
    length = _segment_length(info, start, end)
    spill = spill_seconds is not None and length is not None and length >= spill_seconds
    # room for the whole segment (+1 s slack; native: up to 48 kHz stereo); unknown length: an hour, grown
    # past that if needed
    per_second = NATIVE_BYTES_PER_SECOND if native else sample_rate * 4
    capacity = int(((length if length is not None else 3600.0) + 1.0) * per_second)
    _log_decode("audio", str(p))
    # native: all channels come out and are averaged here, as the reference does (ffmpeg's downmix weights differ)
    mix = {} if native else {"ac": 1}
    stream = _input(p, **threads.ffmpeg_input_options()).output(
        "pipe:", format="wav" if native else "f32le", acodec="pcm_f32le", map="0:a:0", **mix,
        **resample.ffmpeg_output_options(resampler, sample_rate), **_seek(start, end))
    args = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", *stream.get_args()]
    # a long clip streams from ffmpeg's pipe into a spill file, channels averaged on the way (ffmpeg itself
    # still opens only the one input file)
    spilled = _SpillingPipe(p, native, sample_rate) if spill else None
    try:
        proc = _ffmpeg_pipe(args, timeout, capacity, sink=spilled.feed if spilled else None)
        if proc.returncode != 0:
            msg = _tail(proc.stderr)
            # ffmpeg words a missing audio stream differently across versions.
            if any(m in msg for m in ("matches no streams", "does not contain any stream", "'0:a:0' for option 'map'")):
                raise NoStreamError(f"{p}: no audio stream")
            raise MediaError(f"{p}: ffmpeg could not decode audio: {msg}")
        if spilled is not None:
            rate, audio = spilled.finish()
            audio = _resampled(audio, rate, sample_rate)
        elif native:
            rate, audio = wav_float32(memoryview(proc.stdout), p, sample_rate)   # a view: no copy of the decoded bytes
            audio = _resampled(audio, rate, sample_rate)
        else:
            audio = proc.stdout[: len(proc.stdout) // 4 * 4].view(np.float32)
    except BaseException:
        if spilled is not None:
            spilled.discard()
        raise
    if audio.size == 0 and (end is None or end > start):
        raise MediaError(f"{p}: decoded 0 audio samples{_segment_hint(start, end)}: {_tail(proc.stderr)}")
    return audio


def _resampled(audio, rate: int, target_rate: int):
    """resampy kaiser_best to the target rate: in memory for an array, block by block for a spilled clip."""
    from pipeline import resample

    if not audio.size:
        return np.zeros(0, np.float32)
    if not isinstance(audio, SpilledAudio):
        return resample.resampy_kaiser_best(audio, rate, target_rate)
    if rate == target_rate:
        return audio                       # float32 already (_mono_dtype)
    with SpillWriter(np.float32) as out:
        for block in resample.resampy_kaiser_best_blocks(audio, rate, target_rate, SPILL_BLOCK_SAMPLES):
            out.write(block)
    audio.close()                          # the native-rate float64 samples are no longer needed
    return out.finish()


class _SpillingPipe:
    """ffmpeg's audio output (float32 WAV with the file's channels, or mono f32le) written into a spill as
    it arrives, channels averaged as `wav_float32` averages them; the WAV header is parsed from the stream's
    first bytes (its sizes are not trusted: on a pipe ffmpeg cannot fill them in)."""

    def __init__(self, path: Path, wav: bool, target_rate: int) -> None:
        self.path, self.wav, self.target_rate = path, wav, target_rate
        self.rate = None if wav else target_rate
        self.channels = None if wav else 1
        self.head = bytearray()
        self.rest = b""
        self.out: Optional[SpillWriter] = None if wav else SpillWriter(np.float32)

    def feed(self, data: memoryview) -> None:
        if self.out is None:                      # still in the WAV header
            self.head += data
            found = _wav_format(bytes(self.head), self.path)
            if found is None:
                if len(self.head) > WAV_HEADER_MAX_BYTES:
                    raise MediaError(f"{self.path}: ffmpeg's WAV stream has no fmt/data chunk")
                return
            self.rate, self.channels, body = found
            self.out = SpillWriter(_mono_dtype(self.rate, self.target_rate))
            data, self.head = memoryview(bytes(self.head)[body:]), bytearray()
        frame = 4 * self.channels
        raw = self.rest + bytes(data)
        whole = len(raw) // frame * frame
        self.rest = raw[whole:]
        if whole:
            samples = np.frombuffer(raw[:whole], np.float32).reshape(-1, self.channels)
            self.out.write(_channel_mean(samples))

    def finish(self) -> tuple[int, SpilledAudio]:
        if self.out is None:
            raise MediaError(f"{self.path}: ffmpeg's WAV stream has no fmt/data chunk")
        return self.rate, self.out.finish()

    def discard(self) -> None:
        if self.out is not None:
            self.out.discard()


# a WAV stream whose fmt/data chunks are not within this many bytes is not one ffmpeg wrote
WAV_HEADER_MAX_BYTES = 1 << 16


def _wav_format(head: bytes, path: Path) -> Optional[tuple[int, int, int]]:
    """(rate, channels, offset of the samples) from the first bytes of a WAV stream; None: not all there yet."""
    if len(head) >= 12 and (head[:4] != b"RIFF" or head[8:12] != b"WAVE"):
        raise MediaError(f"{path}: ffmpeg did not write a WAV stream")
    pos, rate, channels = 12, None, 1
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if cid == b"fmt ":
            if pos + 16 > len(head):
                return None
            channels = max(1, int.from_bytes(head[pos + 10:pos + 12], "little"))
            rate = int.from_bytes(head[pos + 12:pos + 16], "little")
        elif cid == b"data":
            return None if rate is None else (rate, channels, pos + 8)
        pos += 8 + size + (size & 1)
    return None


# Plain audio files libsndfile reads in-process (no ffmpeg process), as the VGGish reference reads WAV.
SOUNDFILE_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".aiff", ".aif"})
# decode buffer estimate for native-rate float32 WAV from ffmpeg (48 kHz stereo); a longer stream just grows it
NATIVE_BYTES_PER_SECOND = 48000 * 2 * 4


def _read_soundfile(p: Path, start: float, end: Optional[float], target_rate: Optional[int],
                    spill_seconds: Optional[float] = None) -> Optional[tuple[int, np.ndarray]]:
    """(rate, mono samples, channels averaged) via soundfile, or None when libsndfile cannot read it (then
    ffmpeg decodes it). int16 comes out as x / 32768, the reference's scaling. Read a block at a time into one
    mono buffer (see _channel_mean), or into a SpilledAudio when the segment lasts `spill_seconds` or more.
    `target_rate` None: no resampling follows (float32)."""
    import soundfile as sf

    try:
        with sf.SoundFile(str(p)) as f:
            rate = f.samplerate
            first = int(round(start * rate)) if start else 0
            last = int(round(end * rate)) if end is not None else f.frames
            if first:
                f.seek(min(first, f.frames))
            n = max(0, min(last, f.frames) - first)
            dtype = _mono_dtype(rate, rate if target_rate is None else target_rate)
            spill = spill_seconds is not None and n >= spill_seconds * rate
            out = SpillWriter(dtype) if spill else np.empty(n, dtype)
            pos = 0
            try:
                while pos < n:
                    block = f.read(min(MEAN_BLOCK_SAMPLES, n - pos), dtype="float32", always_2d=True)
                    if not len(block):
                        break
                    if spill:
                        out.write(_channel_mean(block))
                    else:
                        out[pos:pos + len(block)] = _channel_mean(block)
                    pos += len(block)
            except BaseException:
                if spill:
                    out.discard()
                raise
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    return rate, (out.finish() if spill else out[:pos])


# Rows per block of the channel mean: the result does not depend on it, only the transient float64 block does.
MEAN_BLOCK_SAMPLES = 1 << 16
# Output samples per block when a spilled clip is resampled (transient memory only; same samples)
SPILL_BLOCK_SAMPLES = 1 << 20


def _mono_dtype(rate: int, target_rate: int):
    """float32 when no resampling follows (the float64 mean, stored as float32, is what resampling to the
    same rate returned before); float64 when resampy's filter is still to run on it."""
    return np.float32 if rate == target_rate else np.float64


def _channel_mean(x: np.ndarray) -> np.ndarray:
    """(S, C) -> (S,) float64 mean over channels, as the reference averages them; a mono input is itself."""
    return x[:, 0] if x.shape[1] == 1 else x.astype(np.float64).mean(axis=1)


def wav_float32(data: bytes, path: Path, target_rate: int) -> tuple[int, np.ndarray]:
    """(sample rate, samples averaged over channels) of the float32 WAV ffmpeg wrote to a pipe. Chunk sizes
    are not trusted: on a pipe ffmpeg cannot seek back to fill them in, so data runs to the end of the bytes.
    Mono at the target rate is a view of `data`; otherwise the mean is taken a block at a time."""
    found = _wav_format(bytes(data[:WAV_HEADER_MAX_BYTES]), path)
    if found is None:
        if bytes(data[:4]) != b"RIFF":
            raise MediaError(f"{path}: ffmpeg did not write a WAV stream")
        raise MediaError(f"{path}: ffmpeg's WAV stream has no fmt/data chunk")
    rate, channels, start = found
    body = data[start:]
    samples = np.frombuffer(body[: len(body) // (4 * channels) * 4 * channels], dtype=np.float32).reshape(-1, channels)
    dtype = _mono_dtype(rate, target_rate)
    if channels == 1 and dtype == np.float32:
        return rate, samples[:, 0]
    out = np.empty(len(samples), dtype)
    for s0 in range(0, len(samples), MEAN_BLOCK_SAMPLES):
        out[s0:s0 + MEAN_BLOCK_SAMPLES] = _channel_mean(samples[s0:s0 + MEAN_BLOCK_SAMPLES])
    return rate, out


def _segment_hint(start: float, end: Optional[float], duration: Optional[float] = None) -> str:
    """Where the segment lay, so 'decoded nothing' from bounds past the end of the file reads as such."""
    if not start and end is None:
        return ""
    seg = f" (segment {start:g}-{'end' if end is None else f'{end:g}'} s"
    return seg + (f" of a {duration:.2f} s file)" if duration else ")")


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Keep aspect; long side <= max_side; even sizes (yuv-friendly)."""
    scale = min(1.0, max_side / max(width, height))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


def decode_frames(path: str | os.PathLike, fps: float = 10.0, max_side: int = 640, start: float = 0.0,
                  end: Optional[float] = None, info: Optional[MediaInfo] = None,
                  timeout: float = 600.0, max_frames: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(frames (N, H, W, 3) uint8 RGB, times (N,) seconds from `start`), sampled at `fps`.

    With `max_frames`, a segment longer than max_frames / fps is sampled at the lower rate that gives
    max_frames frames over it: ffmpeg's fps filter drops the rest before scaling and conversion, so memory
    stays flat in the clip's length (a film decodes into as many frames as a one-minute clip)."""
    p = _check_file(path)
    info = info or probe(p)
    if not info.has_video or not info.width:
        raise NoStreamError(f"{p}: no video stream")
    w, h = target_size(info.width, info.height, max_side)
    _log_decode("frames", str(p))
    length = _segment_length(info, start, end)
    if max_frames and length and length * fps > max_frames:
        fps = max_frames / length
    frame_bytes = w * h * 3
    limit = {"frames:v": max_frames} if max_frames else {}
    expected = max_frames or (int(length * fps) + 2 if length is not None else None)
    capacity = frame_bytes * (expected + 2 if expected else 1024)

    def run(**fps_opts) -> subprocess.CompletedProcess:
        stream = (_input(p, **threads.ffmpeg_input_options()).video.filter("fps", fps=fps, **fps_opts)
                  .filter("scale", w, h)
                  .output("pipe:", format="rawvideo", pix_fmt="rgb24", **_seek(start, end), **limit))
        args = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", *stream.get_args()]
        return _ffmpeg_pipe(args, timeout, capacity)

    proc = run()
    n = len(proc.stdout) // frame_bytes
    if proc.returncode == 0 and n == 0:
        # A video shorter than one 1/fps step (e.g. a single frame) rounds to no output frame;
        # eof_action=pass lets its last frame through. Only here, so other clips decode as before.
        proc = run(eof_action="pass")
        n = len(proc.stdout) // frame_bytes
    if proc.returncode != 0 and n == 0:
        raise MediaError(f"{p}: ffmpeg could not decode video: {_tail(proc.stderr)}")
    if n == 0:
        raise MediaError(f"{p}: decoded 0 video frames{_segment_hint(start, end, info.duration)}")
    frames = proc.stdout[: n * frame_bytes].reshape(n, h, w, 3)
    times = np.arange(n, dtype=np.float64) / fps
    return frames, times


def sample_indices(n_available: int, n_wanted: int) -> np.ndarray:
    """T indices spread uniformly over the decoded frames (repeats when the clip has fewer frames)."""
    if n_available <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.linspace(0, n_available - 1, n_wanted).round().astype(np.int64)
