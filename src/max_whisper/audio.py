"""Audio in: decoding with PyAV, padding, and Whisper's log-Mel spectrogram in NumPy.

`load_audio` gives what openai-whisper's ffmpeg-based loader gives: the same libswresample
conversion to 16-bit mono at the target rate (`ffmpeg -ac 1 -ar 16000 -f s16le`), then / 32768.
Bit-exact against the FFmpeg 9 CLI on WAV (16-bit, float), FLAC, MP3 and Ogg/Opus; from MP4/AAC we
also keep the codec's end padding of the last frame (< 1024 samples), which that CLI trims.
`log_mel_spectrogram` reproduces whisper.audio.log_mel_spectrogram without torch or librosa.
`StreamedAudio` gives the same samples and the same mel frames (bit for bit) of a file without ever
holding the whole of it: memory stays flat however long the file is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cache

import av
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .dims import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE
from .errors import MaxWhisperError

PathLike = str | os.PathLike

__all__ = [
    "AudioError",
    "StreamedAudio",
    "audio_duration",
    "iter_audio_chunks",
    "load_audio",
    "log_mel_spectrogram",
    "mel_filters",
    "pad_or_trim",
    "window_source",
]


class AudioError(MaxWhisperError, ValueError):
    """The audio could not be read; the message is one line naming the file and the problem."""


# --------------------------------------------------------------------------------------------------
# Decoding


def load_audio(path: PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a whole file (any container/codec FFmpeg reads) to mono float32 at `sr` Hz, in
    [-1, 1)."""
    pcm = list(_decode_pcm16(path, sr))
    if not pcm:
        raise AudioError(f"'{os.fspath(path)}' contains no audio samples")
    return _to_float(np.concatenate(pcm))


def iter_audio_chunks(
    path: PathLike, chunk_seconds: float, sr: int = SAMPLE_RATE
) -> Iterator[np.ndarray]:
    """Decode incrementally: mono float32 chunks of `chunk_seconds` (the last may be shorter), so
    memory stays bounded however long the file is."""
    chunk = int(round(chunk_seconds * sr))
    if chunk <= 0:
        raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds}")
    pending: list[np.ndarray] = []
    n_pending = 0
    n_total = 0
    for pcm in _decode_pcm16(path, sr):
        pending.append(pcm)
        n_pending += len(pcm)
        while n_pending >= chunk:
            joined = np.concatenate(pending)
            yield _to_float(joined[:chunk])
            n_total += chunk
            pending, n_pending = [joined[chunk:]], n_pending - chunk
    if n_pending:
        yield _to_float(np.concatenate(pending))
    elif n_total == 0:
        raise AudioError(f"'{os.fspath(path)}' contains no audio samples")


def audio_duration(path: PathLike) -> float:
    """Duration in seconds, from the container's metadata, or by decoding when it has none."""
    with _open(path) as container:
        stream = _audio_stream(container, path)
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / av.time_base
    return sum(len(pcm) for pcm in _decode_pcm16(path, SAMPLE_RATE)) / SAMPLE_RATE


def _to_float(pcm16: np.ndarray) -> np.ndarray:
    return pcm16.astype(np.float32) / 32768.0


def _open(path: PathLike) -> av.container.InputContainer:
    name = os.fspath(path)
    if not os.path.exists(name):
        raise AudioError(f"no such file: '{name}'")
    if os.path.isdir(name):
        raise AudioError(f"'{name}' is a folder, not an audio file")
    if os.path.getsize(name) == 0:
        raise AudioError(f"cannot decode '{name}': the file is empty")
    try:
        return av.open(name, metadata_errors="ignore")
    except av.error.InvalidDataError:
        raise AudioError(
            f"cannot decode '{name}': not an audio file or unsupported format"
        ) from None
    except (av.error.FFmpegError, OSError) as exc:
        raise AudioError(f"cannot open '{name}': {exc.strerror or exc}") from None


def _audio_stream(
    container: av.container.InputContainer, path: PathLike
) -> av.audio.stream.AudioStream:
    if not container.streams.audio:
        raise AudioError(f"'{os.fspath(path)}' has no audio stream")
    return container.streams.audio[0]


def _decode_pcm16(path: PathLike, sr: int) -> Iterator[np.ndarray]:
    """int16 mono samples at `sr`, a decoded frame at a time."""
    with _open(path) as container:
        resampler, params = None, None
        for frame in _decoded_frames(container, path):
            key = (frame.format.name, frame.layout.name, frame.sample_rate)
            if key != params:  # the first frame, or the stream changed format mid-way
                if resampler is not None:
                    yield from _frames_pcm(resampler.resample(None))
                resampler, params = av.AudioResampler(format="s16", layout="mono", rate=sr), key
            yield from _frames_pcm(resampler.resample(frame))
        if resampler is not None:
            yield from _frames_pcm(resampler.resample(None))


def _decoded_frames(
    container: av.container.InputContainer, path: PathLike
) -> Iterator[av.AudioFrame]:
    """The first audio stream's frames. Like the ffmpeg CLI, skip packets the decoder rejects and
    take a read error as the end of the file; fail only when nothing at all decodes."""
    stream = _audio_stream(container, path)
    n_frames = n_errors = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                n_errors += 1
                continue
            n_frames += len(frames)
            yield from frames
    except av.error.FFmpegError:
        n_errors += 1
    if n_errors and not n_frames:
        raise AudioError(
            f"cannot decode '{os.fspath(path)}': not an audio file or unsupported format"
        )


def _frames_pcm(frames: list) -> Iterator[np.ndarray]:
    for frame in frames:
        pcm = frame.to_ndarray().reshape(-1)  # packed s16 mono: shape [1, n]
        if len(pcm):
            yield pcm


# --------------------------------------------------------------------------------------------------
# Padding and the log-Mel spectrogram


def pad_or_trim(array: np.ndarray, length: int = N_SAMPLES, *, axis: int = -1) -> np.ndarray:
    """Zero-pad or cut `array` along `axis` to `length` (30 s of samples by default)."""
    size = array.shape[axis]
    if size > length:
        return np.take(array, np.arange(length), axis=axis)
    if size < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - size)
        return np.pad(array, widths)
    return array


@cache
def mel_filters(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-style mel filterbank, float32 [n_mels, 1 + n_fft // 2]: what
    librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels) returns (htk=False, norm="slaney"),
    which is how openai-whisper's mel_filters.npz was made. Read-only: it is shared by the cache."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    widths = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    # Like librosa: triangles are stored in float32, then scaled in place (the rounding matches).
    weights = np.maximum(0, np.minimum(lower, upper)).astype(np.float32)
    weights *= (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]  # slaney: constant energy per band
    weights.flags.writeable = False
    return weights


# Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz):
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, hz / _F_SP)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    log_part = _MIN_LOG_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log_part, mel * _F_SP)


@cache
def _hann_window(n: int) -> np.ndarray:
    """Periodic Hann window, as torch.hann_window(n)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """Whisper's log-Mel spectrogram, float32 [n_mels, len(audio + padding) // 160], from 16 kHz
    mono samples: centred STFT (reflect padding, periodic Hann, n_fft 400, hop 160) without its
    last frame, power, mel filterbank, log10 clamped at 1e-10, floored 8 below the maximum,
    (x + 4) / 4."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D samples, got shape {audio.shape}")
    if padding > 0:
        audio = np.pad(audio, (0, padding))
    if len(audio) <= N_FFT // 2:
        raise ValueError(
            f"audio too short for a spectrogram: {len(audio)} samples (need > {N_FFT // 2})"
        )
    padded = np.pad(audio, N_FFT // 2, mode="reflect")
    n_frames = len(audio) // HOP_LENGTH  # torch.stft gives one more; Whisper drops it
    frames = sliding_window_view(padded, N_FFT)[: n_frames * HOP_LENGTH : HOP_LENGTH]
    mel = np.empty((n_mels, n_frames), dtype=np.float32)
    # In blocks of frames, so that hours of audio need no hours-long intermediate arrays. float32
    # like torch.stft; float64 is no closer to openai-whisper (both within ~3e-5).
    # StreamedAudio computes the very same blocks (same frames, same shapes): keep the two in step.
    for start in range(0, n_frames, _FRAMES_PER_BLOCK):
        mel[:, start : start + _FRAMES_PER_BLOCK] = _mel_power(
            frames[start : start + _FRAMES_PER_BLOCK], n_mels
        )
    log_spec = _log10_power(mel)
    return _floor_and_scale(log_spec, log_spec.max())


def _mel_power(frames: np.ndarray, n_mels: int) -> np.ndarray:
    """Mel power [n_mels, n] of STFT frames [n, N_FFT] (a view of the padded samples)."""
    spectrum = np.fft.rfft(frames * _hann_window(N_FFT), axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    return (power @ mel_filters(n_mels).T).T


def _log10_power(mel: np.ndarray) -> np.ndarray:
    """log10 of mel power clamped at 1e-10, in place (float32)."""
    return np.log10(np.maximum(mel, 1e-10, out=mel), out=mel)


def _floor_and_scale(log_spec: np.ndarray, log_max: np.floating) -> np.ndarray:
    """Whisper's last steps, in place: floor 8 below the whole file's maximum, then (x + 4) / 4."""
    np.maximum(log_spec, log_max - 8.0, out=log_spec)
    log_spec += 4.0
    log_spec /= 4.0
    return log_spec


_FRAMES_PER_BLOCK = 4096  # 30 s is one block; ~20 MB of intermediates


def first_window_mel(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """The log-Mel spectrogram of the first 30-s window, zero-padded: float32 [n_mels, 3000]."""
    return pad_or_trim(log_mel_spectrogram(audio, n_mels), N_FRAMES)


# --------------------------------------------------------------------------------------------------
# Streaming: a file's samples and mel frames, window by window, in bounded memory

_BLOCK_HOP = _FRAMES_PER_BLOCK * HOP_LENGTH  # samples between the first frames of two blocks
_CONTEXT = N_FFT // 2  # samples each side of a frame's centre


class _PcmReader:
    """A file's int16 samples by absolute index, decoded forward into a buffer that drops what was
    released; zeros past the end (where `n_samples` is then known). Reading before the buffer starts
    decodes the file again from its start: rare (clip_timestamps in a backward order)."""

    def __init__(self, path: str):
        self.path = path
        self.n_samples: int | None = None  # known at the end of the file
        self._pcm: Iterator[np.ndarray] | None = None
        self._restart()

    def _restart(self) -> None:
        self.close()
        self._pcm = _decode_pcm16(self.path, SAMPLE_RATE)
        self._buffer = np.zeros(0, dtype=np.int16)
        self._start = 0  # absolute index of self._buffer[0]
        self._eof = False

    @property
    def _end(self) -> int:
        return self._start + len(self._buffer)

    def read(self, start: int, stop: int) -> np.ndarray:
        """int16 samples [start, stop) (start >= 0), zero-filled past the end of the file."""
        if start < self._start:
            self._restart()
        if start >= self._end:  # nothing buffered is wanted
            self._start, self._buffer = self._end, self._buffer[:0]
        new, end = [], self._end
        while end < stop and not self._eof:
            pcm = next(self._pcm, None)
            if pcm is None:
                self._eof, self.n_samples, self._pcm = True, end, None
            elif end + len(pcm) <= start and not new and not len(self._buffer):
                end += len(pcm)  # wholly before the request: not kept
                self._start = end
            else:
                new.append(pcm)
                end += len(pcm)
        if new:
            self._buffer = np.concatenate([self._buffer, *new])
        out = self._buffer[start - self._start : max(0, stop - self._start)]
        if len(out) < stop - start:
            out = np.concatenate([out, np.zeros(stop - start - len(out), dtype=np.int16)])
        return out

    def release(self, before: int) -> None:
        """Samples before `before` will not be read again (or only after a restart)."""
        before = min(before, self._end)
        if before > self._start:
            self._buffer = self._buffer[before - self._start :]
            self._start = before

    def close(self) -> None:
        if self._pcm is not None:
            self._pcm.close()  # closes the container
            self._pcm = None


def _block_log_mel(reader: _PcmReader, block: int, n_frames: int | None, n_mels: int) -> np.ndarray:
    """log10 mel power [n_mels, n] of frames [block * 4096, + n), n = min(4096, n_frames - that):
    exactly the block log_mel_spectrogram(whole file, padding=N_SAMPLES) computes. n_frames None:
    not known yet (then the block must be full: the caller has more samples than it spans, or is at
    the end of the file, when reader.n_samples is set)."""
    first = block * _FRAMES_PER_BLOCK
    lo, hi = first * HOP_LENGTH - _CONTEXT, (first + _FRAMES_PER_BLOCK - 1) * HOP_LENGTH + _CONTEXT
    if lo < 0:  # the very start: reflect padding, as np.pad(mode="reflect") of the whole file
        head = _to_float(reader.read(0, max(hi, _CONTEXT + 1)))
        padded = np.concatenate([head[_CONTEXT:0:-1], head[:hi]])
    else:
        padded = _to_float(reader.read(lo, hi))
    if n_frames is None:
        n_frames = (
            _n_frames(reader.n_samples)
            if reader.n_samples is not None
            else first + _FRAMES_PER_BLOCK
        )
    count = min(_FRAMES_PER_BLOCK, n_frames - first)
    frames = sliding_window_view(padded, N_FFT)[: count * HOP_LENGTH : HOP_LENGTH]
    return _log10_power(np.ascontiguousarray(_mel_power(frames, n_mels)))


def _n_frames(n_samples: int) -> int:
    """Frames of the whole file's spectrogram with its 30 s of padding (the end's reflect padding
    reflects only that silence: zeros past the end are the same)."""
    return (n_samples + N_SAMPLES) // HOP_LENGTH


class StreamedAudio:
    """An audio file for transcribe(), read window by window in bounded memory (a few MB of samples
    and mel), whatever its length. Its samples and mel frames are bit-identical to those of
    `load_audio(path)` and `log_mel_spectrogram(that, n_mels, padding=N_SAMPLES)`.

    Whisper floors the log-mel 8 below the whole file's maximum: the constructor makes a first pass
    over the file for that maximum (and the number of samples), then windows are decoded again as
    they are asked for. Each mel frame is computed from the same samples in the same 4096-frame
    block as the whole-file computation, so the frames are the same to the bit.
    """

    def __init__(self, path: PathLike, n_mels: int = 80):
        self.path = os.fspath(path)
        self.n_mels = n_mels
        reader = _PcmReader(self.path)
        log_max, block = None, 0
        try:
            while True:
                if reader.n_samples is not None and block * _FRAMES_PER_BLOCK >= _n_frames(
                    reader.n_samples
                ):
                    break
                block_max = _block_log_mel(reader, block, None, n_mels).max()
                log_max = block_max if log_max is None else max(log_max, block_max)
                block += 1
                reader.release(block * _BLOCK_HOP - _CONTEXT)
        finally:
            reader.close()
        if reader.n_samples == 0:
            raise AudioError(f"'{self.path}' contains no audio samples")
        self.n_samples: int = reader.n_samples
        self.log_max = log_max  # np.float32, as log_spec.max() of the whole file
        self._n_frames = _n_frames(self.n_samples)
        self._reader: _PcmReader | None = None
        self._blocks: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n_samples

    def __repr__(self) -> str:
        return f"StreamedAudio({self.path!r}, n_mels={self.n_mels}, duration={self.duration:.2f})"

    @property
    def duration(self) -> float:
        return self.n_samples / SAMPLE_RATE

    @property
    def content_frames(self) -> int:
        return self.n_samples // HOP_LENGTH

    def mel_frames(self, seek: int, n: int) -> np.ndarray:
        """float32 [n_mels, n]: frames [seek, seek + n) of the file's log-mel with 30 s of padding
        (fewer at its end, like slicing log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES))."""
        stop = min(seek + n, self._n_frames)
        if stop <= seek:
            return np.zeros((self.n_mels, 0), dtype=np.float32)
        first, last = seek // _FRAMES_PER_BLOCK, (stop - 1) // _FRAMES_PER_BLOCK
        blocks = {b: self._block(b) for b in range(first, last + 1)}
        self._blocks = blocks  # windows move forward: later ones need none before these
        self._release(seek)
        out = np.concatenate([blocks[b] for b in range(first, last + 1)], axis=1)
        offset = seek - first * _FRAMES_PER_BLOCK
        return out[:, offset : offset + stop - seek]

    def samples(self, seek: int, n: int) -> np.ndarray:
        """float32 samples of frames [seek, seek + n):
        load_audio(path)[seek * 160: (seek + n) * 160]."""
        start, stop = seek * HOP_LENGTH, min((seek + n) * HOP_LENGTH, self.n_samples)
        if stop <= start:
            return np.zeros(0, dtype=np.float32)
        pcm = _to_float(self._open().read(start, stop))
        self._release(seek)
        return pcm

    def close(self) -> None:
        """Close the decoder (it reopens when asked for more); also done when garbage collected."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._blocks = {}

    def _open(self) -> _PcmReader:
        if self._reader is None:
            self._reader = _PcmReader(self.path)
        return self._reader

    def _block(self, block: int) -> np.ndarray:
        if block not in self._blocks:
            log_spec = _block_log_mel(self._open(), block, self._n_frames, self.n_mels)
            self._blocks[block] = _floor_and_scale(log_spec, self.log_max)
        return self._blocks[block]

    def _release(self, seek: int) -> None:
        # what windows from `seek` on can still need: their blocks' samples (from the block of
        # `seek`, with context) and their own samples (from seek * 160, later)
        if self._reader is not None:
            self._reader.release((seek // _FRAMES_PER_BLOCK) * _BLOCK_HOP - _CONTEXT)


class _InMemoryAudio:
    """Samples already in memory, as a transcribe() source: the whole file's log-mel at once."""

    def __init__(self, audio: np.ndarray, n_mels: int):
        self.audio = audio
        self.mel = log_mel_spectrogram(
            audio, n_mels, padding=N_SAMPLES
        )  # + 30 s for the last window
        self.content_frames = self.mel.shape[-1] - N_FRAMES

    def mel_frames(self, seek: int, n: int) -> np.ndarray:
        return self.mel[:, seek : seek + n]

    def samples(self, seek: int, n: int) -> np.ndarray:
        return self.audio[seek * HOP_LENGTH : (seek + n) * HOP_LENGTH]


def window_source(audio: np.ndarray | StreamedAudio | PathLike, n_mels: int):
    """What transcribe() reads windows from: `content_frames`, `mel_frames(seek, n)` and
    `samples(seek, n)`. A path streams (StreamedAudio); samples (an array) are taken as they are."""
    if isinstance(audio, (str, os.PathLike)):
        return StreamedAudio(audio, n_mels)
    if isinstance(audio, StreamedAudio):
        return audio if audio.n_mels == n_mels else StreamedAudio(audio.path, n_mels)
    return _InMemoryAudio(audio, n_mels)
