"""Our tokenizer (HF tokenizer.json) against openai-whisper's tiktoken tokenizer."""

import pytest

from max_whisper.api import _tokenizer_path
from max_whisper.tokenizer import TokenizerError, get_tokenizer, normalize_language
from support import MODEL_NAMES, requires_reference

TEXTS = [
    " Hello world, it's 5 o'clock!",
    "naïve café – ♪ la la ♪ [MUSIC] 日本語のテキスト",
    "  multiple   spaces\n and a newline",
    " Mr. Dashwood had then leisure to consider",
    " Der schnelle braune Fuchs springt über den faulen Hund. Où est la bibliothèque?"
    " Привет, как дела?",
]


def _pair(models, name: str):
    import whisper.tokenizer as whisper_tokenizer

    weights = models.weights(name)
    ours = get_tokenizer(
        str(_tokenizer_path(weights)), weights.dims.is_multilingual, weights.dims.num_languages
    )
    ref = whisper_tokenizer.get_tokenizer(
        weights.dims.is_multilingual, num_languages=weights.dims.num_languages
    )
    return ours, ref


@requires_reference
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_special_tokens_match_reference(models, name):
    ours, ref = _pair(models, name)
    for attr in (
        "eot",
        "sot",
        "translate",
        "transcribe",
        "sot_lm",
        "sot_prev",
        "no_speech",
        "no_timestamps",
        "timestamp_begin",
    ):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert tuple(ours.sot_sequence) == tuple(ref.sot_sequence)
    assert tuple(ours.non_speech_tokens) == tuple(ref.non_speech_tokens)
    if ours.multilingual:
        assert sorted(ours.all_language_tokens) == sorted(ref.all_language_tokens)
        assert ours.with_options(language="de", task="translate").sot_sequence == tuple(
            ref.sot_sequence[:1]
        ) + (ref.to_language_token("de"), ref.translate)


@requires_reference
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_text_round_trip_matches_reference(models, name):
    ours, ref = _pair(models, name)
    for text in TEXTS:
        ids = ref.encode(text)
        assert ours.encode(text) == ids
        assert ours.decode(ids) == ref.decode(ids) == text
        assert ours.split_to_word_tokens(ids) == ref.split_to_word_tokens(ids)
    ids = [ref.timestamp_begin + 5, *ref.encode(" hi there"), ref.timestamp_begin + 50, ref.eot]
    assert (
        ours.decode_with_timestamps(ids)
        == ref.decode_with_timestamps(ids)
        == "<|0.10|> hi there<|1.00|><|endoftext|>"
    )
    assert ours.decode(ids) == " hi there<|endoftext|>"


def test_languages():
    assert normalize_language("English") == "en"
    assert normalize_language("mandarin") == "zh"
    with pytest.raises(TokenizerError):
        normalize_language("klingon")
