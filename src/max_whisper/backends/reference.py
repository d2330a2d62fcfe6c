"""The reference: openai-whisper's PyTorch model on our weights, fp32, on CPU or CUDA.

torch and openai-whisper are optional (the `reference` extra); nothing here reaches a model hub.
"""

from __future__ import annotations

import numpy as np

from ..errors import MaxWhisperError
from ..weights import ModelWeights


class BackendUnavailable(MaxWhisperError, RuntimeError):
    pass


def _import_torch_whisper():
    try:
        import torch
        import whisper.model
    except ImportError as exc:
        raise BackendUnavailable(
            f"the reference backend needs PyTorch and openai-whisper ({exc.name} is missing): "
            "run `make install-reference` or `pip install -e '.[reference]'`"
        ) from None
    return torch, whisper.model


def torch_device(device: str) -> str:
    torch, _ = _import_torch_whisper()
    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device == "gpu":
        raise BackendUnavailable("--device gpu: PyTorch sees no CUDA device here")
    return "cpu"


def build_torch_model(weights: ModelWeights, device: str = "cpu"):
    """openai-whisper's `Whisper` module holding `weights`, in eval mode, fp32."""
    torch, wm = _import_torch_whisper()
    model = wm.Whisper(wm.ModelDimensions(**weights.dims.to_dict()))
    state = {name: torch.from_numpy(array) for name, array in weights.params.items()}
    model.load_state_dict(state, strict=True)
    if (
        weights.alignment_heads is not None
    ):  # the model's own heads, not openai's default upper half
        mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
        mask[tuple(torch.as_tensor(weights.alignment_heads, dtype=torch.long).T)] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.to(device).eval()


class ReferenceDecoderSession:
    def __init__(self, model, audio_features):
        self.model = model
        self.features = audio_features
        self.cache: dict = {}
        self.n_cached = 0
        self.self_attn_kv = [
            m for block in model.decoder.blocks for m in (block.attn.key, block.attn.value)
        ]

    def logits(self, tokens: np.ndarray, positions: list[int] | None = None) -> np.ndarray:
        torch = _import_torch_whisper()[0]
        n_cached = self.n_cached
        new = torch.from_numpy(np.ascontiguousarray(tokens[:, self.n_cached :])).to(
            self.features.device
        )
        features = self.features
        if features.shape[0] not in (1, new.shape[0]):  # several audios, several beams each
            features = features.repeat_interleave(new.shape[0] // features.shape[0], dim=0)
        # hooks live only during the call, so that concurrent sessions never share them
        cache, hooks = self.model.install_kv_cache_hooks(self.cache)
        try:
            with torch.no_grad():
                out = self.model.decoder(new, features, kv_cache=cache)
        finally:
            for hook in hooks:
                hook.remove()
        self.cache = cache
        self.n_cached = tokens.shape[1]
        if positions is not None:
            out = out[:, [p - n_cached for p in positions]]
        return out.float().cpu().numpy()

    def rearrange(self, source_indices: list[int]) -> None:
        for module in self.self_attn_kv:
            self.cache[module] = self.cache[module][source_indices].detach()


class ReferenceBackend:
    name = "reference"

    def __init__(self, weights: ModelWeights, device: str = "auto"):
        self.torch, self.wm = _import_torch_whisper()
        self.dims = weights.dims
        self.torch_device = torch_device(device)
        self.device = "gpu" if self.torch_device == "cuda" else "cpu"
        self.model = build_torch_model(weights, self.torch_device)

    def _features(self, audio_features: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(audio_features, dtype=np.float32)).to(
            self.torch_device
        )

    def encode(self, mel: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            out = self.model.encoder(
                self.torch.from_numpy(np.ascontiguousarray(mel)).to(self.torch_device)
            )
        return out.float().cpu().numpy()

    def decoder_session(self, audio_features: np.ndarray) -> ReferenceDecoderSession:
        return ReferenceDecoderSession(self.model, self._features(audio_features))

    def cross_attention(self, audio_features: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        scores = [None] * self.dims.n_text_layer
        hooks = [
            block.cross_attn.register_forward_hook(
                lambda _m, _i, outs, index=i: scores.__setitem__(index, outs[-1][0])
            )
            for i, block in enumerate(self.model.decoder.blocks)
        ]
        try:
            with self.torch.no_grad(), self.wm.disable_sdpa():
                tokens_t = self.torch.from_numpy(np.asarray(tokens, dtype=np.int64)[None]).to(
                    self.torch_device
                )
                self.model.decoder(tokens_t, self._features(audio_features))
        finally:
            for hook in hooks:
                hook.remove()
        return np.stack([s.float().cpu().numpy() for s in scores])
