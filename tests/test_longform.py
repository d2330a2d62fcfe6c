"""Long-form transcription (the sliding 30-s window) against openai-whisper's transcribe().

The long file is every clip of ../shared/audio end to end with 5 s of digital silence between them
(~144 s, five windows and more): seeking past silence, segments spanning windows and prompt
conditioning all come into play. Both sides decode greedily in fp32 with the default thresholds and
condition_on_previous_text=True, so segments must come out identical.
"""

import numpy as np
import pytest

from max_whisper.dims import SAMPLE_RATE
from support import (
    CLIPS,
    WORD_PROBABILITY_TOLERANCE,
    WORD_TIME_TOLERANCE,
    requires_reference,
    requires_shared_audio,
)

pytestmark = [requires_reference]

GAP_SECONDS = 5.0
OPTIONS = {"temperature": 0.0, "condition_on_previous_text": True}
# Both backends, always: a MAX backend that fails to load fails these tests (it is no optional
# extra).
BACKENDS = pytest.mark.parametrize("backend", ["reference", "max"])


@pytest.fixture(scope="session")
def openai_transcribe(reference):
    """openai-whisper's transcribe() of samples with the tests' options, once per audio and
    options."""

    def run(audio: np.ndarray, **options) -> dict:
        return reference.transcribe("tiny.en", audio, **OPTIONS, **options)

    return run


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory) -> np.ndarray:
    """All shared clips, decoded and resampled by our loader, 5 s of silence apart, read back from a
    16-bit WAV (so both sides get exactly the same samples)."""
    import wave

    from max_whisper.audio import load_audio

    assert CLIPS, "no clips in ../shared/audio"
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
    pieces = []
    for clip in CLIPS:
        pieces += [load_audio(clip), gap]
    audio = np.concatenate(pieces[:-1])
    path = tmp_path_factory.mktemp("longform") / "long.wav"
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(pcm.tobytes())
    loaded = load_audio(path)
    assert loaded.shape == audio.shape and np.abs(loaded - audio).max() < 1e-4
    return loaded


def assert_same_segments(ours: dict, theirs: dict) -> None:
    assert [s["text"] for s in ours["segments"]] == [s["text"] for s in theirs["segments"]]
    for a, b in zip(ours["segments"], theirs["segments"]):
        assert (a["id"], a["seek"], a["tokens"]) == (b["id"], b["seek"], b["tokens"])
        assert a["start"] == pytest.approx(b["start"], abs=1e-6), a
        assert a["end"] == pytest.approx(b["end"], abs=1e-6), a
    assert ours["text"] == theirs["text"]
    assert ours["language"] == theirs["language"] == "en"


@requires_shared_audio
@BACKENDS
def test_long_file_matches_openai_whisper(models, openai_transcribe, backend, long_audio):
    model = models.get("tiny.en", backend)
    theirs = openai_transcribe(long_audio, word_timestamps=False)
    ours = model.transcribe(long_audio, **OPTIONS)
    assert_same_segments(ours, theirs)

    # the file really is long-form: several windows, speech found after every silence gap
    assert len(long_audio) / SAMPLE_RATE > 120
    assert len({s["seek"] for s in ours["segments"]}) >= 5
    assert len(ours["segments"]) >= len(CLIPS)
    ends = [s["end"] for s in ours["segments"]]
    assert ends == sorted(ends) and ends[-1] <= len(long_audio) / SAMPLE_RATE + 0.02


@requires_shared_audio
@BACKENDS
def test_long_file_word_timestamps_match_openai_whisper(
    models, openai_transcribe, backend, long_audio
):
    model = models.get("tiny.en", backend)
    theirs = openai_transcribe(long_audio, word_timestamps=True)
    ours = model.transcribe(long_audio, word_timestamps=True, **OPTIONS)

    assert [s["text"] for s in ours["segments"]] == [s["text"] for s in theirs["segments"]]
    n_words = 0
    for a, b in zip(ours["segments"], theirs["segments"]):
        assert a["tokens"] == b["tokens"]
        assert a["start"] == pytest.approx(b["start"], abs=WORD_TIME_TOLERANCE), a
        assert a["end"] == pytest.approx(b["end"], abs=WORD_TIME_TOLERANCE), a
        assert [w["word"] for w in a["words"]] == [w["word"] for w in b["words"]]
        for x, y in zip(a["words"], b["words"]):
            assert x["start"] == pytest.approx(y["start"], abs=WORD_TIME_TOLERANCE), (
                a["text"],
                x,
                y,
            )
            assert x["end"] == pytest.approx(y["end"], abs=WORD_TIME_TOLERANCE), (a["text"], x, y)
            assert x["probability"] == pytest.approx(
                y["probability"], abs=WORD_PROBABILITY_TOLERANCE
            )
        n_words += len(a["words"])
    assert n_words > 150
    words = [w for s in ours["segments"] for w in s["words"]]
    assert all(w["start"] <= w["end"] for w in words)
    assert all(u["start"] >= v["start"] for u, v in zip(words[1:], words))


@BACKENDS
def test_white_noise_gives_no_text(models, openai_transcribe, backend):
    model = models.get("tiny.en", backend)
    noise = (0.1 * np.random.default_rng(0).standard_normal(20 * SAMPLE_RATE)).astype(np.float32)
    result = model.transcribe(noise, **OPTIONS)
    assert result["text"].strip() == ""
    assert all(s["text"] == "" for s in result["segments"])
    assert result["text"] == openai_transcribe(noise)["text"]


@BACKENDS
def test_digital_silence_gives_no_text(models, openai_transcribe, backend):
    # openai-whisper's tiny.en says " you" over 30 s of zeros (no_speech_prob 0.95 but avg_logprob
    # -0.70, so its thresholds keep the window); our silence gate skips windows with no signal at
    # all.
    model = models.get("tiny.en", backend)
    silence = np.zeros(30 * SAMPLE_RATE, dtype=np.float32)
    ours = model.transcribe(silence, **OPTIONS)
    assert ours["text"] == "" and ours["segments"] == []
    assert openai_transcribe(silence)["text"].strip() != "", (
        "the reference no longer hallucinates here"
    )
    # with the gate off, the thresholds alone decide, exactly as the reference does
    assert_same_segments(
        model.transcribe(silence, silence_threshold=None, **OPTIONS), openai_transcribe(silence)
    )
