"""Hugging Face hub interop: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` on our models.

The classes here are ``huggingface_hub.ModelHubMixin`` with our own on-disk format instead of
the mixin's default, so that a folder written by ``model.save_pretrained(dir)`` is exactly what
:func:`codec.load` and :func:`codec.pretrained.load_pretrained` read (and the reverse):
``model.safetensors`` (float16 weights) and ``config.json`` (config fields plus
``weights_sha256``, checked on load), plus the hub's ``README.md`` model card when none is there.
Nothing is pickled.

    model = CodecModel.from_pretrained("weights/speech-16k")   # a folder, or a hub id
    model.save_pretrained("out/my-codec")                      # == codec.save_pretrained(model, ...)
    model.push_to_hub("me/my-codec")                           # needs a network and `hf auth login`

``from_pretrained`` behaves as everywhere in the Hugging Face world: a folder is read as is; a hub
id (``owner/name``) comes from the local cache, and is downloaded when it is not there, unless
``local_files_only=True`` (the tokenwave command line never downloads: ``--model owner/name``
goes through :func:`codec.load`, which reads the local cache only). Failures are
:class:`codec.errors.ModelError` with one line.

A model class gets the mixin by listing it as a base: :class:`CodecHubMixin` for
``codec.model.CodecModel``, :class:`LMHubMixin` for the token LMs (``class ARModel(nn.Module,
LMHubMixin)``). A new kind of model defines the two hooks ``_save_folder(self, folder)`` and
``_load_folder(cls, folder)`` of :class:`HubMixin`.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import ModelHubMixin, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

from codec.errors import ModelError

CODEC_CARD = """---
{{ card_data }}
---

# tokenwave codec

A tokenwave neural audio codec: audio -> residual vector quantizer tokens -> audio.
Float16 `model.safetensors` and `config.json` (with the weights' SHA-256, checked on load).

```python
import codec

model = codec.load("owner/name")                    # this repository, from the local Hugging Face cache
codes = model.encode(wav, sample_rate, bitrate=6)   # [B, K, T]
audio = model.decode(codes)                         # [B, 1, N]
```

or `CodecModel.from_pretrained(...)`; on the command line `tokenwave compress x.wav -o x.tok --model owner/name`.
"""


LM_CARD = """---
{{ card_data }}
---

# tokenwave token language model

A tokenwave VALL-E-style token LM over the codes of a tokenwave codec: the autoregressive model of
the first RVQ layer (`kind: ar`) or the non-autoregressive model of layers 2..K (`kind: nar`), as
named in `config.json`. Float16 `model.safetensors` and `config.json` (LM config, phoneme
vocabulary, codec info, the weights' SHA-256, checked on load).

```python
import tts
from tokenlm.ar import ARModel

model = ARModel.from_pretrained("owner/name")            # this repository (or NARModel for a NAR one)
synth = tts.load(ar="path/to/ar", nar="path/to/nar")    # both models of a pair, as folders
audio, sr = synth.synthesize("Hello there.", voice="kathleen")
```
"""


def resolve_folder(model_id: str | Path, files: tuple[str, ...], *, revision: str | None = None,
                   cache_dir: str | Path | None = None, force_download: bool = False,
                   local_files_only: bool = False, token: str | bool | None = None) -> Path:
    """A local folder holding ``files``: ``model_id`` itself when it is a folder, else the
    snapshot of hub repository ``model_id`` (from the cache; downloaded unless ``local_files_only``)."""
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        return folder
    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE")  # read at call time, as codec.load does
    try:
        return Path(snapshot_download(
            str(model_id), revision=revision, cache_dir=cache_dir, force_download=force_download,
            local_files_only=local_files_only, token=token, allow_patterns=list(files),
        ))
    except (LocalEntryNotFoundError, HFValidationError, HfHubHTTPError, OSError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        where = "in the local Hugging Face cache" if local_files_only else "locally or on the hub"
        raise ModelError(f"{model_id!r} is neither a folder nor a hub repository found {where} ({detail})") from None


class HubMixin(ModelHubMixin):
    """``ModelHubMixin`` saving and loading through ``_save_folder`` / ``_load_folder`` hooks."""

    hub_files: tuple[str, ...] = ("model.safetensors", "config.json")
    """The files a saved model consists of (downloaded from the hub; the model card is not needed)."""

    def _save_folder(self, folder: Path) -> None:
        raise NotImplementedError

    @classmethod
    def _load_folder(cls, folder: Path):
        raise NotImplementedError

    def _save_pretrained(self, save_directory: Path) -> None:
        self._save_folder(Path(save_directory))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """A model from a folder or a hub id (see the module docstring); ModelError if not found."""
        kwargs["cache_dir"] = kwargs.get("cache_dir") or os.environ.get("HF_HUB_CACHE")
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (LocalEntryNotFoundError, HFValidationError, HfHubHTTPError) as error:
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ModelError(f"cannot load {str(pretrained_model_name_or_path)!r}: {detail}") from None

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         **model_kwargs):
        # model_kwargs holds the mixin's reading of config.json; our loader reads and checks it itself.
        folder = resolve_folder(model_id, cls.hub_files, revision=revision, cache_dir=cache_dir,
                                force_download=force_download, local_files_only=local_files_only, token=token)
        return cls._load_folder(folder)


class CodecHubMixin(
    HubMixin,
    library_name="tokenwave",
    license="mit",
    pipeline_tag="audio-to-audio",
    tags=["tokenwave", "audio-codec", "neural-audio-codec", "residual-vector-quantization"],
    model_card_template=CODEC_CARD,
):
    """The hub mixin of :class:`codec.model.CodecModel` (our ``model.safetensors`` + ``config.json``)."""

    def _save_folder(self, folder: Path) -> None:
        from codec.pretrained import save_pretrained

        save_pretrained(self, folder)

    @classmethod
    def _load_folder(cls, folder: Path):
        from codec.pretrained import load_pretrained

        model = load_pretrained(folder)
        if not isinstance(model, cls):
            raise ModelError(f"{folder} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


class LMHubMixin(
    HubMixin,
    library_name="tokenwave",
    license="mit",
    pipeline_tag="text-to-speech",
    tags=["tokenwave", "text-to-speech", "codec-language-model", "vall-e"],
    model_card_template=LM_CARD,
):
    """The hub mixin of the token LMs (``tokenlm.ar.ARModel`` / ``tokenlm.nar.NARModel``): the
    folders of :func:`tokenlm.pretrained.save_lm` / ``load_lm``. Saving needs the phoneme
    vocabulary, which a loaded model keeps in ``model.info["vocab"]``; a freshly built one needs
    ``model.info = {"vocab": vocab.to_dict()}`` (optionally with ``"codec"`` and ``"extra"``).
    A folder that is not a good LM of this kind raises :class:`tokenlm.errors.LMError`, as
    ``load_lm`` does; a hub id found nowhere, :class:`codec.errors.ModelError`."""

    def _save_folder(self, folder: Path) -> None:
        from tokenlm.errors import LMError
        from tokenlm.pretrained import save_lm

        info = getattr(self, "info", None) or {}
        if "vocab" not in info:
            raise LMError("save_pretrained needs the phoneme vocabulary: set model.info = {'vocab': vocab.to_dict()}")
        save_lm(self, folder, info["vocab"], extra=info.get("extra"), codec=info.get("codec"))

    @classmethod
    def _load_folder(cls, folder: Path):
        from tokenlm.pretrained import load_lm

        model, _ = load_lm(folder, kind=getattr(cls, "kind", None))
        if not isinstance(model, cls):
            raise ModelError(f"{folder} holds a {type(model).__name__}, not a {cls.__name__}")
        return model
