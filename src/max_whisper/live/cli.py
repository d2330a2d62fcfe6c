"""`max-whisper live FILE|-|--mic`: text while the audio comes in.

On a terminal the utterance in progress is one line rewritten in place (its words not yet final
dimmed); each finished utterance stays as a line. Elsewhere (a pipe, a file) only the finished
utterances are printed, one a line.
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Iterator

import numpy as np

from ..dims import SAMPLE_RATE
from ..errors import UsageError
from .policy import Completed, Event, Update

CONTAINER_MAGIC = (b"RIFF", b"fLaC", b"OggS", b"ID3", b"\x1aE\xdf\xa3", b"FORM")
DIM, PLAIN, CLEAR_LINE = "\033[2m", "\033[0m", "\r\033[K"


def add_parsers(sub) -> None:
    from ..cli import add_command, add_model_options

    p = add_command(
        sub,
        "live",
        cmd_live,
        help="transcribe audio as it comes in: a file at real-time speed, stdin, a microphone",
        show_defaults=True,
        description="Print text while the audio comes in: words become final once two "
        "successive decodes agree on them, and a pause (voice activity) ends a line.",
    )
    p.add_argument(
        "audio",
        nargs="?",
        help="an audio file (read at real-time speed), or - for standard input: raw PCM16 16 kHz "
        "mono as it arrives (e.g. from ffmpeg -f s16le -ac 1 -ar 16000 -), or a whole audio file",
    )
    p.add_argument("--mic", action="store_true", help="listen to the default microphone")
    p.add_argument(
        "--speed", type=float, default=1.0, help="read a file N times faster than real time"
    )
    add_model_options(p)


def cmd_live(args) -> int:
    if (args.audio is None) == (not args.mic):
        raise UsageError("give one source: an audio file, - (standard input) or --mic")
    if args.speed <= 0:
        raise UsageError(f"--speed must be positive, got {args.speed:g}")
    chunks = microphone() if args.mic else None  # a missing microphone fails before the model
    if args.audio == "-":
        chunks = standard_input(args.speed)
    elif args.audio is not None:
        from ..audio import load_audio
        from .session import paced

        chunks = paced(load_audio(args.audio), args.speed)
    from .. import load_model
    from .decoder import LiveDecoder
    from .session import new_transcript, transcribe_live

    model = load_model(
        args.model,
        backend=args.backend,
        device=args.device,
        encoder_float64_blocks=args.encoder_float64_blocks,
        warm_start=True,
    )
    show = Display(sys.stdout)
    try:
        for event in transcribe_live(chunks, LiveDecoder(model), new_transcript()):
            show(event)
    finally:
        show.close()
    return 0


class Display:
    def __init__(self, out):
        self.out, self.live = out, out.isatty()
        self.final = ""  # the utterance's final words so far

    def __call__(self, event: Event) -> None:
        if isinstance(event, Completed):
            self.final = ""
            print((CLEAR_LINE if self.live else "") + event.text, file=self.out, flush=True)
        elif isinstance(event, Update) and self.live:
            self.final += event.delta
            space = " " if self.final else ""
            pending = f"{space}{DIM}{event.pending}{PLAIN}" if event.pending else ""
            self.out.write(f"{CLEAR_LINE}{self.final}{pending}")
            self.out.flush()

    def close(self) -> None:
        if self.live and self.final:
            print(file=self.out)


def standard_input(speed: float) -> Iterator[np.ndarray]:
    if sys.stdin.isatty():
        raise UsageError("standard input is a terminal: pipe audio into it")
    stream = sys.stdin.buffer
    head = stream.read(16)
    mpeg_sync = head[:1] == b"\xff" and head[1:2] >= b"\xe0"
    if head.startswith(CONTAINER_MAGIC) or head[4:8] == b"ftyp" or mpeg_sync:  # a whole file
        import tempfile

        from ..audio import load_audio
        from .session import paced

        with tempfile.NamedTemporaryFile(prefix="max-whisper-live-") as spooled:
            spooled.write(head)
            while block := stream.read(1 << 20):
                spooled.write(block)
            spooled.flush()
            samples = load_audio(spooled.name)
        return paced(samples, speed)
    return _raw_pcm16(head, stream)


def _raw_pcm16(head: bytes, stream) -> Iterator[np.ndarray]:
    from .realtime import pcm16

    pending = head
    while True:
        block = stream.read1(SAMPLE_RATE // 5) if hasattr(stream, "read1") else stream.read(6400)
        pending += block
        whole = len(pending) // 2 * 2
        if whole:
            yield pcm16(pending[:whole])
            pending = pending[whole:]
        if not block:
            return


def microphone() -> Iterator[np.ndarray]:
    """The default input device, 16 kHz mono, a tenth of a second at a time."""
    try:
        import sounddevice
    except ImportError:
        raise UsageError("--mic needs sounddevice: pip install 'max-whisper[mic]'") from None
    except OSError as exc:  # the package is there, the PortAudio library is not
        raise UsageError(f"--mic cannot use the sound system: {exc}") from None
    try:
        sounddevice.check_input_settings(channels=1, samplerate=SAMPLE_RATE, dtype="float32")
    except Exception as exc:
        raise UsageError(f"no microphone to listen to: {exc}") from None
    heard: queue.Queue = queue.Queue()
    stream = sounddevice.InputStream(
        samplerate=SAMPLE_RATE,
        channels=1,
        dtype="float32",
        blocksize=SAMPLE_RATE // 10,
        callback=lambda data, frames, time, status: heard.put(data[:, 0].copy()),
    )

    def listen() -> Iterator[np.ndarray]:
        with stream:
            while True:
                chunk = [heard.get()]
                while not heard.empty():
                    chunk.append(heard.get_nowait())
                yield np.concatenate(chunk)

    return listen()
