"""The engine service: streams submitted from any thread run in one batching engine, each with the
result it gets alone; a cancelled stream leaves the batch; close() stops it all.

On the session's tiny.en MAX model behind a gate (support.GatedBackend) that holds the engine's
thread at its next encode, so that what shares a batch is certain."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from max_whisper.audio import load_audio
from max_whisper.engine_service import EngineService
from max_whisper.errors import MaxWhisperError
from max_whisper.options import TranscribeOptions
from support import CLIPS, gated_model, requires_shared_audio, shared_clip, wait_for

pytestmark = requires_shared_audio
OPTIONS = TranscribeOptions(temperature=0.0)


@pytest.fixture
def service(models):
    service = EngineService(gated_model(models.get("tiny.en", "max")), batch_size=4)
    yield service
    service.model.backend.gate.set()
    service.close(timeout=60)


def segment_tokens(result: dict) -> list[list[int]]:
    return [s["tokens"] for s in result["segments"]]


def test_streams_from_many_threads_batch_and_match_alone(models, service):
    clips = CLIPS[1:6]  # five: one waits for a slot in the batch of four
    alone = [models.transcribe("tiny.en", "max", clip, temperature=0.0) for clip in clips]
    seen: list[list[dict]] = [[] for _ in clips]
    service.model.backend.gate.clear()
    with ThreadPoolExecutor(len(clips)) as pool:
        futures = list(
            pool.map(
                lambda i: service.submit(load_audio(clips[i]), OPTIONS, on_segment=seen[i].append),
                range(len(clips)),
            )
        )
    service.model.backend.gate.set()
    results = [f.result(timeout=300) for f in futures]
    for i, clip in enumerate(clips):
        assert segment_tokens(results[i]) == segment_tokens(alone[i]), clip.name
        assert results[i]["text"] == alone[i]["text"] and seen[i] == results[i]["segments"]
    stats = service.stats()
    assert (stats["largest_batch"], stats["completed"], stats["running"]) == (4, 5, 0)


def test_a_cancelled_stream_leaves_the_batch(models, service):
    """A recording of several windows, cancelled at its first segment: no window after it is
    encoded, and the service goes on serving."""
    speech = [load_audio(shared_clip(name)) for name in ("libri-1088", "librivox")]
    pause = np.zeros(16000 * 20, np.float32)
    recording = np.concatenate([part for clip in speech for part in (clip, pause)])
    assert len(recording) > 16000 * 40  # two windows at least
    gate = service.model.backend.gate
    gate.clear()
    future = service.submit(recording, OPTIONS, on_segment=lambda segment: future.cancel())
    gate.set()
    wait_for(future.cancelled, timeout=300)
    wait_for(lambda: service.stats()["running"] == 0)  # left the batch
    assert service.model.backend.windows == 1
    clip = shared_clip("librivox-0880")
    assert (
        service.submit(load_audio(clip), OPTIONS).result(timeout=300)["text"]
        == models.transcribe("tiny.en", "max", clip, temperature=0.0)["text"]
    )


def test_a_failing_stream_fails_alone(models, service, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio\n" * 100)
    clip = shared_clip("librivox-0880")
    failing = service.submit(str(bad), OPTIONS)
    fine = service.submit(str(clip), OPTIONS)
    with pytest.raises(MaxWhisperError):
        failing.result(timeout=300)
    expected = models.transcribe("tiny.en", "max", clip, temperature=0.0)
    assert segment_tokens(fine.result(timeout=300)) == segment_tokens(expected)


def test_close_cancels_what_runs_and_waits(service):
    clip = load_audio(shared_clip("librivox-0880"))
    service.model.backend.gate.clear()
    running = service.submit(clip, OPTIONS)
    wait_for(lambda: service.stats()["running"] == 1)
    waiting = [service.submit(clip, OPTIONS) for _ in range(5)]  # one past the batch of 4 too
    assert not service.close(timeout=0)  # the engine's thread is held at the gate
    assert running.cancelled() and all(f.cancelled() for f in waiting)
    with pytest.raises(RuntimeError, match="closed"):
        service.submit(clip, OPTIONS)
    service.model.backend.gate.set()
    assert service.close(timeout=60) and service.stats()["completed"] == 0
