"""cascade.environments.python_tool: the declaration, notebook cells (display, errors, state kept by replay),
output truncation, the call limit and time budget, bad calls answered (never raised), and hostile cells contained
exactly as in tests/test_sandbox.py: each answered with an error or a timeout, the episode going on, nothing left
running. Every real cell is one sandbox job (~70 ms); the checks that need no job forbid the sandbox.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import survivors

from cascade.environments import sandbox
from cascade.environments.generated import NO_THINKING
from cascade.environments.python_tool import (
    ERROR, KILLED, NO_OUTPUT, OK, REJECTED, TIMEOUT, TOOLS, PythonTool, tool_message, with_python_tool)
from cascade.environments.sandbox import Limits
from cascade.environments.tool_calls import render_call
from cascade.types import Sample

FAST = Limits(cpu_seconds=1, wall_seconds=3.0, memory_mb=256, processes=16, file_size_mb=4, open_files=32,
              output_bytes=16 << 10)
SAMPLE = Sample("s", "math", [{"role": "user", "content": "Compute it."}])


@pytest.fixture
def tool() -> PythonTool:
    return PythonTool(max_calls=4, total_seconds=30.0, output_chars=200, limits=FAST)


def call(code: str) -> str:
    return render_call("python", code=code)


def converse(tool: PythonTool, *turns: str):
    """Assistant turns (each after the non-thinking prefix) through ``tool.step``, each step's messages appended,
    as the rollout loop does; returns the messages and the steps."""
    messages, steps = list(SAMPLE.messages), []
    for text in turns:
        messages.append({"role": "assistant", "content": NO_THINKING + text})
        steps.append(tool.step(SAMPLE, messages))
        messages += steps[-1].messages
    return messages, steps


def last_reply(tool: PythonTool, *cells: str) -> dict:
    """The tool message answering the last of ``cells``, each called in a turn of its own."""
    _, steps = converse(tool, *map(call, cells))
    assert not steps[-1].done and len(steps[-1].messages) == 1
    return steps[-1].messages[0]


@pytest.fixture
def no_sandbox(monkeypatch):
    """For the answers that must not run anything."""
    def refuse(job):
        raise AssertionError("the sandbox was asked to run a job")
    monkeypatch.setattr(sandbox, "run", refuse)


@pytest.fixture
def tag(monkeypatch) -> str:
    """Every job the tool runs carries this tag in its command line, which every process it forks inherits."""
    tag = f"python-tool-test-{uuid.uuid4().hex}"
    run = sandbox.run
    monkeypatch.setattr(sandbox, "run", lambda job: run(replace(job, command=(*job.command, tag))))
    return tag


# ---- the declaration ----------------------------------------------------------------------------------------


def test_the_tool_is_declared_as_the_chat_template_declares_tools():
    from cascade.tokenizer import train_chat_tokenizer

    tokenizer = train_chat_tokenizer(["print(17*23 - 5)"], vocab_size=300)
    system = {"role": "system", "content": "Be brief."}
    merged = with_python_tool([system, *SAMPLE.messages])
    assert [m["role"] for m in merged] == ["system", "user"] and merged[0]["content"].startswith("Be brief.\n\n# Tools")
    assert tokenizer.apply_chat_template(merged, tokenize=False) == \
        tokenizer.apply_chat_template([system, *SAMPLE.messages], tools=TOOLS, tokenize=False)
    added = with_python_tool(SAMPLE.messages)
    assert [m["role"] for m in added] == ["system", "user"] and '"name": "python"' in added[0]["content"]
    assert SAMPLE.messages == [{"role": "user", "content": "Compute it."}]  # the sample's own prompt is untouched
    # the accounting keys of a tool message are not rendered
    conversation = [*added, {"role": "assistant", "content": call("1")}, tool_message("1", OK, 0.25)]
    plain = [*conversation[:-1], {"role": "tool", "content": "1"}]
    assert tokenizer.apply_chat_template(conversation, tokenize=False) == tokenizer.apply_chat_template(plain, tokenize=False)


@pytest.mark.parametrize("options,message", [
    (dict(max_calls=0), "max_calls"), (dict(max_calls=1.5), "max_calls"), (dict(total_seconds=-1), "total_seconds"),
    (dict(output_chars=True), "output_chars"), (dict(limits={"wall_seconds": 0}), "Limits.wall_seconds"),
    (dict(limits={"bogus": 1}), "bogus"), (dict(limits=5), "limits"),
])
def test_bad_options_are_rejected_naming_the_option(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        PythonTool(**options)


def test_limits_may_be_given_as_overrides_of_the_defaults():
    limits = PythonTool(limits={"wall_seconds": 2.0, "memory_mb": 128}).limits
    assert (limits.wall_seconds, limits.memory_mb, limits.cpu_seconds) == (2.0, 128, 5)


# ---- one cell ------------------------------------------------------------------------------------------------

# (cell, what is shown): print output and, as in Jupyter, the repr of a last expression that is not None
DISPLAY = [
    ("print(17*23 - 5)", "386"),
    ("6*7", "42"),
    ("'text'", "'text'"),
    ("print('a')\n[1, 2]", "a\n[1, 2]"),
    ("x = 1", NO_OUTPUT),
    ("None", NO_OUTPUT),
    ("for i in range(3):\n    i", NO_OUTPUT),                      # the last statement is a loop, not an expression
    ("from fractions import Fraction\nFraction(6, -4)", "Fraction(-3, 2)"),
    ("import sys\nprint('out')\nprint('err', file=sys.stderr)\nprint('out again')", "out\nerr\nout again"),
    ("import os\nos.listdir('.')", "[]"),                           # the harness is not in the cell's directory
    ("import __main__\nz = 3\n__main__.z", "3"),
]


@pytest.mark.parametrize("code,expected", DISPLAY)
def test_a_cell_shows_its_output_and_its_last_expression(tool, code, expected):
    reply = last_reply(tool, code)
    assert (reply["role"], reply["content"], reply["tool_status"]) == ("tool", expected, OK)
    assert reply["tool_seconds"] > 0


# (cell, the end of what is shown): the exception's last line(s), nothing of the harness
ERRORS = [
    ("print(y)", "NameError: name 'y' is not defined"),
    ("1/0", "ZeroDivisionError: division by zero"),
    ("print('before')\nraise ValueError('bad')", "before\nValueError: bad"),
    ("x = (", "x = (\n        ^\nSyntaxError: '(' was never closed"),
    ("import numpy", "ModuleNotFoundError: No module named 'numpy'"),  # the standard library only
    ("import sys\nsys.exit(3)", "SystemExit: 3"),
    ("input()", "EOFError: EOF when reading a line"),
    ("def f():\n    return f()\nf()", "RecursionError: maximum recursion depth exceeded"),
]


@pytest.mark.parametrize("code,expected", ERRORS)
def test_an_error_shows_the_exception_without_the_harness(tool, code, expected):
    reply = last_reply(tool, code)
    assert reply["tool_status"] == ERROR
    assert reply["content"].endswith(expected)
    assert not any(leak in reply["content"] for leak in ("Traceback", "main.py", "/job", "harness", "json"))


def test_long_output_is_cut_with_a_marker_and_the_error_still_shows():
    tool = PythonTool(output_chars=50, limits=FAST)
    assert last_reply(tool, "print('x' * 500)")["content"] == "x" * 50 + "\n[... 450 more characters not shown]"
    reply = last_reply(tool, "print('y' * 500)\n1/0")
    assert reply["content"] == "y" * 50 + "\n[... 450 more characters not shown]\nZeroDivisionError: division by zero"


# ---- state across calls, by replay ---------------------------------------------------------------------------


def test_what_a_cell_defines_is_visible_to_later_calls(tool):
    messages, steps = converse(tool, call("x = 6\nimport math\ndef double(v):\n    return 2 * v"),
                               call("y = double(x)"), call("print(math.factorial(y) // 10**6, y)"))
    assert [s.messages[0]["content"] for s in steps] == [NO_OUTPUT, NO_OUTPUT, "479 12"]
    assert all(not s.done for s in steps)


def test_a_failing_cell_keeps_what_it_defined_before_its_error(tool):
    assert last_reply(tool, "a = 5\nb = undefined\nc = 7", "print(a)\nc")["content"] == \
        "5\nNameError: name 'c' is not defined"


def test_earlier_cells_output_is_not_shown_again(tool):
    earlier = "import os, sys\nprint('one')\nprint('two', file=sys.stderr)\nos.write(1, b'three')\n'four'"
    assert last_reply(tool, earlier, "print('five')")["content"] == "five"


def test_a_cell_that_timed_out_is_not_replayed_and_says_its_state_is_lost(tool):
    _, steps = converse(tool, call("x = 1"), call("y = 2\nwhile True: pass"), call("print(x)\ny"))
    timeout = steps[1].messages[0]
    assert timeout["tool_status"] == TIMEOUT
    assert timeout["content"] == ("TimeoutError: the cell ran past its time limit (3 s, 1 s of CPU) and was stopped; "
                                  "what the cell defined is lost")
    assert steps[2].messages[0]["content"] == "1\nNameError: name 'y' is not defined"
    assert steps[2].metrics["tool_timeouts"] == 1 and steps[2].metrics["tool_errors"] == 2


# which earlier cells a call replays, and the time they add to its limits (no job runs: the job is inspected)
def test_only_cells_that_ran_to_their_end_are_replayed_with_their_time_added(monkeypatch, tool):
    jobs = []
    monkeypatch.setattr(sandbox, "run", lambda job: jobs.append(job) or sandbox.ExecResult(
        "passed", 0, "", json.dumps({"outcome": "ok", "error": ""}), 0.1, ()))
    messages = list(SAMPLE.messages)
    for code, status, seconds in [("a = 1", OK, 0.5), ("b = 1/0", ERROR, 1.0), ("while True: pass", TIMEOUT, 3.0),
                                  ("import os; os._exit(0)", KILLED, 0.2), ("c = 3", REJECTED, 0.0)]:
        messages += [{"role": "assistant", "content": call(code)}, tool_message("...", status, seconds)]
    messages.append({"role": "assistant", "content": call("print(a)")})
    step = replace(tool, max_calls=10).step(SAMPLE, messages)
    (job,) = jobs
    assert json.loads(job.stdin) == {"history": ["a = 1", "b = 1/0"], "cell": "print(a)"}
    assert (job.limits.wall_seconds, job.limits.cpu_seconds) == (FAST.wall_seconds + 1.5, FAST.cpu_seconds + 2)
    assert step.metrics == {"tool_calls": 6.0, "tool_errors": 4.0, "tool_timeouts": 1.0, "tool_seconds": pytest.approx(4.8)}


# ---- limits --------------------------------------------------------------------------------------------------


def test_calls_past_the_limit_are_answered_and_not_run(tool):
    tool = replace(tool, max_calls=2)
    _, steps = converse(tool, call("x = 1") + call("print(x + 1)") + call("print(3)"), call("print(4)"))
    assert [m["content"] for m in steps[0].messages][:2] == [NO_OUTPUT, "2"]  # calls of one turn share the state too
    assert [m["tool_status"] for m in steps[0].messages] == [OK, OK, REJECTED]
    limit = "Error: the limit of 2 python calls is reached; give your final answer now."
    assert steps[0].messages[2]["content"] == limit and steps[1].messages[0]["content"] == limit
    assert steps[1].messages[0]["tool_seconds"] == 0.0 and not steps[1].done
    assert steps[1].metrics["tool_calls"] == 4 and steps[1].metrics["tool_errors"] == 2


def test_once_the_time_budget_is_spent_calls_are_answered_and_not_run(tool, no_sandbox):
    tool = replace(tool, total_seconds=2.0)
    messages = [*SAMPLE.messages, {"role": "assistant", "content": call("x = 1")}, tool_message(NO_OUTPUT, OK, 2.5),
                {"role": "assistant", "content": call("print(x)")}]
    (reply,) = tool.step(SAMPLE, messages).messages
    assert reply["content"] == "Error: the 2 s of python time are used up; give your final answer now."
    assert reply["tool_status"] == REJECTED


# ---- bad calls: always a tool message, never an exception, never a job -----------------------------------------

BAD_CALLS = [
    (call("1").removesuffix("</tool_call>"), "Error: malformed tool call: missing </tool_call>"),
    ("<tool_call>print(1)</tool_call>", "Error: malformed tool call: expected <function=NAME>"),
    ("look: </parameter>", "Error: malformed tool call: tool-call markup outside"),
    (render_call("shell", cmd="ls"), "Error: unknown tool 'shell'; available: python"),
    ("<tool_call><function=python></function></tool_call>", "Error: python: missing parameter(s) code"),
    (render_call("python", code="1", timeout=5), "Error: python: unknown parameter(s) timeout"),
    (render_call("python", code="  "), "Error: python: parameter code must not be empty"),
]


@pytest.mark.parametrize("text,expected", BAD_CALLS)
def test_a_bad_call_is_answered_with_its_error(tool, no_sandbox, text, expected):
    _, (step,) = converse(tool, text)
    (reply,) = step.messages
    assert not step.done and reply["role"] == "tool" and reply["tool_status"] == REJECTED
    assert reply["content"].startswith(expected)


def test_a_turn_without_a_call_ends_the_episode(tool, no_sandbox):
    _, (step,) = converse(tool, "The answer is \\boxed{386}.")
    assert step.done and step.messages == [] and step.metrics == {}


# ---- hostile cells: contained, answered, the episode goes on, nothing left running ------------------------------

FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
# three processes filling 256 MB each: ~1 s on a busy core (five took 1.5-2.3 s, near the 3 s wall limit)
MEMORY_BOMB = ("import os\nfor _ in range(2):\n    if os.fork() == 0:\n        break\n"
               "x = []\nwhile True: x.append(bytearray(10**7))")
DAEMON = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(0.5)\n"
          "        open('late.txt', 'w').write('alive')\n        time.sleep(60)\n    os._exit(0)\nprint('main done')")
# (name, cell, status, piece of what is shown)
HOSTILE = [
    ("fork bomb", FORK_BOMB, TIMEOUT, "TimeoutError"),
    ("memory bomb", MEMORY_BOMB, ERROR, "MemoryError"),
    ("endless loop", "while True: pass", TIMEOUT, "TimeoutError"),
    ("sleeping forever", "import time\ntime.sleep(60)", TIMEOUT, "TimeoutError"),
    ("output flood", "while True: print('x' * 1000)", KILLED, "stdout over the 16384-byte output limit"),
    ("daemon", DAEMON, OK, "main done"),
]


@pytest.mark.parametrize("name,code,status,expected", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_cells_are_contained_and_the_episode_goes_on(tool, tag, name, code, status, expected):
    _, steps = converse(tool, call(code), call("print('still here')"))
    reply = steps[0].messages[0]
    assert reply["tool_status"] == status and expected in reply["content"]
    assert len(reply["content"]) < tool.output_chars + 200
    assert steps[1].messages[0]["content"] == "still here"
    time.sleep(0.7 if name == "daemon" else 0)  # the daemon would have written by now
    assert survivors(tag) == [], f"processes left behind: {survivors(tag)}"


def test_writing_outside_the_working_directory_fails(tool, tag, tmp_path):
    targets = [tmp_path / "escaped.txt", Path.cwd() / f"escaped-{uuid.uuid4().hex}.txt",
               Path(sandbox.__file__).with_name("escaped.py")]
    reply = last_reply(tool, f"for path in {[str(t) for t in targets]!r}:\n    open(path, 'w').write('pwned')")
    assert reply["tool_status"] == ERROR and ("FileNotFoundError" in reply["content"] or "PermissionError" in reply["content"])
    assert not any(t.exists() for t in targets)
    assert survivors(tag) == []


def test_the_parents_secrets_are_out_of_reach(tool, tag, tmp_path, monkeypatch):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("CASCADE_TEST_SECRET", secret)
    (tmp_path / ".netrc").write_text(f"machine example.com password {secret}\n")
    (tmp_path / ".netrc").chmod(0o644)
    code = f"""
import glob, os
found = [os.environ.get('CASCADE_TEST_SECRET', 'no secret in the environment')]
for path in [{str(tmp_path / '.netrc')!r}, '/proc/{os.getpid()}/environ', *glob.glob('/proc/*/environ')]:
    try:
        found.append(open(path, errors='replace').read())
    except OSError as e:
        found.append(type(e).__name__)
print(found)"""
    reply = last_reply(tool, code)
    assert reply["tool_status"] == OK and "no secret in the environment" in reply["content"]
    assert secret not in reply["content"]
    assert survivors(tag) == []


def test_no_network_even_to_the_host_loopback(tool, tag):
    if sandbox.isolation_mode() != "namespaces":
        pytest.skip(f"no network namespace on this machine (mode {sandbox.isolation_mode()!r})")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        code = (f"import socket\nsocket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=1)"
                ".sendall(b'leak')\nprint('connected')")
        reply = last_reply(tool, code)
        assert reply["tool_status"] == ERROR and "connected" not in reply["content"]
        with pytest.raises(socket.timeout):
            server.accept()
    assert survivors(tag) == []

