"""The MAX decoder against openai-whisper's own PyTorch model on the same weights.

Token-identical greedy decoding on every shared clip and beam search (5) on the transcribed clips,
for tiny.en and (marked `base`) base; logits of a prefill and three cached steps within 1e-3;
cross-attention scores for word timing; and a MAX transcription that never imports torch.
Compiled graphs come from the on-disk .mef cache (the first run compiles them: minutes).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import (SHARED_AUDIO, get_model, get_torch_model, get_weights, reference_transcripts,
                      requires_base, requires_reference, requires_shared_audio, shared_clips)
from max_whisper.audio import first_window_mel, load_audio
from max_whisper.decoding import DecodingOptions

pytestmark = [requires_shared_audio]

CLIPS = shared_clips()
TRANSCRIBED = [c for c in CLIPS if c.name in reference_transcripts()]
MODELS = [
    pytest.param("tiny.en", id="tiny.en"),
    pytest.param("base", id="base", marks=[pytest.mark.base, requires_base]),
]
LOGITS_ATOL = 1e-3


_mels: dict = {}


def _mel_for(name: str, clip: Path) -> np.ndarray:
    n_mels = get_weights(name).dims.n_mels
    if (clip, n_mels) not in _mels:
        _mels[clip, n_mels] = first_window_mel(load_audio(clip), n_mels)
    return _mels[clip, n_mels]


def _reference_tokens(name: str, mel: np.ndarray, **options) -> list[int]:
    import torch
    import whisper

    options = whisper.DecodingOptions(fp16=False, language="en", without_timestamps=False, **options)
    return whisper.decode(get_torch_model(name), torch.from_numpy(mel), options).tokens


def _ours(name: str, mel: np.ndarray, **options):
    return get_model(name, "max").decode(mel[None], DecodingOptions(language="en", **options))[0]


@requires_reference
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("clip", CLIPS, ids=[c.name for c in CLIPS])
def test_greedy_tokens_match_reference(name, clip):
    mel = _mel_for(name, clip)
    ours = _ours(name, mel)
    reference = _reference_tokens(name, mel)
    assert ours.tokens == reference, f"{clip.name}: {ours.text!r}"
    assert np.isfinite(ours.avg_logprob) and 0 <= ours.no_speech_prob <= 1


@requires_reference
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("clip", TRANSCRIBED, ids=[c.name for c in TRANSCRIBED])
def test_beam_search_tokens_match_reference(name, clip):
    mel = _mel_for(name, clip)
    ours = _ours(name, mel, beam_size=5)
    assert ours.tokens == _reference_tokens(name, mel, beam_size=5), f"{clip.name}: {ours.text!r}"


def _clip(prefix: str) -> Path:
    found = [c for c in CLIPS if c.name.startswith(prefix)]
    if not found:
        pytest.skip(f"{prefix}* is not in {SHARED_AUDIO}")
    return found[0]


@requires_reference
@pytest.mark.parametrize("rows", ["alike", "distinct"])
@pytest.mark.parametrize("name", MODELS)
def test_logits_prefill_and_steps_match_reference(name, rows):
    """One prefill of 3 rows (alike as in a beam search, whose prefill runs one row and copies it;
    or distinct) then 3 single-token steps, with a rearrange of the cache rows between."""
    import torch

    torch_model = get_torch_model(name)
    backend = get_model(name, "max").backend
    mel = _mel_for(name, _clip("librivox-0870"))
    with torch.no_grad():
        features = torch_model.encoder(torch.from_numpy(mel[None]))
    group = 3
    start = list(get_model(name, "max").tokenizer.sot_sequence) + [440, 1049]  # any text ids will do
    tokens = np.tile(np.array(start, dtype=np.int64), (group, 1))
    rng = np.random.default_rng(0)
    if rows == "distinct":
        tokens[:, -1] = [440, 1049, 2264]

    session = backend.decoder_session(features.numpy())
    cache, hooks = torch_model.install_kv_cache_hooks()
    diffs = []
    try:
        n_cached = 0
        for step in range(4):
            if step == 2:  # beams swap places mid-way
                order = [2, 0, 0]
                session.rearrange(order)
                for module in list(cache):
                    cache[module] = cache[module][order]
                tokens = tokens[order]
            ours = session.logits(tokens)
            with torch.no_grad():
                ref = torch_model.decoder(torch.from_numpy(tokens[:, n_cached:]),
                                          features.repeat_interleave(group, 0), kv_cache=cache).numpy()
            assert ours.shape == ref.shape == (group, tokens.shape[1] - n_cached, backend.dims.n_vocab)
            diffs.append(float(np.abs(ours - ref).max()))
            n_cached = tokens.shape[1]
            tokens = np.concatenate([tokens, rng.integers(0, 50000, (group, 1))], axis=1)
    finally:
        for hook in hooks:
            hook.remove()
    print(f"{name} ({rows} rows): max |logits - reference| per call: {', '.join(f'{d:.2e}' for d in diffs)}")
    assert max(diffs) < LOGITS_ATOL, diffs


@requires_reference
@pytest.mark.parametrize("name", MODELS)
def test_cross_attention_scores_match_reference(name):
    model = get_model(name, "max")
    reference = get_model(name, "reference")
    mel = _mel_for(name, _clip("librivox-0880"))
    features = reference.embed_audio(mel[None])
    tokens = np.array(list(reference.tokenizer.sot_sequence) + _reference_tokens(name, mel)[:12])
    ours = model.backend.cross_attention(features, tokens)
    ref = reference.backend.cross_attention(features, tokens)
    dims = model.dims
    assert ours.shape == ref.shape == (dims.n_text_layer, dims.n_text_head, len(tokens), dims.n_audio_ctx)
    diff = float(np.abs(ours - ref).max())
    print(f"{name}: max |cross-attention scores - reference|: {diff:.2e}")
    assert diff < LOGITS_ATOL


def test_several_windows_and_beams_in_one_batch():
    """Two windows with beams in one decoder session give what each window gives alone."""
    model = get_model("tiny.en", "max")
    mels = np.stack([_mel_for("tiny.en", _clip("librivox-0880")), _mel_for("tiny.en", _clip("LJ002-0020"))])
    together = model.decode(mels, DecodingOptions(language="en", beam_size=3))
    alone = [model.decode(m[None], DecodingOptions(language="en", beam_size=3))[0] for m in mels]
    assert [r.tokens for r in together] == [r.tokens for r in alone]


def test_max_transcription_never_imports_torch(tmp_path):
    clip = _clip("librivox-0880")
    script = (
        "import sys\n"
        "from max_whisper import load_model\n"
        f"result = load_model('tiny.en', backend='max').transcribe({str(clip)!r})\n"
        "print(result['text'])\n"
        "leaked = sorted(m for m in ('torch', 'whisper') if m in sys.modules)\n"
        "assert not leaked, leaked\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1] / "src"),
                                                      env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "young man" in done.stdout.lower(), done.stdout
