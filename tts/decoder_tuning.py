"""Fine-tune the codec's decoder on what the TTS feeds it: the NAR's expected code vectors.

The TTS decodes layer 1's code vectors plus, for layers 2..K, the expectation of the code
vectors under the NAR's softmax (:func:`tokenlm.generate.nar_fill_expected`). The codec's
decoder was trained on sums of real code vectors only; expected vectors lie elsewhere in its
input space (shrunk towards the codebooks' means wherever the NAR is unsure). As with vocoders
fine-tuned on a TTS model's predicted spectrograms ("ground-truth aligned" training), the decoder
is trained here on pairs (expected vectors under a training utterance's real first layer, that
utterance's real audio), which are frame-aligned because the NAR keeps the real layer's timing.

1. **Pairs** (:func:`build_pairs`, ``OUT/pairs.safetensors``, kept between runs): every
   utterance with text of the shards' train split (of ``speakers``, when given; at most
   ``max_frames`` frames) and up to ``dev_utterances`` of the dev split. The NAR fills layers
   2..K under the real layer 1, with a prompt as the TTS gives it: another utterance of the same
   speaker of 2.5-5 s, its phonemes before the target's. Stored: the expected vectors float16
   ``[sumT, D]``, the real codes int16 ``[K, sumT]``, offsets, and per utterance its id,
   recording, speaker and split.
2. **Training** (:func:`tune_decoder`): batches of ``batch_size`` random crops of
   ``crop_frames`` frames, a fraction ``expected_fraction`` of them from the expected vectors
   and the rest from the real codes' vectors (the decoder keeps decoding real codes: it is still
   the codec's decoder), each against the recording's samples of those frames; the codec's
   spectral loss (:class:`codec.losses.SpectralLoss`, with its compressed complex term); AdamW,
   linear warm-up then cosine; checkpoints (weights-only, atomic) every ``checkpoint_every``
   steps, ``--resume``; dev losses of both inputs every ``eval_every`` steps in ``OUT/log.jsonl``
   and TensorBoard. ``OUT/export/`` is a codec folder: the same token space (fingerprints
   unchanged, so every token file and LM still fits) with the tuned decoder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tts.errors import TTSError

PAIRS_FILE = "pairs.safetensors"
PROMPT_FRAMES = (125, 250)  # 2.5-5 s prompts, as the built-in voices (3.6 and 4.2 s)


@dataclass
class TuningConfig:
    shards: str
    out_dir: str
    nar: str | None = None  # NAR folder (default weights/lm-nar)
    codec: str | None = None  # codec name or folder (default: the NAR's)
    speakers: tuple = ()  # only these speakers' utterances (default: all with text)
    temperature: float = 0.5  # of the expected vectors, as the TTS decodes them
    max_frames: int = 500
    dev_utterances: int = 48
    steps: int = 1000
    batch_size: int = 16
    crop_frames: int = 50
    expected_fraction: float = 0.5
    lr: float = 1e-4
    warmup_steps: int = 50
    complex_loss_weight: float = 1.0
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    eval_every: int = 100
    seed: int = 0
    resume: bool = False

    def __post_init__(self):
        if not 0.0 <= self.expected_fraction <= 1.0:
            raise TTSError(f"expected_fraction must be in [0, 1], got {self.expected_fraction}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise TTSError(f"temperature must be > 0, got {self.temperature}")
        if min(self.steps, self.batch_size, self.checkpoint_every, self.eval_every, self.max_frames) < 1:
            raise TTSError("steps, batch_size, checkpoint_every, eval_every and max_frames must be >= 1")
        if self.crop_frames < 4 or not (math.isfinite(self.lr) and self.lr > 0) or self.warmup_steps < 0:
            raise TTSError("crop_frames must be >= 4, lr > 0 and warmup_steps >= 0")


@dataclass
class Pairs:
    """Expected vectors ``[sumT, D]`` (float32), real codes ``[K, sumT]``, ``offsets [N + 1]`` and
    per utterance ``items`` (id, source, speaker, split, frames)."""

    vectors: torch.Tensor
    codes: torch.Tensor
    offsets: np.ndarray
    items: list[dict]

    def rows(self, split: str) -> list[int]:
        return [i for i, item in enumerate(self.items) if item["split"] == split]


# ---------------------------------------------------------------------------------------------
# Pairs


def _prompt_for(utterance, candidates: list, rng: np.random.Generator):
    others = [c for c in candidates if c.id != utterance.id]
    return others[int(rng.integers(len(others)))] if others else None


def build_pairs(config: TuningConfig, nar, codec_model, progress: bool = True, batch: int = 8) -> Pairs:
    """Run the NAR over the selected utterances (module docstring, step 1) and return the pairs."""
    from tokenlm.generate import nar_fill_expected
    from tokenlm.shards import read_corpus

    corpus = read_corpus(config.shards)
    fingerprint = corpus.codec_info.get("fingerprint")
    if fingerprint != codec_model.codes_fingerprint:
        raise TTSError(f"the shards in {config.shards} hold codes of codec {corpus.codec_info.get('name')} "
                       f"({fingerprint}), not of {codec_model.name} ({codec_model.codes_fingerprint})")
    K = nar.config.n_codebooks
    wanted = set(config.speakers)
    usable = [u for u in corpus.utterances if len(u.phonemes) and 0 < u.num_frames <= config.max_frames
              and u.codes.shape[0] >= K and (not wanted or u.speaker in wanted)]
    if wanted - {u.speaker for u in usable}:
        raise TTSError(f"no usable utterances of speaker(s) {', '.join(sorted(wanted - {u.speaker for u in usable}))}")
    rng = np.random.default_rng(config.seed)
    dev = [u for u in usable if u.split == "dev"]
    dev = [dev[i] for i in sorted(rng.permutation(len(dev))[: config.dev_utterances])]
    chosen = [u for u in usable if u.split == "train"] + dev
    if not any(u.split == "train" for u in chosen):
        raise TTSError(f"no train-split utterances with text in {config.shards}")
    prompts: dict[str, list] = {}
    for u in usable:
        if PROMPT_FRAMES[0] <= u.num_frames <= PROMPT_FRAMES[1]:
            prompts.setdefault((u.speaker, u.split), []).append(u)
    chosen.sort(key=lambda u: u.num_frames)
    tables = codec_model.codebook_tables()
    vectors, codes, items = [], [], []
    bar = tqdm(total=len(chosen), desc="expected vectors", unit="utt", disable=not progress, file=sys.stderr)
    for start in range(0, len(chosen), batch):
        rows = chosen[start : start + batch]
        picked = [_prompt_for(u, prompts.get((u.speaker, u.split), []), rng) for u in rows]
        phonemes = [torch.from_numpy(np.concatenate([p.phonemes if p is not None else u.phonemes[:0], u.phonemes])
                                     .astype(np.int64)) for p, u in zip(picked, rows)]
        prompt_codes = [torch.from_numpy(p.codes[:K].astype(np.int64)) if p is not None
                        else torch.zeros(K, 0, dtype=torch.long) for p in picked]
        first = [torch.from_numpy(u.codes[0].astype(np.int64)) for u in rows]
        _, expected = nar_fill_expected(nar, phonemes, prompt_codes, first, tables, config.temperature, K)
        for u, v in zip(rows, expected):
            vectors.append(v.to(torch.float16))
            codes.append(torch.from_numpy(u.codes[:K].astype(np.int16)))
            items.append({"id": u.id, "source": u.source, "speaker": u.speaker, "split": u.split,
                          "frames": u.num_frames})
        bar.update(len(rows))
    bar.close()
    offsets = np.cumsum([0] + [v.shape[0] for v in vectors]).astype(np.int64)
    return Pairs(torch.cat(vectors).float(), torch.cat(codes, dim=1).long(), offsets, items)


def save_pairs(pairs: Pairs, path: Path, settings: dict) -> None:
    from safetensors.torch import save

    from codec.atomic import atomic_write_bytes

    tensors = {"vectors": pairs.vectors.to(torch.float16).contiguous(), "codes": pairs.codes.to(torch.int16).contiguous(),
               "offsets": torch.from_numpy(pairs.offsets)}
    atomic_write_bytes(path, save(tensors, metadata={"items": json.dumps(pairs.items), "settings": json.dumps(settings)}))


def load_pairs(path: Path, settings: dict, latent_dim: int, n_codebooks: int) -> Pairs | None:
    """The pairs in ``path`` if they were built with ``settings`` (else None); checked."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
            if json.loads(meta.get("settings", "null")) != settings:
                return None
            vectors, codes, offsets = (handle.get_tensor(name) for name in ("vectors", "codes", "offsets"))
            items = json.loads(meta["items"])
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as error:
        raise TTSError(f"{path} is damaged ({error}); delete it to rebuild the pairs") from None
    offsets = offsets.numpy()
    if (vectors.dim() != 2 or vectors.shape[1] != latent_dim or codes.shape != (n_codebooks, vectors.shape[0])
            or len(offsets) != len(items) + 1 or offsets[0] != 0 or offsets[-1] != vectors.shape[0]
            or (np.diff(offsets) < 0).any()):
        raise TTSError(f"{path} does not hold consistent pairs; delete it to rebuild them")
    return Pairs(vectors.float(), codes.long(), offsets, items)


# ---------------------------------------------------------------------------------------------
# Training


def _load_audio(pairs: Pairs, codec_model, progress: bool) -> list[np.ndarray | None]:
    """The recording of each pair at the codec's rate, or None where it is missing or does not
    have the pair's frame count (then the pair is left out, with a note)."""
    from codec.audio import load_audio
    from codec.errors import AudioError

    signals: list[np.ndarray | None] = []
    for item in tqdm(pairs.items, desc="audio", unit="file", disable=not progress, file=sys.stderr):
        try:
            wav, _ = load_audio(item["source"], codec_model.sample_rate, mono=True)
        except (AudioError, OSError) as error:
            tqdm.write(f"note: {item['source']}: {error}; left out", file=sys.stderr)
            signals.append(None)
            continue
        if codec_model.num_frames(wav.shape[-1]) != item["frames"]:
            tqdm.write(f"note: {item['source']} no longer matches its codes; left out", file=sys.stderr)
            signals.append(None)
            continue
        signals.append(wav[0])
    return signals


def draw_crops(pairs: Pairs, real: torch.Tensor, signals: list, rows: list[int], count: int, expected: int,
               frames: int, hop: int, valid: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` crops of ``frames`` frames (the first ``expected`` of them from the expected
    vectors, the rest from the real codes' vectors ``real``) -> (inputs ``[B, frames, D]``,
    target audio ``[B, 1, valid]``: the samples those frames decode to)."""
    inputs, targets = [], []
    for j in range(count):
        i = rows[int(rng.integers(len(rows)))]
        start = int(rng.integers(0, pairs.items[i]["frames"] - frames + 1))
        source = pairs.vectors if j < expected else real
        begin = int(pairs.offsets[i]) + start
        inputs.append(source[begin : begin + frames])
        audio = signals[i][start * hop : start * hop + valid]
        targets.append(np.pad(audio, (0, valid - len(audio))))
    return torch.stack(inputs), torch.from_numpy(np.stack(targets).astype(np.float32))[:, None]


def tune_decoder(config: TuningConfig, progress: bool = True) -> Path:
    """Build (or reuse) the pairs and fine-tune the decoder; returns ``OUT/export``."""
    import codec as codec_package
    from codec import checkpoints
    from codec.losses import SpectralLoss
    from codec.pretrained import save_pretrained
    from tokenlm.continuation import DEFAULT_NAR, find_model_dir
    from tokenlm.pretrained import load_lm

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nar, _ = load_lm(find_model_dir(config.nar, DEFAULT_NAR, "NAR"), kind="nar")
    codec_name = config.codec or nar.info.get("codec", {}).get("name")
    if not codec_name:
        raise TTSError("the NAR does not name its codec: pass --codec")
    model = codec_package.load(codec_name)
    if nar.info.get("codec", {}).get("fingerprint") not in (None, model.codes_fingerprint):
        raise TTSError(f"the NAR was trained on codes of another codec than {model.name}")
    initial_extras = _initial_extras(codec_name, model)
    checkpoint = checkpoints.resume_checkpoint(out, config.resume, required=("decoder", "optimizer", "step"))
    settings = {"shards": str(Path(config.shards).resolve()), "speakers": sorted(config.speakers),
                "temperature": config.temperature, "max_frames": config.max_frames,
                "dev_utterances": config.dev_utterances, "seed": config.seed, "nar": nar.info.get("weights_sha256", ""),
                "codes_fingerprint": model.codes_fingerprint}
    K = nar.config.n_codebooks
    pairs = load_pairs(out / PAIRS_FILE, settings, model.config.latent_dim, K)
    if pairs is None:
        began = time.time()
        pairs = build_pairs(config, nar, model, progress)
        save_pairs(pairs, out / PAIRS_FILE, settings)
        tqdm.write(f"pairs: {len(pairs.items)} utterances, {pairs.vectors.shape[0]} frames in "
                   f"{time.time() - began:.0f} s -> {out / PAIRS_FILE}", file=sys.stderr)
    del nar
    signals = _load_audio(pairs, model, progress)
    frames, hop = config.crop_frames, model.hop
    valid = (frames - model.overlap + 1) * hop
    usable = [i for i, s in enumerate(signals) if s is not None and pairs.items[i]["frames"] >= frames]
    train_rows = [i for i in usable if pairs.items[i]["split"] == "train"]
    dev_rows = [i for i in usable if pairs.items[i]["split"] == "dev"]
    if not train_rows:
        raise TTSError(f"no training pair of at least {frames} frames with its recording")
    with torch.no_grad():
        real = model.code_vectors(pairs.codes[None], min_frames=1)[0].float()

    torch.manual_seed(config.seed)
    for param in model.parameters():
        param.requires_grad_(False)
    decoder = model.decoder.float()
    for param in decoder.parameters():
        param.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=config.lr, betas=(0.8, 0.99), weight_decay=0.01)
    start = 0
    if checkpoint:
        decoder.load_state_dict(checkpoint["decoder"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start = int(checkpoint["step"])
        tqdm.write(f"resumed from step {start}", file=sys.stderr)
    loss_fn = SpectralLoss(model.sample_rate, complex_weight=config.complex_loss_weight)
    expected_count = round(config.expected_fraction * config.batch_size)
    dev_rng = np.random.default_rng(12345)
    dev_sets = {}
    if dev_rows:
        for name, count in (("expected", 16), ("real", 0)):
            dev_sets[name] = draw_crops(pairs, real, signals, dev_rows, 16, count, frames, hop, valid, dev_rng)

    def dev_losses() -> dict:
        model.eval()
        with torch.no_grad():
            values = {f"dev_{name}": float(loss_fn(model.synthesize(decoder(x)[0], valid), y)[0])
                      for name, (x, y) in dev_sets.items()}
        model.train()
        return values

    with contextlib.closing(checkpoints.RunLog(out, start)) as log:
        if start == 0 and dev_sets:
            log.write({"step": 0} | dev_losses())
        bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="tune-tts-decoder",
                   unit="step", disable=not progress, file=sys.stderr)
        window, window_start = 0, time.time()
        for step in bar:
            lr = checkpoints.warmup_cosine(step, config.lr, config.warmup_steps, config.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rng = np.random.default_rng([config.seed, step])
            x, y = draw_crops(pairs, real, signals, train_rows, config.batch_size, expected_count, frames, hop,
                              valid, rng)
            loss, parts = loss_fn(model.synthesize(decoder(x)[0], valid), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(decoder.parameters(), config.grad_clip)
            optimizer.step()
            window += 1
            if (step + 1) % 10 == 0:
                record = {"step": step + 1, "loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": lr,
                          "steps_per_s": window / (time.time() - window_start)}
                record |= {k: float(v) for k, v in parts.items()}
                window, window_start = 0, time.time()
                if (step + 1) % config.eval_every == 0 and dev_sets:
                    record |= dev_losses()
                    tqdm.write(json.dumps(record), file=sys.stderr)
                bar.set_postfix(loss=f"{record['loss']:.3f}", sps=f"{record['steps_per_s']:.2f}")
                log.write(record)
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                record = {"init": codec_name, "steps": step + 1, "train_utterances": len(train_rows),
                          **{k: v for k, v in asdict(config).items() if k not in ("out_dir", "resume", "steps")}}
                record["schedule_steps"] = config.steps
                save_pretrained(model, out / "export", extra=_extras_with(initial_extras, record))
                checkpoints.save_checkpoint(out, step + 1, {"decoder": decoder.state_dict(),
                                                            "optimizer": optimizer.state_dict()})
    return out / "export"


def _initial_extras(name_or_path: str, model) -> dict:
    """What the initial codec's ``config.json`` holds beyond the model config (training record,
    refit and entropy-table notes), so that the export keeps its history."""
    from codec.pretrained import CONFIG_FILE, weights_dirs

    folders = [Path(name_or_path)] + [d / name_or_path for d in weights_dirs()]
    for folder in folders:
        if (folder / CONFIG_FILE).is_file():
            try:
                config = json.loads((folder / CONFIG_FILE).read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return {}
            own = set(model.config.to_dict()) | {"weights_sha256"}
            return {k: v for k, v in config.items() if k not in own} if isinstance(config, dict) else {}
    return {}


def _extras_with(extras: dict, record: dict) -> dict:
    """``extras`` with ``record`` added to its training history (``training.tts_decoder_tuning``,
    numbered when the initial codec was tuned before)."""
    training = dict(extras.get("training", {})) if isinstance(extras.get("training"), dict) else {}
    key, n = "tts_decoder_tuning", 2
    while key in training:
        key, n = f"tts_decoder_tuning_{n}", n + 1
    return extras | {"training": training | {key: record}}


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, help="token shards of the LMs' training (tokenwave tokenize)")
    parser.add_argument("--out", required=True, help="run folder: pairs, checkpoints, log, export/")
    parser.add_argument("--nar", help="NAR model folder (default weights/lm-nar)")
    parser.add_argument("--codec", help="codec name or folder (default: the NAR's)")
    parser.add_argument("--speakers", default="", help="comma-separated speakers to use (default: all with text)")
    parser.add_argument("--temperature", type=float, default=0.5, help="of the expected vectors (default 0.5)")
    parser.add_argument("--max-frames", type=int, default=500, help="longest utterance used, in frames (default 500)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop-frames", type=int, default=50, help="frames per crop (default 50: 1 s)")
    parser.add_argument("--expected-fraction", type=float, default=0.5,
                        help="share of the crops decoded from expected vectors; the rest from real codes (default 0.5)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TuningConfig(shards=args.shards, out_dir=args.out, nar=args.nar, codec=args.codec,
                          speakers=tuple(s for s in args.speakers.split(",") if s), temperature=args.temperature,
                          max_frames=args.max_frames, steps=args.steps, batch_size=args.batch_size,
                          crop_frames=args.crop_frames, expected_fraction=args.expected_fraction, lr=args.lr,
                          warmup_steps=args.warmup_steps, checkpoint_every=args.checkpoint_every,
                          eval_every=args.eval_every, seed=args.seed, resume=args.resume)
    export = tune_decoder(config, progress=sys.stderr.isatty())
    print(f"tuned decoder: {export} (same token space as {config.codec or 'the NAR codec'})")
    return 0
