"""Generation with the token LMs: AR first layer (KV cache, length guards), then NAR fill.

AR batching. Rows have different phoneme and prompt lengths, so each row's prefix
``[phonemes][bos, prompt codes]`` is left-padded to a common length and every row gets its
own RoPE positions (its real tokens sit at ``0 .. L_i - 1`` as if alone) and a key padding
mask. Every step then appends one column for all rows, so the KV cache is a plain
``[B, H, L, Dh]`` buffer per layer; the steps run through :class:`StepDecoder` (the same
math as the model's forward, with less per-step overhead). Greedy batch generation gives the
same tokens as generating each row alone, and ``use_cache=False`` (recompute the whole
sequence each step) the same tokens as the cache (both tested).

Length guards (per row, target phoneme count ``P_t``, see :class:`SamplingConfig`): eos is
masked until ``min`` frames, the row ends at ``max`` frames; never empty, never longer than
the hard cap. Text-free mode (``text_free=True``, no phonemes: continuation) needs an explicit
``max_frames``.

NAR fill: layers ``1 .. n-1`` one greedy pass each, every pass conditioned on the layers filled
so far (and on the prompt's layers and the phonemes). :func:`nar_fill_expected` also returns,
per frame, the decoder input that is the expectation of the code vectors under each pass's
distribution (softmax of logits / ``temperature``) instead of the vector of its argmax code:
the argmax is right only as often as the NAR's accuracy (about 20% at layer 2 for the shipped
model), and a wrong code adds a full residual vector in a wrong direction, while the expectation
is the minimum-squared-error estimate of the residual under the model: it adds what the model is
sure of and little of what it is not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from tokenlm.ar import ARModel
from tokenlm.errors import LMError
from tokenlm.nar import NARModel
from tokenlm.sampling import SamplingConfig, sample_next
from tokenlm.transformer import KVCache, StepDecoder, attention_mask

MAX_FRAMES_SLACK = 25  # frames added to max_frames_per_phoneme * P (short texts, pauses)


def _as_long_list(rows, name: str, n: int | None) -> list[torch.Tensor]:
    """Rows (tensors, arrays or lists of ints) -> 1-D CPU long tensors."""
    rows = [torch.as_tensor(r).long().reshape(-1) for r in rows]
    if n is not None and len(rows) != n:
        raise LMError(f"{name}: expected {n} rows, got {len(rows)}")
    return [r.cpu() for r in rows]


def _check_range(rows: list[torch.Tensor], high: int, name: str) -> None:
    for r in rows:
        if r.numel() and (int(r.min()) < 0 or int(r.max()) >= high):
            raise LMError(f"{name} out of range: values must be in [0, {high})")


def length_limits(
    n_target_phonemes: int, sampling: SamplingConfig, hard_cap: int, min_frames: int | None = None
) -> tuple[int, int]:
    """``(min, max)`` frames for a row with ``n_target_phonemes`` target phonemes (0 = text-free)."""
    if n_target_phonemes > 0:
        high = min(
            hard_cap, math.ceil(sampling.max_frames_per_phoneme * n_target_phonemes) + MAX_FRAMES_SLACK
        )
        low = max(1, math.ceil(sampling.min_frames_per_phoneme * n_target_phonemes))
    else:
        high, low = hard_cap, 1
    if min_frames is not None:
        low = max(1, min_frames)
    return min(low, high), high


@torch.inference_mode()
def generate_ar(
    model: ARModel,
    phonemes: Sequence | None,
    prompt_codes: Sequence | None = None,
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    max_frames: int | None = None,
    min_frames: int | None = None,
    target_phonemes: Sequence[int] | None = None,
    text_free: bool = False,
    use_cache: bool = True,
    progress: bool = False,
    pace: Sequence[float] | None = None,
    return_scores: bool = False,
) -> list[torch.Tensor] | tuple[list[torch.Tensor], ARScores]:
    """Generate the first codebook layer for a batch of rows.

    ``phonemes``: per row a LongTensor ``[P]`` (prompt text + target text), or None with
    ``text_free=True``. ``prompt_codes``: per row the prompt's first layer ``[Tp]`` (or
    ``[K, Tp]``, layer 0 is used), or None. ``target_phonemes``: per row how many of the
    phonemes (at the end) belong to the text to speak; default all of them. ``max_frames``
    caps every row (required in text-free mode), ``min_frames`` overrides the minimum.
    ``pace``: per row the frames per phoneme of a paced model's text positions (ignored by other
    models); default :func:`prompt_pace`.
    Returns per row a CPU LongTensor ``[T]`` of codes (no eos), ``1 <= T <= max``; with
    ``return_scores`` also the rows' :class:`ARScores` (to choose among candidates).
    """
    sampling = sampling or SamplingConfig()
    config = model.config
    if phonemes is None:
        if not text_free:
            raise LMError(
                "no phonemes given: pass phonemes, or text_free=True to continue audio without text"
            )
        if prompt_codes is None:
            raise LMError("text-free generation needs prompt_codes (one entry per row, may be empty)")
        phonemes = [[] for _ in prompt_codes]
    phonemes = _as_long_list(phonemes, "phonemes", None)
    B = len(phonemes)
    if B == 0:
        raise LMError("nothing to generate: empty batch")
    if prompt_codes is None:
        prompts = [torch.zeros(0, dtype=torch.long) for _ in range(B)]
    else:
        prompts = [torch.as_tensor(p) for p in prompt_codes]
        if any(p.dim() > 2 for p in prompts):
            raise LMError("prompt_codes rows must be [Tp] (first layer) or [K, Tp]")
        prompts = _as_long_list([p[0] if p.dim() == 2 else p for p in prompts], "prompt_codes", B)
    _check_range(phonemes, config.n_phonemes, "phoneme ids")
    _check_range(prompts, config.codebook_size, "prompt codes")
    for p in phonemes:
        if text_free and p.numel():
            raise LMError("text_free=True but phonemes were given")
        if not text_free and p.numel() == 0:
            raise LMError("empty text: nothing to speak (pass text_free=True to continue audio without text)")
        if p.numel() > config.max_phonemes:
            raise LMError(
                f"text too long: {p.numel()} phonemes, the model takes at most {config.max_phonemes}; "
                "split it into sentences"
            )
    if text_free and max_frames is None and sampling.max_frames is None:
        raise LMError("text-free generation needs an explicit max_frames")
    hard_cap = max_frames or sampling.max_frames or config.max_frames
    if hard_cap < 1:
        raise LMError(f"max_frames must be >= 1, got {hard_cap}")
    if target_phonemes is None:
        target_phonemes = [p.numel() for p in phonemes]
    if len(target_phonemes) != B or any(
        not (1 <= t <= p.numel()) for t, p in zip(target_phonemes, phonemes) if not text_free
    ):
        raise LMError("target_phonemes must give, per row, a count between 1 and its number of phonemes")
    limits = [
        length_limits(0 if text_free else int(t), sampling, hard_cap, min_frames) for t in target_phonemes
    ]
    if pace is None:
        pace = [prompt_pace(config, len(p) - int(t), len(q)) for p, q, t in zip(phonemes, prompts, target_phonemes)]
    elif len(pace) != B or not all(math.isfinite(r) and r > 0 for r in pace):
        raise LMError("pace must give, per row, a positive number of frames per phoneme")

    was_training = model.training
    model.eval()
    try:
        codes, scores = _generate(model, phonemes, prompts, limits, sampling, seed, use_cache, progress, pace)
    finally:
        model.train(was_training)
    return (codes, scores) if return_scores else codes


@dataclass
class ARScores:
    """What the AR thought of its own rows ``[B]``: the summed log-probabilities of each row's
    tokens (its final eos included, when it ended by one) under the model with the text
    (``conditional``) and, when text guidance ran the text-free branch, without it
    (``unconditional``, else None), over ``frames`` scored tokens. The untempered, untruncated
    distributions are scored, not the sampling ones."""

    conditional: torch.Tensor  # [B] float
    unconditional: torch.Tensor | None  # [B] float
    frames: torch.Tensor  # [B] long

    def text_information(self) -> torch.Tensor:
        """Mean pointwise mutual information per token between the row and its text, ``[B]``:
        ``(log p(x | text) - log p(x)) / frames``; how much more the text explains the audio
        than the audio alone. Needs the text-free branch (text guidance)."""
        if self.unconditional is None:
            raise LMError("text information needs both branches: generate with text_guidance > 1")
        return (self.conditional - self.unconditional) / self.frames.clamp(min=1)

    def mean_log_prob(self) -> torch.Tensor:
        """Mean log-probability per token under the model with the text, ``[B]``."""
        return self.conditional / self.frames.clamp(min=1)


def prompt_pace(config, prompt_phonemes: int, prompt_frames: int) -> float:
    """Frames per phoneme for a paced AR row: the prompt's own (its frames over its phonemes,
    kept within 0.5..2 x ``config.text_pace``) when it has both, else ``config.text_pace``."""
    default = config.text_pace or 1.0
    if prompt_phonemes > 0 and prompt_frames > 0:
        return min(max(prompt_frames / prompt_phonemes, 0.5 * default), 2.0 * default)
    return default


def _generate(model: ARModel, phonemes, prompts, limits, sampling, seed, use_cache, progress, pace):
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    B = len(phonemes)
    eos, bos = model.eos, model.bos
    guided = sampling.text_guidance != 1.0 and any(len(p) for p in phonemes)
    if guided:  # rows B..2B-1: the same audio without text (the unconditional branch)
        phonemes = list(phonemes) + [p[:0] for p in phonemes]
        prompts = list(prompts) + list(prompts)
        pace = list(pace) + list(pace)
    prefixes = [
        torch.cat(
            [model.text_emb(p.to(device)), model.audio_emb(torch.cat([torch.tensor([bos]), q]).to(device))]
        )
        for p, q in zip(phonemes, prompts)
    ]
    lengths = torch.tensor([len(x) for x in prefixes], device=device)
    L = int(lengths.max())
    pad = L - lengths
    R = len(prefixes)  # rows run through the model: B, or 2B with text guidance
    x = torch.zeros(R, L, model.config.d_model, device=device, dtype=dtype)
    for i, row in enumerate(prefixes):
        x[i, L - len(row) :] = row
    columns = torch.arange(L, device=device)[None, :]
    key_valid = columns >= pad[:, None]
    if model.config.paced:  # each row's own positions, left-padded with zeros
        positions = torch.zeros(R, L, device=device)
        for i, (p, q) in enumerate(zip(phonemes, prompts)):
            row = model.positions(torch.tensor([len(p)], device=device), len(p), len(q) + 1,
                                  torch.tensor([float(pace[i])], device=device))
            positions[i, L - row.shape[1]:] = row[0]
        next_position = torch.tensor([len(q) + 1 for q in prompts], device=device)  # of generated frame 0
    else:
        positions = (columns - pad[:, None]).clamp(min=0)
        next_position = lengths
    padded = bool((pad > 0).any())
    min_len = torch.tensor([lo for lo, _ in limits], device=device)
    max_len = torch.tensor([hi for _, hi in limits], device=device)
    steps = int(max_len.max())

    generator = torch.Generator(device=device).manual_seed(seed)
    generated = torch.full((B, steps), eos, dtype=torch.long, device=device)
    out_lengths = torch.zeros(B, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    cache = KVCache.for_model(model.config, R, L + steps, device, dtype) if use_cache else None
    if padded:
        h = model.transformer(x, positions, attention_mask(key_valid, causal=True), cache)
    else:
        h = model.transformer(x, positions, None, cache, causal=True)
    logits = model.logits_last(h)
    decoder = StepDecoder(model.transformer, model.head) if use_cache else None
    all_valid = torch.cat([key_valid, torch.ones(R, steps, dtype=torch.bool, device=device)], dim=1)
    score_conditional = torch.zeros(B, device=device)
    score_unconditional = torch.zeros(B, device=device) if guided else None
    frames = torch.zeros(B, dtype=torch.long, device=device)
    for t in tqdm(range(steps), desc="AR", unit="frame", disable=not progress, leave=False):
        logits = logits.float()
        if guided:
            conditional, unconditional = logits.log_softmax(-1).split(B)
            logits = unconditional + sampling.text_guidance * (conditional - unconditional)
        else:
            conditional, unconditional = logits.log_softmax(-1), None
        logits[:, eos] = torch.where(t < min_len, float("-inf"), logits[:, eos])
        token = sample_next(logits, sampling, generator, generated[:, :t])
        token = torch.where(finished, torch.full_like(token, eos), token)
        live = ~finished
        frames += live.long()
        score_conditional += torch.where(live, conditional.gather(1, token[:, None])[:, 0], 0.0)
        if guided:
            score_unconditional += torch.where(live, unconditional.gather(1, token[:, None])[:, 0], 0.0)
        stop = live & ((token == eos) | (t + 1 >= max_len))
        out_lengths = torch.where(stop, torch.where(token == eos, t, t + 1), out_lengths)
        generated[:, t] = token
        finished = finished | stop
        if bool(finished.all()):
            break
        fed = token.repeat(R // B)  # both branches continue with the chosen token
        if decoder is not None:  # one new column for every row, through the KV cache
            mask = all_valid[:, None, None, : L + t + 1] if padded else None
            logits = decoder(model.audio_emb(fed), next_position + t, mask, cache)
        else:  # recompute the whole sequence
            n = t + 1
            xs = torch.cat([x, model.audio_emb(generated[:, :n].repeat(R // B, 1))], dim=1)
            pos = torch.cat([positions, next_position[:, None] + torch.arange(n, device=device)[None, :]], dim=1)
            if padded:
                h = model.transformer(xs, pos, attention_mask(all_valid[:, : L + n], causal=True))
            else:
                h = model.transformer(xs, pos, None, causal=True)
            logits = model.logits_last(h)
    scores = ARScores(score_conditional.cpu(), None if score_unconditional is None else score_unconditional.cpu(),
                      frames.cpu())
    return [generated[i, : int(out_lengths[i])].cpu() for i in range(B)], scores


generate = generate_ar


@torch.inference_mode()
def nar_fill(
    model: NARModel,
    phonemes: Sequence,
    prompt_codes: Sequence,
    first_layers: Sequence,
    n_codebooks: int | None = None,
    progress: bool = False,
    autocast_dtype: torch.dtype | None = None,
    text_starts: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """Fill layers ``1 .. n_codebooks-1`` for a batch, greedily, one pass per layer.

    Per row: ``phonemes [P]`` (may be empty: text-free), ``prompt_codes [K, Tp]`` (all the
    model's K layers, or ``Tp == 0``), ``first_layers [T]`` (from the AR). Returns per row a
    CPU LongTensor ``[n_codebooks, T]`` whose layer 0 is ``first_layers``.
    ``text_starts``: per row the frame of prompt + target where the phonemes start, for paced
    models (:mod:`tokenlm.nar`): 0 (default) when they begin with the prompt's transcript, ``Tp``
    when they are the target's alone.
    ``autocast_dtype=torch.bfloat16`` runs the passes under autocast (several times faster on
    GPUs and on CPUs with AMX; argmax ties may then differ from float32).
    """
    return _nar_passes(model, phonemes, prompt_codes, first_layers, n_codebooks, progress, autocast_dtype,
                       text_starts=text_starts)


@torch.inference_mode()
def nar_fill_expected(
    model: NARModel,
    phonemes: Sequence,
    prompt_codes: Sequence,
    first_layers: Sequence,
    codebooks: Sequence[torch.Tensor],
    temperature: float = 0.5,
    n_codebooks: int | None = None,
    progress: bool = False,
    autocast_dtype: torch.dtype | None = None,
    text_starts: Sequence[int] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """:func:`nar_fill` plus expected code vectors (module docstring).

    ``codebooks``: the codec's code vectors per level, ``[codebook_size, D]`` each (at least
    ``n_codebooks`` of them). Returns ``(codes, vectors)``: per row the codes ``[n_codebooks, T]``
    of :func:`nar_fill` (the same argmax codes, which condition the later passes) and float32
    ``[T, D]`` = ``codebooks[0][first layer] + sum_k softmax(logits_k / temperature) @ codebooks[k]``.
    A temperature near 0 gives the argmax codes' vectors; 1 the model's own distribution.
    """
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise LMError(f"temperature must be a number > 0, got {temperature!r}")
    config = model.config
    n = config.n_codebooks if n_codebooks is None else n_codebooks
    if len(codebooks) < n:
        raise LMError(f"{len(codebooks)} codebook tables for {n} layers")
    tables = [torch.as_tensor(c).float().cpu() for c in codebooks[:n]]
    if any(t.dim() != 2 or t.shape != (config.codebook_size, tables[0].shape[1]) for t in tables):
        raise LMError(f"codebook tables must all be [{config.codebook_size}, D]")
    residual = 0.0  # becomes [B, T, D]: the sum over the passes of the expected code vectors

    def accumulate(k: int, logits: torch.Tensor) -> None:  # logits [B, T, V], on the model's device
        nonlocal residual
        residual = residual + torch.softmax(logits.float() / temperature, dim=-1) @ tables[k].to(logits.device)

    codes = _nar_passes(model, phonemes, prompt_codes, first_layers, n, progress, autocast_dtype, on_logits=accumulate,
                        text_starts=text_starts)
    vectors = [tables[0][c[0]] for c in codes]
    if isinstance(residual, torch.Tensor):  # n > 1: at least one pass
        residual = residual.cpu()
        vectors = [v + residual[i, : v.shape[0]] for i, v in enumerate(vectors)]
    return codes, vectors


def _nar_passes(model, phonemes, prompt_codes, first_layers, n_codebooks, progress, autocast_dtype, on_logits=None,
                text_starts=None):
    """The passes of :func:`nar_fill`; ``on_logits(k, logits [B, T, V])`` sees each pass's
    logits. Returns the codes per row ``[n, T]``."""
    config = model.config
    K = config.n_codebooks
    n = K if n_codebooks is None else n_codebooks
    if not 1 <= n <= K:
        raise LMError(f"n_codebooks must be in 1..{K}, got {n}")
    phonemes = _as_long_list(phonemes, "phonemes", None)
    B = len(phonemes)
    firsts = _as_long_list(first_layers, "first_layers", B)
    if len(prompt_codes) != B:
        raise LMError(f"prompt_codes: expected {B} rows, got {len(prompt_codes)}")
    prompts = []
    for p in prompt_codes:
        p = torch.as_tensor(p).long().cpu()
        if p.dim() != 2:
            raise LMError("prompt_codes rows must be [K, Tp]")
        if p.shape[1] > 0 and p.shape[0] < K:
            raise LMError(f"prompt codes have {p.shape[0]} codebooks, the NAR model uses {K}")
        prompts.append(p[:K] if p.shape[1] > 0 else torch.zeros(K, 0, dtype=torch.long))
    _check_range(phonemes, config.n_phonemes, "phoneme ids")
    _check_range(firsts, config.codebook_size, "first-layer codes")
    _check_range([p.reshape(-1) for p in prompts], config.codebook_size, "prompt codes")
    if any(p.numel() > config.max_phonemes for p in phonemes):
        raise LMError(f"text too long: the model takes at most {config.max_phonemes} phonemes")
    if any(f.numel() == 0 for f in firsts):
        raise LMError("first_layers rows must not be empty")
    if text_starts is None:
        text_starts = [0] * B
    if len(text_starts) != B or not all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= p.shape[1] for s, p in zip(text_starts, prompts)
    ):
        raise LMError("text_starts must give, per row, a frame in 0..prompt length")

    param = next(model.parameters())
    device = param.device
    P, Tp, T = (
        max(p.numel() for p in phonemes),
        max(p.shape[1] for p in prompts),
        max(f.numel() for f in firsts),
    )
    ph = torch.zeros(B, P, dtype=torch.long)
    pr = torch.zeros(B, K, Tp, dtype=torch.long)
    target = torch.zeros(B, n, T, dtype=torch.long)
    for i in range(B):
        ph[i, : phonemes[i].numel()] = phonemes[i]
        pr[i, :, : prompts[i].shape[1]] = prompts[i]
        target[i, 0, : firsts[i].numel()] = firsts[i]
    ph, pr, target = ph.to(device), pr.to(device), target.to(device)
    pl = torch.tensor([p.numel() for p in phonemes], device=device)
    prl = torch.tensor([p.shape[1] for p in prompts], device=device)
    tl = torch.tensor([f.numel() for f in firsts], device=device)
    starts = torch.tensor(list(text_starts), dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    try:
        for k in tqdm(range(1, n), desc="NAR", unit="layer", disable=not progress, leave=False):
            stage = torch.full((B,), k, dtype=torch.long, device=device)
            with autocast:
                logits = model(ph, pl, pr, prl, target, tl, stage, starts)
            target[:, k] = logits.argmax(-1)
            if on_logits is not None:
                on_logits(k, logits)
    finally:
        model.train(was_training)
    return [target[i, :, : int(tl[i])].cpu() for i in range(B)]


def fast_autocast_dtype(device: torch.device | str = "cpu") -> torch.dtype | None:
    """``torch.bfloat16`` where bfloat16 matrix products are fast (CUDA GPUs with bf16 support,
    CPUs with AMX), else None (float32): a good ``autocast_dtype`` for :func:`nar_fill`."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x: guarded
    try:
        return torch.bfloat16 if device.type == "cpu" and amx is not None and amx() else None
    except RuntimeError:
        return None


def fill(
    model: NARModel,
    phonemes: torch.Tensor,
    prompt_codes: torch.Tensor,
    first_layer: torch.Tensor,
    n_codebooks: int | None = None,
) -> torch.Tensor:
    """One row of :func:`nar_fill`: ``[P]``, ``[K, Tp]``, ``[T]`` -> ``[n_codebooks, T]``."""
    return nar_fill(model, [phonemes], [prompt_codes], [first_layer], n_codebooks)[0]
