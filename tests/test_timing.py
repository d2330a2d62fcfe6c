"""Word timestamps: the NumPy DTW and median filter against openai-whisper's, and whole word timings
on real clips against whisper.timing.add_word_timestamps on the PyTorch model with the same
weights."""

import copy
import subprocess
import sys

import numpy as np
import pytest

from max_whisper.timing import (
    WordTiming,
    dtw,
    get_end,
    get_start,
    median_filter,
    merge_punctuations,
    skip_hallucinations,
)
from support import (
    REPO_ROOT,
    WORD_PROBABILITY_TOLERANCE,
    WORD_TIME_TOLERANCE,
    requires_reference,
    requires_shared_audio,
    shared_clip,
    subprocess_env,
)

PUNCTUATION = "\"'“¿([{-\"'.。,，!！?？:：”)]}、"


def test_timing_and_writers_do_not_import_torch():
    code = (
        "import sys, max_whisper.timing, max_whisper.writers; "
        "assert 'torch' not in sys.modules, 'torch'"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, env=subprocess_env(clean=True), cwd=REPO_ROOT
    )


# -- DTW and median filter -------------------------------------------------------------------------
def test_dtw_follows_the_cheap_path():
    x = np.ones((3, 6))
    x[0, 0:2] = x[1, 2:4] = x[2, 4:6] = 0  # token i is cheap over frames 2i, 2i+1
    text, time = dtw(x)
    assert text.tolist() == [0, 0, 1, 1, 2, 2]
    assert time.tolist() == [0, 1, 2, 3, 4, 5]
    text, time = dtw(np.zeros((1, 1)))
    assert text.tolist() == [0] and time.tolist() == [0]


def test_median_filter_reflects_at_the_edges():
    x = np.array([[5.0, 1.0, 4.0, 2.0, 3.0, 9.0]])
    padded = np.array(
        [4.0, 1.0, 5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 3.0, 2.0]
    )  # reflect: edges not repeated
    expected = [np.median(padded[i : i + 5]) for i in range(6)]
    assert median_filter(x, 5)[0].tolist() == expected
    assert median_filter(x[:, :2], 5) is not None and median_filter(x[:, :2], 5).shape == (1, 2)
    with pytest.raises(ValueError):
        median_filter(x, 4)


@requires_reference
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (5, 9), (40, 300), (120, 1500)])
def test_dtw_matches_openai_whisper(shape):
    import whisper.timing as timing

    rng = np.random.default_rng(sum(shape))
    cases = {
        "normal": rng.standard_normal(shape),
        "ties": rng.integers(0, 3, shape).astype(
            np.float64
        ),  # many equal costs: the tie rules decide
        "zeros": np.zeros(shape),
    }
    for name, x in cases.items():
        assert np.array_equal(dtw(x), timing.dtw_cpu(x.copy())), name


@requires_reference
@pytest.mark.parametrize("shape", [(8, 20, 100), (8, 20, 4), (8, 20, 3), (2, 7), (11,)])
def test_median_filter_matches_openai_whisper(shape):
    import torch
    import whisper.timing as timing

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if x.ndim == 3:
        x[0, :, 2] = np.nan  # a zero-variance column standardises to NaN
    theirs = timing.median_filter(torch.from_numpy(x.copy()), 7).numpy()
    assert np.array_equal(median_filter(x, 7), theirs, equal_nan=True)


# -- word grouping ---------------------------------------------------------------------------------
def _words(*texts):
    return [WordTiming(text, [i], float(i), i + 1.0, 0.5) for i, text in enumerate(texts)]


@requires_reference
@pytest.mark.parametrize(
    "texts",
    [
        (' "', "Hello", ",", " world", ".", '"'),
        (" (", " '", "quoted", "'", ")", " tail", "!"),
        (" plain", " words", " only"),
        (" -", "dash", " end", "?"),
    ],
)
def test_merge_punctuations_matches_openai_whisper(texts):
    import whisper.timing as timing

    ours = _words(*texts)
    theirs = [
        timing.WordTiming(w.word, list(w.tokens), w.start, w.end, w.probability) for w in ours
    ]
    merge_punctuations(ours, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
    timing.merge_punctuations(theirs, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
    assert [(w.word, w.tokens) for w in ours] == [(w.word, w.tokens) for w in theirs]
    assert "".join(w.word for w in ours) == "".join(texts)


def test_get_start_and_end():
    assert get_start([]) is None and get_end([]) is None
    segments = [
        {"start": 1.0, "end": 2.0, "words": []},
        {"start": 2.0, "end": 4.0, "words": [{"start": 2.5, "end": 3.5}]},
        {"start": 4.0, "end": 5.0, "words": []},
    ]
    assert get_start(segments) == 2.5 and get_end(segments) == 3.5
    assert get_start(segments[:1]) == 1.0 and get_end(segments[2:]) == 5.0


# -- hallucination skipping ------------------------------------------------------------------------
def _segment(start, end, words):
    """words: (text, start, end, probability)"""
    return {
        "start": start,
        "end": end,
        "words": [{"word": t, "start": s, "end": e, "probability": p} for t, s, e, p in words],
    }


def _skip(segments, **overrides):
    args = dict(
        threshold=2.0,
        single_timestamp_ending=True,
        time_offset=30.0,
        window_end_time=60.0,
        segment_duration=30.0,
        previous_seek=3000,
        segment_size=3000,
        seek=6000,
        last_speech_timestamp=29.0,
        content_duration=120.0,
        content_frames=12000,
        punctuation=PUNCTUATION,
    )
    return skip_hallucinations(segments, **{**args, **overrides})


def test_skip_hallucinations_keeps_ordinary_speech():
    segments = [
        _segment(30.5, 33.0, [(" Hello", 30.5, 31.2, 0.9), (" there", 31.3, 32.0, 0.8)]),
        _segment(33.0, 36.0, [(" and", 33.0, 33.4, 0.9), (" more", 33.5, 34.1, 0.95)]),
    ]
    kept = copy.deepcopy(segments)
    assert _skip(segments) == (6000, False)
    assert segments == kept
    # an unfinished window resumes after the last word when a long silence follows it
    assert _skip(segments, single_timestamp_ending=False) == (round(34.1 * 100), False)
    assert _skip(segments, single_timestamp_ending=False, window_end_time=35.0) == (6000, False)


def test_skip_hallucinations_restarts_after_leading_silence():
    # improbable, very short words 5 s into the window: decode again from the end of the silence
    segments = [_segment(35.0, 35.2, [(" you", 35.0, 35.05, 0.1), (" you", 35.1, 35.2, 0.1)])]
    assert _skip(segments) == (3000 + 500, True)


def test_skip_hallucinations_drops_an_isolated_hallucination():
    good = _segment(30.2, 33.0, [(" Hello", 30.2, 31.0, 0.9), (" there", 31.1, 32.0, 0.9)])
    bad = _segment(40.0, 40.1, [(" Thank", 40.0, 40.05, 0.05), (" you", 40.05, 40.1, 0.05)])
    after = _segment(50.0, 52.0, [(" later", 50.0, 50.6, 0.9)])
    segments = [good, bad, after]
    assert _skip(segments) == (4000, False)
    assert segments == [good]
    # near the end of the audio: nothing more to decode
    segments = [good, bad, after]
    assert _skip(segments, content_duration=41.0) == (12000, False)


# -- parity on real speech -------------------------------------------------------------------------
@requires_reference
@requires_shared_audio
@pytest.mark.parametrize("clip", ["libri-1088-134315-0000.wav", "2412-153948-0001.flac"])
def test_word_timestamps_match_openai_whisper(models, clip):
    import torch
    from whisper.timing import add_word_timestamps as reference_add_word_timestamps
    from whisper.tokenizer import get_tokenizer as reference_get_tokenizer

    from max_whisper.audio import load_audio, log_mel_spectrogram, pad_or_trim
    from max_whisper.dims import N_FRAMES, N_SAMPLES
    from max_whisper.timing import add_word_timestamps

    model = models.get("tiny.en", "reference")
    torch_model = models.torch("tiny.en")
    path = shared_clip(clip)
    audio = load_audio(path)
    segments = models.transcribe("tiny.en", "reference", path, temperature=0.0)["segments"]
    assert segments and all(s["seek"] == 0 for s in segments), "one window expected"
    for segment in segments:
        del segment["id"]

    # the first window exactly as transcribe() cuts it
    mel = log_mel_spectrogram(audio, model.dims.n_mels, padding=N_SAMPLES)
    num_frames = min(N_FRAMES, mel.shape[-1] - N_FRAMES)
    mel_segment = pad_or_trim(mel[:, :num_frames], N_FRAMES)
    punctuation = {
        "prepend_punctuations": "\"'“¿([{-",
        "append_punctuations": "\"'.。,，!！?？:：”)]}、",
    }

    ours = copy.deepcopy(segments)
    add_word_timestamps(
        segments=ours,
        model=model,
        tokenizer=model.tokenizer,
        features=model.backend.encode(mel_segment[None]),
        num_frames=num_frames,
        last_speech_timestamp=0.0,
        **punctuation,
    )
    theirs = copy.deepcopy(segments)
    reference_add_word_timestamps(
        segments=theirs,
        model=torch_model,
        tokenizer=reference_get_tokenizer(False),
        mel=torch.from_numpy(mel_segment),
        num_frames=num_frames,
        last_speech_timestamp=0.0,
        **punctuation,
    )

    n_words = 0
    for a, b in zip(ours, theirs, strict=True):
        assert [w["word"] for w in a["words"]] == [w["word"] for w in b["words"]]
        assert a["start"] == pytest.approx(b["start"], abs=WORD_TIME_TOLERANCE)
        assert a["end"] == pytest.approx(b["end"], abs=WORD_TIME_TOLERANCE)
        for x, y in zip(a["words"], b["words"]):
            assert x["start"] == pytest.approx(y["start"], abs=WORD_TIME_TOLERANCE), x
            assert x["end"] == pytest.approx(y["end"], abs=WORD_TIME_TOLERANCE), x
            assert x["probability"] == pytest.approx(
                y["probability"], abs=WORD_PROBABILITY_TOLERANCE
            ), x
            assert 0 <= x["start"] <= x["end"] <= num_frames / 100 + 0.02
            assert not isinstance(x["start"], np.generic) and type(x["probability"]) is float
        n_words += len(a["words"])
    assert n_words >= 20
    assert "".join(w["word"] for s in ours for w in s["words"]) == "".join(
        s["text"] for s in segments
    )
