"""The NumPy implementation (the first run's path while MAX compiles): its float64 evaluation is the
network openai-whisper computes, and its float32 tokens are the reference's on every shared clip."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from max_whisper.decoding import DecodingOptions, decode
from support import CLIPS, TRANSCRIBED, clip_ids, requires_reference, requires_shared_audio

pytestmark = [requires_reference, requires_shared_audio]


@pytest.fixture(scope="module")
def numpy_backend(models):
    from max_whisper.backends.numpy_backend import NumpyBackend

    return NumpyBackend(models.weights("tiny.en"))


def test_float64_evaluation_is_openai_whisper_in_float64(models, reference, monkeypatch):
    """The same network as openai-whisper's modules run in float64 (whose attention takes its
    softmax in float32, so they agree to ~1e-5, against the ~5e-4 of float32 evaluations): encoder
    features and the logits of a short prompt."""
    import torch
    import whisper.model

    from max_whisper.backends.numpy_backend import NumpyModel

    mel = reference.mel("tiny.en", CLIPS[0])[None].astype(np.float64)
    model = copy.deepcopy(models.torch("tiny.en")).double()
    monkeypatch.setattr(
        whisper.model.LayerNorm, "forward", torch.nn.LayerNorm.forward
    )  # no cast to fp32
    monkeypatch.setattr(whisper.model.Linear, "forward", torch.nn.Linear.forward)
    tokens = np.array([[50257, 50362, 440, 1049]])
    with torch.no_grad(), whisper.model.disable_sdpa():
        features = model.encoder(torch.from_numpy(mel)).numpy()
        logits = model.decoder(torch.from_numpy(tokens), torch.from_numpy(features)).numpy()
    ours = NumpyModel(models.weights("tiny.en"), np.float64)
    got = ours.encode(mel)
    np.testing.assert_allclose(got, features, atol=5e-5)
    got_logits, _ = ours.decode(tokens, 0, ours.cross_kv(features), None)
    np.testing.assert_allclose(got_logits, logits, atol=1e-5)


@pytest.mark.parametrize("clip", CLIPS, ids=clip_ids(CLIPS))
def test_greedy_tokens_match_reference(models, reference, numpy_backend, clip):
    mel = reference.mel("tiny.en", clip)
    tokenizer = models.get("tiny.en", "reference").tokenizer
    ours = decode(
        numpy_backend, tokenizer, numpy_backend.encode(mel[None]), DecodingOptions(language="en")
    )[0]
    assert ours.tokens == reference.tokens("tiny.en", clip), clip.name


@pytest.mark.parametrize("clip", TRANSCRIBED[:3], ids=clip_ids(TRANSCRIBED[:3]))
def test_beam_search_tokens_match_reference(models, reference, numpy_backend, clip):
    """Beam search (5): the beams of a window share its cross K/V (one query block per window)."""
    mel = reference.mel("tiny.en", clip)
    tokenizer = models.get("tiny.en", "reference").tokenizer
    options = DecodingOptions(language="en", beam_size=5)
    ours = decode(numpy_backend, tokenizer, numpy_backend.encode(mel[None]), options)[0]
    assert ours.tokens == reference.tokens("tiny.en", clip, beam_size=5), clip.name


def test_session_caches_and_rearranges(numpy_backend):
    """Cached steps give the logits of a full recompute; a rearrange reorders the cache rows."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((1, 1500, 384)).astype(np.float32) * 0.5
    tokens = np.array([[50257, 50362, 440, 1049], [50257, 50362, 1374, 2264]])
    full = numpy_backend.decoder_session(features).logits(tokens)
    session = numpy_backend.decoder_session(features)
    first = session.logits(tokens[:, :2])
    second = session.logits(tokens[:, :3])
    session.rearrange([1, 0])
    third = session.logits(tokens[::-1])
    np.testing.assert_allclose(first, full[:, :2], atol=1e-4)
    np.testing.assert_allclose(second[:, 0], full[:, 2], atol=1e-4)
    np.testing.assert_allclose(third[:, 0], full[::-1, 3], atol=1e-4)
    only_last = numpy_backend.decoder_session(features).logits(tokens, positions=[0, 3])
    np.testing.assert_allclose(only_last, full[:, [0, 3]], atol=1e-4)
