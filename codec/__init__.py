"""tokenwave codec: audio -> discrete tokens -> audio.

    import codec
    model = codec.load("speech-16k")
    codes = model.encode(wav, sample_rate, bitrate=6)   # [B, K, T] int64
    wav = model.decode(codes)                           # [B, 1, N]
"""

from codec.config import CodecConfig
from codec.errors import AudioError, ModelError, TokenFileError, TokenwaveError
from codec.interface import AudioCodec
from codec.model import CodecModel
from codec.pretrained import available_models, load, save_pretrained

__all__ = [
    "AudioCodec",
    "AudioError",
    "CodecConfig",
    "CodecModel",
    "ModelError",
    "TokenFileError",
    "TokenwaveError",
    "available_models",
    "load",
    "save_pretrained",
]
