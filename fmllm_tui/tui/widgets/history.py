"""A one-line history of a percentage (GPU memory, utilisation), on a fixed 0-100 scale."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widget import Widget

BLOCKS = " ▁▂▃▄▅▆▇█"


def history_line(values: Sequence[float], width: int) -> str:
    """The newest ``width`` values as block characters, 0 % empty and 100 % a full block.

    A fixed scale, unlike a sparkline's min-to-max one: a flat 4 % stays low instead of filling
    the row.
    """
    out = []
    for v in list(values)[-width:]:
        level = max(0.0, min(100.0, float(v))) / 100 * (len(BLOCKS) - 1)
        out.append(BLOCKS[max(round(level), 1 if v > 0 else 0)])  # any use shows as at least ▁
    return "".join(out).rjust(width, " ")


class PercentHistory(Widget):
    """Label and current value on the first line, the history on the second."""

    DEFAULT_CSS = "PercentHistory { height: 2; }"

    def __init__(self, label: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.label = label
        self.values: list[float] = []

    def set_values(self, values: Sequence[float]) -> None:
        self.values = list(values)
        self.refresh()

    def render(self) -> Text:
        width = max(self.size.width, 8)
        now = f"{self.values[-1]:.0f}%" if self.values else "–"
        text = Text(f"{self.label} {now}\n", style="bold")
        text.append(history_line(self.values, width), style="cyan")
        return text
