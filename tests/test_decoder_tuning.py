"""tune-tts-decoder on a tiny codec, tiny NAR and tiny shards made here: pairs, training, export, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

import codec
from tts.decoder_tuning import PAIRS_FILE, TuningConfig, draw_crops, load_pairs, tune_decoder
from tts.errors import TTSError

K = 4


def speechlike(seconds: float, seed: int, rate: int = 16_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110 + 20 * seed + 25 * np.sin(2 * np.pi * 0.9 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wav = sum(np.sin(k * phase) / k for k in range(1, 9)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2)
    return (0.1 * wav + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Six recordings of two speakers (one 2.6 s prompt-length file each), their shards, a tiny NAR."""
    from codec.pretrained import save_pretrained
    from tokenlm.config import LMConfig
    from tokenlm.nar import NARModel
    from tokenlm.pretrained import save_lm
    from tokenlm.shards import Utterance, write_shard
    from tokenlm.text import default_vocab, text_to_ids

    root = tmp_path_factory.mktemp("tuning")
    save_pretrained(codec.load("tiny-16k"), root / "codec")  # float16, as every shipped codec
    tiny = codec.load(str(root / "codec"))
    vocab = default_vocab()
    info = {"name": tiny.name, "fingerprint": tiny.codes_fingerprint, "sample_rate": tiny.sample_rate,
            "frame_rate": tiny.frame_rate, "num_codebooks": K, "codebook_size": tiny.codebook_size}
    utterances = []
    for i, seconds in enumerate([2.6, 1.2, 1.5, 2.6, 1.1, 1.4]):
        path = root / f"utt{i}.wav"
        wav = speechlike(seconds, i)
        sf.write(path, wav, 16_000)
        codes = tiny.encode(torch.from_numpy(wav)[None], 16_000)[0, :K].numpy().astype(np.int16)
        text = f"this is utterance number {i}"
        utterances.append(Utterance(id=f"u{i}", speaker=f"spk{i // 3}", text=text, duration=seconds,
                                    split="dev" if i % 3 == 2 else "train", codes=codes,
                                    phonemes=np.asarray(text_to_ids(text, vocab), dtype=np.int32), source=str(path)))
    (root / "shards").mkdir()
    write_shard(root / "shards" / "shard_00000.safetensors", utterances, info, vocab)
    torch.manual_seed(0)
    config = LMConfig(d_model=32, n_layers=1, n_heads=2, dropout=0.0, n_phonemes=len(vocab),
                      codebook_size=tiny.codebook_size, n_codebooks=K)
    save_lm(NARModel(config), root / "nar", vocab, codec=info)
    return root, utterances


def config(root, out, **changes) -> TuningConfig:
    base = {"shards": str(root / "shards"), "out_dir": str(out), "nar": str(root / "nar"), "codec": str(root / "codec"),
            "steps": 4, "batch_size": 4, "crop_frames": 8, "checkpoint_every": 2, "eval_every": 10,
            "warmup_steps": 1, "lr": 1e-3}
    return TuningConfig(**(base | changes))


def test_tuning_trains_the_decoder_alone_and_exports_the_same_token_space(setup, tmp_path):
    root, utterances = setup
    before = codec.load(str(root / "codec"))
    export = tune_decoder(config(root, tmp_path / "run"), progress=False)
    tuned = codec.load(str(export))
    assert tuned.codes_fingerprint == before.codes_fingerprint  # token files and LMs still fit
    after, start = tuned.state_dict(), before.state_dict()
    assert all(torch.equal(after[k], start[k]) for k in start if not k.startswith("decoder."))
    assert any(not torch.equal(after[k], start[k]) for k in start if k.startswith("decoder."))
    record = json.loads((export / "config.json").read_text())["training"]["tts_decoder_tuning"]
    assert record["steps"] == 4 and record["init"] == str(root / "codec") and record["temperature"] == 0.5
    # the pairs: every utterance with text (dev ones too), expected vectors beside the real codes
    pairs = load_pairs(tmp_path / "run" / PAIRS_FILE, json.loads(_settings(tmp_path / "run")), before.config.latent_dim, K)
    assert sorted(item["id"] for item in pairs.items) == sorted(u.id for u in utterances)
    assert pairs.vectors.shape == (sum(u.num_frames for u in utterances), before.config.latent_dim)
    for item, lo, hi in zip(pairs.items, pairs.offsets[:-1], pairs.offsets[1:]):
        original = next(u for u in utterances if u.id == item["id"])
        assert torch.equal(pairs.codes[:, lo:hi], torch.from_numpy(original.codes.astype(np.int64)))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and {"dev_expected", "dev_real"} <= set(log[0])


def _settings(run) -> str:
    from safetensors import safe_open

    with safe_open(str(run / PAIRS_FILE), "pt") as handle:
        return handle.metadata()["settings"]


def test_resume_continues_and_reuses_the_pairs(setup, tmp_path):
    root, _ = setup
    out = tmp_path / "run"
    tune_decoder(config(root, out, steps=2), progress=False)
    stamp = (out / PAIRS_FILE).stat().st_mtime_ns
    export = tune_decoder(config(root, out, steps=4, resume=True), progress=False)
    assert (out / PAIRS_FILE).stat().st_mtime_ns == stamp  # same settings: not rebuilt
    assert json.loads((export / "config.json").read_text())["training"]["tts_decoder_tuning"]["steps"] == 4
    (out / PAIRS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(TTSError, match="damaged"):
        tune_decoder(config(root, out, steps=5, resume=True), progress=False)


def test_crops_pair_frames_with_the_samples_they_decode_to(setup, tmp_path):
    root, _ = setup
    tune_decoder(config(root, tmp_path / "run", steps=1), progress=False)
    tiny = codec.load(str(root / "codec"))
    pairs = load_pairs(tmp_path / "run" / PAIRS_FILE, json.loads(_settings(tmp_path / "run")), tiny.config.latent_dim, K)
    signals = [sf.read(item["source"], dtype="float32")[0] for item in pairs.items]
    real = tiny.code_vectors(pairs.codes[None], min_frames=1)[0].float()
    valid = (8 - tiny.overlap + 1) * tiny.hop
    rng = np.random.default_rng(0)
    x, y = draw_crops(pairs, real, signals, [0], 3, 1, 8, tiny.hop, valid, rng)
    assert x.shape == (3, 8, tiny.config.latent_dim) and y.shape == (3, 1, valid)
    # find each crop's start from its real vectors, then check the audio is that frame's samples
    lo = int(pairs.offsets[0])
    for j in (1, 2):
        starts = [s for s in range(pairs.items[0]["frames"] - 7) if torch.equal(real[lo + s : lo + s + 8], x[j])]
        assert starts and np.array_equal(y[j, 0].numpy(), signals[0][starts[0] * tiny.hop : starts[0] * tiny.hop + valid])


def test_bad_settings_and_inputs_are_clear_errors(setup, tmp_path):
    root, _ = setup
    for bad in ({"expected_fraction": 1.5}, {"temperature": 0.0}, {"steps": 0}, {"crop_frames": 2}):
        with pytest.raises(TTSError):
            config(root, tmp_path / "x", **bad)
    with pytest.raises(TTSError, match="speaker"):
        tune_decoder(config(root, tmp_path / "y", speakers=("nobody",)), progress=False)
    with pytest.raises(TTSError, match="another codec"):
        tune_decoder(config(root, tmp_path / "z", codec="tiny-24k"), progress=False)
