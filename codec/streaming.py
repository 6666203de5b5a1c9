"""Streaming encode and decode with explicit state objects.

Feed audio in chunks of any size to a :class:`StreamingEncoder` and it returns the codes of the
frames completed so far; :meth:`StreamingEncoder.flush` ends the stream. The codes equal those of
:meth:`CodecModel.encode` on the whole signal. A :class:`StreamingDecoder` turns codes into
audio chunk by chunk, equal to :meth:`CodecModel.decode` to float tolerance.

Both hold everything they carry between calls as attributes (sample buffer, overlap-add tail,
one convolution cache per block), in the spirit of a ``StreamingModule`` whose state is explicit.
"""

from __future__ import annotations

import torch

from codec.errors import AudioError, ModelError
from codec.modules import frame_signal, overlap_add


class StreamingEncoder:
    """Incremental :meth:`CodecModel.encode`. Chunks must already be at the model's sample rate
    (resample the whole signal first, or use ``soxr.ResampleStream``).

    State: ``pending`` ``[B, L]`` samples not yet covered by a whole frame (starts with the
    ``n_fft - hop`` zeros of analysis history), ``cache`` of the causal convolutions,
    ``samples_in`` / ``frames_out`` counters, and with a rate weight the ``rate_quantizer``.
    """

    def __init__(self, model, num_codebooks: int, batch: int = 1, rate_weight: float = 0.0):
        self.model = model
        self.num_codebooks = num_codebooks
        # rate_weight > 0: rate-distortion optimised codes (codec.rdo); its state (the last
        # level-1 code of each stream) lives in this quantizer
        self.rate_quantizer = model.rate_quantizer(rate_weight, batch) if rate_weight else None
        param = model.encoder.proj_in.weight
        self.dtype, self.device = param.dtype, param.device
        self.pending = torch.zeros(batch, model.config.n_fft - model.hop, dtype=self.dtype, device=self.device)
        self.cache: list | None = None
        self.samples_in = 0
        self.frames_out = 0
        self.closed = False

    def _as_chunk(self, wav: torch.Tensor) -> torch.Tensor:
        wav = torch.as_tensor(wav)
        if wav.dim() == 1:
            wav = wav[None]
        if wav.dim() == 3 and wav.shape[1] == 1:
            wav = wav[:, 0]
        if wav.dim() != 2 or wav.shape[0] != self.pending.shape[0]:
            raise AudioError(f"expected a chunk [B={self.pending.shape[0]}, n], got {tuple(wav.shape)}")
        if not torch.isfinite(wav).all():
            raise AudioError("audio contains NaN or Inf samples")
        return wav.to(self.device, self.dtype)

    @torch.no_grad()
    def _encode_ready_frames(self) -> torch.Tensor:
        hop, n_fft = self.model.hop, self.model.config.n_fft
        ready = (self.pending.shape[1] - (n_fft - hop)) // hop
        if ready <= 0:
            return torch.zeros(self.pending.shape[0], self.num_codebooks, 0, dtype=torch.long, device=self.device)
        frames = frame_signal(self.pending[:, : (ready - 1) * hop + n_fft], n_fft, hop)
        self.pending = self.pending[:, ready * hop :]
        latent, self.cache = self.model.encoder(frames, self.cache)
        self.frames_out += ready
        quantizer = self.rate_quantizer or self.model.quantizer
        return quantizer.encode(latent, self.num_codebooks)

    def push(self, wav: torch.Tensor) -> torch.Tensor:
        """Chunk ``[B, n]`` (or ``[n]``, any n >= 0) -> codes of completed frames ``[B, K, t]``."""
        if self.closed:
            raise AudioError("this stream was flushed; start a new one")
        chunk = self._as_chunk(wav)
        self.samples_in += chunk.shape[1]
        self.pending = torch.cat([self.pending, chunk], dim=1)
        return self._encode_ready_frames()

    def flush(self) -> torch.Tensor:
        """End of input: pad with zeros as whole-signal encoding does -> remaining codes."""
        if self.closed:
            raise AudioError("this stream was already flushed")
        if self.samples_in == 0:
            raise AudioError("audio is empty (zero samples)")
        self.closed = True
        total = self.model.num_frames(self.samples_in)
        missing = (total - self.frames_out) * self.model.hop - (self.pending.shape[1] - (self.model.config.n_fft - self.model.hop))
        self.pending = torch.nn.functional.pad(self.pending, (0, missing))
        return self._encode_ready_frames()


class StreamingDecoder:
    """Incremental :meth:`CodecModel.decode`.

    State: ``tail`` ``[B, n_fft - hop]``, the overlap-add sum still waiting for later frames;
    ``cache`` of the causal convolutions; ``skip``, samples before time zero still to drop;
    ``remaining``, samples still to emit when the output length is known.
    """

    def __init__(self, model, length: int | None = None, batch: int = 1):
        self.model = model
        param = model.decoder.proj_in.weight
        self.dtype, self.device = param.dtype, param.device
        self.tail = torch.zeros(batch, model.config.n_fft - model.hop, dtype=self.dtype, device=self.device)
        self.cache: list | None = None
        self.skip = model.config.n_fft - model.hop
        self.remaining = length

    @torch.no_grad()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, t]`` -> the audio made final by them ``[B, 1, n]``."""
        hop = self.model.hop
        codes = self.model.check_codes(codes, min_frames=0)
        if codes.shape[0] != self.tail.shape[0]:
            raise ModelError(f"this stream decodes a batch of {self.tail.shape[0]}, got codes for {codes.shape[0]}")
        if codes.shape[-1] == 0:
            return self.tail.new_zeros(self.tail.shape[0], 1, 0)
        latent = self.model.quantizer.decode(codes.to(self.device)).to(self.dtype)
        frames, self.cache = self.model.decoder(latent, self.cache)
        audio = overlap_add(frames, hop)
        audio[:, : self.tail.shape[1]] += self.tail
        done = frames.shape[1] * hop
        self.tail = audio[:, done:]
        out = audio[:, :done]
        if self.skip:
            dropped = min(self.skip, out.shape[1])
            out, self.skip = out[:, dropped:], self.skip - dropped
        if self.remaining is not None:
            out = out[:, : self.remaining]
            self.remaining -= out.shape[1]
        return out[:, None]
