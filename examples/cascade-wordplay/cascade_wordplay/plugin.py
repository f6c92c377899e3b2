"""Word games as a cascade-rl domain: spell a generated word backwards, or count a letter in it.

Written only against cascade's public API (the ``cascade`` package and its
``cascade.environments.generated`` helpers), and found through the ``cascade`` entry-point group of
this distribution's pyproject.toml, like any third-party plugin. Provides the ``wordplay``
environment, the ``wordplay_exact`` reward and the presets ``domain/wordplay``, ``stage/wordplay_rl``
and ``cascade/wordplay``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from typing import Sequence

from cascade import Environment, Episode, Reward, RewardResult, Sample, hookimpl
from cascade.environments.generated import NO_THINKING, generate_items, item_id, strip_think

KINDS = ("reverse", "count")
CONSONANTS = "bcdfghklmnprstvz"
VOWELS = "aeiou"
SALT = "wordplay"  # part of the split hash: another domain's items with the same text split differently


@dataclass(frozen=True)
class Puzzle:
    """One generated item; its prompt text decides its split, so train and test never share one."""

    kind: str
    word: str
    letter: str = ""

    @property
    def prompt(self) -> str:
        if self.kind == "reverse":
            return f"Spell the word '{self.word}' backwards. Answer with the letters only."
        return f"How many times does the letter '{self.letter}' appear in '{self.word}'? Answer with a number."

    @property
    def answer(self) -> str:
        return self.word[::-1] if self.kind == "reverse" else str(self.word.count(self.letter))


def make_word(rng: random.Random, max_syllables: int) -> str:
    # consonant-vowel syllables: pronounceable (tokenized like text, not like noise) and endless
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(2, max_syllables)))


def make_puzzle(rng: random.Random, kinds: Sequence[str], max_syllables: int) -> Puzzle:
    kind = rng.choice(kinds)
    if kind == "reverse":
        return Puzzle(kind, make_word(rng, max_syllables))
    # the count is drawn first, so that no constant answer pays: most letters of a word occur once,
    # and always answering "1" would be right three times out of four
    count = rng.randint(1, min(3, max_syllables))
    while True:
        word = make_word(rng, max_syllables)
        # sorted: a set's order changes with PYTHONHASHSEED, and the same seed must give the same items
        letters = sorted(letter for letter in set(word) if word.count(letter) == count)
        if letters:
            return Puzzle(kind, word, rng.choice(letters))


class WordplayEnvironment(Environment):
    """Single-turn: one puzzle per prompt, the expected answer as the sample's ``answer``."""

    def __init__(self, kinds: Sequence[str] = KINDS, max_syllables: int = 3):
        # the runner makes the environment before the tokenizer and model: a bad option fails there, named
        if not kinds or set(kinds) - set(KINDS):
            raise ValueError(f"kinds must be a non-empty subset of {list(KINDS)}, got {list(kinds)}")
        if max_syllables < 2:
            raise ValueError(f"max_syllables must be at least 2, got {max_syllables}")
        self.kinds, self.max_syllables = list(kinds), int(max_syllables)

    def puzzles(self, split: str, n: int, seed: int) -> list[Puzzle]:
        make = partial(make_puzzle, kinds=self.kinds, max_syllables=self.max_syllables)
        return generate_items(make, key=lambda p: p.prompt, split=split, n=n, seed=seed, salt=SALT)

    def samples(self, split, n, seed):
        return [Sample(id=item_id(SALT, p.prompt), domain=self.domain, messages=[{"role": "user", "content": p.prompt}],
                       answer=p.answer, meta={"kind": p.kind}) for p in self.puzzles(split, n, seed)]

    def demonstrations(self, n, seed):
        # seed + 1: SFT sees other train puzzles than an RL stage drawing with the same seed;
        # NO_THINKING: the answer follows the empty thinking section, as non-thinking generation writes it
        return [[{"role": "user", "content": p.prompt}, {"role": "assistant", "content": NO_THINKING + p.answer}]
                for p in self.puzzles("train", n, seed + 1)]


def final_answer(episode: Episode) -> str:
    """The model's last turn without its thinking section (the prompt is not the model's answer)."""
    turns = [m.get("content") or "" for m in episode.messages if m.get("role") == "assistant"]
    return strip_think(turns[-1]).strip() if turns else ""


class ExactAnswerReward(Reward):
    """1 if the final answer is the expected one (surrounding spaces and a final period ignored), else 0."""

    def __init__(self, case_sensitive: bool = False):
        self.case_sensitive = bool(case_sensitive)

    def normalize(self, text: str) -> str:
        text = text.strip().rstrip(".").strip()
        return text if self.case_sensitive else text.lower()

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        # info is logged with the step: which kind of puzzle each verdict was about
        return [RewardResult(float(self.normalize(final_answer(e)) == self.normalize(str(e.sample.answer))),
                             info={"kind": e.sample.meta.get("kind", "")}) for e in episodes_G]


@hookimpl
def cascade_environments():
    return {"wordplay": WordplayEnvironment}


@hookimpl
def cascade_rewards():
    return {"wordplay_exact": ExactAnswerReward}


@hookimpl
def cascade_config_searchpaths():
    # where Hydra finds conf/domain/wordplay.yaml, conf/stage/wordplay_rl.yaml, conf/cascade/wordplay.yaml
    return ["pkg://cascade_wordplay.conf"]
