"""Voice-activity detection (max_whisper.vad): Silero VAD v6 through onnxruntime, on real speech.

The rule tests on hand-made probabilities need no onnxruntime; the rest run the network on shared
clips laid end to end with long gaps of digital silence or faint noise between them.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from max_whisper import vad
from max_whisper.audio import load_audio
from max_whisper.errors import MaxWhisperError, UsageError
from support import run_python, shared_clip

SR = 16000
PAD = 0.4  # VadOptions().speech_pad_ms, in seconds
CLIPS = ["librivox-0870", "2412-153948-0001", "librivox-0920", "libri-1088-134315-0000.wav"]
GAPS = [3.0, 6.0, 12.0, 8.0, 5.0]  # before, between and after the clips


@pytest.fixture(scope="module")
def ort():
    return pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def clips():
    return [load_audio(shared_clip(name)) for name in CLIPS]


def lay_out(clips, gaps, noise_dbfs=None, seed=0):
    """The clips with `gaps` seconds between them (silence, or Gaussian noise at `noise_dbfs`), and
    the [start, end) sample of each clip."""
    rng = np.random.default_rng(seed)
    parts, where, at = [], [], 0
    for i, gap in enumerate(gaps):
        n = int(gap * SR)
        parts.append(
            np.zeros(n, np.float32)
            if noise_dbfs is None
            else rng.normal(0, 10 ** (noise_dbfs / 20), n).astype(np.float32)
        )
        at += n
        if i < len(clips):
            parts.append(clips[i])
            where.append((at, at + len(clips[i])))
            at += len(clips[i])
    return np.concatenate(parts), where


@pytest.mark.parametrize("noise", [None, -60.0], ids=["silent-gaps", "noisy-gaps"])
def test_spans_find_each_clip_of_a_gapped_file(ort, clips, noise):
    audio, where = lay_out(clips, GAPS, noise)
    spans = vad.speech_spans(audio)
    assert len(spans) == len(where), (spans, where)  # every gap is longer than min_silence (2 s)
    for (s, e), (cs, ce) in zip(spans, where):
        assert s < ce and e > cs  # overlaps its clip
        assert cs - (PAD + 0.1) * SR <= s and e <= ce + (PAD + 0.1) * SR  # no further than the pad
    for s, e in spans:  # and none lies in a gap
        assert any(s < ce and e > cs for cs, ce in where)

    speech = vad.SpeechMap(spans)
    collected = speech.collect(audio)
    assert len(collected) == sum(e - s for s, e in spans) == round(speech.duration * SR)
    assert len(collected) < 0.6 * len(audio)
    offset = 0
    for (s, e), (cs, _) in zip(spans, where):  # each clip's start once collected, mapped back
        back = speech.to_original(offset / SR)
        assert back == pytest.approx(s / SR, abs=1e-9)
        assert abs(back - cs / SR) <= PAD
        offset += e - s
    rng = np.random.default_rng(1)  # any collected time maps back onto the very same sample
    for k in rng.integers(0, len(collected), 200):
        assert collected[k] == audio[round(speech.to_original(k / SR) * SR)]


def test_silence_gives_no_spans(ort):
    silence = np.zeros(20 * SR, np.float32)
    assert vad.speech_spans(silence) == []
    assert vad.speech_spans(np.zeros(0, np.float32)) == []
    empty = vad.SpeechMap([])
    assert len(empty.collect(silence)) == 0 and empty.duration == 0
    assert empty.to_original(1.5) == 1.5
    assert vad.chunks([]) == []


def test_single_clip_gives_one_covering_span(ort, clips):
    for clip in clips:
        spans = vad.speech_spans(clip)
        assert len(spans) == 1
        start, end = spans[0]
        assert start <= 0.3 * SR and end == len(clip)  # early start; the pad runs to the end


def test_a_pause_under_min_silence_is_bridged(ort, clips):
    audio, where = lay_out(clips[:2], [2.0, 1.0, 3.0])  # 1 s between the clips: under 2 s
    ((start, end),) = vad.speech_spans(audio)
    assert start <= where[0][0] and end >= where[1][1]
    first, second = vad.speech_spans(audio, vad.VadOptions(min_silence_duration_ms=500))
    assert (first[0], second[1]) == (start, end)
    assert where[0][1] - PAD * SR < first[1] <= second[0] < where[1][0] + PAD * SR


def test_probabilities_carry_the_state_across_calls(ort, clips, monkeypatch):
    audio, _ = lay_out(clips[:2], [1.0, 2.0, 0.5])
    probs = vad.speech_probabilities(audio)
    assert probs.shape == (math.ceil(len(audio) / 512),) and probs.dtype == np.float32
    assert 0 <= probs.min() and probs.max() <= 1 and probs.max() > 0.9
    monkeypatch.setattr(vad, "BLOCK", 37)  # many session calls instead of one
    np.testing.assert_allclose(vad.speech_probabilities(audio), probs, atol=1e-5)
    for frames in (1, 3):  # a live stream's audio, fed as it came in
        stream, piece = vad.SpeechStream(), frames * 512
        fed = [stream(audio[i : i + piece]) for i in range(0, len(audio), piece)]
        np.testing.assert_allclose(np.concatenate(fed), probs, atol=1e-5)


def test_every_installed_model_file_works(ort, clips):
    found = [p for p in (vad._find(pkg, rel) for pkg, rel in vad.MODEL_FILES) if p]
    assert found and found[0] == vad.find_model()
    audio, where = lay_out(clips[:2], [2.0, 6.0, 2.0])
    for path in found:  # faster-whisper's; silero-vad's (sequence, per-frame) if there
        spans = vad.speech_spans(audio, model_path=path)
        assert len(spans) == 2, path
        assert all(s < ce and e > cs for (s, e), (cs, ce) in zip(spans, where)), path


def test_ten_minutes_of_speech_and_pauses(ort, clips):
    rng = np.random.default_rng(2)
    gaps = rng.uniform(2.5, 8.0, 35)
    audio, where = lay_out([clips[i % len(clips)] for i in range(34)], gaps)
    assert len(audio) < 600 * SR
    audio = np.concatenate([audio, np.zeros(600 * SR - len(audio), np.float32)])
    spans = vad.speech_spans(audio)
    assert len(spans) == len(where)
    windows = vad.chunks(spans, 30.0)
    assert all(_speech_in(spans, window) <= 30 * SR for window in windows)
    assert all(any(cs <= s and e <= ce for cs, ce in windows) for s, e in spans)
    for window, following in zip(windows, windows[1:]):  # packed: the next span did not fit
        first = min((s, e) for s, e in spans if s >= following[0])
        assert _speech_in(spans, window) + first[1] - first[0] > 30 * SR


def _speech_in(spans, window) -> int:
    start, end = window
    return sum(min(e, end) - max(s, start) for s, e in spans if s < end and e > start)


# --- chunks, SpeechMap.restore and the rules, on given spans and probabilities -------------------


def test_chunks_respect_the_limit_and_cover_every_span():
    seconds = [(0, 5), (6, 20), (21, 29), (40, 45), (50, 125), (126, 127)]
    spans = [(s * SR, e * SR) for s, e in seconds]
    windows = vad.chunks(spans, 30.0)  # 40-45 cannot join 0-29 (27 s of speech); 50-125 is cut
    expected = [(0, 29), (40, 45), (50, 80), (80, 110), (110, 127)]  # every 30 s
    assert windows == [(s * SR, e * SR) for s, e in expected]
    # what counts is the speech a chunk holds, not its length with the pauses
    spaced = [(0, 10 * SR), (25 * SR, 35 * SR), (50 * SR, 60 * SR), (61 * SR, 62 * SR)]
    assert vad.chunks(spaced, 30.0) == [(0, 60 * SR), (61 * SR, 62 * SR)]
    for limit in (1.0, 7.5, 30.0, 100.0):
        windows = vad.chunks(spans, limit)
        assert all(0 < _speech_in(spans, w) <= limit * SR for w in windows)
        covered = np.zeros(127 * SR, bool)
        for s, e in windows:
            covered[s:e] = True
        assert all(covered[s:e].all() for s, e in spans)
        assert all(e <= s2 for (_, e), (s2, _) in zip(windows, windows[1:]))
    with pytest.raises(UsageError):
        vad.chunks(spans, 0)


def test_restore_maps_segment_and_word_times_back():
    speech = vad.SpeechMap([(2 * SR, 5 * SR), (10 * SR, 12 * SR)])  # collected: 0-3 s, then 3-5 s
    result = {
        "text": "a b c",
        "language": "en",
        "segments": [
            {
                "id": 0,
                "start": 0.5,
                "end": 3.0,
                "text": "a b",
                "words": [
                    {"word": "a", "start": 0.5, "end": 1.0},
                    {"word": "b", "start": 2.0, "end": 3.0},
                ],
            },
            {
                "id": 1,
                "start": 3.0,
                "end": 4.5,
                "text": "c",
                "words": [{"word": "c", "start": 3.0, "end": 4.5}],
            },
        ],
    }
    restored = speech.restore(result)
    first, second = restored["segments"]
    assert (first["start"], first["end"]) == (2.5, 5.0)  # an end at the joint stays in span one
    assert [(w["start"], w["end"]) for w in first["words"]] == [(2.5, 3.0), (4.0, 5.0)]
    assert (second["start"], second["end"]) == (10.0, 11.5)  # a start at the joint opens span two
    assert second["words"] == [{"word": "c", "start": 10.0, "end": 11.5}]
    assert restored["text"] == "a b c"
    assert result["segments"][0]["start"] == 0.5 and result["segments"][0]["words"][1]["end"] == 3.0
    with pytest.raises(UsageError):
        vad.SpeechMap([(5, 10), (8, 20)])


F = 512  # samples per VAD frame


def frames(*runs):
    """Probabilities from (value, number of frames) runs."""
    return np.concatenate([np.full(count, value) for value, count in runs])


def spans_of(probs, **options):
    return vad.spans_from_probabilities(probs, len(probs) * F, vad.VadOptions(**options))


def test_rules_hysteresis_min_silence_min_speech_and_padding():
    # 0.4 is under the threshold but above neg_threshold (0.35): speech goes on till the silence
    probs = frames((0, 31), (0.9, 62), (0.4, 94), (0.9, 31), (0, 80))
    assert spans_of(probs, speech_pad_ms=0) == [(31 * F, 218 * F)]
    # a pause shorter than min_silence (2 s = 62.5 frames) does not split
    probs = frames((0, 31), (0.9, 62), (0.2, 47), (0.9, 31), (0, 80))
    assert spans_of(probs, speech_pad_ms=0) == [(31 * F, 171 * F)]
    # a blip shorter than min_speech (250 ms) is dropped
    probs = frames((0, 31), (0.9, 62), (0.2, 94), (0.9, 6), (0, 80))
    assert spans_of(probs, speech_pad_ms=0) == [(31 * F, 93 * F)]
    probs = frames((0, 31), (0.9, 62), (0, 94), (0.9, 62), (0, 15))  # speech runs on to the end
    n, pad = len(probs) * F, 6400
    padded = spans_of(probs, min_silence_duration_ms=500)
    assert padded == [(31 * F - pad, 93 * F + pad), (187 * F - pad, n)]
    half = 94 * F // 2  # a gap under twice the pad is shared between its neighbours
    shared = spans_of(probs, min_silence_duration_ms=500, speech_pad_ms=2000)
    assert shared == [(0, 93 * F + half), (187 * F - half, n)]


def test_rules_split_over_long_speech_at_its_last_pause():
    probs = frames((0.9, 62), (0.1, 10), (0.9, 62), (0.1, 10), (0.9, 125), (0, 100))
    split = spans_of(probs, max_speech_duration_s=6, speech_pad_ms=0)
    assert split == [(0, 134 * F), (144 * F, 269 * F)]
    hard = spans_of(frames((0.9, 625)), max_speech_duration_s=6, speech_pad_ms=0)  # no pause at all
    assert hard == [(0, 187 * F), (188 * F, 375 * F), (376 * F, 563 * F), (564 * F, 625 * F)]


@pytest.mark.parametrize(
    "bad",
    [
        {"threshold": 0},
        {"threshold": 1.5},
        {"threshold": float("nan")},
        {"threshold": "0.5"},
        {"threshold": True},
        {"neg_threshold": 0.6},
        {"neg_threshold": -0.1},
        {"min_speech_duration_ms": -1},
        {"min_silence_duration_ms": -5},
        {"speech_pad_ms": float("inf")},
        {"max_speech_duration_s": 0},
        {"max_speech_duration_s": 0.5},  # shorter than a frame plus both pads
    ],
)
def test_options_validation(bad):
    with pytest.raises(UsageError):
        vad.VadOptions(**bad)


def test_options_defaults():
    opts = vad.VadOptions()
    assert (
        opts.threshold,
        opts.neg_threshold,
        opts.min_speech_duration_ms,
        opts.max_speech_duration_s,
        opts.min_silence_duration_ms,
        opts.speech_pad_ms,
    ) == (0.5, None, 250, math.inf, 2000, 400)
    assert opts.off_threshold == pytest.approx(0.35)
    assert vad.VadOptions(threshold=0.1).off_threshold == pytest.approx(0.01)
    with pytest.raises(AttributeError):
        opts.threshold = 0.3


def test_missing_model_or_runtime_is_one_line_vad_unavailable(monkeypatch):
    monkeypatch.setattr(vad, "MODEL_FILES", (("no_such_package", "a.onnx"), ("numpy", "b.onnx")))
    with pytest.raises(vad.VadUnavailable, match=r"pip install 'max-whisper\[vad\]'") as info:
        vad.find_model()
    assert "\n" not in str(info.value) and isinstance(info.value, MaxWhisperError)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(vad.VadUnavailable, match="onnxruntime"):
        vad._session("never-loaded.onnx")


def test_importing_and_finding_the_model_import_nothing_heavy():
    code = (
        "import sys, max_whisper.vad as v; v.find_model()\n"
        "heavy = ('onnxruntime', 'faster_whisper', 'ctranslate2')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = run_python(code, timeout=120)
    if "VadUnavailable" in out.stderr:
        pytest.skip("no Silero model installed")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- transcription with the VAD -------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text).split()


def test_vad_filter_keeps_every_sentence_across_long_silences(ort, models, clips):
    """Clips 5-15 s apart: with vad_filter each clip's words are in the transcript, at its own
    time."""
    model = models.get("tiny.en", "max")
    audio, where = lay_out(clips, [0.5, 15.0, 5.0, 12.0, 9.0])
    result = model.transcribe(audio, vad_filter=True, temperature=0.0)
    for clip, (start, end) in zip(clips, where):
        alone = _words(model.transcribe(clip, temperature=0.0)["text"])
        inside = [
            s for s in result["segments"] if s["start"] < end / SR + 1 and s["end"] > start / SR - 1
        ]
        found = _words(" ".join(s["text"] for s in inside))
        assert len(set(alone) - set(found)) <= 1, (alone, found)
    assert all(0 <= s["start"] <= s["end"] <= len(audio) / SR + 0.5 for s in result["segments"])


def test_one_long_recording_in_batched_chunks(ort, models, clips):
    """transcribe(audio, batch_size=8): cut at the VAD pauses, decoded 8 chunks at a time; each
    clip's words come back, in order and at its own time (the pauses between the clips of a chunk
    are cut out, so no clip is lost after a silence)."""
    model = models.get("tiny.en", "max")
    audio, where = lay_out(clips * 3, [1.0, 3.0, 6.0, 2.0, 8.0] * 3)
    batched = model.transcribe(
        audio, batch_size=8, temperature=0.0, condition_on_previous_text=False
    )
    segments = batched["segments"]
    assert [s["id"] for s in segments] == list(range(len(segments)))
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)
    for clip, (start, end) in zip(clips * 3, where):
        alone = _words(model.transcribe(clip, temperature=0.0)["text"])
        inside = [s for s in segments if s["start"] < end / SR + 1 and s["end"] > start / SR - 1]
        assert len(set(alone) - set(_words(" ".join(s["text"] for s in inside)))) <= 1


def test_batched_chunks_transcribe_as_well_as_the_sequential_loop(ort, models, tmp_path):
    """The bench's long-form file (the referenced clips in turn with pauses, three minutes), base:
    cut into batched chunks, it is transcribed as well as by the sequential loop (within two words
    of ~460). Pauses of 160 ms end a stretch of speech, so that the pauses between sentences are
    cut out of a chunk too."""
    from max_whisper.bench import audio_files, long_form_file, references_near
    from support import SHARED_AUDIO, wer

    path = long_form_file(audio_files(SHARED_AUDIO), tmp_path)
    reference = references_near(path)[path.name]
    model = models.get("base", "max")
    options = dict(temperature=0.0, condition_on_previous_text=False, language="en")

    sequential = wer(reference, model.transcribe(path, **options)["text"])
    batched = model.transcribe(path, batch_size=8, **options)
    starts = [s["start"] for s in batched["segments"]]
    assert starts == sorted(starts)
    assert wer(reference, batched["text"]) <= sequential + 2 / len(reference.split())
