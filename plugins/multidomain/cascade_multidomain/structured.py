r"""Structured output: the prompt gives a JSON schema and some facts; the answer is one JSON object.

Prompt (one line each)::

    Schema: {"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},...}
    Facts: name Ann; age 31
    Reply with JSON only.

``difficulty`` 1..3: 2, 3 or 4 fields of one record kind (person, product, meeting), drawn from
strings, integers, enums and booleans; level 3 adds an array of strings. Every schema is closed
(``additionalProperties: false``, every field ``required``), so exactly one object is correct.

The reward (:func:`check_output`) gives 1 only if *all* of these hold:

* the answer (``<think>`` sections removed, surrounding whitespace stripped) is one JSON value and
  nothing else -- trailing or leading text fails. One exception, on by default (``allow_fence``):
  the whole answer may be a single Markdown fence ```` ```json ... ``` ```` (or a bare ```` ``` ````);
* it parses as strict JSON: no NaN/Infinity, no duplicate keys;
* it validates against the schema (jsonschema, the schema's own draft, Draft 2020-12 by default);
* every value the task defines (``expected``) is equal *with the same JSON type*: ``31.0`` is not
  the integer ``31`` and ``1`` is not ``true`` (jsonschema alone would accept ``31.0`` as an integer).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any, Sequence

import jsonschema

from cascade import Environment, Episode, Reward, RewardResult, Sample
from cascade.environments.generated import NO_THINKING, generate_items, item_id, spread, strip_think

KINDS = ("person", "product", "meeting")
INSTRUCTION = "Reply with JSON only."
_SALT = "cascade-multidomain/structured"

_NAMES = ("Ann", "Ben", "Eva", "Leo", "Mia", "Sam", "Zoe", "Max", "Ivy", "Raj", "Kim", "Tom")
_CITIES = ("Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo")
_ITEMS = ("lamp", "desk", "chair", "pen", "mug", "bag", "clock", "shelf")
_COLORS = ("red", "blue", "green", "black", "white")
_TOPICS = ("budget", "hiring", "launch", "review", "design", "sales")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri")
_TAGS = ("new", "urgent", "home", "work", "sale", "team")

# field name -> (schema, value maker) per kind; the order is the order of the fields in the prompt
_FIELDS: dict[str, list[tuple[str, dict, Any]]] = {
    "person": [
        ("name", {"type": "string"}, lambda r: r.choice(_NAMES)),
        ("age", {"type": "integer", "minimum": 0}, lambda r: r.randint(18, 80)),
        ("city", {"enum": list(_CITIES)}, lambda r: r.choice(_CITIES)),
        ("member", {"type": "boolean"}, lambda r: r.random() < 0.5),
    ],
    "product": [
        ("item", {"type": "string"}, lambda r: r.choice(_ITEMS)),
        ("price", {"type": "integer", "minimum": 1}, lambda r: r.randint(1, 99)),
        ("color", {"enum": list(_COLORS)}, lambda r: r.choice(_COLORS)),
        ("stock", {"type": "boolean"}, lambda r: r.random() < 0.5),
    ],
    "meeting": [
        ("topic", {"type": "string"}, lambda r: r.choice(_TOPICS)),
        ("hour", {"type": "integer", "minimum": 0, "maximum": 23}, lambda r: r.randint(8, 18)),
        ("day", {"enum": list(_DAYS)}, lambda r: r.choice(_DAYS)),
        ("online", {"type": "boolean"}, lambda r: r.random() < 0.5),
    ],
}
_TAGS_FIELD = ("tags", {"type": "array", "items": {"type": "string"}, "minItems": 1},
               lambda r: r.sample(_TAGS, r.randint(1, 2)))


@dataclass(frozen=True)
class StructuredTask:
    id: str
    schema: dict
    facts: str
    expected: dict
    kind: str
    difficulty: int

    @property
    def prompt(self) -> str:
        return f"Schema: {compact(self.schema)}\nFacts: {self.facts}\n{INSTRUCTION}"

    @property
    def solution(self) -> str:
        return compact(self.expected)


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _fact(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(value)
    return str(value)


def _make(rng: random.Random, kind: str, difficulty: int) -> StructuredTask:
    fields = _FIELDS[kind]
    count = min(difficulty + 1, len(fields))
    chosen = [fields[0], *rng.sample(fields[1:], count - 1)]
    chosen.sort(key=fields.index)
    if difficulty == 3:
        chosen.append(_TAGS_FIELD)
    expected = {name: make(rng) for name, _, make in chosen}
    schema = {
        "type": "object",
        "properties": {name: schema for name, schema, _ in chosen},
        "required": [name for name, _, _ in chosen],
        "additionalProperties": False,
    }
    facts = "; ".join(f"{name} {_fact(expected[name])}" for name, _, _ in chosen)
    key = f"{compact(schema)}\n{facts}"
    return StructuredTask(item_id(f"json-{kind}-d{difficulty}", key), schema, facts, expected, kind, difficulty)


def generate(split: str, n: int, seed: int, difficulty: int = 1, kinds: Sequence[str] = KINDS) -> list[StructuredTask]:
    """Up to ``n`` distinct tasks of ``split`` at ``difficulty`` (1..3), cycling through ``kinds``."""
    if difficulty not in (1, 2, 3):
        raise ValueError(f"difficulty must be 1, 2 or 3, got {difficulty}")
    if not kinds or set(kinds) - set(KINDS):
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    counter = iter(range(10**12))

    def make(rng: random.Random) -> StructuredTask:
        return _make(rng, kinds[next(counter) % len(kinds)], difficulty)

    return generate_items(make, lambda t: t.prompt, split, n, seed, f"{_SALT}/{difficulty}/{','.join(kinds)}")


# ---- checking ------------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json)?[ \t]*\n?(.*?)\n?[ \t]*```", re.DOTALL)


class _Invalid(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Invalid("duplicate key")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise _Invalid(f"{name} is not JSON")


def parse_output(text: str, allow_fence: bool = True) -> Any:
    """The JSON value of an answer, or raise ValueError saying why it is not exactly one JSON value."""
    body = strip_think(text).strip()
    if allow_fence and body.startswith("```"):
        match = _FENCE.fullmatch(body)
        if not match:
            raise _Invalid("text outside the fence")
        body = match.group(1).strip()
    if not body:
        raise _Invalid("empty answer")
    try:  # json.loads rejects trailing text ("Extra data") and leading text
        return json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as err:
        raise _Invalid(f"not JSON: {err.msg}") from err


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values, types included (bool is not int, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return a == b


def check_output(text: str, schema: dict, expected: dict | None = None, allow_fence: bool = True) -> tuple[bool, str]:
    """``(passed, status)``; status is ``ok``, ``not_json``, ``schema`` or ``mismatch``."""
    try:
        value = parse_output(text, allow_fence)
    except ValueError:
        return False, "not_json"
    validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    if not validator_cls(schema).is_valid(value):
        return False, "schema"
    if expected is not None:
        if not isinstance(value, dict) or any(k not in value or not same_json(value[k], v) for k, v in expected.items()):
            return False, "mismatch"
    return True, "ok"


# ---- environment and reward ----------------------------------------------------------------------


class StructuredEnvironment(Environment):
    """Single-turn JSON output. ``difficulties`` mixes levels 1..3; ``kinds`` picks record kinds."""

    def __init__(self, difficulties: Sequence[int] = (1,), kinds: Sequence[str] = KINDS):
        self.difficulties = list(difficulties)
        self.kinds = list(kinds)

    def tasks(self, split: str, n: int, seed: int) -> list[StructuredTask]:
        out: list[StructuredTask] = []
        for level, count in zip(self.difficulties, spread(n, self.difficulties)):
            out += generate(split, count, seed, level, self.kinds)
        return out

    def samples(self, split, n, seed):
        return [
            Sample(id=t.id, domain=self.domain, messages=[{"role": "user", "content": t.prompt}],
                   answer={"schema": t.schema, "expected": t.expected}, meta={"kind": t.kind, "difficulty": t.difficulty})
            for t in self.tasks(split, n, seed)
        ]

    def demonstrations(self, n, seed):
        return [
            [{"role": "user", "content": t.prompt}, {"role": "assistant", "content": NO_THINKING + t.solution}]
            for t in self.tasks("train", n, seed + 1)
        ]


class JsonSchemaReward(Reward):
    """1 if the final answer is exactly one JSON value that validates against the sample's schema and
    matches its expected values (see :func:`check_output`), else 0. ``allow_fence``: accept one
    ```json fence around the whole answer."""

    def __init__(self, allow_fence: bool = True):
        self.allow_fence = allow_fence

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        results = []
        for e in episodes_G:
            answer = e.sample.answer
            passed, status = check_output(e.messages[-1]["content"], answer["schema"], answer.get("expected"), self.allow_fence)
            results.append(RewardResult(float(passed), info={"status": status}))
        return results
