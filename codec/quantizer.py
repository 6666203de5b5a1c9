"""Residual vector quantizer (RVQ) with the tricks that keep codebooks alive.

- k-means initialisation of every codebook from the first training batch,
- codebooks updated by exponential moving averages (EMA) of assigned vectors, not by gradients,
- dead-code replacement: codes whose EMA usage falls below a threshold are re-seeded with
  vectors from the current batch,
- commitment loss pulling the encoder output towards its codes,
- quantizer dropout: part of each batch uses only the first k codebooks (k random), so one model
  serves every bitrate.

Written here rather than taken from vector-quantize-pytorch so that the shipped weights have a
small format of our own (only ``embed`` is needed for inference; the library's buffer names and
shapes have changed between releases) and so that inference can run in float64, which makes
streaming codes bit-exact (see :mod:`codec.model`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over DDP processes (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _sample_vectors(vectors: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` rows of ``vectors`` ``[M, D]`` at random (with replacement if M < count)."""
    if vectors.shape[0] >= count:
        index = torch.randperm(vectors.shape[0], device=vectors.device)[:count]
    else:
        index = torch.randint(0, vectors.shape[0], (count,), device=vectors.device)
    return vectors[index]


def kmeans(vectors: torch.Tensor, num_clusters: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain k-means on ``[M, D]`` -> centroids ``[num_clusters, D]`` and cluster sizes."""
    centroids = _sample_vectors(vectors, num_clusters)
    sizes = torch.zeros(num_clusters, device=vectors.device)
    for _ in range(iters):
        assignment = torch.cdist(vectors, centroids).argmin(dim=-1)
        sizes = torch.bincount(assignment, minlength=num_clusters).to(vectors.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, vectors)
        used = sizes > 0
        centroids[used] = sums[used] / sizes[used, None]
    return centroids, sizes


class EMACodebook(nn.Module):
    """One codebook of ``size`` vectors of ``dim`` dimensions, trained by EMA."""

    def __init__(self, dim: int, size: int, decay: float, dead_code_threshold: float, kmeans_iters: int,
                 dead_code_share: float):
        super().__init__()
        self.size = size
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        self.dead_code_share = dead_code_share
        self.kmeans_iters = kmeans_iters
        self.register_buffer("initialized", torch.zeros(()))
        self.register_buffer("embed", torch.randn(size, dim) * 0.1)
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed_avg", self.embed.clone())

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[M, D]`` -> index of the nearest code ``[M]`` (squared Euclidean distance)."""
        embed = self.embed.to(x.dtype)
        # |x - e|^2 = |x|^2 - 2 x.e + |e|^2; |x|^2 is the same for every code, so it is left out.
        return torch.addmm(embed.pow(2).sum(-1)[None], x, embed.t(), alpha=-2.0).argmin(dim=-1)

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """Indices ``[...]`` -> code vectors ``[..., D]``."""
        return F.embedding(index, self.embed)

    @torch.no_grad()
    def update(self, x: torch.Tensor, index: torch.Tensor) -> None:
        """EMA update from vectors ``x`` ``[M, D]`` assigned to ``index`` ``[M]``; k-means on
        the first call; then re-seeds dead codes."""
        x = x.float()
        if not self.initialized:
            gathered = x  # every process runs k-means on its own batch; then averaged
            centroids, sizes = kmeans(gathered, self.size, self.kmeans_iters)
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            self.embed.copy_(_all_reduce(centroids) / world)
            self.cluster_size.copy_(_all_reduce(sizes) / world)
            # embed_avg is the EMA of the *sum* of assigned vectors: embed * cluster size.
            self.embed_avg.copy_(self.embed * self.cluster_size[:, None])
            self.initialized.fill_(1.0)
            return
        counts = torch.bincount(index, minlength=self.size).float()
        sums = torch.zeros_like(self.embed).index_add_(0, index, x)
        _all_reduce(counts)
        _all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing so that rarely used codes do not divide by ~0.
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (total + self.size * 1e-5) * total
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        self._replace_dead_codes(x)

    def dead_threshold(self) -> torch.Tensor:
        """EMA usage below which a code counts as dead: ``dead_code_threshold`` frames per update,
        or ``dead_code_share`` of an even share when that is lower. The EMA usage sums to the
        frames per update (across processes), so when a batch has fewer frames than there are
        codes, evenly used codes sit below any fixed threshold of a frame or more, and an absolute
        rule alone would keep re-seeding live codes with random batch vectors. A 0-dim tensor, so
        that no step waits for the device to report it."""
        return (self.dead_code_share * self.cluster_size.mean()).clamp(max=self.dead_code_threshold)

    def _replace_dead_codes(self, x: torch.Tensor) -> None:
        threshold = self.dead_threshold()
        dead = self.cluster_size < threshold
        if not dead.any():
            return
        replacement = _sample_vectors(x, self.size)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(replacement, src=0)  # every process must re-seed identically
        self.embed[dead] = replacement[dead]
        self.embed_avg[dead] = replacement[dead] * threshold
        self.cluster_size[dead] = threshold


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # [B, T, D] sum of the used levels (straight-through gradient)
    codes: torch.Tensor  # [B, K, T] all K levels
    commitment_loss: torch.Tensor  # scalar
    num_codebooks: torch.Tensor  # [B] levels used per item


class ResidualVectorQuantizer(nn.Module):
    """``num_codebooks`` EMA codebooks applied one after the other to the residual."""

    def __init__(
        self,
        dim: int,
        num_codebooks: int,
        codebook_size: int,
        decay: float = 0.99,
        dead_code_threshold: float = 2.0,
        kmeans_iters: int = 10,
        dead_code_share: float = 0.1,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.dropout = dropout
        self.learn_codebooks = True  # False: training mode still drops levels, but codebooks stay as they are
        self.codebooks = nn.ModuleList(
            EMACodebook(dim, codebook_size, decay, dead_code_threshold, kmeans_iters, dead_code_share)
            for _ in range(num_codebooks)
        )

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        """Training pass over ``x`` ``[B, T, D]``: every level is computed (and updated in
        training mode); item b only sums its first ``num_codebooks[b]`` levels."""
        batch = x.shape[0]
        num_codebooks = torch.full((batch,), self.num_codebooks, device=x.device)
        if self.training and self.dropout > 0:
            random_k = torch.randint(1, self.num_codebooks + 1, (batch,), device=x.device)
            use_random = torch.rand(batch, device=x.device) < self.dropout
            num_codebooks = torch.where(use_random, random_k, num_codebooks)
        residual = x
        quantized = torch.zeros_like(x)
        commitment = x.new_zeros(())
        codes = []
        for level, codebook in enumerate(self.codebooks):
            flat = rearrange(residual.detach(), "b t d -> (b t) d")
            index = codebook.nearest(flat)
            if self.training and self.learn_codebooks:
                codebook.update(flat, index)
            code = codebook.lookup(index).view_as(residual)
            active = (level < num_codebooks).to(x.dtype)[:, None, None]  # [B, 1, 1]
            # Commitment: encoder output (residual) pulled towards the (fixed) code.
            error = (residual - code.detach()).pow(2).mean(dim=(1, 2))
            commitment = commitment + (error * active[:, 0, 0]).sum() / batch
            quantized = quantized + active * code
            residual = residual - code.detach()
            codes.append(rearrange(index, "(b t) -> b t", b=batch))
        # Straight-through estimator: forward uses the codes, backward passes to x.
        quantized = x + (quantized - x).detach()
        return QuantizerOutput(quantized, torch.stack(codes, dim=1), commitment, num_codebooks)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        """``x`` ``[B, T, D]`` -> codes ``[B, K, T]`` for the first ``num_codebooks`` levels."""
        batch = x.shape[0]
        residual = rearrange(x, "b t d -> (b t) d")
        codes = []
        for codebook in self.codebooks[:num_codebooks]:
            index = codebook.nearest(residual)
            residual = residual - codebook.lookup(index).to(residual.dtype)
            codes.append(rearrange(index, "(b t) -> b t", b=batch))
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, T]`` (K <= num_codebooks) -> sum of code vectors ``[B, T, D]``."""
        out = 0
        for level in range(codes.shape[1]):
            out = out + self.codebooks[level].lookup(codes[:, level])
        return out


def codebook_stats(codes: torch.Tensor, codebook_size: int) -> list[dict]:
    """Per level of ``codes`` ``[B, K, T]``: share of the codebook used and perplexity
    (exp of the entropy of the code histogram; ``codebook_size`` at best)."""
    stats = []
    for level in range(codes.shape[1]):
        counts = torch.bincount(codes[:, level].reshape(-1), minlength=codebook_size).double()
        total = counts.sum().clamp_min(1)
        p = counts / total
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        stats.append(
            {
                "level": level + 1,
                "usage": (counts > 0).double().mean().item(),
                "perplexity": entropy.exp().item(),
                "entropy_bits": (entropy / torch.log(torch.tensor(2.0, dtype=torch.float64))).item(),
            }
        )
    return stats
