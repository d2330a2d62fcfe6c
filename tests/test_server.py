"""`max-whisper serve`: the OpenAI-compatible API, driven by the official `openai` client.

The server is the real CLI in a subprocess; test_server_batching.py runs the app in-process to
test its batching, queue and disconnects.
"""

import io
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import (
    SHARED_AUDIO,
    requires,
    requires_reference,
    requires_shared_audio,
    subprocess_env,
)

pytestmark = [
    requires_reference,
    requires_shared_audio,
    requires(
        "fastapi",
        "uvicorn",
        "multipart",
        "openai",
        "httpx",
        reason="the serve and test extras are not installed",
    ),
]

CLIP = SHARED_AUDIO / "librivox-0880.wav"
KEY = "test-key"
ENV = subprocess_env()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc=None, log=None, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{open(log).read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"no /health from {url} within {timeout} s")


def client(url: str, key: str | None = KEY):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=key or "none", max_retries=0, timeout=120)


def audio(path=CLIP, name=None):
    return (name or path.name, path.read_bytes())


MODEL_ARGS = [
    "--backend",
    "reference",
    "--model",
    "tiny.en",
    "--device",
    "cpu",
]  # CLI and server alike


@pytest.fixture(scope="module")
def cli_proc():
    """`max-whisper transcribe` on the clip (the text alone: --verbose False), started first so that
    it runs while the server starts."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "max_whisper.cli",
            "transcribe",
            str(CLIP),
            *MODEL_ARGS,
            "--verbose",
            "False",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


@pytest.fixture(scope="module")
def cli_text(cli_proc) -> str:
    out, err = cli_proc.communicate(timeout=300)
    assert cli_proc.returncode == 0, err
    return out.strip()


@pytest.fixture(scope="module")
def server(cli_proc):
    """The real CLI: `python -m max_whisper.cli serve` with an API key, a 1 MB upload limit and
    --max-queue 8 (batches of 8, the default)."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "max_whisper.cli",
            "serve",
            *MODEL_ARGS,
            "--port",
            str(port),
            "--api-key",
            KEY,
            "--max-upload-mb",
            "1",
            "--max-queue",
            "8",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=ENV,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log.name)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(log.name)


def test_transcription_equals_cli(server, cli_text):
    api = client(server)
    assert api.audio.transcriptions.create(model="whisper-1", file=audio()).text == cli_text
    text = api.audio.transcriptions.create(
        model="anything", file=audio(), response_format="text", language="en"
    )
    assert text.strip() == cli_text


def test_verbose_json(server, cli_text):
    result = client(server).audio.transcriptions.create(
        model="whisper-1",
        file=audio(),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert (result.task, result.language, result.text) == ("transcribe", "english", cli_text)
    assert 2.5 < result.duration < 3.5
    assert result.segments and result.words
    for seg in result.segments:
        assert 0 <= seg.start < seg.end <= result.duration + 0.5
        assert seg.tokens and seg.avg_logprob < 0 and 0 <= seg.no_speech_prob <= 1
    assert all(0 <= w.start <= w.end <= result.duration + 0.5 for w in result.words)
    assert "".join(w.word for w in result.words) == cli_text.replace(" ", "")


def test_stream_true_gives_openai_events_that_join_into_the_text(server):
    """OpenAI's transcript.text.delta events, one per segment, read by the openai client."""
    from max_whisper.audio import load_audio

    api = client(server)
    long_clip = audio(SHARED_AUDIO / "libri-1088-134315-0000.wav")  # 16 s: several segments
    whole = api.audio.transcriptions.create(model="whisper-1", file=long_clip).text
    events = list(api.audio.transcriptions.create(model="whisper-1", file=long_clip, stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert [e.type for e in events[len(deltas) :]] == ["transcript.text.done"]
    assert len(deltas) > 1 and "".join(deltas) == whole
    done = events[-1]
    assert done.text == whole
    seconds = len(load_audio(SHARED_AUDIO / "libri-1088-134315-0000.wav")) / 16000
    assert done.usage.input_tokens == math.ceil(seconds * 50)  # encoder positions of the audio
    assert done.usage.output_tokens > len(whole.split())


@requires("srt", "webvtt")
def test_subtitles_parse(server, cli_text):
    import srt
    import webvtt

    api = client(server)
    cues = list(
        srt.parse(
            api.audio.transcriptions.create(model="whisper-1", file=audio(), response_format="srt")
        )
    )
    assert cues and " ".join(c.content for c in cues) == cli_text
    assert all(c.start < c.end for c in cues)
    vtt = api.audio.transcriptions.create(model="whisper-1", file=audio(), response_format="vtt")
    captions = webvtt.from_buffer(io.StringIO(vtt)).captions
    assert captions and " ".join(c.text for c in captions) == cli_text


def test_models_and_health(server):
    import httpx

    assert [m.id for m in client(server).models.list().data] == ["tiny.en"]
    health = httpx.get(f"{server}/health").json()
    assert (
        health["status"] == "ok"
        and health["model"] == "tiny.en"
        and health["backend"] == "reference"
    )
    assert health["device"] == "cpu" and health["queue_depth"] == 0


def test_api_key_is_required(server):
    import httpx
    import openai

    with pytest.raises(openai.AuthenticationError) as err:
        client(server, key="wrong").audio.transcriptions.create(model="whisper-1", file=audio())
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        reply = httpx.get(f"{server}/v1/models", headers=headers)
        assert reply.status_code == 401 and set(reply.json()["error"]) == {
            "message",
            "type",
            "param",
            "code",
        }
    assert httpx.get(f"{server}/health").status_code == 200


def test_bad_requests_get_4xx_and_server_keeps_serving(server, cli_text, tmp_path):
    import httpx
    import openai

    api = client(server)
    bad = {
        "not audio": dict(file=("x.wav", b"this is not audio\n" * 100)),
        "empty": dict(file=("x.wav", b"")),
        "bad format": dict(file=audio(), response_format="docx"),
        "words need verbose_json": dict(file=audio(), timestamp_granularities=["word"]),
        "bad temperature": dict(file=audio(), temperature=3),
        "bad language": dict(file=audio(), language="klingon"),
    }
    for what, kwargs in bad.items():
        with pytest.raises(openai.BadRequestError) as err:
            api.audio.transcriptions.create(model="whisper-1", **kwargs)
        assert err.value.status_code == 400 and err.value.message, what
    with pytest.raises(openai.BadRequestError, match="cannot translate"), warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # the client marks translations deprecated
        api.audio.translations.create(model="whisper-1", file=audio())

    big = ("big.wav", os.urandom(1536 * 1024))
    with pytest.raises(openai.APIStatusError) as err:
        api.audio.transcriptions.create(model="whisper-1", file=big)
    assert err.value.status_code == 413

    def chunks():  # no Content-Length: the server must count the bytes itself
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        for _ in range(24):
            yield os.urandom(64 * 1024)
        yield b"\r\n--b--\r\n"

    reply = httpx.post(
        f"{server}/v1/audio/transcriptions",
        content=chunks(),
        headers={
            "Authorization": f"Bearer {KEY}",
            "Content-Type": "multipart/form-data; boundary=b",
        },
    )
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "file_too_large"

    assert api.audio.transcriptions.create(model="whisper-1", file=audio()).text == cli_text


def test_thirty_concurrent_requests_get_200_or_503(server, cli_text):
    """--max-queue 8 beside a batch of 8: 30 at once get their text or a 503, nothing else, and the
    server answers afterwards (the exact split is tested in test_server_batching.py)."""
    import openai

    api = client(server)

    def call(_):
        try:
            return 200, api.audio.transcriptions.create(model="whisper-1", file=audio()).text
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.headers.get("retry-after")

    with ThreadPoolExecutor(30) as pool:
        replies = list(pool.map(call, range(30)))
    assert {status for status, _ in replies} <= {200, 503}
    assert [text for status, text in replies if status == 200] == [cli_text] * sum(
        status == 200 for status, _ in replies
    )
    assert all(int(retry) >= 1 for status, retry in replies if status == 503)
    assert api.audio.transcriptions.create(model="whisper-1", file=audio()).text == cli_text
