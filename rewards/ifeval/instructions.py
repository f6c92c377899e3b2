"""Checkable instructions with the IFEval vocabulary, in the class shape of Google's reference.

Each instruction is an :class:`Instruction` subclass built by id from :data:`INSTRUCTION_DICT`::

    checker = build_instruction("keywords:existence")
    prompt_text = checker.build_description(keywords=["ocean", "sun"])
    checker.check_following(response)          # -> bool

``build_description`` takes the same keyword arguments as the IFEval data (``kwargs``); a missing
one falls back to the class default (the reference draws a random one instead). Plugins add their
own constraints with :func:`register_instruction`.

Deliberate differences from the reference, each stricter and tested:

* keywords (existence and frequency) match whole words only, case-insensitively: ``cat`` does not
  count inside ``category`` (the reference uses a bare ``re.search``);
* the postscript marker must open a line (the reference accepts it anywhere after whitespace);
* sentences are split by :func:`cascade.rewards.ifeval.util.split_sentences` (no NLTK data), words
  are ``\\w+`` runs, and the language is :func:`cascade.rewards.ifeval.util.detect_language`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from cascade.rewards.ifeval.util import count_sentences, count_words, detect_language, words

RELATIONS = ("less than", "at least")
"""``"less than"``: count < N; ``"at least"``: count >= N."""

LANGUAGES = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian",
    "pt": "Portuguese", "nl": "Dutch", "ru": "Russian", "ar": "Arabic", "el": "Greek",
    "he": "Hebrew", "hi": "Hindi", "th": "Thai", "ko": "Korean", "ja": "Japanese", "zh": "Chinese",
    "bn": "Bengali", "ta": "Tamil", "te": "Telugu", "gu": "Gujarati", "kn": "Kannada",
    "ml": "Malayalam", "pa": "Punjabi",
}

CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def compare(count: int, relation: str, target: int) -> bool:
    if relation == "less than":
        return count < target
    if relation == "at least":
        return count >= target
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


def _check_relation(relation: str) -> str:
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    return relation


def _keyword_pattern(keyword: str) -> re.Pattern:
    """``keyword`` as a whole word or phrase, case-insensitive."""
    return re.compile(r"(?<!\w)" + re.escape(keyword.strip()) + r"(?!\w)", re.IGNORECASE)


class Instruction:
    """One checkable instruction. Subclasses set ``defaults`` and implement the three methods."""

    defaults: dict[str, Any] = {}

    def __init__(self, instruction_id: str):
        self.id = instruction_id
        self.kwargs: dict[str, Any] = dict(self.defaults)

    def build_description(self, **kwargs) -> str:
        """Store the arguments (``None`` values are ignored) and return the instruction's text."""
        unknown = set(kwargs) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.id}: unknown arguments {sorted(unknown)}; valid: {sorted(self.defaults)}")
        self.kwargs = {**self.defaults, **{k: v for k, v in kwargs.items() if v is not None}}
        self._validate()
        return self.describe()

    def get_instruction_args(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def get_instruction_args_keys(self) -> list[str]:
        return list(self.defaults)

    def _validate(self) -> None:
        """Check and normalise ``self.kwargs`` (raise ValueError on bad values)."""

    def describe(self) -> str:
        raise NotImplementedError

    def check_following(self, value: str) -> bool:
        raise NotImplementedError


INSTRUCTION_DICT: dict[str, type[Instruction]] = {}
"""Instruction classes by id (``"group:name"``), extended by :func:`register_instruction`."""


def register_instruction(instruction_id: str, cls: type[Instruction] | None = None, *, replace: bool = False):
    """Register ``cls`` under ``instruction_id``; usable as a decorator. Re-registering an id raises
    unless ``replace=True`` (or the class is the same)."""

    def add(cls: type[Instruction]) -> type[Instruction]:
        if not (isinstance(cls, type) and issubclass(cls, Instruction)):
            raise TypeError(f"{instruction_id}: {cls!r} is not an Instruction subclass")
        old = INSTRUCTION_DICT.get(instruction_id)
        if old is not None and old is not cls and not replace:
            raise ValueError(f"instruction {instruction_id!r} is already registered ({old.__qualname__})")
        INSTRUCTION_DICT[instruction_id] = cls
        return cls

    return add(cls) if cls is not None else add


def build_instruction(instruction_id: str, **kwargs) -> Instruction:
    """A checker for ``instruction_id``; with ``kwargs``, ``build_description(**kwargs)`` is called too."""
    try:
        cls = INSTRUCTION_DICT[instruction_id]
    except KeyError:
        raise KeyError(f"unknown instruction {instruction_id!r}; known: {sorted(INSTRUCTION_DICT)}") from None
    instruction = cls(instruction_id)
    if kwargs:
        instruction.build_description(**kwargs)
    return instruction


# ---------------------------------------------------------------------------------------------
# keywords
# ---------------------------------------------------------------------------------------------


@register_instruction("keywords:existence")
class KeywordChecker(Instruction):
    defaults = {"keywords": ["answer"]}

    def _validate(self):
        self.kwargs["keywords"] = [str(k) for k in self.kwargs["keywords"]]
        if not self.kwargs["keywords"] or not all(k.strip() for k in self.kwargs["keywords"]):
            raise ValueError("keywords must be non-empty")

    def describe(self):
        return f"Include keywords {', '.join(self.kwargs['keywords'])} in the response."

    def check_following(self, value):
        return all(_keyword_pattern(k).search(value) for k in self.kwargs["keywords"])


@register_instruction("keywords:frequency")
class KeywordFrequencyChecker(Instruction):
    defaults = {"keyword": "answer", "frequency": 1, "relation": "at least"}

    def _validate(self):
        _check_relation(self.kwargs["relation"])
        self.kwargs["frequency"] = int(self.kwargs["frequency"])

    def describe(self):
        k = self.kwargs
        return f"In your response, the word {k['keyword']} should appear {k['relation']} {k['frequency']} times."

    def check_following(self, value):
        count = len(_keyword_pattern(self.kwargs["keyword"]).findall(value))
        return compare(count, self.kwargs["relation"], self.kwargs["frequency"])


@register_instruction("keywords:forbidden_words")
class ForbiddenWords(Instruction):
    defaults = {"forbidden_words": ["forbidden"]}

    def _validate(self):
        self.kwargs["forbidden_words"] = [str(w) for w in self.kwargs["forbidden_words"]]

    def describe(self):
        return f"Do not include keywords {', '.join(self.kwargs['forbidden_words'])} in the response."

    def check_following(self, value):
        return not any(_keyword_pattern(w).search(value) for w in self.kwargs["forbidden_words"])


@register_instruction("keywords:letter_frequency")
class LetterFrequencyChecker(Instruction):
    defaults = {"letter": "a", "let_frequency": 1, "let_relation": "at least"}

    def _validate(self):
        letter = str(self.kwargs["letter"]).strip().lower()
        if len(letter) != 1 or not letter.isalpha():
            raise ValueError(f"letter must be a single letter, got {self.kwargs['letter']!r}")
        self.kwargs["letter"] = letter
        self.kwargs["let_frequency"] = int(self.kwargs["let_frequency"])
        _check_relation(self.kwargs["let_relation"])

    def describe(self):
        k = self.kwargs
        return (f"In your response, the letter {k['letter']} should appear {k['let_relation']} "
                f"{k['let_frequency']} times.")

    def check_following(self, value):
        count = value.lower().count(self.kwargs["letter"])
        return compare(count, self.kwargs["let_relation"], self.kwargs["let_frequency"])


# ---------------------------------------------------------------------------------------------
# language, length
# ---------------------------------------------------------------------------------------------


@register_instruction("language:response_language")
class ResponseLanguageChecker(Instruction):
    defaults = {"language": "en"}

    def _validate(self):
        if self.kwargs["language"] not in LANGUAGES:
            raise ValueError(f"language must be one of {sorted(LANGUAGES)}, got {self.kwargs['language']!r}")

    def describe(self):
        name = LANGUAGES[self.kwargs["language"]]
        return f"Your ENTIRE response should be in {name} language, no other language is allowed."

    def check_following(self, value):
        return detect_language(value) == self.kwargs["language"]


@register_instruction("length_constraints:number_sentences")
class NumberOfSentences(Instruction):
    defaults = {"num_sentences": 1, "relation": "at least"}

    def _validate(self):
        _check_relation(self.kwargs["relation"])
        self.kwargs["num_sentences"] = int(self.kwargs["num_sentences"])

    def describe(self):
        return f"Your response should contain {self.kwargs['relation']} {self.kwargs['num_sentences']} sentences."

    def check_following(self, value):
        return compare(count_sentences(value), self.kwargs["relation"], self.kwargs["num_sentences"])


@register_instruction("length_constraints:number_paragraphs")
class ParagraphChecker(Instruction):
    defaults = {"num_paragraphs": 1}

    def _validate(self):
        self.kwargs["num_paragraphs"] = int(self.kwargs["num_paragraphs"])

    def describe(self):
        return (f"There should be {self.kwargs['num_paragraphs']} paragraphs. "
                "Paragraphs are separated with the markdown divider: ***")

    def check_following(self, value):
        paragraphs = re.split(r"\s?\*\*\*\s?", value)
        count = len(paragraphs)
        for index, paragraph in enumerate(paragraphs):
            if not paragraph.strip():
                if index in (0, len(paragraphs) - 1):
                    count -= 1
                else:
                    return False
        return count == self.kwargs["num_paragraphs"]


@register_instruction("length_constraints:number_words")
class NumberOfWords(Instruction):
    defaults = {"num_words": 1, "relation": "at least"}

    def _validate(self):
        _check_relation(self.kwargs["relation"])
        self.kwargs["num_words"] = int(self.kwargs["num_words"])

    def describe(self):
        return f"Answer with {self.kwargs['relation']} {self.kwargs['num_words']} words."

    def check_following(self, value):
        return compare(count_words(value), self.kwargs["relation"], self.kwargs["num_words"])


@register_instruction("length_constraints:nth_paragraph_first_word")
class ParagraphFirstWordCheck(Instruction):
    defaults = {"num_paragraphs": 1, "nth_paragraph": 1, "first_word": "first"}

    def _validate(self):
        k = self.kwargs
        k["num_paragraphs"], k["nth_paragraph"] = int(k["num_paragraphs"]), int(k["nth_paragraph"])
        k["first_word"] = str(k["first_word"]).lower()
        if not 1 <= k["nth_paragraph"] <= k["num_paragraphs"]:
            raise ValueError("nth_paragraph must be in 1..num_paragraphs")

    def describe(self):
        k = self.kwargs
        return (f"There should be {k['num_paragraphs']} paragraphs. Paragraphs and only paragraphs are "
                "separated with each other by two new lines as if it was '\\n\\n' in python. "
                f"Paragraph {k['nth_paragraph']} must start with word {k['first_word']}.")

    def check_following(self, value):
        k = self.kwargs
        paragraphs = re.split(r"\n\n", value)
        count = sum(1 for p in paragraphs if p.strip())
        if k["nth_paragraph"] > count or k["nth_paragraph"] > len(paragraphs):
            return False
        paragraph = paragraphs[k["nth_paragraph"] - 1].strip()
        if not paragraph:
            return False
        word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
        first_word = ""
        for letter in word:
            if letter in ".,?!'\"":
                break
            first_word += letter.lower()
        return count == k["num_paragraphs"] and first_word == k["first_word"]


# ---------------------------------------------------------------------------------------------
# detectable content and format
# ---------------------------------------------------------------------------------------------


@register_instruction("detectable_content:number_placeholders")
class PlaceholderChecker(Instruction):
    defaults = {"num_placeholders": 1}

    def _validate(self):
        self.kwargs["num_placeholders"] = int(self.kwargs["num_placeholders"])

    def describe(self):
        return (f"The response must contain at least {self.kwargs['num_placeholders']} placeholders "
                "represented by square brackets, such as [address].")

    def check_following(self, value):
        return len(re.findall(r"\[.*?\]", value)) >= self.kwargs["num_placeholders"]


@register_instruction("detectable_content:postscript")
class PostscriptChecker(Instruction):
    defaults = {"postscript_marker": "P.S."}

    def describe(self):
        return ("At the end of your response, please explicitly add a postscript starting with "
                f"{self.kwargs['postscript_marker']}")

    def check_following(self, value):
        marker = self.kwargs["postscript_marker"]
        if marker == "P.P.S":
            pattern = r"^\s*p\.\s?p\.\s?s.*$"
        elif marker == "P.S.":
            pattern = r"^\s*p\.\s?s\..*$"
        else:
            pattern = r"^\s*" + re.escape(marker.lower()) + r".*$"
        return bool(re.findall(pattern, value.lower(), flags=re.MULTILINE))


@register_instruction("detectable_format:number_bullet_lists")
class BulletListChecker(Instruction):
    defaults = {"num_bullets": 1}

    def _validate(self):
        self.kwargs["num_bullets"] = int(self.kwargs["num_bullets"])

    def describe(self):
        return (f"Your answer must contain exactly {self.kwargs['num_bullets']} bullet points. Use the "
                "markdown bullet points such as:\n* This is point 1. \n* This is point 2")

    def check_following(self, value):
        stars = re.findall(r"^\s*\*[^\*].*$", value, flags=re.MULTILINE)
        dashes = re.findall(r"^\s*-.*$", value, flags=re.MULTILINE)
        return len(stars) + len(dashes) == self.kwargs["num_bullets"]


@register_instruction("detectable_format:constrained_response")
class ConstrainedResponseChecker(Instruction):
    defaults: dict[str, Any] = {}

    def describe(self):
        return f"Answer with one of the following options: {CONSTRAINED_RESPONSE_OPTIONS}"

    def check_following(self, value):
        value = value.strip()
        return any(option in value for option in CONSTRAINED_RESPONSE_OPTIONS)


@register_instruction("detectable_format:number_highlighted_sections")
class HighlightSectionChecker(Instruction):
    defaults = {"num_highlights": 1}

    def _validate(self):
        self.kwargs["num_highlights"] = int(self.kwargs["num_highlights"])

    def describe(self):
        return (f"Highlight at least {self.kwargs['num_highlights']} sections in your answer with "
                "markdown, i.e. *highlighted section*.")

    def check_following(self, value):
        found = re.findall(r"\*[^\n\*]*\*", value) + re.findall(r"\*\*[^\n\*]*\*\*", value)
        count = sum(1 for h in found if h.strip("*").strip())
        return count >= self.kwargs["num_highlights"]


@register_instruction("detectable_format:multiple_sections")
class SectionChecker(Instruction):
    defaults = {"section_spliter": "Section", "num_sections": 1}

    def _validate(self):
        self.kwargs["num_sections"] = int(self.kwargs["num_sections"])
        self.kwargs["section_spliter"] = str(self.kwargs["section_spliter"]).strip()

    def describe(self):
        s, n = self.kwargs["section_spliter"], self.kwargs["num_sections"]
        return (f"Your response must have {n} sections. Mark the beginning of each section with {s} X, "
                f"such as:\n{s} 1\n[content of section 1]\n{s} 2\n[content of section 2]")

    def check_following(self, value):
        pattern = r"\s?" + re.escape(self.kwargs["section_spliter"]) + r"\s?\d+\s?"
        return len(re.split(pattern, value)) - 1 >= self.kwargs["num_sections"]


@register_instruction("detectable_format:json_format")
class JsonFormat(Instruction):
    defaults: dict[str, Any] = {}

    def describe(self):
        return ("Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.")

    def check_following(self, value):
        value = value.strip()
        for prefix in ("```json", "```Json", "```JSON", "```"):
            if value.startswith(prefix):
                value = value[len(prefix):]
                break
        value = value.removesuffix("```").strip()
        try:
            json.loads(value)
        except ValueError:
            return False
        return True


@register_instruction("detectable_format:title")
class TitleChecker(Instruction):
    defaults: dict[str, Any] = {}

    def describe(self):
        return ("Your answer must contain a title, wrapped in double angular brackets, such as "
                "<<poem of joy>>.")

    def check_following(self, value):
        return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", value))


# ---------------------------------------------------------------------------------------------
# combination, start/end, case, punctuation
# ---------------------------------------------------------------------------------------------


@register_instruction("combination:two_responses")
class TwoResponsesChecker(Instruction):
    defaults: dict[str, Any] = {}

    def describe(self):
        return ("Give two different responses. Responses and only responses should be separated by 6 "
                "asterisk symbols: ******.")

    def check_following(self, value):
        parts = value.split("******")
        responses = []
        for index, part in enumerate(parts):
            if not part.strip():
                if index not in (0, len(parts) - 1):
                    return False
            else:
                responses.append(part)
        return len(responses) == 2 and responses[0].strip() != responses[1].strip()


@register_instruction("combination:repeat_prompt")
class RepeatPromptThenAnswer(Instruction):
    defaults = {"prompt_to_repeat": ""}

    def _validate(self):
        if not str(self.kwargs["prompt_to_repeat"]).strip():
            raise ValueError("prompt_to_repeat must be set")

    def describe(self):
        return ("First repeat the request word for word without change, then give your answer (1. do not "
                "say any words or characters before repeating the request; 2. the request you need to "
                "repeat does not include this sentence)")

    def check_following(self, value):
        return value.strip().lower().startswith(self.kwargs["prompt_to_repeat"].strip().lower())


@register_instruction("startend:end_checker")
class EndChecker(Instruction):
    defaults = {"end_phrase": "Is there anything else I can help with?"}

    def describe(self):
        return (f"Finish your response with this exact phrase {self.kwargs['end_phrase']}. "
                "No other words should follow this phrase.")

    def check_following(self, value):
        return value.strip().strip('"').lower().endswith(self.kwargs["end_phrase"].strip().lower())


@register_instruction("startend:quotation")
class QuotationChecker(Instruction):
    defaults: dict[str, Any] = {}

    def describe(self):
        return "Wrap your entire response with double quotation marks."

    def check_following(self, value):
        value = value.strip()
        return len(value) > 1 and value[0] == '"' and value[-1] == '"'


@register_instruction("change_case:capital_word_frequency")
class CapitalWordFrequencyChecker(Instruction):
    defaults = {"capital_frequency": 1, "capital_relation": "at least"}

    def _validate(self):
        self.kwargs["capital_frequency"] = int(self.kwargs["capital_frequency"])
        _check_relation(self.kwargs["capital_relation"])

    def describe(self):
        k = self.kwargs
        return (f"In your response, words with all capital letters should appear {k['capital_relation']} "
                f"{k['capital_frequency']} times.")

    def check_following(self, value):
        count = sum(1 for w in words(value) if w.isupper())
        return compare(count, self.kwargs["capital_relation"], self.kwargs["capital_frequency"])


@register_instruction("change_case:english_capital")
class CapitalLettersEnglishChecker(Instruction):
    defaults: dict[str, Any] = {}

    def describe(self):
        return "Your entire response should be in English, and in all capital letters."

    def check_following(self, value):
        return value.isupper() and detect_language(value) == "en"


@register_instruction("change_case:english_lowercase")
class LowercaseLettersEnglishChecker(Instruction):
    defaults: dict[str, Any] = {}

    def describe(self):
        return ("Your entire response should be in English, and in all lowercase letters. No capital "
                "letters are allowed.")

    def check_following(self, value):
        return value.islower() and detect_language(value) == "en"


@register_instruction("punctuation:no_comma")
class CommaChecker(Instruction):
    defaults: dict[str, Any] = {}

    def describe(self):
        return "In your entire response, refrain from the use of any commas."

    def check_following(self, value):
        return "," not in value and "，" not in value


InstructionFactory = Callable[[str], Instruction]
