"""Generated chat requests, their good answers, worse answers, and the hidden gold preference rubric.

Requests are short, of five kinds, each with what a good answer must contain (``Sample.answer``)::

    greet      "Please greet Mia."               -> "Hello, Mia! Nice to meet you."      (name + greeting)
    thanks     "Thank Ben for the cake."          -> "Thank you, Ben, for the cake!"      (name + item + thanks)
    sum        "What is 12 plus 7?"               -> "12 plus 7 is 19."                   (last number = 19)
    color      "What color is the sky?"           -> "The sky is blue."                   (the right color)
    list       "List three fruits."               -> "Here are three fruits: apple, pear, plum."  (exactly 3 distinct)

**The gold rubric** (:func:`gold_score`) stands in for people's preferences; RL never sees it (it trains on a
reward model learnt from pairs that it labelled), only the held-out evaluation does. It scores a response in [0, 1]:

    0.4 * answers        the request is answered (the kind's check above)
  + 0.2 * polite         no rude phrase (:data:`RUDE`)
  + 0.2 * concise        1 to :data:`MAX_WORDS` words
  + 0.2 * no_repetition  no word 3-gram occurs twice

An empty response scores 0. ``<think>`` sections are removed first.

**Preference pairs** (:func:`preference_pairs`): for a prompt, two candidates, each a good answer or one spoilt
by one or two of :data:`CORRUPTIONS` (rude, too long, repeated, off-topic, wrong); the one the gold rubric
scores higher is ``chosen``, ties are drawn again. Train and test never share a prompt (split by a hash of the
prompt text), so held-out pair accuracy measures generalisation to new prompts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Callable

from cascade.environments.generated import generate_items, strip_think

KINDS = ("greet", "thanks", "sum", "color", "list")
MAX_WORDS = 20
WEIGHTS = {"answers": 0.4, "polite": 0.2, "concise": 0.2, "no_repetition": 0.2}
RUDE = ("stupid", "dumb", "whatever", "shut up", "go away", "ugh", "boring", "i do not care")
GREETINGS = ("hello", "hi", "hey", "greetings", "good morning")

NAMES = ("Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivan", "Jo", "Kim", "Leo",
         "Mia", "Ned", "Omar", "Pia", "Ravi", "Sara", "Tom", "Uma", "Vic", "Wen", "Yara", "Zoe")
ITEMS = ("book", "gift", "cake", "help", "tea", "card", "flowers", "lunch")
COLORS = {"the sky": "blue", "grass": "green", "snow": "white", "a banana": "yellow", "coal": "black",
          "a tomato": "red", "milk": "white", "a lemon": "yellow", "a leaf": "green", "the sea": "blue",
          "a crow": "black", "a strawberry": "red", "an orange": "orange", "a plum": "purple"}
CATEGORIES = {"fruits": ("apple", "pear", "plum", "cherry", "banana", "grape", "lemon", "mango"),
              "animals": ("cat", "dog", "horse", "cow", "lion", "bear", "duck", "fox"),
              "colors": ("red", "blue", "green", "yellow", "black", "white", "pink", "brown"),
              "days": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
              "drinks": ("tea", "coffee", "milk", "water", "juice", "cocoa")}
COUNTS = {2: "two", 3: "three", 4: "four"}
FILLER = ("I hope this helps you a lot today.", "Let me know if you need anything else.",
          "I am always here to help you with more questions.", "Have a really wonderful day.",
          "It was a pleasure to answer this for you.")


@dataclass
class Prompt:
    kind: str
    text: str
    answer: dict[str, Any]
    """What the gold rubric checks: ``kind`` plus name / item / number / color / category and count."""


@dataclass
class PreferencePair:
    messages: list[dict[str, str]]
    """The prompt conversation (one user turn)."""
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float


# ---- prompts and good answers ---------------------------------------------------------------------


def make_prompt(rng: random.Random) -> Prompt:
    kind = rng.choice(KINDS)
    if kind == "greet":
        name = rng.choice(NAMES)
        text = rng.choice(("Say hello to {n}.", "Please greet {n}.", "Greet my friend {n}.")).format(n=name)
        return Prompt(kind, text, {"kind": kind, "name": name})
    if kind == "thanks":
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        text = rng.choice(("Thank {n} for the {i}.", "Please thank {n} for the {i}.")).format(n=name, i=item)
        return Prompt(kind, text, {"kind": kind, "name": name, "item": item})
    if kind == "sum":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        return Prompt(kind, f"What is {a} plus {b}?", {"kind": kind, "a": a, "b": b, "number": a + b})
    if kind == "color":
        thing = rng.choice(sorted(COLORS))
        return Prompt(kind, f"What color is {thing}?", {"kind": kind, "thing": thing, "color": COLORS[thing]})
    category, count = rng.choice(sorted(CATEGORIES)), rng.choice(sorted(COUNTS))
    text = rng.choice(("List {c} {k}.", "Name {c} {k}.")).format(c=COUNTS[count], k=category)
    return Prompt(kind, text, {"kind": kind, "category": category, "count": count})


def prompts(split: str, n: int, seed: int) -> list[Prompt]:
    """``n`` distinct prompts of ``split`` (fewer if the split runs out), the same for the same seed."""
    return generate_items(make_prompt, lambda p: p.text, split, n, seed, salt="rlhf-chat")


def good_answer(answer: dict[str, Any], rng: random.Random) -> str:
    kind = answer["kind"]
    if kind == "greet":
        return rng.choice(("Hello, {n}! Nice to meet you.", "Hi {n}, it is nice to meet you.",
                           "Hello {n}! How are you today?")).format(n=answer["name"])
    if kind == "thanks":
        return rng.choice(("Thank you, {n}, for the {i}!", "{n}, thank you so much for the {i}.",
                           "Thanks a lot for the {i}, {n}!")).format(n=answer["name"], i=answer["item"])
    if kind == "sum":
        return rng.choice(("{a} plus {b} is {c}.", "The answer is {c}.", "It is {c}.")).format(
            a=answer["a"], b=answer["b"], c=answer["number"])
    if kind == "color":
        thing = answer["thing"]
        return rng.choice((f"{thing[0].upper()}{thing[1:]} is {{c}}.", "It is {c}.")).format(c=answer["color"])
    items = rng.sample(CATEGORIES[answer["category"]], answer["count"])
    listed = ", ".join(items[:-1]) + " and " + items[-1]
    return rng.choice(("Here are {c} {k}: {l}.", "Sure: {l}.")).format(c=COUNTS[answer["count"]], k=answer["category"], l=listed)


# ---- the gold rubric --------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _has(text: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase.lower())}\b", text.lower()) is not None


def answers(response: str, answer: dict[str, Any]) -> bool:
    """The kind's check: does the response do what was asked?"""
    kind = answer["kind"]
    if kind == "greet":
        return _has(response, answer["name"]) and any(_has(response, g) for g in GREETINGS)
    if kind == "thanks":
        return _has(response, answer["name"]) and _has(response, answer["item"]) and bool(re.search(r"\bthank", response.lower()))
    if kind == "sum":
        numbers = re.findall(r"-?\d+", response)
        return bool(numbers) and int(numbers[-1]) == answer["number"]
    if kind == "color":
        return _has(response, answer["color"])
    if kind == "list":
        present = {w for w in words(response) if w in CATEGORIES[answer["category"]]}
        return len(present) == answer["count"]
    raise ValueError(f"unknown request kind {kind!r}; kinds: {', '.join(KINDS)}")


def rubric(response: str, answer: dict[str, Any]) -> dict[str, bool]:
    """Each rule's verdict on the final answer (``<think>`` sections removed)."""
    text = strip_think(response).strip()
    ws = words(text)
    trigrams = list(zip(ws, ws[1:], ws[2:]))
    return {
        "answers": answers(text, answer),
        "polite": not any(_has(text, phrase) for phrase in RUDE),
        "concise": 1 <= len(ws) <= MAX_WORDS,
        "no_repetition": len(set(trigrams)) == len(trigrams),
    }


def gold_score(response: str, answer: dict[str, Any]) -> float:
    """The hidden preference: weighted rules in [0, 1]; an empty response scores 0."""
    if not words(strip_think(response)):
        return 0.0
    return round(sum(WEIGHTS[rule] for rule, ok in rubric(response, answer).items() if ok), 6)


# ---- worse answers and preference pairs ---------------------------------------------------------


def _rude(text: str, answer: dict, rng: random.Random) -> str:
    return rng.choice(("Ugh, whatever. {t}", "{t} Now go away.", "{t} That was a dumb question.")).format(t=text)


def _too_long(text: str, answer: dict, rng: random.Random) -> str:
    extra = list(FILLER)
    rng.shuffle(extra)
    while len(words(text)) <= MAX_WORDS:
        text = f"{text} {extra.pop()}"
    return text


def _repeated(text: str, answer: dict, rng: random.Random) -> str:
    return f"{text} {text}"


def _off_topic(text: str, answer: dict, rng: random.Random) -> str:
    other = make_prompt(rng)
    while other.kind == answer["kind"]:
        other = make_prompt(rng)
    return good_answer(other.answer, rng)


def _wrong(text: str, answer: dict, rng: random.Random) -> str:
    kind = answer["kind"]
    if kind in ("greet", "thanks"):
        return re.sub(rf"\b{answer['name']}\b", rng.choice([n for n in NAMES if n != answer["name"]]), text)
    if kind == "sum":
        wrong = answer["number"] + rng.choice((-2, -1, 1, 2))
        return re.sub(rf"\b{answer['number']}(?=\.$)", str(wrong), text)
    if kind == "color":
        return re.sub(rf"\b{answer['color']}\b", rng.choice(sorted(set(COLORS.values()) - {answer["color"]})), text)
    count = answer["count"] + rng.choice((-1, 1))
    items = rng.sample(CATEGORIES[answer["category"]], count)
    return "Sure: " + ", ".join(items) + "."


CORRUPTIONS: dict[str, Callable[[str, dict, random.Random], str]] = {
    "rude": _rude, "too_long": _too_long, "repeated": _repeated, "off_topic": _off_topic, "wrong": _wrong,
}
STYLE_FLAWS = {name: CORRUPTIONS[name] for name in ("rude", "too_long", "repeated")}
"""The corruptions that spoil an answer's form, not its content (the flawed SFT demonstrations)."""


def candidate(answer: dict[str, Any], rng: random.Random, corruptions: int) -> str:
    """A good answer spoilt by ``corruptions`` distinct corruptions (0: the good answer)."""
    text = good_answer(answer, rng)
    names = sorted(CORRUPTIONS)
    rng.shuffle(names)
    # content first (off-topic, wrong), form after (rude, long, repeated): the form corruptions wrap the content
    for name in sorted(names[:corruptions], key=lambda n: n not in ("off_topic", "wrong")):
        text = CORRUPTIONS[name](text, answer, rng)
    return text


def preference_pairs(split: str, n: int, seed: int) -> list[PreferencePair]:
    """``n`` pairs over prompts of ``split``, labelled by the gold rubric (chosen scores strictly higher)."""
    pool = prompts(split, max(n, 1), seed)
    rng = random.Random(f"rlhf-pairs/{split}/{seed}")
    pairs: list[PreferencePair] = []
    while len(pairs) < n:
        prompt = rng.choice(pool)
        first = candidate(prompt.answer, rng, rng.choice((0, 0, 1)))
        second = candidate(prompt.answer, rng, rng.choice((1, 1, 2)))
        a, b = gold_score(first, prompt.answer), gold_score(second, prompt.answer)
        if a == b:
            continue
        (chosen, cs), (rejected, rs) = sorted(((first, a), (second, b)), key=lambda c: -c[1])
        pairs.append(PreferencePair([{"role": "user", "content": prompt.text}], chosen, rejected, cs, rs))
    return pairs
