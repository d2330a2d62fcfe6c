"""What the server says about itself: the request fields for /docs, and the page at /."""

from __future__ import annotations

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")  # response_format


API_DESCRIPTION = (
    "OpenAI's audio transcription API on max-whisper: the official `openai` client works "
    "against it (`base_url=http://HOST:PORT/v1`). Requests run one at a time on one "
    "loaded model; the rest wait in a bounded queue (503 when full). Live audio: the WebSocket "
    "/v1/realtime?intent=transcription speaks OpenAI's realtime transcription events."
)


def request_schema(route: str) -> dict:
    """The multipart fields of a transcription request, for /docs (the route parses the form
    itself)."""
    fields = {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "the audio: any format FFmpeg reads "
            "(wav, mp3, flac, ogg, m4a, webm, ...)",
        },
        "model": {
            "type": "string",
            "description": "accepted for compatibility; the loaded model answers",
        },
        "prompt": {
            "type": "string",
            "description": "text before the first window (names, spellings, style)",
        },
        "response_format": {"type": "string", "enum": list(FORMATS), "default": "json"},
        "temperature": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "0 to 1; without it, openai-whisper's fallback 0, 0.2, ... 1.0",
        },
        "timestamp_granularities[]": {
            "type": "array",
            "items": {"type": "string", "enum": ["segment", "word"]},
            "description": "with response_format=verbose_json",
        },
        "stream": {
            "type": "boolean",
            "default": False,
            "description": "true: OpenAI's transcript.text.delta events as segments are "
            "decoded, then transcript.text.done (text/event-stream; json and text formats only)",
        },
    }
    if route == "transcriptions":
        fields["language"] = {"type": "string", "description": "ISO-639-1 code (default: detected)"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": fields}
                }
            },
        }
    }


def index_page(model_id: str) -> str:
    """A self-contained page (no scripts, nothing fetched) saying what this server takes."""
    from html import escape

    rows = "".join(
        f"<tr><td><code>{escape(name)}</code></td><td>{escape(spec.get('description', ''))}"
        f"{escape(' (default: ' + str(spec['default']) + ')') if 'default' in spec else ''}"
        "</td></tr>"
        for name, spec in request_schema("transcriptions")["requestBody"]["content"][
            "multipart/form-data"
        ]["schema"]["properties"].items()
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>max-whisper</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 52em; margin: 2em auto; padding: 0 1em">
<h1>max-whisper</h1><p>{escape(API_DESCRIPTION)}</p><p>Model: <code>{escape(model_id)}</code>.</p>
<h2>POST /v1/audio/transcriptions, POST /v1/audio/translations</h2>
<table>{rows}</table>
<pre>curl http://HOST:PORT/v1/audio/transcriptions -F file=@talk.mp3 -F response_format=srt</pre>
<p>Also: <code>GET /v1/models</code>, <code>GET /health</code>, the OpenAPI schema at
<a href="/openapi.json">/openapi.json</a> and its interactive page at <a href="/docs">/docs</a>.</p>
</body></html>"""
