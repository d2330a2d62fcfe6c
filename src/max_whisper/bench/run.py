"""The systems comparison: every (row, model, workload), one document (see bench/README.md)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict

from ..cpu import CPU_TARGET_ENV
from .clips import (
    Clip,
    default_audio,
    expand_audio,
    load_clips,
    long_form_file,
    score_row,
    text_normalizer,
)
from .faster_whisper_runner import faster_whisper_folder
from .measure import measure, peak_rss_mb, summarize
from .plan import GpuInfo, detect_gpus, installed_models, needs_torch, plan_rows
from .runners import make_runner
from .settings import (
    DEFAULT_BACKENDS,
    DEFAULT_MODELS,
    MAX_BACKENDS,
    SCHEMA,
    WORKLOADS,
    BenchError,
    DecodeSettings,
    Row,
    _r,
    log_to_stderr,
)
from .worker import RowProcess, empty_caches, run_worker

RESULT_KEYS = (
    "backend",
    "model",
    "workload",
    "engine",
    "device",
    "audio_s",
    "wall_s_median",
    "wall_s_min",
    "wall_s_runs",
    "rtfx",
    "encoder_ms_per_window",
    "cross_kv_ms_per_window",
    "windows",
    "decoder_ms_per_token",
    "tokens",
    "wer",
    "wer_clips",
    "load_s",
    "warm_start_s",
    "cold_compile_s",
    "peak_rss_mb",
    "rss_after_load_mb",
    "rss_scope",
    "deterministic",
    "clips",
)


# the variables that hold each system's kernels to an older instruction set: ours (cpu), then
# CTranslate2's, PyTorch's dispatch, MKL's and oneDNN's
ISA_VARIABLES = (
    CPU_TARGET_ENV,
    "CT2_FORCE_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
)


def environment(device: str, gpus: GpuInfo | None = None) -> dict:
    from ..diagnostics import _version, doctor_report

    report = doctor_report()
    cpu = report["cpu"]
    env = {
        "cpu_model": cpu["model"],
        "cores": cpu["cores"],
        "cpu_features": cpu["features"],
        # instruction sets held back for a run (e.g. every row on its AVX2 code on an AVX-512 CPU)
        "isa_variables": {name: os.environ[name] for name in ISA_VARIABLES if os.environ.get(name)},
        "python": report["python"],
        "platform": report["platform"],
        "max": report["max"],
        "max_accelerators": report["accelerators"],
        "allocator": report["allocator"],  # every row's process inherits it
        "torch": _version("torch"),
        "openai_whisper": _version("openai-whisper"),
        "faster_whisper": _version("faster-whisper"),
        "ctranslate2": _version("ctranslate2"),
        "device": device,
        "torch_cuda": bool(gpus.torch_cuda) if gpus else None,
        "ct2_cuda_devices": gpus.ct2_cuda if gpus else None,
        "graph_cache": report["graph_cache"]["path"]
        if isinstance(report["graph_cache"], dict)
        else None,
    }
    try:
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        env["load_average"] = None
    return env


def run_bench(
    backends: Iterable[str] = DEFAULT_BACKENDS,
    models: Iterable[str] = DEFAULT_MODELS,
    audio: Iterable[str] | None = None,
    repeats: int = 3,
    beam_size: int = 1,
    condition_on_previous_text: bool = False,
    device: str = "auto",
    cold: bool = False,
    isolate: bool = True,
    workloads: Iterable[str] = WORKLOADS,
    loader: Callable[[str, str, str], object] | None = None,
    log: Callable[[str], None] | None = None,
    workdir: str | os.PathLike | None = None,
) -> dict:
    """Benchmark every (row, model); returns the JSON-ready document (see bench/README.md).

    isolate: one fresh subprocess per row (own peak RSS, warm start measured); else in this process,
    with `loader(model_name, backend, device)` supplying our loaded models when given (the tests).
    """
    say = log or log_to_stderr
    if repeats < 1:
        raise BenchError("--repeats must be at least 1")
    if beam_size < 1:
        raise BenchError("--beam-size must be at least 1")
    settings = DecodeSettings(
        beam_size=beam_size, condition_on_previous_text=condition_on_previous_text
    )
    requested = list(backends)
    gpus = detect_gpus(need_torch=needs_torch(requested))
    rows, skipped = plan_rows(requested, device, gpus)
    model_names, skipped_models = installed_models(models)
    skipped += skipped_models
    workloads = list(workloads)
    if not workloads or any(w not in WORKLOADS for w in workloads):
        raise BenchError(f"workloads are {', '.join(WORKLOADS)}")
    paths = expand_audio(audio if audio is not None else default_audio())
    own_workdir = None
    if workdir is None:
        own_workdir = tempfile.TemporaryDirectory(prefix="max-whisper-bench-")
        workdir = own_workdir.name
    clips = load_clips(paths, with_samples=not isolate)
    suites = {"short": clips} if "short" in workloads else {}
    if "long" in workloads:
        suites["long"] = load_clips([long_form_file(paths, workdir)], with_samples=not isolate)
    normalizer_name, normalize = text_normalizer()
    audio_s = sum(c.seconds for c in clips)
    doc: dict = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(device, gpus),
        "settings": {
            **asdict(settings),
            "repeats": repeats,
            "warmup_passes": 1,
            "device": device,
            "backends": requested,
            "models": list(models),
            "cold": cold,
            "isolation": "subprocess per row" if isolate else "in-process (shared)",
            "pass_order": "rows in turn, rotating" if isolate else "row after row",
            "wer_normalizer": normalizer_name,
        },
        "audio": {
            "files": [
                {
                    "file": c.name,
                    "path": c.path,
                    "seconds": _r(c.seconds, 3),
                    "reference": c.reference,
                }
                for c in clips
            ],
            "seconds": _r(audio_s, 3),
            "referenced": sum(1 for c in clips if c.reference),
            "workloads": {
                name: {"files": len(suite), "seconds": _r(sum(c.seconds for c in suite), 3)}
                for name, suite in suites.items()
            },
        },
        "results": [],
        "skipped": skipped,
        "errors": [],
    }
    for s in skipped:
        say(f"skipping {s.get('backend') or s.get('model')}: {s['reason']}")

    try:
        for model_name in model_names:
            ct2 = None  # the model converted for faster-whisper, shared by its rows
            if any(row.engine == "faster-whisper" for row in rows):
                try:
                    ct2 = str(faster_whisper_folder(model_name, workdir))
                except Exception:
                    pass  # each faster-whisper row then reports why it cannot load
            for workload, suite in suites.items():
                first_workload = workload == next(iter(suites))
                say(
                    f"{model_name} × {workload}: {len(suite)} file(s), "
                    f"{sum(c.seconds for c in suite):.1f} s of audio, {len(rows)} row(s), "
                    f"each a warm-up + {repeats} pass(es)"
                    + (", the passes of the rows in turn" if isolate else "")
                )
                if isolate:
                    results = _rows_in_turn(rows, model_name, settings, suite, repeats, ct2, say)
                else:
                    results = [
                        _row_in_process(row, model_name, settings, suite, repeats, loader, ct2)
                        for row in rows
                    ]
                for row, result in zip(rows, results):
                    label = f"{row.name} × {model_name} × {workload}"
                    if (
                        "error" not in result
                        and cold
                        and first_workload
                        and row.engine == "max-whisper"
                        and row.backend in MAX_BACKENDS
                    ):
                        say(
                            f"{label}: cold compile in a fresh process with empty caches (minutes)…"
                        )
                        try:
                            result["cold_compile_s"] = cold_compile_seconds(
                                row, model_name, settings, workdir
                            )
                        except Exception as exc:
                            result = {"error": f"{type(exc).__name__}: {exc}"}
                    else:
                        result.setdefault("cold_compile_s", None)
                    if "error" in result:
                        say(f"{label}: FAILED: {result['error']}")
                        doc["errors"].append(
                            {
                                "backend": row.name,
                                "model": model_name,
                                "workload": workload,
                                "error": result["error"],
                            }
                        )
                        continue
                    entry = {
                        "backend": row.name,
                        "model": model_name,
                        "workload": workload,
                        "engine": row.engine,
                        "device": row.device,
                        **result,
                    }
                    score_row(entry, normalize)
                    say(
                        f"{label}: RTFx {entry['rtfx']}, "
                        f"median {entry['wall_s_median']} s, WER {entry['wer']}"
                    )
                    doc["results"].append(_ordered(entry))
    finally:
        if own_workdir is not None:
            own_workdir.cleanup()
    return doc


def _ordered(entry: dict) -> dict:
    out = {k: entry.get(k) for k in RESULT_KEYS}
    out.update({k: v for k, v in entry.items() if k not in out})
    return out


def _row_spec(
    row: Row, model_name: str, settings: DecodeSettings, audio: list[str], **extra
) -> dict:
    return {
        "row": asdict(row),
        "model": model_name,
        "settings": asdict(settings),
        "audio": audio,
        **extra,
    }


def _rows_in_turn(
    rows: list[Row],
    model_name: str,
    settings: DecodeSettings,
    clips: list[Clip],
    repeats: int,
    ct2_folder: str | None,
    say: Callable[[str], None],
) -> list[dict]:
    """Each row in a fresh process of its own, all alive together (each stopped but for its own
    passes). Each loads and warms up, one after another; then their timed passes are taken in
    turn, the order rotating every round: a machine whose speed drifts during the run weighs on
    every row alike. One result per row."""
    audio = [c.path for c in clips]
    served: dict[str, RowProcess] = {}
    results: dict[str, dict] = {}
    try:
        for row in rows:
            say(f"{row.name} × {model_name}: loading in a fresh process, warm-up pass")
            spec = _row_spec(row, model_name, settings, audio, ct2_folder=ct2_folder)
            process = RowProcess(spec)
            if process.ready.get("graphs_compiled_at_load"):
                # that process compiled graphs: no warm start, and the compiler's memory counted in
                # its peak RSS; the cache is warm now, so load the row again in another process
                process.close()
                process = RowProcess(spec)
            if "error" in process.ready:
                results[row.name] = process.ready
                process.close()
            else:
                served[row.name] = process
        passes: dict[str, list] = {name: [] for name in served}
        names = list(served)
        for round_ in range(repeats if names else 0):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                if name in results:
                    continue  # failed in an earlier round
                one = served[name].timed_pass()
                if isinstance(one, dict):
                    results[name] = one
                else:
                    passes[name].append(one)
        for name, process in served.items():
            if name in results:
                continue
            result = {**process.ready, **summarize(passes[name], clips), **process.finish()}
            result.pop("graphs_compiled_at_load", None)
            result["rss_scope"] = "subprocess (this row alone)"
            result["warm_start_s"] = result["load_s"]
            results[name] = result
    finally:
        for process in served.values():
            process.close()
    return [results[row.name] for row in rows]


def _row_in_process(
    row: Row,
    model_name: str,
    settings: DecodeSettings,
    clips: list[Clip],
    repeats: int,
    loader,
    ct2_folder: str | None,
) -> dict:
    try:
        model = None
        start = time.perf_counter()
        if loader is not None and row.engine == "max-whisper":
            model = loader(model_name, row.backend, row.device)
        runner = make_runner(row, model_name, settings, ct2_folder, model=model)
        runner.load()
        load_s = time.perf_counter() - start
        result = measure(runner, clips, repeats)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    result.update(
        {
            "load_s": _r(load_s, 3),
            "warm_start_s": None,
            "peak_rss_mb": _r(peak_rss_mb(), 1),
            "rss_after_load_mb": None,
            "rss_scope": "process (shared by all rows)",
        }
    )
    return result


def cold_compile_seconds(
    row: Row, model_name: str, settings: DecodeSettings, workdir
) -> float | None:
    """Model load time in a fresh process whose graph cache and MAX's own cache are empty."""
    with tempfile.TemporaryDirectory(prefix="cold-", dir=workdir) as tmp:
        result = run_worker(_row_spec(row, model_name, settings, []), env=empty_caches(tmp))
    if "error" in result:
        raise BenchError(f"cold compile failed: {result['error']}")
    return result.get("load_s")
