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
from concurrent.futures import Future
from contextlib import AsyncExitStack

AUDIO_TOKENS_PER_SECOND = 50  # Whisper's encoder: one position per 20 ms


def sse(event: dict, name: str | None = None) -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


class SegmentEvents:
    """Carries a stream's segments from the engine's thread to the response, in order, then its
    end: ("segment", dict) ..., then ("done", result) or ("error", exception)."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.future: Future | None = None

    def put(self, kind: str, value) -> None:  # from any thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def on_segment(self, segment: dict) -> None:
        self.put("segment", segment)

    def follow(self, future: Future) -> asyncio.Future:
        """Follow the engine's `future` (submitted with on_segment): its first event, awaitable."""
        self.future = future
        future.add_done_callback(self._finish)
        return asyncio.ensure_future(self.queue.get())

    def _finish(self, future: Future) -> None:
        if not future.cancelled():
            error = future.exception()
            self.put("error", error) if error else self.put("done", future.result())

    def response(self, first: tuple, seconds: float, cleanup: AsyncExitStack):
        """The streaming response from the `first` event on. `cleanup` (what the request holds:
        its admission...) is closed when the stream ends, however it ends; a client that goes
        away cancels the stream."""
        from starlette.responses import StreamingResponse

        def closed(_) -> None:
            self.loop.call_soon_threadsafe(asyncio.ensure_future, cleanup.aclose())

        self.future.add_done_callback(closed)
        return StreamingResponse(self.body(first, seconds), media_type="text/event-stream")

    async def body(self, first: tuple, seconds: float) -> AsyncIterator[bytes]:
        kind, value = first
        opening = True
        try:
            while True:
                if kind == "segment":
                    text = value["text"].lstrip() if opening else value["text"]
                    opening = opening and not text
                    if text:
                        delta = {"type": "transcript.text.delta", "delta": text, "logprobs": None}
                        yield sse(delta)
                elif kind == "done":
                    yield sse(done_event(value, seconds))
                    return
                else:
                    message = getattr(value, "detail", None) or f"{type(value).__name__}: {value}"
                    body = {"message": message, "type": "server_error", "code": None}
                    yield sse({"type": "error", "error": body}, "error")
                    return
                kind, value = await self.queue.get()
        finally:
            self.future.cancel()  # a no-op once done; else the stream leaves the batch


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
