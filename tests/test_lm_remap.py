"""Re-indexing token-LM code rows for a refitted codec (tokenlm/remap.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from lm_helpers import NPH, K, V, lively, tiny_config

from tokenlm.ar import ARModel
from tokenlm.errors import LMError
from tokenlm.nar import NARModel
from tokenlm.remap import codebook_mapping, remap_lm_codes


def permuted_codebooks(seed=0, D=8):
    """``old [K, V, D]``, ``new`` = ``old`` with each level's codes shuffled, and ``perm [K, V]``
    with ``new[k, c] == old[k, perm[k, c]]``."""
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(K, V, D, generator=g)
    perm = torch.stack([torch.randperm(V, generator=g) for _ in range(K)])
    new = torch.stack([old[k, perm[k]] for k in range(K)])
    return old, new, perm


def test_mapping_finds_the_nearest_old_code():
    old, new, perm = permuted_codebooks()
    assert torch.equal(codebook_mapping(old, new), perm)
    # a new vector between codes maps to the nearer one; kept codes map to themselves
    moved = old.clone()
    moved[0, 3] = 0.9 * old[0, 5] + 0.1 * old[0, 3]
    mapping = codebook_mapping(old, moved)
    assert int(mapping[0, 3]) == 5
    assert torch.equal(mapping[1:], torch.arange(V).expand(K - 1, V))
    with pytest.raises(LMError, match="not a refit"):
        codebook_mapping(old, old[:, :-1])


def test_remapped_ar_reads_new_codes_as_the_old_model_read_old_ones():
    torch.manual_seed(0)
    old_model = lively(ARModel(tiny_config()))
    _, _, perm = permuted_codebooks(1)
    new_model = remap_lm_codes(copy.deepcopy(old_model), perm)
    inverse = torch.argsort(perm[0])  # old code o is new code inverse[o]
    g = torch.Generator().manual_seed(2)
    phonemes, old_codes = torch.randint(2, NPH, (2, 6), generator=g), torch.randint(0, V, (2, 10), generator=g)
    lengths = (torch.tensor([6, 4]), torch.tensor([10, 7]))
    old_logits = old_model(phonemes, lengths[0], old_codes, lengths[1])
    new_logits = new_model(phonemes, lengths[0], inverse[old_codes], lengths[1])
    # the same distribution, over the new indices; eos (the last class) unchanged
    torch.testing.assert_close(new_logits[..., :V], old_logits[..., perm[0]])
    torch.testing.assert_close(new_logits[..., V], old_logits[..., V])


def test_remapped_nar_reads_and_predicts_new_codes():
    torch.manual_seed(0)
    old_model = lively(NARModel(tiny_config()))
    _, _, perm = permuted_codebooks(3)
    new_model = remap_lm_codes(copy.deepcopy(old_model), perm)
    inverse = torch.argsort(perm, dim=1)
    g = torch.Generator().manual_seed(4)
    phonemes = torch.randint(2, NPH, (1, 5), generator=g)
    prompt, target = torch.randint(0, V, (1, K, 6), generator=g), torch.randint(0, V, (1, K, 8), generator=g)

    def to_new(codes):
        return torch.stack([inverse[k][codes[:, k]] for k in range(K)], dim=1)

    one = torch.tensor([1])
    for stage in range(1, K):
        args = (phonemes, torch.tensor([5]), prompt, torch.tensor([6]), target, torch.tensor([8]), stage * one)
        old_logits = old_model(*args)
        new_logits = new_model(*args[:2], to_new(prompt), args[3], to_new(target), *args[5:])
        torch.testing.assert_close(new_logits, old_logits[..., perm[stage]])


def test_remap_rejects_a_mapping_that_does_not_fit():
    model = ARModel(tiny_config())
    with pytest.raises(LMError, match="does not fit"):
        remap_lm_codes(model, torch.zeros(K, V + 1, dtype=torch.long))
    with pytest.raises(LMError, match="levels"):
        remap_lm_codes(NARModel(tiny_config()), torch.zeros(K - 1, V, dtype=torch.long))


def test_train_lm_remap_checks_the_codecs(tmp_path):
    from codec import load as load_codec
    from tokenlm.pretrained import save_lm
    from tokenlm.text import default_vocab
    from tokenlm.train import remap_init_codes

    tiny = load_codec("tiny-16k")
    info = {"name": "tiny-16k", "fingerprint": tiny.codes_fingerprint}
    model = ARModel(tiny_config())
    save_lm(model, tmp_path / "ar", default_vocab(), codec=info)
    with pytest.raises(LMError, match="nothing to remap"):
        remap_init_codes(model, str(tmp_path / "ar"), info)
    with pytest.raises(LMError, match="not the shards' one"):
        remap_init_codes(model, str(tmp_path / "ar"), info | {"fingerprint": "00"})
    save_lm(model, tmp_path / "nameless", default_vocab(), codec={})
    with pytest.raises(LMError, match="no name"):
        remap_init_codes(model, str(tmp_path / "nameless"), info)


def saved_tiny_codecs(tmp_path):
    """Folders ``old`` (a tiny random codec), ``refit`` (the same encoder, every level's codebook
    shuffled by ``perm [K, N]``) and ``other`` (another encoder); returns them and ``perm``."""
    from codec.pretrained import save_pretrained, tiny_random

    model = tiny_random(seed=0)
    save_pretrained(model, tmp_path / "old")
    g = torch.Generator().manual_seed(1)
    books = model.quantizer.codebooks
    perm = torch.stack([torch.randperm(book.embed.shape[0], generator=g) for book in books])
    with torch.no_grad():
        for book, p in zip(books, perm):
            book.embed.copy_(book.embed[p].clone())
    save_pretrained(model, tmp_path / "refit")
    save_pretrained(tiny_random(seed=1), tmp_path / "other")
    return {name: str(tmp_path / name) for name in ("old", "refit", "other")}, perm


def test_train_lm_remap_follows_a_refit_and_refuses_another_encoder(tmp_path):
    from codec import load as load_codec
    from tokenlm.pretrained import save_lm
    from tokenlm.text import default_vocab
    from tokenlm.train import remap_init_codes

    folders, perm = saved_tiny_codecs(tmp_path)
    info = {name: {"name": path, "fingerprint": load_codec(path).codes_fingerprint} for name, path in folders.items()}
    torch.manual_seed(0)
    model = lively(ARModel(tiny_config(codebook_size=1024)))
    save_lm(model, tmp_path / "ar", default_vocab(), codec=info["old"])
    before = model.audio_emb.weight.detach().clone()
    summary = remap_init_codes(model, str(tmp_path / "ar"), info["refit"])
    # new code c is the old code perm[0, c]: it takes that code's embedding row
    assert torch.equal(model.audio_emb.weight[:1024], before[perm[0]])
    assert summary["codes_mapped_to_themselves"][0] == int((perm[0] == torch.arange(1024)).sum())
    with pytest.raises(LMError, match="another encoder"):
        remap_init_codes(model, str(tmp_path / "ar"), info["other"])


def coded_utterances(codes_by_id: dict) -> list:
    """:class:`tokenlm.shards.Utterance` rows holding ``codes [K, T]`` under the given ids."""
    import numpy as np

    from tokenlm.shards import Utterance

    return [Utterance(id=i, speaker="spk", text="", duration=c.shape[1] / 50, split="train",
                      codes=np.asarray(c, dtype=np.int16), phonemes=np.zeros(0, dtype=np.int32))
            for i, c in codes_by_id.items()]


def test_cooccurrence_mapping_finds_the_old_code_of_the_same_frames():
    from tokenlm.remap import cooccurrence_mapping

    g = torch.Generator().manual_seed(4)
    perm = torch.stack([torch.randperm(V, generator=g) for _ in range(K)])  # new code = perm[old code]
    old = {f"u{i}": torch.randint(0, V - 1, (K, 300), generator=g) for i in range(6)}  # code V-1 never used
    new = {i: torch.stack([perm[k][c[k]] for k in range(K)]) for i, c in old.items()}
    # one frame in ten disagrees with the rule: the majority still wins
    noisy = {i: c.clone() for i, c in new.items()}
    for c in noisy.values():
        c[:, ::10] = c[:, 1::10]
    mapping, summary = cooccurrence_mapping(coded_utterances({i: c.numpy() for i, c in old.items()}),
                                            coded_utterances({i: c.numpy() for i, c in noisy.items()}), V)
    for k in range(K):
        for o in range(V - 1):
            assert int(mapping[k, perm[k, o]]) == o
        assert int(mapping[k, perm[k, V - 1]]) == int(perm[k, V - 1])  # never seen: keeps its index
    assert summary["utterances"] == 6 and summary["frames"] == 1800
    assert summary["unseen_codes"] == [1] * K
    # an utterance only one side has is left out; one of another length is refused
    extra = coded_utterances({"other": new["u0"].numpy()})
    mapping_again, summary = cooccurrence_mapping(coded_utterances({i: c.numpy() for i, c in old.items()}),
                                                  coded_utterances({i: c.numpy() for i, c in noisy.items()}) + extra, V)
    assert torch.equal(mapping_again, mapping) and summary["utterances"] == 6
    with pytest.raises(LMError, match="frames"):
        cooccurrence_mapping(coded_utterances({"u0": old["u0"].numpy()}),
                             coded_utterances({"u0": new["u0"][:, :-1].numpy()}), V)
    with pytest.raises(LMError, match="no utterance in common"):
        cooccurrence_mapping(coded_utterances({"a": old["u0"].numpy()}), coded_utterances({"b": new["u0"].numpy()}), V)


def test_train_lm_remap_by_shards_checks_the_codecs_and_reindexes_the_rows(tmp_path):
    from tokenlm.pretrained import save_lm
    from tokenlm.shards import write_shard
    from tokenlm.text import default_vocab
    from tokenlm.train import TrainLMConfig, remap_init_by_shards

    g = torch.Generator().manual_seed(5)
    perm = torch.stack([torch.randperm(V, generator=g) for _ in range(K)])
    old = {f"u{i}": torch.randint(0, V, (K, 40), generator=g) for i in range(4)}
    new = coded_utterances({i: torch.stack([perm[k][c[k]] for k in range(K)]).numpy() for i, c in old.items()})
    info = {"name": "old", "fingerprint": "00000000000000aa", "sample_rate": 16000, "frame_rate": 50.0,
            "num_codebooks": K, "codebook_size": V}
    new_info = info | {"name": "new", "fingerprint": "00000000000000bb"}
    (tmp_path / "old").mkdir()
    write_shard(tmp_path / "old" / "shard_00000.safetensors", coded_utterances({i: c.numpy() for i, c in old.items()}),
                info, default_vocab())
    torch.manual_seed(0)
    model = lively(NARModel(tiny_config()))
    save_lm(model, tmp_path / "nar", default_vocab(), codec=info)
    before = model.audio_emb.weight.detach().clone()
    summary = remap_init_by_shards(model, str(tmp_path / "nar"), new_info, new, [str(tmp_path / "old")])
    # new code c of level k takes the row of the old code it always stands beside: inverse of perm
    for k in range(K):
        inverse = torch.argsort(perm[k])
        seen = torch.zeros(V, dtype=torch.bool)
        seen[perm[k][old["u0"][k]]] = True
        for c in torch.nonzero(seen).flatten().tolist():
            assert torch.equal(model.audio_emb.weight[k * V + c], before[k * V + inverse[c]])
    assert summary["utterances"] == 4 and len(summary["codes_mapped_to_themselves"]) == K
    with pytest.raises(LMError, match="nothing to remap"):
        remap_init_by_shards(model, str(tmp_path / "nar"), info, new, [str(tmp_path / "old")])
    save_lm(model, tmp_path / "nar-other", default_vocab(), codec=info | {"fingerprint": "00000000000000cc"})
    with pytest.raises(LMError, match="was trained on"):
        remap_init_by_shards(model, str(tmp_path / "nar-other"), new_info, new, [str(tmp_path / "old")])
    with pytest.raises(LMError, match="two ways"):
        TrainLMConfig(stage="nar", shards="x", out_dir="y", init="z", remap_codes=True, remap_shards=["w"])
