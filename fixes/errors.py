"""The one error type every fix raises: a person-facing message, never a traceback."""

from __future__ import annotations

import os

from fmllm_tui.config import ConfigError


class FixError(Exception):
    """A fix that cannot be planned, rendered or written. ``render()`` is what a person reads.

    ``changed`` says whether the config file was changed before the failure; every code path in
    ``fixes`` fails before the atomic replace, so it is False unless a caller says otherwise.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        hint: str | None = None,
        changed: bool = False,
        located: bool = False,
    ):
        self.message = message
        self.located = located  # the message already starts with "file:line: error:" lines
        self.path = str(path) if path is not None else None
        self.hint = hint
        self.changed = changed
        super().__init__(self.render())

    def render(self) -> str:
        """One-screen message: where, what, what to do, and whether the file was touched."""
        head = "" if self.located else f"{self.path}: error: " if self.path else "error: "
        lines = [head + self.message]
        if self.hint:
            lines.append(f"    hint: {self.hint}")
        if not self.changed:
            lines.append("fmllm did not change the config file.")
        return "\n".join(lines)

    @classmethod
    def from_config_error(cls, err: ConfigError, *, lead: str = "", shown_path: str | None = None, hint: str | None = None) -> FixError:
        """Wrap a config load error: its located problem lines, without its own footer."""
        lines = [p.render(shown_path or err.path) for p in err.problems[:12]]
        if len(err.problems) > 12:
            lines.append(f"... and {len(err.problems) - 12} more problems")
        text = "\n".join(lines)
        if lead:
            return cls(f"{lead}\n{text}", path=shown_path or err.path, hint=hint)
        return cls(text, path=shown_path or err.path, hint=hint, located=True)
