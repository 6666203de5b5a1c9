"""Splitting text into chunks the token LMs can speak, each with the pause that follows it.

The AR model was trained on single utterances of a few seconds, and its prompt (3-10 s) shares
the sequence with the target, so long text is spoken chunk by chunk:

1. paragraphs: separated by blank lines (single line breaks are spaces);
2. sentences: end at ``.``, ``!``, ``?`` or ``…`` (closing quotes/brackets included) followed by
   white space and a capital letter, digit, quote or bracket; a period after a known
   abbreviation (``Mr.``, ``Dr.``, ``e.g.`` ...) or a single letter (an initial, ``J. Smith``)
   does not end a sentence;
3. with ``min_words`` > 1, a sentence of fewer words is joined to its neighbour in the paragraph
   (the next one; the previous one at the paragraph's end) when both fit in ``max_words``: the
   AR speaks one- or two-word chunks ("End quote.") badly, often as near-silence;
4. a sentence longer than ``max_words`` is cut at clause punctuation (``, ; : —``) into pieces of
   at most ``max_words`` words, as evenly as the punctuation allows; a piece still too long is
   cut between words into equal parts.

Pauses (seconds of silence inserted after each chunk): :data:`PAUSES`, a shorter one after a
clause, a longer one after a paragraph, none after the last chunk. Chunks without any letter or
digit (``...``, ``—``) are dropped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from tts.errors import TTSError

PAUSES = {"clause": 0.2, "sentence": 0.45, "paragraph": 0.8}
"""Seconds of silence after a chunk that ends a clause, a sentence or a paragraph."""

MAX_WORDS = 20
"""Default longest chunk in words (about 6 s of speech)."""

ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "e.g", "i.e", "cf", "no", "nos", "co", "inc",
    "ltd", "gen", "gov", "capt", "col", "lt", "sgt", "rev", "hon", "messrs", "jan", "feb", "mar", "apr", "jun",
    "jul", "aug", "sep", "sept", "oct", "nov", "dec", "fig", "approx", "dept", "est", "u.s", "u.k", "a.m", "p.m",
}
"""Words (lower case, without their final period) after which a period does not end a sentence."""

_SENTENCE_END = re.compile(r"""([.!?…]+["'”’)\]]*)\s+(?=["'“‘(\[]*[A-Z0-9])""")
_CLAUSE_END = re.compile(r"""[,;:—–]["'”’)\]]*$|\s[-–—]$""")
_SPEAKABLE = re.compile(r"[^\W_]")  # a letter or digit in any script


@dataclass
class Chunk:
    """One piece of text to synthesise and the silence (seconds) that follows it."""

    text: str
    pause: float
    kind: str  # "clause", "sentence" or "paragraph": what the chunk ends


def _ends_with_abbreviation(text: str) -> bool:
    word = text.rstrip(".").rsplit(None, 1)[-1] if text.strip() else ""
    word = word.lstrip("\"'“‘([").lower()
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph (white space already collapsed), their punctuation kept."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(paragraph):
        candidate = paragraph[start : match.end(1)]
        if match.group(1) == "." and _ends_with_abbreviation(candidate):
            continue
        sentences.append(candidate.strip())
        start = match.end()
    sentences.append(paragraph[start:].strip())
    return [s for s in sentences if s]


def join_short(sentences: list[str], min_words: int, max_words: int = MAX_WORDS) -> list[str]:
    """``sentences`` with each one of fewer than ``min_words`` words joined to the next one (the
    last one to the previous one) when the two together have at most ``max_words``."""
    def count(text: str) -> int:
        return len(text.split())

    joined: list[str] = []
    pending: str | None = None  # a short sentence waiting for the next one
    for sentence in sentences:
        if pending is not None:
            if count(pending) + count(sentence) <= max_words:
                sentence = f"{pending} {sentence}"
            else:
                joined.append(pending)
            pending = None
        if count(sentence) < min_words:
            pending = sentence
        else:
            joined.append(sentence)
    if pending is not None:
        if joined and count(joined[-1]) + count(pending) <= max_words:
            joined[-1] = f"{joined[-1]} {pending}"
        else:
            joined.append(pending)
    return joined


def _even_cut(words: list[str], max_words: int) -> list[list[str]]:
    parts = math.ceil(len(words) / max_words)
    size = math.ceil(len(words) / parts)
    return [words[i : i + size] for i in range(0, len(words), size)]


def split_long(sentence: str, max_words: int = MAX_WORDS) -> list[str]:
    """Cut ``sentence`` into pieces of at most ``max_words`` words, at clause punctuation when
    it allows (the cut nearest the middle of the remaining words first), else between words."""
    words = sentence.split()
    if len(words) <= max_words:
        return [sentence]
    cuts = [i + 1 for i, word in enumerate(words[:-1]) if _CLAUSE_END.search(" " + word)]
    # cuts that leave both sides non-empty; choose the one closest to the middle
    if cuts:
        middle = len(words) / 2
        cut = min(cuts, key=lambda i: abs(i - middle))
        return split_long(" ".join(words[:cut]), max_words) + split_long(" ".join(words[cut:]), max_words)
    return [" ".join(part) for part in _even_cut(words, max_words)]


def split_text(text: str, max_words: int = MAX_WORDS, pauses: dict[str, float] | None = None,
               min_words: int = 1) -> list[Chunk]:
    """``text`` -> chunks of at most ``max_words`` words with the pause after each; sentences of
    fewer than ``min_words`` words are joined to a neighbour (:func:`join_short`).

    Raises:
        TTSError: the text holds nothing to speak (no letter or digit), or ``max_words < 1``.
    """
    if max_words < 1:
        raise TTSError(f"max_words must be at least 1, got {max_words}")
    pauses = {**PAUSES, **(pauses or {})}
    chunks: list[Chunk] = []
    for paragraph in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        paragraph = " ".join(paragraph.split())
        for sentence in join_short(split_sentences(paragraph), min_words, max_words):
            pieces = [p for p in split_long(sentence, max_words) if _SPEAKABLE.search(p)]
            for i, piece in enumerate(pieces):
                kind = "sentence" if i == len(pieces) - 1 else "clause"
                chunks.append(Chunk(piece, pauses[kind], kind))
        if chunks and chunks[-1].kind != "paragraph":
            chunks[-1].kind, chunks[-1].pause = "paragraph", pauses["paragraph"]
    if not chunks:
        raise TTSError("no text to speak (the text holds no letter or digit)")
    chunks[-1].pause = 0.0
    return chunks
