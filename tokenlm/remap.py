"""Carry a token LM over to a codec whose codebooks were refitted: re-index its code embeddings.

``tokenwave refit-codes`` keeps a codec's encoder and re-places its rarely used code vectors,
so code ``c`` of level ``k`` may now stand for another part of the latent space than the LM
learnt. The latent space itself is unchanged, so what an old code meant is still known: the
new code ``c`` of level ``k`` takes the LM rows of the old level-``k`` code whose vector is
nearest to its own (codes the refit kept map to themselves). The rows are the audio embedding
(AR: level 1 only, plus its output head; NAR: every level, its heads are tied to them); the
AR's ``eos``/``bos`` rows and everything else stay as they were.

This only makes sense between codecs with the same encoder (a refit). For a retrained codec the
two latent spaces have nothing in common: :func:`codebook_mapping` cannot tell, so
``train-lm --remap-codes`` checks that the two codecs' encoder weights are identical.
"""

from __future__ import annotations

import torch

from tokenlm.errors import LMError


def codebooks(codec_model) -> torch.Tensor:
    """The RVQ code vectors of a :class:`codec.model.CodecModel`: ``[K, N, D]`` float32."""
    try:
        books = [book.embed for book in codec_model.quantizer.codebooks]
    except AttributeError as error:
        raise LMError(f"{codec_model.name}: not a tokenwave RVQ codec, its codes cannot be remapped") from error
    return torch.stack([b.detach().float().cpu() for b in books])


def codebook_mapping(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``old, new [K, N, D]`` -> ``[K, N]`` int64: for each level and new code, the old code with
    the nearest vector (Euclidean)."""
    if old.shape != new.shape:
        raise LMError(f"the codebooks differ in shape ({tuple(old.shape)} vs {tuple(new.shape)}): not a refit")
    return torch.cdist(new.double(), old.double()).argmin(dim=-1)


@torch.no_grad()
def remap_lm_codes(model: torch.nn.Module, mapping: torch.Tensor) -> torch.nn.Module:
    """Re-index ``model``'s code rows in place by ``mapping [K, N]`` (from :func:`codebook_mapping`);
    returns the model."""
    n = model.config.codebook_size
    if mapping.shape[1] != n or mapping.shape[0] < 1:
        raise LMError(f"mapping of shape {tuple(mapping.shape)} does not fit an LM over {n} codes")
    if model.kind == "ar":
        rows = mapping[0]
        model.audio_emb.weight[:n] = model.audio_emb.weight[rows].clone()
        model.head.weight[:n] = model.head.weight[rows].clone()
    elif model.kind == "nar":
        K = model.config.n_codebooks
        if mapping.shape[0] < K:
            raise LMError(f"mapping covers {mapping.shape[0]} levels, the NAR models {K}")
        rows = torch.cat([k * n + mapping[k] for k in range(K)])
        model.audio_emb.weight[: K * n] = model.audio_emb.weight[rows].clone()
    else:
        raise LMError(f"cannot remap the codes of a {model.kind!r} model")
    return model


def remap_from_codec(model: torch.nn.Module, old_codec, new_codec) -> dict:
    """Remap ``model`` (trained on ``old_codec``'s codes) to ``new_codec``'s; returns a summary
    (codes that map to themselves per level) for the training record."""
    mapping = codebook_mapping(codebooks(old_codec), codebooks(new_codec))
    remap_lm_codes(model, mapping)
    identity = torch.arange(mapping.shape[1])
    kept = (mapping == identity).sum(dim=1).tolist()
    return {"from": old_codec.name, "to": new_codec.name, "codes_mapped_to_themselves": kept}
