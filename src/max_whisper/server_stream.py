"""`stream=true` on the transcription routes: OpenAI's server-sent events.

`transcript.text.delta` carries each segment's text as it is decoded, `transcript.text.done` the
whole text and the usage; a failure after the stream began is an `error` event (the openai client
raises it). Joined, the deltas are the text of the non-streamed answer.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

AUDIO_TOKENS_PER_SECOND = 50  # Whisper's encoder: one position per 20 ms


def sse(event: dict, name: str | None = None) -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


class SegmentEvents:
    """Carries segments from the model's thread to the response, in order, then the end:
    ("segment", dict) ..., then ("done", (result, seconds)) or ("error", exception)."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, kind: str, value) -> None:  # from any thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def on_segment(self, segment: dict) -> None:
        self.put("segment", segment)

    def finish(self, future) -> None:  # a concurrent future's done callback
        error = future.exception()
        self.put("error", error) if error else self.put("done", future.result())

    async def response(self, job):
        """The streaming response of a job (a concurrent future) once its first event is in: an
        error before any output (unreadable audio...) is raised, for a plain error answer."""
        from starlette.responses import StreamingResponse

        job.add_done_callback(self.finish)
        first = await self.queue.get()
        if first[0] == "error":
            raise first[1]
        return StreamingResponse(self.body(first), media_type="text/event-stream")

    async def body(self, first: tuple) -> AsyncIterator[bytes]:
        kind, value = first
        opening = True
        while True:
            if kind == "segment":
                text = value["text"].lstrip() if opening else value["text"]
                opening = opening and not text
                if text:
                    yield sse({"type": "transcript.text.delta", "delta": text, "logprobs": None})
            elif kind == "done":
                yield sse(done_event(*value))
                return
            else:
                message = getattr(value, "detail", None) or f"{type(value).__name__}: {value}"
                body = {"message": message, "type": "server_error", "code": None}
                yield sse({"type": "error", "error": body}, "error")
                return
            kind, value = await self.queue.get()


def done_event(result: dict, seconds: float) -> dict:
    audio = math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)
    text_tokens = sum(len(s.get("tokens", ())) for s in result["segments"])
    usage = {
        "type": "tokens",
        "input_tokens": audio,
        "input_token_details": {"audio_tokens": audio, "text_tokens": 0},
        "output_tokens": text_tokens,
        "total_tokens": audio + text_tokens,
    }
    return {"type": "transcript.text.done", "text": result["text"].strip(), "usage": usage}
