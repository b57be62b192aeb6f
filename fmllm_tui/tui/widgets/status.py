"""How a check's status looks: the same glyphs as ``fmllm-check``, a colour, a spinner."""

from __future__ import annotations

from rich.text import Text

from fmllm_tui.units import human_bytes  # noqa: F401  (one byte formatter; re-exported)

STYLES = {
    "pass": "bold green",
    "warn": "bold yellow",
    "fail": "bold red",
    "skip": "dim",
    "crash": "bold magenta",
    "pending": "dim",
    "running": "bold cyan",
}
WORDS = {"pass": "passed", "warn": "warning", "fail": "failed", "skip": "skipped", "crash": "crashed",
         "pending": "waiting", "running": "running"}
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
FROZEN_SPIN = "⠿"
PENDING = "·"


def glyph(status: str, frame: int | None = None) -> Text:
    """The status glyph as styled text; ``frame`` animates a running check (None: frozen)."""
    if status == "running":
        ch = FROZEN_SPIN if frame is None else SPINNER[frame % len(SPINNER)]
    elif status == "pending":
        ch = PENDING
    else:
        from fmllm_tui.findings import GLYPHS

        ch = GLYPHS.get(status, "?")
    return Text(ch, style=STYLES.get(status, ""))


def clip(text: str, width: int) -> str:
    """One line of ``text`` cut to ``width`` cells with an ellipsis."""
    line = text.splitlines()[0] if text else ""
    if width <= 1:
        return line[:max(width, 0)]
    return line if len(line) <= width else line[: width - 1] + "…"


def human_range(low: float | int | None, high: float | int | None) -> str:
    """"4.9–6.2 GiB": a range with its unit said once when both ends share it."""
    lo, hi = human_bytes(low), human_bytes(high)
    lo_num, _, lo_unit = lo.partition(" ")
    return f"{lo_num}–{hi}" if lo_unit and hi.endswith(" " + lo_unit) else f"{lo}–{hi}"
