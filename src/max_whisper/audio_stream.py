"""A file's samples and mel frames, window by window, in bounded memory: `StreamedAudio` (two
passes over the file: the first for its length and the log-mel maximum Whisper floors against),
and `window_source`, what the long-form loop reads its windows from."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .audio import (
    _FRAMES_PER_BLOCK,
    AudioError,
    PathLike,
    _decode_pcm16,
    _floor_and_scale,
    _log_mel_power,
    _to_float,
    log_mel_spectrogram,
)
from .dims import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE

_BLOCK_HOP = _FRAMES_PER_BLOCK * HOP_LENGTH  # samples between the first frames of two blocks
_CONTEXT = N_FFT // 2  # samples each side of a frame's centre
# mel blocks the first pass keeps for the windows (each 1.3 MB at 80 mels): a file of up to ~5 min
# is then not computed twice; a longer one keeps none
_KEPT_BLOCKS = 8


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
    return _log_mel_power(frames, n_mels)


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
    they are asked for (the mel of a file of a few minutes is kept from the first pass). Each mel
    frame is computed from the same samples in the same 4096-frame block as the whole-file
    computation, so the frames are the same to the bit.
    """

    def __init__(self, path: PathLike, n_mels: int = 80):
        self.path = os.fspath(path)
        self.n_mels = n_mels
        reader = _PcmReader(self.path)
        log_max, block, kept = None, 0, {}
        try:
            while True:
                if reader.n_samples is not None and block * _FRAMES_PER_BLOCK >= _n_frames(
                    reader.n_samples
                ):
                    break
                log_spec = _block_log_mel(reader, block, None, n_mels)
                block_max = log_spec.max()
                log_max = block_max if log_max is None else max(log_max, block_max)
                if kept is not None:
                    kept[block] = log_spec
                    kept = kept if len(kept) <= _KEPT_BLOCKS else None
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
        self._blocks: dict[int, np.ndarray] = {
            b: _floor_and_scale(log_spec, log_max) for b, log_spec in (kept or {}).items()
        }

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
        # windows move forward: later ones need none before these
        self._blocks = {b: mel for b, mel in self._blocks.items() if b >= first}
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
