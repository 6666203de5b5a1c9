"""The voice decoder: the codec's decoder tuned to what the NAR gives it (``tokenwave tune-voice-decoder``).

In synthesis the codec decoder does not see sums of code vectors, as in its training, but the
NAR's expected code vectors (:func:`tokenlm.generate.nar_fill_expected`): smooth, shrunken
residuals where the NAR is unsure. Vocoders of TTS systems are tuned on such "ground-truth
aligned" inputs (Tacotron 2's WaveNet on predicted mels), and this does the same here:

1. **Examples.** For each training-split recording of a speaker with a built-in voice, the codec's
   codes ``[K, T]``, and the NAR's expected vectors ``[T, D]`` given the recording's real first
   layer, its phonemes and the voice's prompt, exactly as :meth:`Synthesizer.fill` does in
   synthesis (the "perfect AR" row of ``eval-tts``).
2. **Tuning.** The decoder's input projection and first ``blocks`` ConvNeXt blocks are trained
   (the rest stays fixed) to turn random 1 s windows of those vectors into the recording's
   samples, with the codec's magnitude and mel losses (:class:`codec.losses.SpectralLoss`, no
   complex term). Each window is decoded with ``CONTEXT`` frames before it, whose samples are
   dropped, as synthesis decodes after the prompt's last frames.
3. **Overlay.** Only the tuned tensors ship (``weights/voice-decoder/``: safetensors, config with
   the codec's fingerprint, model card); :func:`load_voice_decoder` puts them on a copy of the
   codec. The codec itself (encoder, codebooks, decoder of token files) is unchanged: the
   synthesizer renders the LMs' output with the voice decoder and nothing else.

Measured with the shipped LMs (2026-12-07): `tune-voice-decoder --max-recordings 400 --steps 8000
--lr 2e-4 --threads 2` (727 Kathleen + LJ Speech training recordings, 55.4 min) lowered the
held-out window loss from 1.804 to 1.741 within 1,000 steps and then stayed there (1.738 at
1,500); on 40 unseen sentences (same seeds, so the same tokens) the TTS WER was 67.4% against
67.1% with the codec's decoder, CER 39.2% both, similarity 0.784 against 0.789: the words the NAR
loses are not in its vectors for a decoder to find. Not shipped.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tts.errors import TTSError

DEV_EVERY = 20  # every 20th example is held out for the dev loss
CONTEXT = 10  # frames decoded before each training window (as DECODE_CONTEXT in synthesis)
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "weights" / "voice-decoder"


@dataclass
class TuneConfig:
    """Options of :func:`tune` (``tokenwave tune-voice-decoder``)."""

    manifest: str
    out: str
    blocks: int = 4  # decoder blocks tuned after the input projection
    steps: int = 2000
    batch_size: int = 16
    window_seconds: float = 1.0
    lr: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 250
    time_limit_minutes: float | None = None
    max_recordings: int | None = None  # per speaker, for quick runs and tests

    def check(self) -> None:
        problems = [
            (self.blocks < 0, f"--blocks must be >= 0, not {self.blocks}"),
            (min(self.steps, self.batch_size, self.checkpoint_every) < 1,
             "--steps, --batch-size and --checkpoint-every must be >= 1"),
            (not self.window_seconds > 0, f"--window-seconds must be positive, not {self.window_seconds}"),
            (not self.lr > 0, f"--lr must be positive, not {self.lr}"),
            (self.time_limit_minutes is not None and not self.time_limit_minutes >= 0,
             f"--time-limit must be minutes >= 0, not {self.time_limit_minutes}"),
            (self.max_recordings is not None and self.max_recordings < 1, "--max-recordings must be >= 1"),
        ]
        for failed, message in problems:
            if failed:
                raise TTSError(message)


def tuned_names(codec, blocks: int) -> list[str]:
    """Names (in the codec's state dict) of the tensors a voice decoder with ``blocks`` tuned blocks holds."""
    n = codec.config.decoder_layers
    if blocks > n:
        raise TTSError(f"the decoder has {n} blocks; cannot tune {blocks}")
    prefixes = ("decoder.proj_in.",) + tuple(f"decoder.stack.blocks.{i}." for i in range(blocks))
    return [name for name, _ in codec.named_parameters() if name.startswith(prefixes)]


# -- examples -----------------------------------------------------------------------------------
def speaker_voices(recordings) -> dict[str, str]:
    """Manifest speaker -> built-in voice name, for the voices made from a manifest speaker."""
    from tts.voices import list_voices

    speakers = {r.speaker for r in recordings}
    return {v.speaker: v.name for v in list_voices() if getattr(v, "speaker", None) in speakers}


def build_examples(synth, recordings, voices: dict[str, str], batch: int = 8, progress: bool = True) -> list[tuple]:
    """Per usable recording ``(vectors float16 [T, D], wav float32 [N])``: the NAR's expected
    vectors under the real first layer (module docstring), and the audio they should become.
    Recordings of a speaker are filled ``batch`` at a time, sorted by length."""
    from codec.audio import load_audio
    from codec.errors import AudioError
    from tokenlm.errors import LMError

    codec, rate = synth.codec, synth.sample_rate
    bitrate = codec.codebooks_to_bitrate(synth.n_codebooks)
    limit = synth.nar.config.max_frames
    items, skipped = [], 0  # (speaker, phonemes [P], first layer [T], wav [N])
    for recording in tqdm(recordings, desc="encoding", unit="file", disable=not progress, leave=False):
        if recording.speaker not in voices or not recording.text.strip():
            continue
        prompt = synth.prepare_prompt(voices[recording.speaker])
        try:
            wav, _ = load_audio(recording.path, rate)
        except AudioError:
            skipped += 1
            continue
        target = synth._ids(recording.text)
        codes = codec.encode(torch.from_numpy(wav), rate, bitrate=bitrate)[0]
        if not len(target) or prompt.codes.shape[1] + codes.shape[1] > limit:
            skipped += 1
            continue
        prefix = prompt.phonemes if prompt.transcript_source != "none" else prompt.phonemes[:0]
        items.append((recording.speaker, torch.cat([prefix, target]), codes[0].cpu(), wav[0]))
    examples = []
    groups = [sorted((i for i in items if i[0] == s), key=lambda i: len(i[2])) for s in sorted({i[0] for i in items})]
    bar = tqdm(total=len(items), desc="NAR examples", unit="file", disable=not progress)
    for group in groups:
        prompt = synth.prepare_prompt(voices[group[0][0]])
        for b in range(0, len(group), batch):
            rows = group[b : b + batch]
            try:
                with torch.inference_mode():
                    filled = synth.fill(prompt, [r[1] for r in rows], [r[2] for r in rows])
            except LMError:
                skipped += len(rows)
                continue
            for (_, vectors), (_, _, first, wav) in zip(filled, rows):
                frames = min(len(first), wav.shape[-1] // synth.hop)
                examples.append((vectors[:frames].to(torch.float16).cpu(),
                                 np.ascontiguousarray(wav[: frames * synth.hop], dtype=np.float32)))
            bar.update(len(rows))
    bar.close()
    if not examples:
        raise TTSError("no usable recordings: the manifest's training split has no speaker with a built-in voice")
    if progress and skipped:
        tqdm.write(f"skipped {skipped} recordings (unreadable, no phonemes, or too long for the NAR)")
    return examples


def save_examples(examples, path) -> None:
    """Examples to one safetensors file (``vectors_i`` float16 ``[T, D]``, ``wav_i`` float32 ``[N]``)."""
    from safetensors.torch import save_file

    tensors = {}
    for i, (vectors, wav) in enumerate(examples):
        tensors[f"vectors_{i}"] = vectors.contiguous()
        tensors[f"wav_{i}"] = torch.from_numpy(wav)
    tmp = Path(str(path) + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def load_examples(path, hop: int, latent_dim: int) -> list[tuple]:
    """Examples written by :func:`save_examples`, checked against the codec's hop and latent size."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise TTSError(f"{path}: cannot read the cached examples ({error}); delete it to rebuild") from None
    examples = []
    for i in range(len(tensors) // 2):
        vectors, wav = tensors.get(f"vectors_{i}"), tensors.get(f"wav_{i}")
        if (vectors is None or wav is None or vectors.dim() != 2 or vectors.shape[1] != latent_dim
                or wav.dim() != 1 or wav.shape[0] != vectors.shape[0] * hop):
            raise TTSError(f"{path}: example {i} does not fit this codec; delete the file to rebuild")
        examples.append((vectors.to(torch.float16), wav.float().numpy()))
    if not examples or len(tensors) != 2 * len(examples):
        raise TTSError(f"{path}: no examples, or stray tensors; delete the file to rebuild")
    return examples


def draw_windows(examples, frames: int, batch: int, generator: torch.Generator,
                 overlap: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random windows: vectors ``[B, CONTEXT + frames, D]`` (the first ``CONTEXT``
    frames zero-padded at a recording's start) and the samples they decode to,
    ``[B, 1, (frames - overlap + 1) * hop]`` (a frame's window spans ``overlap`` hops)."""
    hop = examples[0][1].shape[0] // examples[0][0].shape[0]
    usable = [e for e in examples if e[0].shape[0] >= frames]
    if not usable or frames < overlap:
        raise TTSError(f"no recording has {frames} frames: shorten --window-seconds")
    weights = torch.tensor([float(e[0].shape[0] - frames + 1) for e in usable])
    picks = torch.multinomial(weights, batch, replacement=True, generator=generator)
    inputs, targets = [], []
    for i in picks.tolist():
        vectors, wav = usable[i]
        start = int(torch.randint(0, vectors.shape[0] - frames + 1, (1,), generator=generator))
        window = vectors[max(0, start - CONTEXT) : start + frames].float()
        window = torch.nn.functional.pad(window, (0, 0, CONTEXT - min(start, CONTEXT), 0))
        inputs.append(window)
        targets.append(torch.from_numpy(wav[start * hop : (start + frames - overlap + 1) * hop]))
    return torch.stack(inputs), torch.stack(targets)[:, None]


def decode_windows(codec, vectors: torch.Tensor, frames: int) -> torch.Tensor:
    """Decoder input ``[B, CONTEXT + frames, D]`` -> the window's samples
    ``[B, 1, (frames - overlap + 1) * hop]`` (with gradients; the context's samples dropped)."""
    out, _ = codec.decoder(vectors)
    audio = codec.synthesize(out, (CONTEXT + frames - codec.overlap + 1) * codec.hop)
    return audio[..., CONTEXT * codec.hop :]


# -- tuning -------------------------------------------------------------------------------------
def tune(config: TuneConfig, synth=None, progress: bool = True) -> Path:
    """Train a voice decoder (module docstring); writes ``OUT/export/`` (an overlay folder) at each
    checkpoint and at the end, and ``OUT/log.jsonl``. Returns the export folder."""
    from codec.checkpoints import warmup_cosine
    from codec.data import read_manifest, select_split
    from codec.losses import SpectralLoss

    config.check()
    if synth is None:
        from tts.synthesizer import load

        synth = load()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    recordings = select_split(read_manifest(config.manifest), "train")
    voices = speaker_voices(recordings)
    if config.max_recordings is not None:
        by_speaker: dict[str, list] = {}
        for r in recordings:
            by_speaker.setdefault(r.speaker, []).append(r)
        recordings = [r for items in by_speaker.values() for r in items[: config.max_recordings]]
    cache = out / "examples.safetensors"
    if cache.is_file():
        examples = load_examples(cache, synth.hop, synth.codec.config.latent_dim)
        if progress:
            tqdm.write(f"examples read from {cache}")
    else:
        examples = build_examples(synth, recordings, voices, progress=progress)
        save_examples(examples, cache)
    seconds = sum(e[1].shape[0] for e in examples) / synth.sample_rate
    if progress:
        tqdm.write(f"{len(examples)} recordings, {seconds / 60:.1f} min, speakers: {', '.join(sorted(voices))}")

    codec = copy.deepcopy(synth.codec).float().train()
    names = set(tuned_names(codec, config.blocks))
    params = []
    for name, param in codec.named_parameters():
        param.requires_grad_(name in names)
        if name in names:
            params.append(param)
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.8, 0.99), weight_decay=0.01)
    loss_fn = SpectralLoss(synth.sample_rate, complex_weight=0.0)
    frames = max(1, round(config.window_seconds * synth.codec.frame_rate))
    generator = torch.Generator().manual_seed(config.seed)
    dev_generator = torch.Generator().manual_seed(config.seed + 1)
    held_out = examples[::DEV_EVERY]  # never trained on: fixed windows to follow the loss on
    examples = [e for i, e in enumerate(examples) if i % DEV_EVERY] or held_out
    dev = draw_windows(held_out, frames, 32, dev_generator, codec.overlap)
    record = {"manifest": str(config.manifest), "recordings": len(examples), "minutes": round(seconds / 60, 1),
              "speakers": sorted(voices), **{k: v for k, v in asdict(config).items() if k not in ("manifest", "out")}}
    start = time.time()
    with open(out / "log.jsonl", "a") as log:
        log.write(json.dumps({"step": 0, "dev_loss": _dev_loss(codec, dev, frames, loss_fn)}) + "\n")
        bar = tqdm(range(config.steps), desc="tune-voice-decoder", unit="step", disable=not progress)
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, config.lr, config.warmup_steps, config.steps)
            vectors, wav = draw_windows(examples, frames, config.batch_size, generator, codec.overlap)
            loss, parts = loss_fn(decode_windows(codec, vectors, frames), wav)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            loss = float(loss.detach())
            bar.set_postfix(loss=f"{loss:.3f}", mel=f"{parts['mel']:.3f}")
            late = config.time_limit_minutes is not None and time.time() - start >= 60 * config.time_limit_minutes
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps or late:
                dev_loss = _dev_loss(codec, dev, frames, loss_fn)
                log.write(json.dumps({"step": step + 1, "loss": loss, "mel": parts["mel"], "dev_loss": dev_loss,
                                      "minutes": round((time.time() - start) / 60, 2)}) + "\n")
                log.flush()
                save_voice_decoder(codec, config.blocks, out / "export", record | {"steps_done": step + 1,
                                                                                  "dev_loss": dev_loss})
            if late:
                tqdm.write(f"time limit of {config.time_limit_minutes:g} min reached after step {step + 1}")
                break
    return out / "export"


@torch.no_grad()
def _dev_loss(codec, dev, frames: int, loss_fn) -> float:
    vectors, wav = dev
    loss, _ = loss_fn(decode_windows(codec, vectors, frames), wav)
    return round(float(loss), 5)


# -- overlay files ------------------------------------------------------------------------------
def save_voice_decoder(codec, blocks: int, folder, training: dict) -> None:
    """Write the tuned tensors (float16 safetensors) and a config naming the codec they belong to."""
    from safetensors.torch import save_file

    from codec.atomic import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = codec.state_dict()
    tensors = {name: state[name].detach().to(torch.float16).contiguous() for name in tuned_names(codec, blocks)}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(folder / WEIGHTS)
    config = {"kind": "voice-decoder", "codec": codec.name, "codec_fingerprint": codec.fingerprint,
              "decoder_rest_sha256": rest_digest(codec, blocks), "blocks": blocks, "training": training}
    atomic_write_text(folder / CONFIG, json.dumps(config, indent=2) + "\n")


def load_voice_decoder(codec, folder=None):
    """A copy of ``codec`` with the voice decoder in ``folder`` (default ``weights/voice-decoder``)
    on it; ``codec`` itself is not changed. Refuses an overlay made for another codec."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else DEFAULT_DIR
    try:
        config = json.loads((folder / CONFIG).read_text())
        tensors = load_file(str(folder / WEIGHTS))
    except (OSError, json.JSONDecodeError, SafetensorError) as error:
        raise TTSError(f"{folder}: not a voice decoder ({error})") from None
    if not isinstance(config, dict) or config.get("kind") != "voice-decoder":
        raise TTSError(f"{folder}: not a voice decoder (config kind)")
    blocks = config.get("blocks")
    if not isinstance(blocks, int) or not 0 <= blocks <= codec.config.decoder_layers:
        raise TTSError(f"{folder}: its tensors do not fit codec {codec.name}'s decoder (blocks {blocks!r})")
    if (config.get("codec_fingerprint") != getattr(codec, "fingerprint", None)
            or config.get("decoder_rest_sha256") != rest_digest(codec, blocks)):
        raise TTSError(f"{folder}: made for codec {config.get('codec')} ({config.get('codec_fingerprint')}) with "
                       f"another decoder, not for this {codec.name}; tune a voice decoder for it")
    expected = tuned_names(codec, blocks)
    state = codec.state_dict()
    if sorted(tensors) != sorted(expected) or any(
            tensors[n].shape != state[n].shape or not torch.isfinite(tensors[n]).all() for n in tensors):
        raise TTSError(f"{folder}: its tensors do not fit codec {codec.name}'s decoder")
    tuned = copy.deepcopy(codec)
    dtype = next(tuned.decoder.parameters()).dtype
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if name in tensors:
                param.copy_(tensors[name].to(dtype))
    return tuned.eval()


def rest_digest(codec, blocks: int) -> str:
    """sha256 of the decoder's tensors a voice decoder with ``blocks`` tuned blocks does not
    replace (float32, by name): the overlay fits a codec exactly when these are the same. The
    codec's fingerprint leaves the decoder out (a decoder trained further keeps its token files)."""
    import hashlib

    tuned = set(tuned_names(codec, blocks))
    digest = hashlib.sha256()
    for name, tensor in sorted(codec.state_dict().items()):
        if name.startswith("decoder.") and name not in tuned:
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def has_voice_decoder(folder=None) -> bool:
    folder = Path(folder) if folder is not None else DEFAULT_DIR
    return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()


# -- command line -------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--manifest", default="../shared/data/manifest.jsonl",
                        help="recordings (train split) of the speakers with built-in voices")
    parser.add_argument("--out", required=True, help="run folder: examples cache, log.jsonl, export/")
    parser.add_argument("--ar", help="AR model folder (default weights/lm-ar)")
    parser.add_argument("--nar", help="NAR model folder (default weights/lm-nar)")
    parser.add_argument("--codec", help="codec (default: the one the models were trained with)")
    parser.add_argument("--blocks", type=int, default=4, help="decoder blocks tuned after its input projection (4)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--window-seconds", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=250, help="steps between exports (250)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                        help="export and stop after this many minutes of training")
    parser.add_argument("--max-recordings", type=int, default=None, help="at most this many recordings per speaker")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def main(args) -> int:
    """Run ``tokenwave tune-voice-decoder``; returns the exit code."""
    from tts.synthesizer import SynthesisConfig, load

    config = TuneConfig(manifest=args.manifest, out=args.out, blocks=args.blocks, steps=args.steps,
                        batch_size=args.batch_size, window_seconds=args.window_seconds, lr=args.lr,
                        warmup_steps=args.warmup_steps, seed=args.seed, checkpoint_every=args.checkpoint_every,
                        time_limit_minutes=args.time_limit, max_recordings=args.max_recordings)
    config.check()
    if not Path(args.manifest).is_file():
        raise TTSError(f"{args.manifest}: no such manifest")
    if args.threads:
        torch.set_num_threads(args.threads)
    synth = load(args.ar, args.nar, args.codec, config=SynthesisConfig(voice_decoder=None))
    export = tune(config, synth)
    print(f"voice decoder written to {export}")
    return 0
