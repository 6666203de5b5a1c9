"""``tokenwave bench-lm``: speed of the token LMs on this machine.

Scenario: TTS of ``--seconds`` of speech (50 frames/s) with a 3 s voice prompt, 12 phonemes
per second of speech, batch 1. Measured:

- AR tokens/s with the KV cache over the whole utterance;
- AR tokens/s with and without the cache at the full context (phonemes, prompt and all but
  the last 10 frames; the cost of 10 more steps, best of 3, so the one-off prefill does not
  count; without a cache every step recomputes the whole sequence);
- NAR time per layer (layers 1..K-1, one pass each);
- RTF = (AR + NAR time) / audio seconds; the codec's decode time is reported on its own.

Uses the models of ``--model-dir`` (a folder with ``ar/`` and ``nar/`` exports, or one export;
the missing kind is random) and otherwise random models with the default :class:`LMConfig`.
Token choice does not change the cost: generation is forced to the exact length (eos masked).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from tokenlm.ar import ARModel
from tokenlm.config import LMConfig
from tokenlm.errors import LMError
from tokenlm.generate import generate_ar, nar_fill
from tokenlm.nar import NARModel
from tokenlm.sampling import SamplingConfig

FRAME_RATE = 50
PHONEMES_PER_SECOND = 12
PROMPT_SECONDS = 3.0
CONTEXT_STEPS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir", help="folder with ar/ and nar/ (or lm-ar/ and lm-nar/, as weights/) LM exports, or one export "
        "(default: random models of the default size)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="seconds of speech to generate (default 10)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement, the median is reported")
    parser.add_argument(
        "--codec", default="speech-16k", help="codec whose decode time is reported (default speech-16k)"
    )
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    parser.add_argument(
        "--config",
        default="",
        help="LMConfig changes for the random models, e.g. 'n_layers=4,d_model=192' (for sizing)",
    )


def parse_config(text: str) -> LMConfig:
    """``"key=value,key=value"`` -> an :class:`LMConfig` with those changes to the defaults."""
    changes: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise LMError(f"--config: expected key=value, got {item!r}")
        try:
            changes[key.strip()] = float(value) if "." in value else int(value)
        except ValueError:
            raise LMError(f"--config: {key.strip()} needs a number, got {value!r}") from None
    return LMConfig.from_dict(LMConfig().to_dict() | changes) if changes else LMConfig()


def load_models(model_dir: str | None, config: LMConfig | None = None) -> tuple[ARModel, NARModel, str]:
    """AR and NAR models from ``model_dir``; random models with ``config`` (default
    :class:`LMConfig`) for what is missing."""
    from tokenlm.pretrained import CONFIG_FILE, load_lm, read_lm_info

    found: dict = {}
    if model_dir:
        root = Path(model_dir)
        folders = ([root] if (root / CONFIG_FILE).is_file()
                   else [root / "ar", root / "nar", root / "lm-ar", root / "lm-nar"])
        for folder in folders:
            if (folder / CONFIG_FILE).is_file():
                found[read_lm_info(folder)["kind"]] = load_lm(folder)[0]
        if not found:
            raise LMError(f"no LM export (config.json + model.safetensors) in {model_dir} or its ar/, nar/, lm-ar/, lm-nar/")
    torch.manual_seed(0)
    config = config or LMConfig()
    ar = found.get("ar") or ARModel(config).eval()
    nar = found.get("nar") or NARModel(config).eval()
    source = ", ".join(f"{k}: {'loaded' if k in found else 'random'}" for k in ("ar", "nar"))
    return ar, nar, source


def _timed(fn, repeats: int) -> tuple[float, float]:
    """``(wall, process CPU)`` seconds of the median of ``repeats`` runs (by wall time)."""
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return sorted(runs)[len(runs) // 2]


def run_bench(ar: ARModel, nar: NARModel, seconds: float, repeats: int = 1) -> dict:
    gen = torch.Generator().manual_seed(0)
    frames = max(1, round(seconds * FRAME_RATE))
    prompt_frames = round(PROMPT_SECONDS * FRAME_RATE)
    n_ph = max(1, round((seconds + PROMPT_SECONDS) * PHONEMES_PER_SECOND))
    phonemes = torch.randint(2, min(ar.config.n_phonemes, nar.config.n_phonemes), (n_ph,), generator=gen)
    K = nar.config.n_codebooks
    prompt = torch.randint(0, nar.config.codebook_size, (K, prompt_frames), generator=gen)
    greedy = SamplingConfig(temperature=0)
    sampled = SamplingConfig()

    def ar_run(prompt_first, steps, use_cache, sampling=greedy):
        return generate_ar(
            ar, [phonemes], [prompt_first], sampling, max_frames=steps, min_frames=steps, use_cache=use_cache
        )[0]

    first = ar_run(prompt[0], frames, True)
    ar_time, ar_cpu = _timed(lambda: ar_run(prompt[0], frames, True, sampled), repeats)
    # per-token cost at the full context: (S + 1 steps) - (1 step), so the prefill does not count
    context = torch.cat([prompt[0], first])[: prompt_frames + max(0, frames - CONTEXT_STEPS)]

    def per_token(use_cache: bool) -> float:
        runs = max(3, repeats)
        one = min(_timed(lambda: ar_run(context, 1, use_cache), 1)[0] for _ in range(runs))
        more = min(_timed(lambda: ar_run(context, CONTEXT_STEPS + 1, use_cache), 1)[0] for _ in range(runs))
        return max(more - one, 1e-9) / CONTEXT_STEPS

    cached_token, uncached_token = per_token(True), per_token(False)
    nar_time, nar_cpu = _timed(lambda: nar_fill(nar, [phonemes], [prompt], [first], K), repeats)
    nar_bf16, nar_bf16_cpu = _timed(
        lambda: nar_fill(nar, [phonemes], [prompt], [first], K, autocast_dtype=torch.bfloat16), repeats
    )
    return {
        "seconds": seconds,
        "frames": frames,
        "prompt_frames": prompt_frames,
        "phonemes": n_ph,
        "ar_parameters": ar.num_parameters(),
        "nar_parameters": nar.num_parameters(),
        "ar_time_s": ar_time,
        "ar_tokens_per_s": frames / ar_time,
        "ar_context_frames": int(context.numel()),
        "ar_cached_tokens_per_s_at_context": 1 / cached_token,
        "ar_uncached_tokens_per_s_at_context": 1 / uncached_token,
        "kv_cache_speedup_at_context": uncached_token / cached_token,
        "nar_time_s": nar_time,
        "nar_time_per_layer_s": nar_time / max(1, K - 1),
        "rtf_lm": (ar_time + nar_time) / seconds,
        "nar_bf16_time_s": nar_bf16,
        "rtf_lm_nar_bf16": (ar_time + nar_bf16) / seconds,
        "cpu_s": {"ar": ar_cpu, "nar": nar_cpu, "nar_bf16": nar_bf16_cpu},
    }


def codec_decode_time(name: str, codes_shape: tuple[int, int, int], repeats: int) -> tuple[str, float] | None:
    try:
        import codec

        model = codec.load(name)
    except Exception:  # noqa: BLE001 - the codec number is optional in this benchmark
        return None
    codes = torch.randint(0, model.codebook_size, codes_shape)
    with torch.inference_mode():
        return model.name, _timed(lambda: model.decode(codes), repeats)[0]


def main(args: argparse.Namespace) -> int:
    if args.threads < 1 or args.seconds <= 0 or args.repeats < 1:
        raise LMError("--threads and --repeats must be >= 1 and --seconds > 0")
    torch.set_num_threads(args.threads)
    ar, nar, source = load_models(args.model_dir, parse_config(args.config))
    result = run_bench(ar, nar, args.seconds, args.repeats)
    decode = codec_decode_time(args.codec, (1, nar.config.n_codebooks, result["frames"]), args.repeats)
    result |= {"threads": args.threads, "models": source, "load_average": os.getloadavg()[0]}
    if decode:
        result |= {
            "codec": decode[0],
            "codec_decode_s": decode[1],
            "rtf_total": result["rtf_lm"] + decode[1] / args.seconds,
        }
    print(report(result, ar.config, nar.config.n_codebooks - 1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def report(r: dict, config: LMConfig, nar_layers: int) -> str:
    """The numbers of :func:`run_bench` (plus ``main``'s additions) as readable lines."""
    cpu, per_layer_bf16 = r["cpu_s"], r["nar_bf16_time_s"] / max(1, nar_layers)
    lm_seconds = r["ar_time_s"] + r["nar_time_s"]
    lines = [
        f"models: {r['models']}; parameters: AR {r['ar_parameters'] / 1e6:.2f} M, "
        + f"NAR {r['nar_parameters'] / 1e6:.2f} M (d_model {config.d_model}, {config.n_layers} layers, "
        + f"{config.n_heads} heads)",
        f"scenario: {r['seconds']:g} s of speech ({r['frames']} frames) after a {PROMPT_SECONDS:g} s prompt, "
        + f"{r['phonemes']} phonemes, batch 1, {r['threads']} threads",
        f"AR with KV cache, whole utterance: {r['ar_tokens_per_s']:.1f} tokens/s ({r['ar_time_s']:.2f} s)",
        f"AR at the full context ({r['ar_context_frames']} frames): cached "
        + f"{r['ar_cached_tokens_per_s_at_context']:.1f} tokens/s, uncached "
        + f"{r['ar_uncached_tokens_per_s_at_context']:.1f} tokens/s: KV cache "
        + f"{r['kv_cache_speedup_at_context']:.1f}x faster",
        f"NAR: {r['nar_time_per_layer_s'] * 1000:.0f} ms per layer, {r['nar_time_s']:.2f} s for {nar_layers} "
        + f"layers; under bfloat16 autocast {per_layer_bf16 * 1000:.0f} ms per layer",
        f"LM RTF (AR + NAR): {r['rtf_lm']:.3f} ({lm_seconds:.2f} s for {r['seconds']:g} s); "
        + f"with the bfloat16 NAR {r['rtf_lm_nar_bf16']:.3f}",
        f"process CPU seconds (all threads): AR {cpu['ar']:.2f}, NAR {cpu['nar']:.2f}, "
        + f"NAR bf16 {cpu['nar_bf16']:.2f}; load average {r['load_average']:.1f} on {os.cpu_count()} CPUs "
        + "(other work slows every number)",
    ]
    if "codec_decode_s" in r:
        lines.append(
            f"codec decode ({r['codec']}): {r['codec_decode_s']:.3f} s; total RTF {r['rtf_total']:.3f}"
        )
    return "\n".join(lines)
