"""Audio continuation without text (``tokenwave continue PROMPT.wav --seconds S -o OUT.wav``).

1. The prompt (any format, rate and channel count; downmixed, resampled) is encoded with the
   codec at the NAR's number of codebooks K: codes ``[K, Tp]``. Only frames that lie wholly
   inside the prompt are kept (``Tp = N // hop``): the last, partly zero-padded frame would
   tell the model the sound fades out.
2. The AR model, in text-free mode (no phonemes), continues the prompt's first layer by exactly
   the frames the requested length needs (eos is masked until then), sampling with
   temperature / top-k / top-p / repetition-aware resampling (:mod:`tokenlm.sampling`).
3. The NAR model fills layers 2..K of the new frames, conditioned on the prompt's codes.
4. Prompt and continuation codes are decoded together, so the decoder runs through the seam.
   The output is the original prompt followed by ``seconds`` of decoded continuation, with a
   one-frame crossfade from the prompt into the decoded signal just before the seam; it is
   written atomically at the codec's sample rate.

The models condition on at most ``prompt_seconds`` (default 10 s) of the prompt's end, and the
conditioning plus the continuation must fit the models' ``max_frames`` (30 s at 50 Hz for the
default config): longer continuations are refused with the limit in the message.

Default models: ``lm-ar`` and ``lm-nar`` in the weights folders (``$TOKENWAVE_WEIGHTS``, the
repository's ``weights/``). The models must have been trained on the codes of the codec used
here (the codec fingerprint stored in their export is checked).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from codec.errors import TokenwaveError
from tokenlm.errors import LMError

DEFAULT_AR = "lm-ar"
DEFAULT_NAR = "lm-nar"
DEFAULT_CODEC = "speech-16k"


def find_model_dir(given: str | None, default_name: str, what: str) -> Path:
    """``given`` (a folder) or the first ``default_name`` folder in the weights folders."""
    from codec.pretrained import weights_dirs

    if given:
        folder = Path(given)
        if not folder.is_dir():
            raise LMError(f"{what} model folder {folder} does not exist")
        return folder
    for base in weights_dirs():
        if (base / default_name).is_dir():
            return base / default_name
    raise LMError(f"no {what} model: weights/{default_name} is missing; train one with "
                  f"`tokenwave train-lm --stage {what.lower()}` and pass --{what.lower()} RUN/export")


def load_models(ar_dir: str | None = None, nar_dir: str | None = None, codec_name: str | None = None,
                device: str | torch.device = "cpu"):
    """``(ar, nar, codec)``: the LMs and the codec they were trained with (fingerprints checked)."""
    import codec as codec_package
    from tokenlm.pretrained import load_lm

    ar, _ = load_lm(find_model_dir(ar_dir, DEFAULT_AR, "AR"), kind="ar", device=device)
    nar, _ = load_lm(find_model_dir(nar_dir, DEFAULT_NAR, "NAR"), kind="nar", device=device)
    ar_codec, nar_codec = ar.info.get("codec", {}), nar.info.get("codec", {})
    if ar_codec.get("fingerprint") and nar_codec.get("fingerprint") and ar_codec["fingerprint"] != nar_codec["fingerprint"]:
        raise LMError("the AR and NAR models were trained on codes of different codecs")
    name = codec_name or ar_codec.get("name") or DEFAULT_CODEC
    model = codec_package.load(name)
    for lm, info in ((ar, ar_codec), (nar, nar_codec)):
        expected = info.get("fingerprint")
        if expected and expected != model.codes_fingerprint:
            raise LMError(f"the {lm.kind.upper()} model was trained on codes of codec {info.get('name', '?')} "
                          f"({expected}), not {model.name} ({model.codes_fingerprint}); pass --codec")
        if lm.config.codebook_size != model.codebook_size:
            raise LMError(f"the {lm.kind.upper()} model uses {lm.config.codebook_size} codes per codebook, "
                          f"codec {model.name} {model.codebook_size}")
    if nar.config.n_codebooks > model.max_codebooks:
        raise LMError(f"the NAR model fills {nar.config.n_codebooks} codebooks, codec {model.name} has "
                      f"{model.max_codebooks}")
    return ar, nar, model


def continue_audio(wav: np.ndarray, sample_rate: int, seconds: float, ar, nar, codec_model, sampling=None,
                   seed: int = 0, prompt_seconds: float = 10.0, progress: bool = False,
                   nar_temperature: float | None = 0.5) -> np.ndarray:
    """Prompt ``wav`` (float ``[N]`` or ``[1, N]`` at ``sample_rate``) + ``seconds`` of continuation
    -> float32 ``[N' + round(seconds * codec rate)]`` at ``codec_model.sample_rate`` (N' = the
    prompt's length at that rate). The NAR's layers are decoded as expected code vectors at
    ``nar_temperature`` (as the TTS does, :func:`tokenlm.generate.nar_fill_expected`), or as its
    argmax codes when it is None or the codec cannot decode vectors."""
    from codec.audio import resample
    from tokenlm.generate import generate_ar, nar_fill, nar_fill_expected
    from tokenlm.sampling import SamplingConfig

    if not (math.isfinite(seconds) and seconds > 0):
        raise LMError(f"--seconds must be a positive number, got {seconds}")
    wav = np.asarray(wav, dtype=np.float32).reshape(1, -1)
    rate = codec_model.sample_rate
    if sample_rate != rate:
        wav = resample(wav, sample_rate, rate)
    hop = round(rate / codec_model.frame_rate)
    N = wav.shape[-1]
    Tp = N // hop
    if Tp < 1:
        raise LMError(f"the prompt is too short: at least {hop} samples ({1000 * hop / rate:g} ms) are needed")
    K = nar.config.n_codebooks
    n_out = round(seconds * rate)
    T = math.ceil((N + n_out) / hop) - Tp + 1  # one frame more: the decoder finishes a frame with the next one
    context = min(Tp, max(0, round(prompt_seconds * codec_model.frame_rate)))
    limit = min(ar.config.max_frames, nar.config.max_frames)
    if T + 1 > limit:
        raise LMError(f"--seconds {seconds:g} is too long: the models continue at most "
                      f"{(limit - 2) / codec_model.frame_rate:g} s at once")
    context = min(context, limit - T)

    codes = codec_model.encode(torch.from_numpy(wav), rate, bitrate=codec_model.codebooks_to_bitrate(K))[0]
    prompt = codes[:, :Tp].long().cpu()  # [K, Tp]: frames wholly inside the prompt
    condition = prompt[:, Tp - context:]  # [K, context]
    sampling = sampling or SamplingConfig()
    first = generate_ar(ar, None, prompt_codes=[condition[0]], sampling=sampling, seed=seed, max_frames=T,
                        min_frames=T, text_free=True, progress=progress)[0]
    if first.numel() != T:
        raise LMError(f"the AR model produced {first.numel()} frames instead of {T}")
    no_text = [torch.zeros(0, dtype=torch.long)]
    if nar_temperature is not None and hasattr(codec_model, "decode_vectors"):
        vectors = nar_fill_expected(nar, no_text, [condition], [first], codec_model.codebook_tables(), nar_temperature,
                                    K, progress=progress)[1][0]
        known = codec_model.code_vectors(prompt[None], min_frames=1)[0].float().cpu()
        decoded = codec_model.decode_vectors(torch.cat([known, vectors])[None], length=N + n_out)
    else:
        new = nar_fill(nar, no_text, [condition], [first], K, progress=progress)[0]
        decoded = codec_model.decode(torch.cat([prompt, new], dim=1)[None], length=N + n_out)
    decoded = decoded.detach().to("cpu", torch.float32).numpy().reshape(-1)
    out = decoded.copy()
    out[:N] = wav[0]
    fade = min(hop, N)
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)
    out[N - fade : N] = wav[0, N - fade :] * (1 - ramp) + decoded[N - fade : N] * ramp
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="audio to continue (WAV/FLAC/OGG/AIFF, any rate and channel count)")
    parser.add_argument("--seconds", type=float, required=True, help="length of the continuation")
    parser.add_argument("-o", "--output", required=True, help="output .wav/.flac: prompt + continuation")
    parser.add_argument("--ar", help=f"AR model folder (default: weights/{DEFAULT_AR})")
    parser.add_argument("--nar", help=f"NAR model folder (default: weights/{DEFAULT_NAR})")
    parser.add_argument("--codec", help="codec name or folder (default: the one the models were trained with)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=50, help="0: off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1: off")
    parser.add_argument("--nar-decoding", choices=["expected", "argmax"], default="expected",
                        help="decoder input of layers 2..K: expected code vectors under the NAR (default) or its "
                             "argmax codes")
    parser.add_argument("--prompt-seconds", type=float, default=10.0,
                        help="condition on at most this much of the prompt's end (default 10)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                        help="where the LMs run (default cpu; auto: CUDA when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")


def main(args: argparse.Namespace) -> int:
    from codec.audio import load_audio, write_audio
    from codec.distributed import resolve_device
    from tokenlm.sampling import SamplingConfig

    target = Path(args.output)
    if target.exists() and not args.force:
        raise TokenwaveError(f"{target} exists; use --force to overwrite")
    if args.threads:
        torch.set_num_threads(args.threads)
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    ar, nar, codec_model = load_models(args.ar, args.nar, args.codec, resolve_device(args.device))
    wav, rate = load_audio(args.prompt, codec_model.sample_rate)
    began = time.time()
    out = continue_audio(wav, rate, args.seconds, ar, nar, codec_model, sampling, args.seed, args.prompt_seconds,
                         progress=sys.stderr.isatty(), nar_temperature=0.5 if args.nar_decoding == "expected" else None)
    write_audio(target, out[None], codec_model.sample_rate)
    prompt_seconds = wav.shape[-1] / rate
    print(f"{args.prompt} -> {target}: {prompt_seconds:.2f} s prompt + {args.seconds:g} s continuation "
          f"({codec_model.name}, {nar.config.n_codebooks} codebooks) in {time.time() - began:.1f} s")
    return 0
