"""``tokenwave demo`` (tts/webdemo.py): the page's logic, and the page itself in headless Chromium.

The browser test starts ``tokenwave demo`` as a server process (text to speech with untrained tiny
LMs), drives the page with Playwright (pointed at the system's Chromium: no browser download),
uploads a bad file and then a WAV, runs a round trip and checks that decoded audio and a token
file come back, then speaks a sentence. It saves a
screenshot of the page under its pytest tmp folder and prints the path. It is skipped only when
Chromium is absent (Debian: ``apt-get install chromium``; ``.ci/run`` installs it).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import codec
from codec.errors import AudioError
from codec.pretrained import REPO_WEIGHTS
from tts import webdemo
from tts.webdemo import DemoError, SpeechTab, check_upload, round_trip, spectrogram_image

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = REPO_WEIGHTS / "samples" / "kathleen_arctic_a0001.flac"
MODEL = "speech-16k" if (REPO_WEIGHTS / "speech-16k").is_dir() else "tiny-16k"


def _chromium() -> str | None:
    override = os.environ.get("TOKENWAVE_CHROMIUM")
    if override:
        return override if Path(override).is_file() else None
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)


def _tone(path: Path, seconds: float, rate: int = 16_000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    return path


# ---------------------------------------------------------------------------------------------
# The page's logic, without a browser


def test_round_trip_gives_audio_token_file_image_and_sizes(tmp_path):
    model = codec.load("tiny-16k")
    result = round_trip(model, _tone(tmp_path / "tone.wav", 0.5, 22_050), 1.5, tmp_path / "work")
    audio, rate = sf.read(result.audio_path)
    assert rate == 16_000 and audio.shape == (8000,)
    assert result.token_path.read_bytes()[:4] == b"TWTK" and result.token_path.name == "tone_1.5kbps.tok"
    assert result.image.dtype == np.uint8 and result.image.ndim == 3 and result.image.shape[2] == 3
    assert "3 codebooks" in result.summary and f"{result.token_path.stat().st_size:,} bytes" in result.summary
    with pytest.raises(codec.ModelError, match="no bitrate 2.2"):
        round_trip(model, tmp_path / "tone.wav", 2.2, tmp_path / "work")


def test_uploads_are_checked(tmp_path):
    with pytest.raises(DemoError, match="upload or record"):
        check_upload(None, 10)
    with pytest.raises(DemoError, match="long.wav is 3.0 s long; this demo takes recordings up to 2 s"):
        check_upload(_tone(tmp_path / "long.wav", 3.0), 2)
    with pytest.raises(DemoError, match=r"big.wav is 0.09 MB; this demo takes files up to 0.05 MB"):
        check_upload(_tone(tmp_path / "big.wav", 3.0), 10, max_bytes=webdemo.MB // 20)
    (tmp_path / "junk.wav").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    with pytest.raises(AudioError) as error:
        check_upload(tmp_path / "junk.wav", 10)
    assert str(error.value).startswith("junk.wav: ") and str(tmp_path) not in str(error.value)
    wav, rate = check_upload(_tone(tmp_path / "ok.wav", 1.0), 10)
    assert wav.shape == (1, 16_000) and rate == 16_000


def test_spectrograms_share_one_scale():
    t = np.arange(16_000) / 16_000
    loud, silent = np.sin(2 * np.pi * 1000 * t), np.zeros(16_000)
    image = spectrogram_image([("a", loud), ("b", silent)], 16_000, width=300)
    assert image.shape[1] == 300
    half = image.shape[0] // 2
    assert image[:half].mean() > image[half:].mean() + 5  # the silent panel is darker


def test_speech_tab_explains_when_tts_is_missing(tmp_path, monkeypatch):
    import tts

    monkeypatch.delattr(tts, "load", raising=False)
    tab = SpeechTab(tmp_path)
    assert "not available" in tab.problem
    with pytest.raises(DemoError, match="not available"):
        tab.speak("Hello there.", "somebody", None, "", 0)
    with pytest.raises(DemoError, match="type some text"):
        tab.speak("  ", "somebody", None, "", 0)


def test_speech_tab_explains_when_the_models_are_missing(tmp_path, monkeypatch):
    import tts

    def missing():
        raise tts.TTSError("no AR model: weights/lm-ar is missing")

    monkeypatch.setattr(tts, "load", missing)
    tab = SpeechTab(tmp_path)
    assert tab.problem is None
    tab.preload()
    assert tab.problem == "Text to speech is not available: no AR model: weights/lm-ar is missing"
    with pytest.raises(DemoError, match="weights/lm-ar is missing"):
        tab.speak("Hello there.", "kathleen", None, "", 0)


def test_speech_tab_calls_the_synthesizer(tmp_path, monkeypatch):
    import tts

    calls = []

    class FakeSynthesizer:
        def synthesize(self, text, voice=None, prompt=None, prompt_text=None, seed=0):
            calls.append((text, voice, None if prompt is None else (prompt[0].shape, prompt[1]), prompt_text, seed))
            return np.zeros(1600, dtype=np.float32), 16_000

    monkeypatch.setattr(tts, "load", lambda: FakeSynthesizer(), raising=False)
    tab = SpeechTab(tmp_path)
    assert tab.problem is None
    path = tab.speak("Hello there.", "kathleen", None, "", 3)
    assert sf.info(path).frames == 1600 and calls[-1] == ("Hello there.", "kathleen", None, None, 3)
    tab.speak("Hi.", "kathleen", _tone(tmp_path / "p.wav", 1.0, 8000), " the prompt ", 0)
    assert calls[-1] == ("Hi.", None, ((8000,), 8000), "the prompt", 0)  # the upload wins over the voice
    with pytest.raises(DemoError, match="choose a voice"):
        tab.speak("Hi.", None, None, "", 0)


def test_main_refuses_bad_options():
    import argparse

    parser = argparse.ArgumentParser()
    webdemo.add_arguments(parser)
    assert parser.parse_args([]).host == "127.0.0.1"
    with pytest.raises(DemoError, match="--port"):
        webdemo.main(parser.parse_args(["--port", "70000"]))
    with pytest.raises(DemoError, match="--max-seconds"):
        webdemo.main(parser.parse_args(["--max-seconds", "0"]))


# ---------------------------------------------------------------------------------------------
# The page in a real browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def demo_server(tmp_path):
    """``tokenwave demo`` on a free port (Gradio's cache under tmp_path); yields its URL."""
    port = _free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path / "gradio"), GRADIO_ANALYTICS_ENABLED="False")
    command = [sys.executable, "-m", "codec.cli", "demo", "--model", MODEL, "--port", str(port),
               "--max-seconds", "20", "--max-upload-mb", "1", "--threads", "1", "--ar", "tiny", "--nar", "tiny"]
    url = f"http://127.0.0.1:{port}/"
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not _answers(url):
                if server.poll() is not None:
                    pytest.fail(f"tokenwave demo exited with {server.returncode}:\n{(tmp_path / 'server.log').read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"tokenwave demo did not answer in 120 s:\n{(tmp_path / 'server.log').read_text()}")
                time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@pytest.mark.skipif(_chromium() is None, reason="Chromium not found (Debian: apt-get install chromium; "
                    "or set TOKENWAVE_CHROMIUM): the browser test of the web demo needs it")
def test_demo_page_round_trip_in_chromium(demo_server, tmp_path):
    from playwright.sync_api import sync_playwright

    from codec.audio import load_audio

    wav, rate = load_audio(SAMPLE)
    upload = tmp_path / "upload.wav"
    sf.write(upload, wav[0], rate)
    (tmp_path / "bad.wav").write_bytes(b"RIFF" + b"this is not audio" * 20)
    screenshot = tmp_path / "demo_page.png"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            outside = []
            local = (demo_server, "blob:" + demo_server, "data:")
            page.on("request", lambda r: None if r.url.startswith(local) else outside.append(r.url))
            page.goto(demo_server)
            page.wait_for_selector("#round-trip")
            files = page.locator("#input-audio input[type=file]")

            # A bad upload: a one-line message in the page, and the server carries on.
            files.set_input_files(str(tmp_path / "bad.wav"))
            page.locator("#input-audio a.download-link").wait_for()  # uploaded
            page.click("#round-trip")
            toast = page.locator(".toast-body", has_text="bad.wav: cannot read as audio")
            toast.wait_for()
            toast.locator(".toast-close").click()
            page.locator("#input-audio button[aria-label=Clear]").click()

            # A WAV at 3 kbps: decoded audio, a token file and the sizes come back.
            files.set_input_files(str(upload))
            page.locator("#input-audio a.download-link").wait_for()
            page.locator("#bitrate input").click()
            page.get_by_role("option", name="3 kbps (6 codebooks)").click()
            page.click("#round-trip")
            link = page.locator("#decoded-audio a.download-link")
            link.wait_for()
            decoded = page.request.get(link.get_attribute("href")).body()
            (tmp_path / "decoded.wav").write_bytes(decoded)
            audio, out_rate = sf.read(tmp_path / "decoded.wav")
            assert decoded[:4] == b"RIFF" and out_rate == 16_000
            assert abs(len(audio) - wav.shape[-1] * 16_000 / rate) <= 1
            assert np.sqrt(np.mean(audio**2)) > 0.1 * np.sqrt(np.mean(wav**2))  # sound, not silence
            token_link = page.locator("#token-file a").first
            assert page.request.get(token_link.get_attribute("href")).body()[:4] == b"TWTK"
            summary = page.locator("#summary").inner_text()
            assert "6 codebooks" in summary and "kbps" in summary
            assert page.locator("#spectrograms img").get_attribute("src")

            page.screenshot(path=str(screenshot), full_page=True)
            # Text to speech (untrained tiny LMs: the wiring, not the voice) with a built-in voice.
            page.get_by_role("tab", name="Text to speech").click()
            page.fill("#tts-text textarea", "Hello there.")
            assert page.locator("#tts-voice input").input_value() == "kathleen"
            page.click("#speak")
            speech_link = page.locator("#tts-audio a.download-link")
            speech_link.wait_for()
            assert page.request.get(speech_link.get_attribute("href")).body()[:4] == b"RIFF"
            assert not outside, f"the page fetched from outside the server: {outside[:3]}"
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    print(f"\nscreenshot of the demo page: {screenshot}")
