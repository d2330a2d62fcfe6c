"""The server at its edges: stream=true requests refused before any event, and a client that
hangs up mid-upload."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from support import SAMPLE, requires, serving

pytestmark = requires("fastapi", "uvicorn", "httpx")


class IdleModel:
    """Enough of a model for requests that must be answered before any transcription."""

    name, is_multilingual, backend_name, device = "tiny.en", False, "max", "cpu"
    backend = tokenizer = None  # its engine service never runs a stream

    def transcribe(self, *args, **kwargs):  # pragma: no cover - reaching it is the failure
        raise AssertionError("no request here may reach the model")


@pytest.fixture
def server():
    from max_whisper.server import create_app

    with serving(create_app(IdleModel()), log_level="info") as url:
        yield url


@pytest.mark.parametrize(
    "fields, param",
    [({"stream": "true", "response_format": "srt"}, "stream"), ({"stream": "true"}, "file")],
    ids=["subtitles", "unreadable-audio"],
)
def test_stream_true_errors_before_any_event_are_plain_400s(server, fields, param):
    """Streamed answers are text events: subtitles cannot stream; audio that cannot be read is a
    JSON 400 (not an event stream cut short)."""
    import httpx

    upload = ("sample.wav", open(SAMPLE, "rb").read()[:100] if param == "stream" else b"\0" * 999)
    response = httpx.post(
        f"{server}/v1/audio/transcriptions",
        files={"file": (*upload, "audio/wav")},
        data=fields,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_a_client_that_hangs_up_mid_upload_is_one_info_line(server, caplog):
    body = (
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        + b"\0" * 4096
    )
    head = (
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
        f"boundary=x\r\nContent-Length: {len(body) + 1_000_000}\r\n\r\n"
    ).encode()
    with caplog.at_level(logging.INFO):
        with socket.create_connection(("127.0.0.1", int(server.rsplit(":", 1)[1]))) as client:
            client.sendall(head + body)
            time.sleep(0.5)
        time.sleep(1.5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert any("disconnected during its upload" in r.getMessage() for r in caplog.records)
