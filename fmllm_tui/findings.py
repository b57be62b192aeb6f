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
    """One config edit: ``key`` is the dotted path in the person's file."""

    key: str
    to: Any
    from_: Any = None
    comment: str | None = None  # end-of-line comment for an inserted key (why it was added)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "from": self.from_, "to": self.to}


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
        return {
            "id": self.id,
            "title": self.title,
            "category": self.category,
            "severity": self.severity,
            "status": self.status,
            "finding": self.finding,
            "values": self.values,
            "fix": self.fix.to_json() if self.fix else None,
            "duration_s": round(self.duration_s, 4),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CheckResult:
        fx = d.get("fix")
        fix = None
        if fx:
            fix = Fix(
                id=fx["id"],
                changes=[Change(key=c["key"], to=c["to"], from_=c.get("from")) for c in fx.get("changes", [])],
                shell=fx.get("shell"),
                summary=fx.get("summary", ""),
                safe=bool(fx.get("safe", True)),
            )
        return cls(
            id=d["id"],
            title=d["title"],
            category=d["category"],
            severity=d["severity"],
            status=d["status"],
            finding=d["finding"],
            values=d.get("values") or {},
            fix=fix,
            duration_s=d.get("duration_s", 0.0),
        )


#: One glyph per status, for the terminal faces (fmllm-check's human output and the TUI).
GLYPHS = {"pass": "✓", "warn": "!", "fail": "✗", "skip": "-", "crash": "☠"}


def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 change``, ``3 changes`` (``words``: an irregular plural): one spelling for every face."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def summarize(results: list[CheckResult]) -> dict[str, int]:
    counts = {s: 0 for s in STATUSES}
    for r in results:
        counts[r.status] += 1
    return counts


__all__ = ["Change", "CheckResult", "Fix", "STATUSES", "Severity", "Status", "summarize", "asdict"]
