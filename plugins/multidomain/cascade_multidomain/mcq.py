r"""STEM multiple choice: generated questions with lettered options, scored by answer-letter match.

Question kinds (all short, one line plus the options)::

    arithmetic  "What is 7*8?"                        options 54 / 56 / 63 ...
    units       "How many cm are in 7 m?"             options 70 / 700 / 7000 ...
    science     "Which element has the symbol Fe?"    options Iron / Copper / Zinc ...

``difficulty`` 1..3 sets the number of options (3, 4, 5) and the size of the numbers (level 3 adds a
second operation). The split of a question is fixed by a hash: with ``held_out="stems"`` of its stem, so
train and test never share a stem (not even with the options shuffled differently): the held-out score
asks for facts never seen in training, which is what a pretrained model is tested on. With
``held_out="options"`` of the whole prompt: a held-out question may ask a fact of the training data, but
among options and letters never seen with it. A model trained from scratch knows only its SFT data, so
that is the split where choosing the answer, the skill RL trains, can be measured (the default cascade's
tiny model scored chance on unseen stems after SFT and RL alike).

The demonstrations work the value out, then go through the options in order until one matches it, then
give the letter (``7 m = 700 cm. A) 70 no. B) 700 yes. Answer: B``). Asked for the bare letter, the tiny
default model stayed at chance (the value and its letter in one token); given the value first, it
answered "A" whatever the value (run d12's SFT checkpoint: 12 of 12): finding which letter stands
before a value is a lookup backwards through the prompt. Going through the options copies each
``letter) option`` line forwards, compares it with the value just written, and the letter to answer is
the one on the line marked ``yes``.

Letter extraction (:func:`extract_letter`), on the answer with ``<think>`` sections removed, first
rule that matches wins, and within a rule the *last* match:

1. ``\boxed{C}`` (also ``\boxed{(C)}``, ``\boxed{\text{C}}``);
2. an answer phrase: ``Answer: C``, ``answer is (C)``, ``Final answer - C``;
3. a parenthesised letter ``(C)`` or a line starting ``C)`` / ``C.`` / ``C:``;
4. (``fallback=True``) the last standalone capital letter among the valid ones -- never a letter
   inside a word (``Cat``), a number (``3C``) or an identifier (``C_2``).

Only capital letters count, and only the letters of the question's options.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

from cascade import Environment, Episode, Reward, RewardResult, Sample
from cascade.environments.generated import NO_THINKING, generate_items, item_id, spread, strip_think

KINDS = ("arithmetic", "units", "science")
LETTERS = "ABCDE"
INSTRUCTION = "Answer with the letter."
_SALT = "cascade-multidomain/mcq"


@dataclass(frozen=True)
class MCQ:
    id: str
    stem: str
    options: tuple[str, ...]
    answer: str  # the correct letter
    kind: str
    difficulty: int
    working: str  # the worked value before the letter: "7+8 = 15." (what the demonstrations write)

    @property
    def prompt(self) -> str:
        lines = [self.stem, *(f"{LETTERS[i]}) {o}" for i, o in enumerate(self.options))]
        return "\n".join([*lines, INSTRUCTION])


# ---- generation ----------------------------------------------------------------------------------

_ELEMENTS = {
    "H": "Hydrogen", "He": "Helium", "C": "Carbon", "N": "Nitrogen", "O": "Oxygen", "Ne": "Neon",
    "Na": "Sodium", "Mg": "Magnesium", "Al": "Aluminium", "S": "Sulfur", "Cl": "Chlorine", "K": "Potassium",
    "Ca": "Calcium", "Fe": "Iron", "Cu": "Copper", "Zn": "Zinc", "Ag": "Silver", "Sn": "Tin", "Au": "Gold",
    "Pb": "Lead", "Hg": "Mercury", "P": "Phosphorus", "Si": "Silicon", "Ni": "Nickel",
}
_FACTS = [  # (stem, answer, distractor pool)
    ("Which planet is closest to the Sun?", "Mercury", ["Venus", "Earth", "Mars", "Jupiter"]),
    ("Which planet is the largest?", "Jupiter", ["Saturn", "Earth", "Mars", "Venus"]),
    ("What is the chemical formula of water?", "H2O", ["CO2", "O2", "H2O2", "NaCl"]),
    ("What gas do plants take in?", "CO2", ["O2", "N2", "H2", "He"]),
    ("What is the boiling point of water in C?", "100", ["0", "50", "90", "212"]),
    ("How many legs does an insect have?", "6", ["4", "8", "10", "12"]),
    ("What is the unit of force?", "newton", ["joule", "watt", "volt", "pascal"]),
    ("What is the unit of energy?", "joule", ["newton", "watt", "ampere", "ohm"]),
    ("What is the unit of power?", "watt", ["joule", "newton", "volt", "tesla"]),
    ("What is the unit of resistance?", "ohm", ["volt", "watt", "ampere", "joule"]),
    ("How many sides does a hexagon have?", "6", ["5", "7", "8", "4"]),
    ("How many degrees are in a right angle?", "90", ["45", "180", "60", "120"]),
    ("What is the closest star to Earth?", "the Sun", ["Sirius", "Vega", "Polaris", "Rigel"]),
    ("Which organ pumps blood?", "heart", ["lung", "liver", "kidney", "brain"]),
]
_UNITS = [  # (small unit, big unit, factor)
    ("cm", "m", 100), ("mm", "cm", 10), ("m", "km", 1000), ("g", "kg", 1000), ("mL", "L", 1000),
    ("s", "min", 60), ("min", "h", 60), ("h", "day", 24),
]


def _options(rng: random.Random, correct: str, pool: Sequence[str], k: int) -> tuple[tuple[str, ...], str]:
    distractors = rng.sample([p for p in dict.fromkeys(pool) if p != correct], k - 1)
    options = [correct, *distractors]
    rng.shuffle(options)
    return tuple(options), LETTERS[options.index(correct)]


def _numeric_pool(rng: random.Random, value: int, near: Sequence[int]) -> list[str]:
    pool = {value + d for d in (-2, -1, 1, 2, 10, -10)} | set(near)
    pool = sorted(p for p in pool if p >= 0 and p != value)
    rng.shuffle(pool)
    return [str(p) for p in pool]


def _arithmetic(rng: random.Random, difficulty: int) -> tuple[str, str, list[str], str]:
    top = (9, 12, 20)[difficulty - 1]
    a, b = rng.randint(2, top), rng.randint(2, top)
    op = rng.choice("+-*")
    if op == "-" and b > a:
        a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    text = f"{a}{op}{b}"
    near = [a * b, a + b, abs(a - b)]
    if difficulty == 3:
        c = rng.randint(2, 9)
        text, value, near = f"{text}+{c}", value + c, [value, value + c + 1, value * c]
    return f"What is {text}?", str(value), _numeric_pool(rng, value, near), f"{text} = {value}."


def _units(rng: random.Random, difficulty: int) -> tuple[str, str, list[str], str]:
    small, big, factor = rng.choice(_UNITS)
    n = rng.randint(2, (9, 20, 50)[difficulty - 1])
    value = n * factor
    near = [n * factor * 10, n * factor // 10, n * 10, n + factor, n * 100, n * 1000]
    return f"How many {small} are in {n} {big}?", str(value), _numeric_pool(rng, value, near), f"{n} {big} = {value} {small}."


def _science(rng: random.Random, difficulty: int) -> tuple[str, str, list[str], str]:
    if rng.random() < 0.6:
        symbol, name = rng.choice(sorted(_ELEMENTS.items()))
        if rng.random() < 0.5:
            return f"Which element has the symbol {symbol}?", name, sorted(set(_ELEMENTS.values()) - {name}), f"{symbol} is {name}."
        return f"What is the symbol of {name}?", symbol, sorted(set(_ELEMENTS) - {symbol}), f"{name} is {symbol}."
    stem, answer, pool = rng.choice(_FACTS)
    return stem, answer, list(pool), f"{answer}."


_MAKERS = {"arithmetic": _arithmetic, "units": _units, "science": _science}


HELD_OUT = ("stems", "options")


def generate(split: str, n: int, seed: int, difficulty: int = 1, kinds: Sequence[str] = KINDS,
             held_out: str = "stems") -> list[MCQ]:
    """Up to ``n`` distinct questions of ``split`` at ``difficulty`` (1..3), cycling through ``kinds``;
    ``held_out`` says what a test question never shares with training (module docstring)."""
    if held_out not in HELD_OUT:
        raise ValueError(f"held_out must be one of {HELD_OUT}, got {held_out!r}")
    if difficulty not in (1, 2, 3):
        raise ValueError(f"difficulty must be 1, 2 or 3, got {difficulty}")
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    k = difficulty + 2
    counter = iter(range(10**12))

    def make(rng: random.Random) -> MCQ:
        kind = kinds[next(counter) % len(kinds)]
        stem, correct, pool, working = _MAKERS[kind](rng, difficulty)
        options, letter = _options(rng, correct, pool, k)
        return MCQ(item_id(f"mcq-{kind}-d{difficulty}", stem), stem, options, letter, kind, difficulty, working)

    key = (lambda q: q.stem) if held_out == "stems" else (lambda q: q.prompt)
    return generate_items(make, key, split, n, seed, f"{_SALT}/{difficulty}/{','.join(kinds)}/{held_out}")


# ---- letter extraction ---------------------------------------------------------------------------

_BOXED = re.compile(r"\\boxed\{\s*(?:\\text\{\s*)?\(?\s*([A-Z])\s*\)?\s*\}?\s*\}")
_PHRASE = re.compile(r"(?i:\banswer\b)(?:\s+(?i:is))?\s*[:\-]?\s*\(?\s*([A-Z])\s*\)?(?![A-Za-z0-9_])")
_PAREN = re.compile(r"\(\s*([A-Z])\s*\)|(?m:^\s*([A-Z])[).:](?![A-Za-z0-9_]))")
_STANDALONE = re.compile(r"(?<![A-Za-z0-9_\\])([A-Z])(?![A-Za-z0-9_])")


def extract_letter(text: str, letters: str = LETTERS, fallback: bool = True) -> str | None:
    """The chosen option letter of a response (see the module docstring for the rules), or None."""
    answer = strip_think(text)
    for pattern in (_BOXED, _PHRASE, _PAREN) + ((_STANDALONE,) if fallback else ()):
        found = [next(g for g in m.groups() if g) for m in pattern.finditer(answer)]
        found = [f for f in found if f in letters]
        if found:
            return found[-1]
    return None


# ---- environment and reward ----------------------------------------------------------------------


class MCQEnvironment(Environment):
    """Single-turn multiple choice. ``difficulties`` mixes levels 1..3; ``kinds`` picks question kinds;
    ``held_out`` is "stems" or "options" (module docstring)."""

    def __init__(self, difficulties: Sequence[int] = (1,), kinds: Sequence[str] = KINDS, held_out: str = "stems"):
        self.difficulties = list(difficulties)
        self.kinds = list(kinds)
        self.held_out = held_out

    def questions(self, split: str, n: int, seed: int) -> list[MCQ]:
        out: list[MCQ] = []
        for level, count in zip(self.difficulties, spread(n, self.difficulties)):
            out += generate(split, count, seed, level, self.kinds, self.held_out)
        return out

    def samples(self, split, n, seed):
        return [
            Sample(id=q.id, domain=self.domain, messages=[{"role": "user", "content": q.prompt}], answer=q.answer,
                   meta={"kind": q.kind, "difficulty": q.difficulty, "letters": LETTERS[: len(q.options)]})
            for q in self.questions(split, n, seed)
        ]

    def demonstrations(self, n, seed):
        return [
            [{"role": "user", "content": q.prompt}, {"role": "assistant", "content": f"{NO_THINKING}{q.working} {option_scan(q)} Answer: {q.answer}"}]
            for q in self.questions("train", n, seed + 1)
        ]


def option_scan(q: MCQ) -> str:
    """The options in order up to the correct one, each marked: ``A) 70 no. B) 700 yes.`` (module docstring)."""
    stop = LETTERS.index(q.answer)
    return " ".join(f"{LETTERS[i]}) {option} {'yes' if i == stop else 'no'}." for i, option in enumerate(q.options[:stop + 1]))


class MCQMatchReward(Reward):
    """1 if the extracted letter equals the correct one, else 0 (``info["status"]``: ok / no_letter).

    ``fallback``: also accept a bare standalone letter (rule 4); off = the answer must be explicit.
    """

    def __init__(self, fallback: bool = True):
        self.fallback = fallback

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        results = []
        for e in episodes_G:
            letters = e.sample.meta.get("letters", LETTERS)
            letter = extract_letter(e.messages[-1]["content"], letters, self.fallback)
            results.append(RewardResult(float(letter == e.sample.answer),
                                        info={"status": "ok" if letter else "no_letter", "letter": letter}))
        return results
