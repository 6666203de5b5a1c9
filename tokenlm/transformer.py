"""A small pre-norm transformer shared by the AR and NAR models (nanoGPT-like).

- Pre-norm blocks: ``x + attn(norm(x))``, ``x + mlp(norm(x))`` (tanh-GELU MLP, ``ff_mult * d``).
- Rotary position embeddings (RoPE, feature pairs ``(2i, 2i+1)`` rotated as complex numbers)
  from an explicit ``positions [B, L]`` tensor, so every row
  may start at its own position: batches keep padding wherever it is convenient (right padding
  for training, left padding for generation) and real tokens still see the same relative
  positions as when the row is alone.
- Attention is ``F.scaled_dot_product_attention`` with a boolean mask ``[B, 1, Lq, Lk]``
  (True = may attend), built by the callers from causal structure and key padding.
- :class:`KVCache`: preallocated per-layer keys/values ``[B, H, capacity, Dh]`` and the filled
  length (like moshi's streaming state); a forward with a cache appends its keys/values and
  attends over everything cached so far.
- Optional AdaLN (used by the NAR): a conditioning vector ``[B, D]`` gives each block a shift,
  scale and gate for both sub-layers, applied as ``norm(x) * (1 + scale) + shift`` and
  ``x + (1 + gate) * f(...)`` (zero-initialised, so every block starts as a plain pre-norm
  block); the norms then have no affine parameters of their own.
- Optional :class:`AttentionProbe`: records the attention scores of a few heads (for the AR's
  guided-attention loss, which SDPA cannot supply because it never materialises the weights).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tokenlm.config import LMConfig


class KVCache:
    """Keys/values of every layer for incremental decoding.

    ``k[i]``, ``v[i]``: ``[B, H, capacity, Dh]``; positions ``[0, length)`` are filled.
    """

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        shape = (batch, n_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.capacity = capacity
        self.length = 0

    @classmethod
    def for_model(cls, config: LMConfig, batch: int, capacity: int, device, dtype) -> KVCache:
        return cls(config.n_layers, batch, config.n_heads, config.head_dim, capacity, device, dtype)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` ``[B, H, L, Dh]`` after the filled part; return all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} > capacity {self.capacity}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n


def rope_frequencies(head_dim: int, base: float) -> torch.Tensor:
    """``[head_dim / 2]`` rotation frequencies of RoPE."""
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def rope_rotations(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """``positions [B, L]`` -> unit complex rotations ``[B, 1, L, head_dim / 2]``."""
    angles = positions.to(torch.float32)[:, None, :, None] * inv_freq.float()
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate the feature pairs ``(2i, 2i+1)`` of ``x [..., B, H, L, Dh]`` (in float32, as
    complex numbers: one multiplication, few ops per step)."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotations).flatten(-2).to(x.dtype)


class AttentionProbe:
    """Records pre-softmax attention scores ``[B, heads, L - query_start, Lk]`` of the first
    ``heads`` heads in every block, from the queries at ``query_start..`` to the keys ``< key_end``
    (the AR: audio positions attending to the phoneme block). ``scores[i]`` is block i's. Masks
    are not applied: the consumer knows which keys are real."""

    def __init__(self, heads: int, query_start: int, key_end: int):
        self.heads, self.query_start, self.key_end = heads, query_start, key_end
        self.scores: list[torch.Tensor] = []

    def record(self, q: torch.Tensor, k: torch.Tensor) -> None:
        """``q``, ``k``: ``[B, H, L, Dh]`` after RoPE."""
        q = q[:, : self.heads, self.query_start :]
        k = k[:, : self.heads, : self.key_end]
        self.scores.append(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]))


class Attention(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.dropout = config.dropout

    def forward(self, x, rope, mask, cache: KVCache | None, layer: int, causal: bool = False,
                probe: AttentionProbe | None = None):
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(qkv[:2], rope)  # queries and keys rotated together
        v = qkv[2]
        if probe is not None:
            probe.record(q, k)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """Pre-norm transformer block, optionally modulated by AdaLN from ``cond [B, D]``."""

    def __init__(self, config: LMConfig, adaln: bool = False):
        super().__init__()
        d = config.d_model
        self.norm1 = nn.LayerNorm(d, elementwise_affine=not adaln)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=not adaln)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.ff_mult * d, bias=False),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.ff_mult * d, d, bias=False),
        )
        self.dropout = config.dropout
        self.modulation = nn.Linear(d, 6 * d) if adaln else None

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, training=True) if self.training and self.dropout > 0 else x

    def forward(self, x, rope, mask, cache=None, layer=0, cond=None, causal=False, probe=None):
        if self.modulation is None:
            x = x + self.drop(self.attn(self.norm1(x), rope, mask, cache, layer, causal, probe))
            return x + self.drop(self.mlp(self.norm2(x)))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(cond))[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + (1 + gate1) * self.drop(self.attn(h, rope, mask, cache, layer, causal, probe))
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + (1 + gate2) * self.drop(self.mlp(h))


class Transformer(nn.Module):
    """``x [B, L, D]`` + ``positions [B, L]`` -> ``[B, L, D]`` (final norm included)."""

    def __init__(self, config: LMConfig, adaln: bool = False):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(Block(config, adaln) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model, elementwise_affine=not adaln)
        self.final_modulation = nn.Linear(config.d_model, 2 * config.d_model) if adaln else None
        self.register_buffer(
            "inv_freq", rope_frequencies(config.head_dim, config.rope_base), persistent=False
        )

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cond: torch.Tensor | None = None,
        causal: bool = False,
        probe: AttentionProbe | None = None,
    ) -> torch.Tensor:
        """``mask``: bool ``[B, 1, L, Lk]`` (True = attend) or None (attend everywhere);
        ``Lk = cache.length + L`` with a cache. ``causal=True`` (only without a mask and with an
        empty cache) is plain causal attention. ``cond [B, D]`` is required with AdaLN.
        ``probe`` records attention scores of every block."""
        if causal and (mask is not None or (cache is not None and cache.length > 0)):
            raise ValueError("causal=True needs mask=None and an empty cache")
        rope = rope_rotations(positions, self.inv_freq)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, cache, i, cond, causal, probe)
        if cache is not None:
            cache.advance(x.shape[1])
        x = self.norm(x)
        if self.final_modulation is not None:
            shift, scale = self.final_modulation(F.silu(cond))[:, None].chunk(2, dim=-1)
            x = x * (1 + scale) + shift
        return x


class StepDecoder:
    """One-token decoding steps through a (non-AdaLN) :class:`Transformer` with a KV cache.

    The same math as ``Transformer.forward`` with ``L = 1`` (tests check that both give the
    same tokens), written functionally over weights transposed once to ``[in, out]``: for
    matrix-vector products on CPU, ``nn.Module`` call overhead and ``F.linear``'s transposed
    weight access cost more than the arithmetic. Inference only; build it after the weights
    are final (it keeps copies).
    """

    def __init__(self, transformer: Transformer, head: nn.Linear | None = None):
        if transformer.final_modulation is not None:
            raise ValueError("StepDecoder does not support AdaLN transformers")
        t = lambda w: w.detach().t().contiguous()
        self.layers = [
            (
                b.norm1.weight.detach(),
                b.norm1.bias.detach(),
                t(b.attn.qkv.weight),
                t(b.attn.proj.weight),
                b.norm2.weight.detach(),
                b.norm2.bias.detach(),
                t(b.mlp[0].weight),
                t(b.mlp[2].weight),
            )
            for b in transformer.blocks
        ]
        self.norm = (transformer.norm.weight.detach(), transformer.norm.bias.detach(), transformer.norm.eps)
        self.head = t(head.weight) if head is not None else None
        self.inv_freq = transformer.inv_freq
        self.n_heads, self.head_dim = transformer.config.n_heads, transformer.config.head_dim

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache: KVCache):
        """``x [B, D]``, ``positions [B]``, ``mask`` bool ``[B, 1, 1, Lk]`` or None -> ``[B, D]``
        (after the final norm; through the head when one was given)."""
        B, D = x.shape
        H, Dh = self.n_heads, self.head_dim
        rope = rope_rotations(positions[:, None], self.inv_freq)
        for i, (n1w, n1b, qkv_t, proj_t, n2w, n2b, fc1_t, fc2_t) in enumerate(self.layers):
            h = F.layer_norm(x, (D,), n1w, n1b)
            qkv = (h @ qkv_t).view(B, 3, H, 1, Dh).transpose(0, 1)  # [3, B, H, 1, Dh]
            q, k = apply_rope(qkv[:2], rope)
            k, v = cache.update(i, k, qkv[2])
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + y.reshape(B, D) @ proj_t
            h = F.layer_norm(x, (D,), n2w, n2b)
            x = x + F.gelu(h @ fc1_t, approximate="tanh") @ fc2_t
        cache.advance(1)
        x = F.layer_norm(x, (D,), *self.norm[:2], self.norm[2])
        return x @ self.head if self.head is not None else x


def init_weights(module: nn.Module, n_layers: int) -> None:
    """nanoGPT initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layers),
    AdaLN modulations zero (identity at start)."""
    for name, param in module.named_parameters():
        if name.endswith(("modulation.weight", "modulation.bias")):
            nn.init.zeros_(param)
        elif name.endswith(("attn.proj.weight", "mlp.2.weight")):
            nn.init.normal_(param, 0.0, 0.02 / math.sqrt(2 * n_layers))
        elif param.dim() >= 2:
            nn.init.normal_(param, 0.0, 0.02)


def padding_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """``lengths [B]`` -> bool ``[B, size]``, True where the position is real."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def attention_mask(key_valid: torch.Tensor, causal: bool) -> torch.Tensor | None:
    """Bool ``[B, 1, L, L]`` from ``key_valid [B, L]``; every position may attend to itself,
    so no row is fully masked (padded queries stay finite and are ignored by the loss).
    None when nothing is padded and ``causal`` is False (plain full attention, faster)."""
    L = key_valid.shape[1]
    if not causal and bool(key_valid.all()):
        return None
    mask = key_valid[:, None, None, :].expand(-1, 1, L, L)
    eye = torch.eye(L, dtype=torch.bool, device=key_valid.device)
    if causal:
        mask = mask & torch.ones(L, L, dtype=torch.bool, device=key_valid.device).tril()
    return mask | eye
