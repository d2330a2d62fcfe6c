"""The clip the repository ships (tests/data/README.md): MAX on a real recording, with or without
../shared/audio. Its tokens are openai-whisper's where the reference extra is installed, and its
transcript is the clip's human reference in any case."""

import re

from max_whisper.decoding import DecodingOptions
from support import BUNDLED_CLIP, BUNDLED_REFERENCE, requires_reference


def words(text: str) -> str:
    """Lower case, punctuation and hyphens to spaces: the form of the references in
    transcripts.tsv."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def test_max_transcript_is_the_reference_text(models):
    result = models.transcribe("tiny.en", "max", BUNDLED_CLIP, temperature=0.0)
    assert words(result["text"]) == BUNDLED_REFERENCE, result["text"]
    assert result["language"] == "en" and result["segments"]


@requires_reference
def test_max_tokens_match_reference(models, reference):
    ours = models.get("tiny.en", "max").decode(
        reference.mel("tiny.en", BUNDLED_CLIP)[None], DecodingOptions(language="en")
    )[0]
    assert ours.tokens == reference.tokens("tiny.en", BUNDLED_CLIP), ours.text
    assert ours.text == reference.decode("tiny.en", BUNDLED_CLIP).text


@requires_reference
def test_max_transcript_equals_openai_whisper(models, reference):
    from max_whisper.audio import load_audio

    ours = models.transcribe("tiny.en", "max", BUNDLED_CLIP, temperature=0.0)
    theirs = reference.transcribe("tiny.en", load_audio(BUNDLED_CLIP), temperature=0.0)
    assert ours["text"] == theirs["text"]
    assert [s["tokens"] for s in ours["segments"]] == [s["tokens"] for s in theirs["segments"]]
