"""``tokenwave demo``: a local web page (Gradio) for the codec round trip and text to speech.

    tokenwave demo                      # http://127.0.0.1:7860 (or the next free port)
    tokenwave demo --model speech-16k --port 8000 --max-seconds 30 --max-upload-mb 10

Two tabs:

- **Codec**: upload or record audio -> choose a bitrate -> the recording goes through exactly
  what ``tokenwave compress`` / ``decompress`` do (:func:`codec.files.encode_audio` -> token file
  bytes -> :func:`codec.files.decode_bytes`); the page plays the decoded audio, shows the two
  log-mel spectrograms one above the other on the same time axis, offers the ``.tok`` file for
  download and gives its size and real bitrate against plain packing.
- **Text to speech**: text -> speech with a built-in voice (:mod:`tts.voices`) or an uploaded
  prompt, through ``tts.load().synthesize(...)``. When the tts package or its models are
  missing, the tab says so instead of failing.

Safety: the server binds to 127.0.0.1 unless ``--host`` says otherwise, never opens a share
link, and sends no analytics. Uploads are limited in size (Gradio refuses larger files with a
message) and in duration (checked from the file header before anything is decoded); unreadable
or hostile files give a one-line error in the page and the server goes on. Gradio, which is only
needed here, is imported when the command runs (``pip install 'tokenwave[demo]'``).

The page's logic (:func:`round_trip`, :func:`spectrogram_image`, :class:`SpeechTab`) is plain
Python, so it can be tested without a browser; :func:`build_app` wires it to Gradio components
whose ``elem_id`` s the browser test (tests/test_webdemo.py) relies on.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import threading
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codec.errors import AudioError, TokenwaveError

DEFAULT_HOST = "127.0.0.1"
MAX_SECONDS = 60.0
MAX_UPLOAD_MB = 20.0
MB = 1 << 20  # as Gradio counts them
MAX_TEXT_CHARS = 600
PANEL_HEIGHT = 160  # pixels per spectrogram
# Anchor colours of the spectrogram colour map (dark blue -> purple -> orange -> pale yellow).
COLOURS = np.array([[0, 0, 4], [60, 15, 110], [150, 40, 120], [230, 90, 60], [252, 200, 80], [252, 253, 190]],
                   dtype=np.float64)


class DemoError(TokenwaveError):
    """A request the demo refuses (shown in the page as one line)."""


# ---------------------------------------------------------------------------------------------
# Codec tab logic


@dataclass
class RoundTrip:
    """What one round trip gives the page."""

    audio_path: Path  # decoded WAV at the model's rate
    token_path: Path  # the .tok file, for download
    image: np.ndarray  # spectrograms, uint8 [H, W, 3]
    summary: str  # Markdown: sizes and bitrates


def check_upload(path: str | os.PathLike | None, max_seconds: float, max_bytes: int | None = None) -> tuple[np.ndarray, int]:
    """Read an uploaded file as mono ``[1, N]`` float32 and its rate, refusing it (DemoError /
    AudioError, one line, naming the file but not the server's temporary folder) when it is
    missing, too large, too long, unreadable or empty."""
    import soundfile as sf

    from codec.audio import load_audio

    if path is None or str(path) == "":
        raise DemoError("upload or record some audio first")
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise DemoError(f"{name}: the upload did not arrive; try again")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise DemoError(f"{name} is {size / MB:.2f} MB; this demo takes files up to {max_bytes / MB:.3g} MB")
    try:
        info = sf.info(str(path))
        seconds = info.frames / info.samplerate if info.samplerate > 0 else 0.0
    except (RuntimeError, OSError, ValueError):  # unreadable header: load_audio gives the message
        seconds = None
    if seconds is not None and seconds > max_seconds:
        raise DemoError(f"{name} is {seconds:.1f} s long; this demo takes recordings up to {max_seconds:g} s")
    try:
        wav, rate = load_audio(path)
    except AudioError as error:
        raise AudioError(str(error).replace(str(path), name)) from None
    if wav.shape[-1] / rate > max_seconds:  # headers can lie about the length
        raise DemoError(f"{name} is {wav.shape[-1] / rate:.1f} s long; this demo takes recordings up to {max_seconds:g} s")
    return wav, rate


def _colour_map(values: np.ndarray) -> np.ndarray:
    """``values`` in [0, 1] ``[H, W]`` -> RGB uint8 ``[H, W, 3]`` (piecewise-linear colour map)."""
    position = np.clip(values, 0.0, 1.0) * (len(COLOURS) - 1)
    low = np.floor(position).astype(int).clip(0, len(COLOURS) - 2)
    frac = (position - low)[..., None]
    return (COLOURS[low] * (1 - frac) + COLOURS[low + 1] * frac).round().astype(np.uint8)


def spectrogram_image(signals: list[tuple[str, np.ndarray]], sample_rate: int, width: int = 900) -> np.ndarray:
    """Log-mel spectrograms of ``signals`` (label, ``[N]`` float) stacked on one time axis, on a
    shared colour scale (80 dB below the loudest bin of the first signal): uint8 ``[H, W, 3]``."""
    from PIL import Image, ImageDraw, ImageFont

    from codec.metrics import log_mel_spectrogram

    mels = [log_mel_spectrogram(np.asarray(x, dtype=np.float64), sample_rate).T[::-1] for _, x in signals]
    top = mels[0].max()
    bottom = top - np.log(1e4)  # natural log of magnitude: 80 dB of range
    frames = max(m.shape[1] for m in mels)
    gap, label_height = 6, 18
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: the small bitmap font
        font = ImageFont.load_default()
    panels = []
    for (label, _), mel in zip(signals, mels):
        padded = np.full((mel.shape[0], frames), bottom)
        padded[:, : mel.shape[1]] = mel
        rgb = _colour_map((padded - bottom) / (top - bottom))
        image = Image.fromarray(rgb).resize((width, PANEL_HEIGHT), Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", (width, PANEL_HEIGHT + label_height), (255, 255, 255))
        canvas.paste(image, (0, label_height))
        draw = ImageDraw.Draw(canvas)  # labels on the right: Gradio's own label covers the top left
        draw.text((width - 4 - draw.textlength(label, font=font), 1), label, fill=(0, 0, 0), font=font)
        panels.append(np.asarray(canvas))
    seconds = frames * 256 / sample_rate  # log_mel_spectrogram's hop
    footer = Image.new("RGB", (width, label_height), (255, 255, 255))
    caption = f"0 ... {seconds:.2f} s; log-mel, 80 bands, 0-{sample_rate / 2000:g} kHz"
    ImageDraw.Draw(footer).text((4, 1), caption, fill=(0, 0, 0), font=font)
    spacer = np.full((gap, width, 3), 255, dtype=np.uint8)
    rows = []
    for panel in panels:
        rows += [panel, spacer]
    return np.concatenate(rows + [np.asarray(footer)], axis=0)


def summary_markdown(data: bytes, seconds: float) -> str:
    """Size and bitrate of token-file ``data`` as a Markdown table."""
    from codec import tokenfile

    header = tokenfile.read_header(data)
    payload = sum(tokenfile.chunk_sizes(data))
    packed = tokenfile.packed_bits_per_second(header)
    seconds = max(seconds, 1e-9)
    whole_kbps, payload_kbps = len(data) * 8 / seconds / 1000, payload * 8 / seconds / 1000
    saving = 100 * (1 - payload_kbps * 1000 / packed) if packed else 0.0
    return "\n".join([
        "| round trip | |", "|---|---|",
        f"| audio | {seconds:.2f} s at {header.sample_rate} Hz |",
        f"| codes | {header.num_codebooks} codebooks x {header.num_frames} frames at {header.frame_rate:g} Hz |",
        f"| token file | **{len(data):,} bytes** ({header.coding} coding) |",
        f"| bitrate | **{whole_kbps:.2f} kbps** whole file, {payload_kbps:.2f} kbps codes |",
        f"| plain {header.bits_per_code}-bit packing | {packed / 1000:.2f} kbps (entropy coding saves {saving:.1f}%) |",
    ])


def round_trip(model, path, bitrate: float, workdir: Path, max_seconds: float = MAX_SECONDS,
               max_bytes: int | None = None) -> RoundTrip:
    """Upload ``path`` -> token file at ``bitrate`` kbps -> decoded WAV, spectrograms and summary,
    written under a fresh folder of ``workdir``."""
    from codec.audio import resample, write_audio
    from codec.files import decode_bytes, encode_audio

    wav, rate = check_upload(path, max_seconds, max_bytes)
    model.bitrate_to_codebooks(bitrate)  # a bad choice gives ModelError naming the valid ones
    data = encode_audio(model, wav, rate, bitrate)
    decoded, out_rate = decode_bytes(model, data)
    folder = Path(workdir) / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True)
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(path).stem)[:60] or "audio"
    token_path = folder / f"{stem}_{bitrate:g}kbps.tok"
    token_path.write_bytes(data)
    audio_path = folder / f"{stem}_{bitrate:g}kbps.wav"
    write_audio(audio_path, decoded, out_rate)
    original = resample(wav[0], rate, out_rate)
    image = spectrogram_image([("original", original), (f"decoded at {bitrate:g} kbps", decoded[0])], out_rate)
    return RoundTrip(audio_path, token_path, image, summary_markdown(data, wav.shape[-1] / rate))


# ---------------------------------------------------------------------------------------------
# Text-to-speech tab logic


class SpeechTab:
    """``tts.load(ar, nar)`` on first use (or :meth:`preload`), ``synthesize`` per request; a clear
    message in :attr:`problem` when text to speech is unavailable."""

    def __init__(self, workdir: Path, max_seconds: float = MAX_SECONDS, ar: str | None = None, nar: str | None = None):
        self.workdir = Path(workdir)
        self.max_seconds = max_seconds
        self.models = {k: v for k, v in (("ar", ar), ("nar", nar)) if v}  # tts.load's defaults otherwise
        self._synthesizer = None
        self._lock = threading.Lock()
        self.problem = self._check()

    @staticmethod
    def _check() -> str | None:
        """None when the tts package offers ``load``, else why text to speech is unavailable."""
        try:
            import tts
        except ImportError as error:
            return f"Text to speech is not available: cannot import the tts package ({error})."
        if not callable(getattr(tts, "load", None)):
            return "Text to speech is not available yet: this tokenwave has no trained text-to-speech models (`tts.load`)."
        return None

    def voices(self) -> list[str]:
        try:
            from tts.voices import list_voices

            return [voice.name for voice in list_voices()]
        except (ImportError, TokenwaveError):
            return []

    def synthesizer(self):
        """The loaded synthesizer (loaded on first use); DemoError saying why when it cannot be."""
        if self.problem:
            raise DemoError(self.problem)
        with self._lock:
            if self._synthesizer is None:
                import tts

                try:
                    self._synthesizer = tts.load(**self.models)
                except TokenwaveError as error:
                    self.problem = f"Text to speech is not available: {error}"
                    raise DemoError(self.problem) from None
            return self._synthesizer

    def preload(self) -> None:
        """Load the models now, so that the page can say at once when they are missing."""
        try:
            self.synthesizer()
        except DemoError:
            pass

    def speak(self, text: str, voice: str | None, prompt_path, prompt_text: str, seed) -> Path:
        """Synthesise ``text`` with ``voice`` or the uploaded prompt -> path of a WAV file."""
        from codec.audio import write_audio

        text = (text or "").strip()
        if not text:
            raise DemoError("type some text first")
        if len(text) > MAX_TEXT_CHARS:
            raise DemoError(f"the text has {len(text)} characters; this demo takes up to {MAX_TEXT_CHARS}")
        prompt = None
        if prompt_path:
            wav, rate = check_upload(prompt_path, self.max_seconds)
            prompt = (wav[0], rate)
        elif not voice:
            raise DemoError("choose a voice or upload a prompt recording")
        synthesizer = self.synthesizer()
        audio, rate = synthesizer.synthesize(
            text, voice=None if prompt is not None else voice, prompt=prompt,
            prompt_text=(prompt_text or "").strip() or None, seed=int(seed or 0),
        )
        folder = self.workdir / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        path = folder / "speech.wav"
        write_audio(path, np.asarray(audio, dtype=np.float32), int(rate))
        return path


# ---------------------------------------------------------------------------------------------
# The page


def _user_error(error: Exception):
    """A Gradio error for the page: the message of our errors, a generic line for the rest."""
    import gradio as gr

    if isinstance(error, TokenwaveError):
        return gr.Error(str(error), print_exception=False)
    traceback.print_exc()  # a bug, not a bad request: keep the trace in the server log
    return gr.Error(f"could not process this request ({type(error).__name__}); see the server log",
                    print_exception=False)


def _bitrate_choices(model) -> list[tuple[str, float]]:
    return [(f"{b:g} kbps ({k} codebook{'s' if k > 1 else ''})", b) for k, b in enumerate(model.bitrates, 1)]


def build_app(model, workdir: Path, max_seconds: float = MAX_SECONDS, max_upload_mb: float = MAX_UPLOAD_MB,
              speech: SpeechTab | None = None):
    """The Gradio page (not launched); ``speech``: the text-to-speech tab's logic (loaded lazily by default)."""
    import gradio as gr

    max_bytes = int(max_upload_mb * MB)
    speech = speech or SpeechTab(workdir, max_seconds)
    choices = _bitrate_choices(model)
    default = 6.0 if 6.0 in model.bitrates else model.bitrates[-1]

    def on_round_trip(path, bitrate):
        try:
            if bitrate is None:
                raise DemoError("choose a bitrate")
            result = round_trip(model, path, float(bitrate), workdir, max_seconds, max_bytes)
        except Exception as error:  # noqa: BLE001 - every failure becomes a message in the page
            raise _user_error(error) from None
        return str(result.audio_path), result.image, str(result.token_path), result.summary

    def on_speak(text, voice, prompt_path, prompt_text, seed):
        try:
            return str(speech.speak(text, voice, prompt_path, prompt_text, seed))
        except Exception as error:  # noqa: BLE001
            raise _user_error(error) from None

    limits = f"Up to {max_seconds:g} s and {max_upload_mb:g} MB per recording; WAV, FLAC, OGG or AIFF."
    with gr.Blocks(title="tokenwave demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# tokenwave\nCodec **{model.name}** ({model.sample_rate} Hz, {model.frame_rate:g} frames/s, "
                    f"up to {model.max_codebooks} codebooks of {model.codebook_size}).")
        with gr.Tab("Codec round trip"):
            with gr.Row():
                with gr.Column():
                    source = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Recording",
                                      elem_id="input-audio")
                    gr.Markdown(limits)
                    bitrate = gr.Dropdown(choices, value=default, label="Bitrate", elem_id="bitrate")
                    run = gr.Button("Round trip", variant="primary", elem_id="round-trip")
                with gr.Column():
                    decoded = gr.Audio(type="filepath", label="Decoded", interactive=False, elem_id="decoded-audio")
                    token_file = gr.File(label="Token file (.tok)", interactive=False, elem_id="token-file")
                    summary = gr.Markdown(elem_id="summary")
            image = gr.Image(label="Log-mel spectrograms: original (top) and decoded", interactive=False,
                             elem_id="spectrograms")
            run.click(on_round_trip, [source, bitrate], [decoded, image, token_file, summary])
        with gr.Tab("Text to speech"):
            if speech.problem:
                gr.Markdown(f"**{speech.problem}**", elem_id="tts-status")
            voices = speech.voices()
            with gr.Row():
                with gr.Column():
                    text = gr.Textbox(label="Text", lines=3, max_length=MAX_TEXT_CHARS, elem_id="tts-text")
                    voice = gr.Dropdown(voices, value=voices[0] if voices else None, label="Built-in voice",
                                        allow_custom_value=False, elem_id="tts-voice")
                    prompt = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                      label="...or a voice prompt (3-10 s of one speaker; used instead of the voice)")
                    prompt_text = gr.Textbox(label="What the prompt says (optional)")
                    seed = gr.Number(value=0, precision=0, label="Seed")
                    speak = gr.Button("Speak", variant="primary", interactive=speech.problem is None,
                                      elem_id="speak")
                with gr.Column():
                    spoken = gr.Audio(type="filepath", label="Speech", interactive=False, elem_id="tts-audio")
            speak.click(on_speak, [text, voice, prompt, prompt_text, seed], [spoken])
    return app


def _theme():
    """Gradio's default look with system fonts: the page loads nothing from the internet."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="codec name, folder or cached hub id (default: speech-16k, or tiny-16k)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS,
                        help=f"longest recording accepted, in seconds (default {MAX_SECONDS:g})")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                        help=f"largest upload accepted, in MB (default {MAX_UPLOAD_MB:g})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--ar", help="text to speech: AR model folder (default weights/lm-ar; 'tiny': untrained)")
    parser.add_argument("--nar", help="text to speech: NAR model folder (default weights/lm-nar; 'tiny': untrained)")
    parser.add_argument("--no-tts", action="store_true", help="leave the text-to-speech models unloaded")


def main(args) -> int:
    """Serve the page until Ctrl+C."""
    import math

    if args.port is not None and not 1 <= args.port <= 65535:
        raise DemoError(f"--port must be 1-65535, got {args.port}")
    for flag, value in (("--max-seconds", args.max_seconds), ("--max-upload-mb", args.max_upload_mb)):
        if not (math.isfinite(value) and value > 0):
            raise DemoError(f"{flag} must be a positive number, got {value:g}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise DemoError("tokenwave demo needs Gradio: pip install 'tokenwave[demo]'") from None
    from codec.cli import _load_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = _load_model(args.model)
    workdir = Path(tempfile.mkdtemp(prefix="tokenwave-demo-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    speech = SpeechTab(workdir, args.max_seconds, args.ar, args.nar)
    if not args.no_tts:
        speech.preload()
    else:
        speech.problem = "Text to speech is switched off (tokenwave demo --no-tts)."
    if speech.problem:
        print(f"note: {speech.problem}", file=sys.stderr)
    app = build_app(model, workdir, args.max_seconds, args.max_upload_mb, speech)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}: anyone who can reach this machine can use the page", file=sys.stderr)
    try:
        app.queue(default_concurrency_limit=1).launch(
            server_name=args.host, server_port=args.port, share=False, inbrowser=False, show_error=True,
            max_file_size=int(args.max_upload_mb * MB), ssr_mode=False, theme=_theme(), footer_links=[],
        )
    except OSError as error:
        raise DemoError(f"cannot serve on {args.host}:{args.port or 'any port from 7860'}: {error}") from None
    return 0
