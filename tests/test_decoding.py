"""The shared decoding module, driven through the PyTorch reference backend, against
openai-whisper's own decode(): the same tokens, greedy and beam search, with and without
timestamps."""

import numpy as np
import pytest

from max_whisper.decoding import DecodingError, DecodingOptions
from support import (
    SHARED_AUDIO,
    requires_base,
    requires_reference,
    requires_shared_audio,
    shared_clip,
)

pytestmark = [requires_reference, requires_shared_audio]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"without_timestamps": True},
        {"beam_size": 5},
        {"beam_size": 3, "patience": 2.0, "length_penalty": 0.5},
        {"prompt": "Sense and Sensibility, by Jane Austen."},
        {"prefix": "And"},
    ],
    ids=["greedy", "no-timestamps", "beam5", "beam3-patience", "prompt", "prefix"],
)
def test_decode_matches_openai_whisper(models, reference, options):
    model = models.get("tiny.en", "reference")
    for clip in map(shared_clip, ("librivox-0870", "2412", "common_voice")):
        ours = model.decode(
            reference.mel("tiny.en", clip)[None], DecodingOptions(language="en", **options)
        )[0]
        theirs = reference.decode("tiny.en", clip, language="en", **options)
        assert ours.tokens == theirs.tokens, clip.name
        # the log-probabilities behind fallback and ranking: float32 sums in another order
        assert ours.avg_logprob == pytest.approx(theirs.avg_logprob, abs=1e-4), clip.name
        assert ours.no_speech_prob == pytest.approx(theirs.no_speech_prob, abs=1e-4), clip.name
        assert ours.text or "prefix" in options  # a forced prefix may leave nothing to say


@requires_base
@pytest.mark.base
def test_decode_multilingual_detects_language(models, reference):
    model = models.get("base", "reference")
    clip = shared_clip("librivox-0870")
    ours = model.decode(reference.mel("base", clip)[None], DecodingOptions(language=None))[0]
    assert ours.language == "en"
    assert ours.tokens == reference.tokens("base", clip, language=None)


def test_bad_options_are_rejected(models):
    model = models.get("tiny.en", "reference")
    mel = np.zeros((1, model.dims.n_mels, 3000), dtype=np.float32)
    for bad in (
        {"beam_size": 2, "best_of": 2},
        {"patience": 1.5},
        {"length_penalty": 3.0},
        {"task": "summarise"},
    ):
        with pytest.raises(DecodingError):
            model.decode(mel, DecodingOptions(**bad))


@requires_base
@pytest.mark.base
def test_base_detects_english_with_high_probability(models, transcripts):
    model = models.get("base", "max")
    for name in transcripts:
        language, probs = model.detect_language(SHARED_AUDIO / name)
        print(f"{name}: {language} p={probs[language]:.3f}")
        assert language == "en" and probs["en"] > 0.9, name
