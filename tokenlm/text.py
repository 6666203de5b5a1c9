"""Text front-end of the token LMs: English text -> normalised words -> IPA phonemes -> ids.

Pipeline (offline; gruut 2.4, MIT, en-us lexicon + CRF G2P for unknown words):

1. :func:`clean_text`: Unicode NFKC; typographic quotes to ASCII; dashes to a comma (a pause);
   accents folded (``café`` -> ``cafe``); control characters, emoji and other symbols dropped;
   decades (``1990s``) and ``#5`` spelled out; whitespace collapsed.
2. gruut splits sentences, verbalises numbers, currency, dates, ordinals and abbreviations
   (``$3.50`` -> "three dollars fifty cents", ``Dr.`` -> "Doctor"), tags parts of speech to
   pick homograph pronunciations (``read`` VB vs VBD) and looks words up (or guesses them).
3. :func:`phonemize` keeps the phonemes of each spoken word, ``_`` between two words, ``|`` for a
   minor break (comma, semicolon, colon, dash) and ``‖`` for a major break (sentence end); other
   punctuation is dropped, words gruut cannot pronounce (non-Latin scripts) are skipped. Breaks
   never start the sequence nor follow each other (a major break wins), and every non-empty
   sequence ends with ``‖``.
4. :class:`PhonemeVocab` maps symbols to ids over a FIXED inventory (:data:`PHONEMES`: gruut's
   en-us phonemes, vowels with their stress marks as gruut emits them), so ids never depend on
   the data; a symbol outside it becomes ``<unk>``.

Example: ``phonemize("Hi, Dr. Li!")`` -> ``h ˈaɪ | d ˈɑ k t ɚ _ l ˈi ‖``.

gruut is imported on first use (about 2 s, see :func:`_processor` for a 30x speed-up of its
lexicon); calls are serialised by a lock, so the functions are thread-safe.
"""

from __future__ import annotations

import decimal
import functools
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Iterable, Sequence

from tokenlm.errors import LMError

PAD, UNK = "<pad>", "<unk>"
WORD, MINOR, MAJOR = "_", "|", "‖"
SPECIALS = (PAD, UNK)
BREAKS = (WORD, MINOR, MAJOR)
LANG = "en-us"

# gruut's en-us inventory (gruut_ipa.Phonemes.from_language("en-us")): 24 consonants and 16 vowels,
# each vowel bare, with primary (ˈ) and with secondary (ˌ) stress, as gruut emits them; sorted by
# code point. Checked against gruut's lexicon (its 128,877 pronunciations use 70 of these; ˈə and ˌə
# complete the pattern) and its output on the ~14k sentences in ../shared/data/text and the
# manifests (tests/test_text.py). Never reorder: ids are saved in shards and models.
PHONEMES: tuple[str, ...] = (
    "aɪ", "aʊ", "b", "d", "d͡ʒ", "eɪ", "f", "h", "i", "j", "k", "l", "m", "n", "oʊ", "p",
    "s", "t", "t͡ʃ", "u", "v", "w", "z", "æ", "ð", "ŋ", "ɑ", "ɔ", "ɔɪ", "ə", "ɚ", "ɛ",
    "ɡ", "ɪ", "ɹ", "ʃ", "ʊ", "ʌ", "ʒ", "ˈaɪ", "ˈaʊ", "ˈeɪ", "ˈi", "ˈoʊ", "ˈu", "ˈæ", "ˈɑ", "ˈɔ",
    "ˈɔɪ", "ˈə", "ˈɚ", "ˈɛ", "ˈɪ", "ˈʊ", "ˈʌ", "ˌaɪ", "ˌaʊ", "ˌeɪ", "ˌi", "ˌoʊ", "ˌu", "ˌæ", "ˌɑ", "ˌɔ",
    "ˌɔɪ", "ˌə", "ˌɚ", "ˌɛ", "ˌɪ", "ˌʊ", "ˌʌ", "θ",
)
"""The 72 phoneme symbols of the default vocabulary, sorted (code point order)."""

MAX_TEXT_CHARS = 1_000_000


# ---------------------------------------------------------------------------------------------
# Cleaning and normalisation

_TRANSLATE = str.maketrans({
    "‘": "'", "’": "'", "‚": "'", "‛": "'", "′": "'", "`": "'", "´": "'",
    "“": '"', "”": '"', "„": '"', "‟": '"', "″": '"', "«": '"', "»": '"',
    "—": ", ", "–": ", ", "―": ", ", "‒": ", ", "…": "...", "⁄": "/",
    "\t": " ", "\n": " ", "\r": " ", "\u00a0": " ",
})
_KEEP_SYMBOLS = set("$€£¥%&+=<>")  # gruut verbalises these (currency, percent, and, plus, ...)
_DECADE = re.compile(r"\b(1[0-9]|20)([0-9])0'?s\b")
_HASH_NUMBER = re.compile(r"#\s*([0-9])")
# "1E100", "2.5e-3": gruut would read scientific notation as one number, which its Decimal
# arithmetic and num2words cannot spell beyond their precision; it is read as words instead, the
# same at every magnitude
_EXPONENT = re.compile(r"(?<=\d)([eE])(?![A-Za-z])")  # also "1E,100": gruut drops the comma
# what else gruut takes for one unspellable number ("1_E33"): _words retries with digits set apart
_DIGITS_APART = re.compile(r"(?<=\d)(?=[^\d\s.,])|(?<=[^\d\s.,])(?=\d)")
_SPACES = re.compile(r"\s+")


def _decade(match: re.Match) -> str:
    tens = ["hundreds", "tens", "twenties", "thirties", "forties", "fifties", "sixties", "seventies", "eighties",
            "nineties"]
    century = int(match.group(1))
    head = "two thousands" if (century, match.group(2)) == (20, "0") else None
    if head:
        return head
    from num2words import num2words

    return f"{num2words(century)} {tens[int(match.group(2))]}"


def clean_text(text: str) -> str:
    """Text gruut can read: NFKC, ASCII quotes, dashes to commas, accents folded, control
    characters / emoji / symbols removed (currency, %, &, +, =, <, > kept), decades and ``#N``
    spelled out, scientific notation split (``1E100`` -> ``1 E 100``), whitespace collapsed."""
    if not isinstance(text, str):
        raise LMError(f"text must be a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise LMError(f"text is too long ({len(text)} characters; at most {MAX_TEXT_CHARS})")
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE)
    out = []
    for char in unicodedata.normalize("NFKD", text):
        category = unicodedata.category(char)
        if category == "Mn":  # combining accents: café -> cafe
            continue
        if category[0] in "CZ" or (category[0] == "S" and char not in _KEEP_SYMBOLS):
            out.append(" ")  # control/format/private characters, emoji, other symbols, odd spaces
        else:
            out.append(char)
    text = unicodedata.normalize("NFC", "".join(out))
    text = _DECADE.sub(_decade, text)
    text = _HASH_NUMBER.sub(r"number \1", text)
    text = _EXPONENT.sub(r" \1 ", text)
    return _SPACES.sub(" ", text).strip()


@functools.lru_cache(maxsize=1)
def _processor():
    """gruut's en-us text processor, built on first use (about 2 s).

    gruut 2.4 looks every word up in its lexicon with ``SELECT ... WHERE word = ?`` on a SQLite
    table that has no index (a scan of 128,877 rows, ~30 ms per word). We copy the lexicon
    into memory once (13 MB) and index it: same rows, same answers, about 30x faster.
    """
    try:
        from gruut.lang import find_lang_dir
        from gruut.phonemize import SqlitePhonemizer
        from gruut.text_processor import TextProcessor
        from gruut.utils import remove_non_word_chars
    except ImportError as error:  # pragma: no cover - gruut is a dependency
        raise LMError(f"the text front-end needs gruut ({error}); pip install 'gruut[en]'") from None
    lang_dir = find_lang_dir(LANG)
    if lang_dir is None or not (lang_dir / "lexicon.db").is_file():
        raise LMError("gruut's English data is missing; pip install gruut_lang_en")
    disk = sqlite3.connect(f"file:{lang_dir / 'lexicon.db'}?mode=ro", uri=True)
    memory = sqlite3.connect(":memory:", check_same_thread=False)  # used under _LOCK only
    try:
        disk.backup(memory)
    finally:
        disk.close()
    memory.execute("CREATE INDEX word_phonemes_word ON word_phonemes (word)")
    # The word transforms gruut.lang.get_settings gives its own lexicon lookup.
    transforms = [str.lower, remove_non_word_chars, lambda s: remove_non_word_chars(s.lower())]
    lookup = SqlitePhonemizer(db_conn=memory, word_transform_funcs=transforms)
    return TextProcessor(default_lang="en_US", lookup_phonemes=lookup)


_LOCK = threading.Lock()


def _words(text: str) -> list:
    """gruut's words (break words included) of the cleaned ``text``."""
    text = clean_text(text)
    if not any(c.isalnum() or c in _KEEP_SYMBOLS for c in text):
        return []
    with _LOCK, decimal.localcontext() as context:
        # gruut spells numbers out with Decimal arithmetic; at the default 28 digits of precision a
        # longer number raises InvalidOperation, so give it as many digits as the text has.
        context.prec = max(context.prec, len(text) + 28)
        processor = _processor()
        for attempt in (text, _DIGITS_APART.sub(" ", text)):
            try:
                graph, root = processor(attempt, lang="en_US")
                return [word for sentence in processor.sentences(graph, root) for word in sentence]
            except ArithmeticError as error:  # a number beyond num2words (10**306) or Decimal's precision:
                failure = error  # try again with digits apart from letters and signs (scientific notation)
            except (ValueError, KeyError, IndexError, TypeError, AttributeError, RuntimeError, RecursionError) as error:
                failure = error
                break
        raise LMError(f"gruut cannot process this text ({type(failure).__name__}: {failure})") from None


def normalize_text(text: str) -> str:
    """Spoken form of ``text``: numbers, currency, dates and abbreviations written out as gruut
    reads them, ``,`` after minor and ``.``/``?``/``!`` after major breaks, other punctuation and
    unpronounceable words dropped (``"Dr. Smith paid $5."`` -> ``"Doctor Smith paid five
    dollars."``). Empty or unpronounceable text gives ``""``."""
    parts: list[str] = []
    open_word = False  # the last part is a word that takes no punctuation yet
    for word in _words(text):
        if word.is_break:
            if open_word:
                parts[-1] += "," if word.is_minor_break else (word.text if word.text in ("?", "!") else ".")
                open_word = False
        elif word.is_spoken and word.phonemes and word.text.strip():
            parts.append(word.text.strip())
            open_word = True
    if open_word:
        parts[-1] += "."  # like phonemize(), which always ends with a major break
    elif parts and parts[-1].endswith(","):
        parts[-1] = parts[-1][:-1] + "."
    return " ".join(parts)


def phonemize(text: str) -> list[str]:
    """IPA phoneme symbols of ``text`` with ``_`` between words, ``|`` at minor breaks and ``‖``
    at sentence ends (see the module docstring). Empty or unpronounceable text gives ``[]``."""
    symbols: list[str] = []
    for word in _words(text):
        if word.is_break:
            mark = MAJOR if word.is_major_break else MINOR
            if not symbols:
                continue
            if symbols[-1] in (MINOR, MAJOR):
                if mark == MAJOR:
                    symbols[-1] = MAJOR
                continue
            symbols.append(mark)
        elif word.is_spoken:
            phonemes = [p for p in (word.phonemes or []) if p and not p.isspace()]
            if not phonemes:
                continue  # no pronunciation (e.g. a non-Latin script)
            if symbols and symbols[-1] not in (MINOR, MAJOR):
                symbols.append(WORD)
            symbols.extend(phonemes)
    if symbols:
        if symbols[-1] == MINOR:
            symbols[-1] = MAJOR
        elif symbols[-1] != MAJOR:
            symbols.append(MAJOR)
    return symbols


# ---------------------------------------------------------------------------------------------
# Vocabulary


class PhonemeVocab:
    """Symbols <-> ids: ``<pad>`` = 0, ``<unk>`` = 1, ``_`` = 2, ``|`` = 3, ``‖`` = 4, then phonemes."""

    pad_id = 0
    unk_id = 1

    def __init__(self, symbols: Sequence[str]):
        symbols = list(symbols) if isinstance(symbols, (list, tuple)) else symbols
        if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
            raise LMError("a phoneme vocabulary must be a list of strings")
        head = list(SPECIALS + BREAKS)
        if symbols[: len(head)] != head:
            raise LMError(f"a phoneme vocabulary must start with {' '.join(head)}")
        if len(symbols) > 65536:
            raise LMError(f"a phoneme vocabulary holds at most 65536 symbols, got {len(symbols)}")
        for symbol in symbols:
            if not symbol or len(symbol) > 16 or any(unicodedata.category(c)[0] in "CZ" for c in symbol):
                raise LMError(f"bad phoneme symbol {symbol[:20]!r} (1-16 characters, no spaces or control characters)")
        if len(set(symbols)) != len(symbols):
            raise LMError("a phoneme vocabulary must not repeat a symbol")
        self.symbols: tuple[str, ...] = tuple(symbols)
        self._ids = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other) -> bool:
        return isinstance(other, PhonemeVocab) and self.symbols == other.symbols

    def __hash__(self) -> int:
        return hash(self.symbols)

    def __repr__(self) -> str:
        return f"PhonemeVocab({len(self)} symbols)"

    def __contains__(self, symbol) -> bool:
        return symbol in self._ids

    def encode(self, symbols: Iterable[str]) -> list[int]:
        """Symbols -> ids; symbols outside the vocabulary become ``<unk>`` (1)."""
        return [self._ids.get(s, self.unk_id) for s in symbols]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> symbols; raises :class:`LMError` for ids outside ``[0, len)``."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.symbols):
                raise LMError(f"phoneme id {i} is outside the vocabulary (0..{len(self.symbols) - 1})")
            out.append(self.symbols[i])
        return out

    def to_dict(self) -> dict:
        return {"symbols": list(self.symbols)}

    @classmethod
    def from_dict(cls, data) -> PhonemeVocab:
        """The vocabulary saved by :meth:`to_dict` (validated: raises :class:`LMError`)."""
        if not isinstance(data, dict) or set(data) != {"symbols"}:
            raise LMError("a phoneme vocabulary must be a JSON object with just 'symbols'")
        if not isinstance(data["symbols"], list):
            raise LMError("vocabulary 'symbols' must be a list of strings")
        return cls(data["symbols"])


@functools.lru_cache(maxsize=1)
def default_vocab() -> PhonemeVocab:
    """The fixed vocabulary: specials, breaks, then :data:`PHONEMES` (77 symbols)."""
    return PhonemeVocab(SPECIALS + BREAKS + PHONEMES)


def text_to_ids(text: str, vocab: PhonemeVocab | None = None) -> list[int]:
    """``vocab.encode(phonemize(text))`` (default vocabulary when None)."""
    return (vocab or default_vocab()).encode(phonemize(text))
