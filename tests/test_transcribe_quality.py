"""Word error rate on the referenced clips (Whisper's English normaliser, then jiwer)."""

from support import SHARED_AUDIO, requires, requires_reference, requires_shared_audio

pytestmark = [requires_reference, requires_shared_audio, requires("jiwer")]
MAX_WER = 0.06


def test_reference_tiny_en_wer(models, transcripts):
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    normalise = EnglishTextNormalizer()
    refs, hyps = [], []
    for name, reference in transcripts.items():
        hypothesis = models.transcribe(
            "tiny.en", "reference", SHARED_AUDIO / name, temperature=0.0
        )["text"]
        refs.append(normalise(reference))
        hyps.append(normalise(hypothesis))
        print(f"{name}: {hypothesis.strip()!r}")
    wer = jiwer.wer(refs, hyps)
    print(f"tiny.en reference WER over {len(refs)} clips: {wer:.3%}")
    assert wer <= MAX_WER
