"""Agentless SWE: the prompt holds the issue and the relevant files; the answer is a patch.

The answer is one or more SEARCH/REPLACE blocks (or a unified diff) applied to a copy of the repository
by :mod:`cascade_swe.edits`; the reward (:mod:`cascade_swe.reward`) runs the tests in the sandbox. The
demonstrations answer with the shortest correct block: the buggy line as SEARCH, its fix as REPLACE.
"""

from __future__ import annotations

from typing import Sequence

from cascade import Environment, Message
from cascade.environments.generated import NO_THINKING
from cascade_swe.repos import BUG_KINDS, SweTask, swe_sample, tasks

INSTRUCTION = "Fix it with a SEARCH/REPLACE edit."


def search_replace(path: str, search: str, replace: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE"


class SweAgentlessEnvironment(Environment):
    """One turn: issue plus source files in, SEARCH/REPLACE edits out."""

    def __init__(self, difficulties: Sequence[int] = (1,), distractors: int = 2, bug_kinds: Sequence[str] = BUG_KINDS, held_out: str = "sites"):
        self.difficulties = list(difficulties)
        self.distractors = distractors
        self.bug_kinds = list(bug_kinds)
        self.held_out = held_out

    @staticmethod
    def prompt(task: SweTask) -> list[Message]:
        files = "".join(f"### {path}\n{task.files[path]}\n" for path in task.sources)
        return [{"role": "user", "content": f"Issue: {task.issue}\n\n{files}{INSTRUCTION}"}]

    def samples(self, split, n, seed):
        return [swe_sample(t, self.domain, self.prompt(t), "agentless") for t in tasks(self.difficulties, split, n, seed, self.distractors, self.bug_kinds, self.held_out)]

    def demonstrations(self, n, seed):
        return [self.prompt(t) + [{"role": "assistant", "content": NO_THINKING + search_replace(t.bug_file, t.buggy_line, t.fixed_line)}]
                for t in tasks(self.difficulties, "train", n, seed + 1, self.distractors, self.bug_kinds, self.held_out)]
