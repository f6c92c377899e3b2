"""cascade-multidomain: MCQ letter extraction, exact JSON-schema output, and the workplace tool-calling
environment driven turn by turn with scripted assistant messages (no model needed)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from cascade import Episode, Sample
from cascade_multidomain import mcq, structured, workplace
from cascade_multidomain.mcq import MCQEnvironment, MCQMatchReward, extract_letter
from cascade_multidomain.structured import JsonSchemaReward, StructuredEnvironment, check_output
from cascade_multidomain.workplace import DbStateReward, WorkplaceEnvironment, parse_tool_calls, render_call
from conftest import drive

NT = "<think></think>"


def episode(sample: Sample, *turns: str) -> Episode:
    messages = list(sample.messages) + [{"role": "assistant", "content": t} for t in turns]
    return Episode(sample, messages, [], [], [])


def score(reward, sample, conversation_or_text):
    if isinstance(conversation_or_text, str):
        e = episode(sample, conversation_or_text)
    else:
        e = Episode(sample, conversation_or_text, [], [], [])
    return reward.score([e])[0]


# ---- MCQ -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, letters, expected", [
    ("Answer: C", "ABCD", "C"),
    ("answer: C", "ABCD", "C"),
    ("The answer is (B).", "ABCD", "B"),
    ("Final answer - D", "ABCD", "D"),
    (r"\boxed{C}", "ABCD", "C"),
    (r"so \boxed{\text{B}}", "ABCD", "B"),
    (r"A looks right but \boxed{(D)}", "ABCD", "D"),            # boxed beats a bare letter
    ("I pick (A)", "ABCD", "A"),
    ("B) 56", "ABCD", "B"),
    ("C", "ABCD", "C"),
    ("It is B.", "ABCD", "B"),
    ("A or maybe C", "ABCD", "C"),                              # last standalone
    ("<think>Answer: A</think>Answer: B", "ABCD", "B"),         # thinking stripped
    ("<think>Answer: A", "ABCD", None),                         # unfinished thinking: no answer
    ("Answer: A\nAnswer: D", "ABCD", "D"),                      # the last one
    ("Cat", "ABCD", None),                                      # a letter inside a word
    ("Bad", "ABCD", None),
    ("3C and C_2", "ABCD", None),                               # inside a number or identifier
    ("answer is c", "ABCD", None),                              # lower case is not an option letter
    ("Answer: E", "ABCD", None),                                # not an option of this question
    ("E", "ABCDE", "E"),
    ("", "ABCD", None),
    ("I do not know", "ABCD", None),                            # "I" is not an option letter
])
def test_extract_letter(text, letters, expected):
    assert extract_letter(text, letters) == expected


@pytest.mark.parametrize("text, fallback, expected", [
    ("It is B.", True, "B"), ("It is B.", False, None), ("Answer: B", False, "B"), ("(B)", False, "B")])
def test_extract_letter_without_fallback(text, fallback, expected):
    assert extract_letter(text, "ABCD", fallback) == expected


def test_mcq_reward_both_sides():
    env = MCQEnvironment([2])
    sample = env.samples("test", 1, 0)[0]
    wrong = next(l for l in "ABCD" if l != sample.answer)
    reward = MCQMatchReward()
    assert score(reward, sample, f"{NT}Answer: {sample.answer}").value == 1.0
    assert score(reward, sample, f"{NT}Answer: {wrong}").value == 0.0
    result = score(reward, sample, f"{NT}no idea")
    assert result.value == 0.0 and result.info["status"] == "no_letter"


@pytest.mark.parametrize("difficulty, options", [(1, 3), (2, 4), (3, 5)])
def test_mcq_generator(difficulty, options):
    train = mcq.generate("train", 40, 0, difficulty)
    assert train == mcq.generate("train", 40, 0, difficulty)
    assert train != mcq.generate("train", 40, 1, difficulty)
    test = mcq.generate("test", 40, 0, difficulty)
    assert {q.stem for q in train}.isdisjoint(q.stem for q in mcq.generate("test", 500, 0, difficulty))
    # held out by options: stems repeat across the splits, whole prompts never do
    train, test = (mcq.generate(split, 300, 0, difficulty, held_out="options") for split in ("train", "test"))
    assert {q.prompt for q in train}.isdisjoint(q.prompt for q in test)
    assert {q.stem for q in train} & {q.stem for q in test}
    with pytest.raises(ValueError, match="held_out must be one of"):
        mcq.generate("train", 1, 0, held_out="facts")
    for q in train + test:
        assert len(q.options) == options and len(set(q.options)) == options
        assert len(q.prompt) < 200
    # the correct letters are spread over the positions
    assert len({q.answer for q in mcq.generate("train", 60, 0, difficulty)}) == options


def test_mcq_demonstrations_score_one():
    env = MCQEnvironment([1, 2, 3])
    demos = env.demonstrations(60, 0)
    assert len(demos) == 60
    by_prompt = {s.messages[0]["content"]: s for s in env.samples("train", 2000, 1)}
    reward = MCQMatchReward(fallback=False)
    for demo in demos:
        sample = by_prompt[demo[0]["content"]]
        assert score(reward, sample, demo).value == 1.0


def test_mcq_demonstrations_go_through_the_options_up_to_the_answer():
    q = mcq.MCQ("id", "What is 5-4?", ("11", "20", "1", "3"), "C", "arithmetic", 2, "5-4 = 1.")
    assert mcq.option_scan(q) == "A) 11 no. B) 20 no. C) 1 yes."
    assert mcq.option_scan(mcq.MCQ("id", "s", ("1", "20"), "A", "arithmetic", 1, "")) == "A) 1 yes."
    for prompt, answer in MCQEnvironment([1, 2, 3]).demonstrations(60, 0):
        lines = prompt["content"].splitlines()[1:-1]  # the options, "A) 11"
        letter = answer["content"].rsplit("Answer: ", 1)[1]
        marked = [line + (" yes." if line[0] == letter else " no.") for line in lines[: mcq.LETTERS.index(letter) + 1]]
        assert answer["content"].endswith(" ".join(marked) + f" Answer: {letter}")


# ---- structured output ---------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                                           "member": {"type": "boolean"}},
          "required": ["name", "age", "member"], "additionalProperties": False}
EXPECTED = {"name": "Ann", "age": 31, "member": True}


@pytest.mark.parametrize("text, passed, status", [
    ('{"name":"Ann","age":31,"member":true}', True, "ok"),
    ('  {"name": "Ann", "member": true, "age": 31}\n', True, "ok"),                  # key order, whitespace
    (NT + '{"name":"Ann","age":31,"member":true}', True, "ok"),
    ('<think>{"x":1}</think>{"name":"Ann","age":31,"member":true}', True, "ok"),
    ('```json\n{"name":"Ann","age":31,"member":true}\n```', True, "ok"),              # documented fence
    ('```\n{"name":"Ann","age":31,"member":true}\n```', True, "ok"),
    ('{"name":"Ann","age":31,"member":true} Hope this helps!', False, "not_json"),    # trailing text
    ('Here it is: {"name":"Ann","age":31,"member":true}', False, "not_json"),         # leading text
    ('{"name":"Ann","age":31,"member":true}{"a":1}', False, "not_json"),              # two values
    ('```json\n{"name":"Ann","age":31,"member":true}\n``` done', False, "not_json"),  # text after the fence
    ("{'name':'Ann','age':31,'member':true}", False, "not_json"),                     # not JSON quotes
    ('{"name":"Ann","age":31,"member":true', False, "not_json"),                      # unclosed
    ('{"name":"Ann","age":NaN,"member":true}', False, "not_json"),
    ('{"name":"Ann","age":30,"age":31,"member":true}', False, "not_json"),            # duplicate key
    ("", False, "not_json"),
    ('{"name":"Ann","age":31}', False, "schema"),                                     # missing required
    ('{"name":"Ann","age":31,"member":true,"city":"Rome"}', False, "schema"),         # additionalProperties
    ('{"name":"Ann","age":"31","member":true}', False, "schema"),                     # wrong type
    ('{"name":"Ann","age":-1,"member":true}', False, "schema"),                       # minimum
    ('[{"name":"Ann","age":31,"member":true}]', False, "schema"),
    ('{"name":"Ann","age":31.0,"member":true}', False, "mismatch"),                   # 31.0 is not the integer 31
    ('{"name":"Ann","age":32,"member":true}', False, "mismatch"),
    ('{"name":"Ann","age":31,"member":false}', False, "mismatch"),
])
def test_check_output(text, passed, status):
    assert check_output(text, SCHEMA, EXPECTED) == (passed, status)


def test_fence_can_be_refused():
    assert check_output('```json\n{"name":"Ann","age":31,"member":true}\n```', SCHEMA, EXPECTED, allow_fence=False) == (False, "not_json")


def test_schema_only_without_expected_values():
    assert check_output('{"name":"Bob","age":2,"member":false}', SCHEMA) == (True, "ok")


def test_bool_is_not_an_integer():
    schema = {"type": "object", "properties": {"n": {}}, "required": ["n"]}
    assert check_output('{"n": true}', schema, {"n": 1}) == (False, "mismatch")


@pytest.mark.parametrize("difficulty, fields", [(1, 2), (2, 3), (3, 5)])
def test_structured_generator(difficulty, fields):
    train = structured.generate("train", 50, 0, difficulty)
    assert train == structured.generate("train", 50, 0, difficulty)
    assert [t.prompt for t in train] != [t.prompt for t in structured.generate("train", 50, 1, difficulty)]
    assert {t.prompt for t in train}.isdisjoint(t.prompt for t in structured.generate("test", 300, 0, difficulty))
    for t in train:
        assert len(t.expected) == fields and t.schema["additionalProperties"] is False


def test_structured_demonstrations_score_one_and_wrong_answers_zero():
    env = StructuredEnvironment([1, 2, 3])
    by_prompt = {s.messages[0]["content"]: s for s in env.samples("train", 3000, 1)}
    reward = JsonSchemaReward()
    demos = env.demonstrations(60, 0)
    assert len(demos) == 60
    for demo in demos:
        sample = by_prompt[demo[0]["content"]]
        assert score(reward, sample, demo).value == 1.0
        value = json.loads(demo[-1]["content"][len(NT):])
        assert score(reward, sample, NT + json.dumps(value) + " ok").value == 0.0
        value["extra"] = 1
        assert score(reward, sample, NT + json.dumps(value)).info["status"] == "schema"


# ---- workplace: parsing --------------------------------------------------------------------------

CALL = "<tool_call><function=update_ticket><parameter=ticket_id>T2</parameter><parameter=status>closed</parameter></function></tool_call>"


@pytest.mark.parametrize("text, parsed", [
    (CALL, [("update_ticket", {"ticket_id": "T2", "status": "closed"}, None)]),
    (NT + "\n<tool_call>\n  <function=update_ticket>\n<parameter=ticket_id>\n T2 \n</parameter>\n"
          "<parameter=status>closed</parameter>\n</function>\n</tool_call>\n",
     [("update_ticket", {"ticket_id": "T2", "status": "closed"}, None)]),               # whitespace forgiven
    (CALL + CALL.replace("T2", "T3"), [("update_ticket", {"ticket_id": "T2", "status": "closed"}, None),
                                       ("update_ticket", {"ticket_id": "T3", "status": "closed"}, None)]),
    ("<think>" + CALL + "</think>Done.", []),                                           # inside thinking
    ("Done.", []),
    ("<tool_call><function=search><parameter=table>events</parameter>", [("", {}, "missing </tool_call>")]),
    ("<tool_call>search(table=events)</tool_call>", [("", {}, "expected <function=NAME>")]),
    ("<tool_call><function=search>table=events</function></tool_call>", [("search", {}, "expected <parameter=NAME>")]),
    ("<tool_call><function=search><parameter=table>a</parameter><parameter=table>b</parameter></function></tool_call>",
     [("search", {"table": "a"}, "given twice")]),
    ("<function=search><parameter=table>events</parameter></function>", [("", {}, "outside <tool_call>")]),
])
def test_parse_tool_calls(text, parsed):
    calls = parse_tool_calls(text)
    assert len(calls) == len(parsed)
    for call, (name, args, error) in zip(calls, parsed):
        if error:
            assert call.error and error in call.error
        else:
            assert call.error is None and call.name == name and call.arguments == args


def test_render_call_round_trips():
    text = render_call("create_event", title="demo", day="Mon", hour=9)
    (call,) = parse_tool_calls(text)
    assert workplace.typed_arguments(call) == {"title": "demo", "day": "Mon", "hour": 9}


def test_system_prompt_matches_the_chat_template():
    from cascade.tokenizer import train_chat_tokenizer

    tok = train_chat_tokenizer(["hello world"] * 10, vocab_size=300)
    messages = [{"role": "system", "content": workplace.SYSTEM}, {"role": "user", "content": "hi"}]
    with_tools = tok.apply_chat_template(messages, tools=workplace.TOOLS, tokenize=False)
    ours = tok.apply_chat_template([{"role": "system", "content": workplace.tools_system_prompt()}, messages[1]], tokenize=False)
    assert with_tools == ours


# ---- workplace: multi-turn episodes through env.step ---------------------------------------------

INITIAL = {
    "events": [{"id": "E1", "title": "lunch", "day": "Mon", "hour": 12}, {"id": "E2", "title": "demo", "day": "Fri", "hour": 15}],
    "emails": [{"id": "M1", "to": "ann@acme.com", "subject": "budget"}],
    "tickets": [{"id": "T1", "title": "printer", "status": "open", "assignee": ""},
                {"id": "T2", "title": "vpn", "status": "open", "assignee": ""}],
}


def make_sample(expected_calls: list[str]) -> Sample:
    expected, _ = workplace.replay(INITIAL, expected_calls)
    return Sample("w1", "workplace", [{"role": "system", "content": workplace.tools_system_prompt()},
                                      {"role": "user", "content": "Close the vpn ticket."}],
                  {"initial": INITIAL, "expected": expected})



def test_search_then_update_episode():
    env, reward = WorkplaceEnvironment(max_turns=4), DbStateReward()
    close = render_call("update_ticket", ticket_id="T2", status="closed")
    sample = make_sample([close])
    messages, steps = drive(env, sample, [render_call("search", table="tickets", query="VPN"), close, "Done."])
    assert [s.done for s in steps] == [False, False, True]
    assert json.loads(steps[0].messages[0]["content"]) == {"ok": True, "results": [INITIAL["tickets"][1]]}
    assert [m["role"] for m in messages[2:]] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert steps[1].metrics == {"tool_calls": 1.0, "tool_errors": 0.0}
    result = reward.score([Episode(sample, messages, [], [], [])])[0]
    assert result.value == 1.0 and result.info == {"status": "ok", "calls": 2, "errors": 0, "part": 1.0}
    assert INITIAL["tickets"][1]["status"] == "open"  # the sample's database is never mutated


@pytest.mark.parametrize("bad_turn, error", [
    ("<tool_call><function=create_event><parameter=title>x</parameter><parameter=day>Mon</parameter>"
     "<parameter=hour>nine</parameter></function></tool_call>", "hour must be an integer"),           # wrong type
    ("<tool_call><function=create_event><parameter=title>x</parameter><parameter=day>Sunday</parameter>"
     "<parameter=hour>9</parameter></function></tool_call>", "day must be one of"),                   # enum
    ("<tool_call><function=create_event><parameter=title>x</parameter><parameter=day>Mon</parameter>"
     "<parameter=hour>25</parameter></function></tool_call>", "must be in 8..18"),
    (render_call("close_ticket", ticket_id="T2"), "unknown tool 'close_ticket'"),
    (render_call("update_ticket", ticket="T2", status="closed"), "unknown parameter(s) ticket"),
    (render_call("update_ticket", status="closed"), "missing parameter(s) ticket_id"),
    (render_call("update_ticket", ticket_id="T9", status="closed"), "no ticket with id 'T9'"),
    (render_call("update_ticket", ticket_id="T2"), "give status and/or assignee"),
    (render_call("delete_event", event_id="E7"), "no event with id 'E7'"),
    (render_call("search", table="users", query="x"), "table must be one of"),
    (render_call("send_email", to="", subject="x"), "to must not be empty"),
    ("<tool_call><function=update_ticket><parameter=ticket_id>T2</parameter>", "missing </tool_call>"),
    ("<tool_call>{\"name\": \"update_ticket\"}</tool_call>", "expected <function=NAME>"),
])
def test_bad_calls_get_errors_and_change_nothing(bad_turn, error):
    env, reward = WorkplaceEnvironment(max_turns=4), DbStateReward()
    close = render_call("update_ticket", ticket_id="T2", status="closed")
    sample = make_sample([close])
    messages, steps = drive(env, sample, [bad_turn, close, "Done."])
    reply = json.loads(steps[0].messages[0]["content"])
    assert not steps[0].done and error in reply["error"], reply
    assert steps[0].metrics["tool_errors"] == 1.0
    # the model recovers on the next turn: the failed call changed nothing, so the state is right
    assert reward.score([Episode(sample, messages, [], [], [])])[0].value == 1.0
    # stopping after the failed call leaves the database wrong
    assert reward.score([episode(sample, NT + bad_turn, NT + "Done.")])[0].value == 0.0


def test_episode_ends_without_a_tool_call_and_at_max_turns():
    env = WorkplaceEnvironment(max_turns=2)
    sample = make_sample([])
    assert env.step(sample, sample.messages + [{"role": "assistant", "content": NT + "Done."}]).done
    search = render_call("search", table="events", query="lunch")
    messages, steps = drive(env, sample, [search, search, search])
    assert [s.done for s in steps] == [False, True] and len(messages) == 5
    # the environment never raises, even on a message list it does not expect
    assert env.step(sample, sample.messages + [{"role": "assistant", "content": None}]).done


def test_wrong_final_state_scores_zero_and_extra_writes_count():
    reward = DbStateReward()
    close = render_call("update_ticket", ticket_id="T2", status="closed")
    sample = make_sample([close])
    assert reward.score([episode(sample, NT + render_call("update_ticket", ticket_id="T1", status="closed"))])[0].value == 0.0
    assert reward.score([episode(sample, NT + close + render_call("send_email", to="x@acme.com", subject="hi"))])[0].value == 0.0
    assert reward.score([episode(sample, NT + close + render_call("search", table="tickets", query="vpn"))])[0].value == 1.0
    assert reward.score([episode(sample, NT + "Done.")])[0].value == 0.0


EMAIL_BEN = render_call("send_email", to="ben@acme.com", subject="survey")
REVIEW_THU = render_call("create_event", title="review", day="Thu", hour=13)


@pytest.mark.parametrize("expected, made, part", [
    ([EMAIL_BEN], EMAIL_BEN, 1.0),
    ([EMAIL_BEN], render_call("send_email", to="ben@acme.com", subject="launch"), 1 / 3),   # right person only
    ([EMAIL_BEN], render_call("send_email", to="ray@acme.com", subject="launch"), 0.0),
    ([EMAIL_BEN], EMAIL_BEN + EMAIL_BEN, 2 / 4),                       # a second email is two wrong facts
    ([REVIEW_THU], render_call("create_event", title="lunch", day="Thu", hour=13), 2 / 4),
    ([REVIEW_THU], render_call("create_event", title="review", day="Mon", hour=13), 2 / 4),
    ([render_call("delete_event", event_id="E1")], render_call("delete_event", event_id="E1"), 1.0),
    ([render_call("delete_event", event_id="E1")], render_call("delete_event", event_id="E2"), 0.0),
    ([render_call("update_ticket", ticket_id="T2", status="closed", assignee="amy")],
     render_call("update_ticket", ticket_id="T2", status="closed", assignee="ben"), 1 / 3),
    ([render_call("update_ticket", ticket_id="T2", status="closed")],
     render_call("update_ticket", ticket_id="T2", status="closed") + render_call("update_ticket", ticket_id="T1", status="closed"), 1 / 2),
    ([render_call("update_ticket", ticket_id="T2", status="closed")], "Done.", 0.0),           # nothing done
    ([render_call("update_ticket", ticket_id="T2", status="closed")], render_call("update_ticket", ticket_id="T9", status="closed"), 0.0),
])
def test_workplace_part_credit_is_the_right_share_of_the_changes(expected, made, part):
    sample = make_sample(expected)
    all_, part_ = DbStateReward(), DbStateReward(metric="part")
    ep = episode(sample, NT + made, NT + "Done.")
    result = part_.score([ep])[0]
    assert result.value == pytest.approx(part)
    assert result.info["part"] == pytest.approx(part)
    assert all_.score([ep])[0].value == float(part == 1.0)  # the strict score is unchanged


def test_workplace_part_credit_compares_values_with_their_types():
    db = json.loads(json.dumps(INITIAL))
    expected = json.loads(json.dumps(INITIAL))
    expected["events"].append({"id": "E3", "title": "sync", "day": "Tue", "hour": 10})
    db["events"].append({"id": "E3", "title": "sync", "day": "Tue", "hour": "10"})
    assert workplace.changes(INITIAL, db) - workplace.changes(INITIAL, expected) == {("events", "E3", "hour", '"10"')}
    assert workplace.part_credit(INITIAL, db, expected) == pytest.approx(2 / 4)
    assert workplace.part_credit(INITIAL, INITIAL, INITIAL) == 1.0


def test_workplace_reward_rejects_an_unknown_metric():
    with pytest.raises(ValueError, match="metric must be one of"):
        DbStateReward(metric="partial")


def test_episodes_do_not_share_state():
    env = WorkplaceEnvironment()
    sample = make_sample([])
    create = render_call("create_event", title="sync", day="Tue", hour=10)
    a = sample.messages + [{"role": "assistant", "content": NT + create}]
    b = sample.messages + [{"role": "assistant", "content": NT + create}]
    assert env.step(sample, a).messages == env.step(sample, b).messages == [{"role": "tool", "content": '{"ok": true, "id": "E3"}'}]


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_workplace_generator(difficulty):
    train = workplace.generate("train", 30, 0, difficulty)
    assert train == workplace.generate("train", 30, 0, difficulty)
    assert train != workplace.generate("train", 30, 1, difficulty)
    test = workplace.generate("test", 10, 0, difficulty)
    assert len(test) == 10
    assert {t.instruction for t in train}.isdisjoint(t.instruction for t in workplace.generate("test", 500, 0, difficulty))
    for t in train:
        assert t.expected != t.initial  # every task changes the database
        assert len(t.turns) == (2 if difficulty == 3 else 1)


def test_workplace_kinds_are_balanced():
    # every kind has hundreds of distinct requests, so none crowds the others out of a split
    for split, n in [("train", 1000), ("test", 64)]:
        kinds = Counter(t.kind for t in workplace.generate(split, n, 0, 1))
        assert sum(kinds.values()) == n
        assert set(kinds) == {"create_event", "send_email", "update_ticket", "assign_ticket", "delete_event"}
        assert min(kinds.values()) >= 0.1 * n, kinds


def test_workplace_demonstrations_score_one_through_step():
    env, reward = WorkplaceEnvironment([1, 2, 3]), DbStateReward()
    demos = env.demonstrations(45, 0)
    assert len(demos) == 45
    # demonstrations(seed) draws the train tasks of seed + 1, in the same order as samples(seed + 1)
    by_instruction = {s.messages[1]["content"]: s for s in env.samples("train", 45, 1)}
    assert len(by_instruction) == 45
    for demo in demos:
        sample = by_instruction[demo[1]["content"]]
        assert demo[-1] == {"role": "assistant", "content": NT + workplace.FINAL}
        assert all("error" not in json.loads(m["content"]) for m in demo if m["role"] == "tool")
        assert reward.score([Episode(sample, demo, [], [], [])])[0].value == 1.0
        # replaying the scripted assistant turns through env.step reproduces the demonstration exactly
        turns = [m["content"][len(NT):] for m in demo if m["role"] == "assistant"]
        messages, steps = drive(env, sample, turns)
        assert messages == demo and steps[-1].done


def test_presets_compose_and_plugin_registers():
    from cascade.config import compose
    from cascade.plugins import PluginManager

    plugins = PluginManager().load()
    assert "pkg://cascade_multidomain.conf" in plugins.config_searchpaths()
    cfg = compose(["cascade=math", "+domain@cascade.domains.mcq=mcq", "+domain@cascade.domains.structured=structured",
                   "+domain@cascade.domains.workplace=workplace", "+stage@cascade.stages.multidomain_rl=multidomain_rl"],
                  plugins.config_searchpaths())
    stage = cfg.cascade.stages.multidomain_rl
    assert stage.type == "grpo" and list(stage.domains) == ["mcq", "structured", "workplace"]
    assert stage.params.kl_coef == 0.0 and stage.params.max_new_tokens == 96
    for name, reward in [("mcq", "mcq_match"), ("structured", "json_schema"), ("workplace", "db_state")]:
        domain = cfg.cascade.domains[name]
        assert domain.environment == name and domain.reward == reward


def test_a_stage_trains_one_domain_on_other_reward_options_and_evaluation_keeps_the_domains(tmp_path):
    from types import SimpleNamespace

    from cascade.config import ConfigError, compose
    from cascade.plugins import PluginManager
    from cascade.runner import CascadeRunner

    plugins = PluginManager().load()
    part = "+cascade.stages.multidomain_rl.params.domain_reward_options={workplace: {metric: part}}"
    config = compose(["cascade.order=[sft,multidomain_rl]", "loggers=[]", part], plugins.config_searchpaths())
    runner = CascadeRunner(config, plugins, tmp_path)
    stage = {p.name: p for p in runner.plan}["multidomain_rl"].stage
    stage.make_rewards(SimpleNamespace(plugins=plugins, config=config))
    context = SimpleNamespace(reward=runner.reward)
    assert stage.reward("workplace", context).metric == "part"
    assert runner.reward("workplace").metric == "all"              # held-out evaluation: the domain's own
    assert stage.reward("mcq", context) is runner.reward("mcq")
    typo = compose(["cascade.order=[sft,multidomain_rl]", "loggers=[]",
                    "+cascade.stages.multidomain_rl.params.domain_reward_options={workplac: {metric: part}}"],
                   plugins.config_searchpaths())
    with pytest.raises(ConfigError, match=r"names \['workplac'\], not domains of this stage \(its domains: \['mcq', 'structured', 'workplace'\]\)"):
        CascadeRunner(typo, plugins, tmp_path)
    both = compose(["cascade.order=[sft,multidomain_rl]", "loggers=[]", part,
                    "+cascade.stages.multidomain_rl.params.reward=db_state"], plugins.config_searchpaths())
    with pytest.raises(ConfigError, match="not both"):
        CascadeRunner(both, plugins, tmp_path)
