"""The TUI's calls into the fixers: preview a change as a diff, write it, undo it (no Textual).

Everything here delegates to ``fixes`` (plan, render, diff, atomic write with backup) and to
``fmllm-check``'s own choice of which fixes are safe to apply together; the TUI adds only the
"show the diff, then write exactly what was shown" handshake (``expected_raw``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmllm_tui.findings import Change, CheckResult


@dataclass
class Preview:
    """The diff a set of changes would make, and the file bytes it was computed against."""

    diff: str
    expected_raw: bytes


class ConfigOpError(Exception):
    """A config or fixer error, already rendered for a person (what, where, what to do)."""


def _render(e: Exception) -> str:
    render = getattr(e, "render", None)
    return render() if callable(render) else str(e)


def preview(path: str | Path, changes: list[Change]) -> Preview:
    """The unified diff ``changes`` would make to the file at ``path`` (nothing is written)."""
    from fmllm_tui.config import ConfigError, load_config
    from fmllm_tui.fixes import FixError, apply_changes

    try:
        loaded = load_config(path)
        res = apply_changes(path, changes, dry_run=True, expected_raw=loaded.raw)
    except (ConfigError, FixError) as e:
        raise ConfigOpError(_render(e)) from None
    return Preview(diff=res.diff or "", expected_raw=loaded.raw)


def apply(path: str | Path, changes: list[Change], expected_raw: bytes) -> Any:
    """Write ``changes`` (with a backup) if the file still holds ``expected_raw``; the ApplyResult."""
    from fmllm_tui.fixes import FixError, apply_changes

    try:
        return apply_changes(path, changes, expected_raw=expected_raw)
    except FixError as e:
        raise ConfigOpError(_render(e)) from None


def undo(path: str | Path) -> str:
    """Restore the config from its last backup; the backup's path."""
    from fmllm_tui.fixes import FixError
    from fmllm_tui.fixes import undo as fixes_undo

    try:
        return str(fixes_undo(path))
    except FixError as e:
        raise ConfigOpError(_render(e)) from None


def safe_fix_changes(results: list[CheckResult]) -> tuple[list[Change], list[str], list[str]]:
    """Changes of every safe config fix, the fixer ids, and the shell commands that cannot be
    applied to the file: the same selection as ``fmllm-check --fix`` (fixes.safe_changes)."""
    from fmllm_tui.fixes import safe_changes

    chosen = safe_changes(results)
    return chosen.changes, chosen.fixer_ids, chosen.shells


def load(path: str | Path) -> Any:
    """The loaded config (LoadedConfig), or ConfigOpError with the located problems."""
    from fmllm_tui.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        raise ConfigOpError(_render(e)) from None
