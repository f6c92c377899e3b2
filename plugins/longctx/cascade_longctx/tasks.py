"""RULER-style long-context tasks, generated at a configurable context length (no downloads).

Three kinds, each a few facts hidden in generated filler sentences, then a question at the end::

    niah               Some special magic numbers are hidden in the text below. ...
                       ... The special magic number for amber-falcon is 48213. ...
                       What is the special magic number for amber-falcon? Answer with the number.
                       -> Answer: amber-falcon is 48213
                       (``values: [word]``: "The special magic word for amber-falcon is lena." ...)
    variable_tracking  ... VAR QXT = 30517. ... VAR BMR = QXT. ... VAR ZKA = BMR. ...
                       Which variables are assigned the value 30517? Answer with the names.
                       -> Answer: QXT, BMR, ZKA
    multi_doc_qa       Document 1: Velmora / Velmora is a town. ... The mayor of Velmora is Tobin Reyes. ...
                       Document 2: Kelford / ...
                       Who is the mayor of Velmora? Answer briefly.    (or: In Document 1, who is the mayor?)
                       -> Answer: The mayor of Velmora is Tobin Reyes.   (Document 1: Velmora. The mayor ...)

A demonstration's answer (what SFT teaches) names what it looks up before the value, as the context states
it: the asked key, the town (and the document's number). Written that way, the value follows a phrase of the
context the model has just written, and finding it is copying what comes next; answering the bare value means
carrying the asked key to the answer and matching it there, which the tiny model built from scratch did not
learn (README, "What retrieval 0.5 was": retrieval 0.5 with bare answers, 0.92 with these, same steps). The
reward scores only the values, so a bare answer scores the same. Variable tracking answers its names only
(each hop's name comes before the one it copies).

Every prompt holds distractors of the same kind as the answer (the other keys' numbers, other variable
chains, the other documents' facts); they are the sample's ``distractors``, which the reward uses to refuse
answers that list everything (:mod:`cascade_longctx.reward`). Facts are inserted at stratified random
depths (with k facts, one in each k-th of the context), so over many prompts the asked fact sits anywhere
from the start to the end; ``depth`` records where (0 = start, 1 = end).

**Length.** There is no tokenizer here, so lengths are counted in *pieces*: words, single digits and
punctuation marks (:func:`approx_tokens`), which is how the cascade tokenizer pre-splits text (one
token per digit) and close to what a large-vocabulary BPE produces for plain English. The filler is
added sentence by sentence until the whole user message reaches ``context_tokens`` pieces. The cascade
tokenizer (trained on the default domains and these prompts) gives 1.02-1.17 tokens per piece for a chat
prompt, template included: the filler words are one token each, the generated names several.

**Splits.** An item is in a split when its prompt hashes there (:func:`generate_items`), and everything
it asks about or holds as a distractor -- keys, values, variable names, towns, people -- is drawn from
that split's share of each name pool (:func:`split_of` on the name): no held-out key, value or name ever
appears in a training prompt. Only the filler sentences and the templates are shared.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

from cascade.environments.generated import generate_items, item_id, split_of

TASKS = ("niah", "variable_tracking", "multi_doc_qa")
_SALT = "cascade-longctx"
_MAX_DRAWS = 10_000

_PIECE = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]|\n")


def approx_tokens(text: str) -> int:
    """Approximate token count: words, single digits, punctuation marks and line breaks (module docstring)."""
    return len(_PIECE.findall(text))


@dataclass(frozen=True)
class LongContextTask:
    id: str
    kind: str
    prompt: str
    question: str
    values: tuple[str, ...]
    """The expected answer values, in the order the question asks for them."""
    distractors: tuple[str, ...]
    """The other values of the same kind the context holds (wrong answers that look right)."""
    depth: float
    """Where the (first) asked fact sits in the context: 0 = start, 1 = end."""
    stated: str
    """What a demonstration answers after ``Answer: ``: the values, each after the context's words for it."""
    value_kind: str
    """What the asked values are: number, word (niah), variable (variable tracking), person or number (documents)."""

    @property
    def answer(self) -> str:
        return "Answer: " + self.stated


# ---- filler --------------------------------------------------------------------------------------
# No digits, no capitalised names and no word of the needles' vocabulary, so a fact is never faked by filler.

_SUBJECTS = ["The farmer", "A child", "The old teacher", "My neighbour", "The baker", "A small dog", "The painter",
             "Our guide", "The fisherman", "A young nurse", "The driver", "The tailor", "A quiet student",
             "The gardener", "The singer", "A tired cook"]
_VERBS = ["walks to", "looks at", "talks about", "waits near", "thinks about", "cleans", "paints", "visits",
          "sits by", "runs past", "dreams of", "sings near", "reads about", "smiles at"]
_OBJECTS = ["the market", "the river bank", "a green field", "the old bridge", "the garden", "the harbour",
            "a busy street", "the library", "the hill", "a wooden boat", "the bakery", "the station",
            "a quiet lake", "the school yard", "the forest path"]
_TAILS = ["", " in the morning", " after lunch", " every day", " with a friend", " before the rain", " at night",
          " on the weekend", " without a word", " once again"]


def filler_sentence(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}."


def fill(rng: random.Random, facts: Sequence[str], budget: int) -> str:
    """Filler sentences of about ``budget`` pieces with ``facts`` inserted, in order, at stratified random depths
    (the i-th of k facts somewhere in the i-th k-th of the filler)."""
    filler: list[str] = []
    used = 0
    while True:
        sentence = filler_sentence(rng)
        size = approx_tokens(sentence)
        if used + size / 2 > budget:  # stop at the sentence boundary nearest to the budget
            break
        filler.append(sentence)
        used += size
    k = len(facts)
    positions = [int(len(filler) * (i + rng.random()) / k) for i in range(k)]
    for offset, (position, fact) in enumerate(zip(positions, facts)):
        filler.insert(position + offset, fact)
    return " ".join(filler)


def _depth(context: str, fact: str) -> float:
    return round(context.index(fact) / max(1, len(context) - len(fact)), 3)


# ---- name pools, split by hash ---------------------------------------------------------------------

_ADJECTIVES = ["amber", "brisk", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy", "jolly", "keen",
               "lively", "misty", "noble", "olive", "proud", "rusty", "silent", "tidy", "vivid", "wild", "zesty",
               "bold", "crisp", "dim", "fancy", "grand", "hasty", "ivory", "jade", "lunar", "merry", "neat", "pale",
               "royal", "sandy", "sober", "tawny", "velvet", "woolly"]
_NOUNS = ["falcon", "otter", "maple", "comet", "lantern", "pebble", "canyon", "violin", "marble", "orchid", "tiger",
          "walnut", "beacon", "cactus", "dolphin", "ember", "fossil", "glacier", "harp", "iris", "jaguar", "kettle",
          "lemon", "meadow", "nectar", "oyster", "parrot", "quartz", "raven", "saddle", "tulip", "urchin", "vessel",
          "willow", "yarrow", "zebra", "badger", "cobalt", "dagger", "ferret"]
_TOWN_STARTS = ["Vel", "Mor", "Tal", "Bren", "Cor", "Dun", "Esk", "Fal", "Gar", "Hal", "Ith", "Kel", "Lor", "Mar",
                "Nor", "Orm", "Pel", "Quin", "Ros", "Sel", "Thal", "Ul", "Var", "Wen", "Yar", "Zan", "Ash", "Bel",
                "Car", "Dor"]
_TOWN_ENDS = ["mora", "ford", "wick", "dale", "holm", "stead", "ton", "bury", "mere", "gate", "haven", "port", "field",
              "crest", "vale", "brook", "moor", "ridge", "shire", "wood", "by", "thorpe", "ley", "ham", "mouth", "well",
              "stow", "combe", "fell", "garth"]
_FIRST_NAMES = ["Tobin", "Alma", "Bruno", "Celia", "Dario", "Edith", "Felix", "Greta", "Hugo", "Ines", "Jonas",
                "Kira", "Leon", "Mina", "Nils", "Olga", "Pavel", "Rosa", "Silas", "Tess", "Ugo", "Vera", "Wim",
                "Xenia", "Yusuf", "Zora", "Anton", "Bea", "Cyril", "Dora"]
_LAST_NAMES = ["Reyes", "Marsh", "Holt", "Quinn", "Baker", "Novak", "Ortiz", "Fischer", "Lund", "Costa", "Brandt",
               "Moreau", "Petrov", "Sato", "Okafor", "Vance", "Weller", "Yilmaz", "Adler", "Berg", "Castel", "Dahl",
               "Engel", "Farrow", "Grove", "Hale", "Ivers", "Janssen", "Kemp", "Lowe"]


def _draw(rng: random.Random, make: Callable[[random.Random], str], split: str, pool: str, taken: set[str],
          shared: bool = False) -> str:
    """A fresh name of ``split``'s share of ``pool`` (not in ``taken``, which it joins); of the whole pool if it is
    ``shared`` by the splits (the word values, see ``WORDS``)."""
    for _ in range(_MAX_DRAWS):
        name = make(rng)
        if name not in taken and (shared or split_of(name, f"{_SALT}/{pool}") == split):
            taken.add(name)
            return name
    raise ValueError(f"the {split} share of the {pool} pool ran out of names: ask for fewer keys or documents")


def _number(low: int, high: int) -> Callable[[random.Random], str]:
    """Numbers of every task share one pool, so a held-out number is never a training value of any kind."""
    return lambda rng: str(rng.randint(low, high))


def _key(rng: random.Random) -> str:
    return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"


def _variable(rng: random.Random) -> str:
    name = "".join(rng.choices(string.ascii_uppercase, k=3))
    return name if name != "VAR" else _variable(rng)


def _town(rng: random.Random) -> str:
    return rng.choice(_TOWN_STARTS) + rng.choice(_TOWN_ENDS)


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"


_VALUE = _number(10000, 99999)  # five digits: five tokens, short enough for a tiny model to copy

# Word values for niah (``values: [word]``): lower-case names and things, none a word of the filler, the keys or
# the templates, so a word found in an answer is always one of the needles' values. Copying a word is what tool
# arguments (an addressee, a subject) need; in the default's SFT, word needles did not teach tool calling to
# copy them (README, "Retrieval with word values").
# Unlike every other pool, the splits share it, as the workplace's names are shared: a held-out item pairs its
# (held-out) keys with words seen in training. With words split too, the model built from scratch answered a
# held-out needle with a training word every time (31 of 31): it never saw the held-out words anywhere, and
# copying a token also needs the token to be learned, which digits, shared by every number, always are.
WORDS = ["ada", "bram", "cleo", "dax", "elsa", "finn", "gwen", "hank", "ilse", "jude", "kurt", "lena", "milo",
         "nora", "otto", "pia", "rafe", "sven", "tara", "uli", "wren", "yara", "zeke", "bella", "cosmo", "dina",
         "ezra", "faye", "gil", "hedy", "anchor", "basket", "candle", "drum", "feather", "globe", "hammer", "jar",
         "kite", "ladder", "mirror", "paddle", "rope", "spoon", "trumpet", "umbrella", "wagon", "whistle", "button",
         "compass", "engine", "funnel", "helmet", "jacket", "magnet", "napkin", "pencil", "ribbon", "scarf",
         "thimble", "bucket", "carpet", "ferry", "goblet", "hatchet", "kayak", "locket", "mitten", "noodle", "puzzle"]
VALUE_KINDS = {"number": (_VALUE, False), "word": (lambda rng: rng.choice(WORDS), True)}
"""niah's value kinds: how a value is drawn, and whether the splits share the pool."""


# ---- the three kinds ---------------------------------------------------------------------------------

NIAH_INTRO = "Some special magic {kind}s are hidden in the text below. Find them."
VT_INTRO = "Memorize the variable assignments in the text below."
QA_INTRO = "Answer the question about the documents below."


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def niah(rng: random.Random, split: str, context_tokens: int, keys: int, queries: int, kind: str = "number") -> tuple:
    """Multi-key needle in a haystack: ``keys`` needles, ``queries`` of them asked; values of ``kind`` (number, word)."""
    taken: set[str] = set()
    names = [_draw(rng, _key, split, "key", taken) for _ in range(keys)]
    make, shared = VALUE_KINDS[kind]
    values = [_draw(rng, make, split, kind, taken, shared) for _ in range(keys)]
    needles = [f"The special magic {kind} for {k} is {v}." for k, v in zip(names, values)]
    asked = rng.sample(range(keys), queries)
    if queries == 1:
        question = f"What is the special magic {kind} for {names[asked[0]]}? Answer with the {kind}."
    else:
        question = (f"What are the special magic {kind}s for {_join([names[i] for i in asked])}? "
                    f"Answer with the {kind}s, in that order.")
    intro = NIAH_INTRO.format(kind=kind)
    budget = context_tokens - approx_tokens(f"{intro}\n\n{' '.join(needles)}\n\n{question}")
    context = fill(rng, needles, budget)
    expected = tuple(values[i] for i in asked)
    return (f"{intro}\n\n{context}\n\n{question}", question, expected,
            tuple(v for v in values if v not in expected), _depth(context, needles[asked[0]]),
            ", ".join(f"{names[i]} is {values[i]}" for i in asked), kind)


def variable_tracking(rng: random.Random, split: str, context_tokens: int, chains: int, hops: int) -> tuple:
    """``chains`` chains of ``hops`` copies each (``VAR B = A.``) from a number; one chain's names are asked."""
    taken: set[str] = set()
    names = [[_draw(rng, _variable, split, "variable", taken) for _ in range(hops + 1)] for _ in range(chains)]
    values = [_draw(rng, _VALUE, split, "number", taken) for _ in range(chains)]
    statements = [[f"VAR {chain[0]} = {value}."] + [f"VAR {b} = {a}." for a, b in zip(chain, chain[1:])]
                  for chain, value in zip(names, values)]
    order = [c for c in range(chains) for _ in range(hops + 1)]  # interleave the chains, each kept in order
    rng.shuffle(order)
    cursors = [iter(s) for s in statements]
    facts = [next(cursors[c]) for c in order]
    question = f"Which variables are assigned the value {values[0]}? Answer with the names."
    budget = context_tokens - approx_tokens(f"{VT_INTRO}\n\n{' '.join(facts)}\n\n{question}")
    context = fill(rng, facts, budget)
    return (f"{VT_INTRO}\n\n{context}\n\n{question}", question, tuple(names[0]),
            tuple(n for chain in names[1:] for n in chain), _depth(context, statements[0][0]), ", ".join(names[0]),
            "variable")


class Attribute(NamedTuple):
    fact: str
    by_town: str
    """The question when it names the town."""
    by_number: str
    """The question's end when it names the document by number."""
    make: Callable[[random.Random], str]
    pool: str


_ATTRIBUTES = {
    "mayor": Attribute("The mayor of {town} is {value}.", "Who is the mayor of {town}?", "who is the mayor?",
                       _person, "person"),
    "founded": Attribute("{town} was founded in {value}.", "In what year was {town} founded?",
                         "in what year was the town founded?", _number(1100, 1999), "number"),
    "population": Attribute("The population of {town} is {value}.", "What is the population of {town}?",
                            "what is the population of the town?", _VALUE, "number"),
    "elevation": Attribute("{town} lies at an elevation of {value} metres.", "At what elevation does {town} lie?",
                           "at what elevation does the town lie?", _number(100, 2999), "number"),
}


def multi_doc_qa(rng: random.Random, split: str, context_tokens: int, documents: int) -> tuple:
    """``documents`` short documents about towns, each with every attribute; one fact of one document asked,
    naming the town or the document's number."""
    taken: set[str] = set()
    towns = [_draw(rng, _town, split, "town", taken) for _ in range(documents)]
    facts = {(d, name): _draw(rng, a.make, split, a.pool, taken)
             for d in range(documents) for name, a in _ATTRIBUTES.items()}
    doc, attribute = rng.randrange(documents), rng.choice(list(_ATTRIBUTES))
    asked = _ATTRIBUTES[attribute]
    expected = facts[doc, attribute]
    fact = asked.fact.format(town=towns[doc], value=expected)
    if rng.random() < 0.5:
        question, stated = asked.by_town.format(town=towns[doc]) + " Answer briefly.", fact
    else:
        question, stated = f"In Document {doc + 1}, {asked.by_number} Answer briefly.", f"Document {doc + 1}: {towns[doc]}. {fact}"
    heads, bodies = [], []  # per document: its title and first sentence; its facts, in random order
    for d, town in enumerate(towns):
        heads.append(f"Document {d + 1}: {town}\n{town} is a town.")
        bodies.append([_ATTRIBUTES[name].fact.format(town=town, value=facts[d, name])
                       for name in rng.sample(list(_ATTRIBUTES), len(_ATTRIBUTES))])
    fixed = approx_tokens("\n\n".join([QA_INTRO, *heads, *(" ".join(body) for body in bodies), question]))
    budget = (context_tokens - fixed) // documents
    context = "\n\n".join(f"{head} {fill(rng, body, budget)}" for head, body in zip(heads, bodies))
    return (f"{QA_INTRO}\n\n{context}\n\n{question}", question, (expected,),
            tuple(v for v in facts.values() if v != expected), _depth(context, fact), stated, asked.pool)


# ---- generation ----------------------------------------------------------------------------------


def check_options(context_tokens: int, keys: int, queries: Sequence[int], chains: int, hops: int,
                  documents: int, values: Sequence[str] = ("number",)) -> None:
    """Raise ValueError naming the first option that cannot work."""
    if not values or set(values) - set(VALUE_KINDS):
        raise ValueError(f"values must be a non-empty list of {sorted(VALUE_KINDS)}, got {list(values)}")
    if context_tokens < 1:
        raise ValueError(f"context_tokens must be positive, got {context_tokens}")
    if not queries or any(not 1 <= q <= keys for q in queries):
        raise ValueError(f"queries must be a non-empty list of counts in 1..keys ({keys}), got {list(queries)}")
    for name, value in {"chains": chains, "hops": hops, "documents": documents}.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def generate(kind: str, split: str, n: int, seed: int, context_tokens: int = 400, keys: int = 4,
             queries: Sequence[int] = (1,), chains: int = 2, hops: int = 2,
             documents: int = 3, values: Sequence[str] = ("number",)) -> list[LongContextTask]:
    """Up to ``n`` distinct tasks of ``kind`` and ``split``; same arguments, same list (module docstring).
    ``values``: the kinds niah's values are drawn from, one per item (number, word)."""
    if kind not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {kind!r}")
    check_options(context_tokens, keys, queries, chains, hops, documents, values)
    queries, values = list(queries), list(values)
    make = {
        # one value kind draws nothing: the items of number-only options stay what they were
        "niah": lambda rng: niah(rng, split, context_tokens, keys, rng.choice(queries),
                                 rng.choice(values) if len(values) > 1 else values[0]),
        "variable_tracking": lambda rng: variable_tracking(rng, split, context_tokens, chains, hops),
        "multi_doc_qa": lambda rng: multi_doc_qa(rng, split, context_tokens, documents),
    }[kind]

    def task(rng: random.Random) -> LongContextTask:
        prompt, *fields = make(rng)
        return LongContextTask(item_id(f"longctx-{kind}", prompt), kind, prompt, *fields)

    options = f"{context_tokens}/{keys}/{queries}/{chains}/{hops}/{documents}" + ("" if values == ["number"] else f"/{values}")
    return generate_items(task, lambda t: t.prompt, split, n, seed, f"{_SALT}/{kind}/{options}")
