"""Offline English speech recognition with pocketsphinx 5 (CMU Sphinx, BSD licence).

Used twice: by :mod:`tts.evaluate` to measure intelligibility (word error rate of synthesised
speech), and by :mod:`tts.synthesizer` to transcribe a voice prompt given without its
transcript. The decoder ships its own US English acoustic model, language model and
dictionary; it reads 16 kHz 16-bit mono samples. pocketsphinx is an optional dependency
(``pip install 'tokenwave[eval]'``): :func:`available` says whether it can be imported.

Speed on our 2-core machine: about 0.4 s of CPU per second of speech (see the README).
"""

from __future__ import annotations

import numpy as np

from tts.errors import TTSError

ASR_RATE = 16_000


def available() -> bool:
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        return False
    return True


class Recognizer:
    """``transcribe(wav [N] float, sample_rate) -> str`` (lower-case words, no punctuation)."""

    def __init__(self):
        try:
            from pocketsphinx import Decoder
        except ImportError:
            raise TTSError("speech recognition needs pocketsphinx: pip install 'tokenwave[eval]'") from None
        self.decoder = Decoder(samprate=ASR_RATE, loglevel="FATAL")

    def transcribe(self, wav: np.ndarray, sample_rate: int) -> str:
        from codec.audio import resample

        wav = resample(np.asarray(wav, dtype=np.float32).reshape(-1), sample_rate, ASR_RATE)
        pcm = np.round(np.clip(wav, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        # A fresh feature state (live cepstral mean normalisation) for every utterance: otherwise the
        # words found depend on what was decoded before (measured: the same recording, three results).
        self.decoder.reinit_feat()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""
