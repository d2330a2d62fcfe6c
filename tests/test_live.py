"""Live transcription: the policy on real speech, the realtime WebSocket, `max-whisper live`.

The speech is two shared clips with a second of silence between them: two utterances, which voice
activity must tell apart, each decoded on its own. The WebSocket tests feed it faster than real
time to keep the suite short; `LIVE_SPEED=1` runs them at real-time speed and prints each word's
latency.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from support import (
    SHARED_AUDIO,
    one_error_line,
    requires,
    requires_shared_audio,
    run_cli,
    serving,
    wer,
)

pytestmark = [requires_shared_audio, requires("onnxruntime", reason="the vad extra is missing")]

CLIPS = ("librivox-0870.wav", "librivox-0930.wav")
SPEED = float(os.environ.get("LIVE_SPEED", "4"))
WER_MARGIN = 0.02  # live text may be this much worse than the offline transcript


@pytest.fixture(scope="module")
def speech(transcripts):
    """(16 kHz samples: the clips with a second of silence between them, their reference)."""
    from max_whisper.audio import load_audio

    silence = np.zeros(16000, np.float32)
    first, second = (load_audio(SHARED_AUDIO / name) for name in CLIPS)
    return np.concatenate([first, silence, second]), " ".join(transcripts[c] for c in CLIPS)


@pytest.fixture(scope="module")
def model(models):
    return models.get("tiny.en", "max")


@pytest.fixture(scope="module")
def offline_wer(models, speech):
    """The offline transcripts' WER. Live text is decoded utterance by utterance, so each clip is
    transcribed on its own (the two in one window would give each the other's context)."""
    texts = [models.transcribe("tiny.en", "max", SHARED_AUDIO / c, temperature=0.0) for c in CLIPS]
    return wer(speech[1], " ".join(t["text"] for t in texts))


def test_local_agreement_commits_what_two_hypotheses_share():
    from max_whisper.live.policy import after_committed, agreed_prefix

    assert agreed_prefix("he was not an".split(), "He was not a".split()) == 3
    assert agreed_prefix([], "he was".split()) == 0
    # the committed words repeat at the start of the next decode, perhaps punctuated differently
    assert after_committed("He was, not an ill".split(), "he was not".split()) == 3
    assert after_committed("was not an ill".split(), "he was not".split()) == 2


def test_an_utterances_first_words_wait_for_three_agreeing_hypotheses():
    from max_whisper.live.policy import LiveTranscript

    transcript = LiveTranscript(min_chunk_s=0.1)

    def final_words(hypothesis: str) -> str:
        transcript.append(np.zeros(1600, np.float32))
        request = transcript.next_request()
        (update,) = transcript.apply(request, {"segments": [{"text": hypothesis, "end": 0.1}]})
        return update.delta

    assert final_words("and mister john") == ""
    assert final_words("mister john dashwood") == ""
    assert final_words("mister john dashwood had") == ""  # two agree, the first disagreed
    assert final_words("and mister john dashwood had then") == ""
    assert final_words("and mister john dashwood had then leisure") == ""
    assert final_words("and mister john dashwood had then leisure to") == (
        "and mister john dashwood had then"
    )
    assert final_words("and mister john dashwood had then leisure to consider") == " leisure to"


@pytest.mark.parametrize("chunk", [4000, 6400])
def test_policy_on_real_speech(model, speech, offline_wer, chunk):
    """The policy alone, fed chunks of 0.25 s and 0.4 s: two utterances (the pause ends the
    first), each utterance's final words joined are its completed text, and the text is as good
    as offline."""
    from max_whisper.live.decoder import LiveDecoder
    from max_whisper.live.policy import Completed, Update
    from max_whisper.live.session import new_transcript, transcribe_live

    audio, reference = speech
    chunks = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
    transcript = new_transcript()
    assert transcript.vad is not None
    events = list(transcribe_live(chunks, LiveDecoder(model), transcript))
    completed = [e for e in events if isinstance(e, Completed)]
    assert [e.item for e in completed] == [0, 1]
    for done in completed:
        assert "".join(
            e.delta for e in events if isinstance(e, Update) and e.item == done.item
        ) == (done.text)
    assert wer(reference, " ".join(e.text for e in completed)) <= offline_wer + WER_MARGIN
    assert len(transcript.buffer) < 16000  # the utterances' audio left the buffer


# --- the WebSocket --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(model):
    from max_whisper.live.realtime import LiveLimits
    from max_whisper.server import create_app

    app = create_app(model, api_key="live-key", live=LiveLimits(max_sessions=3, idle_s=20))
    with serving(app) as url:
        yield url.removeprefix("http://")


def connect(server: str, key: str | None = "live-key"):
    from websockets.sync.client import connect

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return connect(
        f"ws://{server}/v1/realtime?intent=transcription", additional_headers=headers, max_size=None
    )


def stream(server: str, audio: np.ndarray, speed: float = SPEED) -> dict:
    """Send `audio` as a live source would, `speed` times faster than real time (base64 events
    and raw binary frames in turn), then commit; gather the server's events as they arrive.
    {"events": [(arrival s, event)], "sent": {chunk end sample: send time}, "start": t0}"""
    chunk = 1600
    events, sent = [], {}
    with connect(server) as ws:
        assert json.loads(ws.recv())["type"] == "transcription_session.created"

        def read():
            for message in ws:
                event = json.loads(message)
                events.append((time.monotonic(), event))
                if event["type"] == "input_audio_buffer.committed":
                    return

        reader = threading.Thread(target=read)
        reader.start()
        start = time.monotonic()
        for k, i in enumerate(range(0, len(audio), chunk)):
            time.sleep(max(0.0, start + i / 16000 / speed - time.monotonic()))
            pcm = (np.clip(audio[i : i + chunk], -1, 1) * 32767).astype("<i2").tobytes()
            if k % 2:
                ws.send(pcm)
            else:
                audio_b64 = base64.b64encode(pcm).decode()
                ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio_b64}))
            sent[min(len(audio), i + chunk)] = time.monotonic()
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        reader.join(300)
        assert not reader.is_alive(), "no answer to the commit"
    return {"events": events, "sent": sent}


def completed_text(run: dict) -> str:
    kinds = [e["type"] for _, e in run["events"]]
    assert "error" not in kinds, [e for _, e in run["events"] if e["type"] == "error"]
    done = [e for _, e in run["events"] if e["type"].endswith("transcription.completed")]
    for item in done:  # the deltas of an item, joined, are its transcript
        deltas = [
            e["delta"]
            for _, e in run["events"]
            if e["type"].endswith("transcription.delta") and e["item_id"] == item["item_id"]
        ]
        assert "".join(deltas) == item["transcript"]
    return " ".join(e["transcript"] for e in done)


def word_latencies(run: dict, text: str, word_ends: list[tuple[str, float]]) -> list[float]:
    """For each word of the final text: when it arrived final (in a delta) minus when the end of
    its audio was sent. Words are matched to the offline transcript's timed words."""
    arrivals, final = [], []
    for t, event in run["events"]:
        if event["type"].endswith("transcription.delta"):
            for word in event["delta"].split():
                arrivals.append(t)
                final.append(word)
    key = [w.strip(".,?!").lower() for w in final]
    offline = [w.strip(" .,?!").lower() for w, _ in word_ends]
    sent = sorted(run["sent"].items())
    latencies = []
    matcher = difflib.SequenceMatcher(a=key, b=offline, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            end_sample = word_ends[b + k][1] * 16000
            sent_at = next(t for n, t in sent if n >= end_sample)
            latencies.append(arrivals[a + k] - sent_at)
    return latencies


def test_websocket_transcribes_as_well_as_offline(server, model, speech, offline_wer):
    audio, reference = speech
    run = stream(server, audio)
    text = completed_text(run)
    assert wer(reference, text) <= offline_wer + WER_MARGIN
    partial = [e for _, e in run["events"] if e["type"].endswith("transcription.delta")]
    assert len(partial) > 2  # text arrived while the audio was still coming
    if SPEED == 1.0:  # a measurement, not a check: the shared machine's load decides it
        timed = model.transcribe(audio, temperature=0.0, word_timestamps=True)
        word_ends = [(w["word"], w["end"]) for s in timed["segments"] for w in s["words"]]
        latencies = word_latencies(run, text, word_ends)
        print(
            f"\nword latency at real-time speed over {len(latencies)} words: median "
            f"{statistics.median(latencies):.2f} s, p90 "
            f"{statistics.quantiles(latencies, n=10)[-1]:.2f} s (load {os.getloadavg()[0]:.1f})"
        )


def test_three_sessions_at_once_and_a_fourth_refused(server, speech, offline_wer):
    audio, reference = speech
    with ThreadPoolExecutor(3) as pool:
        runs = [pool.submit(stream, server, audio) for _ in range(3)]
        time.sleep(1.0)  # the three are in
        with connect(server) as extra:
            refusal = json.loads(extra.recv())
        texts = [completed_text(r.result()) for r in runs]
    assert refusal["type"] == "error" and refusal["error"]["code"] == "too_many_sessions"
    assert "live sessions" in refusal["error"]["message"]
    for text in texts:
        assert wer(reference, text) <= offline_wer + WER_MARGIN
    # the server goes on: a session after them is served
    assert completed_text(stream(server, audio[: 16000 * 3], speed=8))


def test_websocket_refuses_a_bad_key_and_reports_bad_events(server):
    with connect(server, key="wrong") as ws:
        event = json.loads(ws.recv())
    assert event["type"] == "error" and event["error"]["code"] == "invalid_api_key"
    with connect(server) as ws:
        json.loads(ws.recv())  # session created
        ws.send("not json")
        assert "JSON" in json.loads(ws.recv())["error"]["message"]
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "&&&"}))
        assert json.loads(ws.recv())["error"]["code"] == "bad_audio"
        ws.send(b"\x00\x01\x02")  # half a sample
        assert json.loads(ws.recv())["error"]["code"] == "bad_audio"


def test_idle_and_overlong_sessions_are_closed_with_a_reason(model):
    from max_whisper.live.realtime import LiveLimits
    from max_whisper.server import create_app

    for limits, code in (
        (LiveLimits(idle_s=1), "idle_timeout"),
        (LiveLimits(max_session_s=2, idle_s=1.5), "session_expired"),
    ):
        app = create_app(model, live=limits)
        with serving(app) as url, connect(url.removeprefix("http://")) as ws:
            assert json.loads(ws.recv())["type"] == "transcription_session.created"
            silence = np.zeros(3200, "<i2").tobytes()
            for _ in range(6 if code == "session_expired" else 0):  # keeps it from going idle
                ws.send(silence)
                time.sleep(0.25)
            event = json.loads(ws.recv(timeout=60))
        assert event["type"] == "error" and event["error"]["code"] == code


# --- the CLI --------------------------------------------------------------------------------------
def test_cli_live_prints_the_utterances(speech, offline_wer):
    """`max-whisper live -` on raw PCM16 from a pipe: one line per utterance."""
    audio, reference = speech
    pcm = (audio * 32767).astype("<i2").tobytes()
    run = run_cli(
        "live", "-", "--model", "tiny.en", "--device", "cpu", input=pcm, text=False, timeout=300
    )
    assert run.returncode == 0, run.stderr.decode()
    lines = run.stdout.decode().splitlines()
    assert len(lines) == 2
    assert wer(reference, " ".join(lines)) <= offline_wer + WER_MARGIN


def test_cli_live_errors_are_one_line(tmp_path):
    for args in (
        ["live"],
        ["live", str(tmp_path / "absent.wav")],
        ["live", "x.wav", "--speed", "0"],
    ):
        one_error_line(run_cli(*args, timeout=120))


# --- the demo page's microphone mode --------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent")
@requires("playwright", "fastapi", "uvicorn", "multipart")
def test_demo_microphone_mode(models, transcripts, tmp_path):
    """Chromium's fake microphone plays a clip (then silence, looped): its words appear on the
    page, grey while partial, then as a finished line."""
    import wave

    from playwright.sync_api import sync_playwright

    from max_whisper.audio import load_audio
    from max_whisper.demo.app import create_app

    clip = CLIPS[0]
    samples = np.concatenate([load_audio(SHARED_AUDIO / clip), np.zeros(32000, np.float32)])
    microphone = tmp_path / "microphone.wav"
    with wave.open(str(microphone), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
        f.writeframes((samples * 32767).astype("<i2").tobytes())
    app = create_app(
        models=["tiny.en"],
        backends=["max"],
        clips=[str(SHARED_AUDIO / clip)],
        device="cpu",
        loader=lambda name, backend, device: models.get(name, backend),
    )
    with serving(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone}",
            ],
        )
        try:
            page = browser.new_context(permissions=["microphone"]).new_page()
            page.goto(f"{url}/")
            page.click("#live-toggle")
            page.wait_for_function(
                "[...document.querySelectorAll('#live-text p:not(.done)')]"
                ".some(p => p.textContent.trim())",
                timeout=120_000,
            )
            page.wait_for_selector("#live-text p.done", timeout=120_000)
            line = page.inner_text("#live-text p.done")
            assert not page.inner_text("#live-status").startswith("error")
        finally:
            browser.close()
    heard = set(re.sub(r"[^\w\s]", " ", line.lower()).split())
    spoken = set(transcripts[clip].split())
    assert len(heard & spoken) >= 0.8 * len(spoken), line
