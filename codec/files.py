"""Audio files <-> token files: what ``tokenwave compress``, ``decompress``, ``info`` and
``roundtrip`` do, without the command-line parsing.

``compress_file`` and ``decompress_file`` stream, so memory does not grow with the length of
the audio (an hour takes no more than a minute):

* compress: libsndfile blocks -> downmix -> ``soxr.ResampleStream`` -> :class:`StreamingEncoder`
  -> :class:`tokenfile.StreamPacker` (complete chunks coded at once and spooled to an anonymous
  temporary file) -> header + chunks written atomically. The bytes equal those of
  :func:`encode_audio` on the whole file: streaming resampling and encoding are bit-exact.
* decompress: the token file is checked whole (structure, sizes, every CRC), then decoded
  chunk by chunk, at most :data:`DECODE_FRAMES` frames at a time, through a
  :class:`StreamingDecoder` into a WAV/FLAC file written atomically.

Codecs without streaming state (the ``transformers`` ones) take the whole-file path.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from tqdm import tqdm

from codec import tokenfile
from codec.atomic import atomic_output
from codec.audio import WRITE_FORMATS, load_audio, resample
from codec.errors import AudioError, TokenFileError, TokenwaveError
from codec.interface import AudioCodec
from codec.retired import retired_codec_with_fingerprint

TOKEN_SUFFIX = ".tok"
DECODED_SUFFIX = ".decoded.wav"
READ_FRAMES = 1 << 16
"""Input samples (per channel) read per step when compressing."""
DECODE_FRAMES = 250
"""Code frames decoded per step when decompressing (5 s at 50 Hz), whatever the file's chunk size."""
PROGRESS_SECONDS = 300
"""Files at least this long get a progress bar of their own (on a terminal)."""


def coding_tables(model: AudioCodec):
    """The model's entropy-coding tables: its :class:`codec.context_coding.ContextTables` (range
    and context coding), its ``[K, N]`` probability array (range coding only), or None for
    codecs that ship none (packed coding only)."""
    context = getattr(model, "context_tables", None)
    tables = context() if callable(context) else None
    if tables is not None:
        return tables
    table = getattr(model, "probabilities", None)
    return table() if callable(table) else None


def available_codings(model: AudioCodec, coding: str, tables) -> list[str]:
    """The codings ``coding`` stands for with this model ("auto": every one it supports; the
    smallest file is kept); :class:`TokenwaveError` if the model cannot do the one asked for."""
    supported = ["packed"]
    if tables is not None:
        supported.insert(0, "range")
        if isinstance(tables, tokenfile.ContextTables):
            supported.insert(0, "context")
    if coding == "auto":
        return supported
    if coding not in supported:
        need = "context tables (count them with tokenwave count-codes --context-levels L)" if coding == "context" \
            else "entropy-coding tables"
        raise TokenwaveError(f"{model.name} ships no {need}; use --coding {supported[0]}")
    return [coding]


def check_rate_weight(model: AudioCodec, rate_weight: float) -> float:
    """``rate_weight`` checked for ``model`` (:mod:`codec.rdo`): 0 for any codec; above 0 only
    for tokenwave codecs, which pick codes by their coded size."""
    from codec.rdo import check_rate_weight as checked

    rate_weight = checked(rate_weight)
    if rate_weight and not hasattr(model, "rate_quantizer"):
        raise TokenwaveError(f"{model.name} cannot weigh codes by their size; leave out --rate-weight")
    return rate_weight


def encode_audio(model: AudioCodec, wav: np.ndarray, sample_rate: int, bitrate: float | None, coding: str = "auto",
                 rate_weight: float = 0.0) -> bytes:
    """``wav`` ``[C, N]`` (each channel coded on its own) -> token-file bytes.

    ``coding``: "context" (entropy coding with the model's context tables), "range" (with its
    per-level tables), "packed" (plain bit-packing), or "auto": each the model supports, keeping
    the smallest file (packing wins with untrained tables). ``rate_weight > 0``: codes picked for
    distortion + weight x coded bits (:mod:`codec.rdo`): smaller files, a little lower quality.
    """
    rate_weight = check_rate_weight(model, rate_weight)
    tables = coding_tables(model)
    codings = available_codings(model, coding, tables)
    samples = wav.shape[-1]
    wav = resample(wav, sample_rate, model.sample_rate)
    if samples and not wav.shape[-1]:
        raise AudioError(f"{samples} sample(s) at {sample_rate} Hz are too short: no samples at {model.sample_rate} Hz")
    extra = {"rate_weight": rate_weight} if rate_weight else {}  # other codecs take no rate weight
    codes = model.encode(torch.from_numpy(wav), model.sample_rate, bitrate=bitrate, **extra)  # [C, K, T]
    length = wav.shape[-1]
    header = tokenfile.TokenFileHeader(
        model=model.name,
        model_hash=model.fingerprint,
        sample_rate=model.sample_rate,
        frame_rate=float(model.frame_rate),
        num_codebooks=codes.shape[1],
        codebook_size=model.codebook_size,
        num_frames=codes.shape[2],
        length=length,
        channels=codes.shape[0],
        coding=codings[0],
    )
    codes = codes.cpu().numpy()
    files = [tokenfile.pack(codes, replace(header, coding=c), tables) for c in codings]
    return min(reversed(files), key=len)  # on a tie, the simpler coding


def shipped_model_with_fingerprint(fingerprint: str) -> str | None:
    """The name of an installed codec (``weights/`` or ``$TOKENWAVE_WEIGHTS``) whose token-file
    fingerprint is ``fingerprint``, or None. Loads each one (once per process and set of weights
    folders), so it is for files that do not match their named model and for error messages."""
    from codec.pretrained import weights_dirs

    return _model_with_fingerprint(fingerprint, tuple(weights_dirs()))


@lru_cache(maxsize=16)
def _model_with_fingerprint(fingerprint: str, folders: tuple[Path, ...]) -> str | None:
    from codec.errors import ModelError
    from codec.pretrained import CONFIG_FILE, load_pretrained

    for folder in folders:
        for candidate in sorted(folder.glob(f"*/{CONFIG_FILE}")) if folder.is_dir() else []:
            try:
                if load_pretrained(candidate.parent).fingerprint == fingerprint:
                    return candidate.parent.name
            except (ModelError, ValueError, KeyError):
                continue  # not a codec folder (an LM, a voice folder ...)
    return None


def check_model_matches(model: AudioCodec, header: tokenfile.TokenFileHeader) -> None:
    """Refuse a token file made by other weights, or whose header does not fit ``model``."""
    if header.model_hash != model.fingerprint or header.codebook_size != model.codebook_size:
        owner = shipped_model_with_fingerprint(header.model_hash)
        hint = f"; those weights are installed as {owner!r}: pass --model {owner}" if owner else ""
        retired = None if owner else retired_codec_with_fingerprint(header.model_hash)
        if retired:
            hint = (f"; those weights are {retired.name!r}, retired from weights/ on {retired.retired}: "
                    f"restore them from the repository's history with `{retired.restore_command()}`")
        raise TokenFileError(
            f"token file was made by model {header.model!r} (weights {header.model_hash}), "
            f"but the model in use is {model.name!r} (weights {model.fingerprint}){hint}"
        )
    if header.sample_rate != model.sample_rate or header.frame_rate != float(model.frame_rate):
        raise TokenFileError(
            f"token file says {header.sample_rate} Hz at {header.frame_rate:g} frames/s, but {model.name} "
            f"runs at {model.sample_rate} Hz and {float(model.frame_rate):g} frames/s"
        )
    if header.num_codebooks > model.max_codebooks:
        raise TokenFileError(f"token file uses {header.num_codebooks} codebooks, {model.name} has {model.max_codebooks}")


def decode_bytes(model: AudioCodec, data: bytes) -> tuple[np.ndarray, int]:
    """Token-file bytes -> waveform ``[C, N]`` float32 and its sample rate."""
    header = tokenfile.read_header(data)
    check_model_matches(model, header)
    header, codes = tokenfile.unpack(data, coding_tables(model))
    if header.num_frames == 0:
        return np.zeros((header.channels, header.length), dtype=np.float32), header.sample_rate
    wav = model.decode(torch.from_numpy(codes), length=header.length)
    return wav[:, 0].float().cpu().numpy(), header.sample_rate


def installed_model_of(path: Path) -> str:
    """The installed model that decodes a token file: the one its header names, or, when that
    model's weights have changed since the file was written (its fingerprint differs from the
    header's ``model_hash``), the installed model whose weights match (for example
    a previous version installed under another name), with a note on stderr. Files of retired weights
    (:mod:`codec.retired`) get an error saying how to restore them.

    The header is untrusted: only plain names of shipped or built-in models are accepted, never a
    path or a hub id, so a file cannot make us load something of its choosing.
    """
    from codec.pretrained import available_models

    try:
        header = tokenfile.read_header(tokenfile.read_token_file(path))
    except TokenFileError as error:
        raise TokenFileError(f"{path}: {error}") from None
    name = header.model
    if name not in available_models():
        raise TokenFileError(f"{path}: made by model {name!r}, which is not installed here; pass --model")
    if _installed_fingerprint(name) != header.model_hash:
        owner = shipped_model_with_fingerprint(header.model_hash)
        if owner is not None:
            print(f"note: {path} was written by earlier {name!r} weights; decoding with {owner!r}", file=sys.stderr)
            return owner
    return name  # a mismatch left is reported by check_model_matches


def _installed_fingerprint(name: str) -> str:
    from codec.pretrained import weights_dirs

    return _fingerprint_of(name, tuple(weights_dirs()))


@lru_cache(maxsize=16)
def _fingerprint_of(name: str, folders: tuple[Path, ...]) -> str:
    import codec

    return codec.load(name).fingerprint


def _streams(model: AudioCodec) -> bool:
    return hasattr(model, "stream_encoder") and hasattr(model, "stream_decoder")


def _open_audio(path: Path) -> sf.SoundFile:
    """An open libsndfile reader, after the same checks and messages as :func:`load_audio`."""
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if path.suffix.lower() == ".raw":
        raise AudioError(f"{path}: headerless RAW audio is not supported (no sample rate or format in the file)")
    try:
        with open(path, "rb") as fh:
            if not fh.read(1):
                raise AudioError(f"{path}: file is empty (0 bytes)")
        return sf.SoundFile(path)
    except sf.LibsndfileError as e:
        reason = e.error_string.rstrip(".")
        raise AudioError(f"{path}: cannot read as audio ({reason}); expected WAV, FLAC, OGG or AIFF") from None
    except OSError as e:
        raise AudioError(f"{path}: cannot open file ({e.strerror or e})") from None
    except (RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{path}: cannot read as audio ({e})") from None


def _audio_blocks(f: sf.SoundFile, path: Path, mono: bool) -> Iterator[np.ndarray]:
    """Blocks ``[n, C]`` float32 (C = 1 when ``mono``) of an open file; NaN/Inf are refused."""
    position = 0
    while True:
        try:
            block = f.read(READ_FRAMES, dtype="float32", always_2d=True)  # [n, C]
        except (sf.LibsndfileError, RuntimeError, ValueError) as e:
            raise AudioError(f"{path}: cannot read as audio after sample {position} ({e})") from None
        if not block.shape[0]:
            return
        if not np.isfinite(block).all():
            first = position + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise AudioError(f"{path}: contains NaN or infinite samples (the first at sample {first})")
        position += block.shape[0]
        block = np.ascontiguousarray(block.T)  # [C, n], as load_audio does before downmixing
        if mono and block.shape[0] > 1:
            block = block.mean(axis=0, keepdims=True, dtype=np.float32)
        yield np.ascontiguousarray(block.T)


def compress_file(model: AudioCodec, source: Path, target: Path, bitrate: float | None,
                  separate_channels: bool = False, coding: str = "auto", force: bool = False,
                  rate_weight: float = 0.0) -> int:
    """Compress one audio file, streaming; returns the token file's size in bytes."""
    source, target = Path(source), Path(target)
    rate_weight = check_rate_weight(model, rate_weight)
    if target.exists() and not force:
        raise TokenwaveError(f"{target} exists; use --force to overwrite")
    if not _streams(model):  # whole file in memory
        wav, sample_rate = load_audio(source, mono=not separate_channels)
        data = encode_audio(model, wav, sample_rate, bitrate, coding, rate_weight)
        target.parent.mkdir(parents=True, exist_ok=True)
        tokenfile.write_token_file(target, data, overwrite=force)
        return len(data)

    tables = coding_tables(model)
    codings = available_codings(model, coding, tables)  # "auto": all are coded, the smallest kept
    with _open_audio(source) as f:
        channels = f.channels if separate_channels else 1
        if channels > tokenfile.MAX_CHANNELS:
            raise AudioError(f"{source}: {channels} channels, but a token file holds at most "
                             f"{tokenfile.MAX_CHANNELS}; leave out --channels separate to mix them down")
        encoder = model.stream_encoder(bitrate, batch=channels, rate_weight=rate_weight)
        resampler = None
        if f.samplerate != model.sample_rate:
            resampler = soxr.ResampleStream(f.samplerate, model.sample_rate, channels, dtype="float32", quality="HQ")
        header = tokenfile.TokenFileHeader(
            model=model.name, model_hash=model.fingerprint, sample_rate=model.sample_rate,
            frame_rate=float(model.frame_rate), num_codebooks=encoder.num_codebooks,
            codebook_size=model.codebook_size, num_frames=0, length=0, channels=channels, coding=codings[0],
        )
        seconds = f.frames / f.samplerate if f.frames > 0 else 0.0
        bar = tqdm(total=round(seconds), unit="s", desc=source.name, leave=False, file=sys.stderr,
                   disable=None if seconds >= PROGRESS_SECONDS else True)
        samples = 0  # read from the file
        with tokenfile.StreamPacker(header, tables, codings) as packer, bar:
            for block in _audio_blocks(f, source, mono=not separate_channels):
                samples += block.shape[0]
                if resampler is not None:
                    block = resampler.resample_chunk(block, last=False)
                packer.push(encoder.push(torch.from_numpy(block.T)))
                bar.update(round(encoder.samples_in / model.sample_rate) - bar.n)
            if resampler is not None:
                packer.push(encoder.push(torch.from_numpy(resampler.resample_chunk(
                    np.zeros((0, channels), np.float32), last=True).T)))
            if samples == 0:
                raise AudioError(f"{source}: contains no audio samples")
            if encoder.samples_in == 0:
                raise AudioError(f"{source}: {samples} sample(s) at {f.samplerate} Hz are too short: "
                                 f"no samples at {model.sample_rate} Hz")
            packer.push(encoder.flush())
            packer.finish(length=encoder.samples_in)
            best = min(reversed(codings), key=packer.size)  # on a tie, the simpler coding
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(target, force, "token file", TokenFileError) as out:
                return packer.write_to(out, best)


def decode_stream(model: AudioCodec, data: bytes) -> tuple[tokenfile.TokenFileHeader, Iterator[np.ndarray]]:
    """Token-file bytes -> (header, iterator of waveform blocks ``[C, n]`` float32 at the model's rate).

    The file is checked whole first (:func:`tokenfile.decode_chunks`); the blocks then add up to
    ``header.length`` samples, decoded at most :data:`DECODE_FRAMES` frames at a time. Problems
    raise :class:`TokenFileError`, up front or (for a chunk whose codes are invalid) from the iterator."""
    header = tokenfile.read_header(data)
    check_model_matches(model, header)
    header, chunks = tokenfile.decode_chunks(data, coding_tables(model))
    C, T, length = header.channels, header.num_frames, header.length
    if T == 0:  # a header may round the length up to one frame's worth of samples: silence
        return header, iter([np.zeros((C, length), np.float32)] if length else [])
    if not _streams(model):
        codes = np.concatenate([c for _, c in chunks], axis=2)
        return header, iter([model.decode(torch.from_numpy(codes), length=length)[:, 0].float().cpu().numpy()])
    most = max(0, T - model.overlap + 1) * model.hop
    if length > most:
        raise TokenFileError(f"token file claims {length} samples, but its {T} frames decode to at most {most}")

    def blocks() -> Iterator[np.ndarray]:
        decoder = model.stream_decoder(length=length, batch=C)
        pending, frames = [], 0  # codes gathered across chunks: small chunks are decoded together
        for i, (_, codes) in enumerate(chunks):
            pending.append(codes)
            frames += codes.shape[2]
            if frames < DECODE_FRAMES and i < header.num_chunks - 1:
                continue
            codes, pending, frames = np.concatenate(pending, axis=2), [], 0
            for t in range(0, codes.shape[2], DECODE_FRAMES):
                audio = decoder.push(torch.from_numpy(codes[:, :, t : t + DECODE_FRAMES]))  # [C, 1, n]
                if audio.shape[-1]:
                    yield audio[:, 0].float().cpu().numpy()
        if decoder.remaining:  # cannot happen after the check above
            raise TokenFileError(f"token file decoded to {length - decoder.remaining} of its {length} samples")

    return header, blocks()


def decompress_file(model: AudioCodec, source: Path, target: Path, force: bool = False) -> float:
    """Decode one token file to audio (WAV or FLAC by extension), streaming; returns seconds of audio."""
    source, target = Path(source), Path(target)
    if target.exists() and not force:
        raise TokenwaveError(f"{target} exists; use --force to overwrite")
    fmt = WRITE_FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise AudioError(f"{target}: cannot write {target.suffix or 'files without an extension'}; "
                         f"use one of {', '.join(sorted(WRITE_FORMATS))}")
    try:
        header, blocks = decode_stream(model, tokenfile.read_token_file(source))
        if header.length == 0:
            raise AudioError(f"{source}: holds no audio")
        target.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=round(header.length / model.sample_rate), unit="s", desc=source.name, leave=False,
                   file=sys.stderr, disable=None if header.length >= PROGRESS_SECONDS * model.sample_rate else True)
        written = 0
        # libsndfile writes through the descriptor itself, so its I/O errors come back as its own.
        with (atomic_output(target, force, "audio file", AudioError) as f, bar,
              sf.SoundFile(f.fileno(), "w", model.sample_rate, header.channels, "PCM_16", format=fmt,
                           closefd=False) as out):
            for block in blocks:
                if not np.isfinite(block).all():
                    raise AudioError(f"{source}: the model decoded NaN or infinite samples")
                out.write(np.clip(block.T, -1.0, 1.0))
                written += block.shape[1]
                bar.update(round(written / model.sample_rate) - bar.n)
    except TokenFileError as error:
        raise TokenFileError(f"{source}: {error}") from None
    except sf.SoundFileError as error:
        raise AudioError(f"{target}: cannot write audio ({error})") from None
    return header.length / model.sample_rate


@dataclass
class TokenFileInfo:
    header: tokenfile.TokenFileHeader
    file_bytes: int
    payload_bytes: int

    @property
    def seconds(self) -> float:
        return self.header.length / self.header.sample_rate

    def lines(self) -> list[str]:
        h = self.header
        seconds = max(self.seconds, 1e-9)
        packed = tokenfile.packed_bits_per_second(h)
        payload = self.payload_bytes * 8 / seconds
        whole = self.file_bytes * 8 / seconds
        return [
            f"model:          {h.model} (weights {h.model_hash})",
            f"audio:          {self.seconds:.3f} s, {h.length} samples at {h.sample_rate} Hz, {h.channels} channel(s)",
            f"codes:          {h.num_codebooks} codebooks x {h.codebook_size} entries, {h.num_frames} frames at {h.frame_rate:g} Hz",
            f"coding:         {h.coding}, {h.num_chunks} chunk(s) of up to {h.chunk_frames} frames",
            f"file size:      {self.file_bytes} bytes",
            f"bitrate used:   {payload / 1000:.3f} kbps codes, {whole / 1000:.3f} kbps whole file",
            (f"plain packing:  {packed / 1000:.3f} kbps at {h.bits_per_code} bits per code "
             f"(entropy coding saves {100 * (1 - payload / packed) if packed else 0:.1f}%)"),
        ]


def describe(path: Path) -> TokenFileInfo:
    """Header and sizes of a token file (all chunk CRCs checked, nothing decoded)."""
    data = tokenfile.read_token_file(path)
    header = tokenfile.read_header(data)
    return TokenFileInfo(header, len(data), sum(tokenfile.chunk_sizes(data)))


def output_path(source: Path, root: Path | None, out: Path | None, suffix: str, single: bool) -> Path:
    """Where the result for ``source`` goes.

    - ``out`` given and a single input whose ``out`` has a file suffix: ``out`` itself;
    - ``out`` given otherwise: a folder; the source's path relative to its input folder is kept;
    - no ``out``: next to the source, with ``suffix``.
    """
    if out is None:
        return source.with_suffix(suffix)
    if single and out.suffix and not out.is_dir():
        return out
    relative = source.relative_to(root) if root is not None else Path(source.name)
    return out / relative.with_suffix(suffix)


def code_statistics(path: Path, model: AudioCodec | None = None) -> list[str]:
    """Per-level codebook usage, perplexity and entropy of a token file's codes.

    Entropy-coded files need the model's tables: ``model``, or the installed model the header names.
    """
    from codec.quantizer import codebook_stats

    data = tokenfile.read_token_file(path)
    header = tokenfile.read_header(data)
    probabilities = None
    if header.coding in tokenfile.RANGE_CODINGS:
        if model is None:
            import codec

            model = codec.load(installed_model_of(path))
        check_model_matches(model, header)
        probabilities = coding_tables(model)
    _, codes = tokenfile.unpack(data, probabilities)
    lines = ["level  usage   perplexity  entropy bits/code"]
    for row in codebook_stats(torch.from_numpy(codes), header.codebook_size):
        lines.append(f"{row['level']:5d}  {100 * row['usage']:5.1f}%  {row['perplexity']:10.1f}  {row['entropy_bits']:8.2f}")
    return lines
