r"""Tool calls in the SPEC.md format, shared by the multi-turn environments of every domain plugin.

Tools are declared in the system prompt (one JSON object per line inside ``<tools>...</tools>``, the
same text the ChatML template writes for ``tools=``) and called as
``<tool_call><function=NAME><parameter=P>value</parameter></function></tool_call>`` (several calls per
turn allowed). This module parses those calls out of an assistant message and converts their arguments
to the types a JSON-schema-like parameter spec declares; executing them is the environment's business.

Parsing is strict where it matters (the tags, the tool and parameter names, the types) and forgiving of
whitespace: blank space around tags and around a value is ignored. String values are taken verbatim
(stripped), integers must be plain decimal integers, booleans ``true`` / ``false``. Nothing here raises
on the model's text: a malformed call comes back as a :class:`ToolCall` with an ``error``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cascade.environments.generated import strip_think
from cascade.types import Message, Sample


def function_tool(name: str, description: str, properties: dict, required: list[str]) -> dict:
    """A tool declaration as the chat template's ``tools=`` takes it."""
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


def parameter_specs(tools: Sequence[dict]) -> dict[str, dict]:
    """Tool name -> its ``parameters`` schema, as :func:`typed_arguments` takes them."""
    return {t["function"]["name"]: t["function"]["parameters"] for t in tools}


def tools_system_prompt(system: str, tools: Sequence[dict]) -> str:
    """The system turn's content with the tools declared as the ChatML template writes them."""
    return system + "\n\n# Tools\n\n<tools>" + "".join("\n" + json.dumps(t) for t in tools) + "\n</tools>"


@dataclass
class ToolCall:
    name: str = ""
    arguments: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    """Set when the call could not be parsed; it is answered with this error and not executed."""


_SEGMENT = re.compile(r"<tool_call>(.*?)(</tool_call>|(?=<tool_call>)|$)", re.DOTALL)
_FUNCTION = re.compile(r"\s*<function=\s*([A-Za-z_][\w.-]*)\s*>(.*)</function>\s*", re.DOTALL)
_PARAMETER = re.compile(r"\s*<parameter=\s*([A-Za-z_]\w*)\s*>(.*?)</parameter>\s*", re.DOTALL)
_MARKUP = ("<tool_call>", "</tool_call>", "<function=", "</function>", "<parameter=", "</parameter>")


def has_tool_call(text: str) -> bool:
    """Whether the answer tries to call a tool at all (well-formed or not)."""
    body = strip_think(text)
    return any(tag in body for tag in _MARKUP)


def parse_tool_calls(text: str) -> list[ToolCall]:
    """The tool calls of one assistant message, in order; malformed ones carry an ``error``."""
    body = strip_think(text)
    calls: list[ToolCall] = []
    for match in _SEGMENT.finditer(body):
        inner, closed = match.group(1), match.group(2)
        if not closed:
            calls.append(ToolCall(error="malformed tool call: missing </tool_call>"))
            continue
        function = _FUNCTION.fullmatch(inner)
        if not function:
            calls.append(ToolCall(error="malformed tool call: expected <function=NAME>...</function> inside <tool_call>"))
            continue
        name, params = function.group(1), function.group(2)
        call, pos = ToolCall(name), 0
        while pos < len(params) and not call.error:
            parameter = _PARAMETER.match(params, pos)
            if not parameter:
                if params[pos:].strip():
                    call.error = f"malformed tool call {name}: expected <parameter=NAME>value</parameter>"
                break
            key, value = parameter.group(1), parameter.group(2).strip()
            if key in call.arguments:
                call.error = f"malformed tool call {name}: parameter {key} given twice"
            call.arguments[key] = value
            pos = parameter.end()
        calls.append(call)
    outside = _SEGMENT.sub("", body)
    if any(tag in outside for tag in _MARKUP):
        calls.append(ToolCall(error="malformed tool call: tool-call markup outside <tool_call>...</tool_call>"))
    return calls


def _convert(tool: str, key: str, raw: str, spec: dict) -> Any:
    kind = spec.get("type", "string")
    if kind == "integer":
        if not re.fullmatch(r"-?\d+", raw):
            raise ValueError(f"{tool}: parameter {key} must be an integer, got {raw!r}")
        value: Any = int(raw)
        if "minimum" in spec and value < spec["minimum"] or "maximum" in spec and value > spec["maximum"]:
            raise ValueError(f"{tool}: parameter {key} must be in {spec.get('minimum')}..{spec.get('maximum')}, got {value}")
    elif kind == "boolean":
        if raw not in ("true", "false"):
            raise ValueError(f"{tool}: parameter {key} must be true or false, got {raw!r}")
        value = raw == "true"
    else:
        value = raw
        if not value:
            raise ValueError(f"{tool}: parameter {key} must not be empty")
    if "enum" in spec and value not in spec["enum"]:
        raise ValueError(f"{tool}: parameter {key} must be one of {spec['enum']}, got {raw!r}")
    return value


def typed_arguments(call: ToolCall, specs: Mapping[str, dict]) -> dict[str, Any]:
    """The call's arguments converted to the types ``specs`` (tool name -> parameters schema) declares;
    raises ValueError naming what is wrong (unknown tool or parameter, missing parameter, bad value)."""
    if call.name not in specs:
        raise ValueError(f"unknown tool {call.name!r}; available: {', '.join(specs)}")
    spec = specs[call.name]
    unknown = set(call.arguments) - set(spec["properties"])
    if unknown:
        raise ValueError(f"{call.name}: unknown parameter(s) {', '.join(sorted(unknown))}")
    missing = [k for k in spec["required"] if k not in call.arguments]
    if missing:
        raise ValueError(f"{call.name}: missing parameter(s) {', '.join(missing)}")
    return {k: _convert(call.name, k, v, spec["properties"][k]) for k, v in call.arguments.items()}


def render_call(name: str, **arguments: Any) -> str:
    """A call written in the SPEC.md syntax (as the chat template renders structured ``tool_calls``)."""
    params = "".join(f"<parameter={k}>{v if isinstance(v, str) else json.dumps(v)}</parameter>" for k, v in arguments.items())
    return f"<tool_call><function={name}>{params}</function></tool_call>"


def assistant_turns(sample: Sample, messages: Sequence[Message]) -> list[str]:
    """The texts of the model's turns of an episode (what follows the sample's prompt)."""
    return [m.get("content") or "" for m in messages[len(sample.messages):] if m.get("role") == "assistant"]
