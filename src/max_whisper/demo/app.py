"""The demo's FastAPI app: static page + JSON API.

GET  /               the page (static/index.html; static/app.js, static/style.css under /static)
GET  /api/config     {"models", "backends": [{"name", "device", "engine"}], "skipped", "clips",
                     "beam_size"}
POST /api/transcribe form fields: model, backends (comma-separated), clip (a name from
                     /api/config) or file (an upload), decoding ("greedy" | "beam"),
                     condition_on_previous_text ("true" | "false"). Answers {"audio_s", "source",
                     "reference", "options" (the decoding options used), "results": [{"backend",
                     "text", "segments": [{"start", "end", "diff"}], "wall_s", "rtfx", "load_s",
                     "encoder_ms_per_window", "decoder_ms_per_token", "tokens", "wer", "diff",
                     "changed_words", "error"}]}
                     where "diff" is the transcript's words against the first backend's:
                     [{"op": "equal" | "insert" | "delete", "text"}], insert = only in this one;
                     each segment carries its part of it.

Runners (bench.py's: one loaded model with its phases timed) are made on first use, once per
(model, backend), and kept. A lock per model lets one job at a time use it; jobs on different
models may run together.
"""

import difflib
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import bench
from ..dims import SAMPLE_RATE
from ..errors import UsageError
from ..live.realtime import add_lazy_realtime_route, live_model
from ..options import TranscribeOptions

STATIC = Path(__file__).resolve().parent / "static"
MAX_UPLOAD_BYTES = 100 * 1024 * 1024
BEAM_SIZE = TranscribeOptions.cli_defaults().beam_size  # "beam": the command line's beam search


def default_clip_sources() -> list[str]:
    root = Path(__file__).resolve().parents[3]  # the checkout: src/max_whisper/demo/app.py
    found = [root / "samples" / "sample.wav", root.parent / "shared" / "audio"]
    return [str(p) for p in found if p.exists()]


def find_clips(sources: Iterable[str]) -> dict[str, dict]:
    """{name: {"name", "path", "seconds", "reference"}}, in order; names made unique."""
    from ..audio import audio_duration

    clips: dict[str, dict] = {}
    for path in bench.expand_audio(list(sources)):
        name = path.name
        n = 2
        while name in clips:
            name, n = f"{path.stem}-{n}{path.suffix}", n + 1
        try:
            seconds = round(audio_duration(path), 2)
        except Exception:
            continue  # unreadable: not offered
        clips[name] = {
            "name": name,
            "path": str(path),
            "seconds": seconds,
            "reference": bench.references_near(path).get(path.name),
        }
    return clips


# -- word differences ------------------------------------------------------------------------------
def _key(word: str) -> str:
    """Words compare without case or surrounding punctuation."""
    return re.sub(r"^\W+|\W+$", "", word.lower()) or word


def word_diff(base: str, other: str) -> list[dict]:
    """`other`'s words against `base`'s: runs of {"op": "equal" | "insert" | "delete", "text"}.

    insert: words only in `other`; delete: words of `base` missing from `other` (shown struck
    out)."""
    a, b = base.split(), other.split()
    ops: list[dict] = []

    def add(op: str, words: list[str]) -> None:
        if words:
            ops.append({"op": op, "text": " ".join(words)})

    matcher = difflib.SequenceMatcher(
        a=[_key(w) for w in a], b=[_key(w) for w in b], autojunk=False
    )
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            add("equal", b[j1:j2])
        else:  # replace, delete, insert
            add("delete", a[i1:i2])
            add("insert", b[j1:j2])
    return ops


def changed_words(diff: list[dict]) -> int:
    """Words inserted plus words deleted."""
    return sum(len(op["text"].split()) for op in diff if op["op"] != "equal")


def split_diff(diff: list[dict], segment_texts: list[str]) -> list[list[dict]]:
    """`diff` (of a transcript made of these segments) cut into one diff per segment: each segment
    gets its own words in order; the base's missing words go with the segment that follows them
    (the last one at the end)."""
    sizes = [len(t.split()) for t in segment_texts]
    if not sizes:
        return []
    parts: list[list[dict]] = [[] for _ in sizes]
    index, room, last = 0, sizes[0], len(sizes) - 1
    for op in diff:
        words = op["text"].split()
        while index < last and room == 0:  # past a full segment
            index, room = index + 1, sizes[index + 1]
        if op["op"] == "delete":
            parts[index].append(op)
            continue
        while words:
            while index < last and room == 0:
                index, room = index + 1, sizes[index + 1]
            take = len(words) if index == last else min(room, len(words))
            parts[index].append({"op": op["op"], "text": " ".join(words[:take])})
            words, room = words[take:], room - take
    return parts


def decode_settings(decoding: str, condition_on_previous_text: str) -> bench.DecodeSettings:
    """The page's choices as the bench's settings (the options every engine decodes with)."""
    if decoding not in ("greedy", "beam"):
        raise UsageError(f"decoding must be greedy or beam, not '{decoding}'")
    if condition_on_previous_text not in ("true", "false"):
        raise UsageError("condition_on_previous_text must be true or false")
    return bench.DecodeSettings(
        beam_size=BEAM_SIZE if decoding == "beam" else 1,
        condition_on_previous_text=condition_on_previous_text == "true",
    )


def read_upload(filename: str, data: bytes) -> np.ndarray:
    """16 kHz samples of an uploaded file; errors name the user's file, not the server's copy."""
    from ..audio import load_audio

    name = Path(filename).name
    if name in ("", ".", ".."):
        name = "upload"
    with tempfile.TemporaryDirectory(prefix="max-whisper-demo-upload-") as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            return load_audio(path)
        except Exception as exc:
            reason = str(exc).replace(str(path), filename).replace(folder, "")
            raise UsageError(
                reason if filename in reason else f"cannot read '{filename}' as audio: {reason}"
            ) from None


# -- the app ---------------------------------------------------------------------------------------
class DemoState:
    def __init__(
        self,
        models: list[str],
        rows: list[bench.Row],
        clips: dict[str, dict],
        loader: Callable[[str, str, str], object] | None = None,
    ):
        self.models, self.rows, self.clips, self.loader = (
            models,
            {r.name: r for r in rows},
            clips,
            loader,
        )
        self.settings = bench.DecodeSettings()  # the runners' warm-up; each run has its own
        self.runners: dict[tuple[str, str], object] = {}
        self.model_locks = {m: threading.Lock() for m in models}
        self.workdir = tempfile.TemporaryDirectory(prefix="max-whisper-demo-")
        self._normalizer = None

    def normalize(self, text: str) -> str:
        if self._normalizer is None:
            self._normalizer = bench.text_normalizer()[1]
        return self._normalizer(text)

    def runner(self, model_name: str, row: bench.Row):
        """(runner, seconds spent loading now: 0 when it was loaded before). Call with the model's
        lock held."""
        key = (model_name, row.name)
        if key in self.runners:
            return self.runners[key], 0.0
        start = time.perf_counter()
        model = None
        if self.loader is not None and row.engine == "max-whisper":
            model = self.loader(model_name, row.backend, row.device)
        ct2 = (
            str(bench.faster_whisper_folder(model_name, self.workdir.name))
            if row.engine == "faster-whisper"
            else None
        )
        runner = bench.make_runner(row, model_name, self.settings, ct2, model=model)
        runner.load()
        runner.transcribe(
            np.zeros(SAMPLE_RATE, dtype=np.float32)
        )  # warm-up: first calls are slower
        self.runners[key] = runner
        return runner, time.perf_counter() - start

    def run(
        self,
        model_name: str,
        backends: list[str],
        samples,
        reference: str | None,
        settings: bench.DecodeSettings,
    ) -> list[dict]:
        audio_s = len(samples) / SAMPLE_RATE
        results = []
        with self.model_locks[model_name]:
            for name in backends:
                row = self.rows[name]
                entry: dict = {"backend": name, "device": row.device}
                try:
                    runner, load_s = self.runner(model_name, row)
                    p = runner.transcribe(samples, settings)
                    entry.update(
                        {
                            "text": p.text,
                            "segments": p.segments,
                            "wall_s": round(p.wall_s, 4),
                            "rtfx": round(audio_s / p.wall_s, 3),
                            "load_s": round(load_s, 3),
                            "encoder_ms_per_window": round(
                                1000 * p.encoder_s / max(1, p.windows), 2
                            ),
                            "decoder_ms_per_token": round(1000 * p.decoder_s / max(1, p.tokens), 3),
                            "tokens": p.tokens,
                            "error": None,
                        }
                    )
                except Exception as exc:
                    entry.update(
                        {
                            "text": "",
                            "segments": [],
                            "wall_s": None,
                            "rtfx": None,
                            "load_s": None,
                            "tokens": None,
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                    )
                results.append(entry)
        base = next((r["text"] for r in results if r["error"] is None), "")
        for r in results:
            r["diff"] = word_diff(base, r["text"]) if r["error"] is None else []
            r["changed_words"] = changed_words(r["diff"])
            cut = split_diff(r["diff"], [s["text"] for s in r["segments"]])
            r["segments"] = [
                {"start": round(s["start"], 2), "end": round(s["end"], 2), "diff": d}
                for s, d in zip(r["segments"], cut)
            ]
            r["wer"] = None
            if reference and r["error"] is None and self.normalize(reference).strip():
                r["wer"] = round(
                    bench.word_error_rate([self.normalize(reference)], [self.normalize(r["text"])]),
                    4,
                )
        return results


def create_app(
    models: Iterable[str] = bench.DEFAULT_MODELS,
    backends: Iterable[str] = bench.DEFAULT_BACKENDS,
    clips: Iterable[str] | None = None,
    loader: Callable[[str, str, str], object] | None = None,
    device: str = "auto",
):
    """The demo app: the models among `models` that are installed (the others are listed as
    skipped). `loader(model, backend, device)` may supply our loaded models (the tests share
    theirs)."""
    from fastapi import FastAPI, File, Form, HTTPException, UploadFile
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    try:
        model_names, skipped_models = bench.installed_models(list(models))
        rows, skipped = bench.plan_rows(list(backends), device)
        found = find_clips(default_clip_sources() if clips is None else list(clips))
    except bench.BenchError as exc:
        raise ValueError(str(exc)) from None
    if not model_names:
        raise ValueError("no model to offer: " + "; ".join(s["reason"] for s in skipped_models))
    if not rows:
        raise ValueError(
            "no backend can run here: "
            + "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped)
        )
    state = DemoState(model_names, rows, found, loader)

    app = FastAPI(title="max-whisper demo", docs_url=None, redoc_url=None)
    app.state.demo = state
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    add_lazy_realtime_route(app, lambda: live_model(model_names[0], device, loader))

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/config")
    def config():
        return {
            "models": state.models,
            "backends": [{"name": r.name, "device": r.device, "engine": r.engine} for r in rows],
            "skipped": skipped + skipped_models,
            "clips": [{k: c[k] for k in ("name", "seconds", "reference")} for c in found.values()],
            "beam_size": BEAM_SIZE,
        }

    @app.post("/api/transcribe")
    def transcribe(
        model: str = Form(...),
        backends: str = Form(...),
        clip: str | None = Form(None),
        file: UploadFile | None = File(None),
        decoding: str = Form("greedy"),
        condition_on_previous_text: str = Form("false"),
    ):
        from ..audio import load_audio

        try:
            settings = decode_settings(decoding, condition_on_previous_text)
        except UsageError as exc:
            raise HTTPException(400, str(exc)) from None
        if model not in state.model_locks:
            raise HTTPException(
                400, f"unknown model '{model}' (offered: {', '.join(state.models)})"
            )
        chosen = [b.strip() for b in backends.split(",") if b.strip()]
        unknown = [b for b in chosen if b not in state.rows]
        if not chosen or unknown:
            raise HTTPException(
                400,
                f"choose backends among {', '.join(state.rows)}"
                + (f" (unknown: {', '.join(unknown)})" if unknown else ""),
            )
        reference = None
        if file is not None and file.filename:
            data = file.file.read(MAX_UPLOAD_BYTES + 1)
            if len(data) > MAX_UPLOAD_BYTES:
                raise HTTPException(
                    413, f"uploads are limited to {MAX_UPLOAD_BYTES // (1 << 20)} MB"
                )
            try:
                samples = read_upload(file.filename, data)
            except UsageError as exc:
                raise HTTPException(400, str(exc)) from None
            source = file.filename
        elif clip:
            if clip not in state.clips:
                raise HTTPException(400, f"unknown clip '{clip}'")
            samples = load_audio(state.clips[clip]["path"])
            source, reference = clip, state.clips[clip]["reference"]
        else:
            raise HTTPException(400, "pick a clip or upload a file")
        if len(samples) == 0:
            raise HTTPException(400, f"'{source}' contains no audio samples")
        results = state.run(model, chosen, samples, reference, settings)
        return {
            "model": model,
            "source": source,
            "audio_s": round(len(samples) / SAMPLE_RATE, 3),
            "reference": reference,
            "options": {"decoding": decoding, **asdict(settings)},
            "results": results,
        }

    return app
