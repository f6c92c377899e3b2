"""Text helpers for the IFEval verifiers: thinking removal, words, sentences, language.

Everything here is pure Python and needs no downloaded data:

* :func:`split_sentences` replaces NLTK's Punkt models with a documented regex splitter, in the
  spirit of the reference implementation's ``split_into_sentences``. A sentence ends at ``.``,
  ``!`` or ``?`` (runs such as ``?!`` or ``...`` count once, closing quotes and brackets stay with
  the sentence) when what follows is whitespace then a capital letter, digit, quote, bracket or
  list marker, or the end of the text. A blank line or a line break also ends a sentence (list
  items and titles are sentences of their own). Not sentence ends: decimals (``3.14``), common
  abbreviations (``Mr.``, ``Dr.``, ``e.g.``, ``i.e.``, ``etc.``, ``vs.``, ``U.S.``...), single
  initials (``J. Smith``) and dots inside web addresses (``example.com``).
* :func:`count_words` counts ``\\w+`` runs, exactly what the reference's NLTK ``RegexpTokenizer``
  does.
* :func:`detect_language` is a heuristic in place of ``langdetect`` (see its docstring).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def strip_thinking(text: str) -> str:
    """The answer without its reasoning section, which must never be graded.

    Keeps what follows the last ``</think>`` (this also covers chat templates that put the opening
    ``<think>`` in the prompt). A ``<think>`` that is never closed means the response was cut off
    while thinking, so everything from it on is dropped.
    """
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in text:
        return text.split(THINK_OPEN, 1)[0]
    return text


# --------------------------------------------------------------------------------------------
# words
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """``\\w+`` runs: 'don't stop' -> ['don', 't', 'stop'] (as the reference counts them)."""
    return _WORD.findall(text)


def count_words(text: str) -> int:
    return len(words(text))


# --------------------------------------------------------------------------------------------
# sentences
# --------------------------------------------------------------------------------------------

ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st vs etc inc ltd co corp no fig eg ie approx dept est jan feb mar apr
    jun jul aug sep sept oct nov dec mt ave blvd gen col lt sgt capt rev hon""".split()
)
"""Lower-case abbreviations (dots removed) after which a ``.`` does not end a sentence."""

_PROTECT = "\x00"  # stands in for a dot that does not end a sentence
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_WEB = re.compile(r"(?<=\w)\.(?=(?:com|org|net|edu|gov|io|ai|co|de|uk|fr)\b)", re.IGNORECASE)
_DOTTED = re.compile(r"\b(?:[A-Za-z]\.){2,}")  # e.g. i.e. U.S. a.m.
_ABBREV = re.compile(r"\b([A-Za-z]+)\.")
_INITIAL = re.compile(r"(?<![\w.])([A-Z])\.(?=\s+[A-Z])")  # 'J. Smith'
_BOUNDARY = re.compile(
    r"""([.!?]+["'”’)\]]*)       # the terminator with any closing quotes or brackets
        (?:\s+(?=["'“‘(\[*\-#]?[A-Z0-9])|\s*$)  # then a new sentence or the end of the text
    """,
    re.VERBOSE,
)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, stripped, empty ones dropped (rules in the module docstring)."""
    protected = _DECIMAL.sub(_PROTECT, text)
    protected = _WEB.sub(_PROTECT, protected)
    protected = _DOTTED.sub(lambda m: m.group(0).replace(".", _PROTECT), protected)
    protected = _ABBREV.sub(
        lambda m: m.group(1) + (_PROTECT if m.group(1).lower() in ABBREVIATIONS else "."), protected)
    protected = _INITIAL.sub(lambda m: m.group(1) + _PROTECT, protected)
    sentences: list[str] = []
    for line in re.split(r"\n+", protected):
        for part in _BOUNDARY.sub(lambda m: m.group(1) + "\n", line).split("\n"):
            part = part.strip()
            if part:
                sentences.append(part.replace(_PROTECT, "."))
    return sentences


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


# --------------------------------------------------------------------------------------------
# language
# --------------------------------------------------------------------------------------------

# Unicode script (first word of the character name) -> ISO 639-1 code, for non-Latin scripts.
_SCRIPTS = {
    "CYRILLIC": "ru", "ARABIC": "ar", "GREEK": "el", "HEBREW": "he", "DEVANAGARI": "hi",
    "THAI": "th", "HANGUL": "ko", "HIRAGANA": "ja", "KATAKANA": "ja", "CJK": "zh",
    "BENGALI": "bn", "TAMIL": "ta", "TELUGU": "te", "GUJARATI": "gu", "KANNADA": "kn",
    "MALAYALAM": "ml", "GURMUKHI": "pa",
}

STOPWORDS = {
    "en": "the a an and or of to in is are was were it this that with for on as be not you i he she they we "
          "have has do does my your its at by from but what which can will there".split(),
    "es": "el la los las y o de del en es son que un una por para con no se su al lo como pero muy "
          "más este esta yo tú hay".split(),
    "fr": "le la les et ou de des du en est sont que un une pour avec ne pas se sur au aux ce cette "
          "je tu il elle nous vous très dans".split(),
    "de": "der die das und oder von zu in ist sind nicht ein eine mit für auf den dem des ich du er sie "
          "wir es sehr auch".split(),
    "it": "il lo la gli le e o di da in è sono che un una per con non si su al del della questo "
          "molto anche io".split(),
    "pt": "o a os as e ou de do da em é são que um uma para com não se seu ao no na muito este "
          "esta eu você".split(),
    "nl": "de het een en of van in is zijn dat niet met voor op te ik je hij zij wij ook heel".split(),
}
"""Frequent function words of the Latin-script languages :func:`detect_language` tells apart."""

_DIACRITICS = {"es": "ñ¿¡", "fr": "çèêëœàâîôû", "de": "äöüß", "pt": "ãõç", "it": "ìòù"}


def detect_language(text: str) -> str:
    """ISO 639-1 code of the language ``text`` is written in, or ``"unknown"`` (a heuristic).

    1. Letters are classified by Unicode script; if most are not Latin, the dominant script names
       the language (Cyrillic -> ru, Han -> zh, Hiragana/Katakana -> ja, Hangul -> ko, ...).
    2. For Latin script, each language of :data:`STOPWORDS` scores one point per function word in
       the text (case-insensitive) plus a point per characteristic diacritic letter; the best score
       wins (ties go to English, then the listed order).
    3. Latin text without any function word nor diacritic (``"HELLO WORLD"``) is English if it is
       plain ASCII, ``"unknown"`` otherwise; text without letters is ``"unknown"``.
    """
    scripts: Counter[str] = Counter()
    for char in text:
        if char.isalpha():
            name = unicodedata.name(char, "")
            scripts[name.split(" ")[0] if name else "?"] += 1
    if not scripts:
        return "unknown"
    latin = scripts.get("LATIN", 0)
    if latin * 2 < sum(scripts.values()):
        non_latin = [(count, s) for s, count in scripts.items() if s != "LATIN"]
        count, script = max(non_latin)
        if "HIRAGANA" in scripts or "KATAKANA" in scripts:
            return "ja"
        return _SCRIPTS.get(script, "unknown")
    lowered = text.lower()
    tokens = Counter(words(lowered))
    scores = {lang: sum(tokens[w] for w in stop) for lang, stop in STOPWORDS.items()}
    for lang, marks in _DIACRITICS.items():
        scores[lang] += sum(lowered.count(m) for m in marks)
    best = max(scores.values())
    if best == 0:
        return "en" if text.isascii() else "unknown"
    return "en" if scores["en"] == best else next(lang for lang, s in scores.items() if s == best)
