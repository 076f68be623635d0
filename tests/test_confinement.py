"""ffmpeg reads exactly the one file it is given (probe, decode, predict), and never our stdin.

A file inside the dataset root may really be a playlist or manifest (HLS .m3u8, DASH .mpd, ffconcat) that
makes ffmpeg open media elsewhere on disk, or a FIFO that blocks it. pipeline.media confines every ffmpeg
call (`-protocol_whitelist file`, a container demuxer whitelist, a `file:` URL, regular files only); these
tests trace the real ffmpeg processes with strace and check what they opened. All media are generated with
ffmpeg's lavfi sources (nothing binary is committed)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import media


def _ff(*args: str) -> None:
    subprocess.run([media.ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("confine")
    root, outside = d / "root", d / "outside"
    root.mkdir()
    outside.mkdir()
    lavfi = ["-f", "lavfi", "-i", "testsrc=size=96x64:rate=10", "-f", "lavfi", "-i", "sine=f=440:sample_rate=16000"]
    _ff(*lavfi, "-t", "1", "-c:v", "mpeg4", "-c:a", "aac", str(root / "ok.mp4"))
    _ff(*lavfi, "-t", "2", "-c:v", "mpeg2video", "-c:a", "mp2", "-f", "mpegts", str(outside / "secret.ts"))
    os.mkfifo(outside / "fifo.ts")
    hls = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{}\n#EXT-X-ENDLIST\n"
    (root / "playlist.m3u8").write_text(hls.format("../outside/secret.ts"))
    (root / "playlist_named.mp4").write_text(hls.format("../outside/secret.ts"))   # content, not name, decides
    (root / "fifo.m3u8").write_text(hls.format("../outside/fifo.ts"))
    os.symlink(outside / "secret.ts", root / "inner.ts")        # concat's "safe" mode accepts this name
    (root / "list.ffconcat").write_text("ffconcat version 1.0\nfile 'inner.ts'\n")
    (root / "manifest.mpd").write_text(
        '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        'mediaPresentationDuration="PT2S" minBufferTime="PT1S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">'
        '<Period><AdaptationSet mimeType="video/mp2t"><Representation id="1" bandwidth="1000">'
        '<BaseURL>../outside/secret.ts</BaseURL></Representation></AdaptationSet></Period></MPD>\n')
    return {"root": root, "outside": outside, "ok": root / "ok.mp4", "secret": outside / "secret.ts"}


HOSTILE = ["playlist.m3u8", "playlist_named.mp4", "fifo.m3u8", "list.ffconcat", "manifest.mpd"]


def test_the_attack_is_real_without_confinement(hostile, ffmpeg_trace):
    """Plain `ffmpeg -i playlist.m3u8` (what decode used to run) opens and decodes the file outside the root."""
    cmd = [media.ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error",
           "-i", str(hostile["root"] / "playlist.m3u8"), "-f", "null", "-"]
    proc = subprocess.run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr.decode()
    assert str(hostile["root"] / "../outside/secret.ts") in ffmpeg_trace.opened()


@pytest.mark.parametrize("name", HOSTILE)
def test_playlists_and_manifests_are_refused_and_nothing_else_is_opened(hostile, ffmpeg_trace, name):
    path = hostile["root"] / name
    t0 = time.perf_counter()
    for call in (lambda: media.probe(path), lambda: media.decode_audio(path, timeout=30),
                 lambda: media.decode_frames(path, fps=5, max_side=64, timeout=30)):
        with pytest.raises(media.MediaError) as e:
            call()
        assert str(path) in str(e.value)
        if name != "playlist_named.mp4":   # this ffmpeg does not even detect HLS behind another extension
            assert "not a plain media container" in str(e.value), str(e.value)
    assert time.perf_counter() - t0 < 20, "a FIFO behind a playlist must not block until ffmpeg_timeout_s"
    assert ffmpeg_trace.calls() >= 2
    assert set(ffmpeg_trace.opened()) == {str(path)}, ffmpeg_trace.opened()
    assert set(ffmpeg_trace.executed()) == {ffmpeg_trace.real}       # ffmpeg started nothing else


def test_plain_media_decodes_and_opens_only_itself(hostile, ffmpeg_trace):
    ok = hostile["ok"]
    info = media.probe(ok)
    assert info.has_audio and info.has_video and (info.width, info.height) == (96, 64)
    audio = media.decode_audio(ok)
    assert abs(len(audio) / 16000 - 1.0) < 0.1
    frames, _ = media.decode_frames(ok, fps=5, max_side=64, info=info)
    assert frames.shape[1:] == (42, 64, 3)
    assert len(frames) >= 4
    assert set(ffmpeg_trace.opened()) == {str(ok)}


def test_fifo_and_directory_are_named_not_opened(hostile, ffmpeg_trace):
    for p, kind in ((hostile["outside"] / "fifo.ts", "a FIFO"), (hostile["root"], "a directory")):
        with pytest.raises(media.MediaError, match=f"not a regular file \\({kind}\\)"):
            media.decode_audio(p, timeout=10)
    assert ffmpeg_trace.calls() == 0


def test_probe_cannot_be_fooled_by_the_file_name(hostile, tmp_path):
    """ffmpeg's header dump echoes the name: a name saying 'Invalid data found' or 'Video: ..., 9x9' is data."""
    for name in ("Invalid data found.mp4", "Stream #0:0: Video: h264, 1234x567 Duration: 01:02:03.mp4"):
        p = tmp_path / name
        p.write_bytes(hostile["ok"].read_bytes())
        info = media.probe(p)
        assert (info.width, info.height) == (96, 64) and abs(info.duration - 1.0) < 0.1, (name, info)


@pytest.mark.parametrize("size", [(1, 1), (8, 8)])
def test_tiny_videos_have_a_video_stream(tmp_path, size):
    p = tmp_path / f"tiny{size[0]}.mkv"
    _ff("-f", "lavfi", "-i", f"testsrc=size={size[0]}x{size[1]}:rate=5", "-t", "1", "-c:v", "ffv1", str(p))
    info = media.probe(p)
    assert info.has_video and (info.width, info.height) == size


# A session leader with a pseudo-terminal as controlling tty starts argv as a BACKGROUND job on it (like
# `cmd &` in a shell) and reports whether the job exited or was stopped by the terminal (SIGTTOU/SIGTTIN).
_BACKGROUND_JOB = """
import fcntl, os, signal, subprocess, sys, termios
master, slave = os.openpty()
fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
os.tcsetpgrp(slave, os.getpgrp())
job = subprocess.Popen(sys.argv[1:], stdin=slave, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, process_group=0)
signal.alarm(120)
_, status = os.waitpid(job.pid, os.WUNTRACED)
if os.WIFSTOPPED(status):
    print("stopped", signal.Signals(os.WSTOPSIG(status)).name)
    os.kill(job.pid, signal.SIGKILL)
else:
    print("exit", os.waitstatus_to_exitcode(status), job.stderr.read().decode()[-500:])
"""


def _as_background_job(argv: list[str], repo: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", _BACKGROUND_JOB, *argv], capture_output=True, text=True,
                          timeout=180, start_new_session=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_background_job_is_not_stopped_by_the_terminal(hostile, repo):
    """`emocache extract ... &` used to stop forever ("Stopped (tty output)"): ffmpeg set up the terminal it
    inherited as stdin. Every call now gets -nostdin and stdin=DEVNULL."""
    plain = _as_background_job([media.ffmpeg_exe(), "-hide_banner", "-i", str(hostile["ok"]), "-f", "null", "-"], repo)
    assert plain.startswith("stopped"), f"the harness must reproduce the stop with a plain ffmpeg call: {plain}"
    code = ("import sys; from pipeline import media; p = sys.argv[1]; media.probe(p); media.decode_audio(p); "
            "media.decode_frames(p, fps=5, max_side=64)")
    assert _as_background_job([sys.executable, "-c", code, str(hostile["ok"])], repo).startswith("exit 0")


def test_rotated_video_decodes_upright_and_unsquashed(tmp_path, shared_data):
    """A copy stored rotated (pixels turned 90 degrees, display matrix turning them back) decodes into exactly
    the original frames: the output is sized after ffmpeg's auto-rotation, so every extractor (faces, tracks,
    ...) sees the same images as on the original. Lossless H.264 keeps the comparison exact."""
    src = shared_data / "pyfeat" / "single_face.mp4"
    orig, turned, rotated = tmp_path / "orig.mp4", tmp_path / "turned.mp4", tmp_path / "rotated.mp4"
    lossless = ["-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", "-an"]
    _ff("-i", str(src), "-t", "1", "-vf", "scale=160:90", *lossless, str(orig))
    _ff("-i", str(orig), "-vf", "transpose=clock", *lossless, str(turned))
    _ff("-display_rotation", "90", "-i", str(turned), "-c", "copy", str(rotated))   # 90 counter-clockwise
    info = media.probe(rotated)
    assert (info.width, info.height) == (160, 90) and abs(info.rotation) == 90
    a, ta = media.decode_frames(orig, fps=5, max_side=160)
    b, tb = media.decode_frames(rotated, fps=5, max_side=160)
    assert a.shape == b.shape == (len(a), 90, 160, 3)
    assert np.array_equal(a, b) and np.array_equal(ta, tb)
