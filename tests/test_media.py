"""Decode of every bundled media file; clear errors for bad ones."""
import subprocess

import numpy as np
import pytest

from pipeline import media

AUDIO = ["speech/jfk.flac", "speech/pyannote_sample.wav", "asterisk_prompts_en/activated.wav",
         "ravdess_subset/Actor_01/03-01-05-01-01-01-01.wav", "ravdess_subset/Actor_02/03-01-01-01-01-01-02.wav"]
VIDEO = ["face_recognition/short_hamilton_clip.mp4", "pyfeat/single_face.mp4", "pyfeat/WolfgangLanger_Pexels.mp4",
         "opencv_samples/Megamind.avi", "opencv_samples/vtest.avi"]


@pytest.mark.parametrize("rel", AUDIO + VIDEO[:4])
def test_audio_decodes_to_16k_mono(shared_data, rel):
    p = shared_data / rel
    info = media.probe(p)
    a = media.decode_audio(p, 16000)
    assert a.dtype == np.float32 and a.ndim == 1 and np.isfinite(a).all()
    assert abs(len(a) / 16000 - info.duration) < 0.15, (len(a) / 16000, info.duration)


def test_jfk_is_real_speech(shared_data):
    a = media.decode_audio(shared_data / "speech/jfk.flac", 16000)
    assert 10.5 < len(a) / 16000 < 11.5 and 0.01 < np.sqrt(np.mean(a ** 2)) < 0.5


def test_segment_bounds(shared_data):
    a = media.decode_audio(shared_data / "speech/jfk.flac", 16000, start=2.0, end=5.0)
    assert abs(len(a) - 48000) <= 160


@pytest.mark.parametrize("rel", VIDEO)
def test_frames_decode(shared_data, rel):
    p = shared_data / rel
    info = media.probe(p)
    assert info.has_video and info.width > 0
    frames, times = media.decode_frames(p, fps=2.0, max_side=320, end=min(info.duration, 6.0), info=info)
    assert frames.dtype == np.uint8 and frames.shape[-1] == 3 and max(frames.shape[1:3]) <= 320
    assert len(frames) == len(times) and np.all(np.diff(times) > 0)
    assert abs(len(frames) - 2.0 * min(info.duration, 6.0)) <= 2
    assert frames.std() > 5  # real pictures, not blank


def test_video_without_audio_is_a_no_stream_error(shared_data):
    with pytest.raises(media.NoStreamError, match="vtest.avi: no audio stream"):
        media.decode_audio(shared_data / "opencv_samples/vtest.avi")


def test_bad_files_give_clear_errors(tmp_path, shared_data):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(media.MediaError, match="empty.mp4: file is empty"):
        media.decode_audio(tmp_path / "empty.mp4")
    with pytest.raises(media.MediaError, match="nothere.wav: file not found"):
        media.decode_audio(tmp_path / "nothere.wav")
    (tmp_path / "trunc.mp4").write_bytes((shared_data / "pyfeat/single_face.mp4").read_bytes()[:3000])
    with pytest.raises(media.MediaError, match="trunc.mp4"):
        media.decode_frames(tmp_path / "trunc.mp4")
    (tmp_path / "text.wav").write_text("not audio at all")
    with pytest.raises(media.MediaError, match="text.wav"):
        media.decode_audio(tmp_path / "text.wav")


def test_audio_only_file_has_no_video(shared_data):
    with pytest.raises(media.NoStreamError, match="no video stream"):
        media.decode_frames(shared_data / "speech/jfk.flac")


def test_sample_indices_uniform():
    assert media.sample_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert media.sample_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert media.sample_indices(0, 4).size == 0


@pytest.mark.parametrize("rel", ["face_recognition/short_hamilton_clip.mp4", "opencv_samples/Megamind.avi"])
def test_segment_bounds_are_exact_when_streams_start_apart(shared_data, rel):
    """Input-side seeking cut these segments short (the video stream starts after the audio)."""
    for start, end in [(0.06, 1.06), (0.5, 1.5)]:
        a = media.decode_audio(shared_data / rel, 16000, start=start, end=end)
        assert abs(len(a) - 16000) <= 40, (start, end, len(a))


@pytest.mark.parametrize("rate,channels", [(16000, 1), (16000, 2), (48000, 2)])
def test_resampy_decode_is_blockwise_and_exact(tmp_path, rate, channels):
    """The resampy path averages channels a block at a time (no float64 copy of the whole clip): the result
    equals the whole-array float64 mean then kaiser_best, for libsndfile (WAV) and ffmpeg (Matroska) alike."""
    import soundfile as sf

    from pipeline.media import MEAN_BLOCK_SAMPLES, ffmpeg_exe
    from pipeline.resample import resampy_kaiser_best

    n = 2 * MEAN_BLOCK_SAMPLES + 1234                # several blocks and a partial one
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (n, channels)).astype(np.float32)
    wav = tmp_path / "a.wav"
    sf.write(wav, x, rate, subtype="FLOAT")
    mka = tmp_path / "a.mka"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "pcm_f32le", str(mka)],
                   check=True, stdin=subprocess.DEVNULL)
    want = resampy_kaiser_best(x.astype(np.float64).mean(axis=1), rate, 16000)
    for p in (wav, mka):
        got = media.decode_audio(p, 16000, resampler="resampy")
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=str(p))
