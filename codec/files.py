"""Audio files <-> token files: what ``tokenwave compress``, ``decompress``, ``info`` and
``roundtrip`` do, without the command-line parsing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codec import tokenfile
from codec.audio import load_audio, resample, write_audio
from codec.errors import AudioError, TokenFileError, TokenwaveError
from codec.interface import AudioCodec

TOKEN_SUFFIX = ".tok"
DECODED_SUFFIX = ".decoded.wav"


def _probabilities(model: AudioCodec) -> np.ndarray | None:
    """The model's entropy-coding tables, or None for codecs that ship none (packed coding)."""
    table = getattr(model, "probabilities", None)
    return table() if callable(table) else None


def encode_audio(model: AudioCodec, wav: np.ndarray, sample_rate: int, bitrate: float | None, coding: str = "auto") -> bytes:
    """``wav`` ``[C, N]`` (each channel coded on its own) -> token-file bytes.

    ``coding``: "range" (entropy coding with the model's tables), "packed" (plain bit-packing), or
    "auto": range coding when the model ships tables and it comes out smaller, else packing.
    """
    probabilities = _probabilities(model)
    if coding == "range" and probabilities is None:
        raise TokenwaveError(f"{model.name} ships no entropy-coding tables; use --coding packed")
    wav = resample(wav, sample_rate, model.sample_rate)
    codes = model.encode(torch.from_numpy(wav), model.sample_rate, bitrate=bitrate)  # [C, K, T]
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
        coding="packed" if coding == "auto" else coding,
    )
    codes = codes.cpu().numpy()
    packed = tokenfile.pack(codes, header, probabilities)
    if coding != "auto" or probabilities is None:
        return packed
    # auto: range coding with the model's tables, unless plain packing is smaller (untrained tables)
    header.coding = "range"
    ranged = tokenfile.pack(codes, header, probabilities)
    return ranged if len(ranged) < len(packed) else packed


def check_model_matches(model: AudioCodec, header: tokenfile.TokenFileHeader) -> None:
    if header.model_hash != model.fingerprint or header.codebook_size != model.codebook_size:
        raise TokenFileError(
            f"token file was made by model {header.model!r} (weights {header.model_hash}), "
            f"but the model in use is {model.name!r} (weights {model.fingerprint})"
        )


def decode_bytes(model: AudioCodec, data: bytes) -> tuple[np.ndarray, int]:
    """Token-file bytes -> waveform ``[C, N]`` float32 and its sample rate."""
    header = tokenfile.read_header(data)
    check_model_matches(model, header)
    header, codes = tokenfile.unpack(data, _probabilities(model))
    if header.num_frames == 0:
        return np.zeros((header.channels, header.length), dtype=np.float32), header.sample_rate
    wav = model.decode(torch.from_numpy(codes), length=header.length)
    return wav[:, 0].float().cpu().numpy(), header.sample_rate


def installed_model_of(path: Path) -> str:
    """The model named in a token file's header, if it is one installed here.

    The header is untrusted: only plain names of shipped or built-in models are accepted, never a
    path or a hub id, so a file cannot make us load something of its choosing.
    """
    from codec.pretrained import available_models

    try:
        name = tokenfile.read_header(tokenfile.read_token_file(path)).model
    except TokenFileError as error:
        raise TokenFileError(f"{path}: {error}") from None
    if name not in available_models():
        raise TokenFileError(f"{path}: made by model {name!r}, which is not installed here; pass --model")
    return name


def compress_file(model: AudioCodec, source: Path, target: Path, bitrate: float | None,
                  separate_channels: bool = False, coding: str = "auto", force: bool = False) -> int:
    """Compress one audio file; returns the token file's size in bytes."""
    if target.exists() and not force:
        raise TokenwaveError(f"{target} exists; use --force to overwrite")
    wav, sample_rate = load_audio(source, mono=not separate_channels)
    data = encode_audio(model, wav, sample_rate, bitrate, coding)
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenfile.write_token_file(target, data, overwrite=force)
    return len(data)


def decompress_file(model: AudioCodec, source: Path, target: Path, force: bool = False) -> float:
    """Decode one token file to audio (WAV or FLAC by extension); returns seconds of audio."""
    if target.exists() and not force:
        raise TokenwaveError(f"{target} exists; use --force to overwrite")
    try:
        wav, sample_rate = decode_bytes(model, tokenfile.read_token_file(source))
    except TokenFileError as error:
        raise TokenFileError(f"{source}: {error}") from None
    if wav.shape[-1] == 0:
        raise AudioError(f"{source}: holds no audio")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_audio(target, wav, sample_rate)
    return wav.shape[-1] / sample_rate


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

    Range-coded files need the model's tables: ``model``, or the installed model the header names.
    """
    from codec.quantizer import codebook_stats

    data = tokenfile.read_token_file(path)
    header = tokenfile.read_header(data)
    probabilities = None
    if header.coding == "range":
        if model is None:
            import codec

            model = codec.load(installed_model_of(path))
        check_model_matches(model, header)
        probabilities = _probabilities(model)
    _, codes = tokenfile.unpack(data, probabilities)
    lines = ["level  usage   perplexity  entropy bits/code"]
    for row in codebook_stats(torch.from_numpy(codes), header.codebook_size):
        lines.append(f"{row['level']:5d}  {100 * row['usage']:5.1f}%  {row['perplexity']:10.1f}  {row['entropy_bits']:8.2f}")
    return lines
