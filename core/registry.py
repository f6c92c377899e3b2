"""The checkpoints of a run, each with its evaluation scores: where later stages find their teachers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade.io import write_json_atomic
from cascade.types import Checkpoint


@dataclass
class Entry:
    checkpoint: Checkpoint
    scores: dict[str, float] = field(default_factory=dict)
    """Held-out score per domain, measured right after the stage."""
    details: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    """The stage's summary: seconds, steps, last training metrics."""

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint.to_dict(), "scores": self.scores, "details": self.details, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Entry":
        return cls(Checkpoint.from_dict(data["checkpoint"]), data["scores"], data.get("details", {}), data.get("metrics", {}))


class Registry:
    """An ordered, persisted index ``stage name -> Entry``; the first entry is the initial model.

    It is written atomically after every stage, so it is also the run's record of finished stages.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, Entry] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text())
            self.entries = {e["checkpoint"]["stage"]: Entry.from_dict(e) for e in data["entries"]}

    def add(self, entry: Entry) -> None:
        self.entries[entry.checkpoint.stage] = entry
        write_json_atomic(self.path, {"entries": [e.to_dict() for e in self.entries.values()]})

    def __contains__(self, stage: str) -> bool:
        return stage in self.entries

    def __getitem__(self, stage: str) -> Entry:
        if stage not in self.entries:
            raise KeyError(f"no checkpoint for stage '{stage}' yet; finished so far: {', '.join(self.entries) or 'none'}")
        return self.entries[stage]

    def last(self) -> Entry:
        return list(self.entries.values())[-1]

    def best(self, domain: str, lineage: str | None = None) -> Entry:
        """The entry with the highest score on ``domain`` (the earliest one wins a tie)."""
        candidates = [e for e in self.entries.values() if domain in e.scores and (lineage is None or e.checkpoint.lineage == lineage)]
        if not candidates:
            raise KeyError(f"no checkpoint has a score on domain '{domain}' yet")
        return max(candidates, key=lambda e: e.scores[domain])

    def resolve(self, rule: str, domain: str) -> Entry:
        """A checkpoint chosen by rule: ``best`` (highest score on ``domain`` so far, same lineage as the
        run's initial model), ``stage:NAME`` (that stage's checkpoint) or ``path:DIR`` (any directory)."""
        if rule == "best":
            lineage = self.entries["init"].checkpoint.lineage if "init" in self.entries else None
            return self.best(domain, lineage)
        kind, _, value = rule.partition(":")
        if kind == "stage" and value:
            return self[value]
        if kind == "path" and value:
            return Entry(Checkpoint(f"path:{value}", value))
        raise ValueError(f"unknown teacher rule '{rule}' for domain '{domain}': use best, stage:NAME or path:DIR")

    def scores_matrix(self) -> dict[str, dict[str, float]]:
        return {stage: dict(e.scores) for stage, e in self.entries.items()}
