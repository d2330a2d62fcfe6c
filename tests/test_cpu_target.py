"""$MAX_WHISPER_CPU_TARGET: the code an older x86-64 CPU runs, compiled and run on this one.

The flags that choose our code paths keep to the level, a wrong level is a one-line error, the
compiled-graph cache keeps the levels apart, and on an AVX-512 machine tiny.en's graphs compiled
for x86-64-v3 (AVX2: panels of 16, no 512-bit instructions) decode every shared clip to the
reference's tokens, greedy and beam search 5: the path an AVX2 machine takes, checked wherever
the tests run.
"""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest

from max_whisper.cpu import CPU_TARGET_ENV, X86_LEVELS, cpu_flags, cpu_target, host_flags
from max_whisper.errors import UsageError
from support import (
    CLIPS,
    TRANSCRIBED,
    one_error_line,
    requires_reference,
    requires_shared_audio,
    run_cli,
    run_python,
    subprocess_env,
)

requires_x86 = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64"), reason="the x86-64 levels need an x86-64 CPU"
)


requires_avx512 = pytest.mark.skipif(
    not X86_LEVELS["x86-64-v4"] <= host_flags(),
    reason="this CPU's own code is the AVX2 path: every other MAX test runs it",
)


@requires_x86
def test_flags_keep_to_the_level(monkeypatch):
    host = host_flags()
    monkeypatch.delenv(CPU_TARGET_ENV, raising=False)
    assert cpu_flags() == host and cpu_target() is None

    monkeypatch.setenv(CPU_TARGET_ENV, "x86-64-v2")
    flags = cpu_flags()
    assert not {f for f in flags if f.startswith(("avx", "fma", "f16c", "amx"))}
    assert "sse2" in flags and flags <= host

    if X86_LEVELS["x86-64-v3"] <= host:
        monkeypatch.setenv(CPU_TARGET_ENV, "x86-64-v3")
        flags = cpu_flags()
        assert {"avx2", "fma", "f16c"} <= flags
        assert not {f for f in flags if f.startswith("avx512")}


@requires_x86
def test_a_wrong_level_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv(CPU_TARGET_ENV, "skylake")
    with pytest.raises(UsageError, match="choose one of x86-64, x86-64-v2"):
        cpu_target()
    if not X86_LEVELS["x86-64-v4"] <= host_flags():
        monkeypatch.setenv(CPU_TARGET_ENV, "x86-64-v4")
        with pytest.raises(UsageError, match="cannot run"):
            cpu_target()

    audio = tmp_path / "a.wav"
    audio.write_bytes(b"")  # never read: the level is checked first
    result = run_cli(
        "transcribe", audio, env=subprocess_env(**{CPU_TARGET_ENV: "skylake"}), timeout=120
    )
    assert result.returncode == 2
    assert CPU_TARGET_ENV in one_error_line(result)


@requires_x86
def test_the_graph_cache_keeps_levels_apart(monkeypatch):
    from max_whisper.backends.max.compile_cache import cache_key
    from max_whisper.backends.max.device import MaxRuntime

    monkeypatch.delenv(CPU_TARGET_ENV, raising=False)
    session = MaxRuntime.create("cpu").session
    signature = {"graph": "encoder", "code": "x"}
    keys = {cache_key(session, signature)}
    for level in ("x86-64", "x86-64-v2"):
        monkeypatch.setenv(CPU_TARGET_ENV, level)
        keys.add(cache_key(session, signature))
    assert len(keys) == 3
    monkeypatch.delenv(CPU_TARGET_ENV)
    assert cache_key(session, signature) in keys


# tiny.en on `max` in a child whose $MAX_WHISPER_CPU_TARGET is set: the greedy tokens of each mel in
# the file argv[1], beam search 5's of those named in argv[2:], and what the level chose
CHILD = """
import json, sys
import numpy as np
from max.driver import get_virtual_cpu_target
from max.dtype import DType
from max.graph import DeviceRef
from max_whisper import load_model
from max_whisper.backends.max import custom_ops
from max_whisper.decoding import DecodingOptions

model = load_model("tiny.en", backend="max", device="cpu")
mels = np.load(sys.argv[1])
def tokens(name, **options):
    return model.decode(mels[name][None], DecodingOptions(language="en", **options))[0].tokens

print(json.dumps({
    "target": get_virtual_cpu_target(),
    "panel_width": custom_ops.PANEL_WIDTH,
    "uses_panels": custom_ops.uses_panels(DeviceRef.CPU(), DType.float32, 384),
    "greedy": {name: tokens(name) for name in mels.files},
    "beam": {name: tokens(name, beam_size=5) for name in sys.argv[2:]},
}))
"""


@requires_x86
@requires_avx512
@requires_shared_audio
@requires_reference
def test_the_avx2_level_gives_the_reference_tokens(reference, tmp_path):
    level = "x86-64-v3"
    mels = tmp_path / "mels.npz"
    np.savez(mels, **{clip.name: reference.mel("tiny.en", clip) for clip in CLIPS})

    result = run_python(
        CHILD,
        timeout=900,  # the level's graphs compile the first time: minutes
        args=[str(mels), *(clip.name for clip in TRANSCRIBED)],
        **{CPU_TARGET_ENV: level},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    child = json.loads(result.stdout.strip().splitlines()[-1])

    assert child["target"] == level
    assert child["uses_panels"] and child["panel_width"] == 16  # two 8-float vectors
    for clip in CLIPS:
        assert child["greedy"][clip.name] == reference.tokens("tiny.en", clip), clip.name
    for clip in TRANSCRIBED:
        beam = reference.tokens("tiny.en", clip, beam_size=5)
        assert child["beam"][clip.name] == beam, clip.name
