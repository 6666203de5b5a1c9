"""The ``tokenwave`` command line.

Every error a user can cause is printed as one line, ``error: ...``, without a traceback.
Exit codes: 0 success, 1 some inputs failed (the others were processed), 2 usage or fatal error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

from codec.errors import TokenwaveError

DEFAULT_MODEL = "speech-16k"


def _resolve_model_name(name: str | None) -> str:
    from codec.pretrained import available_models

    if name:
        return name
    return DEFAULT_MODEL if DEFAULT_MODEL in available_models() else "tiny-16k"


def _load_model(name: str | None):
    import codec

    resolved = _resolve_model_name(name)
    if resolved == "tiny-16k" and not name:
        tqdm.write("note: no trained speech-16k weights found; using the untrained tiny-16k test model", file=sys.stderr)
    return codec.load(resolved)


def _inputs(paths: list[str], suffixes: set[str]) -> list[tuple[Path, Path | None]]:
    """Files given, and files under folders given, each with its root folder (None for files)."""
    from codec.audio import files_in_folder

    found = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = files_in_folder(path, suffixes)
            if not files:
                raise TokenwaveError(f"{path}: no {' or '.join(sorted(suffixes))} files in this folder")
            found += [(p, path) for p in files]
        elif path.exists():
            found.append((path, None))
        else:
            raise TokenwaveError(f"{path}: no such file or folder")
    return found


def _run_each(items, action, desc: str) -> int:
    """Apply ``action`` to each item with a progress bar; report failures, keep going."""
    failures = 0
    bar = tqdm(items, desc=desc, unit="file", disable=len(items) < 2, file=sys.stderr)
    for item in bar:
        try:
            message = action(item)
            if message:
                tqdm.write(message, file=sys.stderr)
        except TokenwaveError as error:
            failures += 1
            tqdm.write(f"error: {error}", file=sys.stderr)
    if failures:
        tqdm.write(f"{failures} of {len(items)} file(s) failed", file=sys.stderr)
    return 1 if failures else 0


def cmd_compress(args) -> int:
    from codec.audio import AUDIO_EXTENSIONS
    from codec.files import TOKEN_SUFFIX, check_rate_weight, compress_file, output_path

    inputs = _inputs(args.inputs, AUDIO_EXTENSIONS)
    model = _load_model(args.model)
    model.bitrate_to_codebooks(args.bitrate)  # a bad bitrate is one fatal error, not one per file
    check_rate_weight(model, args.rate_weight)  # and so is a bad rate weight
    out = Path(args.output) if args.output else None
    single = len(inputs) == 1 and inputs[0][1] is None

    def action(item):
        source, root = item
        target = output_path(source, root, out, TOKEN_SUFFIX, single)
        size = compress_file(model, source, target, args.bitrate, args.channels == "separate", args.coding, args.force,
                             args.rate_weight)
        return f"{source} -> {target} ({size} bytes)"

    return _run_each(inputs, action, "compress")


def cmd_decompress(args) -> int:
    import codec
    from codec.files import DECODED_SUFFIX, TOKEN_SUFFIX, decompress_file, installed_model_of, output_path

    inputs = _inputs(args.inputs, {TOKEN_SUFFIX})
    out = Path(args.output) if args.output else None
    single = len(inputs) == 1 and inputs[0][1] is None
    models = {}

    def action(item):
        source, root = item
        name = args.model or installed_model_of(source)
        if name not in models:
            models[name] = codec.load(name)
        target = output_path(source, root, out, ".wav" if out else DECODED_SUFFIX, single)
        seconds = decompress_file(models[name], source, target, args.force)
        return f"{source} -> {target} ({seconds:.2f} s)"

    return _run_each(inputs, action, "decompress")


def cmd_info(args) -> int:
    from codec.files import code_statistics, describe

    print("\n".join(describe(Path(args.file)).lines()))
    if args.stats:
        model = _load_model(args.model) if args.model else None
        print("\n".join(code_statistics(Path(args.file), model)))
    return 0


def cmd_roundtrip(args) -> int:
    """Compress INPUT to a temporary token file and decompress that to OUTPUT, both streaming, so memory
    stays bounded whatever the length; the waveform SNR of OUTPUT against INPUT (downmixed and resampled
    to the model's rate, as compress sees it) is summed block by block over both files."""
    import tempfile

    import numpy as np
    import soundfile as sf
    import soxr

    from codec.audio import WRITE_FORMATS
    from codec.errors import AudioError
    from codec.files import READ_FRAMES, _audio_blocks, _open_audio, compress_file, decompress_file

    source, target = Path(args.input), Path(args.output)
    if target.exists() and not args.force:
        raise TokenwaveError(f"{target} exists; use --force to overwrite")
    if target.suffix.lower() not in WRITE_FORMATS:  # before the work, not after it
        raise AudioError(f"{target}: cannot write {target.suffix or 'files without an extension'}; "
                         f"use one of {', '.join(sorted(WRITE_FORMATS))}")
    model = _load_model(args.model)
    model.bitrate_to_codebooks(args.bitrate)
    with tempfile.TemporaryDirectory(prefix="tokenwave-roundtrip-") as folder:
        size = compress_file(model, source, Path(folder) / "roundtrip.tok", args.bitrate, rate_weight=args.rate_weight)
        seconds = decompress_file(model, Path(folder) / "roundtrip.tok", target, args.force)

    rate = model.sample_rate

    def reference():  # the input as compress read it: mono blocks [n] at the model's rate
        with _open_audio(source) as f:
            resampler = None
            if f.samplerate != rate:
                resampler = soxr.ResampleStream(f.samplerate, rate, 1, dtype="float32", quality="HQ")
            for block in _audio_blocks(f, source, mono=True):  # [n, 1]
                yield (resampler.resample_chunk(block, last=False) if resampler else block)[:, 0]
            if resampler is not None:
                yield resampler.resample_chunk(np.zeros((0, 1), np.float32), last=True)[:, 0]

    def decoded():  # the output (mono) in blocks [n]
        with sf.SoundFile(target) as f:
            for block in f.blocks(READ_FRAMES, dtype="float32", always_2d=True):
                yield block[:, 0]

    def pieces(blocks):  # the same samples in pieces of READ_FRAMES (the last one shorter)
        buffer = np.zeros(0, np.float32)
        for block in blocks:
            buffer = np.concatenate([buffer, block])
            while len(buffer) >= READ_FRAMES:
                yield buffer[:READ_FRAMES]
                buffer = buffer[READ_FRAMES:]
        if len(buffer):
            yield buffer

    power = noise = 0.0
    for a, b in zip(pieces(reference()), pieces(decoded())):  # up to the shorter of the two
        n = min(len(a), len(b))
        a, b = a[:n].astype(np.float64), b[:n].astype(np.float64)
        power += float(np.dot(a, a))
        noise += float(np.dot(a - b, a - b))
    snr = 10 * np.log10(power / max(noise, 1e-12) + 1e-12)
    print(f"{args.input} -> {target}: {seconds:.2f} s, {size} bytes ({size * 8 / seconds / 1000:.2f} kbps "
          f"with {model.name}), waveform SNR {snr:.1f} dB")
    return 0


def cmd_bench(args) -> int:
    import codec
    from codec.benchmark import run_bench
    from codec.config import CodecConfig
    from codec.model import CodecModel

    if args.training:
        from codec.bench_training import bench_training_step

        print(bench_training_step(threads=args.threads))
        return 0
    name = _resolve_model_name(args.model)
    if name == "tiny-16k" and not args.model:
        # Speed does not depend on the weights: time the default architecture untrained.
        model = CodecModel(CodecConfig(name="speech-16k (random weights)")).prepare_for_inference()
    else:
        model = codec.load(name)
    print(run_bench(model, seconds=args.seconds, threads=args.threads))
    return 0


def cmd_models(args) -> int:
    from codec.pretrained import available_models

    for name in available_models():
        print(name)
    return 0


def _codec_overrides(text: str | None) -> dict:
    """``--codec-config '{"encoder_dim": 32, ...}'`` (hidden, for tests): CodecConfig fields over the defaults."""
    import dataclasses
    import json

    from codec.config import CodecConfig

    if not text:
        return {}
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        raise TokenwaveError(f"--codec-config is not valid JSON ({error.msg})") from None
    if not isinstance(overrides, dict):
        raise TokenwaveError("--codec-config must be a JSON object of CodecConfig fields")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(CodecConfig)})
    if unknown:
        raise TokenwaveError(f"--codec-config: unknown CodecConfig field(s) {', '.join(unknown)}")
    return overrides


def _snr_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH in dB (for example 5,30), got {text!r}") from None
    return low, high


def cmd_train_codec(args) -> int:
    from codec.train import TrainConfig, train_codec

    codec_config = {"name": args.name, "sample_rate": args.sample_rate, "hop_length": args.sample_rate // 50,
                    "n_fft": args.sample_rate // 25} | _codec_overrides(args.codec_config)
    config = TrainConfig(manifests=args.manifest, out_dir=args.out, steps=args.steps, batch_size=args.batch_size,
                         crop_seconds=args.crop_seconds, lr=args.lr, checkpoint_every=args.checkpoint_every,
                         eval_every=args.checkpoint_every, seed=args.seed, threads=args.threads, resume=args.resume,
                         device=args.device, precision=args.precision, adversarial=args.adversarial,
                         adversarial_start=args.adversarial_start, codec=codec_config,
                         warmup_steps=args.warmup_steps, init=args.init, decoder_only=args.decoder_only,
                         complex_loss_weight=args.complex_loss_weight, grow_decoder=args.grow_decoder,
                         discriminator={} if args.disc_channels is None else {"channels": args.disc_channels},
                         discriminator_items=args.disc_items, discriminator_crop_seconds=args.disc_crop_seconds,
                         discriminator_lr_scale=args.disc_lr_scale, time_limit_minutes=args.time_limit,
                         noise_probability=args.noise_probability, noise_snr_db=args.noise_snr)
    export = train_codec(config)
    print(f"weights exported to {export}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenwave", description="Audio to discrete tokens and back, and speech from text.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="audio files or folders -> token files")
    p.add_argument("inputs", nargs="+", help="audio files (WAV/FLAC/OGG/AIFF) or folders")
    p.add_argument("-o", "--output", help="output .tok file (one input) or folder")
    p.add_argument("--model", help=f"codec name or folder (default {DEFAULT_MODEL})")
    p.add_argument("--bitrate", type=float, default=None, help="kbps (default: the model's highest)")
    p.add_argument("--channels", choices=["mix", "separate"], default="mix",
                   help="mix: downmix to mono (default); separate: code each channel")
    p.add_argument("--coding", choices=["auto", "context", "range", "packed"], default="auto",
                   help="context: range coding with the model's context tables; range: with its per-level "
                        "tables; packed: plain bit-packing; auto (default): the smallest the model supports")
    p.add_argument("--rate-weight", type=float, default=0.0, metavar="W",
                   help="smaller files for a little quality: pick each code by distance + W x the bits it costs "
                        "to store (rate-distortion optimised; 0: nearest code, the default; 0.02 saves 4-7%% "
                        "with the shipped codec for under 1%% more log-mel distance; see the README)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="token files or folders -> WAV")
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--output", help="output .wav/.flac file (one input) or folder (default: NAME.decoded.wav beside each input)")
    p.add_argument("--model", help="codec name or folder (default: the one named in the file)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("info", help="describe a token file")
    p.add_argument("file")
    p.add_argument("--stats", action="store_true", help="also per-level codebook usage, perplexity and entropy")
    p.add_argument("--model", help="codec for range-coded files (default: the one named in the file)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("roundtrip", help="encode and decode an audio file")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--model")
    p.add_argument("--bitrate", type=float, default=None)
    p.add_argument("--rate-weight", type=float, default=0.0, metavar="W", help="as for compress")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_roundtrip)

    p = sub.add_parser("bench", help="encode/decode speed and memory, ours vs EnCodec 24 kHz")
    p.add_argument("--model")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--training", action="store_true", help="time one training step of our design vs a SEANet codec")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("models", help="list the codecs available by name")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train-codec", help="train the codec on manifests or folders")
    p.add_argument("--manifest", action="append", required=True, help="manifest.jsonl or folder (repeatable)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, logs, export/")
    p.add_argument("--name", default=DEFAULT_MODEL)
    p.add_argument("--sample-rate", type=int, default=16_000)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop-seconds", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop after this many minutes of training with a checkpoint and an export (checked every "
                        "10 steps; --resume continues; the learning-rate schedule still follows --steps)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: the encoder's and decoder's layers under bfloat16 autocast, on CUDA or the CPU (faster "
                        "where the CPU has bfloat16 instructions); quantizer, iSTFT head and losses stay float32")
    p.add_argument("--adversarial", action="store_true",
                   help="also train a multi-scale STFT discriminator (adversarial + feature-matching losses)")
    p.add_argument("--adversarial-start", type=int, default=0, metavar="STEP",
                   help="with --adversarial: reconstruction losses only before this step (default 0)")
    p.add_argument("--noise-probability", type=float, default=0.0, metavar="P",
                   help="mix a random crop of the manifests' non-speech recordings (rows without text: music, "
                        "nature sounds) under this share of the training crops (default 0)")
    p.add_argument("--noise-snr", type=_snr_range, default=(5.0, 30.0), metavar="LOW,HIGH",
                   help="signal-to-noise ratio of those mixtures in dB, drawn uniformly (default 5,30)")
    p.add_argument("--disc-channels", type=int, metavar="C",
                   help="with --adversarial: width of the discriminator's convolutions (default 32, EnCodec's)")
    p.add_argument("--disc-items", type=int, metavar="N",
                   help="with --adversarial: the discriminator sees the first N items of each batch (default: all)")
    p.add_argument("--disc-crop-seconds", type=float, metavar="S",
                   help="with --adversarial: ... and one random window of S seconds of them (default: the whole crop; "
                        "at least the largest FFT, 0.128 s at 16 kHz)")
    p.add_argument("--disc-lr-scale", type=float, default=1.0, metavar="X",
                   help="with --adversarial: the discriminator's learning rate is X times the codec's (default 1)")
    p.add_argument("--warmup-steps", type=int, default=500, help="linear learning-rate warm-up (default 500)")
    p.add_argument("--init", metavar="MODEL",
                   help="start a new run from these codec weights (a shipped name or an exported folder)")
    p.add_argument("--decoder-only", action="store_true",
                   help="train the decoder alone; encoder and codebooks stay fixed, so the codes (token files, "
                        "token LM shards) do not change")
    p.add_argument("--complex-loss-weight", type=float, default=0.0, metavar="W",
                   help="add W x the compressed complex spectral loss, which asks for the phase too (default 0)")
    p.add_argument("--grow-decoder", type=int, metavar="N",
                   help="with --init: a decoder of N blocks, the initial model's then new ones that start as "
                        "identities (the run starts from exactly the initial model's output)")
    p.add_argument("--codec-config", help=argparse.SUPPRESS)  # JSON object of CodecConfig fields (tests: a tiny codec)
    p.set_defaults(func=cmd_train_codec)

    from codec import evaluate  # eval-codec: options and logic live in codec/evaluate.py

    p = sub.add_parser("eval-codec", help="PESQ, STOI, SI-SDR, log-mel and MCD vs bitrate, optionally vs Opus/Codec2")
    evaluate.add_arguments(p)
    p.set_defaults(func=evaluate.main_eval)

    from codec import tables  # count-codes: options and logic live in codec/tables.py

    p = sub.add_parser("count-codes", help="a codec's entropy-coding (and context) tables from its training data")
    tables.add_arguments(p)
    p.set_defaults(func=tables.main)

    from codec import code_entropy  # code-entropy: options and logic live in codec/code_entropy.py

    p = sub.add_parser("code-entropy", help="bits per code under simple context models (what entropy coding can save)")
    code_entropy.add_arguments(p)
    p.set_defaults(func=code_entropy.main)

    from codec import refit  # refit-codes: options and logic live in codec/refit.py

    p = sub.add_parser("refit-codes", help="refit a codec's unused codes by k-means on its training latents")
    refit.add_arguments(p)
    p.set_defaults(func=refit.main)

    from codec import fuzz  # fuzz-tokens: options and logic live in codec/fuzz.py

    p = sub.add_parser("fuzz-tokens", help="run mutated and random token files through the reader and decoder")
    fuzz.add_arguments(p)
    p.set_defaults(func=fuzz.main)

    from codec import bench_long  # bench-long: options and logic live in codec/bench_long.py

    p = sub.add_parser("bench-long", help="compress and decompress an hour of audio: peak memory and times")
    bench_long.add_arguments(p)
    p.set_defaults(func=bench_long.main)

    from codec import synthetic  # synth-speech: options and logic live in codec/synthetic.py

    p = sub.add_parser("synth-speech", help="render training speech from sentences with espeak-ng, festival, flite")
    synthetic.add_arguments(p)
    p.set_defaults(func=synthetic.main_synth)

    from tokenlm import cli as tokenlm_cli  # tokenize, train-lm, continue, bench-lm
    from tts import cli as tts_cli  # speak, voices, eval-tts, demo

    tokenlm_cli.register(sub)
    tts_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TokenwaveError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `tokenwave info FILE | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
