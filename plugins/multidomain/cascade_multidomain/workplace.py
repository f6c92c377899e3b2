r"""Agentic tool calling: a workplace assistant over a small in-memory database.

The database holds calendar ``events`` (E1, E2...), sent ``emails`` (M1...) and ``tickets`` (T1...).
The tools are declared in the system prompt in the SPEC.md format (one JSON object per line inside
``<tools>...</tools>``, the same text the ChatML template writes for ``tools=``), and the model calls
them as ``<tool_call><function=NAME><parameter=P>value</parameter></function></tool_call>``
(several calls per turn allowed).

Each turn, :meth:`WorkplaceEnvironment.step` *replays* every tool call of every assistant turn of the
episode on a fresh copy of the sample's initial database (no state is kept between calls, so
concurrent episodes cannot leak into each other), and answers the calls of the last turn with one
``tool`` message each: ``{"ok": true, ...}`` or ``{"error": "..."}``. It never raises: malformed
markup, unknown tools, unknown / missing / duplicate parameters, wrong argument types (``hour=nine``)
and values outside an enum are all answered with an error, and a failed call changes nothing.
The episode ends when the model answers without a tool call, or at ``max_turns``.

Parsing and argument typing are :mod:`cascade.environments.tool_calls` (shared with other domains):
strict about the tags, the tool and parameter names and the types, forgiving of whitespace.

The reward :class:`DbStateReward` replays the whole episode the same way and scores 1 if the final
database equals the expected one (field by field, types included), else 0 (``metric: all``). With
``metric: part`` it scores the share of the database changes that are right (:func:`changes`): the changes
the episode made and the expected ones, as (table, id, field, value) facts, intersection over union. A
request that needs a word no rollout writes yet (the subject of an email) then still tells a right
addressee from a wrong one, where ``all`` scores every rollout 0 and GRPO learns nothing from the group.

``difficulty``: 1 = one action, records named by title and id (``Close the vpn ticket (T37).``);
2 = two actions; 3 = the record is named by its title alone, so the model must ``search`` for its id
first (a second turn).
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from typing import Any, Sequence

from cascade import Environment, Episode, Message, Reward, RewardResult, Sample, StepResult
from cascade.environments import tool_calls
from cascade.environments.generated import NO_THINKING, generate_items, item_id, spread
from cascade.environments.tool_calls import (
    ToolCall, assistant_turns, function_tool, has_tool_call, parameter_specs, parse_tool_calls, render_call)
from cascade_multidomain.structured import same_json

DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri"]
STATUSES = ["open", "pending", "closed"]
TABLES = ["events", "emails", "tickets"]
SYSTEM = "You are a workplace assistant. Use the tools, then reply Done."
FINAL = "Done."
_SALT = "cascade-multidomain/workplace"

_EVENT_TITLES = ("standup", "lunch", "review", "demo", "sync", "retro", "planning", "training")
_TICKET_TITLES = ("printer", "laptop", "vpn", "badge", "wifi", "monitor", "login", "phone")
_PEOPLE = ("ann", "ben", "eva", "leo", "mia", "sam", "kim", "joe", "zoe", "max",
           "ivy", "tom", "liz", "dan", "amy", "ray", "kay", "ned", "pat", "roy")
_TOPICS = ("budget", "hiring", "launch", "report", "invoice", "agenda", "offsite", "roadmap", "payroll", "security",
           "onboarding", "travel", "pricing", "contract", "survey", "release", "audit", "vendor", "backlog", "quota")
_ID_NUMBERS = range(1, 100)
"""Record ids are drawn from E1..E99 / T1..T99, so a request that names a record by id has as many
distinct texts as a scheduling one: with three fixed ids, 'Close ticket T2.' had six texts in all and
the generator's distinct tasks were nearly all scheduling."""


TOOLS: list[dict] = [
    function_tool("search", "Find records whose text contains query.",
                  {"table": {"type": "string", "enum": TABLES}, "query": {"type": "string"}}, ["table", "query"]),
    function_tool("create_event", "Add a calendar event.",
                  {"title": {"type": "string"}, "day": {"type": "string", "enum": DAYS},
                   "hour": {"type": "integer", "minimum": 8, "maximum": 18}}, ["title", "day", "hour"]),
    function_tool("delete_event", "Remove a calendar event.", {"event_id": {"type": "string"}}, ["event_id"]),
    function_tool("send_email", "Send an email.", {"to": {"type": "string"}, "subject": {"type": "string"}}, ["to", "subject"]),
    function_tool("update_ticket", "Change a ticket's status and/or assignee.",
                  {"ticket_id": {"type": "string"}, "status": {"type": "string", "enum": STATUSES},
                   "assignee": {"type": "string"}}, ["ticket_id"]),
]
_SPECS = parameter_specs(TOOLS)


def tools_system_prompt(system: str = SYSTEM, tools: Sequence[dict] = TOOLS) -> str:
    """The system turn's content with the workplace tools declared as the ChatML template writes them."""
    return tool_calls.tools_system_prompt(system, tools)


def typed_arguments(call: ToolCall) -> dict[str, Any]:
    """The call's arguments converted to the workplace tools' declared types; raises ValueError."""
    return tool_calls.typed_arguments(call, _SPECS)


# ---- the database --------------------------------------------------------------------------------


def _find(db: dict, table: str, record_id: str) -> dict:
    for record in db[table]:
        if record["id"] == record_id:
            return record
    raise ValueError(f"no {table[:-1]} with id {record_id!r}")


def _next_id(db: dict, table: str, prefix: str) -> str:
    numbers = [int(r["id"][1:]) for r in db[table] if r["id"][1:].isdigit()]
    return f"{prefix}{max(numbers, default=0) + 1}"


def execute(db: dict, call: ToolCall) -> dict:
    """Run one call on ``db`` (in place); returns the tool's JSON result, ``{"error": ...}`` on failure
    (and then ``db`` is unchanged)."""
    if call.error:
        return {"error": call.error}
    try:
        args = typed_arguments(call)
        if call.name == "search":
            query = args["query"].lower()
            hits = [r for r in db[args["table"]] if any(query in str(v).lower() for v in r.values())]
            return {"ok": True, "results": hits}
        if call.name == "create_event":
            record = {"id": _next_id(db, "events", "E"), "title": args["title"], "day": args["day"], "hour": args["hour"]}
            db["events"].append(record)
            return {"ok": True, "id": record["id"]}
        if call.name == "delete_event":
            db["events"].remove(_find(db, "events", args["event_id"]))
            return {"ok": True}
        if call.name == "send_email":
            record = {"id": _next_id(db, "emails", "M"), "to": args["to"], "subject": args["subject"]}
            db["emails"].append(record)
            return {"ok": True, "id": record["id"]}
        # update_ticket
        if "status" not in args and "assignee" not in args:
            raise ValueError("update_ticket: give status and/or assignee")
        ticket = _find(db, "tickets", args["ticket_id"])
        ticket.update({k: args[k] for k in ("status", "assignee") if k in args})
        return {"ok": True}
    except ValueError as err:
        return {"error": str(err)}
    except Exception as err:  # noqa: BLE001 - the model's input must never crash a rollout
        return {"error": f"{call.name}: {type(err).__name__}: {err}"}


def replay(initial: dict, turns: Sequence[str]) -> tuple[dict, list[list[tuple[ToolCall, dict]]]]:
    """The database after every call of ``turns``, and each turn's (call, result) pairs."""
    db = copy.deepcopy(initial)
    log = []
    for text in turns:
        log.append([(call, execute(db, call)) for call in parse_tool_calls(text)])
    return db, log


# ---- generation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkplaceTask:
    id: str
    instruction: str
    initial: dict
    turns: tuple[tuple[tuple[str, tuple[tuple[str, Any], ...]], ...], ...]
    """The reference solution: per assistant turn, the calls (name, arguments) it makes."""
    kind: str
    difficulty: int

    def solution_turns(self) -> list[str]:
        return [NO_THINKING + "".join(render_call(n, **dict(a)) for n, a in turn) for turn in self.turns] + [NO_THINKING + FINAL]

    @property
    def expected(self) -> dict:
        return replay(self.initial, self.solution_turns())[0]


def _initial_db(rng: random.Random) -> dict:
    events = zip(sorted(rng.sample(_ID_NUMBERS, 2)), rng.sample(_EVENT_TITLES, 2))
    tickets = zip(sorted(rng.sample(_ID_NUMBERS, 3)), rng.sample(_TICKET_TITLES, 3))
    return {
        "events": [{"id": f"E{n}", "title": t, "day": rng.choice(DAYS), "hour": rng.randint(8, 18)} for n, t in events],
        "emails": [{"id": "M1", "to": f"{rng.choice(_PEOPLE)}@acme.com", "subject": rng.choice(_TOPICS)}],
        "tickets": [{"id": f"T{n}", "title": t, "status": "open", "assignee": ""} for n, t in tickets],
    }


def _action(rng: random.Random, db: dict, by_title: bool) -> tuple[str, str, list]:
    """(kind, sentence, turns) for one action; ``by_title`` names existing records by title (needs search)."""
    kinds = ["create_event", "send_email", "update_ticket", "assign_ticket", "delete_event"]
    if by_title:
        kinds = ["update_ticket", "assign_ticket", "delete_event"]
    kind = rng.choice(kinds)
    if kind == "create_event":
        title, day, hour = rng.choice(_EVENT_TITLES), rng.choice(DAYS), rng.randint(8, 18)
        return kind, f"Schedule {title} on {day} at {hour}.", [[("create_event", (("title", title), ("day", day), ("hour", hour)))]]
    if kind == "send_email":
        person, topic = rng.choice(_PEOPLE), rng.choice(_TOPICS)
        to = f"{person}@acme.com"
        return kind, f"Email {to} with subject {topic}.", [[("send_email", (("to", to), ("subject", topic)))]]
    if kind == "delete_event":
        event = rng.choice(db["events"])
        call = ("delete_event", (("event_id", event["id"]),))
        if by_title:
            search = ("search", (("table", "events"), ("query", event["title"])))
            return kind, f"Cancel the {event['title']} event.", [[search], [call]]
        return kind, f"Cancel the {event['title']} event ({event['id']}).", [[call]]
    ticket = rng.choice(db["tickets"])
    if kind == "update_ticket":
        status = rng.choice(["pending", "closed"])
        call = ("update_ticket", (("ticket_id", ticket["id"]), ("status", status)))
        template = "Close {}." if status == "closed" else "Set {} to pending."
    else:
        person = rng.choice(_PEOPLE)
        call = ("update_ticket", (("ticket_id", ticket["id"]), ("assignee", person)))
        template = "Assign {} to " + person + "."
    if by_title:
        search = ("search", (("table", "tickets"), ("query", ticket["title"])))
        return kind, template.format(f"the {ticket['title']} ticket"), [[search], [call]]
    return kind, template.format(f"the {ticket['title']} ticket ({ticket['id']})"), [[call]]


def _make(rng: random.Random, difficulty: int) -> WorkplaceTask:
    db = _initial_db(rng)
    if difficulty == 1:
        kind, sentence, turns = _action(rng, db, by_title=False)
        instruction, kinds = sentence, [kind]
    elif difficulty == 2:
        while True:
            (k1, s1, t1), (k2, s2, t2) = _action(rng, db, False), _action(rng, db, False)
            if s1 != s2 and not (k1 == k2 == "delete_event"):
                break
        instruction, kinds, turns = f"{s1} {s2}", [k1, k2], [t1[0] + t2[0]]
    else:
        kind, sentence, turns = _action(rng, db, by_title=True)
        instruction, kinds = sentence, [kind]
    frozen = tuple(tuple((name, args) for name, args in turn) for turn in turns)
    key = instruction + "\n" + json.dumps(db, sort_keys=True)
    return WorkplaceTask(item_id(f"work-d{difficulty}", key), instruction, db, frozen, "+".join(kinds), difficulty)


def generate(split: str, n: int, seed: int, difficulty: int = 1) -> list[WorkplaceTask]:
    """Up to ``n`` distinct tasks of ``split`` at ``difficulty`` (1..3). The split is decided by the
    instruction text, so a test instruction never appears in train (whatever the database)."""
    if difficulty not in (1, 2, 3):
        raise ValueError(f"difficulty must be 1, 2 or 3, got {difficulty}")
    return generate_items(lambda rng: _make(rng, difficulty), lambda t: t.instruction, split, n, seed, f"{_SALT}/{difficulty}")


# ---- environment and reward ----------------------------------------------------------------------


class WorkplaceEnvironment(Environment):
    """Multi-turn tool calling over the workplace database (see the module docstring)."""

    def __init__(self, difficulties: Sequence[int] = (1,), max_turns: int = 4):
        self.difficulties = list(difficulties)
        self.max_turns = max_turns

    def tasks(self, split: str, n: int, seed: int) -> list[WorkplaceTask]:
        out: list[WorkplaceTask] = []
        for level, count in zip(self.difficulties, spread(n, self.difficulties)):
            out += generate(split, count, seed, level)
        return out

    @staticmethod
    def prompt(task: WorkplaceTask) -> list[Message]:
        return [{"role": "system", "content": tools_system_prompt()}, {"role": "user", "content": task.instruction}]

    def samples(self, split, n, seed):
        return [
            Sample(id=t.id, domain=self.domain, messages=self.prompt(t), answer={"initial": t.initial, "expected": t.expected},
                   meta={"kind": t.kind, "difficulty": t.difficulty})
            for t in self.tasks(split, n, seed)
        ]

    def step(self, sample: Sample, messages: list[Message]) -> StepResult:
        try:
            turns = assistant_turns(sample, messages)
            if not turns or not has_tool_call(turns[-1]):
                return StepResult(done=True)
            _, log = replay(sample.answer["initial"], turns)
            results = log[-1]
            metrics = {"tool_calls": float(len(results)), "tool_errors": float(sum("error" in r for _, r in results))}
            return StepResult(messages=[{"role": "tool", "content": json.dumps(r)} for _, r in results],
                              done=len(turns) >= self.max_turns, metrics=metrics)
        except Exception as err:  # noqa: BLE001 - never crash a rollout on the model's output
            return StepResult(messages=[{"role": "tool", "content": json.dumps({"error": f"environment: {err}"})}], done=True)

    def demonstrations(self, n, seed):
        demos = []
        for task in self.tasks("train", n, seed + 1):
            conversation = self.prompt(task)
            sample = Sample(task.id, self.domain, list(conversation), {"initial": task.initial})
            for text in task.solution_turns():
                conversation.append({"role": "assistant", "content": text})
                conversation += self.step(sample, conversation).messages
            demos.append(conversation)
        return demos


def changes(initial: dict, db: dict) -> set[tuple]:
    """What ``db`` changed against ``initial``, as facts: ``(table, id, field, value)`` for every field a record
    gained or changed (all the fields of a new record but its id; values as JSON, so 13 and "13" differ), and
    ``(table, id, None, None)`` for a removed record."""
    facts: set[tuple] = set()
    for table in TABLES:
        before = {r["id"]: r for r in initial.get(table, [])}
        after = {r["id"]: r for r in db.get(table, [])}
        for record_id, record in after.items():
            old = before.get(record_id, {})
            facts.update((table, record_id, k, json.dumps(v, sort_keys=True))
                         for k, v in record.items() if k != "id" and (k not in old or old[k] != v))
        facts.update((table, record_id, None, None) for record_id in before.keys() - after.keys())
    return facts


def part_credit(initial: dict, db: dict, expected: dict) -> float:
    """The right share of the changes: |made and expected| / |made or expected| (1.0 when neither changed anything)."""
    made, wanted = changes(initial, db), changes(initial, expected)
    return len(made & wanted) / len(made | wanted) if made | wanted else 1.0


METRICS = ("all", "part")


class DbStateReward(Reward):
    """``all``: 1 if replaying every tool call of the episode leaves the database equal to the expected one;
    ``part``: the right share of its changes (module docstring). ``info``: status, calls, errors, part."""

    def __init__(self, metric: str = "all"):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.metric = metric

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        results = []
        for e in episodes_G:
            initial, expected = e.sample.answer["initial"], e.sample.answer["expected"]
            db, log = replay(initial, assistant_turns(e.sample, e.messages))
            ok = same_json(db, expected)
            part = 1.0 if ok else part_credit(initial, db, expected)
            calls = [r for turn in log for _, r in turn]
            results.append(RewardResult(part if self.metric == "part" else float(ok), info={
                "status": "ok" if ok else "mismatch", "calls": len(calls), "errors": sum("error" in r for r in calls),
                "part": part}))
        return results
