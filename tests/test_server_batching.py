"""The server's continuous batching: concurrent requests join one running batch (uploads, streamed
answers and realtime sessions alike); the queue bound, 503 and a client's disconnect on top of it.

The app runs in this process on the session's tiny.en MAX model, behind a gate that holds the
engine's thread at its next encode for as long as a test needs, so that who shares a batch, who
waits and who is refused is certain.
"""

import contextlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import gated_model, requires, requires_shared_audio, serving, shared_clip, wait_for

pytestmark = [
    requires_shared_audio,
    requires("fastapi", "uvicorn", "multipart", "httpx", reason="the serve extra is not installed"),
]


@pytest.fixture
def serve(models):
    """serve(**create_app limits) -> (url, the gated backend, the app's engine service)."""
    from max_whisper.server import create_app

    with contextlib.ExitStack() as stack:

        def start(**limits):
            model = gated_model(models.get("tiny.en", "max"))
            app = create_app(model, **limits)
            url = stack.enter_context(serving(app))
            stack.callback(model.backend.gate.set)  # open before the server stops
            return url, model.backend, app.state.engine

        yield start


def post(url: str, clip, timeout: float = 300, **fields):
    import httpx

    return httpx.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": (clip.name, clip.read_bytes())},
        data=fields,
        timeout=timeout,
    )


def segment_tokens(reply) -> list[list[int]]:
    assert reply.status_code == 200, reply.text
    return [s["tokens"] for s in reply.json()["segments"]]


def test_concurrent_requests_share_one_batch(serve):
    """8 requests of an 11-s clip at once: each gets the tokens it gets alone, decoded as one batch
    of 8 (the gate holds the first until the others are in)."""
    import httpx

    clip = shared_clip("2412-153948-0001")
    url, backend, engine = serve(batch_size=8)
    alone = post(url, clip, response_format="verbose_json")
    assert httpx.get(f"{url}/health").json()["largest_batch"] == 1
    backend.gate.clear()
    with ThreadPoolExecutor(8) as pool:
        replies = [pool.submit(post, url, clip, response_format="verbose_json") for _ in range(8)]
        wait_for(lambda: engine.stats()["running"] + engine.stats()["waiting"] == 8)
        backend.gate.set()
        replies = [r.result() for r in replies]
    assert [segment_tokens(r) for r in replies] == [segment_tokens(alone)] * 8
    assert {r.json()["text"] for r in replies} == {alone.json()["text"]}
    health = httpx.get(f"{url}/health").json()
    assert (health["largest_batch"], health["batch_size"], health["running"]) == (8, 8, 0)


def test_requests_beyond_a_batch_and_the_queue_get_503(serve):
    """30 at once with batches of 4 and --max-queue 4: 8 are answered, 22 refused at once."""
    clip = shared_clip("librivox-0880")
    url, backend, _ = serve(batch_size=4, max_queue=4)
    backend.gate.clear()  # nothing finishes until the refused have had their answer
    with ThreadPoolExecutor(30) as pool:
        replies = [pool.submit(post, url, clip) for _ in range(30)]
        wait_for(lambda: sum(r.done() for r in replies) >= 22)
        backend.gate.set()
        replies = [r.result() for r in replies]
    busy = [r for r in replies if r.status_code == 503]
    answered = [r for r in replies if r.status_code == 200]
    assert (len(busy), len(answered)) == (22, 8)
    for reply in busy:
        assert reply.json()["error"]["code"] == "queue_full"
        assert int(reply.headers["retry-after"]) >= 1
    after = post(url, clip)  # and the server still answers
    assert after.status_code == 200 and "young man" in after.json()["text"]
    assert {r.json()["text"] for r in answered} == {after.json()["text"]}


@pytest.mark.parametrize("fields", [{}, {"stream": "true"}], ids=["whole", "streamed"])
def test_a_client_that_leaves_while_waiting_is_never_run(serve, fields):
    """Whole or streamed (before its first event), a request whose client gives up frees its place,
    and its stream never runs."""
    import httpx

    clip = shared_clip("librivox-0880")
    url, backend, engine = serve(batch_size=1, max_queue=1)
    backend.gate.clear()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, url, clip)
        wait_for(lambda: engine.stats()["running"] == 1)
        with pytest.raises(httpx.ReadTimeout):  # waits behind the first, then gives up
            post(url, clip, timeout=1, **fields)
        wait_for(lambda: httpx.get(f"{url}/health").json()["queue_depth"] == 0)
        backend.gate.set()
        assert first.result().status_code == 200
    wait_for(lambda: engine.stats()["waiting"] == 0)  # the engine has come to it, and skipped it
    assert (backend.windows, engine.stats()["completed"]) == (1, 1)


@requires("websockets")
def test_streamed_answers_and_live_sessions_join_the_uploads_batch(serve):
    """An upload, a stream=true request and a realtime session's decode wait behind the gate
    together, then run as one batch of the one engine: the streamed deltas join into the upload's
    text, and the session completes its utterance."""
    import json

    import httpx
    from websockets.sync.client import connect

    from max_whisper.audio import load_audio

    clip = shared_clip("librivox-0880")
    url, backend, engine = serve(batch_size=4)
    backend.gate.clear()
    pcm = (load_audio(clip)[: 16000 * 3] * 32767).astype("<i2").tobytes()
    with ThreadPoolExecutor(2) as pool, connect(url.replace("http", "ws") + "/v1/realtime") as ws:
        upload = pool.submit(post, url, clip)
        streamed = pool.submit(post, url, clip, stream="true")
        assert json.loads(ws.recv())["type"] == "transcription_session.created"
        ws.send(pcm)
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        wait_for(lambda: engine.stats()["running"] + engine.stats()["waiting"] == 3)
        backend.gate.set()
        while (event := json.loads(ws.recv(timeout=120)))["type"] != "input_audio_buffer.committed":
            if event["type"].endswith("transcription.completed"):
                completed = event["transcript"]
        text = upload.result().json()["text"]
        events = [json.loads(line[6:]) for line in streamed.result().text.splitlines() if line]
    assert events[-1]["type"] == "transcript.text.done" and events[-1]["text"] == text
    assert "".join(e["delta"] for e in events[:-1]) == text
    assert completed and completed.split()[0] in text
    assert engine.stats()["largest_batch"] == 3
    wait_for(lambda: httpx.get(f"{url}/health").json()["queue_depth"] == 0)
