"""Hugging Face interop (codec/hub.py): save_pretrained / from_pretrained / push_to_hub, no network."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import codec
from codec.cli import main as cli_main
from codec.errors import ModelError
from codec.model import CodecModel
from codec.pretrained import REPO_WEIGHTS, load_pretrained

SPEECH = REPO_WEIGHTS / "speech-16k"


@pytest.fixture(scope="module")
def tiny():
    return codec.load("tiny-16k")


def _signal(seconds: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(16_000 * seconds), dtype=torch.float32) / 16_000
    return (0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(t.shape, generator=torch.Generator().manual_seed(0)))[None]


def _fake_hub_cache(root, repo_id: str, model) -> None:
    """A repository in the Hugging Face cache layout: models--o--n/{refs/main, snapshots/<commit>/...}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_save_pretrained_writes_our_format_and_loads_back(tmp_path, tiny):
    tiny.save_pretrained(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["name"] == "tiny-16k" and len(config["weights_sha256"]) == 64
    assert "library_name: tokenwave" in (tmp_path / "m" / "README.md").read_text()

    loaded = CodecModel.from_pretrained(tmp_path / "m")
    same = codec.load(str(tmp_path / "m"))  # codec.load reads the very same folder
    assert isinstance(loaded, CodecModel) and loaded.fingerprint == same.fingerprint
    wav = _signal()
    codes = loaded.encode(wav, 16_000)
    assert torch.equal(codes, same.encode(wav, 16_000))
    # float16 on disk: the reloaded model codes like the original on most frames
    assert (codes == tiny.encode(wav, 16_000)).float().mean() > 0.5


@pytest.mark.skipif(not SPEECH.is_dir(), reason="no shipped speech-16k weights")
def test_shipped_folder_round_trips_bit_for_bit(tmp_path):
    shipped = CodecModel.from_pretrained(SPEECH)
    assert shipped.fingerprint == codec.load("speech-16k").fingerprint
    shipped.save_pretrained(tmp_path / "copy")  # float16 -> float16: identical tensors
    ours, theirs = load_file(tmp_path / "copy" / "model.safetensors"), load_file(SPEECH / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert load_pretrained(tmp_path / "copy").fingerprint == shipped.fingerprint


def test_from_pretrained_refuses_tampered_weights(tmp_path, tiny):
    tiny.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="(?i)sha-?256"):
        CodecModel.from_pretrained(tmp_path / "m")


def test_from_pretrained_reads_the_local_hub_cache(tmp_path, monkeypatch, tiny):
    _fake_hub_cache(tmp_path / "hub", "someone/tiny-codec", tiny)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from_env = CodecModel.from_pretrained("someone/tiny-codec", local_files_only=True)
    explicit = CodecModel.from_pretrained("someone/tiny-codec", local_files_only=True, cache_dir=tmp_path / "hub")
    assert from_env.fingerprint == explicit.fingerprint == codec.load("someone/tiny-codec").fingerprint
    with pytest.raises(ModelError, match="someone/absent"):
        CodecModel.from_pretrained("someone/absent", local_files_only=True)


def test_cli_model_flag_takes_a_folder_or_a_cached_hub_id(tmp_path, monkeypatch, tiny):
    import soundfile as sf

    _fake_hub_cache(tmp_path / "hub", "someone/tiny-codec", tiny)
    tiny.save_pretrained(tmp_path / "folder")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    sf.write(tmp_path / "in.wav", _signal()[0].numpy(), 16_000)
    for i, model in enumerate(["someone/tiny-codec", str(tmp_path / "folder")]):
        assert cli_main(["compress", str(tmp_path / "in.wav"), "-o", str(tmp_path / f"{i}.tok"), "--model", model]) == 0
        assert cli_main(["decompress", str(tmp_path / f"{i}.tok"), "-o", str(tmp_path / f"{i}.wav"), "--model", model]) == 0
        assert sf.info(tmp_path / f"{i}.wav").frames == 8000
    assert cli_main(["compress", str(tmp_path / "in.wav"), "-o", str(tmp_path / "x.tok"), "--model", "someone/absent"]) == 2


def test_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch, tiny):
    """push_to_hub with the hub client replaced by a recorder: no network, same files as save_pretrained."""
    from huggingface_hub import hub_mixin

    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            files = {p.name: p.read_bytes() for p in sorted(folder_path.iterdir())}
            uploads.append((repo_id, files, kwargs))
            return f"https://huggingface.co/{repo_id}/commit/fake"

    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    url = tiny.push_to_hub("someone/pushed", commit_message="test push", token="hf_fake")
    assert url.endswith("/commit/fake")
    (repo_id, files, kwargs), = uploads
    assert repo_id == "someone/pushed" and kwargs["commit_message"] == "test push"
    assert set(files) == {"README.md", "config.json", "model.safetensors"}
    (tmp_path / "pulled").mkdir()
    for name, data in files.items():
        (tmp_path / "pulled" / name).write_bytes(data)
    pulled = CodecModel.from_pretrained(tmp_path / "pulled")
    tiny.save_pretrained(tmp_path / "local")
    assert pulled.fingerprint == CodecModel.from_pretrained(tmp_path / "local").fingerprint
    assert np.isfinite(pulled.decode(pulled.encode(_signal(), 16_000)).numpy()).all()


def _tiny_lm(cls, vocab, seed: int = 0):
    from tokenlm.config import LMConfig

    torch.manual_seed(seed)
    return cls(LMConfig(d_model=32, n_layers=1, n_heads=2, ff_mult=2, dropout=0.0, n_phonemes=len(vocab),
                        n_codebooks=3, codebook_size=16)).eval()


def _same_weights(a, b) -> bool:
    return a.state_dict().keys() == b.state_dict().keys() and all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("kind", ["ar", "nar"])
def test_lm_classes_save_and_load_the_lm_folders(tmp_path, kind):
    """ARModel / NARModel carry LMHubMixin: save_pretrained writes save_lm's folder, from_pretrained
    reads load_lm's (both ways), from a folder or a cached hub id."""
    from codec.hub import LMHubMixin
    from tokenlm.ar import ARModel
    from tokenlm.errors import LMError
    from tokenlm.nar import NARModel
    from tokenlm.pretrained import load_lm, save_lm
    from tokenlm.text import default_vocab

    cls, other = (ARModel, NARModel) if kind == "ar" else (NARModel, ARModel)
    assert issubclass(cls, LMHubMixin)
    vocab = default_vocab()
    model = _tiny_lm(cls, vocab)
    with pytest.raises(LMError, match="vocabulary"):
        model.save_pretrained(tmp_path / "none")
    model.info = {"vocab": vocab.to_dict(), "codec": {"name": "tiny-16k"}, "extra": {"step": 7}}
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["format"] == "tokenwave-lm" and config["kind"] == kind and config["extra"] == {"step": 7}
    card = (tmp_path / "m" / "README.md").read_text()
    assert "library_name: tokenwave" in card and "text-to-speech" in card and "token language model" in card

    loaded = cls.from_pretrained(tmp_path / "m")
    again, loaded_vocab = load_lm(tmp_path / "m", kind=kind)  # the same folder through load_lm
    assert type(loaded) is cls and not loaded.training and loaded_vocab.to_dict() == vocab.to_dict()
    assert loaded.info["codec"] == {"name": "tiny-16k"} and loaded.info["extra"] == {"step": 7}
    assert _same_weights(loaded, again)
    # float16 on disk: the reloaded weights are the original ones rounded
    assert all(torch.equal(b, a.half().float()) for a, b in zip(model.state_dict().values(),
                                                                loaded.state_dict().values()))
    # the other direction: a save_lm folder loads with from_pretrained, and a loaded model saves again
    save_lm(again, tmp_path / "by_save_lm", vocab, codec={"name": "tiny-16k"})
    assert _same_weights(cls.from_pretrained(tmp_path / "by_save_lm"), again)
    loaded.save_pretrained(tmp_path / "resaved")
    assert load_file(tmp_path / "resaved" / "model.safetensors").keys() == load_file(
        tmp_path / "m" / "model.safetensors").keys()
    assert _same_weights(load_lm(tmp_path / "resaved")[0], again)

    with pytest.raises(LMError, match=f"holds a {kind} model, a {other.kind} model is needed"):
        other.from_pretrained(tmp_path / "m")
    _fake_hub_cache(tmp_path / "hub", f"someone/tiny-{kind}", loaded)
    cached = cls.from_pretrained(f"someone/tiny-{kind}", local_files_only=True, cache_dir=tmp_path / "hub")
    assert _same_weights(cached, again)
    with pytest.raises(ModelError, match="someone/absent"):
        cls.from_pretrained("someone/absent", local_files_only=True, cache_dir=tmp_path / "hub")


def test_lm_from_pretrained_refuses_tampered_weights(tmp_path):
    from tokenlm.ar import ARModel
    from tokenlm.errors import LMError
    from tokenlm.text import default_vocab

    model = _tiny_lm(ARModel, default_vocab())
    model.info = {"vocab": default_vocab().to_dict()}
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(LMError, match="sha256"):
        ARModel.from_pretrained(tmp_path / "m")


def test_lm_push_to_hub_uploads_the_lm_folder(tmp_path, monkeypatch):
    """push_to_hub on a NAR model with the hub client replaced by a recorder (no network)."""
    from huggingface_hub import hub_mixin

    from tokenlm.nar import NARModel
    from tokenlm.pretrained import load_lm
    from tokenlm.text import default_vocab

    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploads.append({p.name: p.read_bytes() for p in sorted(folder_path.iterdir())})
            return f"https://huggingface.co/{repo_id}/commit/fake"

    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    model = _tiny_lm(NARModel, default_vocab(), seed=1)
    model.info = {"vocab": default_vocab().to_dict()}
    assert model.push_to_hub("someone/nar", token="hf_fake").endswith("/commit/fake")
    (files,) = uploads
    assert set(files) == {"README.md", "config.json", "model.safetensors"}
    (tmp_path / "pulled").mkdir()
    for name, data in files.items():
        (tmp_path / "pulled" / name).write_bytes(data)
    pulled, _ = load_lm(tmp_path / "pulled", kind="nar")
    assert _same_weights(pulled, NARModel.from_pretrained(tmp_path / "pulled"))
