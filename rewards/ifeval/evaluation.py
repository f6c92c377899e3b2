"""Scoring a response against a list of instructions: strict and loose modes, binary or fractional.

Constraints are given as in the IFEval data: ``instruction_id_list`` plus a parallel ``kwargs``
list (``None`` values are ignored, so rows of the public data can be used as they are).

* **strict**: each instruction checks the response (thinking section removed) as it is.
* **loose**: an instruction also passes if it holds on one of the reference's variants: the
  response without its first line, without its last line, without both, and each of those (and
  the response itself) with every ``*`` removed.

An empty response (or one that is all thinking) follows nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cascade.rewards.ifeval.instructions import build_instruction
from cascade.rewards.ifeval.util import strip_thinking

MODES = ("strict", "loose")


@dataclass
class FollowResult:
    follow_list: list[bool]
    instruction_id_list: list[str] = field(default_factory=list)

    @property
    def follow_all(self) -> bool:
        return all(self.follow_list)

    @property
    def fraction(self) -> float:
        return sum(self.follow_list) / len(self.follow_list) if self.follow_list else 1.0


def loose_variants(response: str) -> list[str]:
    """The response and the reference's loose-mode variants of it."""
    lines = response.split("\n")
    first = "\n".join(lines[1:]).strip()
    last = "\n".join(lines[:-1]).strip()
    both = "\n".join(lines[1:-1]).strip()
    variants = [response, first, last, both]
    return variants + [v.replace("*", "") for v in variants]


def _kwargs(kwargs: Mapping[str, Any] | None, prompt: str | None, instruction_id: str) -> dict[str, Any]:
    clean = {k: v for k, v in (kwargs or {}).items() if v is not None}
    if instruction_id == "combination:repeat_prompt" and "prompt_to_repeat" not in clean and prompt:
        clean["prompt_to_repeat"] = prompt
    return clean


def check_response(
    response: str,
    instruction_id_list: Sequence[str],
    kwargs: Sequence[Mapping[str, Any] | None] | None = None,
    prompt: str | None = None,
    mode: str = "strict",
    strip_think: bool = True,
) -> FollowResult:
    """Which instructions ``response`` follows (thinking section stripped first by default)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    kwargs = list(kwargs) if kwargs is not None else [None] * len(instruction_id_list)
    if len(kwargs) != len(instruction_id_list):
        raise ValueError("instruction_id_list and kwargs must have the same length")
    text = strip_thinking(response) if strip_think else response
    candidates = loose_variants(text) if mode == "loose" else [text]
    follow = []
    for instruction_id, args in zip(instruction_id_list, kwargs):
        instruction = build_instruction(instruction_id)
        instruction.build_description(**_kwargs(args, prompt, instruction_id))
        follow.append(any(c.strip() and instruction.check_following(c) for c in candidates))
    return FollowResult(follow, list(instruction_id_list))


def score_response(response: str, constraints: Mapping[str, Any], *, fractional: bool = False,
                   mode: str = "strict") -> tuple[float, FollowResult]:
    """Reward for ``response``: 1/0 for all constraints followed (binary) or the fraction followed.

    ``constraints`` holds ``instruction_id_list``, ``kwargs`` and optionally ``prompt`` (an IFEval row).
    """
    result = check_response(response, constraints["instruction_id_list"], constraints.get("kwargs"),
                            constraints.get("prompt"), mode=mode)
    value = result.fraction if fractional else float(result.follow_all)
    return value, result
