"""The batching engine: a recording's transcript is the same batched with others as alone.

"Alone" is `model.transcribe` (the engine with one stream); "batched" is `model.transcribe_many`
with 8 streams in flight, whose windows decode together with prompts of different lengths.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from max_whisper.audio import load_audio
from max_whisper.decoding import DecodingOptions, decode
from support import CLIPS, MODEL_NAMES, requires_shared_audio

pytestmark = requires_shared_audio


def segment_tokens(result: dict) -> list[list[int]]:
    return [s["tokens"] for s in result["segments"]]


def long_recording(clips, pause_s: float = 2.0) -> np.ndarray:
    """Several clips one after another with pauses: a long-form stream with growing prompts."""
    pause = np.zeros(int(pause_s * 16000), np.float32)
    return np.concatenate([part for clip in clips for part in (load_audio(clip), pause)])


@pytest.mark.parametrize(
    "name, condition, step",
    [
        ("tiny.en", True, 1),
        ("tiny.en", False, 3),
        pytest.param(*MODEL_NAMES[1].values, True, 3, marks=MODEL_NAMES[1].marks),
    ],
    ids=["tiny.en-conditioned", "tiny.en-unconditioned", "base-conditioned"],
)
def test_batched_transcripts_equal_the_ones_alone(models, name, condition, step):
    """Shared clips (every one for tiny.en conditioned, every third otherwise) and two long
    recordings made of all of them, whose windows carry prompts of every length."""
    model = models.get(name, "max")
    audios = [load_audio(c) for c in CLIPS[::step]]
    audios += [long_recording(CLIPS[:6]), long_recording(CLIPS[6:])]
    options = dict(temperature=0.0, condition_on_previous_text=condition)
    alone = [model.transcribe(audio, **options) for audio in audios]
    batched = dict(model.transcribe_many(audios, batch_size=8, **options))
    assert sorted(batched) == list(range(len(audios)))
    for i, _audio in enumerate(audios):
        assert not isinstance(batched[i], Exception), batched[i]
        assert segment_tokens(batched[i]) == segment_tokens(alone[i]), f"recording {i}"
        assert batched[i]["text"] == alone[i]["text"]


def test_a_stream_does_not_depend_on_its_companions(models):
    model = models.get("tiny.en", "max")
    audios = [load_audio(c) for c in CLIPS]
    target = 3
    results = []
    for companions in (audios[:3], audios[4:9], audios[::-1][:5]):
        batch = [*companions, audios[target]]
        results.append(
            dict(model.transcribe_many(batch, batch_size=len(batch), temperature=0.0))[
                len(batch) - 1
            ]
        )
    assert all(segment_tokens(r) == segment_tokens(results[0]) for r in results)
    assert segment_tokens(results[0]) == segment_tokens(
        model.transcribe(audios[target], temperature=0.0)
    )


def test_fallback_beam_search_and_sampling_batch_exactly(models):
    """Beam search (5) and best-of-5 sampling on the fallback temperatures, forced by an unreachable
    log-probability threshold: every window samples, in batches of windows of different prompts."""
    model = models.get("tiny.en", "max")
    audios = [load_audio(c) for c in CLIPS[:3]] + [long_recording(CLIPS[5:8])]
    options = dict(
        beam_size=5,
        best_of=5,
        temperature=(0.0, 0.6),
        logprob_threshold=0.0,
        compression_ratio_threshold=None,
    )
    alone = [model.transcribe(audio, **options) for audio in audios]
    batched = dict(model.transcribe_many(audios, batch_size=8, **options))
    for i in range(len(audios)):
        assert segment_tokens(batched[i]) == segment_tokens(alone[i]), f"recording {i}"
        assert [s["temperature"] for s in batched[i]["segments"]] == [
            s["temperature"] for s in alone[i]["segments"]
        ]


def test_ragged_prompts_decode_as_alone(models):
    """The decoder itself: windows with prompts of 0, 5 and 200 tokens in one batch give each the
    tokens and (within float32 noise) the log-probabilities they get alone."""
    model = models.get("tiny.en", "max")
    mels = [model.embed_audio(np.stack([_mel(model, c)])) for c in CLIPS[:3]]
    features = np.concatenate(mels)
    text = model.tokenizer.encode(" " + "the quick brown fox jumps over the lazy dog " * 20)
    prompts = [None, text[:5], text[:200]]
    batched = decode(
        model.backend,
        model.tokenizer,
        features,
        DecodingOptions(language="en"),
        windows=[DecodingOptions(language="en", prompt=p) for p in prompts],
    )
    for i, prompt in enumerate(prompts):
        alone = decode(
            model.backend,
            model.tokenizer,
            features[i : i + 1],
            DecodingOptions(language="en", prompt=prompt),
        )[0]
        assert batched[i].tokens == alone.tokens
        assert abs(batched[i].avg_logprob - alone.avg_logprob) < 1e-4
        assert abs(batched[i].no_speech_prob - alone.no_speech_prob) < 1e-4


def test_a_failing_recording_does_not_stop_the_others(models, tmp_path):
    model = models.get("tiny.en", "max")
    bad = tmp_path / "not-audio.wav"
    bad.write_text("text, not samples")
    results = dict(
        model.transcribe_many(
            [str(CLIPS[0]), str(bad), str(CLIPS[1])], batch_size=8, temperature=0.0
        )
    )
    assert isinstance(results[1], Exception) and "not-audio.wav" in str(results[1])
    assert results[0]["text"] == model.transcribe(str(CLIPS[0]), temperature=0.0)["text"]
    assert results[2]["text"].strip()


def test_a_window_held_to_its_end_goes_on_after_a_segment_that_closes_early(models):
    """end_not_before (HoldEnd): right after two timestamps earlier than its window's limit a row
    may not write EOT or a blank; later, after text, or without a limit it may. The limits
    follow the windows that stay in the batch."""
    from max_whisper.logit_filters import HoldEnd

    tokenizer = models.get("tiny.en", "max").tokenizer
    ts, eot = tokenizer.timestamp_begin, tokenizer.eot
    blank = tokenizer.encode(" ")[0]
    prompt = [tokenizer.sot, 7, 8]
    closed, open_ = prompt + [ts, 11, ts + 100, ts + 100], prompt + [ts, 11, 12, ts + 100]
    rows = np.array([closed, open_] * 3)  # three windows of two rows (beams) each
    hold = HoldEnd(tokenizer, len(prompt), [50, None, 500], group=2)  # 1 s, none, 10 s

    logits = np.zeros((6, eot + 1600), np.float32)
    hold.apply(logits, rows)
    held = np.isinf(logits[:, [eot, blank]]).all(axis=1)
    assert held.tolist() == [False, False, False, False, True, False]
    assert np.isinf(logits).sum() == 2  # nothing else

    hold.keep_windows([2])
    logits = np.zeros((2, eot + 1600), np.float32)
    hold.apply(logits, rows[4:])
    assert np.isinf(logits[:, eot]).tolist() == [True, False]


def test_windows_with_their_own_ends_batch_as_alone(models):
    """Windows held to different ends (and none) in one batch get each the tokens they get alone,
    greedy and with beams, as they leave the batch at different steps."""
    model = models.get("tiny.en", "max")
    features = np.concatenate([model.embed_audio(_mel(model, c)[None]) for c in CLIPS[:4]])
    ends = [None, 20.0, 3.0, 29.0]
    for extra in ({}, {"beam_size": 3}):
        options = DecodingOptions(language="en", **extra)
        windows = [dataclasses.replace(options, end_not_before=e) for e in ends]
        batched = decode(model.backend, model.tokenizer, features, options, windows=windows)
        for i, window in enumerate(windows):
            alone = decode(model.backend, model.tokenizer, features[i : i + 1], window)[0]
            assert batched[i].tokens == alone.tokens, (extra, i)


def _mel(model, clip):
    from max_whisper.audio import first_window_mel

    return first_window_mel(load_audio(clip), model.dims.n_mels)
