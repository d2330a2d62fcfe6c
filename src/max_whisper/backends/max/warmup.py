"""Compile every MAX graph a model needs, in parallel processes, with one progress display.

    max-whisper warmup [--model tiny.en base] [--encoder-float64-blocks N] [--jobs N]

MAX compiles a graph on one core, and a model's two compiled artifacts are independent: the
encoder, and the decoder module (cross K/V, step and word-timestamp scores graphs) each compile in
a process of their own, as many at once as there are cores. Graphs need dims, not weights, so a
job is (dims, part). The first transcription on a machine starts this in the background
(`start_background`) and runs on the NumPy implementation meanwhile; `max-whisper warmup` runs it
in the foreground for images and CI; the test session runs it before the first MAX test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ...dims import ModelDimensions
from ...errors import MaxWhisperError
from ...processes import child_env

PARTS = ("encoder", "decoder")
MODULE = "max_whisper.backends.max.warmup"  # run as `python -m MODULE` (__name__ is then __main__)


class CompileError(MaxWhisperError, RuntimeError):
    """A MAX graph did not compile (the message names it and its log)."""


@dataclass(frozen=True)
class GraphJob:
    dims: ModelDimensions
    part: str  # one of PARTS
    float64_blocks: int = 0  # encoder only
    device: str = "auto"

    @property
    def label(self) -> str:
        from .decoder import decoder_label
        from .encoder import encoder_label

        return (
            encoder_label(self.dims, self.float64_blocks)
            if self.part == "encoder"
            else decoder_label(self.dims)
        )

    @property
    def estimate_s(self) -> float:
        from .decoder import DECODER_COMPILE_ESTIMATE_S
        from .device import device_label
        from .encoder import ENCODER_COMPILE_ESTIMATE_S

        estimates = (
            ENCODER_COMPILE_ESTIMATE_S if self.part == "encoder" else DECODER_COMPILE_ESTIMATE_S
        )
        return estimates[device_label(self.device)]

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "dims": self.dims.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> GraphJob:
        data = json.loads(text)
        return cls(**{**data, "dims": ModelDimensions(**data["dims"])})


def jobs_for(
    dims: ModelDimensions, float64_blocks: int = 0, device: str = "auto"
) -> list[GraphJob]:
    return [GraphJob(dims, "encoder", float64_blocks, device), GraphJob(dims, "decoder", 0, device)]


def _signature(job: GraphJob, runtime) -> dict:
    from .decoder import decoder_signature, in_place_cache, uses_half_weights
    from .encoder import encoder_signature

    if job.part == "encoder":
        return encoder_signature(job.dims, job.float64_blocks)
    half = uses_half_weights(runtime, job.dims)
    return decoder_signature(job.dims, half, in_place_cache(runtime))


def missing(jobs: list[GraphJob]) -> list[GraphJob]:
    """The jobs whose compiled graph is not in the cache yet."""
    from .compile_cache import cached_path
    from .device import MaxRuntime

    runtimes = {device: MaxRuntime.create(device) for device in {job.device for job in jobs}}
    return [
        job
        for job in jobs
        if not cached_path(
            runtimes[job.device].session, _signature(job, runtimes[job.device])
        ).exists()
    ]


def compile_here(job: GraphJob) -> float:
    """Compile one job's graph in this process (or find it cached): seconds spent compiling."""
    from .decoder import compiled_decoder, in_place_cache, uses_half_weights
    from .device import MaxRuntime
    from .encoder import compiled_encoder

    runtime = MaxRuntime.create(job.device)
    if job.part == "encoder":
        return compiled_encoder(runtime, job.dims, job.float64_blocks)[1]
    half = uses_half_weights(runtime, job.dims)
    return compiled_decoder(runtime, job.dims, half, in_place_cache(runtime))[1]


def _say(message: str) -> None:
    print(f"max-whisper: {message}", file=sys.stderr, flush=True)


def _spawn(job: GraphJob, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", MODULE, "--job", job.to_json()],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=child_env(),
    )


def _makespan(estimates: list[float], workers: int) -> float:
    """When the last of these jobs ends, each started in turn on the first free worker."""
    free_at = [0.0] * min(workers, len(estimates))
    for estimate in estimates:
        free_at[free_at.index(min(free_at))] += estimate
    return max(free_at, default=0.0)


def compile_all(
    jobs: list[GraphJob], workers: int | None = None, progress: bool = True
) -> dict[str, float]:
    """Compile the missing graphs of `jobs`, `workers` processes at a time (default: one per core).
    Returns {label: seconds}; raises RuntimeError naming the graphs that failed."""
    todo = missing(jobs)
    if not todo:
        return {}
    workers = max(1, workers or os.cpu_count() or 1)
    cache = _log_dir()
    total_estimate = _makespan([j.estimate_s for j in todo], workers)
    if progress:
        _say(
            f"compiling {len(todo)} MAX graph(s) for this machine, {min(workers, len(todo))} "
            f"at a time (first run only, about {total_estimate:.0f} s): "
            f"{', '.join(j.label for j in todo)}"
        )
    start = time.perf_counter()
    pending, running, seconds, failed = list(todo), {}, {}, []
    tty = progress and sys.stderr.isatty()
    try:
        while pending or running:
            while pending and len(running) < workers:
                job = pending.pop(0)
                log = open(cache / f"compile-{job.part}-{os.getpid()}.log", "w")
                running[job] = (_spawn(job, log), log, time.perf_counter())
            time.sleep(0.5)
            for job, (proc, log, began) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[job]
                seconds[job.label] = time.perf_counter() - began
                if proc.returncode != 0:
                    failed.append(f"{job.label} (see {log.name})")
                elif progress:
                    if tty:
                        print("\r" + " " * 79 + "\r", end="", file=sys.stderr)
                    _say(f"compiled {job.label} in {seconds[job.label]:.0f} s")
            if tty and running:
                elapsed = time.perf_counter() - start
                left = max(0.0, total_estimate - elapsed)
                names = ", ".join(j.part for j in running)
                print(
                    f"\r  compiling {names}: {elapsed:4.0f} s elapsed, about {left:3.0f} s left ",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    finally:  # interrupted or stopped: no compile left running behind us
        for proc, log, _ in running.values():
            proc.terminate()
            proc.wait()
            log.close()
    if tty:
        print("\r" + " " * 79 + "\r", end="", file=sys.stderr)
    if failed:
        raise CompileError(f"could not compile: {'; '.join(failed)}")
    if progress:
        _say(f"all graphs ready in {time.perf_counter() - start:.0f} s")
    return seconds


def _log_dir() -> Path:
    from .compile_cache import cache_dir

    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def start_background(jobs: list[GraphJob]) -> Path | None:
    """Start `compile_all(jobs)` in a detached process that outlives this one; returns its log file,
    or None when a background compile is already running."""
    directory = _log_dir()
    pid_file = directory / "warmup.pid"
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        return None  # one is running
    except (OSError, ValueError):
        pass
    log_path = directory / "warmup.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, "--jobs", json.dumps([j.to_json() for j in jobs])],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(),
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    return log_path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--job"]:  # one graph, in this process
        compile_here(GraphJob.from_json(args[1]))
        return 0
    if args[:1] == ["--jobs"]:  # the background compile of a first run: behind the foreground work
        os.nice(19)
        # stopped (a test session ending, a user's kill): compile_all stops its workers too
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        compile_all([GraphJob.from_json(j) for j in json.loads(args[1])])
        return 0
    raise SystemExit("usage: python -m max_whisper.backends.max.warmup --job JSON | --jobs JSON")


if __name__ == "__main__":
    sys.exit(main())
