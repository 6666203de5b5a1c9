"""Pretrained codecs from ``transformers`` (EnCodec, DAC, Mimi) behind :class:`AudioCodec`.

* :class:`HFCodec` wraps an ``EncodecModel``, ``DacModel`` or ``MimiModel`` (with its config). ``encode``
  resamples the input to the model's rate (soxr), picks the number of codebooks from the bitrate and returns
  ``[B, K, T]`` int64 codes; ``decode`` returns ``[B, 1, N]`` cut to ``length``. Both run in eval mode under
  ``torch.no_grad``.
* :func:`load_hf_codec` loads one from a local directory (``config.json`` + weights, as written by
  ``save_pretrained``) or from the local Hugging Face cache by hub id. It never downloads.
* :func:`tiny_random_hf_codec` builds tiny random models for tests, and :func:`encodec_24khz_architecture`
  the real EnCodec 24 kHz architecture with seeded random weights, for speed benchmarks.

Bitrates: DAC and Mimi run at any number of codebooks K (Mimi: at least its semantic codebooks), so
their bitrates are ``K * frame_rate * log2(codebook_size)``. EnCodec's API only accepts its
``target_bandwidths`` (1.5/3/6/12/24 kbps for the 24 kHz model), so those are its only bitrates; its
``decode`` still accepts any K up to 32.

Only mono, unchunked, unnormalised models fit the interface (codes alone must decode): the EnCodec 48 kHz
model (stereo, chunked, with per-chunk scales) is refused with a :class:`ModelError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codec.audio import resample_tensor as resample
from codec.errors import AudioError, ModelError, TokenFileError
from codec.interface import AudioCodec

__all__ = [
    "HF_ALIASES",
    "SUPPORTED_MODEL_TYPES",
    "HFCodec",
    "encodec_24khz_architecture",
    "load_hf_codec",
    "resample",
    "tiny_random_hf_codec",
]

SUPPORTED_MODEL_TYPES = ("encodec", "dac", "mimi")

#: Short names accepted by :func:`load_hf_codec` in place of a hub id.
HF_ALIASES = {
    "encodec": "facebook/encodec_24khz",
    "encodec_24khz": "facebook/encodec_24khz",
    "dac": "descript/dac_24khz",
    "dac_16khz": "descript/dac_16khz",
    "dac_24khz": "descript/dac_24khz",
    "dac_44khz": "descript/dac_44khz",
    "mimi": "kyutai/mimi",
}

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9_.-]{1,96})?")


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ModelError(
            "the pretrained codecs need the `transformers` package: pip install 'tokenwave[hf]'"
        ) from e
    return transformers


def _model_classes() -> dict[str, type]:
    tf = _transformers()
    return {"encodec": tf.EncodecModel, "dac": tf.DacModel, "mimi": tf.MimiModel}


def _config_classes() -> dict[str, type]:
    tf = _transformers()
    return {"encodec": tf.EncodecConfig, "dac": tf.DacConfig, "mimi": tf.MimiConfig}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------------------------- the codec


class HFCodec(AudioCodec):
    """A ``transformers`` EnCodec / DAC / Mimi model behind :class:`AudioCodec`.

    ``model`` is an ``EncodecModel``, ``DacModel`` or ``MimiModel``; ``config`` defaults to
    ``model.config``. The model is put in eval mode with gradients off.
    """

    def __init__(self, model: torch.nn.Module, config: Any = None, name: str | None = None):
        config = model.config if config is None else config
        kind = getattr(config, "model_type", None)
        if kind not in SUPPORTED_MODEL_TYPES:
            raise ModelError(
                f"model_type {kind!r} is not a supported codec (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        self.model = model.eval().requires_grad_(False)
        self.config = config
        self.kind = kind
        self.name = name or f"hf-{kind}"
        self._fingerprint: str | None = None

        channels = getattr(config, "audio_channels", 1)
        if channels != 1:
            raise ModelError(f"{self.name} is a {channels}-channel model; only mono codecs are supported")
        self.sample_rate = int(config.sampling_rate)
        self.codebook_size = int(config.codebook_size)
        if kind == "encodec":
            if config.chunk_length_s is not None or config.normalize:
                raise ModelError(
                    f"{self.name} encodes in normalised chunks with per-chunk scales (like encodec_48khz); "
                    "only unchunked EnCodec models such as facebook/encodec_24khz are supported"
                )
            self.max_codebooks = int(config.num_quantizers)
            self.frame_rate = float(config.frame_rate)
            self.hop_length = int(config.hop_length)
            bw_per_codebook = self.codebooks_to_bitrate(1)
            self._bandwidths: dict[int, float] = {}
            for bw in config.target_bandwidths:
                k = int(max(1, math.floor(bw / bw_per_codebook + 1e-9)))
                if k <= self.max_codebooks:
                    self._bandwidths[k] = bw
            self._allowed = sorted(self._bandwidths)
            self._min_decode_codebooks = 1
        elif kind == "dac":
            self.max_codebooks = int(config.n_codebooks)
            self.hop_length = int(config.hop_length)
            self.frame_rate = self.sample_rate / self.hop_length
            self._allowed = list(range(1, self.max_codebooks + 1))
            self._min_decode_codebooks = 1
        else:  # mimi
            self.max_codebooks = int(config.num_quantizers)
            self.frame_rate = float(config.frame_rate)
            self.hop_length = int(config.frame_size)
            semantic = int(config.num_semantic_quantizers)
            self._allowed = list(range(max(1, semantic), self.max_codebooks + 1))
            self._min_decode_codebooks = max(1, semantic)

    # ------------------------------------------------------------------------------------- properties

    def __repr__(self) -> str:
        return (
            f"HFCodec(name={self.name!r}, kind={self.kind!r}, sample_rate={self.sample_rate}, "
            f"frame_rate={self.frame_rate:g}, codebooks={self.max_codebooks}x{self.codebook_size})"
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def bitrates(self) -> list[float]:
        return [self.codebooks_to_bitrate(k) for k in self._allowed]

    def bitrate_to_codebooks(self, bitrate: float | None) -> int:
        """Number of codebooks for ``bitrate`` kbps (None: all). EnCodec: only its target bandwidths."""
        if bitrate is None:
            return self._allowed[-1]
        try:
            bitrate = float(bitrate)
        except (TypeError, ValueError):
            raise ModelError(f"bitrate must be a number of kbps, got {bitrate!r}") from None
        for k in self._allowed:
            b = self.codebooks_to_bitrate(k)
            if abs(b - bitrate) <= 1e-6 * max(1.0, b):
                return k
        choices = ", ".join(f"{b:g}" for b in self.bitrates)
        raise ModelError(f"{self.name} has no bitrate {bitrate:g} kbps; choose one of {choices}")

    @property
    def fingerprint(self) -> str:
        """First 16 hex digits of a sha256 over the state dict (names, dtypes, shapes, bytes), cached.

        The cache assumes the weights are not modified after the first call.
        """
        if self._fingerprint is None:
            h = hashlib.sha256(f"tokenwave-hf-{self.kind}\n".encode())
            for key, t in sorted(self.model.state_dict().items()):
                t = t.detach().to("cpu").contiguous()
                h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    # ------------------------------------------------------------------------------------- encode / decode

    def encode(self, wav: torch.Tensor, sample_rate: int, bitrate: float | None = None) -> torch.Tensor:
        if not isinstance(wav, torch.Tensor):
            raise AudioError(f"expected a waveform tensor [B, 1, N], got {type(wav).__name__}")
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise AudioError(f"expected a mono waveform [B, 1, N], got shape {list(wav.shape)}")
        if wav.shape[0] == 0 or wav.shape[-1] == 0:
            raise AudioError(f"empty waveform (shape {list(wav.shape)})")
        if not (wav.is_floating_point()):
            raise AudioError(f"expected a float waveform in [-1, 1], got dtype {wav.dtype}")
        if not bool(torch.isfinite(wav).all()):
            raise AudioError("waveform holds NaN or Inf samples")
        if (
            isinstance(sample_rate, bool)
            or not isinstance(sample_rate, (int, np.integer))
            or sample_rate <= 0
        ):
            raise AudioError(f"sample rate must be a positive integer, got {sample_rate!r}")
        k = self.bitrate_to_codebooks(bitrate)

        out_device = wav.device
        x = resample(wav, int(sample_rate), self.sample_rate)
        x = x.to(self.device, self.dtype)
        with torch.no_grad():
            if self.kind == "encodec":
                out = self.model.encode(x, bandwidth=self._bandwidths[k], return_dict=True)
                codes = out.audio_codes[0]  # [nb_chunks=1, B, K, T] -> [B, K, T]
            elif self.kind == "dac":
                # The DAC encoder drops a trailing partial frame: pad to whole frames, as DAC itself does.
                pad = (-x.shape[-1]) % self.hop_length
                if pad:
                    x = torch.nn.functional.pad(x, (0, pad))
                codes = self.model.encode(x, n_quantizers=k, return_dict=True).audio_codes
            else:
                codes = self.model.encode(x, num_quantizers=k, return_dict=True).audio_codes
        codes = codes[:, :k].to(torch.int64)
        if codes.shape[1] != k:  # pragma: no cover - guards against upstream API changes
            raise ModelError(f"{self.name} returned {codes.shape[1]} codebooks where {k} were asked for")
        return codes.to(out_device)

    def decode(self, codes: torch.Tensor, length: int | None = None) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor):
            raise TokenFileError(f"expected a codes tensor [B, K, T], got {type(codes).__name__}")
        if codes.dim() != 3:
            raise TokenFileError(f"expected codes [B, K, T], got shape {list(codes.shape)}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise TokenFileError(f"codes must be integers, got dtype {codes.dtype}")
        b, k, t = codes.shape
        if b == 0 or t == 0:
            raise TokenFileError(f"empty codes (shape {list(codes.shape)})")
        if not self._min_decode_codebooks <= k <= self.max_codebooks:
            raise TokenFileError(
                f"{self.name} decodes {self._min_decode_codebooks} to {self.max_codebooks} codebooks, got {k}"
            )
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.codebook_size:
            raise TokenFileError(
                f"codes must lie in [0, {self.codebook_size - 1}] for {self.name}, found {lo if lo < 0 else hi}"
            )
        # T frames cover at most this many samples; a longer `length` means codes and length disagree.
        max_length = math.ceil(t * self.sample_rate / self.frame_rate)
        if length is not None:
            if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
                raise TokenFileError(f"length must be a non-negative integer, got {length!r}")
            if length > max_length:
                raise TokenFileError(
                    f"length {length} is more than {t} frames of {self.name} can hold ({max_length})"
                )

        out_device = codes.device
        c = codes.to(self.device, torch.int64)
        with torch.no_grad():
            if self.kind == "encodec":
                audio = self.model.decode(c[None], [None], return_dict=True).audio_values
            elif self.kind == "dac":
                audio = self.model.decode(audio_codes=c, return_dict=True).audio_values[:, None, :]
            else:
                audio = self.model.decode(c, return_dict=True).audio_values
        audio = audio.reshape(b, 1, -1).float()
        if length is not None:
            if audio.shape[-1] >= length:
                audio = audio[..., :length]
            else:
                audio = torch.nn.functional.pad(audio, (0, length - audio.shape[-1]))
        return audio.to(out_device)


# --------------------------------------------------------------------------------------------- loading


def _missing_message(name: str, repo_id: str, cache_dir: str | os.PathLike | None, what: str) -> str:
    where = f" ({os.fspath(cache_dir)})" if cache_dir is not None else ""
    return (
        f"{name} is not available offline: {what} not in the local Hugging Face cache{where}; "
        f"tokenwave never downloads, so fetch it beforehand with `huggingface-cli download {repo_id}` "
        "or pass a local directory holding config.json and the weights"
    )


def load_hf_codec(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> HFCodec:
    """Load a pretrained EnCodec / DAC / Mimi without touching the network.

    ``name_or_path`` is a local directory (``config.json`` + weights, e.g. from ``save_pretrained``) or a
    hub id (or one of :data:`HF_ALIASES`) already in the local Hugging Face cache (``cache_dir``, default the
    standard one). The model class is picked from the config's ``model_type``. Anything missing or
    unreadable raises :class:`ModelError` with a one-line message.
    """
    raw = os.fspath(name_or_path)
    if not raw.strip():
        raise ModelError("empty model name or path")
    path = Path(raw).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelError(f"{path} has no config.json: not a transformers model directory")
        source, name, repo_id = str(path), path.resolve().name, None
    elif path.exists():
        raise ModelError(f"{path} is a file; pass the directory holding config.json and the weights")
    else:
        repo_id = HF_ALIASES.get(raw, raw)
        if raw.startswith((".", "/", "~")) or raw.endswith("/") or not _HUB_ID.fullmatch(repo_id):
            raise ModelError(f"{raw}: no such directory, and not a Hugging Face hub id")
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(
            repo_id, "config.json", cache_dir=os.fspath(cache_dir) if cache_dir is not None else None
        )
        if not isinstance(cached, str):
            raise ModelError(_missing_message(raw, repo_id, cache_dir, "it is"))
        config_file, source, name = Path(cached), repo_id, repo_id

    try:
        config_dict = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{name}: cannot read config.json: {_first_line(e)}") from None
    model_type = config_dict.get("model_type") if isinstance(config_dict, dict) else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelError(
            f"{name}: model_type {model_type!r} is not a supported codec "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )

    cls = _model_classes()[model_type]
    try:
        model, info = cls.from_pretrained(
            source,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            local_files_only=True,
            use_safetensors=True,  # never unpickle .bin weights
            dtype=torch.float32,
            output_loading_info=True,
        )
    except OSError as e:
        if repo_id is not None:
            raise ModelError(_missing_message(name, repo_id, cache_dir, "its weights are")) from None
        raise ModelError(f"{name}: cannot load the weights: {_first_line(e)}") from None
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(f"{name}: cannot load the {model_type} model: {_first_line(e)}") from None

    problems = []
    for key in ("missing_keys", "mismatched_keys"):
        found = list((info or {}).get(key) or [])
        if found:
            shown = ", ".join(str(f[0] if isinstance(f, tuple) else f) for f in found[:3])
            problems.append(
                f"{len(found)} {key.replace('_', ' ')} ({shown}{', ...' if len(found) > 3 else ''})"
            )
    if problems:
        raise ModelError(f"{name}: the weights do not fit the {model_type} config: {'; '.join(problems)}")
    return HFCodec(model, model.config, name=name)


# --------------------------------------------------------------------------------------------- random models


def _randomise_codebooks(model: torch.nn.Module) -> None:
    """Give zero-initialised EnCodec / Mimi codebooks random centroids, so codes are not all 0."""
    for module in model.modules():
        cls = type(module).__name__
        if cls == "EncodecEuclideanCodebook":
            embed = torch.randn_like(module.embed)
            module.embed.copy_(embed)
            module.embed_avg.copy_(embed)
            module.cluster_size.fill_(1.0)
        elif cls == "MimiEuclideanCodebook":
            module.embed_sum.copy_(torch.randn_like(module.embed_sum))
            module.cluster_usage.fill_(1.0)
            module._embed = None


def _random_codec(config: Any, seed: int, name: str) -> HFCodec:
    cls = _model_classes()[config.model_type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
        with torch.no_grad():
            _randomise_codebooks(model)
    return HFCodec(model, config, name=name)


def tiny_random_hf_codec(kind: str, seed: int = 0) -> HFCodec:
    """A tiny random EnCodec / DAC / Mimi (a few channels and layers) for tests; seeded, fast on a CPU.

    encodec: 8 kHz, hop 16 (500 Hz frames), 4 codebooks of 64, bitrates 3/6/12 kbps.
    dac: 16 kHz, hop 8 (2 kHz frames), 3 codebooks of 32. mimi: 16 kHz, 32 samples a frame, 4 codebooks of 64.
    """
    configs = _config_classes()
    if kind == "encodec":
        config = configs["encodec"](
            sampling_rate=8000, upsampling_ratios=[4, 4], codebook_size=64, codebook_dim=16,
            target_bandwidths=[3.0, 6.0, 12.0], hidden_size=16, num_filters=4, num_lstm_layers=1,
        )  # fmt: skip
    elif kind == "dac":
        config = configs["dac"](
            sampling_rate=16000, encoder_hidden_size=4, downsampling_ratios=[2, 4], decoder_hidden_size=16,
            n_codebooks=3, codebook_size=32, codebook_dim=4,
        )  # fmt: skip
    elif kind == "mimi":
        config = configs["mimi"](
            sampling_rate=16000, hidden_size=16, num_filters=4, upsampling_ratios=[4, 4], num_hidden_layers=1,
            intermediate_size=32, num_attention_heads=2, num_key_value_heads=2, codebook_size=64,
            codebook_dim=16, vector_quantization_hidden_dimension=16, num_quantizers=4,
            num_semantic_quantizers=1, upsample_groups=16, sliding_window=16, max_position_embeddings=512,
        )  # fmt: skip
    else:
        raise ModelError(f"unknown codec kind {kind!r}; choose one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    return _random_codec(config, seed, f"tiny-random-{kind}")


def encodec_24khz_architecture(seed: int = 0) -> HFCodec:
    """The real facebook/encodec_24khz architecture with seeded random weights (for speed benchmarks).

    ``EncodecConfig()``'s defaults are the 24 kHz model's config: 24 kHz mono, hop 320 (75 Hz frames),
    32 codebooks of 1024 (bitrates 1.5/3/6/12/24 kbps), 32 filters, LSTM of 2 layers, causal weight-norm
    convolutions, no chunking or normalisation. Speed and memory match the pretrained model; the audio
    it makes does not.
    """
    config = _config_classes()["encodec"]()
    return _random_codec(config, seed, "encodec_24khz (random weights)")
