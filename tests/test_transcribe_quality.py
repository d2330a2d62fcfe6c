"""Word error rate on the referenced clips (Whisper's English normaliser, then jiwer)."""
import pytest

from conftest import SHARED_AUDIO, get_model, requires_reference, requires_shared_audio

pytestmark = [requires_reference, requires_shared_audio]
MAX_WER = 0.06


def test_reference_tiny_en_wer(transcripts):
    jiwer = pytest.importorskip("jiwer")
    from whisper.normalizers import EnglishTextNormalizer

    normalise = EnglishTextNormalizer()
    model = get_model("tiny.en", "reference")
    refs, hyps = [], []
    for name, reference in transcripts.items():
        hypothesis = model.transcribe(str(SHARED_AUDIO / name), temperature=0.0)["text"]
        refs.append(normalise(reference))
        hyps.append(normalise(hypothesis))
        print(f"{name}: {hypothesis.strip()!r}")
    wer = jiwer.wer(refs, hyps)
    print(f"tiny.en reference WER over {len(refs)} clips: {wer:.3%}")
    assert wer <= MAX_WER
