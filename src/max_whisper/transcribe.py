"""Long-form transcription: a 30-s window that slides by the predicted timestamps.

Mirrors openai-whisper's transcribe(): prompt conditioning, temperature fallback, no-speech
skipping, clip_timestamps and (optionally) word timestamps, on any backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .audio import load_audio, pad_or_trim
from .audio_stream import StreamedAudio, window_source
from .backends.base import TranscriptionModel
from .decoding import DecodingResult
from .dims import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, SAMPLE_RATE
from .engine import BatchingEngine, Decode, DetectLanguage, Encode, Stream
from .options import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS, TranscribeOptions

END_MARGIN = 1.0  # s: `speech_to_the_end` lets less than this end a window's text early


def parse_clip_timestamps(
    clip_timestamps: str | list[float], content_frames: int
) -> list[tuple[int, int]]:
    if isinstance(clip_timestamps, str):
        clip_timestamps = (
            [float(ts) for ts in clip_timestamps.split(",") if ts.strip()]
            if clip_timestamps
            else []
        )
    seek_points = [round(ts * FRAMES_PER_SECOND) for ts in clip_timestamps] or [0]
    if len(seek_points) % 2 == 1:
        seek_points.append(content_frames)
    return list(zip(seek_points[::2], seek_points[1::2]))


def is_silent(samples: np.ndarray, threshold_dbfs: float) -> bool:
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    return peak <= 10 ** (threshold_dbfs / 20)


def transcribe(
    model: TranscriptionModel,
    audio: np.ndarray | StreamedAudio | str | os.PathLike,
    options: TranscribeOptions | None = None,
    *,
    on_progress: Callable[[float, float], None] | None = None,
    on_segment: Callable[[dict], None] | None = None,
    **overrides,
) -> dict:
    """Transcribe 16 kHz mono float32 `audio` under `options` (see TranscribeOptions; keyword
    overrides as openai-whisper's transcribe() takes them). Returns {"text", "segments",
    "language"}.

    `audio` is samples in memory, or a StreamedAudio (or a path, made one here): that reads the file
    window by window, so memory stays flat however long it is, with the very same tokens.

    silence_threshold (dBFS, None: off) skips windows whose peak level stays below it without
    decoding them: over digital silence Whisper tends to invent a word ("you") that its own
    no-speech rule keeps. Everything else follows openai-whisper's transcribe().
    on_progress(seconds_done, seconds_total) and on_segment(segment) let callers show progress.
    """
    options = TranscribeOptions.from_kwargs(options, **overrides)
    stream = transcription_stream(
        model, audio, options, on_progress=on_progress, on_segment=on_segment
    )
    return BatchingEngine(model.backend, model.tokenizer, batch_size=1).run_one(stream)


def transcription_stream(
    model: TranscriptionModel,
    audio: np.ndarray | StreamedAudio | str | os.PathLike,
    options: TranscribeOptions,
    *,
    on_progress: Callable[[float, float], None] | None = None,
    on_segment: Callable[[dict], None] | None = None,
    speech_to_the_end: bool = False,
) -> Stream:
    """openai-whisper's long-form loop over one recording, as a stream for the batching engine:
    it yields each window's Encode and Decode (and a DetectLanguage) and is sent the answers; it
    returns {"text", "segments", "language"}. The model's backend is called directly only for
    word timestamps. With `vad_filter`, the loop runs over the speech alone (Silero VAD) and the
    times are mapped back to the recording's.

    `speech_to_the_end`: the audio is speech up to its end (a chunk cut at pauses), so a window's
    text may not end at a segment that closes over END_MARGIN before the window's audio does
    (where the loop would slide a whole new window to that segment's end for the rest)."""
    if options.vad_filter:
        from .vad import SpeechMap, VadOptions, speech_spans

        samples = _samples(audio)
        speech = SpeechMap(speech_spans(samples, options.vad_options or VadOptions()))
        if not speech.spans:
            return {"text": "", "segments": [], "language": options.language or "en"}
        restored = (
            None
            if on_segment is None
            else lambda segment: on_segment(speech.restore({"segments": [segment]})["segments"][0])
        )
        result = yield from transcription_stream(
            model,
            speech.collect(samples),
            options.replace(vad_filter=False),
            on_progress=on_progress,
            on_segment=restored,
        )
        return speech.restore(result)
    dims = model.dims
    # the log-mel with 30 s of silence after the content, for slicing the last window
    source = window_source(audio, dims.n_mels)
    content_frames = source.content_frames
    content_duration = float(content_frames * HOP_LENGTH / SAMPLE_RATE)

    if options.language is None:
        if not model.is_multilingual:
            options = options.replace(language="en")
        else:
            features = yield Encode(pad_or_trim(source.mel_frames(0, N_FRAMES), N_FRAMES))
            probs = yield DetectLanguage(features)
            options = options.replace(language=max(probs, key=probs.get))
    language = options.language
    tokenizer = model.tokenizer.with_options(language=language, task=options.task)
    compression_ratio_threshold = options.compression_ratio_threshold
    logprob_threshold = options.logprob_threshold
    no_speech_threshold = options.no_speech_threshold
    initial_prompt = options.initial_prompt

    seek_clips = parse_clip_timestamps(options.clip_timestamps, content_frames)
    punctuation = PREPEND_PUNCTUATIONS + APPEND_PUNCTUATIONS

    def decode_with_fallback(
        features: np.ndarray, prompt: list[int], on_step, end_not_before: float | None
    ) -> Stream:
        result = None
        for t in options.temperatures:
            window = options.window_options(t, prompt, end_not_before)
            result = yield Decode(features, window, on_step)
            needs_fallback = False
            if (
                compression_ratio_threshold is not None
                and result.compression_ratio > compression_ratio_threshold
            ):
                needs_fallback = True  # too repetitive
            if logprob_threshold is not None and result.avg_logprob < logprob_threshold:
                needs_fallback = True  # too improbable
            if (
                no_speech_threshold is not None
                and result.no_speech_prob > no_speech_threshold
                and logprob_threshold is not None
                and result.avg_logprob < logprob_threshold
            ):
                needs_fallback = False  # silence: nothing better to find
            if not needs_fallback:
                break
        return result

    input_stride = N_FRAMES // dims.n_audio_ctx  # mel frames per audio position: 2
    time_precision = input_stride * HOP_LENGTH / SAMPLE_RATE  # seconds per timestamp step: 0.02

    all_tokens: list[int] = []
    all_segments: list[dict] = []
    prompt_reset_since = 0
    remaining_prompt_length = dims.n_text_ctx // 2 - 1
    initial_prompt_tokens: list[int] = []
    if initial_prompt is not None:
        initial_prompt_tokens = tokenizer.encode(" " + initial_prompt.strip())
        all_tokens.extend(initial_prompt_tokens)
        remaining_prompt_length -= len(initial_prompt_tokens)

    def new_segment(
        *, seek: int, start: float, end: float, tokens: list[int], result: DecodingResult
    ) -> dict:
        text_tokens = [t for t in tokens if t < tokenizer.eot]
        return {
            "seek": seek,
            "start": start,
            "end": end,
            "text": tokenizer.decode(text_tokens),
            "tokens": tokens,
            "temperature": result.temperature,
            "avg_logprob": result.avg_logprob,
            "compression_ratio": result.compression_ratio,
            "no_speech_prob": result.no_speech_prob,
        }

    def report_progress(seek: int) -> None:
        if on_progress:
            on_progress(min(seek, content_frames) / FRAMES_PER_SECOND, content_duration)

    def window_progress(time_offset: float, duration: float) -> Callable[[np.ndarray], None]:
        """Progress inside a window: the latest timestamp token the decoder has written."""

        def on_step(tokens: np.ndarray) -> None:
            last = int(tokens[0, -1]) - tokenizer.timestamp_begin
            if 0 <= last <= duration / time_precision:
                on_progress(
                    min(time_offset + last * time_precision, content_duration), content_duration
                )

        return on_step

    clip_idx = 0
    seek = seek_clips[0][0]
    last_speech_timestamp = 0.0
    while clip_idx < len(seek_clips):
        seek_clip_start, seek_clip_end = seek_clips[clip_idx]
        seek = max(seek, seek_clip_start)
        if seek >= seek_clip_end:
            clip_idx += 1
            if clip_idx < len(seek_clips):
                seek = seek_clips[clip_idx][0]
            continue
        time_offset = float(seek * HOP_LENGTH / SAMPLE_RATE)
        window_end_time = float((seek + N_FRAMES) * HOP_LENGTH / SAMPLE_RATE)
        segment_size = min(N_FRAMES, content_frames - seek, seek_clip_end - seek)
        mel_segment = pad_or_trim(source.mel_frames(seek, segment_size), N_FRAMES)
        segment_duration = segment_size * HOP_LENGTH / SAMPLE_RATE

        if options.silence_threshold is not None and is_silent(
            source.samples(seek, segment_size), options.silence_threshold
        ):
            seek += segment_size
            report_progress(seek)
            continue

        if options.carry_initial_prompt:
            n_ignored = max(len(initial_prompt_tokens), prompt_reset_since)
            remaining_prompt = all_tokens[n_ignored:][-remaining_prompt_length:]
            prompt = initial_prompt_tokens + remaining_prompt
        else:
            prompt = all_tokens[prompt_reset_since:]

        features = yield Encode(mel_segment)
        result: DecodingResult = yield from decode_with_fallback(
            features,
            prompt,
            window_progress(time_offset, segment_duration) if on_progress else None,
            segment_duration - END_MARGIN if speech_to_the_end else None,
        )
        tokens = np.array(result.tokens, dtype=np.int64)

        if no_speech_threshold is not None:
            should_skip = result.no_speech_prob > no_speech_threshold
            if logprob_threshold is not None and result.avg_logprob > logprob_threshold:
                should_skip = False  # confident text despite the no-speech probability
            if should_skip:
                seek += segment_size
                report_progress(seek)
                continue

        previous_seek = seek
        current_segments: list[dict] = []
        is_timestamp = tokens >= tokenizer.timestamp_begin
        single_timestamp_ending = is_timestamp[-2:].tolist() == [False, True]
        consecutive = np.nonzero(is_timestamp[:-1] & is_timestamp[1:])[0] + 1
        if len(consecutive) > 0:
            # two consecutive timestamps close a segment
            slices = consecutive.tolist()
            if single_timestamp_ending:
                slices.append(len(tokens))
            last_slice = 0
            for current_slice in slices:
                sliced = tokens[last_slice:current_slice]
                start_pos = int(sliced[0]) - tokenizer.timestamp_begin
                end_pos = int(sliced[-1]) - tokenizer.timestamp_begin
                current_segments.append(
                    new_segment(
                        seek=seek,
                        start=time_offset + start_pos * time_precision,
                        end=time_offset + end_pos * time_precision,
                        tokens=sliced.tolist(),
                        result=result,
                    )
                )
                last_slice = current_slice
            if single_timestamp_ending:
                seek += segment_size  # no speech after the last timestamp
            else:
                # the last segment is unfinished: resume from its start
                last_timestamp_pos = int(tokens[last_slice - 1]) - tokenizer.timestamp_begin
                seek += last_timestamp_pos * input_stride
        else:
            duration = segment_duration
            timestamps = tokens[is_timestamp]
            if len(timestamps) > 0 and int(timestamps[-1]) != tokenizer.timestamp_begin:
                duration = (int(timestamps[-1]) - tokenizer.timestamp_begin) * time_precision
            current_segments.append(
                new_segment(
                    seek=seek,
                    start=time_offset,
                    end=time_offset + duration,
                    tokens=tokens.tolist(),
                    result=result,
                )
            )
            seek += segment_size

        if options.word_timestamps:
            from .timing import add_word_timestamps, get_end, skip_hallucinations

            add_word_timestamps(
                segments=current_segments,
                model=model,
                tokenizer=tokenizer,
                features=features[None],
                num_frames=segment_size,
                prepend_punctuations=options.prepend_punctuations,
                append_punctuations=options.append_punctuations,
                last_speech_timestamp=last_speech_timestamp,
            )
            if not single_timestamp_ending:
                last_word_end = get_end(current_segments)
                if last_word_end is not None and last_word_end > time_offset:
                    seek = round(last_word_end * FRAMES_PER_SECOND)
            if options.hallucination_silence_threshold is not None:
                new_seek, restart = skip_hallucinations(
                    current_segments,
                    threshold=options.hallucination_silence_threshold,
                    single_timestamp_ending=single_timestamp_ending,
                    time_offset=time_offset,
                    window_end_time=window_end_time,
                    segment_duration=segment_duration,
                    previous_seek=previous_seek,
                    segment_size=segment_size,
                    seek=seek,
                    last_speech_timestamp=last_speech_timestamp,
                    content_duration=content_duration,
                    content_frames=content_frames,
                    punctuation=punctuation,
                )
                seek = new_seek
                if restart:
                    continue
            last_word_end = get_end(current_segments)
            if last_word_end is not None:
                last_speech_timestamp = last_word_end

        # an instantaneous or empty segment keeps its times but no text
        for segment in current_segments:
            if segment["start"] == segment["end"] or segment["text"].strip() == "":
                segment["text"] = ""
                segment["tokens"] = []
                segment["words"] = []

        for i, segment in enumerate(current_segments, start=len(all_segments)):
            all_segments.append({"id": i, **segment})
            if on_segment:
                on_segment(all_segments[-1])
        all_tokens.extend(t for segment in current_segments for t in segment["tokens"])
        if not options.condition_on_previous_text or result.temperature > 0.5:
            prompt_reset_since = len(all_tokens)  # high temperature: don't feed the prompt on
        report_progress(seek)

    return {
        "text": tokenizer.decode(all_tokens[len(initial_prompt_tokens) :]),
        "segments": all_segments,
        "language": language,
    }


def transcribe_chunked(
    model: TranscriptionModel,
    audio: np.ndarray | str | os.PathLike,
    options: TranscribeOptions,
    batch_size: int,
    on_segment: Callable[[dict], None] | None = None,
) -> dict:
    """One long recording as chunks of at most 30 s of speech (Silero VAD: the stretches of speech
    packed in order up to 30 s, the pauses between them cut out), transcribed as `batch_size`
    streams at a time, each with the fallback and no-speech rules (no text carries over between
    chunks); the segments come back in order, in the recording's time."""
    from .vad import CHUNKING_OPTIONS, SpeechMap, chunks, speech_spans

    samples = _samples(audio)
    spans = speech_spans(samples, options.vad_options or CHUNKING_OPTIONS)
    maps = [
        SpeechMap([(max(s, start), min(e, end)) for s, e in spans if s < end and e > start])
        for start, end in chunks(spans, N_FRAMES / FRAMES_PER_SECOND)
    ]
    chunk_options = options.replace(vad_filter=False)
    streams = (
        transcription_stream(model, speech.collect(samples), chunk_options, speech_to_the_end=True)
        for speech in maps
    )
    results = dict(BatchingEngine(model.backend, model.tokenizer, batch_size).run(streams))
    segments, language = [], options.language
    for index, speech in enumerate(maps):
        if isinstance(results[index], Exception):
            raise results[index]
        result = speech.restore(results[index])
        language = language or result["language"]
        for segment in result["segments"]:
            segments.append({**segment, "id": len(segments)})
            if on_segment is not None:
                on_segment(segments[-1])
    return {
        "text": "".join(s["text"] for s in segments),
        "segments": segments,
        "language": language or "en",
    }


def _samples(audio: np.ndarray | StreamedAudio | str | os.PathLike) -> np.ndarray:
    """The whole recording in memory (what the VAD scans)."""
    if isinstance(audio, np.ndarray):
        return audio
    return load_audio(audio.path if isinstance(audio, StreamedAudio) else audio)
