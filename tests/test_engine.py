"""The batching engine: a recording's transcript is the same batched with others as alone.

"Alone" is `model.transcribe` (the engine with one stream); "batched" is `model.transcribe_many`
with 8 streams in flight, whose windows decode together with prompts of different lengths.
"""

from __future__ import annotations

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
        model.backend, model.tokenizer, features, DecodingOptions(language="en"), prompts=prompts
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


def test_a_window_is_decoded_on_from_its_own_text(models):
    """`resume`: a window's tokens up to one of its segment boundaries, given back as the prefix,
    decode on to the rest of its tokens (the timestamp rules count the prefix as the window's own
    text); as a plain prefix they would start the text anew, with a timestamp."""
    from max_whisper.audio import first_window_mel

    model = models.get("tiny.en", "max")
    audio = long_recording(CLIPS[:3], pause_s=1.0)[: 30 * 16000]
    features = model.embed_audio(first_window_mel(audio, model.dims.n_mels)[None])
    options = DecodingOptions(language="en")
    whole = model.decode(features, options)[0].tokens
    is_timestamp = [t >= model.tokenizer.timestamp_begin for t in whole]
    boundaries = [k for k in range(1, len(whole) - 2) if is_timestamp[k - 1] and is_timestamp[k]]
    assert len(boundaries) >= 2, model.tokenizer.decode_with_timestamps(whole)
    for k in boundaries:
        rest = model.decode(features, options, prefix=whole[: k + 1], resume=True)[0]
        assert rest.tokens == whole[k + 1 :]
    anew = model.decode(features, options, prefix=whole[: boundaries[0] + 1])[0]
    assert is_timestamp[0] and anew.tokens[0] >= model.tokenizer.timestamp_begin


def _mel(model, clip):
    from max_whisper.audio import first_window_mel

    return first_window_mel(load_audio(clip), model.dims.n_mels)
