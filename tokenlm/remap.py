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

A codec fine-tuned as a whole (encoder, codebooks and decoder, ``train-codec --init``) moves its
latent space, so nearest vectors say little; but the same recordings, tokenized with both codecs,
say what each new code stands for: :func:`cooccurrence_mapping` gives new code ``c`` of level
``k`` the rows of the old level-``k`` code found most often in the same frames
(``train-lm --remap-shards``).
"""

from __future__ import annotations

import numpy as np
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


def cooccurrence_mapping(old_utterances: list, new_utterances: list, codebook_size: int) -> tuple[torch.Tensor, dict]:
    """The same recordings tokenized with two codecs (:class:`tokenlm.shards.Utterance` lists,
    matched by id, codes ``[K, T]`` with equal ``T``) -> ``([K, N]`` int64, summary): for each
    level and new code, the old code it most often shares a frame with; a new code never seen
    keeps its own index. Levels: those both codecs have."""
    old_by_id = {u.id: u for u in old_utterances}
    pairs = [(old_by_id[u.id], u) for u in new_utterances if u.id in old_by_id]
    if not pairs:
        raise LMError("the two shard sets have no utterance in common: nothing to count codes on")
    K, N = min(min(o.codes.shape[0], n.codes.shape[0]) for o, n in pairs), codebook_size
    for old, new in pairs:
        if old.codes.shape[1] != new.codes.shape[1]:
            raise LMError(f"utterance {new.id!r} has {new.codes.shape[1]} frames in one shard set and "
                          f"{old.codes.shape[1]} in the other: not the same recordings, or another frame rate")
    old_codes = np.concatenate([old.codes[:K] for old, _ in pairs], axis=1).astype(np.int64)  # [K, frames]
    new_codes = np.concatenate([new.codes[:K] for _, new in pairs], axis=1).astype(np.int64)
    counts = np.stack([np.bincount(new_codes[k] * N + old_codes[k], minlength=N * N) for k in range(K)])
    counts = counts.reshape(K, N, N)
    mapping = torch.from_numpy(counts.argmax(axis=2))
    unseen = torch.from_numpy(counts.sum(axis=2) == 0)
    identity = torch.arange(N).expand(K, N)
    mapping = torch.where(unseen, identity, mapping)
    frames = int(new_codes.shape[1])
    same_code = (old_codes == new_codes).mean(axis=1)
    summary = {"utterances": len(pairs), "frames": frames, "unseen_codes": unseen.sum(dim=1).tolist(),
               "same_code_share": [round(float(x), 4) for x in same_code]}
    return mapping, summary


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


def codes_kept(mapping: torch.Tensor) -> list[int]:
    """Per level, how many codes of ``mapping [K, N]`` map to themselves."""
    return (mapping == torch.arange(mapping.shape[1])).sum(dim=1).tolist()


def remap_from_codec(model: torch.nn.Module, old_codec, new_codec) -> dict:
    """Remap ``model`` (trained on ``old_codec``'s codes) to ``new_codec``'s; returns a summary
    (codes that map to themselves per level) for the training record."""
    mapping = codebook_mapping(codebooks(old_codec), codebooks(new_codec))
    remap_lm_codes(model, mapping)
    return {"from": old_codec.name, "to": new_codec.name, "codes_mapped_to_themselves": codes_kept(mapping)}


def remap_from_shards(model: torch.nn.Module, old_utterances: list, new_utterances: list, codebook_size: int) -> dict:
    """Remap ``model`` (trained on the codes of ``old_utterances``) to those of ``new_utterances``,
    the same recordings tokenized with another codec (:func:`cooccurrence_mapping`); returns its
    summary plus the codes that map to themselves per level, for the training record."""
    mapping, summary = cooccurrence_mapping(old_utterances, new_utterances, codebook_size)
    remap_lm_codes(model, mapping)
    return summary | {"codes_mapped_to_themselves": codes_kept(mapping)}
