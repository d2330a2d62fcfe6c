"""The cluster engine (`--ray`): Ray Data reads the file list, decodes audio in CPU tasks and
transcribes in a pool of actors, each loading the model once; results stream back to this
process, which writes every output and the manifest. Ray restarts an actor that dies and retries
its batch (Ray Data's default: max_restarts and max_task_retries -1); what this process has
already written stays written.

`ray` is the `cluster` extra, imported only here.
"""

from __future__ import annotations

import logging
import pickle
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np

from ..dims import SAMPLE_RATE
from ..errors import UsageError
from ..options import TranscribeOptions
from .results import Finished, error_line
from .sources import BatchItem

DECODE_CPUS = 0.25  # a decode task is short, and mostly waits on the file


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'max-whisper[cluster]'") from None
    return ray


def transcribe_ray(
    items: list[BatchItem],
    options_for: Callable[[BatchItem], TranscribeOptions],
    model_args: dict,
    batch_size: int,
    workers: int,
    address: str | None,
) -> Iterator[Finished]:
    """Each item's Finished, in the order they come back. `address`: a running cluster's
    (host:port, or "auto"); None starts a Ray instance on this machine for the run."""
    if "max._core" in sys.modules:  # MAX's native library, then Ray's: a crash in ray.init
        raise UsageError(
            "the Ray engine cannot start in a process that has loaded a MAX model: "
            "run it in a fresh process"
        )
    ray = import_ray()
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # our own progress says it all
    ray.init(
        address=address,
        logging_level="ERROR",
        log_to_driver=False,
        **({} if address else {"include_dashboard": False}),
    )
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        cpus = ray.cluster_resources().get("CPU", 1.0)
        worker_cpus = min(1.0, max(0.01, (cpus - DECODE_CPUS) / workers))
        rows = [
            {"index": i, "path": item.path, "options": pickle.dumps(options_for(item))}
            for i, item in enumerate(items)
        ]
        dataset = (
            ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * workers)))
            .map(_decode_row, num_cpus=DECODE_CPUS)
            .map_batches(
                _Transcriber,
                fn_constructor_kwargs={"model_args": model_args},
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=worker_cpus,
            )
        )
        for row in dataset.iter_rows():
            result = pickle.loads(row["result"]) if row["result"] else None
            yield Finished(
                item=items[int(row["index"])],
                result=result,
                error=row["error"] or None,
                duration=float(row["duration"]) if row["duration"] >= 0 else None,
                seconds=float(row["seconds"]),
            )
    finally:
        ray.shutdown()


def _decode_row(row: dict) -> dict:
    """A Ray task: the file's samples (none for a long file, which its actor streams) or why it
    cannot be read."""
    from ..audio import audio_duration
    from .local_engine import short_file_samples

    started = time.monotonic()
    samples, error, duration = np.zeros(0, np.float32), "", -1.0
    try:
        short = short_file_samples(row["path"])
        if short is None:
            duration = audio_duration(row["path"])
        else:
            samples, duration = short, len(short) / SAMPLE_RATE
    except Exception as exc:
        error = error_line(exc)
    return {
        **row,
        "audio": samples,
        "error": error,
        "duration": duration,
        "decode_seconds": time.monotonic() - started,
    }


class _Transcriber:
    """A Ray actor: the model, loaded once; each call transcribes one batch of files together."""

    def __init__(self, model_args: dict):
        from .. import load_model
        from .local_engine import for_model

        self.model = load_model(**model_args)
        self.options = for_model(self.model, pickle.loads)

    def __call__(self, batch: dict) -> dict:
        started = time.monotonic()
        count = len(batch["index"])
        options = [self.options(o) for o in batch["options"]]
        todo = [k for k in range(count) if not batch["error"][k]]
        audios = [batch["audio"][k] if len(batch["audio"][k]) else batch["path"][k] for k in todo]
        results, errors = [b""] * count, [str(e) for e in batch["error"]]
        seconds = [float(s) for s in batch["decode_seconds"]]
        for j, result in self.model.transcribe_many(
            audios, batch_size=count, options_for=lambda j: options[todo[j]]
        ):
            k = todo[j]
            if isinstance(result, Exception):
                errors[k] = error_line(result)
            else:
                results[k] = pickle.dumps(result)
            seconds[k] += time.monotonic() - started
        return {
            "index": np.asarray(batch["index"]),
            "result": np.array(results, dtype=object),
            "error": np.array(errors, dtype=object),
            "duration": np.asarray(batch["duration"], dtype=np.float64),
            "seconds": np.asarray(seconds, dtype=np.float64),
        }
