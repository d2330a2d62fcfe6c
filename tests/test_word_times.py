"""Word timestamps against openai-whisper's own, on its published alignment heads, for the bundled
CTranslate2 weights and the same weights as an openai `.pt` file."""

from __future__ import annotations

import pytest

from max_whisper.audio import load_audio
from support import requires_reference, shared_clip

pytestmark = requires_reference
CLIPS = ["librivox-0870", "2412-153948-0001", "LJ002-0035"]
TOLERANCE_S = 0.02


@pytest.fixture(scope="module")
def openai_model(models):
    import whisper

    model = whisper.model.Whisper(
        whisper.model.ModelDimensions(**models.weights("tiny.en").dims.to_dict())
    )
    model.load_state_dict(models.torch("tiny.en").state_dict(), strict=False)
    model.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny.en"])  # openai's own, by model name
    return model.eval()


@pytest.fixture(scope="module")
def pt_file(models, tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("pt") / "tiny.en.pt"
    state = {
        k: v for k, v in models.torch("tiny.en").state_dict().items() if k != "alignment_heads"
    }
    torch.save({"dims": models.weights("tiny.en").dims.to_dict(), "model_state_dict": state}, path)
    return path


def words(result: dict) -> list[dict]:
    return [w for s in result["segments"] for w in s["words"]]


@pytest.mark.parametrize("source", ["ctranslate2", "openai-pt"])
def test_word_times_match_openai_whisper(models, openai_model, pt_file, source):
    import whisper

    from max_whisper import load_model

    ours = (
        models.get("tiny.en", "max")
        if source == "ctranslate2"
        else load_model(str(pt_file), backend="max")
    )
    for name in CLIPS:
        audio = load_audio(shared_clip(name))
        mine = words(ours.transcribe(audio, word_timestamps=True, temperature=0.0))
        theirs = words(
            whisper.transcribe(
                openai_model, audio, word_timestamps=True, temperature=0.0, fp16=False
            )
        )
        assert [w["word"] for w in mine] == [w["word"] for w in theirs]
        worst = max(
            max(abs(a["start"] - b["start"]), abs(a["end"] - b["end"]))
            for a, b in zip(mine, theirs)
        )
        assert worst <= TOLERANCE_S, f"{name}: {worst * 1000:.0f} ms"
