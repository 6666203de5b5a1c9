"""The tokenwave codec: STFT-frame encoder -> residual vector quantizer -> iSTFT decoder.

Shapes: waveform ``[B, 1, N]``; frames ``[B, T, n_fft]``; latents ``[B, T, D]``; codes
``[B, K, T]``.

Timing. With hop ``h`` and window ``n_fft = m * h``, frame ``t`` analyses input samples
``[(t + 1) h - n_fft, (t + 1) h)`` (zeros before the start) and the decoder's frame ``t``
synthesises the same span, overlap-added. A signal of N samples gives
``T = (N - 1) // h + m`` frames: enough that every input sample is covered by all m frames
that overlap it. Sample s is final once frame ``s // h + m - 1`` is decoded, which needs input
up to ``(s // h + m) h``: the algorithmic latency is ``n_fft`` samples (40 ms by default).

Bit-exact streaming. CPU matrix products round differently depending on how many rows they
get, so encoding a signal in chunks computes latents that differ from whole-signal encoding in
the last float32 bits, which can flip a code at a near-tie. Inference therefore runs the
encoder and the nearest-code search in float64 (:meth:`CodecModel.prepare_for_inference`;
cheap at 50 frames per second), where such differences (~1e-16) cannot change a code short of
an exact tie. Training runs in float32.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from codec.config import CodecConfig
from codec.errors import AudioError, ModelError
from codec.hub import CodecHubMixin
from codec.interface import AudioCodec
from codec.modules import ConvNeXtStack, ISTFTHead, STFTFeatures, frame_signal, overlap_add
from codec.precision import autocast
from codec.quantizer import ResidualVectorQuantizer


class Encoder(nn.Module):
    """Frames ``[B, T, n_fft]`` -> latents ``[B, T, latent_dim]``; causal over frames."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        self.analysis = STFTFeatures(config.n_fft)
        self.proj_in = nn.Linear(self.analysis.num_features, config.encoder_dim)
        self.stack = ConvNeXtStack(config.encoder_dim, config.encoder_layers, config.kernel_size, config.mlp_ratio)
        self.proj_out = nn.Linear(config.encoder_dim, config.latent_dim)

    def forward(self, frames: torch.Tensor, cache: list | None = None,
                mixed: torch.dtype | None = None) -> tuple[torch.Tensor, list]:
        """``mixed`` (training): the layers after the STFT analysis under autocast in that dtype;
        the latents come back in the frames' dtype."""
        features = self.analysis(frames)
        with autocast(frames.device, mixed):
            x, cache = self.stack(self.proj_in(features), cache)
            latent = self.proj_out(x)
        return latent.to(frames.dtype), cache


class Decoder(nn.Module):
    """Latents ``[B, T, latent_dim]`` -> windowed output frames ``[B, T, n_fft]``; causal."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        self.proj_in = nn.Linear(config.latent_dim, config.decoder_dim)
        self.stack = ConvNeXtStack(config.decoder_dim, config.decoder_layers, config.kernel_size, config.mlp_ratio)
        self.head = ISTFTHead(config.decoder_dim, config.n_fft, config.hop_length)

    def forward(self, latent: torch.Tensor, cache: list | None = None,
                mixed: torch.dtype | None = None) -> tuple[torch.Tensor, list]:
        """``mixed`` (training): the ConvNeXt stack under autocast in that dtype; the iSTFT head
        (log-magnitude and phase, then the inverse FFT) always in the latents' dtype."""
        with autocast(latent.device, mixed):
            x, cache = self.stack(self.proj_in(latent), cache)
        return self.head(x.to(latent.dtype)), cache


class CodecModel(nn.Module, AudioCodec, CodecHubMixin):
    """Neural speech codec with one model for every bitrate (1 to ``num_codebooks`` codebooks)."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = ResidualVectorQuantizer(
            config.latent_dim,
            config.num_codebooks,
            config.codebook_size,
            decay=config.ema_decay,
            dead_code_threshold=config.dead_code_threshold,
            dead_code_share=config.dead_code_share,
            kmeans_iters=config.kmeans_iters,
            dropout=config.quantizer_dropout,
        )
        self.decoder = Decoder(config)
        # How often each code occurs on training data [K, codebook_size]: the entropy coder's tables.
        self.register_buffer("code_counts", torch.ones(config.num_codebooks, config.codebook_size))
        if config.context_levels:  # context coding's tables (codec.context_coding): counts as well
            N = config.codebook_size
            self.register_buffer("transition_counts", torch.ones(N + 1, N))
            self.register_buffer("pair_counts", torch.ones(config.context_levels - 1, N, N))
        self._fingerprint: str | None = None
        self._codes_fingerprint: str | None = None
        self._context_tables: tuple | None = None  # (buffer versions, ContextTables): built once

    # -- AudioCodec properties ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def max_codebooks(self) -> int:
        return self.config.num_codebooks

    @property
    def hop(self) -> int:
        return self.config.hop_length

    @property
    def overlap(self) -> int:
        """m: frames overlapping each sample (``n_fft / hop``)."""
        return self.config.n_fft // self.config.hop_length

    @property
    def fingerprint(self) -> str:
        """Identifies the token files: :func:`token_fingerprint` of the weights. A decoder trained
        further (``train-codec --decoder-only``) keeps it, so its token files stay valid."""
        if self._fingerprint is None:
            return token_fingerprint(self.state_dict())
        return self._fingerprint

    @property
    def codes_fingerprint(self) -> str:
        """Identifies what the codes mean (encoder and codebooks; not the decoder, not the entropy
        tables): what token LMs and their shards record, so that neither a retrained decoder nor
        recounted tables (``tokenwave count-codes``) separates a codec from its LMs."""
        if self._codes_fingerprint is None:
            return token_fingerprint(self.state_dict(), tables=False)
        return self._codes_fingerprint

    def prepare_for_inference(self) -> CodecModel:
        """Eval mode, encoder and codebooks in float64 (bit-exact streaming), decoder as is."""
        self._fingerprint = token_fingerprint(self.state_dict())
        self._codes_fingerprint = token_fingerprint(self.state_dict(), tables=False)
        self.eval()
        self.encoder.double()
        self.quantizer.double()
        return self

    # -- framing -----------------------------------------------------------------------------
    def num_frames(self, length: int) -> int:
        """Frames T for a signal of ``length`` samples (see the module docstring)."""
        return (length - 1) // self.hop + self.overlap

    def pad(self, wav: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` -> ``[B, (m - 1) h + T h]``: analysis history (zeros) before, zeros after."""
        length = wav.shape[-1]
        left = self.config.n_fft - self.hop
        right = self.num_frames(length) * self.hop - length
        return torch.nn.functional.pad(wav, (left, right))

    def synthesize(self, frames: torch.Tensor, length: int | None) -> torch.Tensor:
        """Decoder frames ``[B, T, n_fft]`` -> waveform ``[B, 1, length]`` by overlap-add."""
        num_frames = frames.shape[1]
        audio = overlap_add(frames, self.hop)[:, self.config.n_fft - self.hop :]
        valid = (num_frames - self.overlap + 1) * self.hop
        length = valid if length is None else length
        if length > valid:
            raise ModelError(f"cannot decode {length} samples from {num_frames} frames (at most {valid})")
        return audio[:, None, :length]

    # -- training ----------------------------------------------------------------------------
    def forward(self, wav: torch.Tensor, mixed: torch.dtype | None = None):
        """Training pass: ``wav`` ``[B, 1, N]`` -> (reconstruction ``[B, 1, N]``, QuantizerOutput).

        ``mixed`` (``train-codec --precision bf16``): the encoder's and decoder's layers run under
        autocast in that dtype (:mod:`codec.precision`); the STFT analysis, the quantizer and the
        iSTFT head stay in float32. A frozen encoder (a decoder-only fine-tune) stays in float32
        as well, so that the decoder trains on the codes that inference computes."""
        length = wav.shape[-1]
        frames = frame_signal(self.pad(wav[:, 0]), self.config.n_fft, self.hop)
        encoder_trains = any(p.requires_grad for p in self.encoder.parameters())
        latent, _ = self.encoder(frames, mixed=mixed if encoder_trains else None)
        quantized = self.quantizer(latent)
        out_frames, _ = self.decoder(quantized.quantized, mixed=mixed)
        return self.synthesize(out_frames, length), quantized

    # -- inference ---------------------------------------------------------------------------
    def _as_batch(self, wav, sample_rate: int) -> torch.Tensor:
        """Any of ``[N]``, ``[B, N]``, ``[B, 1, N]`` (tensor or array) -> ``[B, N]`` at our rate."""
        if isinstance(wav, np.ndarray):
            wav = torch.from_numpy(np.ascontiguousarray(wav))
        if not isinstance(wav, torch.Tensor) or not wav.is_floating_point():
            raise AudioError("audio must be a floating-point tensor or array")
        if wav.dim() == 3:
            if wav.shape[1] != 1:
                raise AudioError(f"expected mono audio [B, 1, N], got {tuple(wav.shape)}")
            wav = wav[:, 0]
        elif wav.dim() == 1:
            wav = wav[None]
        elif wav.dim() != 2:
            raise AudioError(f"expected audio shaped [N], [B, N] or [B, 1, N], got {tuple(wav.shape)}")
        if wav.shape[-1] == 0:
            raise AudioError("audio is empty (zero samples)")
        if not torch.isfinite(wav).all():
            raise AudioError("audio contains NaN or Inf samples")
        if sample_rate != self.sample_rate:
            from codec.audio import resample_tensor

            wav = resample_tensor(wav, sample_rate, self.sample_rate)
        return wav

    @torch.no_grad()
    def encode(self, wav, sample_rate: int, bitrate: float | None = None, rate_weight: float = 0.0) -> torch.Tensor:
        """Waveform (``[B, 1, N]``, ``[B, N]`` or ``[N]``) -> codes ``[B, K, T]`` int64,
        K from ``bitrate`` in kbps (all codebooks when None). ``rate_weight > 0``: codes picked
        for distortion + ``rate_weight`` x their coded bits (:mod:`codec.rdo`), smaller token files."""
        num_codebooks = self.bitrate_to_codebooks(bitrate)
        wav = self._as_batch(wav, sample_rate)
        quantizer = self.rate_quantizer(rate_weight, wav.shape[0]) if rate_weight else self.quantizer
        return quantizer.encode(self._latent(wav), num_codebooks)

    @torch.no_grad()
    def encode_latent(self, wav, sample_rate: int) -> torch.Tensor:
        """Waveform (as :meth:`encode` takes it) -> the encoder's latent ``[B, T, D]``, before
        quantization."""
        return self._latent(self._as_batch(wav, sample_rate))

    def _latent(self, wav: torch.Tensor) -> torch.Tensor:
        """Checked waveform ``[B, N]`` at the model's rate -> latent ``[B, T, D]``."""
        dtype = self.encoder.proj_in.weight.dtype
        device = self.encoder.proj_in.weight.device
        frames = frame_signal(self.pad(wav.to(device, dtype)), self.config.n_fft, self.hop)
        latent, _ = self.encoder(frames)
        return latent

    def rate_quantizer(self, weight: float, batch: int = 1):
        """A :class:`codec.rdo.RateDistortionQuantizer` with this model's entropy-coding tables
        (context tables when it has them) for ``batch`` streams."""
        from codec.rdo import RateDistortionQuantizer

        tables = self.context_tables()
        return RateDistortionQuantizer(self.quantizer, self.probabilities() if tables is None else tables, weight, batch)

    def check_codes(self, codes: torch.Tensor, min_frames: int | None = None) -> torch.Tensor:
        """Validate codes ``[B, K, T]`` for this model (T >= ``min_frames``, by default the
        frames one sample needs); returns them as int64."""
        if not isinstance(codes, torch.Tensor):
            codes = torch.as_tensor(np.asarray(codes))
        if codes.dim() != 3 or codes.is_floating_point() or codes.is_complex():
            raise ModelError(f"codes must be an integer tensor [B, K, T], got {codes.dtype} {tuple(codes.shape)}")
        if not 1 <= codes.shape[1] <= self.max_codebooks:
            raise ModelError(f"{self.name} takes 1 to {self.max_codebooks} codebooks, got {codes.shape[1]}")
        min_frames = self.overlap if min_frames is None else min_frames
        if codes.shape[2] < min_frames:
            raise ModelError(f"{self.name} needs at least {min_frames} frames, got {codes.shape[2]}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ModelError(f"codes must lie in [0, {self.codebook_size}) for {self.name}")
        return codes.long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Codes ``[B, K, T]`` -> waveform ``[B, 1, N]``; N = ``length`` or the longest valid span."""
        return self.decode_vectors(self.code_vectors(codes), length)

    def code_vectors(self, codes: torch.Tensor, min_frames: int | None = None) -> torch.Tensor:
        """Codes ``[B, K, T]`` -> the sum of their code vectors ``[B, T, D]`` (the decoder's input;
        ``min_frames`` as in :meth:`check_codes`)."""
        codes = self.check_codes(codes, min_frames).to(self.encoder.proj_in.weight.device)
        return self.quantizer.decode(codes)

    def codebook_tables(self) -> list[torch.Tensor]:
        """The code vectors of each level: ``max_codebooks`` float32 tensors ``[codebook_size, D]``."""
        return [codebook.embed.detach().float() for codebook in self.quantizer.codebooks]

    @torch.no_grad()
    def decode_vectors(self, vectors: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Decoder input ``[B, T, D]`` -> waveform ``[B, 1, N]``: sums of code vectors
        (:meth:`code_vectors`) or any point of the latent space, for example expected code
        vectors under a token model's probabilities (``tts``'s NAR decoding)."""
        if vectors.dim() != 3 or vectors.shape[2] != self.config.latent_dim:
            raise ModelError(f"vectors must be [B, T, {self.config.latent_dim}], got {list(vectors.shape)}")
        if vectors.shape[1] < self.overlap:
            raise ModelError(f"{self.name} needs at least {self.overlap} frames, got {vectors.shape[1]}")
        if not torch.isfinite(vectors).all():
            raise ModelError("vectors must be finite")
        weight = self.decoder.proj_in.weight
        frames, _ = self.decoder(vectors.to(weight.device, weight.dtype))
        return self.synthesize(frames, length)

    def stream_encoder(self, bitrate: float | None = None, batch: int = 1, rate_weight: float = 0.0):
        from codec.streaming import StreamingEncoder

        return StreamingEncoder(self, self.bitrate_to_codebooks(bitrate), batch, rate_weight)

    def stream_decoder(self, length: int | None = None, batch: int = 1):
        from codec.streaming import StreamingDecoder

        return StreamingDecoder(self, length, batch)

    def probabilities(self) -> np.ndarray:
        """Entropy-coding tables ``[K, codebook_size]`` derived from ``code_counts``."""
        from codec.entropy import probabilities_from_counts

        return probabilities_from_counts(self.code_counts.double().cpu().numpy())

    def context_tables(self):
        """:class:`codec.context_coding.ContextTables` from the count buffers, or None for a model
        without context coding (``config.context_levels == 0``). Built once and kept until a
        buffer changes."""
        if not self.config.context_levels:
            return None
        from codec.context_coding import ContextTables

        counts = (self.code_counts, self.transition_counts, self.pair_counts)
        key = tuple((c.data_ptr(), c._version) for c in counts)  # changes when a buffer is written
        if self._context_tables is None or self._context_tables[0] != key:  # ~0.1 s to build
            tables = ContextTables.from_counts(*(c.double().cpu().numpy() for c in counts))
            self._context_tables = (key, tables)
        return self._context_tables[1]


#: The entropy-coding tables: how codes are stored in token files, not what they mean.
ENTROPY_TABLES = ("code_counts", "transition_counts", "pair_counts")


def token_fingerprint(state_dict: dict[str, torch.Tensor], tables: bool = True) -> str:
    """SHA-256 over tensor names and float32 values, sorted by name -> 16 hex digits, of every
    tensor but the decoder's (``decoder.*``): the encoder, the codebooks and the entropy-coding
    tables decide the codes and the token files; the decoder only turns codes into audio.
    ``tables=False`` leaves the tables out too: what the codes mean, which is all a token LM
    depends on."""
    digest = hashlib.sha256()
    names = (n for n in state_dict if not n.startswith("decoder.") and (tables or n not in ENTROPY_TABLES))
    for name in sorted(names):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
