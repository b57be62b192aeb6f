"""Which fixes go into the file together: every safe config fix of a failing or warning check.

One rule for every face: ``fmllm-check --fix`` and the TUI's "apply all safe" both take
:func:`safe_changes`. A fix whose ``safe`` is false (a cut that truncates data, a model swap, a
shard plan for GPUs the person may not have) is offered, never applied with the others; shell
remedies are printed, not run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fmllm_tui.findings import Change


@dataclass
class SafeChanges:
    """The merged config changes, the fixers they came from, and the shell commands to print."""

    changes: list[Change] = field(default_factory=list)
    fixer_ids: list[str] = field(default_factory=list)
    shells: list[str] = field(default_factory=list)


def safe_changes(results: list[Any]) -> SafeChanges:
    """The safe fixes of ``results`` (check results with ``status`` and ``fix``), in check
    order; a later fix of the same key wins (it was planned with the earlier ones applied)."""
    out = SafeChanges()
    merged: dict[str, Change] = {}
    for r in results:
        if r.status not in ("fail", "warn") or r.fix is None:
            continue
        if r.fix.changes and r.fix.safe:
            out.fixer_ids.append(r.fix.id)
            for c in r.fix.changes:
                merged[c.key] = c
        if r.fix.shell:
            out.shells.append(r.fix.shell)
    out.changes = list(merged.values())
    return out
