"""Audio decoding (PyAV) and the NumPy log-Mel spectrogram, against openai-whisper where
installed."""

from __future__ import annotations

import importlib.util
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from max_whisper.audio import (
    AudioError,
    audio_duration,
    load_audio,
    log_mel_spectrogram,
    mel_filters,
    pad_or_trim,
)
from max_whisper.dims import N_FRAMES, N_SAMPLES, SAMPLE_RATE
from support import CLIPS, MEL_ATOL, requires, requires_reference

clip_params = pytest.mark.parametrize(
    "clip",
    CLIPS or [pytest.param(None, marks=pytest.mark.skip(reason="../shared/audio is absent"))],
    ids=lambda p: p.name if p else "no-clips",
)
requires_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="no ffmpeg CLI for whisper.audio.load_audio"
)


def _whisper_mel(audio: np.ndarray, n_mels: int, padding: int) -> np.ndarray:
    import torch
    import whisper.audio

    return whisper.audio.log_mel_spectrogram(
        torch.from_numpy(audio), n_mels, padding=padding
    ).numpy()


# --- mel filterbank and spectrogram -------------------------------------------------------------


@requires("whisper", reason="openai-whisper is not installed")
@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_equal_openai_asset(n_mels):
    spec = importlib.util.find_spec("whisper")
    with np.load(Path(spec.origin).parent / "assets" / "mel_filters.npz") as assets:
        expected = assets[f"mel_{n_mels}"]
    ours = mel_filters(n_mels)
    assert ours.dtype == np.float32 and ours.shape == expected.shape == (n_mels, 201)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-7)


@requires_reference
@clip_params
@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_openai_on_speech(clip, n_mels):
    audio = load_audio(clip)
    # padded with 30 s of silence, as transcription does (the synthetic test below covers no
    # padding)
    ours = log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES)
    ref = _whisper_mel(audio, n_mels, N_SAMPLES)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ours - ref).max() < MEL_ATOL


@requires_reference
def test_log_mel_matches_openai_on_synthetic_signal():
    # runs without ../shared/audio: a chirp under noise, not a multiple of the hop length
    t = np.arange(123_457) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    audio = (
        0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.01 * rng.standard_normal(t.size)
    ).astype(np.float32)
    for n_mels in (80, 128):
        assert (
            np.abs(log_mel_spectrogram(audio, n_mels) - _whisper_mel(audio, n_mels, 0)).max()
            < MEL_ATOL
        )


@requires_reference
def test_log_mel_matches_openai_across_digital_silence():
    # exact zeros before, between and after two tones, and one lone sample inside the gap: the
    # silent frames skip the FFT, the frames that touch any sample do not
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(8_000) / SAMPLE_RATE)).astype(np.float32)
    gap = np.zeros(20_000, dtype=np.float32)
    gap[10_000] = 0.05
    audio = np.concatenate([np.zeros(3_000, np.float32), tone, gap, tone])
    ours = log_mel_spectrogram(audio, 80, padding=N_SAMPLES)
    ref = _whisper_mel(audio, 80, N_SAMPLES)
    assert np.abs(ours - ref).max() < MEL_ATOL
    lone = (3_000 + 8_000 + 10_000) // 160  # the frame centred on the lone sample
    assert ours[:, lone].max() > ours[:, lone - 5].max()  # heard, not skipped


def test_log_mel_shape_and_padding():
    audio = np.zeros(16_000, dtype=np.float32)
    audio[::100] = 0.5
    mel = log_mel_spectrogram(audio, 80)
    assert mel.shape == (80, 100) and mel.dtype == np.float32
    assert log_mel_spectrogram(audio, 128, padding=N_SAMPLES).shape == (128, 100 + N_FRAMES)
    np.testing.assert_array_equal(
        log_mel_spectrogram(audio, 80, padding=N_SAMPLES),
        log_mel_spectrogram(np.pad(audio, (0, N_SAMPLES)), 80),
    )
    assert mel.max() - mel.min() <= 2.0 + 1e-6  # the floor: 8 (log10 units) below the maximum, / 4


def test_log_mel_rejects_bad_input():
    with pytest.raises(ValueError):
        log_mel_spectrogram(np.zeros((2, 1000), dtype=np.float32))
    with pytest.raises(ValueError):
        log_mel_spectrogram(np.zeros(100, dtype=np.float32))


def test_pad_or_trim():
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(pad_or_trim(x, 4), x[:4])
    np.testing.assert_array_equal(pad_or_trim(x, 12), np.r_[x, 0, 0])
    assert pad_or_trim(x, 10) is x
    m = np.ones((80, 50), dtype=np.float32)
    assert pad_or_trim(m, 30).shape == (80, 30)
    assert pad_or_trim(m, 3000).shape == (80, 3000) and pad_or_trim(m, 3000)[:, 50:].sum() == 0
    assert pad_or_trim(m, 60, axis=0).shape == (60, 50)
    assert pad_or_trim(np.zeros(5, dtype=np.float32)).shape == (N_SAMPLES,)


# --- decoding -----------------------------------------------------------------------------------


@clip_params
def test_load_audio_decodes_every_format(clip):
    audio = load_audio(clip)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # resampled to 16 kHz mono: the length follows the duration, whatever the source rate/channels
    assert abs(len(audio) / SAMPLE_RATE - audio_duration(clip)) < 0.03
    assert np.abs(audio).max() <= 1.0
    assert 0.005 < np.sqrt(np.mean(audio**2)) < 0.5  # speech, not silence or noise


@requires_reference
@requires_ffmpeg
@clip_params
def test_load_audio_matches_openai_ffmpeg_loader(clip):
    import whisper.audio

    ours, ref = load_audio(clip), whisper.audio.load_audio(str(clip))
    assert len(ours) == len(ref)
    assert np.abs(ours - ref).max() <= 2 / 32768  # same libswresample path; bit-exact with FFmpeg 9


@clip_params
def test_plain_wav_read_as_stored_equals_pyav_decoding(clip, monkeypatch):
    import max_whisper.audio as audio_module

    opened = audio_module._plain_wav(clip, SAMPLE_RATE)
    try:  # 16-bit mono 16 kHz PCM WAV is read without PyAV, and only it
        with wave.open(str(clip)) as wav:
            form = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate())
        plain = form == (1, 2, SAMPLE_RATE)
    except (wave.Error, EOFError):
        plain = False
    assert (opened is not None) == plain
    if opened is not None:
        opened.close()
    direct = load_audio(clip)
    monkeypatch.setattr(audio_module, "_plain_wav", lambda path, sr: None)
    assert np.array_equal(direct, load_audio(clip))


def test_load_audio_downmixes_and_resamples(tmp_path):
    # stereo 44.1 kHz with different channels: mono 16 kHz is their average
    rate, seconds = 44_100, 1.0
    t = np.arange(int(rate * seconds)) / rate
    left, right = 0.4 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo.wav"
    _write_wav(path, np.stack([left, right], axis=1), rate)
    audio = load_audio(path)
    assert len(audio) == SAMPLE_RATE * seconds
    rms = np.sqrt(np.mean(audio[1000:-1000] ** 2))
    assert abs(rms - 0.3 / np.sqrt(2)) < 0.005


@pytest.mark.parametrize(
    "suffix, codec", [("ogg", "libopus"), ("m4a", "aac"), ("flac", "flac"), ("mp3", "libmp3lame")]
)
def test_load_audio_other_containers(tmp_path, suffix, codec):
    import av

    rate = 48_000 if codec == "libopus" else 44_100
    t = np.arange(2 * rate) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / f"tone.{suffix}"
    try:
        _encode_with_pyav(path, codec, np.stack([tone, tone]), rate)
    except av.error.FFmpegError as exc:
        pytest.skip(f"this PyAV build cannot encode {codec}: {exc}")
    audio = load_audio(path)
    assert abs(len(audio) / SAMPLE_RATE - 2.0) < 0.06  # AAC adds some priming samples
    middle = audio[4000:-4000]  # away from encoder delay and padding
    assert abs(np.sqrt(np.mean(middle**2)) - 0.3 / np.sqrt(2)) < 0.02  # lossy codecs: ~5% off


def test_audio_duration_of_a_long_synthetic_file(tmp_path):
    path = tmp_path / "long.wav"
    _write_wav(path, 0.1 * np.sin(np.arange(16_000 * 65) / 7.0), 16_000)
    assert audio_duration(path) == pytest.approx(65.0)


# --- bad input: one clear line ------------------------------------------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 100)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    silent = tmp_path / "zero.wav"
    _write_wav(silent, np.zeros(0), 16_000)
    return {
        "missing": (tmp_path / "missing.wav", "no such file"),
        "folder": (tmp_path, "folder"),
        "text": (text, "not an audio file"),
        "empty": (empty, "empty"),
        "zero-samples": (silent, "no audio samples"),
    }


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "empty", "zero-samples"])
def test_bad_input_raises_audio_error(tmp_path, kind):
    path, words = _bad_inputs(tmp_path)[kind]
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert words in message and path.name in message and "\n" not in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("kind", ["missing", "text", "empty"])
def test_audio_duration_bad_input(tmp_path, kind):
    path, words = _bad_inputs(tmp_path)[kind]
    with pytest.raises(AudioError, match=words):
        audio_duration(path)


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    samples = np.asarray(samples)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def _encode_with_pyav(path: Path, codec: str, planar: np.ndarray, rate: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout="stereo")
        frame.sample_rate = rate
        ctx = stream.codec_context
        resampler = av.AudioResampler(
            format=ctx.format.name,
            layout="stereo",
            rate=ctx.sample_rate,
            frame_size=ctx.frame_size or None,
        )
        for chunk in resampler.resample(frame) + resampler.resample(None) + [None]:
            for packet in stream.encode(chunk):
                container.mux(packet)
