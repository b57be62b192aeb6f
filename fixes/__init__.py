"""fmllm's fixers: comment-preserving config repairs, previews, safe writes, undo and presets.

Typical use (what ``fmllm-check --fix`` and the TUI do)::

    loaded = load_config(path)
    changes = plan_fixes(loaded, [(r.fix.id, r.values) for r in failing])  # later sees earlier
    print(diff(loaded, render_changes(loaded, changes)))                     # the preview
    result = apply_changes(path, changes, expected_raw=loaded.raw)           # backup + atomic write
    undo(path)                                                               # back to the backup

Every ``FixError`` carries a person-facing ``render()``; the CLI maps it to exit code 2.
"""

from __future__ import annotations

from typing import Any

from fmllm_tui.config import LoadedConfig
from fmllm_tui.findings import Change, Fix

from .engine import diff, load_text, render_changes, render_loaded
from .errors import FixError
from .fixers import FIXERS, SHELL_FIXES, Fixer, shell_fix, summarize
from .presets import PRESETS, Preset, get_preset, list_presets, preset_changes
from .safewrite import (
    ApplyResult,
    apply_changes,
    config_lock,
    list_backups,
    temporarily_applied,
    undo,
)
from .schema import canonical_of, known_canonical
from .selection import SafeChanges, safe_changes


def get_fixer(fix_id: str) -> Fixer:
    """The fixer with this id; FixError naming the known ids otherwise."""
    try:
        return FIXERS[fix_id]
    except KeyError:
        raise FixError(f"no fixer called {fix_id!r}", hint=f"known fixers: {', '.join(sorted(FIXERS))}") from None


def plan_fix(loaded: LoadedConfig, fix_id: str, values: dict[str, Any] | None = None) -> list[Change]:
    """The changes fixer ``fix_id`` would make to ``loaded`` for a finding's ``values``.

    ``Change.key`` is the dotted key in the person's file, ``from_`` the current value (None
    when the key is absent) and ``comment`` why (written as an end-of-line comment on inserts).
    """
    return get_fixer(fix_id).plan(loaded, values or {})


def plan_fixes(loaded: LoadedConfig, requests: list[tuple[str, dict[str, Any] | None]]) -> list[Change]:
    """Plan several fixes so that each sees the config as the earlier ones leave it."""
    out: list[Change] = []
    current = loaded
    for fix_id, values in requests:
        changes = plan_fix(current, fix_id, values)
        if changes:
            _, _, current = render_loaded(current, changes)
            out.extend(changes)
    return out


def make_fix(loaded: LoadedConfig, fix_id: str, values: dict[str, Any] | None = None) -> Fix:
    """A ``findings.Fix`` for a check result: the planned changes and a summary of them."""
    if fix_id in SHELL_FIXES:
        return shell_fix(fix_id, values)
    fixer = get_fixer(fix_id)
    changes = fixer.plan(loaded, values or {})
    summary = summarize(changes) if changes else "the config already has this fix"
    return Fix(id=fix_id, changes=changes, summary=f"{fixer.title}:\n{summary}", safe=not fix_id.startswith("preset."))


__all__ = [
    "ApplyResult",
    "FIXERS",
    "FixError",
    "Fixer",
    "PRESETS",
    "Preset",
    "SHELL_FIXES",
    "apply_changes",
    "canonical_of",
    "config_lock",
    "diff",
    "get_fixer",
    "get_preset",
    "known_canonical",
    "list_backups",
    "list_presets",
    "load_text",
    "make_fix",
    "plan_fix",
    "plan_fixes",
    "preset_changes",
    "render_changes",
    "SafeChanges",
    "safe_changes",
    "shell_fix",
    "summarize",
    "temporarily_applied",
    "undo",
]
