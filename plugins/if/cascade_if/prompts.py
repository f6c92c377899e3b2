"""Seeded instruction-following prompts, each with a compliant answer built programmatically.

A prompt is a short task about a topic ("Describe the sea.") followed by 1–3 checkable
constraints in the IFEval vocabulary (see :mod:`cascade.rewards.ifeval`)::

    Tell me about rain. Your response should contain at least 3 sentences. In your entire
    response, refrain from the use of any commas.

The answer is assembled from short sentences (a few words each, sized for a tiny from-scratch
model) and transformed for each constraint: layout (paragraphs, bullets, sections, two responses,
JSON...), inserted content (keywords, placeholders, highlights), wrappers (title, postscript, end
phrase, quotes), case. Counting constraints (words, sentences, letters, keyword frequency...) then
take a threshold the answer meets. Every answer is checked by the shared verifier before it is
returned (strict mode): a draw whose constraints clash is discarded and drawn again, so every
prompt has a compliant answer and every SFT demonstration passes its own reward.

``difficulty`` (1..3) is the knob: level 1 uses one constraint from an easy set, level 2 one or
two from all of them, level 3 two or three with larger counts. Train and test never share a
prompt: the split is decided by a hash of the prompt text, as in ``cascade_math.problems``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cascade.rewards.ifeval import build_instruction, check_response
from cascade.rewards.ifeval.util import count_sentences, count_words, words

SPLITS = ("train", "test")
TEST_SHARE = 0.2
LEVELS = (1, 2, 3)
_MAX_MISSES = 5_000

TOPICS: dict[str, list[str]] = {
    "the sea": ["The sea is big and blue.", "Fish swim in the sea.", "Waves roll onto the sand."],
    "cats": ["Cats are soft pets.", "They sleep a lot.", "Cats like to chase mice."],
    "dogs": ["Dogs are loyal pets.", "They like long walks.", "Dogs wag their tails."],
    "rain": ["Rain falls from dark clouds.", "Plants need rain to grow.", "Rain makes the streets wet."],
    "the sun": ["The sun is a hot star.", "It gives us light.", "The sun rises in the east."],
    "trees": ["Trees give us shade.", "Birds nest in trees.", "Trees make fresh air."],
    "music": ["Music makes people happy.", "Some songs are slow.", "Many people sing along."],
    "books": ["Books tell good stories.", "You can learn from books.", "A library has many books."],
    "winter": ["Winter is the cold season.", "Snow covers the ground.", "People wear warm coats."],
    "summer": ["Summer is warm and bright.", "Kids play outside.", "Days are long in summer."],
    "the moon": ["The moon shines at night.", "It circles the earth.", "The moon changes shape."],
    "bread": ["Bread is made from flour.", "Bakers bake bread early.", "Fresh bread smells good."],
    "bikes": ["Bikes have two wheels.", "Riding a bike is fun.", "Bikes do not need fuel."],
    "birds": ["Birds can fly high.", "Many birds sing at dawn.", "Birds build small nests."],
    "coffee": ["Coffee is a hot drink.", "Many people drink it daily.", "Coffee helps people wake up."],
    "the city": ["The city is busy.", "Tall buildings fill the sky.", "Buses move people around."],
    "gardens": ["Gardens are full of flowers.", "Bees visit the flowers.", "People grow food in gardens."],
    "trains": ["Trains run on tracks.", "They carry many people.", "Trains can be very fast."],
    "school": ["Kids learn at school.", "Teachers help them read.", "School starts in the morning."],
    "the forest": ["The forest is quiet.", "Deer live in the forest.", "Tall trees grow there."],
    "apples": ["Apples grow on trees.", "They can be red or green.", "Apples taste sweet."],
    "snow": ["Snow is cold and white.", "Kids build snowmen.", "Snow melts in spring."],
    "friends": ["Friends help each other.", "Good friends listen.", "Friends share happy times."],
    "the park": ["The park is green.", "People walk their dogs there.", "Kids play on the swings."],
}
FILLERS = ["It is a nice topic.", "Many people like it.", "I want to learn more.", "It can be fun.",
           "We see it every day.", "It is worth a look."]
FOREIGN = {
    "es": ["Me gusta mucho este tema.", "Es muy bonito y es interesante.", "La gente habla de esto."],
    "fr": ["Le sujet est très beau.", "Je pense que c'est intéressant.", "Les gens aiment ce sujet."],
    "de": ["Das Thema ist sehr schön.", "Ich finde es interessant.", "Die Leute mögen es auch."],
    "it": ["Il tema è molto bello.", "Io penso che sia interessante.", "La gente ama questo tema."],
}
TASKS = ["Write about {t}.", "Describe {t}.", "Tell me about {t}.", "Write a short note about {t}."]
YES_NO_TASK = "Do you like {t}?"
KEYWORDS = ["light", "home", "friend", "color", "sound", "dream", "river", "smile", "story", "garden"]
FORBIDDEN = ["very", "really", "thing", "bad", "never", "always", "maybe", "quite"]
END_PHRASES = ["Is there anything else I can help with?", "Any other questions?", "That is all.",
               "Let me know if you have additional questions."]
FIRST_WORDS = ["also", "so", "now", "well", "indeed", "first", "finally", "today"]
PLACEHOLDERS = ["Meet me at [place].", "Ask [name] about it.", "Call me on [date].", "Write to [address]."]
POSTSCRIPTS = ["Thank you for reading.", "I hope you like it.", "See you soon."]

EASY = ("change_case:english_lowercase", "change_case:english_capital", "punctuation:no_comma",
        "detectable_format:title", "startend:end_checker", "detectable_content:postscript",
        "startend:quotation", "keywords:existence", "detectable_content:number_placeholders",
        "detectable_format:number_highlighted_sections", "detectable_format:constrained_response")
ALL = tuple(sorted((
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency",
    "language:response_language", "length_constraints:number_sentences",
    "length_constraints:number_paragraphs", "length_constraints:number_words",
    "length_constraints:nth_paragraph_first_word", "detectable_content:number_placeholders",
    "detectable_content:postscript", "detectable_format:number_bullet_lists",
    "detectable_format:constrained_response", "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections", "detectable_format:json_format", "detectable_format:title",
    "combination:two_responses", "combination:repeat_prompt", "startend:end_checker",
    "startend:quotation", "change_case:capital_word_frequency", "change_case:english_capital",
    "change_case:english_lowercase", "punctuation:no_comma")))
"""Every instruction the generator can use (all 25 of the IFEval vocabulary)."""

# At most one instruction per slot in a prompt (they decide the same part of the answer).
SLOTS = {
    "length_constraints:number_paragraphs": "layout", "length_constraints:nth_paragraph_first_word": "layout",
    "detectable_format:number_bullet_lists": "layout", "detectable_format:multiple_sections": "layout",
    "combination:two_responses": "layout", "detectable_format:json_format": "layout",
    "detectable_format:constrained_response": "layout",
    "change_case:english_capital": "case", "change_case:english_lowercase": "case",
    "change_case:capital_word_frequency": "case", "language:response_language": "case",
    "detectable_format:title": "start", "combination:repeat_prompt": "start",
    "detectable_content:postscript": "end", "startend:end_checker": "end",
}
# Pairs that are legal but clash in practice: never drawn together.
CLASHES = {
    frozenset({"detectable_format:json_format", "detectable_format:title"}),
    frozenset({"detectable_format:json_format", "detectable_content:postscript"}),
    frozenset({"detectable_format:json_format", "startend:end_checker"}),
    frozenset({"detectable_format:json_format", "startend:quotation"}),
    frozenset({"detectable_format:json_format", "combination:repeat_prompt"}),
    frozenset({"detectable_format:json_format", "detectable_format:number_highlighted_sections"}),
    frozenset({"startend:quotation", "combination:repeat_prompt"}),
    frozenset({"detectable_format:constrained_response", "language:response_language"}),
}


@dataclass(frozen=True)
class IFPrompt:
    id: str
    task: str
    prompt: str
    """The user message: the task, then one description per instruction."""
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]
    answer: str
    """A response that follows every instruction (the SFT demonstration)."""
    difficulty: int

    @property
    def constraints(self) -> dict[str, Any]:
        """What the reward needs, in the IFEval row format."""
        return {"instruction_id_list": list(self.instruction_id_list), "kwargs": [dict(k) for k in self.kwargs],
                "prompt": self.prompt}


def split_of(prompt: str) -> str:
    digest = hashlib.sha256(prompt.encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < TEST_SHARE else "train"


def generate(split: str, n: int, seed: int, difficulty: int, instruction_ids: Sequence[str] | None = None,
             at_most: bool = False) -> list[IFPrompt]:
    """``n`` distinct prompts of ``split`` at ``difficulty``; same arguments, same list.

    ``instruction_ids`` restricts the vocabulary (default: level 1 the easy set, others all).
    Raises ValueError if the split runs out of distinct prompts (``at_most=True``: returns them).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if difficulty not in LEVELS:
        raise ValueError(f"difficulty must be in {LEVELS}, got {difficulty}")
    pool = list(instruction_ids) if instruction_ids is not None else list(EASY if difficulty == 1 else ALL)
    unknown = set(pool) - set(ALL)
    if unknown or not pool:
        raise ValueError(f"instruction_ids must be a non-empty subset of {ALL}, got {pool}")
    rng = random.Random(f"cascade-if/{split}/{seed}/{difficulty}/{','.join(pool)}")
    prompts: list[IFPrompt] = []
    seen: set[str] = set()
    misses = 0
    while len(prompts) < n:
        if misses >= _MAX_MISSES:
            if at_most:
                return prompts
            raise ValueError(f"found only {len(prompts)} of {n} distinct {split} prompts at difficulty "
                             f"{difficulty}; ask for fewer")
        made = _draw(rng, difficulty, pool)
        if made is None or made.prompt in seen or split_of(made.prompt) != split:
            misses += 1
            continue
        misses = 0
        seen.add(made.prompt)
        prompts.append(made)
    return prompts


# ---------------------------------------------------------------------------------------------
# one draw
# ---------------------------------------------------------------------------------------------


def _pick_ids(rng: random.Random, difficulty: int, pool: list[str]) -> list[str] | None:
    low, high = {1: (1, 1), 2: (1, 2), 3: (2, 3)}[difficulty]
    k = min(rng.randint(low, high), len(pool))
    chosen: list[str] = []
    for candidate in rng.sample(pool, len(pool)):
        slot = SLOTS.get(candidate)
        if slot and any(SLOTS.get(c) == slot for c in chosen):
            continue
        if any(frozenset({candidate, c}) in CLASHES for c in chosen):
            continue
        chosen.append(candidate)
        if len(chosen) == k:
            return sorted(chosen)
    return sorted(chosen) if chosen else None


@dataclass
class _Draft:
    sentences: list[str]
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _wrap_last_word(sentence: str, left: str, right: str, upper: bool = False) -> str:
    body, end = sentence[:-1], sentence[-1]
    head, _, last = body.rpartition(" ")
    last = last.upper() if upper else last
    return f"{head} {left}{last}{right}{end}" if head else f"{left}{last}{right}{end}"


def _groups(sentences: list[str], n: int) -> list[list[str]]:
    """Split ``sentences`` (at least ``n``) into ``n`` consecutive non-empty groups."""
    size, extra = divmod(len(sentences), n)
    groups, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        groups.append(sentences[start:end])
        start = end
    return groups


def _draw(rng: random.Random, difficulty: int, pool: list[str]) -> IFPrompt | None:
    ids = _pick_ids(rng, difficulty, pool)
    if not ids:
        return None
    topic = rng.choice(sorted(TOPICS))
    has = set(ids).__contains__
    task = (YES_NO_TASK if has("detectable_format:constrained_response") else rng.choice(TASKS)).format(t=topic)
    big = difficulty == 3
    fillers = rng.sample(FILLERS, len(FILLERS))
    draft = _Draft(list(TOPICS[topic][: rng.randint(1, 2)]))
    k = draft.kwargs

    def pad(count: int) -> None:
        while len(draft.sentences) < count:
            draft.sentences.append(fillers.pop() if fillers else rng.choice(TOPICS[topic]))

    # --- content: which sentences the answer says
    if has("language:response_language"):
        language = rng.choice(["en", "en", "es", "fr", "de", "it"])
        k["language:response_language"] = {"language": language}
        if language != "en":
            draft.sentences = list(FOREIGN[language][: rng.randint(1, 2)])
    if has("keywords:existence"):
        chosen = rng.sample(KEYWORDS, rng.randint(1, 2 if big else 1))
        k["keywords:existence"] = {"keywords": chosen}
        draft.sentences += [f"It makes me think of a {w}." for w in chosen]
    if has("keywords:frequency"):
        keyword, relation = rng.choice(KEYWORDS), rng.choice(["at least", "less than"])
        if relation == "at least":
            times = rng.randint(1, 3 if big else 2)
            draft.sentences += [f"I see a {keyword}."] * times
            k["keywords:frequency"] = {"keyword": keyword, "frequency": times, "relation": relation}
        else:
            k["keywords:frequency"] = {"keyword": keyword, "frequency": rng.randint(1, 3), "relation": relation}
    if has("detectable_content:number_placeholders"):
        count = rng.randint(1, 3 if big else 2)
        draft.sentences += rng.sample(PLACEHOLDERS, count)
        k["detectable_content:number_placeholders"] = {"num_placeholders": count}
    if has("length_constraints:number_sentences") and rng.random() < 0.5:
        pad(len(draft.sentences) + rng.randint(1, 2))

    # --- word-level marks
    if has("detectable_format:number_highlighted_sections"):
        count = rng.randint(1, 3 if big else 2)
        pad(count)
        draft.sentences = [_wrap_last_word(s, "*", "*") if i < count else s for i, s in enumerate(draft.sentences)]
        k["detectable_format:number_highlighted_sections"] = {"num_highlights": count}
    if has("change_case:capital_word_frequency") and rng.random() < 0.5:
        count = rng.randint(1, min(3, len(draft.sentences)))
        draft.sentences = [_wrap_last_word(s, "", "", upper=True) if i < count else s
                           for i, s in enumerate(draft.sentences)]

    # --- layout
    text = " ".join(draft.sentences)
    if has("length_constraints:number_paragraphs"):
        count = rng.randint(2, 3 if big else 2)
        pad(count)
        text = "\n***\n".join(" ".join(g) for g in _groups(draft.sentences, count))
        k["length_constraints:number_paragraphs"] = {"num_paragraphs": count}
    elif has("length_constraints:nth_paragraph_first_word"):
        count = rng.randint(2, 3 if big else 2)
        nth, first = rng.randint(1, count), rng.choice(FIRST_WORDS)
        pad(count)
        groups = _groups(draft.sentences, count)
        lead = groups[nth - 1][0]
        groups[nth - 1][0] = f"{first.capitalize()} {lead[0].lower()}{lead[1:]}"
        text = "\n\n".join(" ".join(g) for g in groups)
        k["length_constraints:nth_paragraph_first_word"] = {
            "num_paragraphs": count, "nth_paragraph": nth, "first_word": first}
    elif has("detectable_format:number_bullet_lists"):
        count = rng.randint(2, 4 if big else 3)
        pad(count)
        text = "\n".join(f"* {s}" for s in draft.sentences[:count])
        text += "".join(" " + s for s in draft.sentences[count:])  # extra sentences join the last point
        k["detectable_format:number_bullet_lists"] = {"num_bullets": count}
    elif has("detectable_format:multiple_sections"):
        splitter, count = rng.choice(["Section", "SECTION", "Part"]), rng.randint(2, 3 if big else 2)
        pad(count)
        text = "\n".join(f"{splitter} {i + 1}\n{' '.join(g)}" for i, g in enumerate(_groups(draft.sentences, count)))
        k["detectable_format:multiple_sections"] = {"section_spliter": splitter, "num_sections": count}
    elif has("combination:two_responses"):
        pad(2)
        first, second = _groups(draft.sentences, 2)
        text = f"{' '.join(first)}\n******\n{' '.join(second)}"
    elif has("detectable_format:json_format"):
        text = json.dumps({"answer": text})
    elif has("detectable_format:constrained_response"):
        text = f"{rng.choice(['My answer is yes.', 'My answer is no.', 'My answer is maybe.'])} {draft.sentences[0]}"

    # --- wrappers
    if has("combination:repeat_prompt"):
        text = f"{task}\n{text}"
        k["combination:repeat_prompt"] = {"prompt_to_repeat": task}
    if has("detectable_format:title"):
        text = f"<<{topic.title()}>>\n{text}"
    if has("detectable_content:postscript"):
        marker = rng.choice(["P.S.", "P.P.S"])
        text += f"\n{marker} {rng.choice(POSTSCRIPTS)}"
        k["detectable_content:postscript"] = {"postscript_marker": marker}
    if has("startend:end_checker"):
        phrase = rng.choice(END_PHRASES)
        text += f"\n{phrase}"
        k["startend:end_checker"] = {"end_phrase": phrase}
    if has("change_case:english_capital"):
        text = text.upper()
    if has("change_case:english_lowercase"):
        text = text.lower()
    if has("startend:quotation"):
        text = f'"{text}"'

    # --- counting constraints: a threshold the answer meets
    if has("length_constraints:number_sentences"):
        k["length_constraints:number_sentences"] = _threshold(rng, count_sentences(text), "num_sentences", "relation")
    if has("length_constraints:number_words"):
        k["length_constraints:number_words"] = _threshold(rng, count_words(text), "num_words", "relation", step=5)
    if has("keywords:letter_frequency"):
        letter = rng.choice("aeiostnrlz")
        args = _threshold(rng, text.lower().count(letter), "let_frequency", "let_relation")
        k["keywords:letter_frequency"] = {"letter": letter, **args}
    if has("change_case:capital_word_frequency"):
        capitals = sum(1 for w in words(text) if w.isupper())
        k["change_case:capital_word_frequency"] = _threshold(rng, capitals, "capital_frequency", "capital_relation")
    if has("keywords:forbidden_words"):
        absent = [w for w in FORBIDDEN if w not in words(text.lower())]
        if not absent:
            return None
        k["keywords:forbidden_words"] = {"forbidden_words": sorted(rng.sample(absent, min(len(absent), 2 if big else 1)))}

    kwargs = [k.get(i, {}) for i in ids]
    descriptions = [build_instruction(i).build_description(**kw) for i, kw in zip(ids, kwargs)]
    prompt = " ".join([task, *descriptions])
    if not check_response(text, ids, kwargs, prompt, mode="strict").follow_all:
        return None  # the constraints clash on this draw: draw again
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    return IFPrompt(f"if-d{difficulty}-{digest}", task, prompt, tuple(ids), tuple(kwargs), text, difficulty)


def _threshold(rng: random.Random, count: int, key: str, relation_key: str, step: int = 1) -> dict[str, Any]:
    """A count constraint that ``count`` satisfies: "at least" N <= count or "less than" N > count."""
    if count >= 1 and rng.random() < 0.5:
        low = max(1, count - 2 * step)
        return {key: rng.randint(low, count), relation_key: "at least"}
    return {key: rng.randint(count + 1, count + 2 * step), relation_key: "less than"}
