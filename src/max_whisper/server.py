"""`max-whisper serve`: an OpenAI-compatible transcription server (FastAPI + uvicorn).

Routes: POST /v1/audio/transcriptions, POST /v1/audio/translations (stream=true: server-sent
events, server_stream.py), GET /v1/models, GET /health; the realtime WebSocket /v1/realtime
(live/realtime.py), whose decodes are streams of the same engine service.

One model is loaded per process, before the server accepts requests. Each admitted request
decodes its upload on a worker thread, then submits it to the engine service (engine_service): one
thread that alone touches the model and runs up to `batch_size` requests in one batch, a new one
joining the running batch at its next window (continuous batching). Beyond a full batch, at most
`max_queue` requests wait; more are answered 503 with Retry-After before their upload is read. A
request listens for its client's disconnect throughout and cancels its stream if it goes: a
waiting one never runs, a running one leaves the batch at its next window. Uploads over
`max_upload_bytes` get 413, by Content-Length before the body is read, else by counting bytes as
they arrive.
"""

import asyncio
import contextlib
import hmac
import logging
import math
import os
import socket
import time

from .dims import SAMPLE_RATE
from .engine import DEFAULT_BATCH_SIZE
from .errors import MaxWhisperError, UsageError
from .live.realtime import LiveLimits, add_live_options, add_realtime_route, live_limits
from .options import TranscribeOptions
from .server_docs import API_DESCRIPTION, FORMATS, index_page, request_schema
from .server_io import read_upload, render, upload_error
from .server_stream import SegmentEvents

PUBLIC_PATHS = ("/", "/health", "/docs", "/openapi.json")  # no API key needed
DEFAULT_MAX_QUEUE = 64
DEFAULT_MAX_UPLOAD_MB = 25.0  # OpenAI's own limit


def add_parsers(sub) -> None:
    from .cli import add_command, add_model_options

    p = add_command(
        sub,
        "serve",
        cmd_serve,
        help="serve an OpenAI-compatible transcription API over HTTP",
        show_defaults=True,
        description="Serve POST /v1/audio/transcriptions and /v1/audio/translations as OpenAI's "
        "API does; the request fields are described at /docs.",
    )
    add_model_options(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)"
    )
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument(
        "--api-key",
        default=os.environ.get("MAX_WHISPER_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' on every route but /health and /docs "
        "(default: $MAX_WHISPER_API_KEY, else none)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help="requests that may wait while a full batch runs; more get 503",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="requests transcribed together, their windows decoded in one batch",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help="largest accepted upload; larger ones get 413",
    )
    add_live_options(p)


def cmd_serve(args) -> int:
    from .errors import UsageError

    try:
        import uvicorn
    except ImportError:
        raise UsageError("serve needs the serve extra: pip install 'max-whisper[serve]'") from None
    if args.max_queue < 0 or args.max_upload_mb <= 0 or args.batch_size < 1:
        raise UsageError("--max-queue must be >= 0, --max-upload-mb > 0 and --batch-size >= 1")
    live = live_limits(args)
    from . import load_model

    # bind first (a taken port fails fast), load the model, then accept connections
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    with sock:
        model = load_model(
            args.model,
            backend=args.backend,
            device=args.device,
            encoder_float64_blocks=args.encoder_float64_blocks,
        )
        app = create_app(
            model,
            api_key=args.api_key,
            max_queue=args.max_queue,
            batch_size=args.batch_size,
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            live=live,
        )
        print(
            f"max-whisper: serving {model.name} ({model.backend_name}, {model.device}) "
            f"on http://{args.host}:{args.port}/v1",
            flush=True,
        )
        uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port)).run(sockets=[sock])
    return 0


def create_app(
    model,
    *,
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024),
    live: LiveLimits = LiveLimits(),
):
    """The FastAPI app serving `model` (already loaded). Other routes submit their streams to its
    engine service, app.state.engine, inside app.state.admitted() (the queue's bound)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    class ApiError(HTTPException):
        def __init__(
            self,
            status: int,
            message: str,
            param: str | None = None,
            code: str | None = None,
            kind: str = "invalid_request_error",
            headers: dict | None = None,
        ):
            super().__init__(status, message, headers)
            self.param, self.code, self.kind = param, code, kind

    def error_response(
        status: int, message: str, param=None, code=None, kind="invalid_request_error", headers=None
    ) -> JSONResponse:
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        return JSONResponse(body, status, headers=headers)

    from .engine_service import EngineService

    state = {"active": 0, "seconds": 1.0}  # admitted requests, average time of a request
    service = EngineService(model, batch_size)
    model_id = str(model.name)
    log = logging.getLogger("uvicorn.error")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close(timeout=5)

    app = FastAPI(
        title="max-whisper",
        description=API_DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.engine = service

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        if isinstance(exc, ApiError):
            return error_response(
                exc.status_code, exc.detail, exc.param, exc.code, exc.kind, exc.headers
            )
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):
        return error_response(500, f"{type(exc).__name__}: {exc}", kind="server_error")

    class Guard:
        """API key on every route but /health; uploads over the limit by Content-Length or by
        count."""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            if api_key and scope["path"] not in PUBLIC_PATHS:
                auth = headers.get("authorization", "")
                given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
                if not hmac.compare_digest(given.encode(), api_key.encode()):
                    return await error_response(
                        401,
                        "invalid or missing API key: send 'Authorization: Bearer <key>'",
                        code="invalid_api_key",
                    )(scope, receive, send)
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > max_body:
                return await too_large()(scope, receive, send)
            seen = 0

            async def counted():
                nonlocal seen
                message = await receive()
                seen += len(message.get("body", b""))
                if seen > max_body:
                    raise ApiError(413, too_large_message, "file", "file_too_large")
                return message

            await self.app(scope, counted, send)

    too_large_message = f"upload larger than the server's limit of {max_upload_bytes} bytes"
    max_body = max_upload_bytes + 64 * 1024  # room for the multipart envelope and the other fields

    def too_large():
        return error_response(413, too_large_message, "file", "file_too_large")

    app.add_middleware(Guard)
    add_realtime_route(app, service, api_key=api_key, limits=live)

    def field(form, name: str) -> str | None:
        value = form.get(name)
        if value is not None and not isinstance(value, str):
            raise ApiError(400, f"'{name}' must be a plain form field, not a file", name)
        return value or None

    def options_from(form, task: str) -> tuple[TranscribeOptions, str, bool, bool]:
        from .tokenizer import TokenizerError, normalize_language

        fmt = field(form, "response_format") or "json"
        if fmt not in FORMATS:
            raise ApiError(
                400, f"response_format must be one of {', '.join(FORMATS)}", "response_format"
            )
        granularities = form.getlist("timestamp_granularities[]") + form.getlist(
            "timestamp_granularities"
        )
        if set(granularities) - {"word", "segment"}:
            raise ApiError(
                400,
                "timestamp_granularities must be 'word' and/or 'segment'",
                "timestamp_granularities",
            )
        if granularities and fmt != "verbose_json":
            raise ApiError(
                400,
                "timestamp_granularities requires response_format=verbose_json",
                "timestamp_granularities",
            )
        if task == "translate" and not model.is_multilingual:
            raise ApiError(
                400,
                f"model {model_id} is English-only: it cannot translate",
                "model",
                "model_not_multilingual",
            )
        stream = (field(form, "stream") or "false").lower() not in ("false", "0")
        if stream and fmt not in ("json", "text"):
            raise ApiError(400, "stream=true answers text events: use json or text", "stream")
        options = {"task": task, "word_timestamps": "word" in granularities}
        if field(form, "language"):
            try:
                options["language"] = normalize_language(form["language"])
            except TokenizerError as exc:
                raise ApiError(400, str(exc), "language") from None
            if not model.is_multilingual and options["language"] != "en":
                raise ApiError(
                    400, f"model {model_id} is English-only: language must be 'en'", "language"
                )
        if field(form, "prompt"):
            options["initial_prompt"] = form["prompt"]
        if field(form, "temperature"):
            try:
                options["temperature"] = float(form["temperature"])
            except ValueError:
                raise ApiError(
                    400, "temperature must be a number between 0 and 1", "temperature"
                ) from None
        try:
            return TranscribeOptions(**options), fmt, "word" in granularities, stream
        except UsageError as exc:
            raise ApiError(
                400, str(exc), "temperature" if "temperature" in str(exc) else None
            ) from None

    async def client_gone(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def transcribe(
        request: Request, upload: UploadFile, options, events: SegmentEvents | None = None
    ) -> tuple | None:
        """Decode the upload, submit it to the engine: (its result, or with `events` its first
        event, the stream going on; seconds of audio), or None once the client has gone (its
        stream cancelled, or never submitted). Listening for the disconnect all along (not one
        is_disconnected() poll) matters: uvicorn may not have read the client's EOF yet."""
        gone = asyncio.ensure_future(client_gone(request))
        future = None
        streaming = False
        try:
            try:
                audio = await asyncio.to_thread(read_upload, upload)
                if gone.done():
                    return None
                future = service.submit(audio, options, events and events.on_segment)
                job = events.follow(future) if events else asyncio.wrap_future(future)
                await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    job.cancel()
                    return None
                answer = job.result()
                if events and answer[0] == "error":  # before any output: a plain error answer
                    raise answer[1]
                streaming = events is not None
                return answer, len(audio) / SAMPLE_RATE
            except MaxWhisperError as exc:  # the upload's fault (bad audio...): a 400, in one line
                raise ApiError(400, upload_error(exc), "file") from None
        finally:
            gone.cancel()
            if future is not None and not streaming:
                future.cancel()  # a no-op once done; else the stream leaves the batch

    @contextlib.asynccontextmanager
    async def admitted():
        """Count a request as admitted while it lasts; a 503 when a full batch runs and max_queue
        more wait (app.state.admitted: for every route that submits to the engine)."""
        if state["active"] >= service.batch_size + max_queue:
            batches = math.ceil(state["active"] / service.batch_size)
            retry = max(1, math.ceil(state["seconds"] * batches))
            raise ApiError(
                503,
                f"the server is busy ({state['active']} requests queued or running); retry later",
                code="queue_full",
                kind="server_error",
                headers={"Retry-After": str(retry)},
            )
        state["active"] += 1
        started = time.monotonic()
        try:
            yield
            state["seconds"] = 0.7 * state["seconds"] + 0.3 * (time.monotonic() - started)
        finally:
            state["active"] -= 1

    app.state.admitted = admitted

    async def handle(request: Request, task: str):
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(admitted())
            try:
                form = await stack.enter_async_context(request.form(max_files=1, max_fields=32))
            except ClientDisconnect:  # the client hung up mid-upload: nobody to answer
                log.info("client disconnected during its upload: request dropped")
                return Response(status_code=499)
            options, fmt, words, stream = options_from(form, task)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(
                    400,
                    "'file' is required: the audio to transcribe, as a multipart upload",
                    "file",
                )
            if upload.size and upload.size > max_upload_bytes:
                raise ApiError(413, too_large_message, "file", "file_too_large")
            if upload.size == 0:
                raise ApiError(400, f"the uploaded file '{upload.filename}' is empty", "file")
            events = SegmentEvents() if stream else None
            done = await transcribe(request, upload, options, events)
            if done is None:  # nobody is listening: the job is dropped
                log.info("client of %s went away: its job dropped", upload.filename)
                return Response(status_code=499)
            if events:  # the request stays admitted until its stream ends
                return events.response(*done, stack.pop_all())
        result, duration = done
        return render(result, fmt, task, duration, words)

    def endpoint(task: str):
        async def answer(request: Request):
            return await handle(request, task)

        return answer

    for route, task, summary in (
        ("transcriptions", "transcribe", "Transcribe audio into the language spoken"),
        ("translations", "translate", "Translate speech in any language into English text"),
    ):
        app.post(
            f"/v1/audio/{route}", openapi_extra=request_schema(route), summary=summary, name=route
        )(endpoint(task))

    @app.get("/", include_in_schema=False)
    async def index():
        from fastapi.responses import HTMLResponse

        return HTMLResponse(index_page(model_id))

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "max-whisper"}],
        }

    @app.get("/health")
    async def health():
        engine = service.stats()
        return {
            "status": "ok",
            "model": model_id,
            "backend": model.backend_name,
            "device": model.device,
            "queue_depth": max(0, state["active"] - engine["running"]),
            "running": engine["running"],
            "max_queue": max_queue,
            "batch_size": engine["batch_size"],
            "largest_batch": engine["largest_batch"],
        }

    return app
