"""Built-in voices: short prompt recordings selectable by name, and ``tokenwave voices``.

A voice is a pair of files in a voices folder: ``<name>.flac`` (16 kHz mono, 3-10 s of one
speaker) and ``<name>.json``::

    {"name": "kathleen", "transcript": "...", "speaker": "kathleen", "source": "dataset@commit",
     "source_file": "../shared/data/speech/kathleen/arctic_a0441.flac",
     "licence": "CC0-1.0", "seconds": 3.6, "description": "..."}

``transcript`` may be empty (the synthesizer then falls back as described in
:mod:`tts.synthesizer`). Folders searched, first match wins: every folder in
``$TOKENWAVE_VOICES`` (``os.pathsep``-separated), then the repository's ``weights/voices/``.

``tokenwave voices`` lists them; ``tokenwave voices --add NAME --prompt FILE --prompt-text "..."
--dir DIR`` turns any recording into a voice (mono, 16 kHz FLAC, at most 10 s).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codec.atomic import atomic_write_text
from tts.errors import TTSError

VOICES_DIR = Path(__file__).resolve().parent.parent / "weights" / "voices"
VOICE_RATE = 16_000
MAX_VOICE_SECONDS = 10.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Voice:
    """A named prompt: its audio file and what is known about it."""

    name: str
    audio: Path
    transcript: str = ""
    speaker: str = ""
    source: str = ""
    source_file: str = ""
    licence: str = ""
    seconds: float = 0.0
    description: str = ""

    def load(self, sample_rate: int = VOICE_RATE) -> np.ndarray:
        """The prompt as float32 ``[N]`` at ``sample_rate`` (mono)."""
        from codec.audio import load_audio

        wav, _ = load_audio(self.audio, sample_rate)
        return wav[0]


def voice_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("TOKENWAVE_VOICES", "").split(os.pathsep) if p]
    return extra + [VOICES_DIR]


def read_voice(path: Path) -> Voice:
    """The voice described by ``path`` (``<name>.json`` beside ``<name>.flac``)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TTSError(f"cannot read voice file {path}: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("transcript", ""), str):
        raise TTSError(f"{path}: a voice file must be a JSON object with a string 'transcript'")
    audio = path.with_suffix(".flac")
    if not audio.is_file():
        raise TTSError(f"{path}: its audio {audio.name} is missing")
    fields = {k: str(data.get(k, "")) for k in ("transcript", "speaker", "source", "source_file", "licence",
                                                   "description")}
    return Voice(name=path.stem, audio=audio, seconds=float(data.get("seconds", 0.0) or 0.0), **fields)


def list_voices() -> list[Voice]:
    """Every voice found, by name (a name in an earlier folder hides the same name later)."""
    found: dict[str, Voice] = {}
    for folder in voice_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                if path.stem not in found and path.with_suffix(".flac").is_file():
                    try:
                        found[path.stem] = read_voice(path)
                    except TTSError as error:  # one broken file does not hide the other voices
                        warnings.warn(str(error), stacklevel=2)
    return [found[name] for name in sorted(found)]


def get_voice(name: str) -> Voice:
    """The voice called ``name``; TTSError naming the available ones when there is none."""
    for voice in list_voices():
        if voice.name == name:
            return voice
    names = ", ".join(v.name for v in list_voices()) or "none installed"
    raise TTSError(f"no voice named {name!r}; available: {names} (or use a prompt recording)")


def save_voice(folder: str | Path, name: str, wav: np.ndarray, sample_rate: int, transcript: str = "",
               speaker: str = "", source: str = "", licence: str = "", description: str = "",
               source_file: str = "") -> Voice:
    """Write ``wav`` (``[N]`` or ``[C, N]``, any rate) as voice ``name`` in ``folder``:
    mono 16 kHz FLAC (at most :data:`MAX_VOICE_SECONDS`) and its JSON, both atomically."""
    from codec.audio import resample, write_audio

    if not _NAME.match(name):
        raise TTSError(f"voice names use letters, digits, '_', '-', '.', up to 64 characters; got {name!r}")
    wav = np.asarray(wav, dtype=np.float32)
    wav = wav.mean(axis=0) if wav.ndim == 2 else wav
    wav = resample(wav, sample_rate, VOICE_RATE)
    seconds = len(wav) / VOICE_RATE
    if seconds > MAX_VOICE_SECONDS:
        raise TTSError(f"a voice prompt must be at most {MAX_VOICE_SECONDS:g} s, got {seconds:.1f} s; cut it first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_audio(folder / f"{name}.flac", wav, VOICE_RATE)
    info = {"name": name, "transcript": transcript.strip(), "speaker": speaker, "source": source,
            "source_file": source_file, "licence": licence, "seconds": round(seconds, 3), "description": description}
    atomic_write_text(folder / f"{name}.json", json.dumps(info, indent=2, ensure_ascii=False) + "\n", "voice", TTSError)
    return read_voice(folder / f"{name}.json")


def add_arguments(parser) -> None:
    parser.add_argument("--add", metavar="NAME", help="save a recording as a new voice called NAME")
    parser.add_argument("--prompt", help="with --add: the recording (any format, rate, channels; 3-10 s)")
    parser.add_argument("--prompt-text", default="", help="with --add: its transcript (recommended)")
    parser.add_argument("--speaker", default="", help="with --add: speaker name to record")
    parser.add_argument("--source", default="", help="with --add: where the recording comes from")
    parser.add_argument("--licence", default="", help="with --add: the recording's licence")
    parser.add_argument("--dir", help="with --add: folder to write into (default: the first of $TOKENWAVE_VOICES, "
                                      "else weights/voices)")
    parser.add_argument("--force", action="store_true", help="with --add: replace a voice of that name in --dir")
    parser.add_argument("--json", action="store_true", help="list as JSON lines")


def main(args) -> int:
    if args.add:
        from codec.audio import load_audio

        if not args.prompt:
            raise TTSError("--add needs --prompt FILE")
        folder = Path(args.dir) if args.dir else voice_dirs()[0]
        if (folder / f"{args.add}.json").exists() and not args.force:
            raise TTSError(f"{folder / (args.add + '.json')} exists; use --force to replace it")
        wav, rate = load_audio(args.prompt)
        voice = save_voice(folder, args.add, wav[0], rate, args.prompt_text, args.speaker or args.add,
                           args.source, args.licence, source_file=str(args.prompt))
        print(f"voice {voice.name!r} written to {voice.audio} ({voice.seconds:.1f} s)")
        return 0
    voices = list_voices()
    if args.json:
        for v in voices:
            print(json.dumps({"name": v.name, "seconds": v.seconds, "speaker": v.speaker, "licence": v.licence,
                              "transcript": v.transcript, "source": v.source, "audio": str(v.audio)}))
        return 0
    if not voices:
        print("no voices installed (weights/voices/ is empty); use --prompt FILE with `tokenwave speak`")
        return 0
    width = max(len(v.name) for v in voices)
    for v in voices:
        text = v.transcript if len(v.transcript) <= 60 else v.transcript[:57] + "..."
        said = f'"{text}"' if text else "(no transcript)"
        print(f"{v.name:<{width}}  {v.seconds:4.1f} s  {v.speaker or '-'}, {v.licence or 'licence unknown'}: {said}")
    return 0
