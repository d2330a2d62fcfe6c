"""Streaming a file (audio_stream.StreamedAudio): the same samples, the same mel frames to the bit
and the same transcript as the whole file in memory (load_audio + log_mel_spectrogram), in memory
that does not grow with the file.

Whisper floors the log-mel 8 below the WHOLE file's maximum and each STFT frame reads 200 samples
either side of its centre, so windows cut from a stream must still see the global maximum and the
right context at every chunk edge: these tests compare exactly (np.array_equal), at lengths around
the 30-s window and the 4096-frame mel block, and with windows at awkward offsets.
"""

from __future__ import annotations

import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest

from max_whisper import audio_stream as audio_module
from max_whisper.audio import AudioError, load_audio, log_mel_spectrogram
from max_whisper.audio_stream import StreamedAudio, window_source
from max_whisper.dims import HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE
from max_whisper.transcribe import transcribe
from support import CLIPS, requires_shared_audio, shared_clip

BLOCK = 4096 * HOP_LENGTH  # samples per mel block of log_mel_spectrogram


def write_wav(path: Path, audio: np.ndarray) -> Path:
    """16-bit mono 16 kHz WAV of float samples (what we then read back is exactly representable)."""
    pcm = np.clip(np.round(np.asarray(audio) * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(pcm.tobytes())
    return path


def synthetic(n: int, seed: int = 0) -> np.ndarray:
    """A chirp under noise with stretches of digital silence (the log-mel's 1e-10 clamp) and a loud
    burst late in the file (the global maximum is not in the first window)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SAMPLE_RATE
    audio = 0.1 * np.sin(2 * np.pi * (150 + 40 * (t % 7)) * t) + 0.01 * rng.standard_normal(n)
    audio[(t % 23) > 19] = 0.0
    audio[int(n * 0.8) : int(n * 0.8) + 2000] *= 8
    return audio.astype(np.float32)


def speech(seconds: float, gap: float = 2.0) -> np.ndarray:
    """The shared clips end to end (in name order, again and again), `gap` s of silence apart, cut
    at `seconds`."""
    pieces, n = [], 0
    silence = np.zeros(int(gap * SAMPLE_RATE), dtype=np.float32)
    while n < seconds * SAMPLE_RATE:
        for clip in CLIPS:
            pieces += [load_audio(clip), silence]
            n += len(pieces[-2]) + len(silence)
    return np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)]


def seeks(n_frames: int) -> list[tuple[int, int]]:
    """(seek, size) windows forward through the file as the long-form loop takes them: full windows,
    windows cut short, steps of odd sizes, block edges, the last frames."""
    out, seek, steps = [], 0, [3000, 1234, 2999, 1, 2862, 4096 - 2000, 577]
    i = 0
    while seek < n_frames:
        size = (
            min(N_FRAMES, n_frames - seek)
            if i % 3
            else min(N_FRAMES, max(1, (n_frames - seek) // 2))
        )
        out.append((seek, size))
        seek += steps[i % len(steps)]
        i += 1
    return out


def assert_streams_like_whole_file(path: Path, n_mels: int = 80) -> StreamedAudio:
    audio = load_audio(path)
    mel = log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES)
    streamed = StreamedAudio(path, n_mels)
    assert len(streamed) == len(audio) and streamed.duration == len(audio) / SAMPLE_RATE
    assert streamed.content_frames == mel.shape[-1] - N_FRAMES
    for seek, size in seeks(streamed.content_frames) + [(streamed.content_frames, N_FRAMES)]:
        window = streamed.mel_frames(seek, size)
        expected = mel[:, seek : seek + size]
        assert window.dtype == np.float32 and window.shape == expected.shape, (seek, size)
        assert np.array_equal(window, expected), (
            seek,
            size,
            float(np.abs(window - expected).max()),
        )
        assert np.array_equal(
            streamed.samples(seek, size), audio[seek * HOP_LENGTH : (seek + size) * HOP_LENGTH]
        )
    # the first window again (as language detection takes it): decodes the file again from the start
    assert np.array_equal(streamed.mel_frames(0, N_FRAMES), mel[:, :N_FRAMES])
    assert np.array_equal(streamed.samples(0, N_FRAMES), audio[:N_SAMPLES])
    return streamed


# --- mel frames and samples: bit-identical to the whole-file computation --------------------------


@pytest.mark.parametrize(
    "n_samples",
    [
        1,
        200,
        201,
        8_000,
        16_000 * 12 + 37,  # shorter than a window
        N_SAMPLES - 1,
        N_SAMPLES,
        N_SAMPLES + 1,
        N_SAMPLES + HOP_LENGTH,  # the 30-s window's edge
        BLOCK - 200,
        BLOCK + 40,
        BLOCK + 41,
        BLOCK + 240,
        2 * BLOCK - HOP_LENGTH,  # a mel block's edge and context
        16_000 * 95 + 11,  # several blocks and windows
    ],
    ids=lambda n: f"{n}",
)
def test_streamed_mel_equals_whole_file(tmp_path, n_samples):
    assert_streams_like_whole_file(write_wav(tmp_path / "a.wav", synthetic(n_samples)))


def test_streamed_mel_equals_whole_file_128_mels(tmp_path):
    assert_streams_like_whole_file(
        write_wav(tmp_path / "a.wav", synthetic(16_000 * 70 + 5, seed=3)), n_mels=128
    )


@requires_shared_audio
@pytest.mark.parametrize("seconds", [29.99, 30.0, 41.3, 183.0, 300.5])
def test_streamed_mel_equals_whole_file_on_speech(tmp_path, seconds):
    assert_streams_like_whole_file(write_wav(tmp_path / "speech.wav", speech(seconds)))


@requires_shared_audio
@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: c.name)
def test_streamed_formats_equal_load_audio(clip):
    """MP3, FLAC, float WAV, 22.05/48 kHz, stereo: decoding twice (scan, then windows) gives the
    same samples as load_audio."""
    assert_streams_like_whole_file(clip)


def test_window_source():
    audio = synthetic(16_000 * 5)
    source = window_source(audio, 80)
    assert source.content_frames == len(audio) // HOP_LENGTH
    assert np.array_equal(
        source.mel_frames(0, N_FRAMES),
        log_mel_spectrogram(audio, 80, padding=N_SAMPLES)[:, :N_FRAMES],
    )


def test_window_source_of_a_path_streams(tmp_path):
    path = write_wav(tmp_path / "a.wav", synthetic(16_000 * 5))
    source = window_source(str(path), 80)
    assert isinstance(source, StreamedAudio) and source.n_mels == 80
    assert window_source(source, 80) is source
    other = window_source(source, 128)  # another model's filterbank: scanned again for its maximum
    assert isinstance(other, StreamedAudio) and other.n_mels == 128
    assert np.array_equal(
        other.mel_frames(0, 10),
        log_mel_spectrogram(load_audio(path), 128, padding=N_SAMPLES)[:, :10],
    )


@pytest.mark.parametrize(
    "kind, words",
    [
        ("missing", "no such file"),
        ("folder", "folder"),
        ("text", "not an audio file"),
        ("empty", "empty"),
        ("zero-samples", "no audio samples"),
    ],
)
def test_bad_input_raises_audio_error_like_load_audio(tmp_path, kind, words):
    paths = {
        "missing": tmp_path / "missing.wav",
        "folder": tmp_path,
        "text": tmp_path / "notes.wav",
        "empty": tmp_path / "empty.wav",
        "zero-samples": tmp_path / "zero.wav",
    }
    paths["text"].write_text("this is not audio\n" * 100)
    paths["empty"].write_bytes(b"")
    write_wav(paths["zero-samples"], np.zeros(0))
    with pytest.raises(AudioError) as streamed:
        StreamedAudio(paths[kind])
    with pytest.raises(AudioError) as loaded:
        load_audio(paths[kind])
    assert words in str(streamed.value) and str(streamed.value) == str(loaded.value)


# --- memory: bounded whatever the length ----------------------------------------------------------


def test_memory_does_not_grow_with_the_file(tmp_path):
    """30 min of audio is 115 MB as float32 samples: streaming it holds a few blocks of samples and
    mel, plus the ~47 MB one 4096-frame block's FFT needs (as in log_mel_spectrogram), whatever the
    length."""
    n = 16_000 * 60 * 30
    path = tmp_path / "long.wav"
    with wave.open(str(path), "wb") as f:  # written a minute at a time
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        for minute in range(30):
            f.writeframes((synthetic(16_000 * 60, seed=minute) * 32767).astype("<i2").tobytes())
    tracemalloc.start()
    try:
        streamed = StreamedAudio(path)
        scan_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        biggest_buffer = 0
        for seek in range(0, streamed.content_frames, 2500):
            streamed.mel_frames(seek, N_FRAMES)
            streamed.samples(seek, N_FRAMES)
            biggest_buffer = max(biggest_buffer, len(streamed._reader._buffer))
        windows_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(streamed) == n
    assert scan_peak < 64e6 and windows_peak < 64e6, (scan_peak, windows_peak)
    assert biggest_buffer <= 3 * BLOCK + 400, biggest_buffer  # samples kept: about two mel blocks


# --- transcripts: token-identical to the array path -----------------------------------------------


@pytest.fixture(scope="module")
def model(models):
    return models.get("tiny.en", "max")  # the default backend


def assert_same_transcript(streamed: dict, in_memory: dict) -> None:
    assert [s["tokens"] for s in streamed["segments"]] == [
        s["tokens"] for s in in_memory["segments"]
    ]
    assert streamed == in_memory  # times, texts, log-probabilities: all of it


@requires_shared_audio
@pytest.mark.parametrize("prefix", ["librivox-0870", "2412-153948-0001", "common_voice_en_651325"])
def test_streamed_transcript_equals_array_on_clips(model, prefix):
    clip = shared_clip(prefix)
    assert_same_transcript(
        transcribe(model, StreamedAudio(clip)), transcribe(model, load_audio(clip))
    )


@requires_shared_audio
def test_streamed_transcript_equals_array_on_three_minutes(model, tmp_path):
    path = write_wav(tmp_path / "three-minutes.wav", speech(183.0))
    in_memory = transcribe(model, load_audio(path))
    assert len({s["seek"] for s in in_memory["segments"]}) >= 6  # long-form: many windows
    assert_same_transcript(transcribe(model, StreamedAudio(path)), in_memory)


@requires_shared_audio
def test_streamed_transcript_equals_array_with_options(model, tmp_path, monkeypatch):
    """The silence check (samples from the stream: the first 31 s are digital silence), word
    timestamps, and clip_timestamps in a backward order (the stream decodes the file again from the
    start); a path given as such."""
    audio = load_audio(write_wav(tmp_path / "speech.wav", speech(75.0, gap=6.0)))
    path = write_wav(
        tmp_path / "padded.wav", np.concatenate([np.zeros(N_SAMPLES + 16_000, np.float32), audio])
    )
    options = {
        "silence_threshold": -50.0,
        "word_timestamps": True,
        "clip_timestamps": "62,100,0,50",
    }
    in_memory = transcribe(model, load_audio(path), **options)
    assert in_memory["segments"] and all("words" in s for s in in_memory["segments"])
    calls = {"samples": 0, "restarts": 0}
    samples, restart = StreamedAudio.samples, audio_module._PcmReader._restart

    def counted_samples(self, seek, n):
        calls["samples"] += 1
        return samples(self, seek, n)

    def counted_restart(self):
        calls["restarts"] += 1
        restart(self)

    monkeypatch.setattr(StreamedAudio, "samples", counted_samples)
    monkeypatch.setattr(audio_module._PcmReader, "_restart", counted_restart)
    assert_same_transcript(transcribe(model, str(path), **options), in_memory)
    assert calls["samples"] >= 3
    assert (
        calls["restarts"] >= 3
    )  # the scan's reader, the windows' reader, and back to 0 s for the second clip
    assert (
        min(s["seek"] for s in in_memory["segments"]) >= N_FRAMES
    )  # the silent first window: skipped
