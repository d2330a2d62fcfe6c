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
import wave
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
    "audio_duration",
    "load_audio",
    "log_mel_spectrogram",
    "mel_filters",
    "pad_or_trim",
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
    wav = _plain_wav(path, sr)
    if wav is not None:  # read as stored: FFmpeg would pass it through, a small packet at a time
        with wav:
            while block := wav.readframes(_WAV_BLOCK):
                yield np.frombuffer(block, dtype="<i2")
        return
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


_WAV_BLOCK = 1 << 16  # samples per read of a plain WAV file


def _plain_wav(path: PathLike, sr: int) -> wave.Wave_read | None:
    """The file opened as a WAV already in the wanted form (16-bit mono PCM at `sr`); None for any
    other file, which PyAV then decodes (and reports on, when it can't)."""
    try:
        wav = wave.open(os.fspath(path), "rb")
    except (wave.Error, EOFError, OSError):
        return None
    if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, sr):
        wav.close()
        return None
    return wav


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
        mel[:, start : start + _FRAMES_PER_BLOCK] = _log_mel_power(
            frames[start : start + _FRAMES_PER_BLOCK], n_mels
        )
    return _floor_and_scale(mel, mel.max())


_SILENT_LOG = np.log10(np.float32(1e-10))  # log10 of the clamp: a frame of digital silence's value


def _log_mel_power(frames: np.ndarray, n_mels: int) -> np.ndarray:
    """log10 of the mel power clamped at 1e-10, float32 [n_mels, n], of STFT frames [n, N_FFT] (a
    view of the padded samples).

    Frames of digital silence (the padding that fills a short clip's window, gaps of exact zeros)
    have exactly zero power: only the others go through the FFT and the logarithm."""
    sounding = frames.any(axis=1)
    if sounding.all():
        return _sounding_log_mel_power(frames, n_mels)
    log_power = np.full((n_mels, len(frames)), _SILENT_LOG, dtype=np.float32)
    if sounding.any():
        log_power[:, sounding] = _sounding_log_mel_power(frames[sounding], n_mels)
    return log_power


def _sounding_log_mel_power(frames: np.ndarray, n_mels: int) -> np.ndarray:
    spectrum = np.fft.rfft(frames * _hann_window(N_FFT), axis=-1)
    power = np.ascontiguousarray((spectrum.real**2 + spectrum.imag**2).T)  # [bins, n]
    mel = np.empty((n_mels, power.shape[1]), dtype=np.float32)
    for m, (first, weights) in enumerate(_filter_spans(n_mels)):
        np.sum(weights[:, None] * power[first : first + len(weights)], axis=0, out=mel[m])
    return np.log10(np.maximum(mel, 1e-10, out=mel), out=mel)


@cache
def _filter_spans(n_mels: int) -> list[tuple[int, np.ndarray]]:
    """Each mel filter's first non-zero frequency bin and its weights from there to its last.

    The filterbank is applied through these (a dozen bins a filter at most), not as a matrix
    product: NumPy hands that to its BLAS, whose threads then spin for a while after it returns
    and slow the encoder that runs next."""
    spans = []
    for row in mel_filters(n_mels):
        nonzero = np.flatnonzero(row)
        spans.append((int(nonzero[0]), row[nonzero[0] : nonzero[-1] + 1].copy()))
    return spans


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
