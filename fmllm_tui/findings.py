"""What a check reports: its status, a plain-words finding, measured values and its fix.

These objects are the one contract between the checks (pytest tests in ``checks/``), the fixers
(``fixes/``), ``fmllm-check`` (human, JSON and JUnit output) and the TUI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["pass", "warn", "fail", "skip", "crash"]
Severity = Literal["error", "warning"]
STATUSES: tuple[Status, ...] = ("pass", "warn", "fail", "skip", "crash")


@dataclass
class Change:
    """One config edit, the one shape every producer and face uses.

    ``key`` is a dotted path: the person's file's for a fixer's changes (what gets written), the
    canonical one (``training.max_seq_length``) for a planned change the ``memory.fit`` fixer maps
    to the file (the fit search's, a log finding's, the TUI memory screen's). ``comment`` says why
    (written as the end-of-line comment of an inserted key). ``saving_bytes`` is a planned change's
    predicted memory saving, on top of the changes before it (negative: it spends memory for
    speed); None for an edit that predicts nothing.
    """

    key: str
    to: Any
    from_: Any = None
    comment: str | None = None
    saving_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"key", "from", "to"}``; a planned change (one with a saving) adds ``why`` and ``saving_bytes``."""
        d = {"key": self.key, "from": self.from_, "to": self.to}
        if self.saving_bytes is not None:
            d.update(why=self.comment, saving_bytes=self.saving_bytes)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Change:
        """The change ``to_json`` wrote."""
        return cls(key=d["key"], to=d["to"], from_=d.get("from"), comment=d.get("why"), saving_bytes=d.get("saving_bytes"))


@dataclass
class Fix:
    """A remedy: a fixer id with its exact config changes, and/or a shell command to run."""

    id: str | None  # None: advice or a shell command that no fixer applies (a log finding's)
    changes: list[Change] = field(default_factory=list)
    shell: str | None = None
    summary: str = ""
    safe: bool = True  # safe fixes are applied by `--fix` and the TUI's "apply all"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "changes": [c.to_json() for c in self.changes],
            "shell": self.shell,
            "summary": self.summary,
            "safe": self.safe,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Fix:
        """The fix ``to_json`` wrote."""
        return cls(id=d["id"], changes=[Change.from_json(c) for c in d.get("changes", [])], shell=d.get("shell"),
                   summary=d.get("summary", ""), safe=bool(d.get("safe", True)))


@dataclass
class CheckResult:
    """One check's outcome, as every face (pytest, CLI, JSON, TUI) shows it."""

    id: str
    title: str
    category: str
    severity: Severity
    status: Status
    finding: str
    values: dict[str, Any] = field(default_factory=dict)
    fix: Fix | None = None
    duration_s: float = 0.0
    nodeid: str = ""

    def to_json(self) -> dict[str, Any]:
        """The result as fmllm-check --json and the TUI's stream write it (every field but ``nodeid``)."""
        d = {k: getattr(self, k) for k in ("id", "title", "category", "severity", "status", "finding", "values")}
        d.update(fix=self.fix.to_json() if self.fix else None, duration_s=round(self.duration_s, 4))
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CheckResult:
        """The result ``to_json`` wrote (how the TUI reads a check run's stream)."""
        fx = d.get("fix")
        return cls(
            id=d["id"],
            title=d["title"],
            category=d["category"],
            severity=d["severity"],
            status=d["status"],
            finding=d["finding"],
            values=d.get("values") or {},
            fix=Fix.from_json(fx) if fx else None,
            duration_s=d.get("duration_s", 0.0),
        )


#: One glyph per status, for the terminal faces (fmllm-check's human output and the TUI).
GLYPHS = {"pass": "✓", "warn": "!", "fail": "✗", "skip": "-", "crash": "☠"}


def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 change``, ``3 changes`` (``words``: an irregular plural): one spelling for every face."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def summarize(results: list[CheckResult]) -> dict[str, int]:
    """How many results have each status (every status present, zero or not)."""
    counts: dict[str, int] = {s: 0 for s in STATUSES}
    for r in results:
        counts[r.status] += 1
    return counts


__all__ = ["Change", "CheckResult", "Fix", "STATUSES", "Severity", "Status", "summarize", "asdict"]
