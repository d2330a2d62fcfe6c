"""`/v1/realtime?intent=transcription`: OpenAI's realtime transcription events over a WebSocket.

Client events: `input_audio_buffer.append` ({"audio": base64 PCM16, 16 kHz mono}; a binary frame
of raw PCM16 is the same), `input_audio_buffer.commit` (end the utterance now),
`input_audio_buffer.clear`, `transcription_session.update` / `session.update` (acknowledged; the
model and policy are the server's). Server events: `transcription_session.created`,
`conversation.item.input_audio_transcription.delta` (the words just made final as `delta`, which
the client appends, and the words not yet agreed on as `partial`, which the next event replaces),
`conversation.item.input_audio_transcription.completed` (the utterance's transcript) when voice
activity or the client ends an utterance, `input_audio_buffer.committed` once for each client
commit, after the text it completed (its item_id; null when the buffer held no speech), and
`error`.
Limits: sessions at once (more are refused with an error event), session length, idle time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hmac
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .decoder import EngineDecoder
from .policy import Completed, Event, LiveTranscript
from .session import new_transcript

ROUTE = "/v1/realtime"
KEY_PROTOCOL = "openai-insecure-api-key."  # how browsers, which cannot set headers, send the key


@dataclass(frozen=True)
class LiveLimits:
    max_sessions: int = 4
    max_session_s: float = 30 * 60.0  # OpenAI's own limit
    idle_s: float = 60.0  # no message for this long ends the session


def add_live_options(parser: argparse.ArgumentParser) -> None:
    defaults = LiveLimits()
    parser.add_argument(
        "--max-live-sessions",
        type=int,
        default=defaults.max_sessions,
        help="realtime WebSocket sessions at once; more are refused",
    )
    parser.add_argument(
        "--live-max-minutes",
        type=float,
        default=defaults.max_session_s / 60,
        help="longest realtime session",
    )
    parser.add_argument(
        "--live-idle-seconds",
        type=float,
        default=defaults.idle_s,
        help="a realtime session that sends nothing for this long is closed",
    )


def live_limits(args) -> LiveLimits:
    from ..errors import UsageError

    if args.max_live_sessions < 0 or args.live_max_minutes <= 0 or args.live_idle_seconds <= 0:
        raise UsageError(
            "--max-live-sessions must be >= 0, --live-max-minutes and --live-idle-seconds > 0"
        )
    return LiveLimits(args.max_live_sessions, args.live_max_minutes * 60, args.live_idle_seconds)


def pcm16(data: bytes) -> np.ndarray:
    if len(data) % 2:
        raise ValueError("PCM16 audio must be a whole number of 2-byte samples")
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0


def error_event(message: str, code: str | None = None, kind="invalid_request_error") -> dict:
    return {"type": "error", "error": {"type": kind, "code": code, "message": message}}


def add_realtime_route(
    app,
    service,
    *,
    api_key: str | None = None,
    limits: LiveLimits = LiveLimits(),
) -> None:
    """Serve the realtime route on `app` (FastAPI), each decode a stream of `service` (an
    engine_service.EngineService, or a function that starts one on the first session)."""
    decoder = EngineDecoder(service)
    open_sessions: set[int] = set()
    ids = itertools.count(1)

    async def realtime(websocket):  # a plain Starlette route: no dependency injection to run
        offered = [
            p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")
        ]
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        refusal = None
        if api_key and not _authorized(websocket, offered, api_key):
            refusal = error_event(
                "invalid or missing API key: send 'Authorization: Bearer <key>'", "invalid_api_key"
            )
        elif websocket.query_params.get("intent", "transcription") != "transcription":
            refusal = error_event("this server offers only ?intent=transcription", "bad_intent")
        elif len(open_sessions) >= limits.max_sessions:
            refusal = error_event(
                f"the server already runs {len(open_sessions)} live sessions (its limit): "
                "try again later",
                "too_many_sessions",
                "server_error",
            )
        if refusal is not None:
            await websocket.send_json(refusal)
            await websocket.close(1008 if refusal["error"]["code"] != "too_many_sessions" else 1013)
            return
        number = next(ids)
        open_sessions.add(number)
        try:
            await LiveSession(websocket, decoder, limits, f"sess_{number}").run()
        finally:
            open_sessions.discard(number)

    app.router.add_websocket_route(ROUTE, realtime)


def add_lazy_realtime_route(app, load: Callable[[], object]) -> None:
    """The realtime route on an app without a model of its own (the demo): `load()` gives the
    model on the first session, which starts an engine service of its own."""
    from ..engine_service import EngineService

    add_realtime_route(app, lambda: EngineService(load()))


def live_model(name: str, device: str, loader: Callable[[str, str, str], object] | None = None):
    """The demo's live model: `name` on the max backend (`loader`'s, where the caller has one)."""
    if loader is not None:
        return loader(name, "max", device)
    from .. import load_model

    return load_model(name, backend="max", device=device, warm_start=True)


def _authorized(websocket, offered: list[str], api_key: str) -> bool:
    auth = websocket.headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    given = given or next(
        (p[len(KEY_PROTOCOL) :] for p in offered if p.startswith(KEY_PROTOCOL)), ""
    )
    return hmac.compare_digest(given.encode(), api_key.encode())


class LiveSession:
    """One WebSocket client: messages in, decodes on the shared decoder, events out."""

    def __init__(self, websocket, decoder: EngineDecoder, limits: LiveLimits, session_id: str):
        self.websocket, self.decoder, self.limits, self.id = websocket, decoder, limits, session_id
        self.transcript: LiveTranscript = new_transcript()
        self.wake = asyncio.Event()
        self.sent = itertools.count(1)
        self.last_pending = ""
        self.commits = 0  # client commits not answered yet
        self.busy = False  # decoding what came in

    async def send(self, event: dict) -> None:
        await self.websocket.send_json({"event_id": f"event_{next(self.sent)}", **event})

    async def run(self) -> None:
        from starlette.websockets import WebSocketDisconnect

        await self.send(
            {
                "type": "transcription_session.created",
                "session": {
                    "id": self.id,
                    "object": "realtime.transcription_session",
                    "input_audio_format": "pcm16",
                    "input_audio_transcription": {"model": "whisper"},
                    "turn_detection": {"type": "server_vad"},
                },
            }
        )
        decoding = asyncio.create_task(self._decode_loop())
        ends = time.monotonic() + self.limits.max_session_s
        try:
            while not decoding.done():
                wait = min(self.limits.idle_s, ends - time.monotonic())
                try:
                    message = await asyncio.wait_for(self.websocket.receive(), max(wait, 0))
                except TimeoutError:
                    over = time.monotonic() >= ends
                    if not over and (self.busy or self.commits):  # not idle: text is on its way
                        continue
                    await self.send(
                        error_event(
                            f"session closed: longer than {self.limits.max_session_s:g} s"
                            if over
                            else f"session closed: nothing received for {self.limits.idle_s:g} s",
                            "session_expired" if over else "idle_timeout",
                        )
                    )
                    await self._finish(decoding)
                    await self.websocket.close(1000)
                    return
                if message["type"] == "websocket.disconnect":
                    return
                await self._handle(message)
        except WebSocketDisconnect:
            return
        finally:
            decoding.cancel()

    async def _finish(self, decoding: asyncio.Task) -> None:
        """Complete the utterance in progress before closing."""
        self.transcript.commit()
        self.wake.set()
        while (self.transcript.closing or self.wake.is_set()) and not decoding.done():
            await asyncio.sleep(0.05)

    async def _handle(self, message: dict) -> None:
        if message.get("bytes") is not None:
            return self._append(message["bytes"])
        try:
            event = json.loads(message.get("text") or "")
            kind = event["type"]
        except (ValueError, KeyError, TypeError):
            return await self.send(error_event("each text message must be a JSON event"))
        if kind == "input_audio_buffer.append":
            try:
                data = base64.b64decode(event.get("audio", ""), validate=True)
            except (binascii.Error, ValueError):
                return await self.send(error_event("'audio' must be base64 PCM16", "bad_audio"))
            self._append(data) if data else None
        elif kind == "input_audio_buffer.commit":
            self.transcript.commit()
            self.commits += 1
            self.wake.set()
        elif kind == "input_audio_buffer.clear":
            self.transcript.clear()
            await self.send({"type": "input_audio_buffer.cleared"})
        elif kind in ("transcription_session.update", "session.update"):
            await self.send({"type": "transcription_session.updated", "session": {"id": self.id}})
        else:
            await self.send(error_event(f"unsupported event type '{kind}'", "unknown_event"))

    def _append(self, data: bytes) -> None:
        try:
            self.transcript.append(pcm16(data))
        except ValueError as exc:
            asyncio.ensure_future(self.send(error_event(str(exc), "bad_audio")))
            return
        self.wake.set()

    async def _decode_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            completed, self.busy = None, True
            while (request := self.transcript.next_request()) is not None:
                try:
                    result = await self.decoder.decode(request)
                except Exception as exc:
                    await self.send(
                        error_event(f"{type(exc).__name__}: {exc}", kind="server_error")
                    )
                    if not request.final:
                        continue
                    result = {"segments": []}  # the utterance ends with what was final
                for event in self.transcript.apply(request, result):
                    for message in self._messages(event):
                        await self.send(message)
                    completed = self._item(event) if isinstance(event, Completed) else completed
            for _ in range(self.commits):  # each client commit is answered, once its text is out
                await self.send({"type": "input_audio_buffer.committed", "item_id": completed})
            self.commits, self.busy = 0, False

    def _item(self, event: Event) -> str:
        return f"item_{self.id}_{event.item}"

    def _messages(self, event: Event) -> list[dict]:
        item = self._item(event)
        if isinstance(event, Completed):
            return [
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item,
                    "content_index": 0,
                    "transcript": event.text,
                }
            ]
        if not event.delta and event.pending == self.last_pending:
            return []
        self.last_pending = event.pending
        return [
            {
                "type": "conversation.item.input_audio_transcription.delta",
                "item_id": item,
                "content_index": 0,
                "delta": event.delta,
                "partial": event.pending,
            }
        ]
