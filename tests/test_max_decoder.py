"""The MAX decoder against openai-whisper's own PyTorch model on the same weights.

Token-identical greedy decoding on every shared clip and beam search (5) on the transcribed clips,
for tiny.en and (marked `base`) base; logits of a prefill and three cached steps within 1e-3;
cross-attention scores for word timing; and a MAX transcription that never imports torch.
Compiled graphs come from the on-disk .mef cache (the first run compiles them: minutes).
"""

from __future__ import annotations

import numpy as np
import pytest

from max_whisper.decoding import DecodingOptions
from support import (
    CLIPS,
    LOGITS_ATOL,
    MODEL_NAMES,
    TRANSCRIBED,
    clip_ids,
    requires_reference,
    requires_shared_audio,
    run_python,
    shared_clip,
)

pytestmark = [requires_shared_audio]


def _ours(models, reference, name: str, clip, **options):
    mel = reference.mel(name, clip)
    return models.get(name, "max").decode(mel[None], DecodingOptions(language="en", **options))[0]


@requires_reference
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("clip", CLIPS, ids=clip_ids(CLIPS))
def test_greedy_tokens_match_reference(models, reference, name, clip):
    ours = _ours(models, reference, name, clip)
    assert ours.tokens == reference.tokens(name, clip), f"{clip.name}: {ours.text!r}"
    assert np.isfinite(ours.avg_logprob) and 0 <= ours.no_speech_prob <= 1


@requires_reference
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("clip", TRANSCRIBED, ids=clip_ids(TRANSCRIBED))
def test_beam_search_tokens_match_reference(models, reference, name, clip):
    ours = _ours(models, reference, name, clip, beam_size=5)
    assert ours.tokens == reference.tokens(name, clip, beam_size=5), f"{clip.name}: {ours.text!r}"


@requires_reference
@pytest.mark.parametrize("rows", ["alike", "distinct"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_logits_prefill_and_steps_match_reference(models, reference, name, rows):
    """One prefill of 3 rows (alike as in a beam search, whose prefill runs one row and copies it;
    or distinct) then 3 single-token steps, with two rearranges of the cache rows between."""
    import torch

    torch_model = models.torch(name)
    backend = models.get(name, "max").backend
    features = torch.from_numpy(reference.features(name, shared_clip("librivox-0870")))
    group = 3
    start = list(models.get(name, "max").tokenizer.sot_sequence) + [
        440,
        1049,
    ]  # any text ids will do
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
            if step == 2:  # beams swap places mid-way, twice before the next step
                for order in ([2, 0, 0], [1, 2, 0]):
                    session.rearrange(order)
                    for module in list(cache):
                        cache[module] = cache[module][order]
                    tokens = tokens[order]
            ours = session.logits(tokens)
            with torch.no_grad():
                ref = torch_model.decoder(
                    torch.from_numpy(tokens[:, n_cached:]),
                    features.repeat_interleave(group, 0),
                    kv_cache=cache,
                ).numpy()
            assert (
                ours.shape == ref.shape == (group, tokens.shape[1] - n_cached, backend.dims.n_vocab)
            )
            diffs.append(float(np.abs(ours - ref).max()))
            n_cached = tokens.shape[1]
            tokens = np.concatenate([tokens, rng.integers(0, 50000, (group, 1))], axis=1)
    finally:
        for hook in hooks:
            hook.remove()
    print(
        f"{name} ({rows} rows): max |logits - reference| per call: "
        f"{', '.join(f'{d:.2e}' for d in diffs)}"
    )
    assert max(diffs) < LOGITS_ATOL, diffs


@requires_reference
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_cross_attention_scores_match_reference(models, reference, name):
    model = models.get(name, "max")
    ours_reference = models.get(name, "reference")
    clip = shared_clip("librivox-0880")
    features = ours_reference.embed_audio(reference.mel(name, clip)[None])
    tokens = np.array(
        list(ours_reference.tokenizer.sot_sequence) + reference.tokens(name, clip)[:12]
    )
    ours = model.backend.cross_attention(features, tokens)
    ref = ours_reference.backend.cross_attention(features, tokens)
    dims = model.dims
    assert (
        ours.shape
        == ref.shape
        == (dims.n_text_layer, dims.n_text_head, len(tokens), dims.n_audio_ctx)
    )
    diff = float(np.abs(ours - ref).max())
    print(f"{name}: max |cross-attention scores - reference|: {diff:.2e}")
    assert diff < LOGITS_ATOL


def test_several_windows_and_beams_in_one_batch(models, reference):
    """Two windows with beams in one decoder session give what each window gives alone."""
    model = models.get("tiny.en", "max")
    mels = np.stack(
        [reference.mel("tiny.en", shared_clip(p)) for p in ("librivox-0880", "LJ002-0020")]
    )
    together = model.decode(mels, DecodingOptions(language="en", beam_size=3))
    alone = [model.decode(m[None], DecodingOptions(language="en", beam_size=3))[0] for m in mels]
    assert [r.tokens for r in together] == [r.tokens for r in alone]


def test_windows_leave_a_batch_without_touching_shared_cross_kv(models):
    """A session whose windows leave keeps the others' rows: its next logits are those of a
    session on the kept windows alone. It compacts the cross K/V in place only when no other
    session was given the same buffers."""
    decoder = models.get("tiny.en", "max").backend.decoder
    rng = np.random.default_rng(5)
    features = rng.standard_normal((3, 1500, 384)).astype(np.float32)
    prompt = np.array([[50257, 50362, 440]] * 3)
    step = np.hstack([prompt, [[383], [1114], [257]]])

    expected = decoder.new_session(features[[0, 2]])
    expected.logits(prompt[[0, 2]])
    expected = expected.logits(step[[0, 2]])
    originals = [decoder._to_numpy(b).copy() for b in decoder.cross_kv(features)]

    for moved_on in (False, True):  # shared, then shared and no longer the decoder's last
        reader, leaver = decoder.new_session(features), decoder.new_session(features)
        if moved_on:
            decoder.new_session(features[::-1].copy())
        leaver.logits(prompt)
        leaver.keep_windows([0, 2])
        np.testing.assert_allclose(leaver.logits(step[[0, 2]]), expected, rtol=0, atol=1e-4)
        reader_cross = [decoder._to_numpy(b) for b in reader.cross]
        assert all(np.array_equal(a, b) for a, b in zip(reader_cross, originals))

    alone = decoder.new_session(features[::-1] + 1)  # its own cross K/V: compacted in place
    before = [decoder._to_numpy(b).copy() for b in alone.cross]
    alone.logits(prompt)
    alone.keep_windows([0, 2])
    alone.logits(step[[0, 2]])
    assert decoder._last_cross is None  # claimed: no later session gets the changed buffers
    assert all(np.array_equal(decoder._to_numpy(b), o[[0, 2]]) for b, o in zip(alone.cross, before))


def test_a_gpus_copied_cache_decodes_as_the_in_place_one(models, reference):
    """The KV cache a GPU uses (each step returns it grown, in MAX's ops), run here on the CPU:
    two windows with beams in one session (a shared prefill, reorders, the shorter window leaving
    the batch) and greedy decoding give the same tokens as the in-place cache."""
    from max_whisper.backends.max.decoder import MaxDecoder
    from max_whisper.backends.max.device import MaxRuntime
    from max_whisper.weights import load_model_weights

    model = models.get("tiny.en", "max")
    weights = load_model_weights("tiny.en")
    copied = MaxDecoder(weights.dims, weights.params, MaxRuntime.create("cpu"), in_place=False)
    assert not copied.in_place and model.backend.decoder.in_place
    mels = np.stack(
        [reference.mel("tiny.en", shared_clip(p)) for p in ("librivox-0880", "LJ002-0020")]
    )
    options = [DecodingOptions(language="en", beam_size=3), DecodingOptions(language="en")]
    in_place = [[r.tokens for r in model.decode(mels, o)] for o in options]
    backend, decoder = model.backend, model.backend.decoder
    backend.decoder = copied
    try:
        assert [[r.tokens for r in model.decode(mels, o)] for o in options] == in_place
    finally:
        backend.decoder = decoder


def test_max_transcription_never_imports_torch():
    clip = shared_clip("librivox-0880")
    script = (
        "import sys\n"
        "from max_whisper import load_model\n"
        f"result = load_model('tiny.en', backend='max').transcribe({str(clip)!r})\n"
        "print(result['text'])\n"
        "leaked = sorted(m for m in ('torch', 'whisper') if m in sys.modules)\n"
        "assert not leaked, leaked\n"
    )
    done = run_python(script, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "young man" in done.stdout.lower(), done.stdout


def test_float16_copies_only_where_the_weights_are_float16():
    """The bundled weights are float16 values, so the logits and the few-rows step may use float16
    copies of them; a weight that float16 would round keeps everything float32 (exactness first)."""
    from max_whisper.backends.max.decoder import uses_half_weights
    from max_whisper.backends.max.device import MaxRuntime
    from max_whisper.backends.max.weight_layout import exact_in_float16, step_registry
    from max_whisper.weights import load_model_weights

    weights = load_model_weights("tiny.en")
    dims, params = weights.dims, weights.params
    embedding = params["decoder.token_embedding.weight"]
    assert exact_in_float16(embedding)
    nudged = embedding.copy()
    nudged[7, 3] = np.nextafter(nudged[7, 3], np.float32(1))  # one float32 ulp: not a float16
    assert not exact_in_float16(nudged)
    assert not exact_in_float16(np.array([1e5], np.float32))  # overflows float16

    cpu = MaxRuntime.create("cpu")
    assert uses_half_weights(cpu, dims, params)
    assert not uses_half_weights(cpu, dims, {**params, "decoder.token_embedding.weight": nudged})
    mlp = "decoder.blocks.2.mlp.0.weight"
    layer = params[mlp].copy()
    layer[0, 0] = np.nextafter(layer[0, 0], np.float32(1))
    assert not uses_half_weights(cpu, dims, {**params, mlp: layer})

    registry = step_registry(dims, params, half=True)
    half = registry["token_embedding_half"]
    assert half.dtype == np.float16 and np.array_equal(half.astype(np.float32), embedding)
    qkv = registry["blocks.1.attn.qkv.weight_half"]  # [3d, d], q unscaled
    d = dims.n_text_state
    assert qkv.shape == (3 * d, d)
    assert np.array_equal(qkv[:d], params["decoder.blocks.1.attn.query.weight"])
    assert np.array_equal(qkv[2 * d :], params["decoder.blocks.1.attn.value.weight"])


@pytest.mark.parametrize("half", [True, False])
def test_every_step_graph_builds(half):
    """The step graph with either output projection, and the all-float16 few-rows one, build
    (building is cheap; compiling is not); on a CPU each layer's K/V cache is written in place,
    and its self- and cross-attention run, through our kernels: no cache is copied or output."""
    from max.graph import DeviceRef

    from max_whisper.backends.max.decoder_graph import build_step_graph
    from max_whisper.weights import load_model_weights

    dims = load_model_weights("tiny.en").dims
    graph = build_step_graph(dims, DeviceRef.CPU(), half_head=half, half_layers=half)
    text = str(graph)
    layers = dims.n_text_layer
    # the few-rows graph: LayerNorm then a projection 3 times a layer, a projection then the
    # residual sum 3 times, then the final LayerNorm and the logits
    assert text.count("norm_half_projection") == (3 * layers if half else 0)
    assert text.count("half_projection_add") == (3 * layers if half else 0)
    assert text.count("norm_half_gemv") == (1 if half else 0)
    assert "half_weight_gemv" not in text
    assert text.count("store_kv") == text.count("slot_attention") == layers
    assert text.count("cross_attention") == layers
    assert "concat" not in text and "masked_attention" not in text
    assert len(graph.output_types) == 1  # the logits alone
    scores = str(build_step_graph(dims, DeviceRef.CPU(), scores=True))
    assert "cross_attention" not in scores  # the scores graph returns the scores themselves


def test_the_decoder_builds_for_a_gpu_on_maxs_own_ops():
    """Our kernels are CPU code: a GPU's decoder graphs (cross K/V, step, scores) call none of
    them; the step grows each layer's cache and attends with MAX's ops."""
    from max.graph import DeviceRef

    from max_whisper.backends.max.decoder_graph import build_cross_kv_graph, build_step_graph
    from max_whisper.weights import load_model_weights

    dims = load_model_weights("tiny.en").dims
    gpu = DeviceRef.GPU()
    step = str(build_step_graph(dims, gpu))
    graphs = [
        step,
        str(build_step_graph(dims, gpu, scores=True)),
        str(build_cross_kv_graph(dims, gpu)),
    ]
    assert not any("mo.custom" in text for text in graphs)
    assert step.count("concat") == 2 * dims.n_text_layer  # each layer's K and V caches
    assert step.count("softmax") == 2 * dims.n_text_layer  # its self- and cross-attention


def test_the_few_rows_step_matches_the_float32_step(models):
    """The all-float16 few-rows graph and the float32 step graph give the same logits and caches
    (within float32 reordering) for a prompt, then single steps, for one row and for 5 beams
    (reordered after the third step: two beams continue one row, one row is continued by none)."""
    decoder = models.get("tiny.en", "max").backend.decoder
    assert decoder._step_rows is not decoder._step  # the bundled weights are float16-exact
    rng = np.random.default_rng(3)
    features = rng.standard_normal((1, 1500, 384)).astype(np.float32)
    cross = decoder.cross_kv(features)
    for group in (1, 5):
        tokens = rng.integers(0, 50000, (1, group, 6))
        caches = {}
        for name, graph in (("rows", decoder._step_rows), ("step", decoder._step)):
            cache, logits = decoder.new_cache(1, group, capacity=8), []
            for n in range(6):
                if n == 3 and group == 5:
                    cache.reorder(np.array([1, 1, 0, 4, 3]))
                order, buffers = cache.step_inputs(1)
                positions, mask = decoder_positions(n, 1, group)
                out, *outputs = graph.execute(
                    *(
                        decoder._to_device(a)
                        for a in (tokens[..., n : n + 1], positions, np.array([0]), mask)
                    ),
                    decoder._to_device(order.reshape(1, group, -1)),
                    *cross,
                    *buffers,
                )
                cache.advance(order, outputs)
                logits.append(decoder._to_numpy(out))
            # each layer's K [S, H, hd, capacity] and V [S, H, capacity, hd]: the 6 positions
            layers = [a[..., :6] if i % 2 == 0 else a[:, :, :6] for i, a in enumerate(cache.arrays)]
            caches[name] = (np.stack(logits), layers, cache.history)
        (rows_logits, rows_cache, rows_history), (step_logits, step_cache, step_history) = (
            caches["rows"],
            caches["step"],
        )
        assert np.array_equal(rows_history, step_history)
        assert np.abs(rows_logits - step_logits).max() < 1e-3
        assert (rows_logits.argmax(-1) == step_logits.argmax(-1)).all()
        for a, b in zip(rows_cache, step_cache):
            assert np.abs(a - b).max() < 1e-3


def decoder_positions(n_past: int, n_new: int, group: int):
    from max_whisper.backends.max.decoder import step_positions

    return step_positions(n_past, n_new, np.zeros(1, np.int64), group)
