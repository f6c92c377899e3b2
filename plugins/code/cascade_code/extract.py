"""The program in a model's answer: the last fenced Python block of the final answer.

Rules, in order (``<think>`` sections are removed first, see :func:`strip_think`):

* fenced blocks tagged ``python``, ``py``, ``python3`` or untagged count; the last one wins (models
  often show a draft first, and a usage example in another language does not count);
* a final fence that is opened but never closed (the answer was cut off) counts up to the end;
* fences exist but none is Python: no program;
* no fence at all: the whole answer is the program.

A program indented as a whole is dedented; an empty or whitespace-only one is ``None`` (the reward's ``no_code`` status).
"""

from __future__ import annotations

import re
import textwrap

from cascade.environments.generated import strip_think

PYTHON_TAGS = ("", "python", "py", "python3")
# an opening fence at the start of a line, its tag, then the body up to a closing fence or the end
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.DOTALL | re.MULTILINE)


def extract_code(text: str | None) -> str | None:
    """The program to run, or None if the answer holds none."""
    answer = strip_think(text or "")
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(answer)]
    if blocks:
        python = [body for tag, body in blocks if tag in PYTHON_TAGS]
        code = python[-1] if python else ""
    elif "```" in answer:  # a fence that never starts a line of code (```python print(1)```)
        code = ""
    else:
        code = answer
    code = textwrap.dedent(code)  # a fence indented in a list item
    return code if code.strip() else None
