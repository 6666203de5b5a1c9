"""``tokenwave speak``: text to a WAV file, to stdout or to the speakers.

    tokenwave speak "Hello there." -o hello.wav                  # built-in voice (default kathleen)
    tokenwave speak -f story.txt --voice ljspeech -o story.wav    # a text file; long text is split
    echo "Hi." | tokenwave speak -o hi.wav                         # stdin
    tokenwave speak "Hi." --prompt me.wav --prompt-text "What I say in me.wav." -o hi.wav
    tokenwave speak -f story.txt --stream -o - | aplay            # audio out as it is generated

Text comes from the argument, ``--text-file`` or stdin (``-`` or a pipe). Without ``--stream``
the whole text is synthesised (chunks in shared batches, a progress bar on long texts) and
written atomically. With ``--stream`` the audio is written chunk by chunk as it is generated
(to the file, which then grows; to stdout as a WAV stream with ``-o -``; or to the sound card
with ``--play``), and the time to first audio is reported. Outputs are never overwritten
without ``--force``. Messages go to stderr when the audio goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from tts.errors import TTSError

DEFAULT_OUTPUT = "speech.wav"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="?", help="the text to speak ('-' or omitted with a pipe: read stdin)")
    parser.add_argument("-f", "--text-file", help="read the text from this UTF-8 file")
    parser.add_argument("-o", "--output", default=None,
                        help=f"output .wav/.flac, or '-' for a WAV stream on stdout (default {DEFAULT_OUTPUT})")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--voice", help="built-in voice (`tokenwave voices`; default kathleen)")
    who.add_argument("--prompt", help="voice prompt: 3-10 s of any speaker (any format, rate, channels)")
    parser.add_argument("--prompt-text", help="the prompt's transcript (without it the prompt is transcribed "
                                              "with pocketsphinx when installed)")
    parser.add_argument("--no-transcript", choices=["auto", "asr", "acoustic"], default="auto",
                        help="prompt without --prompt-text: asr (pocketsphinx), acoustic (NAR-only voice), "
                             "auto (asr when installed)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same audio)")
    parser.add_argument("--temperature", type=float, default=None, help="AR sampling temperature (0: greedy)")
    parser.add_argument("--top-k", type=int, default=None, help="AR top-k (0: off)")
    parser.add_argument("--top-p", type=float, default=None, help="AR nucleus top-p (1: off)")
    parser.add_argument("--text-guidance", type=float, default=None,
                        help="classifier-free guidance on the text (1: off; >1 follows the text more, AR cost x2)")
    parser.add_argument("--nar-decoding", choices=["expected", "argmax"], default="expected",
                        help="decoder input of RVQ layers 2..K: expected code vectors under the NAR (default) "
                             "or its argmax codes")
    parser.add_argument("--nar-temperature", type=float, default=0.5,
                        help="softmax temperature of --nar-decoding expected (default 0.5)")
    add_candidate_arguments(parser)
    parser.add_argument("--max-words", type=int, default=None, help="longest chunk in words (default 20)")
    parser.add_argument("--batch-size", type=int, default=8, help="chunks generated together (default 8)")
    parser.add_argument("--retries", type=int, default=2, help="regenerations of a failed chunk (default 2)")
    parser.add_argument("--stream", action="store_true", help="write/play audio chunk by chunk as it is generated")
    parser.add_argument("--play", action="store_true", help="play on the sound card (needs sounddevice + PortAudio)")
    parser.add_argument("--ar", help="AR model folder (default weights/lm-ar; 'tiny': untrained test model)")
    parser.add_argument("--nar", help="NAR model folder (default weights/lm-nar; 'tiny': untrained test model)")
    parser.add_argument("--codec", help="codec name or folder (default: the one the models were trained with)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="where the LMs run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")


def add_candidate_arguments(parser: argparse.ArgumentParser) -> None:
    """``--candidates`` / ``--candidate-score`` (:class:`tts.synthesizer.SynthesisConfig`), shared with ``eval-tts``."""
    parser.add_argument("--candidates", type=int, default=1,
                        help="AR samples per chunk, generated in one batch; the best by --candidate-score is kept "
                             "(default 1)")
    parser.add_argument("--candidate-score", choices=["text", "likelihood"], default="text",
                        help="how the AR ranks its candidates: text information per token (log p(x|text) - "
                             "log p(x), default) or mean log-probability with the text")


def read_text(args, stdin=None) -> str:
    """The text to speak from ``args.text``, ``args.text_file`` or stdin."""
    stdin = stdin or sys.stdin
    if args.text not in (None, "-") and args.text_file:
        raise TTSError("give the text as an argument or with --text-file, not both")
    if args.text_file:
        try:
            text = Path(args.text_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise TTSError(f"cannot read text file {args.text_file}: {getattr(error, 'strerror', None) or error}") from None
    elif args.text not in (None, "-"):
        text = args.text
    elif args.text == "-" or not stdin.isatty():
        text = stdin.read()
    else:
        raise TTSError("no text: give TEXT, --text-file FILE, or pipe text on stdin")
    if not text.strip():
        raise TTSError("the text is empty")
    return text


def build_synthesizer(args):
    from tts.synthesizer import SynthesisConfig, load

    overrides = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k),
                                   ("top_p", args.top_p), ("text_guidance", args.text_guidance)) if v is not None}
    config = SynthesisConfig(sampling=overrides, batch_size=args.batch_size, retries=args.retries,
                             no_transcript=args.no_transcript, nar_decoding=args.nar_decoding,
                             nar_temperature=args.nar_temperature, candidates=args.candidates,
                             candidate_score=args.candidate_score,
                             **({"max_words": args.max_words} if args.max_words else {}))
    device = args.device
    if device == "auto":
        from codec.distributed import resolve_device

        device = resolve_device("auto")
    return load(args.ar, args.nar, args.codec, device=device, config=config)


def wav_stream_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header with unknown (maximal) sizes, for a stream on stdout."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate,
            sample_rate * 2, 2, 16) + b"data" + struct.pack("<I", 0xFFFFFFFF))


def pcm16(audio: np.ndarray) -> bytes:
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class _Player:
    """Plays float32 pieces on the default output device (sounddevice), blocking per piece."""

    def __init__(self, sample_rate: int):
        try:
            import sounddevice
        except (ImportError, OSError) as error:
            raise TTSError(f"--play needs sounddevice and PortAudio ({error}); use `-o - | aplay` instead") from None
        try:
            self.stream = sounddevice.OutputStream(samplerate=sample_rate, channels=1, dtype="float32")
            self.stream.start()
        except (sounddevice.PortAudioError, ValueError) as error:  # no device, unsupported rate
            raise TTSError(f"cannot open the sound card: {error}") from None

    def write(self, audio: np.ndarray) -> None:
        self.stream.write(np.ascontiguousarray(audio, dtype=np.float32)[:, None])

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


def _stream(synth, text: str, args, target: Path | None, log) -> tuple[float, float, list]:
    """Generate and write chunk by chunk -> (seconds of audio, time to first audio, chunks)."""
    import soundfile as sf

    sink, player = None, None
    began = time.perf_counter()
    first_audio, samples = None, 0
    if args.play:
        player = _Player(synth.sample_rate)
    try:
        if target is not None:
            sink = sf.SoundFile(target, "w", synth.sample_rate, 1, subtype="PCM_16")
        elif args.output == "-":
            sys.stdout.buffer.write(wav_stream_header(synth.sample_rate))
        pieces = synth.stream(text, args.voice, args.prompt, args.prompt_text, args.seed, progress=sys.stderr.isatty())
        for piece in pieces:
            if first_audio is None:
                first_audio = time.perf_counter() - began
                log(f"time to first audio: {first_audio:.2f} s")
            samples += len(piece)
            if sink is not None:
                sink.write(np.clip(piece, -1, 1))
                sink.flush()
            elif args.output == "-":
                sys.stdout.buffer.write(pcm16(piece))
                sys.stdout.buffer.flush()
            if player is not None:
                player.write(piece)
    finally:
        if sink is not None:
            sink.close()
        if player is not None:
            player.close()
    return samples / synth.sample_rate, first_audio or 0.0, synth.last_chunks


def main(args: argparse.Namespace) -> int:
    to_stdout = args.output == "-"
    out = sys.stderr if to_stdout else sys.stdout

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    text = read_text(args)
    target = None if to_stdout or (args.play and args.output is None) else Path(args.output or DEFAULT_OUTPUT)
    if target is not None:
        if target.suffix.lower() not in (".wav", ".flac"):
            raise TTSError(f"{target}: the output must be a .wav or .flac file (or '-' for stdout)")
        if target.exists() and not args.force:
            raise TTSError(f"{target} exists; use --force to overwrite")
        if not target.parent.is_dir():
            raise TTSError(f"{target}: folder {target.parent} does not exist")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    synth = build_synthesizer(args)
    loaded = time.perf_counter() - began
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        try:
            seconds, first_audio, chunks = _speak(synth, text, args, target, log)
        except BrokenPipeError:  # e.g. `... -o - | head`: the reader went away
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        taken = time.perf_counter() - start
    for warning in caught:
        log(f"note: {warning.message}")
    failed = [c for c in chunks if c.failure]
    where = "stdout" if to_stdout else (str(target) if target else "the sound card")
    print(f"{len(chunks)} chunk(s) -> {where}: {seconds:.2f} s of speech in {taken:.2f} s "
          f"(RTF {taken / max(seconds, 1e-9):.2f}; models loaded in {loaded:.1f} s)"
          + (f"; time to first audio {first_audio:.2f} s" if first_audio is not None else ""), file=out)
    for chunk in failed:
        log(f"warning: chunk {chunk.text[:40]!r} failed ({chunk.failure}) after {chunk.attempts} attempt(s)")
    return 0


def _speak(synth, text: str, args, target: Path | None, log):
    """Synthesise and write/play -> (seconds of audio, time to first audio or None, chunk results)."""
    from codec.audio import write_audio

    if args.stream or args.play:
        return _stream(synth, text, args, target, log)
    result = synth.run(text, args.voice, args.prompt, args.prompt_text, args.seed, progress=sys.stderr.isatty())
    if args.output == "-":
        sys.stdout.buffer.write(_wav_bytes(result.audio, result.sample_rate))
        sys.stdout.buffer.flush()
    elif target is not None:
        write_audio(target, result.audio[None], result.sample_rate)
    return result.seconds, None, result.chunks


def _wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    data = pcm16(audio)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate,
            sample_rate * 2, 2, 16) + b"data" + struct.pack("<I", len(data)) + data)
