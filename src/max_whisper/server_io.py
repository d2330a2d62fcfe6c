"""What a transcription request carries in and out: the uploaded audio as samples, and the result
in each response format."""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np

from .errors import MaxWhisperError

SEGMENT_KEYS = (
    "id",
    "seek",
    "start",
    "end",
    "text",
    "tokens",
    "temperature",
    "avg_logprob",
    "compression_ratio",
    "no_speech_prob",
)


def read_upload(upload) -> np.ndarray:
    """An uploaded file (a starlette UploadFile) as 16 kHz mono samples, by way of a temp file
    (always deleted). Audio that cannot be read: a MaxWhisperError of one line naming the upload."""
    from .audio import load_audio

    suffix = os.path.splitext(upload.filename or "")[1]
    fd, path = tempfile.mkstemp(suffix=suffix if re.fullmatch(r"\.\w{1,8}", suffix) else ".bin")
    try:
        with os.fdopen(fd, "wb") as f:
            upload.file.seek(0)
            while chunk := upload.file.read(1 << 20):
                f.write(chunk)
        return load_audio(path)
    except MaxWhisperError as exc:
        raise MaxWhisperError(upload_error(exc, path, upload.filename)) from None
    finally:
        os.unlink(path)


def upload_error(exc: Exception, path: str | None = None, filename: str | None = None) -> str:
    """The first line of an error about an upload, naming it as the client did."""
    text = str(exc)
    if path:
        text = text.replace(path, filename or "upload")
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def render(result: dict, fmt: str, task: str, duration: float, words: bool):
    """The response for `result` in `fmt` (json, text, srt, vtt, verbose_json)."""
    from fastapi.responses import JSONResponse, PlainTextResponse

    text = result["text"].strip()
    if fmt == "json":
        return JSONResponse({"text": text})
    if fmt == "text":
        return PlainTextResponse(text)
    if fmt in ("srt", "vtt"):
        from .writers import render as subtitles

        return PlainTextResponse(
            subtitles(result, fmt), media_type="text/vtt" if fmt == "vtt" else "text/plain"
        )
    return JSONResponse(verbose_json(result, task, duration, text, words))


def verbose_json(result: dict, task: str, duration: float, text: str, words: bool) -> dict:
    from .tokenizer import LANGUAGES

    def plain(value):  # numpy scalars -> JSON numbers
        return (
            [int(t) for t in value]
            if isinstance(value, list)
            else value.item()
            if hasattr(value, "item")
            else value
        )

    body = {
        "task": task,
        "language": LANGUAGES.get(result["language"], result["language"]),
        "duration": round(duration, 3),
        "text": text,
        "segments": [{k: plain(s[k]) for k in SEGMENT_KEYS if k in s} for s in result["segments"]],
    }
    if words:
        body["words"] = [
            {"word": w["word"].strip(), "start": float(w["start"]), "end": float(w["end"])}
            for s in result["segments"]
            for w in s.get("words", [])
        ]
    return body
