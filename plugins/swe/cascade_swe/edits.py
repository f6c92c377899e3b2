"""The model's edits to a repository: SEARCH/REPLACE blocks or a unified diff, parsed and applied to a copy.

SEARCH/REPLACE (the Agentless format; the file's path on the line before each block, ``### `` and
code fences around it allowed)::

    shop.py
    <<<<<<< SEARCH
        return price * 0.9
    =======
        return price * 1.1
    >>>>>>> REPLACE

Blocks apply in order, each to the text the previous ones left. The SEARCH text must occur exactly once
in its file; when it occurs nowhere, a match of whole lines that differ only in leading or trailing
whitespace is taken (still exactly one), and the REPLACE lines are re-indented by the same amount.

A unified diff (in a ```` ```diff ```` fence, or bare from its ``--- `` line) is parsed with ``unidiff``;
each hunk must match the file at its stated line, or else at exactly one other place.

Only existing, non-test source files of the repository can change: a path that leaves the repository
(``../x``, ``/etc/x``), names a test file (``test_*.py``, ``*_test.py``, ``tests/``) or no file, and a
diff that adds, removes or renames a file, are refused. Every failure raises :class:`EditError` whose
``status`` names the kind (a reward's ``info["status"]``, an agent's tool error) and nothing is changed:
a patch applies whole or not at all.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Mapping

from unidiff import PatchSet
from unidiff.errors import UnidiffParseError

from cascade.environments.generated import strip_think

STATUSES = ("no_edits", "bad_block", "bad_path", "test_file", "no_match", "ambiguous", "bad_diff", "diff_mismatch")


class EditError(ValueError):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Edit:
    path: str
    search: str
    replace: str


_BLOCK = re.compile(r"^[ \t]*<{7} ?SEARCH[ \t]*\n(.*?)^[ \t]*={7}[ \t]*\n(.*?)^[ \t]*>{7} ?REPLACE[ \t]*$", re.M | re.S)
_DIFF_FENCE = re.compile(r"```diff[ \t]*\n(.*?)(?:```|\Z)", re.S)
_DIFF_START = re.compile(r"^--- ", re.M)


def is_test_file(path: str) -> bool:
    name = posixpath.basename(path)
    return name.startswith("test_") or name.endswith("_test.py") or path.split("/")[0] in ("tests", "test")


def checked_path(path: str, files: Mapping[str, str]) -> str:
    """``path`` normalised, if it names an editable file of the repository; else EditError."""
    clean = path.strip().strip("`").strip()
    norm = posixpath.normpath(clean) if clean else ""
    if not norm or norm.startswith("/") or norm == ".." or norm.startswith("../"):
        raise EditError("bad_path", f"path {clean!r} is outside the repository")
    if is_test_file(norm):
        raise EditError("test_file", f"{norm} is a test file: only source files can be edited")
    if norm not in files:
        editable = ", ".join(p for p in sorted(files) if not is_test_file(p))
        raise EditError("bad_path", f"no file {norm}; editable: {editable}")
    return norm


def parse_blocks(text: str) -> list[Edit]:
    """The SEARCH/REPLACE blocks of an answer, in order (paths not yet checked)."""
    edits, pos = [], 0
    for match in _BLOCK.finditer(text):
        before = [line.strip() for line in text[pos:match.start()].splitlines()]
        path = next((line for line in reversed(before) if line and not line.startswith("```")), "")
        if not path:
            raise EditError("bad_block", "no file path on the line before <<<<<<< SEARCH")
        search, replace = match.group(1).removesuffix("\n"), match.group(2).removesuffix("\n")  # the markers' line ends
        if not search.strip():
            raise EditError("bad_block", f"{path}: empty SEARCH (only changes to existing text are allowed)")
        edits.append(Edit(path.removeprefix("###").strip(), search, replace))
        pos = match.end()
    if text.count("<<<<<<< SEARCH") != len(edits) or text.count(">>>>>>> REPLACE") != len(edits):
        raise EditError("bad_block", "malformed block: expected <<<<<<< SEARCH, =======, >>>>>>> REPLACE on their own lines")
    return edits


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def replace_once(content: str, search: str, replace: str, path: str) -> str:
    """``content`` with the one occurrence of ``search`` replaced (see the module docstring)."""
    count = content.count(search)
    if count == 1:
        return content.replace(search, replace)
    if count > 1:
        raise EditError("ambiguous", f"SEARCH text occurs {count} times in {path}; include more lines to make it unique")
    lines = content.splitlines(keepends=True)
    want = [line.strip() for line in search.strip("\n").split("\n")]
    hits = [i for i in range(len(lines) - len(want) + 1) if [line.strip() for line in lines[i:i + len(want)]] == want]
    if not hits:
        raise EditError("no_match", f"SEARCH text not found in {path}")
    if len(hits) > 1:
        raise EditError("ambiguous", f"SEARCH text occurs {len(hits)} times in {path}; include more lines to make it unique")
    start, end = hits[0], hits[0] + len(want)
    have, given = _indent(lines[start]), _indent(search.strip("\n").split("\n")[0])
    replacement = "".join(have + line.removeprefix(given) + "\n" if line.strip() else "\n"
                          for line in replace.strip("\n").split("\n")) if replace.strip() else ""
    if replacement and not lines[end - 1].endswith("\n"):
        replacement = replacement[:-1]
    return "".join(lines[:start]) + replacement + "".join(lines[end:])


def apply_edits(files: Mapping[str, str], edits: list[Edit]) -> dict[str, str]:
    """A copy of ``files`` with ``edits`` applied in order (all or nothing)."""
    out = dict(files)
    for edit in edits:
        path = checked_path(edit.path, files)
        out[path] = replace_once(out[path], edit.search, edit.replace, path)
    return out


def _diff_text(text: str) -> str | None:
    fenced = _DIFF_FENCE.search(text)
    if fenced:
        return fenced.group(1)
    start = _DIFF_START.search(text)
    return text[start.start():] if start else None


def _strip_prefix(path: str) -> str:
    return path[2:] if path.startswith(("a/", "b/")) else path


def apply_diff(files: Mapping[str, str], diff: str) -> dict[str, str]:
    """A copy of ``files`` with the unified ``diff`` applied (all or nothing)."""
    try:
        patch = PatchSet(diff)
    except UnidiffParseError as err:
        raise EditError("bad_diff", f"malformed diff: {err}") from None
    if not len(patch):
        raise EditError("bad_diff", "malformed diff: no file header (--- a/FILE, +++ b/FILE) and hunk (@@ ... @@)")
    out = dict(files)
    for patched in patch:
        if patched.is_added_file or patched.is_removed_file:
            raise EditError("bad_path", "the diff adds or removes a file: only changes to existing files are allowed")
        source, target = _strip_prefix(patched.source_file), _strip_prefix(patched.target_file)
        if posixpath.normpath(source) != posixpath.normpath(target):
            raise EditError("bad_path", f"the diff renames {source} to {target}")
        path = checked_path(target, files)
        lines = out[path].splitlines(keepends=True)
        offset = 0
        for hunk in patched:
            old = [line.value for line in hunk if line.is_context or line.is_removed]
            new = [line.value for line in hunk if line.is_context or line.is_added]
            at = _locate(lines, old, hunk.source_start - 1 + offset)
            if at is None:
                raise EditError("diff_mismatch", f"hunk @@ -{hunk.source_start},{hunk.source_length} @@ does not match {path}")
            if new and not new[-1].endswith("\n") and at + len(old) < len(lines):
                new[-1] += "\n"
            lines[at:at + len(old)] = new
            offset = at - (hunk.source_start - 1) + len(new) - len(old)
        out[path] = "".join(lines)
    return out


def _locate(lines: list[str], old: list[str], expected: int) -> int | None:
    """Where ``old`` sits in ``lines``: at ``expected`` if it matches there, else its one other place."""
    key = [line.rstrip("\r\n") for line in old]

    def matches(i: int) -> bool:
        return [line.rstrip("\r\n") for line in lines[i:i + len(old)]] == key

    if 0 <= expected <= len(lines) - len(old) and matches(expected):
        return expected
    hits = [i for i in range(len(lines) - len(old) + 1) if matches(i)]
    return hits[0] if len(hits) == 1 else None


def apply_answer(files: Mapping[str, str], answer: str) -> dict[str, str]:
    """The repository after the edits of a model's answer (thinking removed): SEARCH/REPLACE blocks if it
    has any, else a unified diff; EditError when there is neither or they do not apply."""
    text = strip_think(answer)
    if "<<<<<<< SEARCH" in text or ">>>>>>> REPLACE" in text:
        return apply_edits(files, parse_blocks(text))
    diff = _diff_text(text)
    if diff is not None:
        return apply_diff(files, diff)
    raise EditError("no_edits", "no SEARCH/REPLACE block and no unified diff in the answer")
