"""Helpers for domains whose data is generated: hash-fixed splits, seeded sampling, thinking sections.

An item's split is decided by a hash of its text alone, so train and test never share an item however
many are drawn; :func:`generate_items` draws distinct items of one split, the same for the same seed.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Callable, TypeVar

SPLITS = ("train", "test")
TEST_SHARE = 0.2
NO_THINKING = "<think></think>"  # what the non-thinking generation prompt writes before the answer
_MAX_MISSES = 5_000

T = TypeVar("T")

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)


def strip_think(text: str) -> str:
    """The final answer: closed ``<think>...</think>`` sections removed; an unclosed ``<think>`` (the model
    never finished thinking) removes everything after it. A stray ``</think>`` drops what precedes it."""
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        text = text.split("<think>", 1)[0]
    return text


def split_of(key: str, salt: str) -> str:
    """The split an item belongs to, fixed by its text alone (so train and test never share one)."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < TEST_SHARE else "train"


def item_id(prefix: str, key: str) -> str:
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def generate_items(make: Callable[[random.Random], T], key: Callable[[T], str], split: str, n: int, seed: int,
                   salt: str, at_most: bool = True) -> list[T]:
    """``n`` distinct items of ``split`` drawn with ``make(rng)``; same arguments, same list.

    An item belongs to the split given by the hash of ``key(item)``. When the split runs out of distinct
    items (small difficulty levels), returns what it found (``at_most``) or raises ValueError.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"{salt}/{split}/{seed}")
    items: list[T] = []
    seen: set[str] = set()
    misses = 0
    while len(items) < n:
        if misses >= _MAX_MISSES:
            if at_most:
                break
            raise ValueError(f"found only {len(items)} of {n} distinct {split} items ({salt})")
        item = make(rng)
        k = key(item)
        if k in seen or split_of(k, salt) != split:
            misses += 1
            continue
        misses = 0
        seen.add(k)
        items.append(item)
    return items


def spread(n: int, levels: list[int]) -> list[int]:
    """``n`` split as evenly as possible over the levels (earlier levels get the remainder)."""
    return [n // len(levels) + (i < n % len(levels)) for i in range(len(levels))]
